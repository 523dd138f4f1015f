// Accounts (minimal foundation): the one-time setup token, platform administrators, vendor
// organisations and their bearer API credentials. The accounts issue replaces bearer vendor
// credentials with signed operator keys and adds users, sessions and MFA on top of these tables.
import { chmodSync, existsSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { generateCode } from '@castellan/protocol';
import type { Kysely } from 'kysely';
import { CastellanError } from '../errors/index.ts';
import { hashToken, newId, newToken } from '../lib/random-ids.ts';
import type { Database } from '../store/index.ts';

export type PrincipalKind = 'admin' | 'vendor';

export interface Principal {
  readonly kind: PrincipalKind;
  /** Admin ID or vendor ID. */
  readonly id: string;
  readonly credentialId: string;
}

export interface Vendor {
  readonly id: string;
  readonly code: string;
  readonly name: string;
  readonly createdAt: number;
}

export interface IssuedCredential {
  readonly id: string;
  readonly kind: PrincipalKind;
  readonly principalId: string;
  readonly label: string;
  /** Shown once; only its hash is stored. */
  readonly token: string;
}

export const SETUP_TOKEN_FILE = 'setup-token';
const TOKEN_PREFIX: Record<PrincipalKind, string> = { admin: 'cas_adm', vendor: 'cas_vnd' };
const CODE_ATTEMPTS = 16;

function isUniqueViolation(error: unknown): boolean {
  const e = error as { code?: string; errcode?: number; message?: string };
  // PostgreSQL 23505; SQLite SQLITE_CONSTRAINT_UNIQUE / PRIMARYKEY (node:sqlite reports errcode 2067/1555).
  return (
    e.code === '23505' || e.errcode === 2067 || e.errcode === 1555 || /UNIQUE constraint failed/.test(e.message ?? '')
  );
}

export interface AccountsServiceOptions {
  db: Kysely<Database>;
  dataDir: string;
  now?: () => number;
  /** Encrypts personal fields under the platform's key (the keys subsystem). */
  cipher: { encrypt(tenant: string, plaintext: Uint8Array, context: string): Promise<Buffer> };
}

export class AccountsService {
  readonly #db: Kysely<Database>;
  readonly #dataDir: string;
  readonly #now: () => number;
  readonly #cipher: AccountsServiceOptions['cipher'];

  constructor(options: AccountsServiceOptions) {
    this.#db = options.db;
    this.#cipher = options.cipher;
    this.#dataDir = options.dataDir;
    this.#now = options.now ?? Date.now;
  }

  get setupTokenPath(): string {
    return join(this.#dataDir, SETUP_TOKEN_FILE);
  }

  async hasAdmin(): Promise<boolean> {
    const row = await this.#db.selectFrom('admins').select('id').limit(1).executeTakeFirst();
    return row !== undefined;
  }

  /**
   * While no administrator exists, makes sure one unused setup token exists and is readable from the
   * data directory (0600). Returns the new token when one was issued (to show once), otherwise null.
   */
  async ensureSetupToken(): Promise<string | null> {
    if (await this.hasAdmin()) {
      rmSync(this.setupTokenPath, { force: true });
      return null;
    }
    const unused = await this.#db
      .selectFrom('setup_tokens')
      .select('id')
      .where('used_at', 'is', null)
      .executeTakeFirst();
    if (unused && existsSync(this.setupTokenPath)) return null;
    const token = newToken('cas_setup');
    await this.#db.transaction().execute(async (trx) => {
      // A lost token file means the old token is unrecoverable: retire it and issue a new one.
      await trx.updateTable('setup_tokens').set({ used_at: this.#now() }).where('used_at', 'is', null).execute();
      await trx
        .insertInto('setup_tokens')
        .values({ id: newId('stp'), token_hash: hashToken(token), created_at: this.#now(), used_at: null })
        .execute();
    });
    writeFileSync(this.setupTokenPath, `${token}\n`, { mode: 0o600 });
    chmodSync(this.setupTokenPath, 0o600);
    return token;
  }

  /** Consumes the setup token and creates the first administrator with an API credential. */
  async completeSetup(
    setupToken: string,
    adminName: string,
  ): Promise<{ adminId: string; credential: IssuedCredential }> {
    const now = this.#now();
    const adminId = newId('adm');
    // A person's name is personal data (PRIV-1): stored only encrypted, bound to its row. Encrypted
    // before the transaction: the key service may write the audit log.
    const sealedName = (
      await this.#cipher.encrypt('platform', Buffer.from(adminName, 'utf8'), `admins.name:${adminId}`)
    ).toString('base64');
    const result = await this.#db.transaction().execute(async (trx) => {
      // Single use: only the UPDATE that flips used_at from NULL wins, even under concurrency.
      const used = await trx
        .updateTable('setup_tokens')
        .set({ used_at: now })
        .where('token_hash', '=', hashToken(setupToken))
        .where('used_at', 'is', null)
        .executeTakeFirst();
      if (Number(used.numUpdatedRows) !== 1) return null;
      await trx.insertInto('admins').values({ id: adminId, name: sealedName, created_at: now }).execute();
      const credential = await this.#insertCredential(trx, 'admin', adminId, 'setup');
      return { adminId, credential };
    });
    if (!result) throw new CastellanError('ERR_SETUP_TOKEN_INVALID');
    rmSync(this.setupTokenPath, { force: true });
    return result;
  }

  async #insertCredential(
    db: Kysely<Database>,
    kind: PrincipalKind,
    principalId: string,
    label: string,
  ): Promise<IssuedCredential> {
    const token = newToken(TOKEN_PREFIX[kind]);
    const id = newId('key');
    await db
      .insertInto('api_credentials')
      .values({
        id,
        kind,
        principal_id: principalId,
        token_hash: hashToken(token),
        label,
        created_at: this.#now(),
        revoked_at: null,
      })
      .execute();
    return { id, kind, principalId, label, token };
  }

  /** Resolves a bearer token to its principal, or null. Lookup is by hash; the token is never stored. */
  async authenticate(token: string): Promise<Principal | null> {
    if (token.length < 16 || token.length > 256) return null;
    const row = await this.#db
      .selectFrom('api_credentials')
      .select(['id', 'kind', 'principal_id'])
      .where('token_hash', '=', hashToken(token))
      .where('revoked_at', 'is', null)
      .executeTakeFirst();
    return row ? { kind: row.kind, id: row.principal_id, credentialId: row.id } : null;
  }

  async createVendor(name: string): Promise<Vendor> {
    for (let attempt = 0; attempt < CODE_ATTEMPTS; attempt++) {
      const vendor = { id: newId('vnd'), code: generateCode(), name, created_at: this.#now() };
      try {
        await this.#db.insertInto('vendors').values(vendor).execute();
        return { id: vendor.id, code: vendor.code, name, createdAt: vendor.created_at };
      } catch (error) {
        if (!isUniqueViolation(error)) throw error;
      }
    }
    throw new CastellanError('ERR_VENDOR_CODE_EXHAUSTED');
  }

  async getVendor(vendorId: string): Promise<Vendor | null> {
    const row = await this.#db.selectFrom('vendors').selectAll().where('id', '=', vendorId).executeTakeFirst();
    return row ? { id: row.id, code: row.code, name: row.name, createdAt: row.created_at } : null;
  }

  async listVendors(): Promise<Vendor[]> {
    const rows = await this.#db.selectFrom('vendors').selectAll().orderBy('created_at').execute();
    return rows.map((row) => ({ id: row.id, code: row.code, name: row.name, createdAt: row.created_at }));
  }

  async createVendorCredential(vendorId: string, label: string): Promise<IssuedCredential> {
    if (!(await this.getVendor(vendorId))) throw new CastellanError('ERR_VENDOR_NOT_FOUND');
    return this.#insertCredential(this.#db, 'vendor', vendorId, label);
  }
}

export { isUniqueViolation };
