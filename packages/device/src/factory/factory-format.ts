// The manufacturing line's file formats (DEV-7), shared by the platform (which seals batches and
// verifies receipts) and the factory tool (which opens batches and signs receipts), so both sides read
// and write the same bytes. node:crypto only.
//
// Batch file (`castellan-factory-batch/1`): ECIES to the station's encryption key. An ephemeral key of
// the station key's curve (X25519 or P-256) → ECDH → HKDF-SHA256 (salt: both public keys; info: the
// format, batch ID and station ID) → AES-256-GCM with a random 96-bit IV. The associated data is the
// canonical JSON of the header (format, batch ID, station ID, product ID, device count, curve and the
// ephemeral key), so a header moved to another batch or station, or any changed byte, fails to open.
// ECIES gives confidentiality and integrity, not origin: the file's origin is the pinned-TLS fetch.
//
// Burn receipt (`castellan-burn-receipt/1`): the canonical JSON of {batchId, deviceId, stationId,
// burnedAt, imageDigest}, signed with the station's Ed25519 key.
import {
  createCipheriv,
  createDecipheriv,
  createHash,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  hkdfSync,
  type KeyObject,
  randomBytes,
  sign,
  verify,
  X509Certificate,
} from 'node:crypto';

export const BATCH_FORMAT = 'castellan-factory-batch/1';
export const DEVICE_IMAGE_FORMAT = 'castellan-device-credentials/1';
export const BATCH_ALGORITHM = 'ECDH-ES+HKDF-SHA256+A256GCM';

export type EncryptionCurve = 'X25519' | 'P-256';

/** Why a factory operation failed; `exitCode` is what `castellan-factory` exits with. */
export class FactoryError extends Error {
  readonly code: string;
  readonly exitCode: number;
  constructor(code: string, message: string, exitCode: number, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'FactoryError';
    this.code = code;
    this.exitCode = exitCode;
  }
}

/** Exit codes of `castellan-factory` (sysexits.h where one fits). */
export const FACTORY_EXIT = {
  usage: 2,
  /** The batch file failed authentication or is malformed (EX_DATAERR). */
  data: 65,
  /** A required input file is missing or unreadable (EX_NOINPUT). */
  noInput: 66,
  /** The platform cannot be reached (EX_UNAVAILABLE). */
  unavailable: 69,
  /** An output cannot be written, or would overwrite something different (EX_CANTCREAT). */
  cantCreate: 73,
  /** The platform refused the request (EX_NOPERM for credentials, else a protocol error). */
  refused: 77,
  /** A key file is not the kind of key expected (EX_CONFIG). */
  badKey: 78,
} as const;

/** JSON with object keys sorted at every level and no whitespace: one byte string per value. */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value === 'boolean' || typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new TypeError('canonical JSON has no NaN or Infinity');
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  throw new TypeError(`canonical JSON cannot hold a ${typeof value}`);
}

export function sha256Hex(data: Uint8Array | string): string {
  return createHash('sha256').update(data).digest('hex');
}

// ---------------------------------------------------------------------------------------------------
// Keys

/** A station's encryption public key from SPKI PEM: X25519 or P-256, nothing else. */
export function parseEncryptionPublicKey(pem: string): { key: KeyObject; curve: EncryptionCurve } {
  const key = publicKeyFromPem(pem);
  const curve = curveOf(key);
  if (!curve) throw new FactoryError('ERR_FACTORY_KEY_INVALID', 'the encryption key must be X25519 or P-256', 78);
  return { key, curve };
}

/** A station's signing public key from SPKI PEM: Ed25519 only. */
export function parseSigningPublicKey(pem: string): KeyObject {
  const key = publicKeyFromPem(pem);
  if (key.asymmetricKeyType !== 'ed25519') {
    throw new FactoryError('ERR_FACTORY_KEY_INVALID', 'the signing key must be Ed25519', 78);
  }
  return key;
}

/** Exactly one `PUBLIC KEY` (SPKI) block: a private key or certificate pasted by mistake is refused. */
function publicKeyFromPem(pem: string): KeyObject {
  const blocks = pem.match(/-----BEGIN [A-Z0-9 ]+-----/g) ?? [];
  if (blocks.length !== 1 || blocks[0] !== '-----BEGIN PUBLIC KEY-----') {
    throw new FactoryError('ERR_FACTORY_KEY_INVALID', 'expected one SPKI PEM block (BEGIN PUBLIC KEY)', 78);
  }
  try {
    return createPublicKey({ key: pem, format: 'pem' });
  } catch (error) {
    throw new FactoryError('ERR_FACTORY_KEY_INVALID', 'the public key cannot be parsed', 78, { cause: error });
  }
}

export function curveOf(key: KeyObject): EncryptionCurve | null {
  if (key.asymmetricKeyType === 'x25519') return 'X25519';
  if (key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1') return 'P-256';
  return null;
}

export interface StationKeyPairs {
  encryption: { publicKey: KeyObject; privateKey: KeyObject; curve: EncryptionCurve };
  signing: { publicKey: KeyObject; privateKey: KeyObject };
}

/** A factory station's two key pairs: one to open batches (X25519 by default), one to sign receipts. */
export function generateStationKeys(curve: EncryptionCurve = 'X25519'): StationKeyPairs {
  const encryption =
    curve === 'X25519' ? generateKeyPairSync('x25519') : generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return { encryption: { ...encryption, curve }, signing: generateKeyPairSync('ed25519') };
}

export const spkiPem = (key: KeyObject): string => key.export({ type: 'spki', format: 'pem' }).toString();

// ---------------------------------------------------------------------------------------------------
// Batch files

/** One device's credentials as written to its flash: the exact text of `<deviceId>.json`. */
export interface DeviceImage {
  format: typeof DEVICE_IMAGE_FORMAT;
  deviceId: string;
  secret: string;
  productId: string;
  batchId: string;
  mqttUrl: string | null;
  httpUrl: string | null;
  /** The platform's CA certificate (PEM): the device pins it, and trusts no other. */
  caPem: string;
  /** SHA-256 of the CA certificate's DER, hex: the pin in a form that is easy to compare. */
  caSha256: string;
}

/**
 * The device file's text. The platform composes it (and records its digest) when it issues the batch,
 * so a burn receipt's imageDigest can be checked against what was issued.
 */
export function deviceImageText(image: Omit<DeviceImage, 'format' | 'caSha256'>): string {
  const ordered: DeviceImage = {
    format: DEVICE_IMAGE_FORMAT,
    deviceId: image.deviceId,
    secret: image.secret,
    productId: image.productId,
    batchId: image.batchId,
    mqttUrl: image.mqttUrl,
    httpUrl: image.httpUrl,
    caPem: image.caPem,
    caSha256: new X509Certificate(image.caPem).fingerprint256.replaceAll(':', '').toLowerCase(),
  };
  return `${JSON.stringify(ordered, null, 2)}\n`;
}

/** What the batch's ciphertext holds. */
export interface BatchPlaintext {
  batchId: string;
  stationId: string;
  productId: string;
  devices: { deviceId: string; image: string }[];
}

/** Authenticated but not encrypted: which batch, for whom, how many, under which key. */
export interface BatchHeader {
  format: typeof BATCH_FORMAT;
  alg: typeof BATCH_ALGORITHM;
  curve: EncryptionCurve;
  batchId: string;
  stationId: string;
  productId: string;
  deviceCount: number;
  createdAt: number;
  /** SPKI DER, base64url. */
  ephemeralPublicKey: string;
}

export interface BatchFile extends BatchHeader {
  /** base64url, 12 bytes. */
  iv: string;
  /** base64url. */
  ciphertext: string;
  /** base64url, 16 bytes (the GCM tag). */
  tag: string;
}

const HEADER_FIELDS = [
  'format',
  'alg',
  'curve',
  'batchId',
  'stationId',
  'productId',
  'deviceCount',
  'createdAt',
  'ephemeralPublicKey',
] as const;

function headerOf(file: BatchHeader): BatchHeader {
  const header = {} as Record<string, unknown>;
  for (const field of HEADER_FIELDS) header[field] = file[field];
  return header as unknown as BatchHeader;
}

function batchKey(shared: Buffer, ephemeral: KeyObject, recipient: KeyObject, header: BatchHeader): Buffer {
  // A small-order X25519 point gives an all-zero secret: never a key (RFC 7748 section 6.1).
  if (shared.every((b) => b === 0)) throw new Error('degenerate ECDH result');
  const salt = Buffer.concat([
    ephemeral.export({ type: 'spki', format: 'der' }),
    recipient.export({ type: 'spki', format: 'der' }),
  ]);
  const info = Buffer.from(`${BATCH_FORMAT}\n${header.batchId}\n${header.stationId}`, 'utf8');
  return Buffer.from(hkdfSync('sha256', shared, salt, info, 32));
}

/** Seals a batch to a station's encryption public key. */
export function sealBatch(plaintext: BatchPlaintext, recipientPem: string, meta: { createdAt: number }): BatchFile {
  const { key: recipient, curve } = parseEncryptionPublicKey(recipientPem);
  const ephemeral =
    curve === 'X25519' ? generateKeyPairSync('x25519') : generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const header: BatchHeader = {
    format: BATCH_FORMAT,
    alg: BATCH_ALGORITHM,
    curve,
    batchId: plaintext.batchId,
    stationId: plaintext.stationId,
    productId: plaintext.productId,
    deviceCount: plaintext.devices.length,
    createdAt: meta.createdAt,
    ephemeralPublicKey: ephemeral.publicKey.export({ type: 'spki', format: 'der' }).toString('base64url'),
  };
  const shared = diffieHellman({ privateKey: ephemeral.privateKey, publicKey: recipient });
  const key = batchKey(shared, ephemeral.publicKey, recipient, header);
  const iv = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', key, iv);
  cipher.setAAD(Buffer.from(canonicalJson(header), 'utf8'));
  const ciphertext = Buffer.concat([cipher.update(JSON.stringify(plaintext), 'utf8'), cipher.final()]);
  key.fill(0);
  return {
    ...header,
    iv: iv.toString('base64url'),
    ciphertext: ciphertext.toString('base64url'),
    tag: cipher.getAuthTag().toString('base64url'),
  };
}

const AUTH_FAILED = () => new FactoryError('ERR_FACTORY_BATCH_AUTH', 'batch file failed authentication', 65);

/**
 * Opens a batch file with the station's encryption private key. Any change to the header, IV,
 * ciphertext or tag, or the wrong key, gives the same error: "batch file failed authentication".
 */
export function openBatch(file: unknown, privateKey: KeyObject): BatchPlaintext {
  const batch = checkBatchShape(file);
  const publicKey = createPublicKey(privateKey);
  if (curveOf(publicKey) !== batch.curve) throw AUTH_FAILED();
  let plaintext: Buffer;
  try {
    const ephemeral = createPublicKey({
      key: strictBase64url(batch.ephemeralPublicKey),
      format: 'der',
      type: 'spki',
    });
    if (curveOf(ephemeral) !== batch.curve) throw new Error('ephemeral key of another curve');
    const header = headerOf(batch);
    const shared = diffieHellman({ privateKey, publicKey: ephemeral });
    const key = batchKey(shared, ephemeral, publicKey, header);
    const iv = strictBase64url(batch.iv);
    const tag = strictBase64url(batch.tag);
    if (iv.length !== 12 || tag.length !== 16) throw new Error('bad IV or tag length');
    const decipher = createDecipheriv('aes-256-gcm', key, iv, { authTagLength: 16 });
    decipher.setAAD(Buffer.from(canonicalJson(header), 'utf8'));
    decipher.setAuthTag(tag);
    plaintext = Buffer.concat([decipher.update(strictBase64url(batch.ciphertext)), decipher.final()]);
    key.fill(0);
  } catch (error) {
    throw Object.assign(AUTH_FAILED(), { cause: error });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(plaintext.toString('utf8'));
  } catch {
    throw new FactoryError('ERR_FACTORY_BATCH_MALFORMED', 'batch content is invalid: not JSON', 65);
  }
  return checkPlaintext(parsed, batch);
}

const B64URL = /^[A-Za-z0-9_-]*$/;

/** Decodes base64url, refusing encodings with stray bits: one byte string, one text, so any edit shows. */
function strictBase64url(text: string): Buffer {
  const bytes = Buffer.from(text, 'base64url');
  if (bytes.toString('base64url') !== text) throw new Error('non-canonical base64url');
  return bytes;
}

function checkBatchShape(file: unknown): BatchFile {
  const malformed = (what: string) =>
    new FactoryError('ERR_FACTORY_BATCH_MALFORMED', `batch file is malformed: ${what}`, 65);
  if (typeof file !== 'object' || file === null || Array.isArray(file)) throw malformed('not a JSON object');
  const f = file as Record<string, unknown>;
  if (f.format !== BATCH_FORMAT) throw malformed(`format is not ${BATCH_FORMAT}`);
  if (f.alg !== BATCH_ALGORITHM) throw malformed(`alg is not ${BATCH_ALGORITHM}`);
  if (f.curve !== 'X25519' && f.curve !== 'P-256') throw malformed('curve is not X25519 or P-256');
  for (const field of ['batchId', 'stationId', 'productId'] as const) {
    if (typeof f[field] !== 'string' || f[field].length === 0) throw malformed(`${field} is missing`);
  }
  for (const field of ['deviceCount', 'createdAt'] as const) {
    if (!Number.isSafeInteger(f[field]) || (f[field] as number) < 0) throw malformed(`${field} is not an integer`);
  }
  for (const field of ['ephemeralPublicKey', 'iv', 'ciphertext', 'tag'] as const) {
    if (typeof f[field] !== 'string' || !B64URL.test(f[field])) throw malformed(`${field} is not base64url`);
  }
  return f as unknown as BatchFile;
}

/** Authenticated plaintext still gets checked: the tool writes files named after device IDs. */
function checkPlaintext(value: unknown, header: BatchHeader): BatchPlaintext {
  const bad = (what: string) =>
    new FactoryError('ERR_FACTORY_BATCH_MALFORMED', `batch content is invalid: ${what}`, 65);
  const p = value as BatchPlaintext;
  if (typeof p !== 'object' || p === null || !Array.isArray(p.devices)) throw bad('no device list');
  if (p.batchId !== header.batchId || p.stationId !== header.stationId || p.productId !== header.productId) {
    throw bad('it names another batch, station or product than its header');
  }
  if (p.devices.length !== header.deviceCount) throw bad('the device count differs from the header');
  const seen = new Set<string>();
  for (const device of p.devices) {
    if (typeof device?.deviceId !== 'string' || !/^[0-9a-f]{24}$/.test(device.deviceId)) throw bad('a device ID');
    if (seen.has(device.deviceId)) throw bad(`device ${device.deviceId} appears twice`);
    seen.add(device.deviceId);
    if (typeof device.image !== 'string') throw bad(`device ${device.deviceId} has no image`);
    const image = parseDeviceImage(device.image);
    if (image.deviceId !== device.deviceId || image.batchId !== p.batchId || image.productId !== p.productId) {
      throw bad(`the image of ${device.deviceId} belongs to another device, batch or product`);
    }
  }
  return p;
}

/** Parses a device file written by the factory tool. */
export function parseDeviceImage(text: string): DeviceImage {
  const bad = (what: string) => new FactoryError('ERR_FACTORY_IMAGE_INVALID', `device file is invalid: ${what}`, 65);
  let value: Record<string, unknown>;
  try {
    value = JSON.parse(text) as Record<string, unknown>;
  } catch {
    throw bad('not JSON');
  }
  if (typeof value !== 'object' || value === null || value.format !== DEVICE_IMAGE_FORMAT) {
    throw bad(`format is not ${DEVICE_IMAGE_FORMAT}`);
  }
  for (const field of ['deviceId', 'secret', 'productId', 'batchId', 'caPem', 'caSha256'] as const) {
    if (typeof value[field] !== 'string' || value[field].length === 0) throw bad(`${field} is missing`);
  }
  for (const field of ['mqttUrl', 'httpUrl'] as const) {
    if (value[field] !== null && typeof value[field] !== 'string') throw bad(`${field} is not a URL`);
  }
  return value as unknown as DeviceImage;
}

// ---------------------------------------------------------------------------------------------------
// Burn receipts

export interface BurnReceipt {
  batchId: string;
  deviceId: string;
  stationId: string;
  /** When the device's file was written, ms since the epoch. */
  burnedAt: number;
  /** SHA-256 (hex) of the device file as read back after writing. */
  imageDigest: string;
}

export interface SignedReceipt {
  receipt: BurnReceipt;
  /** Ed25519 over the receipt's canonical JSON, base64url (86 characters). */
  signature: string;
}

/** The exact bytes a receipt's signature covers. */
export function receiptBytes(receipt: BurnReceipt): Buffer {
  const { batchId, deviceId, stationId, burnedAt, imageDigest } = receipt;
  return Buffer.from(canonicalJson({ batchId, deviceId, stationId, burnedAt, imageDigest }), 'utf8');
}

export function signReceipt(receipt: BurnReceipt, signingKey: KeyObject): SignedReceipt {
  return { receipt, signature: sign(null, receiptBytes(receipt), signingKey).toString('base64url') };
}

export function verifyReceipt(signed: SignedReceipt, signingPublicKey: KeyObject): boolean {
  let signature: Buffer;
  try {
    signature = strictBase64url(signed.signature);
  } catch {
    return false;
  }
  if (signature.length !== 64) return false;
  try {
    return verify(null, receiptBytes(signed.receipt), signingPublicKey, signature);
  } catch {
    return false;
  }
}
