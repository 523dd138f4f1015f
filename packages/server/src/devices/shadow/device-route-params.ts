// The `:deviceId` path parameter of the shadow and command routes, checked by the protocol codec so the
// error says exactly what is wrong with the ID (DEV-1).
import { DeviceIdError, parseDeviceId } from '@castellan/protocol';
import type { FastifyRequest } from 'fastify';
import { Type } from 'typebox';
import { CastellanError } from '../../errors/index.ts';

export const DeviceIdParam = Type.String({ minLength: 1, maxLength: 64 });

export function deviceIdOf(request: FastifyRequest): string {
  const raw = (request.params as { deviceId: string }).deviceId;
  try {
    parseDeviceId(raw);
  } catch (error) {
    if (error instanceof DeviceIdError) {
      throw new CastellanError('ERR_DEVICE_ID_INVALID', { message: `Device ID is malformed: ${error.message}` });
    }
    throw error;
  }
  return raw;
}
