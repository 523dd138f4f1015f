// Device authentication over HTTPS (DEV-6, S 8.1.2a/e), shared by the cloud (verification) and the
// device SDK (signing). The byte formats are in docs/protocol.md ("Device HTTPS authentication"); this
// file is the reference implementation and packages/protocol/test/device-request-signing.test.ts holds
// known-answer vectors.
//
// The device secret never travels, in clear or in a weak transform: both sides derive a request key
//   key = HKDF-SHA-256(ikm = UTF-8 secret, salt = "castellan", info = "castellan device request v1", 32 B)
// and send only HMAC-SHA-256 values under it.
//
// Timestamp mode: every request carries
//   authorization: CAS-DEVICE-HMAC-SHA256 device=<id>,ts=<ms>,nonce=<b64url>,sig=<b64url>
//   x-castellan-content-sha256: <hex SHA-256 of the body bytes>
// with sig = HMAC(key, canonical), canonical = nine lines joined with '\n' (no trailing newline):
//   CAS-DEVICE-HMAC-SHA256 | METHOD | canonical path | canonical query | host | ts | nonce | device | body SHA-256
//
// Challenge-response mode (mutual): the device sends a client nonce, the platform answers with a
// challenge and serverProof = HMAC(key, "server|<device>|<clientNonce>|<challenge>"), proving it holds
// the device's secret too; the device checks it, then answers response = HMAC(key,
// "device|<device>|<challenge>|<clientNonce>") and receives a short-lived device token.
//
// Hardware-ID registration (DEV-4): proof = HMAC(productKey, "register|<product>|<hardwareId>|<ts>|<nonce>")
// with productKey = HKDF(product secret, "castellan", "castellan product registration v1"); the issued
// device secret comes back sealed with AES-256-GCM under HKDF(product secret, salt = nonce,
// "castellan device secret wrap v1").
import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes, timingSafeEqual } from 'node:crypto';
import { isDeviceId } from './device-id.ts';
import { canonicalPath, canonicalQuery, contentSha256 } from './request-signing.ts';

export const DEVICE_AUTH_SCHEME = 'CAS-DEVICE-HMAC-SHA256';
export const DEVICE_CONTENT_SHA256_HEADER = 'x-castellan-content-sha256';
/** Device tokens (challenge-response mode) start with this, so secret scanners can find leaked ones. */
export const DEVICE_TOKEN_PREFIX = 'cas_dvt_';
/** How far a request's ts may be from the platform's clock, either way. */
export const DEVICE_REQUEST_WINDOW_MS = 300_000;

const HKDF_SALT = 'castellan';
const REQUEST_KEY_INFO = 'castellan device request v1';
const PRODUCT_KEY_INFO = 'castellan product registration v1';
const WRAP_KEY_INFO = 'castellan device secret wrap v1';

/** base64url (RFC 4648 §5, unpadded) of at least 16 random bytes: 22 to 128 characters. */
const NONCE_PATTERN = /^[A-Za-z0-9_-]{22,128}$/;
const SIG_PATTERN = /^[A-Za-z0-9_-]{43}$/;
const SHA256_HEX = /^[0-9a-f]{64}$/;
const AUTHORIZATION_PATTERN =
  /^CAS-DEVICE-HMAC-SHA256 device=([0-9a-f]{24}),ts=([1-9][0-9]{0,15}),nonce=([A-Za-z0-9_-]{22,128}),sig=([A-Za-z0-9_-]{43})$/;
const TOKEN_PATTERN = /^cas_dvt_[A-Za-z0-9_-]{43}$/;
const PRODUCT_ID_PATTERN = /^prd_[A-Za-z0-9_-]{22}$/;

export class DeviceSigningError extends Error {
  readonly code = 'ERR_DEVICE_SIGNING';
}

const hkdf = (secret: string | Uint8Array, salt: string | Uint8Array, info: string): Buffer =>
  Buffer.from(hkdfSync('sha256', typeof secret === 'string' ? Buffer.from(secret, 'utf8') : secret, salt, info, 32));

const hmac = (key: Uint8Array, message: string): string =>
  createHmac('sha256', key).update(message, 'utf8').digest('base64url');

/** Constant-time equality of two base64url/hex strings (false when the lengths differ). */
export function constantTimeStringEqual(a: string, b: string): boolean {
  const x = Buffer.from(a, 'utf8');
  const y = Buffer.from(b, 'utf8');
  return x.length === y.length && timingSafeEqual(x, y);
}

/** The 32-byte request key both sides derive from the device secret (the secret itself never travels). */
export function deviceRequestKey(secret: string | Uint8Array): Buffer {
  return hkdf(secret, HKDF_SALT, REQUEST_KEY_INFO);
}

export function isDeviceNonce(value: string): boolean {
  return NONCE_PATTERN.test(value);
}

/** A fresh 128-bit nonce, base64url (22 characters). */
export function newDeviceNonce(): string {
  return randomBytes(16).toString('base64url');
}

export function isDeviceToken(value: string): boolean {
  return TOKEN_PATTERN.test(value);
}

export interface DeviceRequestParts {
  deviceId: string;
  method: string;
  /** The request target as sent: path and optional '?query'. */
  target: string;
  /** The Host header as sent, port included when sent. */
  host: string;
  /** Milliseconds since the epoch. */
  ts: number;
  nonce: string;
  contentSha256: string;
}

/** The canonical string of a timestamp-mode request (nine lines joined with '\n'). */
export function deviceCanonicalString(parts: DeviceRequestParts): string {
  const q = parts.target.indexOf('?');
  const path = q === -1 ? parts.target : parts.target.slice(0, q);
  const query = q === -1 ? '' : parts.target.slice(q + 1);
  return [
    DEVICE_AUTH_SCHEME,
    parts.method.toUpperCase(),
    canonicalPath(path),
    canonicalQuery(query),
    parts.host.toLowerCase(),
    String(parts.ts),
    parts.nonce,
    parts.deviceId,
    parts.contentSha256,
  ].join('\n');
}

/** HMAC-SHA-256 of the canonical string under the request key, base64url (43 characters). */
export function deviceRequestSignature(key: Uint8Array, canonical: string): string {
  return hmac(key, canonical);
}

export interface ParsedDeviceAuthorization {
  deviceId: string;
  ts: number;
  nonce: string;
  sig: string;
}

/** Parses a timestamp-mode Authorization header strictly (exact order, no spaces after commas), or null. */
export function parseDeviceAuthorization(header: string): ParsedDeviceAuthorization | null {
  const match = AUTHORIZATION_PATTERN.exec(header);
  if (!match) return null;
  const ts = Number(match[2]);
  if (!Number.isSafeInteger(ts)) return null;
  return { deviceId: match[1]!, ts, nonce: match[3]!, sig: match[4]! };
}

/** The device token of `authorization: Bearer cas_dvt_…`, or null. */
export function parseDeviceBearer(header: string): string | null {
  if (!header.startsWith('Bearer ')) return null;
  const token = header.slice(7);
  return isDeviceToken(token) ? token : null;
}

export function isContentDigest(value: string): boolean {
  return SHA256_HEX.test(value);
}

export interface SignDeviceRequestInput {
  deviceId: string;
  secret: string;
  method: string;
  /** Path and optional '?query', exactly as it will be sent. */
  path: string;
  /** The Host header as it will be sent (host[:port]). */
  host: string;
  body?: Uint8Array | string | undefined;
  /** Milliseconds since the epoch; now by default. */
  now?: number;
  nonce?: string;
}

/** The two headers of a timestamp-mode device request (lowercase names). */
export function signDeviceRequest(input: SignDeviceRequestInput): Record<string, string> {
  if (!isDeviceId(input.deviceId)) throw new DeviceSigningError('deviceId is not a device ID');
  const ts = Math.floor(input.now ?? Date.now());
  const nonce = input.nonce ?? newDeviceNonce();
  if (!isDeviceNonce(nonce)) throw new DeviceSigningError('nonce must be 22-128 base64url characters');
  const hash = contentSha256(input.body ?? '');
  const canonical = deviceCanonicalString({
    deviceId: input.deviceId,
    method: input.method,
    target: input.path,
    host: input.host,
    ts,
    nonce,
    contentSha256: hash,
  });
  const sig = deviceRequestSignature(deviceRequestKey(input.secret), canonical);
  return {
    authorization: `${DEVICE_AUTH_SCHEME} device=${input.deviceId},ts=${ts},nonce=${nonce},sig=${sig}`,
    [DEVICE_CONTENT_SHA256_HEADER]: hash,
  };
}

// --- challenge-response mode ---

/** The platform's proof that it knows the device's key: HMAC(key, "server|device|clientNonce|challenge"). */
export function challengeServerProof(
  key: Uint8Array,
  deviceId: string,
  clientNonce: string,
  challenge: string,
): string {
  return hmac(key, ['server', deviceId, clientNonce, challenge].join('|'));
}

/** The device's answer: HMAC(key, "device|device|challenge|clientNonce"). */
export function challengeDeviceResponse(
  key: Uint8Array,
  deviceId: string,
  challenge: string,
  clientNonce: string,
): string {
  return hmac(key, ['device', deviceId, challenge, clientNonce].join('|'));
}

/** Device side: does the platform's serverProof check out (constant time)? */
export function verifyServerProof(
  secret: string,
  deviceId: string,
  clientNonce: string,
  challenge: string,
  serverProof: string,
): boolean {
  if (!SIG_PATTERN.test(serverProof) || !isDeviceNonce(challenge) || !isDeviceNonce(clientNonce)) return false;
  const expected = challengeServerProof(deviceRequestKey(secret), deviceId, clientNonce, challenge);
  return constantTimeStringEqual(expected, serverProof);
}

// --- hardware-ID registration (DEV-4) ---

/**
 * A hardware ID in canonical form, or null: a MAC-48 (`AA:BB:CC:DD:EE:FF`, `aa-bb-…`, `aabb.ccdd.eeff`
 * or 12 hex digits) becomes `mac:aabbccddeeff`; an IMEI (15 digits, Luhn check digit; separators ' '
 * and '-' allowed) becomes `imei:<15 digits>`; the canonical forms map to themselves. The all-zero and
 * broadcast MACs are refused.
 */
export function normaliseHardwareId(raw: string): string | null {
  if (typeof raw !== 'string' || raw.length > 64) return null;
  // Idempotent: the canonical forms themselves are accepted (lower-case only).
  const canonical = /^(?:mac:([0-9a-f]{12})|imei:([0-9]{15}))$/.exec(raw);
  if (canonical) return normaliseHardwareId(canonical[1] ?? canonical[2]!) === raw ? raw : null;
  const value = raw.trim();
  const mac =
    /^([0-9A-Fa-f]{2})([:-])([0-9A-Fa-f]{2})\2([0-9A-Fa-f]{2})\2([0-9A-Fa-f]{2})\2([0-9A-Fa-f]{2})\2([0-9A-Fa-f]{2})$/.exec(
      value,
    );
  let hex: string | null = null;
  if (mac) hex = [mac[1], mac[3], mac[4], mac[5], mac[6], mac[7]].join('');
  else if (/^[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}$/.test(value)) hex = value.replaceAll('.', '');
  else if (/^[0-9A-Fa-f]{12}$/.test(value)) hex = value;
  if (hex !== null) {
    hex = hex.toLowerCase();
    return hex === '000000000000' || hex === 'ffffffffffff' ? null : `mac:${hex}`;
  }
  if (/^[0-9][0-9 -]{13,20}[0-9]$/.test(value)) {
    const digits = value.replace(/[ -]/g, '');
    if (/^[0-9]{15}$/.test(digits) && luhnValid(digits)) return `imei:${digits}`;
  }
  return null;
}

function luhnValid(digits: string): boolean {
  let sum = 0;
  for (let i = 0; i < digits.length; i++) {
    let d = digits.charCodeAt(digits.length - 1 - i) - 48;
    if (i % 2 === 1) {
      d *= 2;
      if (d > 9) d -= 9;
    }
    sum += d;
  }
  return sum % 10 === 0;
}

/** The key a product secret yields for registration proofs. */
export function productRegistrationKey(productSecret: string): Buffer {
  return hkdf(productSecret, HKDF_SALT, PRODUCT_KEY_INFO);
}

export interface RegistrationProofInput {
  productId: string;
  /** Canonical form (normaliseHardwareId). */
  hardwareId: string;
  ts: number;
  nonce: string;
}

/** proof = HMAC(productKey, "register|product|hardwareId|ts|nonce"), base64url. */
export function registrationProof(productSecret: string, input: RegistrationProofInput): string {
  return hmac(
    productRegistrationKey(productSecret),
    ['register', input.productId, input.hardwareId, String(input.ts), input.nonce].join('|'),
  );
}

export interface RegistrationRequestBody {
  productId: string;
  hardwareId: string;
  ts: number;
  nonce: string;
  proof: string;
}

/** Device side: the body of POST /v1/device-api/register. */
export function signRegistration(input: {
  productId: string;
  hardwareId: string;
  productSecret: string;
  now?: number;
  nonce?: string;
}): RegistrationRequestBody {
  if (!PRODUCT_ID_PATTERN.test(input.productId)) throw new DeviceSigningError('productId is not a product ID');
  const hardwareId = normaliseHardwareId(input.hardwareId);
  if (hardwareId === null) throw new DeviceSigningError('hardwareId is not a MAC-48 address or an IMEI');
  const ts = Math.floor(input.now ?? Date.now());
  const nonce = input.nonce ?? newDeviceNonce();
  if (!isDeviceNonce(nonce)) throw new DeviceSigningError('nonce must be 22-128 base64url characters');
  const proof = registrationProof(input.productSecret, { productId: input.productId, hardwareId, ts, nonce });
  return { productId: input.productId, hardwareId, ts, nonce, proof };
}

/** Associated data of a sealed device secret: it opens only for this product, hardware and device. */
const wrapAad = (productId: string, hardwareId: string, deviceId: string) =>
  Buffer.from(['castellan-device-secret', productId, hardwareId, deviceId].join('|'), 'utf8');

/**
 * Seals a newly issued device secret for the registering device: AES-256-GCM under HKDF(product
 * secret, salt = the request's nonce, "castellan device secret wrap v1"), a random 96-bit IV;
 * sealed = base64url(iv ‖ ciphertext ‖ tag).
 */
export function sealDeviceSecret(
  productSecret: string,
  input: { productId: string; hardwareId: string; deviceId: string; nonce: string; secret: string },
  iv: Uint8Array = randomBytes(12),
): string {
  const cipher = createCipheriv('aes-256-gcm', hkdf(productSecret, input.nonce, WRAP_KEY_INFO), iv);
  cipher.setAAD(wrapAad(input.productId, input.hardwareId, input.deviceId));
  const body = Buffer.concat([cipher.update(input.secret, 'utf8'), cipher.final()]);
  return Buffer.concat([iv, body, cipher.getAuthTag()]).toString('base64url');
}

/** Device side: opens a sealed device secret; throws DeviceSigningError when it does not authenticate. */
export function openDeviceSecret(
  productSecret: string,
  input: { productId: string; hardwareId: string; deviceId: string; nonce: string; sealed: string },
): string {
  const raw = Buffer.from(input.sealed, 'base64url');
  if (raw.length < 12 + 16 + 1) throw new DeviceSigningError('sealed secret is too short');
  try {
    const decipher = createDecipheriv(
      'aes-256-gcm',
      hkdf(productSecret, input.nonce, WRAP_KEY_INFO),
      raw.subarray(0, 12),
    );
    decipher.setAAD(wrapAad(input.productId, input.hardwareId, input.deviceId));
    decipher.setAuthTag(raw.subarray(raw.length - 16));
    return Buffer.concat([decipher.update(raw.subarray(12, raw.length - 16)), decipher.final()]).toString('utf8');
  } catch {
    throw new DeviceSigningError('sealed secret does not authenticate');
  }
}
