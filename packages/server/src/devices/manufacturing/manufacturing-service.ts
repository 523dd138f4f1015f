// The manufacturing line (DEV-7, S 8.1.2f, G 2.2.1.1). A vendor registers a factory station (the
// factory tool's identity: a bearer token for one product, an encryption key batches are sealed to, a
// signing key for burn receipts), issues batches of devices to it, and the platform records a signed
// burn receipt per device. A batch device without a receipt is refused at connect; its first
// successful connection activates it.
//
// Secrets: device secrets live only in the device rows (encrypted under the tenant's key, as every
// device's) and inside the batch file sealed to the station's public key, which the platform cannot
// open. The station token is stored as its SHA-256.
import { createHash } from 'node:crypto';
import {
  type BatchFile,
  deviceImageText,
  FactoryError,
  parseEncryptionPublicKey,
  parseSigningPublicKey,
  receiptBytes,
  sealBatch,
  type SignedReceipt,
  spkiPem,
  verifyReceipt,
} from '@castellan/device';
import type { Kysely } from 'kysely';
import type { AuditEvent } from '../../audit/index.ts';
import { CastellanError } from '../../errors/index.ts';
import { asBuffer } from '../../lib/bytes.ts';
import { constantTimeEqual, hashToken, newId, newToken } from '../../lib/random-ids.ts';
import type { Database } from '../../store/index.ts';
import type { DeviceEvents } from '../device-events.ts';
import type { Device, DevicesService, Product } from '../devices-service.ts';
import type { PresenceChange } from '../presence-events.ts';

export type StationStatus = 'active' | 'revoked' | 'expired';

export interface FactoryStation {
  readonly id: string;
  readonly vendorId: string;
  readonly productId: string;
  readonly name: string;
  readonly encryptionCurve: 'X25519' | 'P-256';
  readonly encryptionPublicKey: string;
  readonly signingPublicKey: string;
  readonly createdAt: number;
  readonly expiresAt: number;
  readonly revokedAt: number | null;
  readonly lastUsedAt: number | null;
  readonly status: StationStatus;
}

export interface BatchCounts {
  /** Devices the batch issued. */
  readonly issued: number;
  /** Devices with a recorded burn receipt. */
  readonly burned: number;
  /** Devices that have connected at least once (after their receipt). */
  readonly activated: number;
}

export interface Batch {
  readonly id: string;
  readonly vendorId: string;
  readonly productId: string;
  readonly stationId: string;
  readonly deviceCount: number;
  readonly createdAt: number;
  readonly firstFetchedAt: number | null;
  readonly fetchCount: number;
}

export type BatchDeviceState = 'issued' | 'burned' | 'activated';

export interface BatchDevice {
  readonly deviceId: string;
  readonly state: BatchDeviceState;
  readonly burnedAt: number | null;
  readonly receiptRecordedAt: number | null;
  readonly activatedAt: number | null;
}

export interface ReceiptResult {
  /** Distinct devices of the upload whose receipt the platform now holds. */
  readonly accepted: number;
  /** Of those, recorded by this upload. */
  readonly recorded: number;
  /** Of those, already recorded with the identical receipt (a replay). */
  readonly duplicates: number;
}

/** Where batch devices find the platform (written into each device's credentials image). */
export interface PlatformEndpoints {
  readonly mqttUrl: string | null;
  readonly httpUrl: string | null;
  readonly caPem: string;
}

export interface ManufacturingServiceOptions {
  db: Kysely<Database>;
  devices: DevicesService;
  events: DeviceEvents;
  /** Audit for events no request carries (activation). */
  record: (event: AuditEvent) => void;
  endpoints: () => PlatformEndpoints;
  log?: { warn(object: object, message: string): void };
  now?: () => number;
}

/** Devices one batch may hold: a batch file stays around a megabyte. */
export const MAX_BATCH_DEVICES = 1000;
export const DEFAULT_STATION_DAYS = 90;
export const MAX_STATION_DAYS = 365;
/** How far a receipt's burnedAt may lie before the batch or after now (clock skew at the factory). */
const BURNED_AT_SKEW_MS = 10 * 60_000;
const TOKEN_SHAPE = /^cas_fac_[A-Za-z0-9_-]{43}$/;
/** last_used_at is written at most this often per station. */
const LAST_USED_GRANULARITY_MS = 60_000;
const CHUNK = 500;

const noLog = { warn() {} };

/** The columns a Batch is built from (everything but the sealed file). */
const BATCH_COLUMNS = [
  'id',
  'vendor_id',
  'product_id',
  'station_id',
  'device_count',
  'created_at',
  'first_fetched_at',
  'fetch_count',
] as const;

export class ManufacturingService {
  readonly #db: Kysely<Database>;
  readonly #devices: DevicesService;
  readonly #events: DeviceEvents;
  readonly #record: (event: AuditEvent) => void;
  readonly #endpoints: () => PlatformEndpoints;
  readonly #log: NonNullable<ManufacturingServiceOptions['log']>;
  /** Devices whose activation is recorded or that are not batch devices (bounded). */
  readonly #handled = new Set<string>();
  readonly #now: () => number;
  #unsubscribe: (() => void) | undefined;

  constructor(options: ManufacturingServiceOptions) {
    this.#db = options.db;
    this.#devices = options.devices;
    this.#events = options.events;
    this.#record = options.record;
    this.#endpoints = options.endpoints;
    this.#log = options.log ?? noLog;
    this.#now = options.now ?? Date.now;
  }

  /**
   * Registers the admission check (a batch device needs a burn receipt) and starts activating batch
   * devices on their first successful connection.
   */
  start(): void {
    this.#devices.addAdmissionCheck((device) => this.admissionCheck(device));
    const listener = (change: PresenceChange) => {
      if (change.type !== 'connected') return;
      this.recordActivation(change.deviceId, change.vendorId, change.at);
    };
    this.#devices.presence.events.on('change', listener);
    this.#unsubscribe = () => this.#devices.presence.events.off('change', listener);
  }

  close(): void {
    this.#unsubscribe?.();
    this.#unsubscribe = undefined;
  }

  /** DEV-7: a device issued by a batch connects only once its burn receipt is recorded. */
  async admissionCheck(device: Device): Promise<string | null> {
    const row = await this.#db
      .selectFrom('manufacturing_devices')
      .select('receipt_recorded_at')
      .where('device_id', '=', device.id)
      .executeTakeFirst();
    return row && row.receipt_recorded_at === null ? 'no-burn-receipt' : null;
  }

  // -------------------------------------------------------------------------------------------------
  // Stations

  async registerStation(
    product: Product,
    input: { name: string; encryptionPublicKey: string; signingPublicKey: string; expiresInDays?: number },
    createdBy: string,
  ): Promise<{ station: FactoryStation; token: string }> {
    const encryption = publicKeyOf(() => parseEncryptionPublicKey(input.encryptionPublicKey), 'encryptionPublicKey');
    const signing = publicKeyOf(() => parseSigningPublicKey(input.signingPublicKey), 'signingPublicKey');
    const days = input.expiresInDays ?? DEFAULT_STATION_DAYS;
    const now = this.#now();
    const token = newToken('cas_fac');
    const row: Database['factory_stations'] = {
      id: newId('fst'),
      vendor_id: product.vendorId,
      product_id: product.id,
      name: input.name,
      token_hash: hashToken(token),
      encryption_curve: encryption.curve,
      encryption_public_key: spkiPem(encryption.key),
      signing_public_key: spkiPem(signing),
      created_by: createdBy,
      created_at: now,
      expires_at: now + days * 86_400_000,
      revoked_at: null,
      last_used_at: null,
    };
    await this.#db.insertInto('factory_stations').values(row).execute();
    return { station: this.#toStation(row), token };
  }

  async listStations(productId: string): Promise<FactoryStation[]> {
    const rows = await this.#db
      .selectFrom('factory_stations')
      .selectAll()
      .where('product_id', '=', productId)
      .orderBy('created_at')
      .orderBy('id')
      .execute();
    return rows.map((row) => this.#toStation(row));
  }

  async getStation(productId: string, stationId: string): Promise<FactoryStation | null> {
    const row = await this.#stationRow(productId, stationId);
    return row ? this.#toStation(row) : null;
  }

  /** Revokes a station's token at once (idempotent); null when there is no such station. */
  async revokeStation(productId: string, stationId: string): Promise<FactoryStation | null> {
    await this.#db
      .updateTable('factory_stations')
      .set({ revoked_at: this.#now() })
      .where('id', '=', stationId)
      .where('product_id', '=', productId)
      .where('revoked_at', 'is', null)
      .execute();
    return this.getStation(productId, stationId);
  }

  /**
   * The station behind a factory token, or null (unknown, revoked, expired, malformed: one answer).
   * Looked up by the token's SHA-256, so timing depends on the hash, never on the token's characters.
   */
  async authenticateStation(token: string): Promise<FactoryStation | null> {
    if (!TOKEN_SHAPE.test(token)) return null;
    const hash = hashToken(token);
    const row = await this.#db
      .selectFrom('factory_stations')
      .selectAll()
      .where('token_hash', '=', hash)
      .executeTakeFirst();
    const now = this.#now();
    if (!row || !constantTimeEqual(asBuffer(row.token_hash), hash)) return null;
    if (row.revoked_at !== null || row.expires_at <= now) return null;
    if (row.last_used_at === null || now - row.last_used_at >= LAST_USED_GRANULARITY_MS) {
      await this.#db.updateTable('factory_stations').set({ last_used_at: now }).where('id', '=', row.id).execute();
      row.last_used_at = now;
    }
    return this.#toStation(row);
  }

  // -------------------------------------------------------------------------------------------------
  // Batches

  /**
   * Issues `count` devices (DevicesService.createDevices: IDs per DEV-1, one transaction) and seals
   * their credentials images into a batch file for the station. The secrets are returned to nobody:
   * they leave this function only inside the sealed file.
   */
  async issueBatch(
    product: Product,
    input: { stationId: string; count: number },
    createdBy: string,
  ): Promise<{ batch: Batch; deviceIds: string[] }> {
    if (!Number.isInteger(input.count) || input.count < 1 || input.count > MAX_BATCH_DEVICES) {
      throw new CastellanError('ERR_VALIDATION_FAILED', {
        message: `count must be an integer from 1 to ${MAX_BATCH_DEVICES}`,
        details: { field: 'count' },
      });
    }
    if (!product.authModes.includes('secret')) {
      throw new CastellanError('ERR_PRODUCT_AUTH_MODE_NOT_ALLOWED', {
        message: 'Batches issue per-device secrets; this product does not accept the secret authentication mode',
        details: { securityLevel: product.securityLevel, notAllowed: ['secret'] },
      });
    }
    const station = await this.#stationRow(product.id, input.stationId);
    if (!station) throw new CastellanError('ERR_FACTORY_STATION_NOT_FOUND');
    if (stationStatus(station, this.#now()) !== 'active') throw new CastellanError('ERR_FACTORY_STATION_INACTIVE');
    const endpoints = this.#endpoints();
    const batchId = newId('bat');
    const createdAt = this.#now();
    // The batch rows are written in the devices' own transaction: devices without their batch (and so
    // outside the receipt gate) never exist, and a failure leaves neither behind.
    const issued = await this.#devices.createDevices(product.id, input.count, {
      within: async (trx, issuedDevices) => {
        const devices = issuedDevices.map((device) => ({
          deviceId: device.id,
          image: deviceImageText({
            deviceId: device.id,
            secret: device.secret,
            productId: product.id,
            batchId,
            mqttUrl: endpoints.mqttUrl,
            httpUrl: endpoints.httpUrl,
            caPem: endpoints.caPem,
          }),
        }));
        const file = sealBatch(
          { batchId, stationId: station.id, productId: product.id, devices },
          station.encryption_public_key,
          { createdAt },
        );
        const rows = devices.map((device) => ({
          device_id: device.deviceId,
          batch_id: batchId,
          vendor_id: product.vendorId,
          image_digest: createHash('sha256').update(device.image, 'utf8').digest(),
        }));
        await trx
          .insertInto('manufacturing_batches')
          .values({
            id: batchId,
            vendor_id: product.vendorId,
            product_id: product.id,
            station_id: station.id,
            device_count: rows.length,
            sealed_file: Buffer.from(JSON.stringify(file), 'utf8'),
            created_by: createdBy,
            created_at: createdAt,
            first_fetched_at: null,
          })
          .execute();
        for (let i = 0; i < rows.length; i += CHUNK) {
          await trx
            .insertInto('manufacturing_devices')
            .values(rows.slice(i, i + CHUNK))
            .execute();
        }
      },
    });
    const batch: Batch = {
      id: batchId,
      vendorId: product.vendorId,
      productId: product.id,
      stationId: station.id,
      deviceCount: issued.length,
      createdAt,
      firstFetchedAt: null,
      fetchCount: 0,
    };
    return { batch, deviceIds: issued.map((device) => device.id) };
  }

  async getBatch(productId: string, batchId: string): Promise<(Batch & { counts: BatchCounts }) | null> {
    const row = await this.#db
      .selectFrom('manufacturing_batches')
      .select(BATCH_COLUMNS)
      .where('id', '=', batchId)
      .where('product_id', '=', productId)
      .executeTakeFirst();
    if (!row) return null;
    const counts = await this.#db
      .selectFrom('manufacturing_devices')
      .select((eb) => [
        eb.fn.countAll<number | string | bigint>().as('issued'),
        eb.fn.count<number | string | bigint>('receipt_recorded_at').as('burned'),
        eb.fn.count<number | string | bigint>('activated_at').as('activated'),
      ])
      .where('batch_id', '=', batchId)
      .executeTakeFirstOrThrow();
    return {
      ...toBatch(row),
      counts: { issued: Number(counts.issued), burned: Number(counts.burned), activated: Number(counts.activated) },
    };
  }

  async listBatches(productId: string, options: { limit: number; after?: string }): Promise<Batch[]> {
    let query = this.#db.selectFrom('manufacturing_batches').select(BATCH_COLUMNS).where('product_id', '=', productId);
    if (options.after) query = query.where('id', '>', options.after);
    const rows = await query.orderBy('id').limit(options.limit).execute();
    return rows.map(toBatch);
  }

  /** The devices of a batch with their manufacturing state, ordered by device ID. */
  async listBatchDevices(batchId: string, options: { limit: number; after?: string }): Promise<BatchDevice[]> {
    let query = this.#db
      .selectFrom('manufacturing_devices')
      .select(['device_id', 'burned_at', 'receipt_recorded_at', 'activated_at'])
      .where('batch_id', '=', batchId);
    if (options.after) query = query.where('device_id', '>', options.after);
    const rows = await query.orderBy('device_id').limit(options.limit).execute();
    return rows.map((row) => ({
      deviceId: row.device_id,
      state: row.activated_at !== null ? 'activated' : row.receipt_recorded_at !== null ? 'burned' : 'issued',
      burnedAt: row.burned_at,
      receiptRecordedAt: row.receipt_recorded_at,
      activatedAt: row.activated_at,
    }));
  }

  /** The sealed batch file for the station it was issued to; null for any other station. */
  async fetchSealedBatch(station: FactoryStation, batchId: string): Promise<{ batch: Batch; file: BatchFile } | null> {
    const row = await this.#db
      .selectFrom('manufacturing_batches')
      .selectAll()
      .where('id', '=', batchId)
      .where('station_id', '=', station.id)
      .where('product_id', '=', station.productId)
      .executeTakeFirst();
    if (!row) return null;
    const now = this.#now();
    await this.#db
      .updateTable('manufacturing_batches')
      .set((eb) => ({
        fetch_count: eb('fetch_count', '+', 1),
        first_fetched_at: eb.fn.coalesce('first_fetched_at', eb.val(now)),
      }))
      .where('id', '=', batchId)
      .execute();
    const file = JSON.parse(asBuffer(row.sealed_file).toString('utf8')) as BatchFile;
    return {
      batch: toBatch({ ...row, fetch_count: row.fetch_count + 1, first_fetched_at: row.first_fetched_at ?? now }),
      file,
    };
  }

  /**
   * Records burn receipts for a batch, all or nothing: every receipt must name this batch and station
   * and a device of the batch, verify with the station's Ed25519 key, certify the image issued for the
   * device and carry a plausible time. A device that already has the identical receipt counts as a
   * duplicate (replays are harmless); a different one is a conflict.
   */
  async recordReceipts(
    station: FactoryStation,
    batchId: string,
    receipts: readonly SignedReceipt[],
  ): Promise<{
    batch: Batch;
    result: ReceiptResult;
  }> {
    const batchRow = await this.#db
      .selectFrom('manufacturing_batches')
      .select(BATCH_COLUMNS)
      .where('id', '=', batchId)
      .where('station_id', '=', station.id)
      .where('product_id', '=', station.productId)
      .executeTakeFirst();
    if (!batchRow) throw new CastellanError('ERR_FACTORY_BATCH_NOT_FOUND');
    const signingKey = parseSigningPublicKey(station.signingPublicKey);
    const ids = [...new Set(receipts.map((signed) => signed.receipt.deviceId))];
    const rows = new Map<string, { image_digest: Uint8Array; receipt: string | null }>();
    for (let i = 0; i < ids.length; i += CHUNK) {
      const found = await this.#db
        .selectFrom('manufacturing_devices')
        .select(['device_id', 'image_digest', 'receipt'])
        .where('batch_id', '=', batchId)
        .where('device_id', 'in', ids.slice(i, i + CHUNK))
        .execute();
      for (const row of found) rows.set(row.device_id, row);
    }
    const now = this.#now();
    const planned = new Map<string, { text: string; signature: Buffer; burnedAt: number; index: number } | 'held'>();
    receipts.forEach((signed, index) => {
      const { receipt } = signed;
      const invalid = (reason: string) =>
        new CastellanError('ERR_FACTORY_RECEIPT_INVALID', { details: { index, deviceId: receipt.deviceId, reason } });
      if (receipt.batchId !== batchId || receipt.stationId !== station.id) throw invalid('batch-mismatch');
      const row = rows.get(receipt.deviceId);
      if (!row) throw invalid('not-in-batch');
      if (!verifyReceipt(signed, signingKey)) throw invalid('signature');
      if (!constantTimeEqual(Buffer.from(receipt.imageDigest, 'hex'), asBuffer(row.image_digest))) {
        throw invalid('image-digest');
      }
      if (receipt.burnedAt < batchRow.created_at - BURNED_AT_SKEW_MS || receipt.burnedAt > now + BURNED_AT_SKEW_MS) {
        throw invalid('burned-at');
      }
      const text = receiptBytes(receipt).toString('utf8');
      const conflict = () =>
        new CastellanError('ERR_FACTORY_RECEIPT_CONFLICT', { details: { index, deviceId: receipt.deviceId } });
      const earlier = planned.get(receipt.deviceId);
      if (earlier !== undefined) {
        // The same device twice in one upload: fine only if it is the same receipt.
        const earlierText = earlier === 'held' ? row.receipt : earlier.text;
        if (earlierText !== text) throw conflict();
        return;
      }
      if (row.receipt !== null) {
        if (row.receipt !== text) throw conflict();
        planned.set(receipt.deviceId, 'held');
        return;
      }
      planned.set(receipt.deviceId, {
        text,
        signature: Buffer.from(signed.signature, 'base64url'),
        burnedAt: receipt.burnedAt,
        index,
      });
    });
    let recorded = 0;
    let duplicates = 0;
    await this.#db.transaction().execute(async (trx) => {
      for (const [deviceId, plan] of planned) {
        if (plan === 'held') {
          duplicates++;
          continue;
        }
        const result = await trx
          .updateTable('manufacturing_devices')
          .set({
            receipt: plan.text,
            receipt_signature: plan.signature,
            burned_at: plan.burnedAt,
            receipt_recorded_at: now,
          })
          .where('device_id', '=', deviceId)
          .where('batch_id', '=', batchId)
          .where('receipt', 'is', null)
          .executeTakeFirst();
        if (Number(result.numUpdatedRows) === 1) {
          recorded++;
          continue;
        }
        // Recorded meanwhile by a concurrent upload: the same receipt is a duplicate, another a conflict.
        const current = await trx
          .selectFrom('manufacturing_devices')
          .select('receipt')
          .where('device_id', '=', deviceId)
          .executeTakeFirst();
        if (current?.receipt !== plan.text) {
          throw new CastellanError('ERR_FACTORY_RECEIPT_CONFLICT', { details: { index: plan.index, deviceId } });
        }
        duplicates++;
      }
    });
    return { batch: toBatch(batchRow), result: { accepted: recorded + duplicates, recorded, duplicates } };
  }

  /** First successful connection of a burned batch device: record it once, tell the listeners. */
  /**
   * A device's first successful use (an MQTT connection, or an admitted device-API request) activates
   * it. Remembers devices already handled so that later requests cost no write.
   */
  recordActivation(deviceId: string, vendorId: string, at: number): void {
    if (this.#handled.has(deviceId)) return;
    this.#activate(deviceId, vendorId, at).then(
      () => {
        if (this.#handled.size >= 100_000) this.#handled.clear();
        this.#handled.add(deviceId);
      },
      (error: unknown) => this.#log.warn({ err: error, deviceId }, 'manufacturing: activation not recorded'),
    );
  }

  async #activate(deviceId: string, vendorId: string, at: number): Promise<void> {
    const activated = await this.#db
      .updateTable('manufacturing_devices')
      .set({ activated_at: at })
      .where('device_id', '=', deviceId)
      .where('activated_at', 'is', null)
      .where('receipt_recorded_at', 'is not', null)
      .returning(['batch_id'])
      .executeTakeFirst();
    if (!activated) return;
    this.#record({
      actor: { type: 'device', id: deviceId },
      tenant: vendorId,
      type: 'device.activate',
      target: deviceId,
      result: 'success',
      details: { batchId: activated.batch_id },
    });
    this.#events.emit('change', {
      deviceId,
      vendorId,
      kind: 'device.activated',
      at,
      data: { batchId: activated.batch_id },
    });
  }

  #stationRow(productId: string, stationId: string) {
    return this.#db
      .selectFrom('factory_stations')
      .selectAll()
      .where('id', '=', stationId)
      .where('product_id', '=', productId)
      .executeTakeFirst();
  }

  #toStation(row: Database['factory_stations']): FactoryStation {
    return {
      id: row.id,
      vendorId: row.vendor_id,
      productId: row.product_id,
      name: row.name,
      encryptionCurve: row.encryption_curve,
      encryptionPublicKey: row.encryption_public_key,
      signingPublicKey: row.signing_public_key,
      createdAt: row.created_at,
      expiresAt: row.expires_at,
      revokedAt: row.revoked_at,
      lastUsedAt: row.last_used_at,
      status: stationStatus(row, this.#now()),
    };
  }
}

function stationStatus(row: { revoked_at: number | null; expires_at: number }, now: number): StationStatus {
  if (row.revoked_at !== null) return 'revoked';
  return row.expires_at <= now ? 'expired' : 'active';
}

function publicKeyOf<T>(parse: () => T, field: string): T {
  try {
    return parse();
  } catch (error) {
    if (error instanceof FactoryError) {
      throw new CastellanError('ERR_FACTORY_KEY_INVALID', {
        message: `The public key is not a supported key: ${field}: ${error.message}`,
        details: { field },
      });
    }
    throw error;
  }
}

function toBatch(row: {
  id: string;
  vendor_id: string;
  product_id: string;
  station_id: string;
  device_count: number;
  created_at: number;
  first_fetched_at: number | null;
  fetch_count: number;
}): Batch {
  return {
    id: row.id,
    vendorId: row.vendor_id,
    productId: row.product_id,
    stationId: row.station_id,
    deviceCount: Number(row.device_count),
    createdAt: Number(row.created_at),
    firstFetchedAt: row.first_fetched_at === null ? null : Number(row.first_fetched_at),
    fetchCount: Number(row.fetch_count),
  };
}
