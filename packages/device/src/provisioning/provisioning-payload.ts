// The provisioning payload (BIND-1, the standard's 6.2.2b; Gizwits 2.2.2.5): what the app hands a new
// device over Wi-Fi SoftAP or BLE: the home network, the one-time binding token and where the platform is.
// It is never sent in clear:
//
//   device (pairing mode)  a fresh P-256 key pair per pairing session; shows the public key (SoftAP page,
//                          BLE characteristic)
//   app                    a fresh P-256 key pair per payload; Z = ECDH(app private, device public)
//   both                   key = HKDF-SHA-256(ikm = Z, salt = appPublic ‖ devicePublic,
//                                            info = "castellan provisioning v1", 32 bytes)
//   app                    AES-256-GCM(key, fresh 96-bit nonce, AAD = device ID) over the JSON payload
//
// Envelope (binary, fits a few BLE writes): version 0x01 ‖ app public key (65 bytes, uncompressed) ‖
// nonce (12) ‖ ciphertext ‖ tag (16). A flipped bit anywhere, another device's ID or another pairing
// session's key fails authentication. The device discards its key pair after one payload, so a
// recorded envelope cannot be replayed.
import { createCipheriv, createDecipheriv, createECDH, type ECDH, hkdfSync, randomBytes } from 'node:crypto';

export const PROVISIONING_VERSION = 0x01;
const CURVE = 'prime256v1';
const INFO = 'castellan provisioning v1';
const POINT_BYTES = 65;
const NONCE_BYTES = 12;
const TAG_BYTES = 16;
/** Enough for the fields' maximum lengths; anything larger is refused before decryption. */
export const MAX_ENVELOPE_BYTES = 2048;

export interface ProvisioningPayload {
  /** Home Wi-Fi network name (1–32 bytes, IEEE 802.11). */
  readonly ssid: string;
  /** WPA2/WPA3 passphrase (8–63 characters) or empty for an open network. */
  readonly wifiPassword: string;
  /** The one-time binding token the app obtained for its signed-in user. */
  readonly bindingToken: string;
  /** Platform region the device registers in, e.g. `eu`. */
  readonly region: string;
  /** The platform's HTTPS base URL (the device still verifies its certificate against the pinned CA). */
  readonly platformUrl: string;
}

export class ProvisioningError extends Error {
  readonly code: 'ERR_PROVISIONING_PAYLOAD_INVALID' | 'ERR_PROVISIONING_NOT_PAIRING' | 'ERR_PROVISIONING_KEY_INVALID';
  constructor(code: ProvisioningError['code'], message: string) {
    super(message);
    this.name = 'ProvisioningError';
    this.code = code;
  }
}

const DEVICE_ID = /^[0-9a-f]{24}$/;

function deriveKey(shared: Buffer, appPublic: Buffer, devicePublic: Buffer): Buffer {
  return Buffer.from(hkdfSync('sha256', shared, Buffer.concat([appPublic, devicePublic]), INFO, 32));
}

function parsePublicKey(publicKey: string | Uint8Array): Buffer {
  const raw = typeof publicKey === 'string' ? Buffer.from(publicKey, 'base64url') : Buffer.from(publicKey);
  if (raw.length !== POINT_BYTES || raw[0] !== 0x04) {
    throw new ProvisioningError('ERR_PROVISIONING_KEY_INVALID', 'expected an uncompressed P-256 public key (65 bytes)');
  }
  return raw;
}

function computeShared(ecdh: ECDH, peer: Buffer): Buffer {
  try {
    // Rejects points not on the curve (invalid-curve attacks).
    return ecdh.computeSecret(peer);
  } catch {
    throw new ProvisioningError('ERR_PROVISIONING_KEY_INVALID', 'the public key is not a point on P-256');
  }
}

/** Checks the fields a device relies on; throws ProvisioningError naming the field. */
export function checkProvisioningPayload(value: unknown): ProvisioningPayload {
  const bad = (message: string) => new ProvisioningError('ERR_PROVISIONING_PAYLOAD_INVALID', message);
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw bad('payload must be an object');
  const p = value as Record<string, unknown>;
  const allowed = new Set(['ssid', 'wifiPassword', 'bindingToken', 'region', 'platformUrl']);
  for (const key of Object.keys(p)) if (!allowed.has(key)) throw bad(`unknown field ${key}`);
  const { ssid, wifiPassword, bindingToken, region, platformUrl } = p;
  if (typeof ssid !== 'string' || Buffer.byteLength(ssid) < 1 || Buffer.byteLength(ssid) > 32) {
    throw bad('ssid must be 1-32 bytes');
  }
  if (typeof wifiPassword !== 'string' || (wifiPassword !== '' && !/^[\x20-\x7e]{8,63}$/.test(wifiPassword))) {
    throw bad('wifiPassword must be empty or 8-63 printable ASCII characters');
  }
  if (typeof bindingToken !== 'string' || !/^[A-Za-z0-9_-]{16,128}$/.test(bindingToken)) {
    throw bad('bindingToken must be 16-128 base64url characters');
  }
  if (typeof region !== 'string' || !/^[a-z0-9-]{2,32}$/.test(region)) throw bad('region must be 2-32 of [a-z0-9-]');
  let url: URL;
  try {
    url = new URL(String(platformUrl));
  } catch {
    throw bad('platformUrl must be an https:// URL');
  }
  if (typeof platformUrl !== 'string' || url.protocol !== 'https:' || platformUrl.length > 512) {
    throw bad('platformUrl must be an https:// URL');
  }
  return { ssid, wifiPassword, bindingToken, region, platformUrl };
}

/**
 * App side: encrypts the payload to the device's provisioning public key (as the device shows it in
 * SoftAP/BLE pairing mode). Every call uses a fresh app key pair and nonce.
 */
export function sealProvisioningPayload(
  deviceId: string,
  devicePublicKey: string | Uint8Array,
  payload: ProvisioningPayload,
): Buffer {
  if (!DEVICE_ID.test(deviceId)) throw new ProvisioningError('ERR_PROVISIONING_PAYLOAD_INVALID', 'bad device ID');
  const checked = checkProvisioningPayload(payload);
  const devicePublic = parsePublicKey(devicePublicKey);
  const app = createECDH(CURVE);
  const appPublic = app.generateKeys();
  const key = deriveKey(computeShared(app, devicePublic), appPublic, devicePublic);
  const nonce = randomBytes(NONCE_BYTES);
  const cipher = createCipheriv('aes-256-gcm', key, nonce);
  cipher.setAAD(Buffer.from(deviceId, 'utf8'));
  const plaintext = Buffer.from(JSON.stringify(checked), 'utf8');
  const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  return Buffer.concat([Buffer.of(PROVISIONING_VERSION), appPublic, nonce, body, cipher.getAuthTag()]);
}

/** A device's provisioning key pair for one pairing session. */
export interface ProvisioningKeyPair {
  /** Uncompressed P-256 point, base64url: what the device shows. */
  readonly publicKey: string;
  /** @internal the ECDH state; never leaves the device. */
  readonly ecdh: ECDH;
}

export function generateProvisioningKeyPair(): ProvisioningKeyPair {
  const ecdh = createECDH(CURVE);
  const publicKey = ecdh.generateKeys().toString('base64url');
  return { publicKey, ecdh };
}

/**
 * Device side: decrypts and checks an envelope sealed to `keyPair` for `deviceId`. Throws
 * ProvisioningError (one message for every authentication failure) on any tampering.
 */
export function openProvisioningPayload(
  deviceId: string,
  keyPair: ProvisioningKeyPair,
  envelope: Uint8Array,
): ProvisioningPayload {
  const raw = Buffer.from(envelope);
  const minimum = 1 + POINT_BYTES + NONCE_BYTES + 1 + TAG_BYTES;
  if (raw.length < minimum || raw.length > MAX_ENVELOPE_BYTES || raw[0] !== PROVISIONING_VERSION) {
    throw new ProvisioningError('ERR_PROVISIONING_PAYLOAD_INVALID', 'not a provisioning envelope');
  }
  const appPublic = parsePublicKey(raw.subarray(1, 1 + POINT_BYTES));
  const nonce = raw.subarray(1 + POINT_BYTES, 1 + POINT_BYTES + NONCE_BYTES);
  const body = raw.subarray(1 + POINT_BYTES + NONCE_BYTES, raw.length - TAG_BYTES);
  const tag = raw.subarray(raw.length - TAG_BYTES);
  const devicePublic = Buffer.from(keyPair.publicKey, 'base64url');
  const key = deriveKey(computeShared(keyPair.ecdh, appPublic), appPublic, devicePublic);
  let plaintext: Buffer;
  try {
    const decipher = createDecipheriv('aes-256-gcm', key, nonce);
    decipher.setAAD(Buffer.from(deviceId, 'utf8'));
    decipher.setAuthTag(tag);
    plaintext = Buffer.concat([decipher.update(body), decipher.final()]);
  } catch {
    throw new ProvisioningError('ERR_PROVISIONING_PAYLOAD_INVALID', 'the payload does not authenticate');
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(plaintext.toString('utf8'));
  } catch {
    throw new ProvisioningError('ERR_PROVISIONING_PAYLOAD_INVALID', 'the payload is not JSON');
  }
  return checkProvisioningPayload(parsed);
}
