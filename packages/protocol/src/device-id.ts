// Device identifier codec: the standard's Appendix A (GB/T smart-home IoT security), requirement DEV-1.
//
//   01 | vendor code (6 hex) | product code (6 hex) | random (8 hex) | extension (2 hex)   = 24 hex digits
//
// The random part comes from a CSPRNG. It is only 32 bits per product, so uniqueness is enforced by the
// store (and a collision retried), and unpredictability of *access* rests on the device credential,
// never on the identifier: a device ID is not a secret.
import { randomBytes } from 'node:crypto';

export const DEVICE_ID_SPEC_VERSION = '01';
export const DEVICE_ID_LENGTH = 24;

const DEVICE_ID_PATTERN = /^01[0-9a-f]{22}$/;
const CODE_PATTERN = /^[0-9a-f]{6}$/;
const EXTENSION_PATTERN = /^[0-9a-f]{2}$/;

export interface DeviceIdParts {
  readonly version: string;
  readonly vendorCode: string;
  readonly productCode: string;
  readonly random: string;
  readonly extension: string;
}

export class DeviceIdError extends Error {
  readonly code = 'ERR_DEVICE_ID_INVALID';
}

/** True when `value` is a well-formed device ID (lower-case hex, version 01). */
export function isDeviceId(value: unknown): value is string {
  return typeof value === 'string' && DEVICE_ID_PATTERN.test(value);
}

/** Parses a device ID; throws DeviceIdError naming what is wrong. */
export function parseDeviceId(value: unknown): DeviceIdParts {
  if (typeof value !== 'string') throw new DeviceIdError('device ID must be a string');
  if (value.length !== DEVICE_ID_LENGTH) {
    throw new DeviceIdError(`device ID must be ${DEVICE_ID_LENGTH} hex digits, got ${value.length} characters`);
  }
  if (!/^[0-9a-f]+$/.test(value)) throw new DeviceIdError('device ID must contain only lower-case hex digits');
  if (!value.startsWith(DEVICE_ID_SPEC_VERSION)) {
    throw new DeviceIdError(`device ID spec version must be ${DEVICE_ID_SPEC_VERSION}`);
  }
  return {
    version: value.slice(0, 2),
    vendorCode: value.slice(2, 8),
    productCode: value.slice(8, 14),
    random: value.slice(14, 22),
    extension: value.slice(22, 24),
  };
}

export function isVendorCode(value: unknown): value is string {
  return typeof value === 'string' && CODE_PATTERN.test(value);
}

export const isProductCode = isVendorCode;

/** Builds a new device ID with a fresh CSPRNG random part. */
export function generateDeviceId(vendorCode: string, productCode: string, extension = '00'): string {
  if (!CODE_PATTERN.test(vendorCode)) throw new DeviceIdError('vendor code must be 6 lower-case hex digits');
  if (!CODE_PATTERN.test(productCode)) throw new DeviceIdError('product code must be 6 lower-case hex digits');
  if (!EXTENSION_PATTERN.test(extension)) throw new DeviceIdError('extension must be 2 lower-case hex digits');
  return `${DEVICE_ID_SPEC_VERSION}${vendorCode}${productCode}${randomBytes(4).toString('hex')}${extension}`;
}

/** A random 6-hex-digit code for a vendor or product (uniqueness is the store's job). */
export function generateCode(): string {
  return randomBytes(3).toString('hex');
}
