// The `:deviceId` path parameter of every device route, checked by the protocol codec so the error says
// exactly what is wrong with the ID (DEV-1).
import { DeviceIdError, parseDeviceId } from '@castellan/protocol';
import type { FastifyRequest } from 'fastify';
import { Type } from 'typebox';
import { CastellanError } from '../errors/index.ts';

export const DeviceIdParam = Type.String({ minLength: 1, maxLength: 64 });

/** A device ID from anywhere in a request (path or query), or ERR_DEVICE_ID_INVALID naming the problem. */
export function checkedDeviceId(raw: string): string {
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

/** The request's `:deviceId` path parameter, checked. */
export function deviceIdOf(request: FastifyRequest): string {
  return checkedDeviceId((request.params as { deviceId: string }).deviceId);
}
