// Path parameters of the device routes: `:deviceId`, checked by the protocol codec so the error says
// exactly what is wrong with the ID (DEV-1), and the vendor-side lookups of `:productId` / `:deviceId`
// where another tenant's resource answers exactly like a missing one (ORG-3).
import { DeviceIdError, parseDeviceId } from '@castellan/protocol';
import type { FastifyRequest } from 'fastify';
import { Type } from 'typebox';
import { type Action, can } from '../accounts/index.ts';
import { CastellanError } from '../errors/index.ts';
import { principalOf } from '../http/index.ts';
import type { Device, DevicesService, Product } from './devices-service.ts';

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

/** The `:productId` product when the caller may perform `action` on it; otherwise "not found". */
export async function productFor(
  request: FastifyRequest,
  devices: Pick<DevicesService, 'getProduct'>,
  action: Action,
): Promise<Product> {
  const product = await devices.getProduct((request.params as { productId: string }).productId);
  if (!product || !can(principalOf(request), action, { vendorId: product.vendorId })) {
    throw new CastellanError('ERR_PRODUCT_NOT_FOUND');
  }
  return product;
}

/** The `:deviceId` device when the caller may perform `action` on it by the tenant rules; otherwise "not found". */
export async function deviceFor(
  request: FastifyRequest,
  devices: Pick<DevicesService, 'getDevice'>,
  action: Action,
): Promise<Device> {
  const device = await devices.getDevice(deviceIdOf(request));
  if (!device || !can(principalOf(request), action, { vendorId: device.vendorId })) {
    throw new CastellanError('ERR_DEVICE_NOT_FOUND');
  }
  return device;
}
