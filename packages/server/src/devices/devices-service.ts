// Devices (minimal foundation): products, device identities with per-device secrets, and telemetry.
// The devices issue grows products (schemas, security levels), authentication modes, binding and the
// rest on top of these tables.
import { randomBytes } from 'node:crypto';
import {
  deviceRequestKey as deriveDeviceRequestKey,
  channelPsk,
  deriveLockPasscodeKey,
  generateCode,
  generateDeviceId,
  type SuiteName,
} from '@castellan/protocol';
import type { Kysely, SelectQueryBuilder, Transaction } from 'kysely';
import { CastellanError } from '../errors/index.ts';
import { constantTimeEqual, newId } from '../lib/random-ids.ts';
import type { Database } from '../store/index.ts';
import { PresenceTracker, type PresenceTrackerOptions } from './device-presence.ts';
import { type DataPointSchema, parseDataPointSchema, ProductSchemaError } from './product-schema.ts';
import type { TelemetryWriter } from './telemetry-writer.ts';
import { asBuffer } from '../lib/bytes.ts';

export interface Product {
  readonly id: string;
  readonly vendorId: string;
  readonly code: string;
  readonly name: string;
  readonly category: string;
  readonly createdAt: number;
  /** Report-rate limits for each device of the product (RATE-1); null uses the platform default. */
  readonly reportLimits: ProductReportLimits;
  /** The product's own crypto suite for device secrets (KEY-4); null: the vendor's key and suite. */
  readonly cryptoSuite: SuiteName | null;
  /** S 8.1.1 security level; L2/L3 products accept only the certificate mode (DEV-5). */
  readonly securityLevel: SecurityLevel;
  /** How its devices may authenticate (DEV-3..5). */
  readonly authModes: readonly ProductAuthMode[];
  /** Declared data points (product-schema.ts); null: none, any telemetry object is accepted. */
  readonly dataPoints: DataPointSchema | null;
  /** Days telemetry is kept; null: the platform default. */
  readonly telemetryRetentionDays: number | null;
  /** When the hardware-ID registration secret (DEV-4) was last issued; null: never. */
  readonly secretIssuedAt: number | null;
}

export type SecurityLevel = 'L1' | 'L2' | 'L3';
export const SECURITY_LEVELS: readonly SecurityLevel[] = ['L1', 'L2', 'L3'];
export type ProductAuthMode = 'secret' | 'hardware-id' | 'certificate';
export const PRODUCT_AUTH_MODES: readonly ProductAuthMode[] = ['secret', 'hardware-id', 'certificate'];

/** What a product definition may set (POST /v1/products) or change (PATCH). */
export interface ProductSettings {
  securityLevel?: SecurityLevel;
  authModes?: ProductAuthMode[];
  /** Validated by parseDataPointSchema; null (PATCH) removes it. */
  dataPoints?: unknown;
  telemetryRetentionDays?: number | null;
}

/**
 * DEV-5: L2/L3 products accept only the asymmetric mode. Returns the modes (defaulted per level), or
 * throws ERR_PRODUCT_AUTH_MODE_NOT_ALLOWED naming the modes that are not allowed.
 */
export function checkAuthModes(level: SecurityLevel, modes: readonly ProductAuthMode[] | undefined): ProductAuthMode[] {
  const chosen = modes ?? (level === 'L1' ? ['secret'] : ['certificate']);
  if (chosen.length === 0 || new Set(chosen).size !== chosen.length) {
    throw new CastellanError('ERR_VALIDATION_FAILED', {
      message: 'authModes must list one or more distinct modes',
      details: { field: 'authModes' },
    });
  }
  const refused = level === 'L1' ? [] : chosen.filter((m) => m !== 'certificate');
  if (refused.length > 0) {
    throw new CastellanError('ERR_PRODUCT_AUTH_MODE_NOT_ALLOWED', {
      message: `Products of security level ${level} accept only the certificate authentication mode; not allowed: ${refused.join(', ')}`,
      details: { securityLevel: level, notAllowed: refused },
    });
  }
  return [...chosen];
}

function schemaFrom(raw: unknown): DataPointSchema | null {
  if (raw === undefined || raw === null) return null;
  try {
    return parseDataPointSchema(raw);
  } catch (error) {
    if (error instanceof ProductSchemaError) {
      throw new CastellanError('ERR_PRODUCT_SCHEMA_INVALID', {
        message: `The data-point schema is invalid: ${error.message}`,
      });
    }
    throw error;
  }
}

export interface ProductReportLimits {
  readonly perSecond: number | null;
  readonly perDay: number | null;
}

/** 'decommissioned' is final (DEV-8): credentials destroyed, never connects again, the ID never reused. */
export type DeviceStatus = 'active' | 'disabled' | 'quarantined' | 'decommissioned';

export interface Device {
  readonly id: string;
  readonly vendorId: string;
  readonly productId: string;
  readonly status: DeviceStatus;
  readonly createdAt: number;
}

export interface IssuedDevice {
  readonly id: string;
  /** Shown once; stored only encrypted. */
  readonly secret: string;
}

export interface TelemetryItem {
  readonly seq: number;
  readonly deviceId: string;
  readonly receivedAt: number;
  readonly payload: unknown;
}

/** What the devices subsystem needs from accounts (through its service, never its tables). */
export interface VendorDirectory {
  getVendor(vendorId: string): Promise<{ id: string; code: string } | null>;
}

export interface DevicesServiceOptions {
  db: Kysely<Database>;
  /** Field encryption under the tenant's key (the keys subsystem's envelope API). */
  secrets: FieldCipher;
  vendors: VendorDirectory;
  telemetry: TelemetryWriter;
  maxBatch: number;
  now?: () => number;
  /** Draws a device ID; tests inject collisions through it. */
  generateDeviceId?: (vendorCode: string, productCode: string) => string;
  /** Presence: where write failures are logged, and how often remembered activity is written. */
  presence?: Pick<PresenceTrackerOptions, 'log' | 'activityFlushMs' | 'nodeId' | 'liveNodes'>;
}

/** 256 random bits, base64url: fits an MQTT password and a small chip's flash. */
const DEVICE_SECRET_BYTES = 32;
const CODE_ATTEMPTS = 16;
const ID_ROUNDS = 8;

/** Associated data binding a secret to its row and column (a ciphertext moved elsewhere fails). */
const secretAad = (deviceId: string) => `devices.secret_ciphertext:${deviceId}`;

/** What the devices subsystem needs from the keys subsystem. */
export interface FieldCipher {
  /** Re-encrypts under the tenant's current key version; null when already current. */
  rewrap(tenant: string, sealed: Uint8Array, context: string): Promise<Buffer | null>;
  /** Prepares the key outside of any data-store transaction (a product's own key in its suite). */
  ensureKey(tenant: string, scope?: { product?: string }, suite?: SuiteName): Promise<void>;
  encrypt(tenant: string, plaintext: Uint8Array, context: string, scope?: { product?: string }): Promise<Buffer>;
  decrypt(tenant: string, sealed: Uint8Array, context: string, scope?: { product?: string }): Promise<Buffer>;
}

/** How a device proved who it is: its secret, a certificate (mutual TLS), or a device token (DEV-6). */
export type DeviceAuthMethod = 'secret' | 'certificate' | 'token';

/**
 * A check every authenticated device passes before it may connect or call the device API (MQTT and
 * HTTPS alike): null admits, a string refuses with that reason (audited, never shown to the device).
 * Registered by the parts of the devices subsystem (allowed auth modes of the product, burn receipts,
 * credential lifecycle…).
 */
export type DeviceAdmissionCheck = (device: Device, method: DeviceAuthMethod) => Promise<string | null> | string | null;

/** The platform's own tenant in the key hierarchy (used for the timing decoy). */
const PLATFORM_TENANT = 'platform';

export class DevicesService {
  /** Online/offline and last seen of every device (device_presence); its `events` feed push channels. */
  readonly presence: PresenceTracker;
  readonly #db: Kysely<Database>;
  readonly #secrets: FieldCipher;
  readonly #vendors: VendorDirectory;
  readonly #telemetry: TelemetryWriter;
  readonly #maxBatch: number;
  readonly #now: () => number;
  readonly #drawId: (vendorCode: string, productCode: string) => string;
  readonly #productCache = new Map<string, { product: Product | null; until: number }>();
  readonly #admissionChecks: DeviceAdmissionCheck[] = [];
  /** Decrypted when a device ID is unknown, so that both refusals cost the same. */
  #decoy: Promise<{ id: string; sealed: Buffer }> | undefined;

  constructor(options: DevicesServiceOptions) {
    this.#db = options.db;
    this.#secrets = options.secrets;
    this.#vendors = options.vendors;
    this.#telemetry = options.telemetry;
    this.#maxBatch = options.maxBatch;
    this.#now = options.now ?? Date.now;
    this.#drawId = options.generateDeviceId ?? generateDeviceId;
    this.presence = new PresenceTracker({ db: options.db, now: this.#now, ...options.presence });
  }

  async createProduct(
    vendorId: string,
    input: {
      name: string;
      category: string;
      reportLimits?: Partial<ProductReportLimits>;
      cryptoSuite?: SuiteName;
    } & ProductSettings,
  ): Promise<Product> {
    const securityLevel = input.securityLevel ?? 'L1';
    const authModes = checkAuthModes(securityLevel, input.authModes);
    const dataPoints = schemaFrom(input.dataPoints);
    const vendor = await this.#vendors.getVendor(vendorId);
    if (!vendor) throw new CastellanError('ERR_VENDOR_NOT_FOUND');
    const id = newId('prd');
    // A product with its own suite gets its own key, created (and audited) before the row exists.
    if (input.cryptoSuite) await this.#secrets.ensureKey(vendorId, { product: id }, input.cryptoSuite);
    for (let attempt = 0; attempt < CODE_ATTEMPTS; attempt++) {
      const row = {
        id,
        vendor_id: vendorId,
        code: generateCode(),
        name: input.name,
        category: input.category,
        created_at: this.#now(),
        messages_per_second: input.reportLimits?.perSecond ?? null,
        messages_per_day: input.reportLimits?.perDay ?? null,
        crypto_suite: input.cryptoSuite ?? null,
        security_level: securityLevel,
        auth_modes: JSON.stringify(authModes),
        data_points: dataPoints ? JSON.stringify(dataPoints) : null,
        telemetry_retention_days: input.telemetryRetentionDays ?? null,
        secret_ciphertext: null,
        secret_issued_at: null,
      };
      const inserted = await this.#db
        .insertInto('products')
        .values(row)
        .onConflict((oc) => oc.columns(['vendor_id', 'code']).doNothing())
        .returning('id')
        .executeTakeFirst();
      if (inserted) return toProduct(row);
    }
    throw new CastellanError('ERR_PRODUCT_CODE_EXHAUSTED');
  }

  async getProduct(productId: string): Promise<Product | null> {
    const row = await this.#db.selectFrom('products').selectAll().where('id', '=', productId).executeTakeFirst();
    return row ? toProduct(row) : null;
  }

  /**
   * Changes a product's schema, limits, retention, level or modes (DEV-2). The level and modes are
   * checked together (DEV-5); the caches of this process drop the product at once, other processes
   * within their 10 s cache lifetime.
   */
  async updateProduct(
    productId: string,
    patch: {
      name?: string;
      reportLimits?: { perSecond?: number | null; perDay?: number | null };
    } & ProductSettings,
  ): Promise<Product> {
    const current = await this.getProduct(productId);
    if (!current) throw new CastellanError('ERR_PRODUCT_NOT_FOUND');
    const securityLevel = patch.securityLevel ?? current.securityLevel;
    const authModes =
      patch.authModes !== undefined || patch.securityLevel !== undefined
        ? checkAuthModes(securityLevel, patch.authModes ?? current.authModes)
        : [...current.authModes];
    const set: Partial<Database['products']> = {
      security_level: securityLevel,
      auth_modes: JSON.stringify(authModes),
    };
    if (patch.name !== undefined) set.name = patch.name;
    if (patch.dataPoints !== undefined) {
      const schema = schemaFrom(patch.dataPoints);
      set.data_points = schema ? JSON.stringify(schema) : null;
    }
    if (patch.telemetryRetentionDays !== undefined) set.telemetry_retention_days = patch.telemetryRetentionDays;
    if (patch.reportLimits?.perSecond !== undefined) set.messages_per_second = patch.reportLimits.perSecond;
    if (patch.reportLimits?.perDay !== undefined) set.messages_per_day = patch.reportLimits.perDay;
    await this.#db.updateTable('products').set(set).where('id', '=', productId).execute();
    this.#productCache.delete(productId);
    return (await this.getProduct(productId))!;
  }

  /** A product as of at most 10 s ago (read on every device message: schema checks, auth modes). */
  async cachedProduct(productId: string): Promise<Product | null> {
    const now = this.#now();
    const hit = this.#productCache.get(productId);
    if (hit && hit.until > now) return hit.product;
    const product = await this.getProduct(productId);
    this.#productCache.set(productId, { product, until: now + 10_000 });
    if (this.#productCache.size > 10_000) this.#productCache.delete(this.#productCache.keys().next().value!);
    return product;
  }

  async listProducts(vendorId: string): Promise<Product[]> {
    const rows = await this.#db
      .selectFrom('products')
      .selectAll()
      .where('vendor_id', '=', vendorId)
      .orderBy('created_at')
      .orderBy('id')
      .execute();
    return rows.map(toProduct);
  }

  /**
   * Issues `count` device identities for a product. IDs follow DEV-1; the 32-bit random part can
   * collide, so the store's primary key decides and colliding IDs are drawn again. All rows of one call
   * are written in one transaction: a failure leaves none behind.
   */
  async createDevices(
    productId: string,
    count: number,
    options: {
      /** Runs inside the issuing transaction: what it writes commits or rolls back with the devices. */
      within?: (trx: Transaction<Database>, issued: readonly IssuedDevice[]) => Promise<void>;
    } = {},
  ): Promise<IssuedDevice[]> {
    if (!Number.isInteger(count) || count < 1 || count > this.#maxBatch) {
      throw new CastellanError('ERR_VALIDATION_FAILED', {
        message: `count must be an integer from 1 to ${this.#maxBatch}`,
        details: { field: 'count' },
      });
    }
    const product = await this.getProduct(productId);
    if (!product) throw new CastellanError('ERR_PRODUCT_NOT_FOUND');
    const vendor = await this.#vendors.getVendor(product.vendorId);
    if (!vendor) throw new CastellanError('ERR_VENDOR_NOT_FOUND');
    const now = this.#now();
    const scope = product.cryptoSuite ? { product: product.id } : {};
    await this.#secrets.ensureKey(product.vendorId, scope);
    return this.#db.transaction().execute(async (trx) => {
      const issued: IssuedDevice[] = [];
      let missing = count;
      for (let round = 0; round < ID_ROUNDS && missing > 0; round++) {
        const batch = new Map<string, string>();
        // Bounded: a generator that keeps repeating itself must end in an error, not a hang.
        for (let draws = 0; batch.size < missing && draws < missing * 4 + 16; draws++) {
          const id = this.#drawId(vendor.code, product.code);
          if (!batch.has(id)) batch.set(id, randomBytes(DEVICE_SECRET_BYTES).toString('base64url'));
        }
        const rows = await Promise.all(
          [...batch].map(async ([id, secret]) => ({
            id,
            vendor_id: product.vendorId,
            product_id: product.id,
            secret_ciphertext: await this.#secrets.encrypt(
              product.vendorId,
              Buffer.from(secret, 'utf8'),
              secretAad(id),
              scope,
            ),
            status: 'active' as const,
            created_at: now,
          })),
        );
        // Chunked to stay under SQLite's and PostgreSQL's bound-parameter limits.
        for (let i = 0; i < rows.length; i += 500) {
          const written = await trx
            .insertInto('devices')
            .values(rows.slice(i, i + 500))
            .onConflict((oc) => oc.column('id').doNothing())
            .returning('id')
            .execute();
          for (const { id } of written) issued.push({ id, secret: batch.get(id)! });
        }
        missing = count - issued.length;
      }
      if (missing > 0) throw new CastellanError('ERR_DEVICE_ID_EXHAUSTED');
      await options.within?.(trx, issued);
      return issued;
    });
  }

  async getDevice(deviceId: string): Promise<Device | null> {
    const row = await this.deviceQuery(deviceId).executeTakeFirst();
    return row ? toDevice(row) : null;
  }

  /**
   * The read behind getDevice() as a query to extend: the access check joins a person's relation to
   * the device to it, so that an authorised read is one round trip (bindings-service.ts). Columns are
   * qualified, so joined tables may share their names. Rows go through toDevice().
   */
  deviceQuery(deviceId: string): SelectQueryBuilder<Database, 'devices', DeviceRow> {
    return this.#db
      .selectFrom('devices')
      .select(['devices.id', 'devices.vendor_id', 'devices.product_id', 'devices.status', 'devices.created_at'])
      .where('devices.id', '=', deviceId);
  }

  async listDevices(productId: string, options: { limit: number; after?: string }): Promise<Device[]> {
    let query = this.#db
      .selectFrom('devices')
      .select(['id', 'vendor_id', 'product_id', 'status', 'created_at'])
      .where('product_id', '=', productId);
    if (options.after) query = query.where('id', '>', options.after);
    const rows = await query.orderBy('id').limit(options.limit).execute();
    return rows.map(toDevice);
  }

  /**
   * Checks a device's secret. Unknown device and wrong secret take the same path (a decryption and a
   * constant-time comparison) and give the same answer: null.
   */
  async authenticateDevice(deviceId: string, presented: Uint8Array): Promise<Device | null> {
    const row = await this.#db
      .selectFrom('devices')
      .select(['id', 'vendor_id', 'product_id', 'status', 'created_at', 'secret_ciphertext'])
      .where('id', '=', deviceId)
      .executeTakeFirst();
    let expected: Buffer;
    try {
      if (row) {
        expected = await this.#secrets.decrypt(row.vendor_id, asBuffer(row.secret_ciphertext), secretAad(row.id), {
          product: row.product_id,
        });
      } else {
        const decoy = await this.#decoySecret();
        expected = await this.#secrets.decrypt(PLATFORM_TENANT, decoy.sealed, secretAad(decoy.id));
      }
    } catch {
      // Includes a destroyed or suspended key: such a device cannot authenticate.
      return null;
    }
    const match = constantTimeEqual(expected, presented);
    return row && match ? toDevice(row) : null;
  }

  /**
   * The HTTPS request key of a device (DEV-6): HKDF of its secret (@castellan/protocol
   * deviceRequestKey), so the secret itself never travels. An unknown device, or one whose tenant key
   * is unusable, takes the same path (a decryption and a derivation) and yields a key of no device with
   * `device: null`: the caller runs its HMAC check either way and refuses alike.
   */
  async deviceRequestKey(deviceId: string): Promise<{ device: Device | null; key: Buffer }> {
    const { device, secret } = await this.#secretOrDecoy(deviceId);
    return { device, key: deriveDeviceRequestKey(secret) };
  }

  /**
   * The secure-channel psk of a device (CHAN-3; @castellan/protocol channelPsk of its secret, for the
   * HTTP and MQTT transports), so the secret never leaves this service. An unknown device, or one whose
   * secret is unusable, takes the same path (a decryption and a derivation) and yields a psk of no device
   * with `device: null`: the caller checks the hello's MAC either way and refuses alike.
   */
  async secureChannelPsk(deviceId: string, suite: SuiteName): Promise<{ device: Device | null; psk: Buffer }> {
    const { device, secret } = await this.#secretOrDecoy(deviceId);
    return { device, psk: channelPsk(suite, secret) };
  }

  /**
   * A device's secret for deriving a key from it, or, for an unknown device or an unusable secret, a
   * decoy reached by the same work (one decryption), with `device: null`.
   */
  async #secretOrDecoy(deviceId: string): Promise<{ device: Device | null; secret: Buffer }> {
    const row = await this.#db
      .selectFrom('devices')
      .select(['id', 'vendor_id', 'product_id', 'status', 'created_at', 'secret_ciphertext'])
      .where('id', '=', deviceId)
      .executeTakeFirst();
    let secret: Buffer;
    let known = row !== undefined;
    try {
      if (row) {
        secret = await this.#secrets.decrypt(row.vendor_id, asBuffer(row.secret_ciphertext), secretAad(row.id), {
          product: row.product_id,
        });
      } else {
        const decoy = await this.#decoySecret();
        secret = await this.#secrets.decrypt(PLATFORM_TENANT, decoy.sealed, secretAad(decoy.id));
      }
    } catch {
      known = false;
      secret = randomBytes(DEVICE_SECRET_BYTES);
    }
    if (secret.length === 0) {
      // A destroyed secret (certificate-only devices): nothing to derive from.
      known = false;
      secret = randomBytes(DEVICE_SECRET_BYTES);
    }
    return { device: row && known ? toDevice(row) : null, secret };
  }

  /**
   * The passcode key of a lock (LOCK-1): HKDF of its secret (@castellan/protocol deriveLockPasscodeKey),
   * the same key the lock derives from its own copy, so the secret never leaves this service. Null when
   * the device is unknown or has no usable secret (destroyed, certificate-only, tenant key unusable).
   */
  async lockPasscodeKey(deviceId: string): Promise<Buffer | null> {
    const row = await this.#db
      .selectFrom('devices')
      .select(['id', 'vendor_id', 'product_id', 'secret_ciphertext'])
      .where('id', '=', deviceId)
      .executeTakeFirst();
    if (!row || !row.secret_ciphertext || asBuffer(row.secret_ciphertext).length === 0) return null;
    try {
      const secret = await this.#secrets.decrypt(row.vendor_id, asBuffer(row.secret_ciphertext), secretAad(row.id), {
        product: row.product_id,
      });
      return secret.length > 0 ? deriveLockPasscodeKey(secret, row.id) : null;
    } catch {
      return null;
    }
  }

  /**
   * Re-wraps a vendor's device secrets under its current key version (after a rotation), a page at a
   * time, one short write per device so devices keep authenticating throughout. Returns how many moved.
   */
  async rewrapSecrets(vendorId: string): Promise<number> {
    let moved = 0;
    let after = '';
    for (;;) {
      const rows = await this.#db
        .selectFrom('devices')
        .select(['id', 'secret_ciphertext'])
        .where('vendor_id', '=', vendorId)
        .where('id', '>', after)
        .orderBy('id')
        .limit(200)
        .execute();
      if (rows.length === 0) return moved;
      for (const row of rows) {
        const current = asBuffer(row.secret_ciphertext);
        // A destroyed secret (decommissioned device) has nothing to re-wrap.
        if (current.length === 0) continue;
        const rewrapped = await this.#secrets.rewrap(vendorId, current, secretAad(row.id));
        if (!rewrapped) continue;
        // Only if unchanged meanwhile (a concurrent rotation of the credential wins).
        const result = await this.#db
          .updateTable('devices')
          .set({ secret_ciphertext: rewrapped })
          .where('id', '=', row.id)
          .where('secret_ciphertext', '=', current)
          .executeTakeFirst();
        moved += Number(result.numUpdatedRows);
      }
      after = rows.at(-1)!.id;
    }
  }

  /** A sealed secret of no device: an unknown ID costs the same key work as a known one. */
  #decoySecret(): Promise<{ id: string; sealed: Buffer }> {
    this.#decoy ??= (async () => {
      const id = generateDeviceId('000000', '000000');
      const secret = Buffer.from(randomBytes(DEVICE_SECRET_BYTES).toString('base64url'));
      return { id, sealed: await this.#secrets.encrypt(PLATFORM_TENANT, secret, secretAad(id)) };
    })();
    this.#decoy.catch(() => {
      this.#decoy = undefined;
    });
    return this.#decoy;
  }

  /** Adds a check run by admit(), in registration order. */
  addAdmissionCheck(check: DeviceAdmissionCheck): void {
    this.#admissionChecks.push(check);
  }

  /**
   * Whether an authenticated device may proceed: its status first (only `active` devices), then every
   * registered check. Null admits; otherwise the reason of the first refusal.
   */
  async admit(device: Device, method: DeviceAuthMethod): Promise<string | null> {
    if (device.status !== 'active') return device.status;
    for (const check of this.#admissionChecks) {
      const reason = await check(device, method);
      if (reason !== null) return reason;
    }
    return null;
  }

  /** Report-rate limits of a product, cached briefly: they are read on every device message. */
  async productLimits(productId: string): Promise<ProductReportLimits> {
    return (await this.cachedProduct(productId))?.reportLimits ?? { perSecond: null, perDay: null };
  }

  /**
   * Sets a device's status; returns the device as it was, or null when it does not exist.
   * 'decommissioned' is final (DEV-8): such a device keeps that status whatever is asked.
   */
  async setStatus(deviceId: string, status: DeviceStatus): Promise<Device | null> {
    const device = await this.getDevice(deviceId);
    if (!device) return null;
    await this.#db
      .updateTable('devices')
      .set({ status })
      .where('id', '=', deviceId)
      .where('status', '!=', 'decommissioned')
      .execute();
    return device;
  }

  /**
   * Replaces a device's secret with a new random one (DEV-8 rotation): the old one stops working at
   * once. Returns the new secret (shown once), or null when the device does not exist or is
   * decommissioned.
   */
  async replaceSecret(deviceId: string): Promise<string | null> {
    const device = await this.getDevice(deviceId);
    if (!device || device.status === 'decommissioned') return null;
    const product = await this.getProduct(device.productId);
    const scope = product?.cryptoSuite ? { product: device.productId } : {};
    await this.#secrets.ensureKey(device.vendorId, scope);
    const secret = randomBytes(DEVICE_SECRET_BYTES).toString('base64url');
    const sealed = await this.#secrets.encrypt(
      device.vendorId,
      Buffer.from(secret, 'utf8'),
      secretAad(deviceId),
      scope,
    );
    const result = await this.#db
      .updateTable('devices')
      .set({ secret_ciphertext: sealed })
      .where('id', '=', deviceId)
      .where('status', '!=', 'decommissioned')
      .executeTakeFirst();
    return Number(result.numUpdatedRows) === 1 ? secret : null;
  }

  /**
   * Destroys a device's secret (DEV-8 decommissioning): the column keeps an empty value, which never
   * decrypts, so no secret can authenticate the device again. Returns false for an unknown device.
   */
  async destroySecret(deviceId: string): Promise<boolean> {
    const result = await this.#db
      .updateTable('devices')
      .set({ secret_ciphertext: Buffer.alloc(0) })
      .where('id', '=', deviceId)
      .executeTakeFirst();
    return Number(result.numUpdatedRows) === 1;
  }

  /** Queues a telemetry message; settles when it is committed. */
  recordTelemetry(deviceId: string, payload: Buffer, receivedAt: number): Promise<void> {
    return this.#telemetry.append({ deviceId, payload, receivedAt });
  }

  async latestTelemetry(deviceId: string): Promise<TelemetryItem | null> {
    const [item] = await this.listTelemetry(deviceId, { limit: 1 });
    return item ?? null;
  }

  async listTelemetry(deviceId: string, options: { limit: number; beforeSeq?: number }): Promise<TelemetryItem[]> {
    let query = this.#db.selectFrom('telemetry').selectAll().where('device_id', '=', deviceId);
    if (options.beforeSeq !== undefined) query = query.where('seq', '<', options.beforeSeq);
    const rows = await query.orderBy('seq', 'desc').limit(options.limit).execute();
    return rows.map((row) => ({
      seq: Number(row.seq),
      deviceId: row.device_id,
      receivedAt: row.received_at,
      payload: JSON.parse(asBuffer(row.payload).toString('utf8')) as unknown,
    }));
  }
}

function toProduct(row: Database['products']): Product {
  return {
    id: row.id,
    vendorId: row.vendor_id,
    code: row.code,
    name: row.name,
    category: row.category,
    createdAt: row.created_at,
    reportLimits: { perSecond: row.messages_per_second, perDay: row.messages_per_day },
    cryptoSuite: (row.crypto_suite as SuiteName | null) ?? null,
    securityLevel: (row.security_level as SecurityLevel | undefined) ?? 'L1',
    authModes: JSON.parse(row.auth_modes ?? '["secret"]') as ProductAuthMode[],
    dataPoints: row.data_points ? (JSON.parse(row.data_points) as DataPointSchema) : null,
    telemetryRetentionDays: row.telemetry_retention_days ?? null,
    secretIssuedAt: row.secret_issued_at === null ? null : Number(row.secret_issued_at),
  };
}

/** A device row without its secret, as deviceQuery() reads it. */
export type DeviceRow = Omit<Database['devices'], 'secret_ciphertext'>;

export function toDevice(row: DeviceRow): Device {
  return {
    id: row.id,
    vendorId: row.vendor_id,
    productId: row.product_id,
    status: row.status,
    createdAt: row.created_at,
  };
}
