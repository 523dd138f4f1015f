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
import {
  createHmac,
  createPrivateKey,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  hkdfSync,
  type KeyObject,
  randomBytes,
} from 'node:crypto';
import { AsyncLocalStorage } from 'node:async_hooks';
import { CryptoSuiteError, intlSuite, type SuiteName, suite as cryptoSuite } from '@castellan/protocol';
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
  /** Set for a per-user key (personal data of one user of the tenant), null for the tenant's own key. */
  user: string | null;
  /** Set for a product's own key (a product with its own crypto suite), null otherwise. */
  product: string | null;
  version: number;
  suite: SuiteName;
  state: KeyState;
  createdAt: number;
  stateChangedAt: number;
}

/** Who asked for a key operation (the administrator behind an API call); absent for the platform itself. */
export interface KeyActor {
  type: 'admin' | 'operator' | 'user';
  id: string;
  credentialId: string;
  sourceIp: string;
  requestId: string;
}

export type KeyAuditEvent = (
  | { operation: 'create' | 'rotate' | KeyOperation; key: KeyVersion; previousState: KeyState | null }
  | {
      operation: 'backup' | 'restore' | 'distribute' | 'backup-key.rotate' | 'backup-key.destroy' | 'backup-key.escrow';
      target: string;
      details: Record<string, unknown>;
    }
) & { actor?: KeyActor | undefined };

/** A key-store backup: key material sealed under a backup key that the backup does not contain. */
export interface KeyStoreBackup {
  format: 'castellan-key-backup/v1';
  backupKeyId: string;
  createdAt: number;
  keys: {
    id: string;
    keyName: string;
    tenant: string;
    version: number;
    suite: string;
    state: string;
    createdAt: number;
    stateChangedAt: number;
    /** Base64 AES-256-GCM of the material under the backup key; null for a destroyed version. */
    sealed: string | null;
  }[];
}

/** A key version sealed to a recipient's P-256 public key. */
export interface DistributedKey {
  format: 'castellan-key-distribution/v1';
  keyId: string;
  tenant: string;
  version: number;
  suite: SuiteName;
  ephemeralPublicKey: string;
  sealed: string;
}

/** A backup key sealed to a recipient's P-256 public key (ECDH + HKDF-SHA-256 + AES-256-GCM). */
export interface BackupKeyEscrow {
  format: 'castellan-backup-key-escrow/v1';
  backupKeyId: string;
  /** Base64 DER SPKI of the ephemeral P-256 key. */
  ephemeralPublicKey: string;
  sealed: string;
}

export interface KeyServiceOptions {
  db: Kysely<KeyStoreDatabase>;
  rootKey: Uint8Array;
  /** Every lifecycle operation is audited; the promise settles once it is recorded. */
  audit(event: KeyAuditEvent): Promise<unknown>;
  now?: () => number;
  /** The crypto suite of a tenant's first key (config keys.defaultSuite). */
  defaultSuite?: SuiteName;
  /** Called after a rotation, so data owners re-wrap their values under the new version. */
  onRotated?: (tenant: string) => void;
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
const USER_ID = /^[A-Za-z0-9_:-]{1,64}$/;

/**
 * `tenant:<tenant>` for a tenant's key, `user:<tenant>/<user>` for one of its users' keys,
 * `product:<tenant>/<product>` for a product's own key ('/' is in none of the IDs).
 */
function keyNameOf(tenant: string, scope: KeyScope): string {
  if (scope.user !== undefined && scope.product !== undefined) {
    throw new CastellanError('ERR_VALIDATION_FAILED', { message: 'A key belongs to a user or a product, not both' });
  }
  for (const [kind, id] of [
    ['user', scope.user],
    ['product', scope.product],
  ] as const) {
    if (id === undefined) continue;
    if (!USER_ID.test(id)) {
      throw new CastellanError('ERR_VALIDATION_FAILED', {
        message: `${kind} must be 1-64 characters of A-Z a-z 0-9 _ : -`,
      });
    }
    return `${kind}:${tenant}/${id}`;
  }
  return tenantKeyName(tenant);
}

const scopedId = (keyName: string, kind: 'user' | 'product') =>
  keyName.startsWith(`${kind}:`) ? keyName.slice(keyName.indexOf('/') + 1) : null;

/**
 * Whose key: the tenant's own (neither set), a per-user key for personal data (KEY-1, KEY-6), or a
 * product's own key (a product with its own crypto suite, KEY-4).
 */
export interface KeyScope {
  user?: string | undefined;
  product?: string | undefined;
}

/** Parses a key and insists on P-256; anything else is the caller's input error. */
function p256(parse: () => KeyObject, message: string): KeyObject {
  let key: KeyObject;
  try {
    key = parse();
  } catch {
    throw new CastellanError('ERR_VALIDATION_FAILED', { message });
  }
  if (key.asymmetricKeyDetails?.namedCurve !== 'prime256v1')
    throw new CastellanError('ERR_VALIDATION_FAILED', { message });
  return key;
}

/**
 * Seals `plaintext` to a recipient's P-256 public key: ECDH with a fresh ephemeral key, HKDF-SHA-256
 * (empty salt, `info`), AES-256-GCM with `aad`. Used for key distribution and backup-key escrow.
 */
function sealToRecipient(
  recipientPublicKeyPem: string,
  info: string,
  plaintext: Buffer,
  aad: string,
): { ephemeralPublicKey: string; sealed: string } {
  const recipient = p256(
    () => createPublicKey(recipientPublicKeyPem),
    'recipientPublicKeyPem is not a P-256 public key (PEM)',
  );
  const ephemeral = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const shared = diffieHellman({ privateKey: ephemeral.privateKey, publicKey: recipient });
  return {
    ephemeralPublicKey: ephemeral.publicKey.export({ format: 'der', type: 'spki' }).toString('base64'),
    sealed: seal('intl', Buffer.from(hkdfSync('sha256', shared, Buffer.alloc(0), info, 32)), plaintext, aad).toString(
      'base64',
    ),
  };
}

/** The recipient's side of `sealToRecipient`; anything malformed or tampered is ERR_KEY_DECRYPT_FAILED. */
function openAsRecipient(
  privateKeyPem: string,
  info: string,
  sealedTo: { ephemeralPublicKey: string; sealed: string },
  aad: string,
): Buffer {
  const privateKey = p256(() => createPrivateKey(privateKeyPem), 'privateKeyPem is not a P-256 private key (PEM)');
  let shared: Buffer;
  try {
    shared = diffieHellman({
      privateKey,
      publicKey: createPublicKey({
        key: Buffer.from(sealedTo.ephemeralPublicKey, 'base64'),
        format: 'der',
        type: 'spki',
      }),
    });
  } catch (error) {
    throw new CastellanError('ERR_KEY_DECRYPT_FAILED', { detail: 'bad ephemeral public key', cause: error });
  }
  const key = Buffer.from(hkdfSync('sha256', shared, Buffer.alloc(0), info, 32));
  return open('intl', key, Buffer.from(sealedTo.sealed, 'base64'), aad);
}

const distributionInfo = (keyId: string) => `castellan/v1/key-distribution:${keyId}`;
const escrowInfo = (backupKeyId: string) => `castellan/v1/backup-key-escrow:${backupKeyId}`;

/** The recipient's side of `KeyService.distribute`. */
export function openDistributedKey(distributed: DistributedKey, privateKeyPem: string): Buffer {
  return openAsRecipient(
    privateKeyPem,
    distributionInfo(distributed.keyId),
    distributed,
    `distribute:${distributed.keyId}`,
  );
}

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
  readonly #onRotated: ((tenant: string) => void) | undefined;
  readonly #indexKeys = new Map<string, Buffer>();
  readonly #actor = new AsyncLocalStorage<KeyActor>();

  constructor(options: KeyServiceOptions) {
    this.#defaultSuite = options.defaultSuite ?? 'intl';
    this.#rootKey = options.rootKey;
    const onRotated = options.onRotated;
    this.#onRotated = onRotated;
    this.#db = options.db;
    this.#rootBox = new SecretBox(options.rootKey, 'key-store-wrap');
    this.#audit = (event) => options.audit({ ...event, actor: this.#actor.getStore() });
    this.#now = options.now ?? Date.now;
  }

  /** Runs `fn` on behalf of `actor`: the audit entries of the key operations inside name it. */
  as<T>(actor: KeyActor, fn: () => Promise<T>): Promise<T> {
    return this.#actor.run(actor, fn);
  }

  #view(row: KeyStoreDatabase['key_versions']): KeyVersion {
    return {
      id: row.id,
      tenant: row.tenant,
      user: scopedId(row.key_name, 'user'),
      product: scopedId(row.key_name, 'product'),
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

  #forget(id: string, keyName: string): void {
    this.#byId.delete(id);
    this.#activeByTenant.delete(keyName);
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
  async create(tenant: string, suite?: SuiteName, scope: KeyScope = {}): Promise<KeyVersion> {
    const keyName = keyNameOf(tenant, scope);
    // A user's or product's first key follows the tenant's suite unless one is chosen.
    const chosen =
      suite ??
      (await this.#currentSuite(keyName)) ??
      (await this.#currentSuite(tenantKeyName(tenant))) ??
      this.#defaultSuite;
    const latest = await this.#db
      .selectFrom('key_versions')
      .select((eb) => eb.fn.max('version').as('v'))
      .where('key_name', '=', keyName)
      .executeTakeFirst();
    const id = newId('kv');
    const now = this.#now();
    const row = {
      id,
      key_name: keyName,
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
    this.#forget(
      id,
      keyNameOf(current.tenant, { user: current.user ?? undefined, product: current.product ?? undefined }),
    );
    const updated = { ...current, state, stateChangedAt: now };
    await this.#audit({ operation, key: updated, previousState: current.state });
    return updated;
  }

  /** New active version; the previous active version can only decrypt from now on (KEY-2 rotate). */
  async rotate(tenant: string, suite?: SuiteName, scope: KeyScope = {}): Promise<KeyVersion> {
    const previous = await this.#activeVersion(keyNameOf(tenant, scope));
    const created = await this.create(tenant, suite, scope);
    const active = await this.transition(created.id, 'activate');
    if (previous) await this.transition(previous.id, 'deactivate');
    await this.#audit({ operation: 'rotate', key: active, previousState: null });
    if (scope.user === undefined && scope.product === undefined) this.#onRotated?.(tenant);
    return active;
  }

  /**
   * Crypto-shredding in one call (KEY-6): destroys every live version of a user's key, or, without a
   * user, of the tenant's key and all its users' and products' keys. Returns the destroyed versions.
   */
  async shred(tenant: string, scope: KeyScope = {}): Promise<KeyVersion[]> {
    let query = this.#db.selectFrom('key_versions').select('id').where('tenant', '=', tenant);
    query =
      scope.user === undefined && scope.product === undefined
        ? query.where((eb) =>
            eb.or([
              eb('key_name', '=', tenantKeyName(tenant)),
              eb('key_name', 'like', `user:${tenant}/%`),
              eb('key_name', 'like', `product:${tenant}/%`),
            ]),
          )
        : query.where('key_name', '=', keyNameOf(tenant, scope));
    const rows = await query.where('state', '!=', 'destroyed').orderBy('version').execute();
    const destroyed: KeyVersion[] = [];
    for (const { id } of rows) destroyed.push(await this.transition(id, 'destroy'));
    return destroyed;
  }

  /** The suite of the newest version of a key, or null for a key without versions. */
  async #currentSuite(keyName: string): Promise<SuiteName | null> {
    const row = await this.#db
      .selectFrom('key_versions')
      .select('suite')
      .where('key_name', '=', keyName)
      .orderBy('version', 'desc')
      .limit(1)
      .executeTakeFirst();
    return (row?.suite as SuiteName | undefined) ?? null;
  }

  async #activeVersion(keyName: string): Promise<KeyVersion | null> {
    const cached = this.#activeByTenant.get(keyName);
    if (cached && cached.until > this.#now()) return (await this.#load(cached.id))?.version ?? null;
    const row = await this.#db
      .selectFrom('key_versions')
      .selectAll()
      .where('key_name', '=', keyName)
      .where('state', '=', 'active')
      .orderBy('version', 'desc')
      .limit(1)
      .executeTakeFirst();
    if (!row) return null;
    this.#activeByTenant.set(keyName, { id: row.id, until: this.#now() + CACHE_MS });
    return this.#view(row);
  }

  /** The active KEK of a tenant (or of one of its users), created and activated on first use. */
  async #encryptionKey(tenant: string, scope: KeyScope = {}, suite?: SuiteName): Promise<Cached> {
    const keyName = keyNameOf(tenant, scope);
    let active = await this.#activeVersion(keyName);
    if (!active) {
      const anyVersion = await this.#db
        .selectFrom('key_versions')
        .select('id')
        .where('key_name', '=', keyName)
        .limit(1)
        .executeTakeFirst();
      // A key whose versions exist but none is active (suspended, destroyed…) gets no silent new one.
      if (anyVersion) {
        throw new CastellanError('ERR_KEY_NOT_USABLE', {
          message:
            scope.user !== undefined
              ? `No active key for user ${scope.user} of tenant ${tenant}`
              : scope.product !== undefined
                ? `No active key for product ${scope.product} of tenant ${tenant}`
                : `No active key for tenant ${tenant}`,
        });
      }
      let pending = this.#creating.get(keyName);
      if (!pending) {
        pending = this.create(tenant, suite, scope)
          .then((v) => this.transition(v.id, 'activate'))
          .finally(() => this.#creating.delete(keyName));
        this.#creating.set(keyName, pending);
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
  async ensureKey(tenant: string, scope: KeyScope = {}, suite?: SuiteName): Promise<void> {
    await this.#encryptionKey(tenant, scope, suite);
  }

  /** Envelope encryption under the tenant's active KEK; `context` binds the value to its row and column. */
  async encrypt(tenant: string, plaintext: Uint8Array, context: string, scope: KeyScope = {}): Promise<Buffer> {
    const kek = await this.#encryptionKey(tenant, scope);
    const suite = kek.version.suite;
    const dek = randomBytes(cryptoSuite(suite).keyBytes);
    const id = Buffer.from(kek.version.id, 'utf8');
    const wrapped = seal(suite, kek.material!, dek, `dek:${kek.version.id}:${context}`);
    const body = seal(suite, dek, plaintext, context);
    return Buffer.concat([Buffer.of(FORMAT, SUITE_IDS[suite], id.length), id, wrapped, body]);
  }

  /** Reverses encrypt. ERR_KEY_DESTROYED when the protecting key was destroyed. */
  async decrypt(tenant: string, sealed: Uint8Array, context: string, scope: KeyScope = {}): Promise<Buffer> {
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
    // A product scope also accepts the tenant's own key (secrets sealed before the product had a key).
    if (
      !kek ||
      kek.version.tenant !== tenant ||
      kek.version.user !== (scope.user ?? null) ||
      (kek.version.product !== null && kek.version.product !== scope.product)
    ) {
      throw new CastellanError('ERR_KEY_DECRYPT_FAILED', { detail: 'key of another tenant or user' });
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

  // ---- backups (KEY-2 backup/restore, KEY-6 destruction reaching backups) -------------------------

  async #activeBackupKey(): Promise<{ id: string; material: Buffer }> {
    const row = await this.#db.selectFrom('backup_keys').selectAll().where('state', '=', 'active').executeTakeFirst();
    if (row?.wrapped_material)
      return { id: row.id, material: this.#rootBox.open(row.wrapped_material, `backup-key:${row.id}`) };
    return this.#newBackupKey();
  }

  async #newBackupKey(): Promise<{ id: string; material: Buffer }> {
    const id = newId('bk');
    const material = randomBytes(32);
    const now = this.#now();
    await this.#db
      .insertInto('backup_keys')
      .values({
        id,
        state: 'active',
        wrapped_material: this.#rootBox.seal(material, `backup-key:${id}`),
        created_at: now,
        state_changed_at: now,
      })
      .execute();
    return { id, material };
  }

  async #backupKey(id: string): Promise<Buffer> {
    const row = await this.#db.selectFrom('backup_keys').selectAll().where('id', '=', id).executeTakeFirst();
    if (!row) throw new CastellanError('ERR_KEY_NOT_FOUND', { message: `Backup key ${id} is not in this key store` });
    if (!row.wrapped_material)
      throw new CastellanError('ERR_KEY_DESTROYED', {
        message: `Backup key ${id} was destroyed: backups sealed by it are unreadable`,
      });
    return this.#rootBox.open(row.wrapped_material, `backup-key:${id}`);
  }

  /** Exports every key version sealed under the active backup key (never under the root key). */
  async backup(): Promise<KeyStoreBackup> {
    const backupKey = await this.#activeBackupKey();
    const rows = await this.#db.selectFrom('key_versions').selectAll().orderBy('tenant').orderBy('version').execute();
    const backup: KeyStoreBackup = {
      format: 'castellan-key-backup/v1',
      backupKeyId: backupKey.id,
      createdAt: this.#now(),
      keys: rows.map((r) => ({
        id: r.id,
        keyName: r.key_name,
        tenant: r.tenant,
        version: Number(r.version),
        suite: r.suite,
        state: r.state,
        createdAt: Number(r.created_at),
        stateChangedAt: Number(r.state_changed_at),
        sealed: r.wrapped_material
          ? intlSuite
              .seal(
                backupKey.material,
                this.#rootBox.open(r.wrapped_material, `kek:${r.id}`),
                Buffer.from(`backup:${backupKey.id}:${r.id}`),
              )
              .toString('base64')
          : null,
      })),
    };
    await this.#audit({ operation: 'backup', target: backupKey.id, details: { keys: rows.length } });
    return backup;
  }

  /** A new active backup key; the previous one is retired (it still opens older backups until destroyed). */
  async rotateBackupKey(): Promise<string> {
    const now = this.#now();
    await this.#db
      .updateTable('backup_keys')
      .set({ state: 'retired', state_changed_at: now })
      .where('state', '=', 'active')
      .execute();
    const { id } = await this.#newBackupKey();
    await this.#audit({ operation: 'backup-key.rotate', target: id, details: {} });
    return id;
  }

  /** Destroys a backup key: every key-store backup sealed by it becomes unreadable. */
  async destroyBackupKey(id: string): Promise<void> {
    const result = await this.#db
      .updateTable('backup_keys')
      .set({ state: 'destroyed', wrapped_material: null, state_changed_at: this.#now() })
      .where('id', '=', id)
      .where('state', '!=', 'destroyed')
      .executeTakeFirst();
    if (Number(result.numUpdatedRows) !== 1)
      throw new CastellanError('ERR_KEY_NOT_FOUND', { message: `No live backup key ${id}` });
    await this.#audit({ operation: 'backup-key.destroy', target: id, details: {} });
  }

  /**
   * Distribution (KEY-2): a tenant key version's material sealed to a recipient's P-256 public key
   * (ECDH with an ephemeral key, HKDF-SHA-256, AES-256-GCM), e.g. for a gateway or an HSM import. The
   * recipient opens it with `openDistributedKey`. Destroyed versions cannot be distributed.
   */
  async distribute(id: string, recipientPublicKeyPem: string): Promise<DistributedKey> {
    const cached = await this.#load(id);
    if (!cached) throw new CastellanError('ERR_KEY_NOT_FOUND');
    if (!cached.material) throw new CastellanError('ERR_KEY_DESTROYED');
    const sealedTo = sealToRecipient(recipientPublicKeyPem, distributionInfo(id), cached.material, `distribute:${id}`);
    await this.#audit({
      operation: 'distribute',
      target: id,
      details: { tenant: cached.version.tenant, version: cached.version.version },
    });
    return {
      format: 'castellan-key-distribution/v1',
      keyId: id,
      tenant: cached.version.tenant,
      version: cached.version.version,
      suite: cached.version.suite,
      ...sealedTo,
    };
  }

  /** Seals a backup key to a recipient's P-256 public key, for disaster recovery outside this store. */
  async escrowBackupKey(id: string, recipientPublicKeyPem: string): Promise<BackupKeyEscrow> {
    const material = await this.#backupKey(id);
    const sealedTo = sealToRecipient(recipientPublicKeyPem, escrowInfo(id), material, `escrow:${id}`);
    await this.#audit({ operation: 'backup-key.escrow', target: id, details: {} });
    return { format: 'castellan-backup-key-escrow/v1', backupKeyId: id, ...sealedTo };
  }

  /**
   * Restores key versions missing from this store. A version this store knows as destroyed is never
   * brought back. The backup key comes from this store, or from an escrow and its private key.
   */
  async restore(
    backup: KeyStoreBackup,
    escrow?: { escrow: BackupKeyEscrow; privateKeyPem: string },
  ): Promise<{ restored: number; skipped: number }> {
    if (backup.format !== 'castellan-key-backup/v1')
      throw new CastellanError('ERR_KEY_DECRYPT_FAILED', { message: 'Not a key-store backup' });
    let material: Buffer;
    if (escrow) {
      if (escrow.escrow.backupKeyId !== backup.backupKeyId) {
        throw new CastellanError('ERR_KEY_DECRYPT_FAILED', { message: 'The escrow is for another backup key' });
      }
      material = openAsRecipient(
        escrow.privateKeyPem,
        escrowInfo(backup.backupKeyId),
        escrow.escrow,
        `escrow:${backup.backupKeyId}`,
      );
      const known = await this.#db
        .selectFrom('backup_keys')
        .select('state')
        .where('id', '=', backup.backupKeyId)
        .executeTakeFirst();
      if (known?.state === 'destroyed') {
        throw new CastellanError('ERR_KEY_DESTROYED', {
          message: `Backup key ${backup.backupKeyId} was destroyed: its backups stay unreadable`,
        });
      }
      if (!known) {
        const now = this.#now();
        await this.#db
          .insertInto('backup_keys')
          .values({
            id: backup.backupKeyId,
            state: 'retired',
            wrapped_material: this.#rootBox.seal(material, `backup-key:${backup.backupKeyId}`),
            created_at: now,
            state_changed_at: now,
          })
          .execute();
      }
    } else {
      material = await this.#backupKey(backup.backupKeyId);
    }
    let restored = 0;
    let skipped = 0;
    for (const k of backup.keys) {
      const existing = await this.#db.selectFrom('key_versions').select('id').where('id', '=', k.id).executeTakeFirst();
      if (existing) {
        skipped++;
        continue;
      }
      const plain = k.sealed
        ? open('intl', material, Buffer.from(k.sealed, 'base64'), `backup:${backup.backupKeyId}:${k.id}`)
        : null;
      await this.#db
        .insertInto('key_versions')
        .values({
          id: k.id,
          key_name: k.keyName,
          tenant: k.tenant,
          version: k.version,
          suite: k.suite,
          state: k.state,
          wrapped_material: plain ? this.#rootBox.seal(plain, `kek:${k.id}`) : null,
          created_at: k.createdAt,
          state_changed_at: k.stateChangedAt,
        })
        .execute();
      restored++;
    }
    this.#activeByTenant.clear();
    await this.#audit({ operation: 'restore', target: backup.backupKeyId, details: { restored, skipped } });
    return { restored, skipped };
  }

  async listBackupKeys(): Promise<{ id: string; state: string; createdAt: number; stateChangedAt: number }[]> {
    const rows = await this.#db
      .selectFrom('backup_keys')
      .select(['id', 'state', 'created_at', 'state_changed_at'])
      .orderBy('created_at')
      .execute();
    return rows.map((r) => ({
      id: r.id,
      state: r.state,
      createdAt: Number(r.created_at),
      stateChangedAt: Number(r.state_changed_at),
    }));
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

  /**
   * Re-encrypts a value under the tenant's active key version if it was sealed under an older one
   * (background re-wrap after a rotation); null when it is already current.
   */
  async rewrap(tenant: string, sealed: Uint8Array, context: string): Promise<Buffer | null> {
    const active = await this.#activeVersion(tenantKeyName(tenant));
    const current = KeyService.keyVersionOf(sealed);
    if (!active || current === active.id) return null;
    // Values under a user's or product's own key follow that key's rotations, not the tenant's.
    const under = current === null ? null : await this.#load(current);
    if (under && (under.version.user !== null || under.version.product !== null)) return null;
    return this.encrypt(tenant, await this.decrypt(tenant, sealed, context), context);
  }

  /** The key version a ciphertext was sealed under (for re-wrapping after a rotation). */
  static keyVersionOf(sealed: Uint8Array): string | null {
    if (sealed.length < 3 || sealed[0] !== FORMAT) return null;
    return Buffer.from(sealed.subarray(3, 3 + sealed[2]!)).toString('utf8');
  }
}
