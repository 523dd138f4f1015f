// The factory tool's work as library functions (DEV-7): key generation, fetching and opening a batch,
// "burning" (one credentials file per device, read back and hashed), signing and uploading burn
// receipts. `castellan-factory` is a thin command line over these; tests and the demo call them
// directly.
import { createPrivateKey, createPublicKey, type KeyObject } from 'node:crypto';
import {
  chmodSync,
  closeSync,
  existsSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  rmSync,
  writeSync,
} from 'node:fs';
import https from 'node:https';
import { join } from 'node:path';
import {
  type BatchFile,
  type BatchPlaintext,
  curveOf,
  type EncryptionCurve,
  FACTORY_EXIT,
  FactoryError,
  generateStationKeys,
  openBatch,
  parseDeviceImage,
  sha256Hex,
  type SignedReceipt,
  signReceipt,
  spkiPem,
} from './factory-format.ts';

/** File names in a station's key directory (`castellan-factory keygen --out dir`). */
export const STATION_KEY_FILES = {
  encryptionPrivate: 'encryption-key.pem',
  encryptionPublic: 'encryption-public.pem',
  signingPrivate: 'signing-key.pem',
  signingPublic: 'signing-public.pem',
} as const;

const BATCH_ID = /^bat_[A-Za-z0-9_-]{22}$/;
/** Receipts per upload: well under the platform's default 1 MiB request body. */
const RECEIPTS_PER_UPLOAD = 250;

export interface StationKeys {
  /** Opens batches (X25519 or P-256 private key). */
  encryptionKey: KeyObject;
  /** Signs burn receipts (Ed25519 private key). */
  signingKey: KeyObject;
  curve: EncryptionCurve;
}

export interface KeygenResult {
  encryptionPublicKey: string;
  signingPublicKey: string;
  curve: EncryptionCurve;
  dir: string;
}

/** Writes a new station key directory (0700, files 0600); refuses to overwrite existing keys. */
export function keygen(options: { outDir: string; curve?: EncryptionCurve }): KeygenResult {
  const curve = options.curve ?? 'X25519';
  const keys = generateStationKeys(curve);
  mkdirSync(options.outDir, { recursive: true, mode: 0o700 });
  const files: [string, string][] = [
    [
      STATION_KEY_FILES.encryptionPrivate,
      keys.encryption.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    ],
    [STATION_KEY_FILES.encryptionPublic, spkiPem(keys.encryption.publicKey)],
    [STATION_KEY_FILES.signingPrivate, keys.signing.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString()],
    [STATION_KEY_FILES.signingPublic, spkiPem(keys.signing.publicKey)],
  ];
  for (const [name] of files) {
    if (existsSync(join(options.outDir, name))) {
      throw new FactoryError(
        'ERR_FACTORY_KEYS_EXIST',
        `${join(options.outDir, name)} exists: refusing to overwrite station keys`,
        FACTORY_EXIT.cantCreate,
      );
    }
  }
  for (const [name, pem] of files) writeNew(join(options.outDir, name), pem);
  return {
    encryptionPublicKey: files[1]![1],
    signingPublicKey: files[3]![1],
    curve,
    dir: options.outDir,
  };
}

/** Reads a station key directory written by keygen(). */
export function loadStationKeys(dir: string): StationKeys {
  const read = (name: string) => readInput(join(dir, name), 'station key');
  const parse = (name: string): KeyObject => {
    try {
      return createPrivateKey({ key: read(name), format: 'pem' });
    } catch (error) {
      if (error instanceof FactoryError) throw error;
      throw new FactoryError(
        'ERR_FACTORY_KEY_INVALID',
        `${join(dir, name)} is not a PEM private key`,
        FACTORY_EXIT.badKey,
        { cause: error },
      );
    }
  };
  const encryptionKey = parse(STATION_KEY_FILES.encryptionPrivate);
  const signingKey = parse(STATION_KEY_FILES.signingPrivate);
  const curve = curveOf(createPublicKey(encryptionKey));
  if (!curve) {
    throw new FactoryError(
      'ERR_FACTORY_KEY_INVALID',
      `${join(dir, STATION_KEY_FILES.encryptionPrivate)} is not an X25519 or P-256 key`,
      FACTORY_EXIT.badKey,
    );
  }
  if (signingKey.asymmetricKeyType !== 'ed25519') {
    throw new FactoryError(
      'ERR_FACTORY_KEY_INVALID',
      `${join(dir, STATION_KEY_FILES.signingPrivate)} is not an Ed25519 key`,
      FACTORY_EXIT.badKey,
    );
  }
  return { encryptionKey, signingKey, curve };
}

/** Reads a required input file; a missing or unreadable one is a clear error (exit 66). */
export function readInput(file: string, what: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? 'unreadable';
    throw new FactoryError('ERR_FACTORY_NO_INPUT', `cannot read ${what} ${file} (${code})`, FACTORY_EXIT.noInput, {
      cause: error,
    });
  }
}

export interface PlatformConnection {
  /** https://host:port of the platform's API. */
  url: string;
  /** PEM CA certificate the platform's TLS certificate must chain to (no system trust store). */
  ca: string | Buffer;
  /** The station's factory token (cas_fac_…). */
  token: string;
  /** Per-request timeout, ms (default 30000). */
  timeoutMs?: number;
}

interface PlatformReply {
  status: number;
  body: unknown;
}

function platformRequest(
  connection: PlatformConnection,
  method: 'GET' | 'POST',
  path: string,
  body?: unknown,
): Promise<PlatformReply> {
  let url: URL;
  try {
    url = new URL(path, connection.url);
  } catch {
    throw new FactoryError('ERR_FACTORY_USAGE', `not a URL: ${connection.url}`, FACTORY_EXIT.usage);
  }
  if (url.protocol !== 'https:') {
    throw new FactoryError('ERR_FACTORY_USAGE', 'the platform URL must be https://', FACTORY_EXIT.usage);
  }
  const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body), 'utf8');
  return new Promise((resolve, reject) => {
    const req = https.request(
      url,
      {
        method,
        ca: connection.ca,
        rejectUnauthorized: true,
        agent: false,
        timeout: connection.timeoutMs ?? 30_000,
        headers: {
          authorization: `Bearer ${connection.token}`,
          accept: 'application/json',
          ...(payload ? { 'content-type': 'application/json', 'content-length': payload.length } : {}),
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let parsed: unknown = text;
          try {
            parsed = text ? JSON.parse(text) : null;
          } catch {
            // not JSON: reported as it is
          }
          resolve({ status: res.statusCode ?? 0, body: parsed });
        });
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error('request timed out')));
    req.on('error', (error) =>
      reject(
        new FactoryError(
          'ERR_FACTORY_UNAVAILABLE',
          `cannot reach the platform at ${url.origin}: ${error.message}`,
          FACTORY_EXIT.unavailable,
          { cause: error },
        ),
      ),
    );
    req.end(payload);
  });
}

/** The platform's refusal as a FactoryError that names its error code. */
function refused(reply: PlatformReply, what: string): FactoryError {
  const error = (reply.body as { error?: { code?: string; message?: string; details?: unknown } } | null)?.error;
  const detail = error?.details ? ` ${JSON.stringify(error.details)}` : '';
  return Object.assign(
    new FactoryError(
      error?.code ?? 'ERR_FACTORY_REFUSED',
      `${what}: the platform answered ${reply.status} ${error?.code ?? ''} ${error?.message ?? ''}`.trim() + detail,
      FACTORY_EXIT.refused,
    ),
    { status: reply.status, details: error?.details },
  );
}

/** Fetches a batch file (sealed to this station) from the platform. */
export async function fetchBatch(connection: PlatformConnection, batchId: string): Promise<BatchFile> {
  if (!BATCH_ID.test(batchId)) {
    throw new FactoryError('ERR_FACTORY_USAGE', `not a batch ID: ${batchId}`, FACTORY_EXIT.usage);
  }
  const reply = await platformRequest(connection, 'GET', `/v1/factory/batches/${batchId}`);
  if (reply.status !== 200) throw refused(reply, `fetching batch ${batchId}`);
  return reply.body as BatchFile;
}

export interface ReceiptUploadResult {
  /** Receipts the platform holds for these devices after the upload (new and already recorded). */
  accepted: number;
  recorded: number;
  duplicates: number;
}

/** Uploads signed receipts, in chunks; all-or-nothing per chunk on the platform's side. */
export async function uploadReceipts(
  connection: PlatformConnection,
  batchId: string,
  receipts: readonly SignedReceipt[],
): Promise<ReceiptUploadResult> {
  const total: ReceiptUploadResult = { accepted: 0, recorded: 0, duplicates: 0 };
  for (let i = 0; i < receipts.length; i += RECEIPTS_PER_UPLOAD) {
    const reply = await platformRequest(connection, 'POST', `/v1/factory/batches/${batchId}/receipts`, {
      receipts: receipts.slice(i, i + RECEIPTS_PER_UPLOAD),
    });
    if (reply.status !== 200) throw refused(reply, `uploading receipts for batch ${batchId}`);
    const result = reply.body as ReceiptUploadResult;
    total.accepted += result.accepted;
    total.recorded += result.recorded;
    total.duplicates += result.duplicates;
  }
  return total;
}

export interface BurnOptions extends PlatformConnection {
  batchId: string;
  /** The station's keys, or the directory keygen() wrote them to. */
  keys: StationKeys | string;
  /** Where the device files (`<deviceId>.json`, 0600) and the signed receipts go. */
  outDir: string;
  now?: () => number;
}

export interface BurnSummary {
  batchId: string;
  stationId: string;
  productId: string;
  /** Device files written and verified by reading them back. */
  burned: number;
  files: string[];
  receiptsFile: string;
  accepted: number;
  recorded: number;
  duplicates: number;
}

/** The file a burn keeps its signed receipts in (re-used on a re-run, so receipts stay identical). */
export const receiptsFileName = (batchId: string) => `receipts-${batchId}.json`;

/**
 * Fetches a batch, opens it with the station's key, writes one credentials file per device (read back
 * and hashed: the digest is what the receipt certifies), signs a receipt per device and uploads them.
 * Re-running after a failure re-uses the receipts already signed, so the platform sees identical
 * receipts (idempotent) rather than conflicting ones.
 */
export async function burnBatch(options: BurnOptions): Promise<BurnSummary> {
  const keys = typeof options.keys === 'string' ? loadStationKeys(options.keys) : options.keys;
  const file = await fetchBatch(options, options.batchId);
  const batch = openBatch(file, keys.encryptionKey);
  if (batch.batchId !== options.batchId) {
    throw new FactoryError('ERR_FACTORY_BATCH_MALFORMED', 'the platform sent another batch than asked for', 65);
  }
  const { receipts, files, receiptsFile } = burnDevices(batch, keys, options.outDir, options.now ?? Date.now);
  const upload = await uploadReceipts(options, batch.batchId, receipts);
  return {
    batchId: batch.batchId,
    stationId: batch.stationId,
    productId: batch.productId,
    burned: files.length,
    files,
    receiptsFile,
    ...upload,
  };
}

/** The local half of a burn: device files and signed receipts (no network). */
export function burnDevices(
  batch: BatchPlaintext,
  keys: Pick<StationKeys, 'signingKey'>,
  outDir: string,
  now: () => number = Date.now,
): { receipts: SignedReceipt[]; files: string[]; receiptsFile: string } {
  mkdirSync(outDir, { recursive: true, mode: 0o700 });
  const receiptsFile = join(outDir, receiptsFileName(batch.batchId));
  const previous = new Map<string, SignedReceipt>();
  if (existsSync(receiptsFile)) {
    let earlier: unknown;
    try {
      earlier = JSON.parse(readInput(receiptsFile, 'receipts file'));
    } catch (error) {
      if (error instanceof FactoryError) throw error;
      throw new FactoryError(
        'ERR_FACTORY_RECEIPTS_CORRUPT',
        `${receiptsFile} is not a receipts file`,
        FACTORY_EXIT.data,
      );
    }
    if (!Array.isArray(earlier)) {
      throw new FactoryError(
        'ERR_FACTORY_RECEIPTS_CORRUPT',
        `${receiptsFile} is not a receipts file`,
        FACTORY_EXIT.data,
      );
    }
    for (const signed of earlier as SignedReceipt[]) {
      if (typeof signed?.receipt?.deviceId === 'string') previous.set(signed.receipt.deviceId, signed);
    }
  }
  const receipts: SignedReceipt[] = [];
  const files: string[] = [];
  for (const device of batch.devices) {
    const path = join(outDir, `${device.deviceId}.json`);
    if (existsSync(path)) {
      if (readFileSync(path, 'utf8') !== device.image) {
        throw new FactoryError(
          'ERR_FACTORY_OUTPUT_EXISTS',
          `${path} exists with other content: refusing to overwrite it`,
          FACTORY_EXIT.cantCreate,
        );
      }
      chmodSync(path, 0o600);
    } else {
      writeAtomically(path, device.image);
    }
    // Read back, as a burner verifies flash: the receipt certifies what is there, not what was meant.
    const written = readFileSync(path);
    if (!written.equals(Buffer.from(device.image, 'utf8'))) {
      throw new FactoryError('ERR_FACTORY_VERIFY_FAILED', `read-back of ${path} differs`, FACTORY_EXIT.cantCreate);
    }
    parseDeviceImage(written.toString('utf8'));
    const imageDigest = sha256Hex(written);
    const earlier = previous.get(device.deviceId);
    const reusable =
      earlier?.receipt.imageDigest === imageDigest &&
      earlier.receipt.batchId === batch.batchId &&
      earlier.receipt.stationId === batch.stationId;
    receipts.push(
      reusable
        ? earlier
        : signReceipt(
            {
              batchId: batch.batchId,
              deviceId: device.deviceId,
              stationId: batch.stationId,
              burnedAt: now(),
              imageDigest,
            },
            keys.signingKey,
          ),
    );
    files.push(path);
  }
  writeAtomically(receiptsFile, `${JSON.stringify(receipts, null, 2)}\n`);
  return { receipts, files, receiptsFile };
}

export interface DeviceCredentials {
  deviceId: string;
  secret: string;
  productId: string;
  mqttUrl: string | null;
  httpUrl: string | null;
  /** The pinned platform CA (PEM). */
  ca: string;
}

/** Reads a burned device file (what the device's firmware would read from flash). */
export function loadDeviceCredentials(file: string): DeviceCredentials {
  const image = parseDeviceImage(readInput(file, 'device file'));
  return {
    deviceId: image.deviceId,
    secret: image.secret,
    productId: image.productId,
    mqttUrl: image.mqttUrl,
    httpUrl: image.httpUrl,
    ca: image.caPem,
  };
}

/** Creates a file that must not exist yet, owner-only. */
function writeNew(path: string, text: string): void {
  let fd: number;
  try {
    fd = openSync(path, 'wx', 0o600);
  } catch (error) {
    throw new FactoryError('ERR_FACTORY_CANT_CREATE', `cannot create ${path}: ${(error as Error).message}`, 73, {
      cause: error,
    });
  }
  try {
    writeSync(fd, text);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Writes through a temporary file and a rename: a crash leaves the old file or the new, never half. */
function writeAtomically(path: string, text: string): void {
  const temporary = `${path}.tmp-${process.pid}`;
  rmSync(temporary, { force: true });
  writeNew(temporary, text);
  try {
    renameSync(temporary, path);
  } catch (error) {
    rmSync(temporary, { force: true });
    throw new FactoryError('ERR_FACTORY_CANT_CREATE', `cannot write ${path}: ${(error as Error).message}`, 73, {
      cause: error,
    });
  }
}
