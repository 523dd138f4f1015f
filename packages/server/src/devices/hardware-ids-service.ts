// Registered hardware IDs (DEV-4, Gizwits 2.2.1.1): a vendor uploads the MAC addresses / IMEIs of the
// hardware it will ship, and issues a product secret burned into the firmware. A device registers over
// HTTPS with its hardware ID and an HMAC proof under the product secret; only a listed, unused hardware
// ID of a product that allows the `hardware-id` mode gets a device ID and its own secret, which travels
// sealed under a key derived from the product secret and the request's nonce. The MAC alone never
// works (it is printed on the box); the product secret alone registers no unlisted hardware.
//
// Hardware IDs are stored only as a keyed blind index (KEY-3) per vendor and product, never in clear.
import { randomBytes } from 'node:crypto';
import {
  constantTimeStringEqual,
  DEVICE_REQUEST_WINDOW_MS,
  normaliseHardwareId,
  registrationProof,
  sealDeviceSecret,
} from '@castellan/protocol';
import type { FastifyRequest } from 'fastify';
import type { Kysely } from 'kysely';
import type { AuditEvent } from '../audit/index.ts';
import { CastellanError } from '../errors/index.ts';
// The leaf module, not guard/index.ts: that imports the HTTP and accounts layers, which import this one.
import { normaliseIp } from '../guard/address-filter.ts';
import { asBuffer } from '../lib/bytes.ts';
import type { Database } from '../store/index.ts';
import type { DeviceHttpAuth } from './device-http-auth.ts';
import type { DevicesService, FieldCipher, Product } from './devices-service.ts';

/** Most hardware IDs one upload may carry. */
export const MAX_HARDWARE_IDS_PER_UPLOAD = 10_000;
/** Product secrets start with this, so secret scanners can find leaked ones. */
const PRODUCT_SECRET_PREFIX = 'cas_prs_';

const productSecretAad = (productId: string) => `products.secret_ciphertext:${productId}`;

export interface HardwareIdsServiceOptions {
  db: Kysely<Database>;
  devices: DevicesService;
  keys: Pick<FieldCipher, 'encrypt' | 'decrypt' | 'ensureKey'> & {
    blindIndex(tenant: string, purpose: string, value: string): Buffer;
  };
  auth: Pick<DeviceHttpAuth, 'useNonce'>;
  record: (event: AuditEvent) => void;
  authFailure?: (ip: string, subject: null) => Promise<void>;
  now?: () => number;
}

export interface HardwareIdUpload {
  /** Newly registered. */
  added: number;
  /** Already registered for this product (or repeated within the upload). */
  duplicates: number;
}

export class HardwareIdsService {
  readonly #db: Kysely<Database>;
  readonly #devices: DevicesService;
  readonly #keys: HardwareIdsServiceOptions['keys'];
  readonly #auth: HardwareIdsServiceOptions['auth'];
  readonly #record: HardwareIdsServiceOptions['record'];
  readonly #authFailure: HardwareIdsServiceOptions['authFailure'];
  readonly #now: () => number;

  constructor(options: HardwareIdsServiceOptions) {
    this.#db = options.db;
    this.#devices = options.devices;
    this.#keys = options.keys;
    this.#auth = options.auth;
    this.#record = options.record;
    this.#authFailure = options.authFailure;
    this.#now = options.now ?? Date.now;
  }

  #index(product: Pick<Product, 'id' | 'vendorId'>, hardwareId: string): Buffer {
    return this.#keys.blindIndex(product.vendorId, 'hardware-id', `${product.id}\n${hardwareId}`);
  }

  static #allowsHardwareIds(product: Product): void {
    if (!product.authModes.includes('hardware-id')) throw new CastellanError('ERR_PRODUCT_HARDWARE_IDS_DISABLED');
  }

  /** Registers up to 10,000 hardware IDs; every entry is normalised first, and one bad entry refuses all. */
  async upload(product: Product, ids: readonly string[]): Promise<HardwareIdUpload> {
    HardwareIdsService.#allowsHardwareIds(product);
    if (ids.length < 1 || ids.length > MAX_HARDWARE_IDS_PER_UPLOAD) {
      throw new CastellanError('ERR_VALIDATION_FAILED', {
        message: `ids must hold 1 to ${MAX_HARDWARE_IDS_PER_UPLOAD} hardware IDs`,
        details: { field: 'ids' },
      });
    }
    const indexes = new Map<string, { index: Buffer; kind: string }>();
    ids.forEach((raw, index) => {
      const canonical = normaliseHardwareId(raw);
      if (canonical === null) throw new CastellanError('ERR_HARDWARE_ID_INVALID', { details: { index } });
      const index_ = this.#index(product, canonical);
      indexes.set(index_.toString('hex'), { index: index_, kind: canonical.slice(0, canonical.indexOf(':')) });
    });
    const now = this.#now();
    const rows = [...indexes.values()].map(({ index, kind }) => ({
      product_id: product.id,
      hardware_index: index,
      kind,
      created_at: now,
      device_id: null,
      used_at: null,
    }));
    let added = 0;
    await this.#db.transaction().execute(async (trx) => {
      // Chunked to stay under SQLite's and PostgreSQL's bound-parameter limits.
      for (let i = 0; i < rows.length; i += 500) {
        const written = await trx
          .insertInto('product_hardware_ids')
          .values(rows.slice(i, i + 500))
          .onConflict((oc) => oc.columns(['product_id', 'hardware_index']).doNothing())
          .returning('kind')
          .execute();
        added += written.length;
      }
    });
    return { added, duplicates: ids.length - added };
  }

  /** How many hardware IDs a product has registered, and how many registered a device. */
  async counts(productId: string): Promise<{ registered: number; used: number }> {
    const row = await this.#db
      .selectFrom('product_hardware_ids')
      .select((eb) => [
        eb.fn.countAll<string | number>().as('registered'),
        eb.fn.count<string | number>('used_at').as('used'),
      ])
      .where('product_id', '=', productId)
      .executeTakeFirstOrThrow();
    return { registered: Number(row.registered), used: Number(row.used) };
  }

  /**
   * Issues (or rotates) the product secret: shown once, stored encrypted under the vendor's key (the
   * product's own key when it has a crypto suite). Devices already registered keep their own secrets;
   * firmware with the old product secret can no longer register.
   */
  async issueSecret(product: Product): Promise<{ secret: string; issuedAt: number }> {
    HardwareIdsService.#allowsHardwareIds(product);
    const secret = `${PRODUCT_SECRET_PREFIX}${randomBytes(32).toString('base64url')}`;
    const scope = product.cryptoSuite ? { product: product.id } : {};
    await this.#keys.ensureKey(product.vendorId, scope);
    const sealed = await this.#keys.encrypt(
      product.vendorId,
      Buffer.from(secret, 'utf8'),
      productSecretAad(product.id),
      scope,
    );
    const issuedAt = this.#now();
    await this.#db
      .updateTable('products')
      .set({ secret_ciphertext: sealed, secret_issued_at: issuedAt })
      .where('id', '=', product.id)
      .execute();
    return { secret, issuedAt };
  }

  /** Whether a device got its identity through hardware-ID registration (the admission policy asks). */
  async isRegisteredDevice(deviceId: string): Promise<boolean> {
    const row = await this.#db
      .selectFrom('product_hardware_ids')
      .select('product_id')
      .where('device_id', '=', deviceId)
      .executeTakeFirst();
    return row !== undefined;
  }

  async #productSecret(productId: string): Promise<{ product: Product; secret: string } | null> {
    const row = await this.#db
      .selectFrom('products')
      .select(['secret_ciphertext'])
      .where('id', '=', productId)
      .executeTakeFirst();
    const product = await this.#devices.getProduct(productId);
    if (!row?.secret_ciphertext || !product || !product.authModes.includes('hardware-id')) return null;
    try {
      const plain = await this.#keys.decrypt(
        product.vendorId,
        asBuffer(row.secret_ciphertext),
        productSecretAad(productId),
        product.cryptoSuite ? { product: productId } : {},
      );
      return { product, secret: plain.toString('utf8') };
    } catch {
      return null;
    }
  }

  /**
   * POST /v1/device-api/register. Order: proof under the product secret (nothing about the hardware
   * list is revealed without it) → ts window → nonce unused → the hardware ID listed and unused (claimed
   * atomically, so two racing registrations cannot both win) → a device issued for it.
   */
  async register(
    request: FastifyRequest,
    body: { productId: string; hardwareId: string; ts: number; nonce: string; proof: string },
  ): Promise<{ deviceId: string; sealedSecret: string }> {
    const hardwareId = normaliseHardwareId(body.hardwareId);
    const now = this.#now();
    const found = await this.#productSecret(body.productId);
    if (!found || hardwareId === null || hardwareId !== body.hardwareId) {
      return this.#fail(request, 'malformed-or-unknown-product', found?.product);
    }
    const { product, secret } = found;
    const expected = registrationProof(secret, { productId: product.id, hardwareId, ts: body.ts, nonce: body.nonce });
    if (!constantTimeStringEqual(expected, body.proof)) return this.#fail(request, 'bad-proof', product);
    if (Math.abs(now - body.ts) > DEVICE_REQUEST_WINDOW_MS) return this.#fail(request, 'stale-ts', product);
    if (!(await this.#auth.useNonce(`product:${product.id}`, body.nonce, body.ts + DEVICE_REQUEST_WINDOW_MS))) {
      return this.#fail(request, 'replayed-nonce', product);
    }
    const index = this.#index(product, hardwareId);
    const claimed = await this.#db
      .updateTable('product_hardware_ids')
      .set({ used_at: now })
      .where('product_id', '=', product.id)
      .where('hardware_index', '=', index)
      .where('used_at', 'is', null)
      .executeTakeFirst();
    if (Number(claimed.numUpdatedRows) !== 1) return this.#fail(request, 'hardware-id-unlisted-or-used', product);
    let issued: { id: string; secret: string };
    try {
      [issued] = (await this.#devices.createDevices(product.id, 1)) as [{ id: string; secret: string }];
    } catch (error) {
      // Nothing was issued: the hardware ID stays registrable.
      await this.#db
        .updateTable('product_hardware_ids')
        .set({ used_at: null })
        .where('product_id', '=', product.id)
        .where('hardware_index', '=', index)
        .execute();
      throw error;
    }
    await this.#db
      .updateTable('product_hardware_ids')
      .set({ device_id: issued.id })
      .where('product_id', '=', product.id)
      .where('hardware_index', '=', index)
      .execute();
    this.#record({
      actor: { type: 'device', id: issued.id },
      tenant: product.vendorId,
      type: 'device.register',
      target: issued.id,
      sourceIp: normaliseIp(request.ip),
      result: 'success',
      details: { productId: product.id, kind: hardwareId.slice(0, hardwareId.indexOf(':')), requestId: request.id },
    });
    const sealedSecret = sealDeviceSecret(secret, {
      productId: product.id,
      hardwareId,
      deviceId: issued.id,
      nonce: body.nonce,
      secret: issued.secret,
    });
    return { deviceId: issued.id, sealedSecret };
  }

  async #fail(request: FastifyRequest, reason: string, product?: Product): Promise<never> {
    const ip = normaliseIp(request.ip);
    this.#record({
      actor: { type: 'system', id: 'anonymous' },
      tenant: product?.vendorId ?? null,
      type: 'device.register',
      target: product?.id ?? null,
      sourceIp: ip,
      result: 'failure',
      details: { reason, requestId: request.id },
    });
    await this.#authFailure?.(ip, null);
    throw new CastellanError('ERR_DEVICE_REGISTRATION_FAILED');
  }
}
