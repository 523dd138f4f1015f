// The key hierarchy (KEY-1) and envelope encryption used by every subsystem:
//
//   root key (file / environment; the HSM option wraps it in a token)
//     └─ tenant key-encryption key (KEK), versioned, with a lifecycle (KEY-2), kept in the key store
//          └─ data key (DEK), fresh per value, stored wrapped next to the ciphertext
//
// The key store is a separate database (its own SQLite file or PostgreSQL schema), so a backup of the
// data carries no key material: destroying a tenant's KEK makes every copy of its data unreadable,
// backups included (KEY-6, crypto-shredding).
//
// Ciphertext layout (version 2):
//   0x02 | suite (1) | key-version-id length (1) | key-version id | wrapped DEK (12 nonce + 32 + 16 tag)
//        | nonce (12) | ciphertext | tag (16)
// The DEK is wrapped with AES-256-GCM under the KEK, with associated data "dek:<id>:<context>"; the
// value is encrypted with AES-256-GCM under the DEK with the caller's context as associated data, so a
// ciphertext moved to another row or column fails to decrypt.
import { createHmac, hkdfSync, randomBytes } from 'node:crypto';
import { CryptoSuiteError, type SuiteName, suite as cryptoSuite } from '@castellan/protocol';
import type { Kysely } from 'kysely';
import { CastellanError } from '../errors/index.ts';
import { newId } from '../lib/random-ids.ts';
import type { KeyStoreDatabase } from '../store/index.ts';
import { canDecrypt, canEncrypt, type KeyOperation, type KeyState, nextState } from './key-lifecycle.ts';
import { SecretBox } from './secret-box.ts';

const FORMAT = 0x02;
const SUITE_IDS: Readonly<Record<SuiteName, number>> = { intl: 0x01, sm: 0x02 };
const SUITE_BY_ID: Readonly<Record<number, SuiteName>> = { 0x01: 'intl', 0x02: 'sm' };
const CACHE_MS = 30_000;

export interface KeyVersion {
  id: string;
  tenant: string;
  version: number;
  suite: SuiteName;
  state: KeyState;
  createdAt: number;
  stateChangedAt: number;
}

export interface KeyAuditEvent {
  operation: 'create' | 'rotate' | KeyOperation;
  key: KeyVersion;
  previousState: KeyState | null;
}

export interface KeyServiceOptions {
  db: Kysely<KeyStoreDatabase>;
  rootKey: Uint8Array;
  /** Every lifecycle operation is audited; the promise settles once it is recorded. */
  audit(event: KeyAuditEvent): Promise<unknown>;
  now?: () => number;
  /** The crypto suite of a tenant's first key (config keys.defaultSuite). */
  defaultSuite?: SuiteName;
}

interface Cached {
  version: KeyVersion;
  material: Buffer | null;
  until: number;
}

function seal(suite: SuiteName, key: Buffer, plaintext: Uint8Array, aad: string): Buffer {
  return cryptoSuite(suite).seal(key, plaintext, Buffer.from(aad, 'utf8'));
}

function open(suite: SuiteName, key: Buffer, sealed: Buffer, aad: string): Buffer {
  try {
    return cryptoSuite(suite).open(key, sealed, Buffer.from(aad, 'utf8'));
  } catch (error) {
    if (error instanceof CryptoSuiteError) {
      throw new CastellanError('ERR_KEY_DECRYPT_FAILED', { detail: error.message, cause: error });
    }
    throw error;
  }
}

const tenantKeyName = (tenant: string) => `tenant:${tenant}`;

export class KeyService {
  readonly #db: Kysely<KeyStoreDatabase>;
  readonly #rootBox: SecretBox;
  readonly #audit: KeyServiceOptions['audit'];
  readonly #now: () => number;
  readonly #byId = new Map<string, Cached>();
  readonly #activeByTenant = new Map<string, { id: string; until: number }>();
  readonly #creating = new Map<string, Promise<KeyVersion>>();
  readonly #defaultSuite: SuiteName;
  readonly #rootKey: Uint8Array;
  readonly #indexKeys = new Map<string, Buffer>();

  constructor(options: KeyServiceOptions) {
    this.#defaultSuite = options.defaultSuite ?? 'intl';
    this.#rootKey = options.rootKey;
    this.#db = options.db;
    this.#rootBox = new SecretBox(options.rootKey, 'key-store-wrap');
    this.#audit = (event) => options.audit(event);
    this.#now = options.now ?? Date.now;
  }

  #view(row: KeyStoreDatabase['key_versions']): KeyVersion {
    return {
      id: row.id,
      tenant: row.tenant,
      version: Number(row.version),
      suite: row.suite as SuiteName,
      state: row.state as KeyState,
      createdAt: Number(row.created_at),
      stateChangedAt: Number(row.state_changed_at),
    };
  }

  async #load(id: string): Promise<Cached | null> {
    const hit = this.#byId.get(id);
    if (hit && hit.until > this.#now()) return hit;
    const row = await this.#db.selectFrom('key_versions').selectAll().where('id', '=', id).executeTakeFirst();
    if (!row) return null;
    const material = row.wrapped_material ? this.#rootBox.open(row.wrapped_material, `kek:${row.id}`) : null;
    const cached = { version: this.#view(row), material, until: this.#now() + CACHE_MS };
    this.#byId.set(id, cached);
    return cached;
  }

  #forget(id: string, tenant: string): void {
    this.#byId.delete(id);
    this.#activeByTenant.delete(tenant);
  }

  async list(filter: { tenant?: string } = {}): Promise<KeyVersion[]> {
    let query = this.#db.selectFrom('key_versions').selectAll();
    if (filter.tenant !== undefined) query = query.where('tenant', '=', filter.tenant);
    return (await query.orderBy('tenant').orderBy('version').execute()).map((r) => this.#view(r));
  }

  async get(id: string): Promise<KeyVersion> {
    const cached = await this.#load(id);
    if (!cached) throw new CastellanError('ERR_KEY_NOT_FOUND');
    return cached.version;
  }

  /** Creates a new version of a tenant's KEK in state pre-active (KEY-2 create). */
  async create(tenant: string, suite?: SuiteName): Promise<KeyVersion> {
    const chosen = suite ?? (await this.#currentSuite(tenant));
    const latest = await this.#db
      .selectFrom('key_versions')
      .select((eb) => eb.fn.max('version').as('v'))
      .where('key_name', '=', tenantKeyName(tenant))
      .executeTakeFirst();
    const id = newId('kv');
    const now = this.#now();
    const row = {
      id,
      key_name: tenantKeyName(tenant),
      tenant,
      version: Number(latest?.v ?? 0) + 1,
      suite: chosen,
      state: 'pre-active',
      wrapped_material: this.#rootBox.seal(randomBytes(cryptoSuite(chosen).keyBytes), `kek:${id}`),
      created_at: now,
      state_changed_at: now,
    };
    await this.#db.insertInto('key_versions').values(row).execute();
    const version = this.#view(row);
    await this.#audit({ operation: 'create', key: version, previousState: null });
    return version;
  }

  /** Applies a lifecycle operation; illegal transitions are refused with a clear error. */
  async transition(id: string, operation: KeyOperation): Promise<KeyVersion> {
    const current = await this.get(id);
    const state = nextState(current.state, operation);
    const now = this.#now();
    const result = await this.#db
      .updateTable('key_versions')
      .set({
        state,
        state_changed_at: now,
        // Destroying wipes the material: every value under this version becomes unreadable (KEY-6).
        ...(operation === 'destroy' ? { wrapped_material: null } : {}),
      })
      .where('id', '=', id)
      .where('state', '=', current.state)
      .executeTakeFirst();
    if (Number(result.numUpdatedRows) !== 1) {
      throw new CastellanError('ERR_KEY_TRANSITION_INVALID', {
        message: `The key changed state meanwhile; retry the ${operation}`,
      });
    }
    this.#forget(id, current.tenant);
    const updated = { ...current, state, stateChangedAt: now };
    await this.#audit({ operation, key: updated, previousState: current.state });
    return updated;
  }

  /** New active version; the previous active version can only decrypt from now on (KEY-2 rotate). */
  async rotate(tenant: string, suite?: SuiteName): Promise<KeyVersion> {
    const previous = await this.#activeVersion(tenant);
    const created = await this.create(tenant, suite);
    const active = await this.transition(created.id, 'activate');
    if (previous) await this.transition(previous.id, 'deactivate');
    await this.#audit({ operation: 'rotate', key: active, previousState: null });
    return active;
  }

  /** The suite of the tenant's newest key, or the default for a tenant without keys. */
  async #currentSuite(tenant: string): Promise<SuiteName> {
    const row = await this.#db
      .selectFrom('key_versions')
      .select('suite')
      .where('key_name', '=', tenantKeyName(tenant))
      .orderBy('version', 'desc')
      .limit(1)
      .executeTakeFirst();
    return (row?.suite as SuiteName | undefined) ?? this.#defaultSuite;
  }

  async #activeVersion(tenant: string): Promise<KeyVersion | null> {
    const cached = this.#activeByTenant.get(tenant);
    if (cached && cached.until > this.#now()) return (await this.#load(cached.id))?.version ?? null;
    const row = await this.#db
      .selectFrom('key_versions')
      .selectAll()
      .where('key_name', '=', tenantKeyName(tenant))
      .where('state', '=', 'active')
      .orderBy('version', 'desc')
      .limit(1)
      .executeTakeFirst();
    if (!row) return null;
    this.#activeByTenant.set(tenant, { id: row.id, until: this.#now() + CACHE_MS });
    return this.#view(row);
  }

  /** The tenant's active KEK, created and activated on first use. */
  async #encryptionKey(tenant: string): Promise<Cached> {
    let active = await this.#activeVersion(tenant);
    if (!active) {
      const anyVersion = await this.#db
        .selectFrom('key_versions')
        .select('id')
        .where('key_name', '=', tenantKeyName(tenant))
        .limit(1)
        .executeTakeFirst();
      // A tenant whose keys exist but none is active (suspended, destroyed…) gets no silent new key.
      if (anyVersion) throw new CastellanError('ERR_KEY_NOT_USABLE', { message: `No active key for tenant ${tenant}` });
      let pending = this.#creating.get(tenant);
      if (!pending) {
        pending = this.create(tenant)
          .then((v) => this.transition(v.id, 'activate'))
          .finally(() => this.#creating.delete(tenant));
        this.#creating.set(tenant, pending);
      }
      active = await pending;
    }
    const cached = await this.#load(active.id);
    if (!cached?.material || !canEncrypt(cached.version.state)) {
      throw new CastellanError('ERR_KEY_NOT_USABLE', {
        message: `The key of tenant ${tenant} cannot encrypt (${cached?.version.state})`,
      });
    }
    return cached;
  }

  /**
   * Makes sure the tenant has an active key (creating and auditing one if needed). Call it before a
   * data-store transaction that encrypts: creating a key writes the audit log, which must not wait
   * for a transaction that itself waits for the key.
   */
  async ensureKey(tenant: string): Promise<void> {
    await this.#encryptionKey(tenant);
  }

  /** Envelope encryption under the tenant's active KEK; `context` binds the value to its row and column. */
  async encrypt(tenant: string, plaintext: Uint8Array, context: string): Promise<Buffer> {
    const kek = await this.#encryptionKey(tenant);
    const suite = kek.version.suite;
    const dek = randomBytes(cryptoSuite(suite).keyBytes);
    const id = Buffer.from(kek.version.id, 'utf8');
    const wrapped = seal(suite, kek.material!, dek, `dek:${kek.version.id}:${context}`);
    const body = seal(suite, dek, plaintext, context);
    return Buffer.concat([Buffer.of(FORMAT, SUITE_IDS[suite], id.length), id, wrapped, body]);
  }

  /** Reverses encrypt. ERR_KEY_DESTROYED when the protecting key was destroyed. */
  async decrypt(tenant: string, sealed: Uint8Array, context: string): Promise<Buffer> {
    const box = Buffer.isBuffer(sealed) ? sealed : Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength);
    const suite = box.length >= 3 && box[0] === FORMAT ? SUITE_BY_ID[box[1]!] : undefined;
    if (!suite) throw new CastellanError('ERR_KEY_DECRYPT_FAILED', { detail: 'not a version-2 envelope' });
    const idEnd = 3 + box[2]!;
    const id = box.subarray(3, idEnd).toString('utf8');
    const wrappedBytes = 12 + cryptoSuite(suite).keyBytes + 16;
    if (box.length < idEnd + wrappedBytes + 28) {
      throw new CastellanError('ERR_KEY_DECRYPT_FAILED', { detail: 'truncated envelope' });
    }
    const kek = await this.#load(id);
    if (!kek || kek.version.tenant !== tenant) {
      throw new CastellanError('ERR_KEY_DECRYPT_FAILED', { detail: 'key of another tenant' });
    }
    if (kek.version.state === 'destroyed' || !kek.material) throw new CastellanError('ERR_KEY_DESTROYED');
    if (kek.version.suite !== suite) throw new CastellanError('ERR_KEY_DECRYPT_FAILED', { detail: 'suite mismatch' });
    if (!canDecrypt(kek.version.state)) {
      throw new CastellanError('ERR_KEY_NOT_USABLE', {
        message: `The key protecting this data is ${kek.version.state}`,
      });
    }
    const dek = open(suite, kek.material, box.subarray(idEnd, idEnd + wrappedBytes), `dek:${id}:${context}`);
    return open(suite, dek, box.subarray(idEnd + wrappedBytes), context);
  }

  /**
   * A keyed blind index (KEY-3): equality look-ups on an encrypted field (find a user by e-mail)
   * without storing the value. HMAC under a per-tenant, per-purpose key derived from the root key, so
   * it survives key rotation; normalise the value (trim, lower-case e-mail) before calling.
   */
  blindIndex(tenant: string, purpose: string, value: string): Buffer {
    let key = this.#indexKeys.get(`${tenant}\u0000${purpose}`);
    if (!key) {
      key = Buffer.from(
        hkdfSync('sha256', this.#rootKey, Buffer.alloc(0), `castellan/v1/blind-index/${tenant}/${purpose}`, 32),
      );
      this.#indexKeys.set(`${tenant}\u0000${purpose}`, key);
    }
    return createHmac('sha256', key).update(value, 'utf8').digest();
  }

  /** The key version a ciphertext was sealed under (for re-wrapping after a rotation). */
  static keyVersionOf(sealed: Uint8Array): string | null {
    if (sealed.length < 3 || sealed[0] !== FORMAT) return null;
    return Buffer.from(sealed.subarray(3, 3 + sealed[2]!)).toString('utf8');
  }
}
