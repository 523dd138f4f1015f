// Platform staff and vendor organisations: the one-time setup token that creates the first staff
// member (superadmin, with a password and a TOTP factor that must be confirmed before the account can
// do anything: OPS-2), staff API credentials for automation, and the vendors table. People, sessions,
// MFA, organisations' members and operator keys live in their own modules beside this one.
import { chmodSync, existsSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { generateCode } from '@castellan/protocol';
import type { Kysely } from 'kysely';
import { CastellanError } from '../errors/index.ts';
import { hashToken, newId, newToken } from '../lib/random-ids.ts';
import type { Database } from '../store/index.ts';
import { hashPassword } from './password-hasher.ts';
import { checkPasswordPolicy, type PasswordPolicy } from './password-policy.ts';
import type { StaffRole } from './principal.ts';
import type { TotpEnrolment, TotpService } from './totp-service.ts';

export interface Vendor {
  readonly id: string;
  readonly code: string;
  readonly name: string;
  readonly kind: 'personal' | 'enterprise';
  readonly createdAt: number;
}

export interface IssuedCredential {
  readonly id: string;
  readonly kind: 'admin';
  readonly principalId: string;
  readonly label: string;
  /** Shown once; only its hash is stored. */
  readonly token: string;
}

export const SETUP_TOKEN_FILE = 'setup-token';
/** The first staff member's setup credential: enough to set the platform up and issue proper ones. */
export const SETUP_CREDENTIAL_TTL_MS = 30 * 86_400_000;
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
  cipher: {
    encrypt(tenant: string, plaintext: Uint8Array, context: string): Promise<Buffer>;
    blindIndex(tenant: string, purpose: string, value: string): Buffer;
  };
  totp: TotpService;
  passwordPolicy: PasswordPolicy;
}

/** Staff sign-in names are case-insensitive and found through a blind index (never stored in clear). */
export function usernameIndex(cipher: AccountsServiceOptions['cipher'], username: string): Buffer {
  return cipher.blindIndex('platform', 'staff-username', username.normalize('NFKC').toLowerCase());
}

export interface SetupResult {
  adminId: string;
  credential: IssuedCredential;
  /** The TOTP factor to confirm (POST /v1/staff/mfa/totp/confirm) before the credential can act. */
  totp: TotpEnrolment;
}

export class AccountsService {
  readonly #db: Kysely<Database>;
  readonly #dataDir: string;
  readonly #now: () => number;
  readonly #cipher: AccountsServiceOptions['cipher'];
  readonly #totp: TotpService;
  readonly #policy: PasswordPolicy;

  constructor(options: AccountsServiceOptions) {
    this.#policy = options.passwordPolicy;
    this.#db = options.db;
    this.#totp = options.totp;
    this.#cipher = options.cipher;
    this.#dataDir = options.dataDir;
    this.#now = options.now ?? Date.now;
  }

  /** Applies the password policy (ACC-3); throws ERR_PASSWORD_WEAK. */
  checkPassword(password: string, userInputs: string[] = []): void {
    checkPasswordPolicy(password, this.#policy, userInputs);
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

  /**
   * Consumes the setup token and creates the first staff member (superadmin) with a password, an API
   * credential and a TOTP enrolment. Until the TOTP code is confirmed the credential has no roles.
   */
  async completeSetup(input: {
    setupToken: string;
    adminName: string;
    username: string;
    password: string;
  }): Promise<SetupResult> {
    const now = this.#now();
    const adminId = newId('adm');
    // A person's name is personal data (PRIV-1): stored only encrypted, bound to its row. Encrypted
    // (and the password hashed) before the transaction: the key service may write the audit log.
    const sealedName = (
      await this.#cipher.encrypt('platform', Buffer.from(input.adminName, 'utf8'), `admins.name:${adminId}`)
    ).toString('base64');
    const passwordHash = await hashPassword(input.password);
    const roles: StaffRole[] = ['superadmin'];
    const result = await this.#db.transaction().execute(async (trx) => {
      // Single use: only the UPDATE that flips used_at from NULL wins, even under concurrency.
      const used = await trx
        .updateTable('setup_tokens')
        .set({ used_at: now })
        .where('token_hash', '=', hashToken(input.setupToken))
        .where('used_at', 'is', null)
        .executeTakeFirst();
      if (Number(used.numUpdatedRows) !== 1) return null;
      await trx
        .insertInto('admins')
        .values({
          id: adminId,
          name: sealedName,
          created_at: now,
          username_index: usernameIndex(this.#cipher, input.username),
          password_hash: passwordHash,
          roles: JSON.stringify(roles),
          disabled_at: null,
        })
        .execute();
      const credential = await this.insertStaffCredential(trx, adminId, 'setup');
      return { adminId, credential };
    });
    if (!result) throw new CastellanError('ERR_SETUP_TOKEN_INVALID');
    rmSync(this.setupTokenPath, { force: true });
    const totp = await this.#totp.enrol(adminId, input.username);
    return { ...result, totp };
  }

  /** Issues a staff API credential (shown once; stored hashed) that expires after `ttlMs`. */
  async insertStaffCredential(
    db: Kysely<Database>,
    principalId: string,
    label: string,
    ttlMs = SETUP_CREDENTIAL_TTL_MS,
  ): Promise<IssuedCredential> {
    const kind = 'admin' as const;
    const token = newToken('cas_adm');
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
        expires_at: this.#now() + ttlMs,
      })
      .execute();
    return { id, kind, principalId, label, token };
  }

  async createVendor(
    name: string,
    kind: Vendor['kind'] = 'enterprise',
    db: Kysely<Database> = this.#db,
  ): Promise<Vendor> {
    for (let attempt = 0; attempt < CODE_ATTEMPTS; attempt++) {
      const vendor = { id: newId('vnd'), code: generateCode(), name, kind, created_at: this.#now() };
      try {
        await db.insertInto('vendors').values(vendor).execute();
        return { id: vendor.id, code: vendor.code, name, kind, createdAt: vendor.created_at };
      } catch (error) {
        if (!isUniqueViolation(error)) throw error;
      }
    }
    throw new CastellanError('ERR_VENDOR_CODE_EXHAUSTED');
  }

  async getVendor(vendorId: string): Promise<Vendor | null> {
    const row = await this.#db.selectFrom('vendors').selectAll().where('id', '=', vendorId).executeTakeFirst();
    return row
      ? { id: row.id, code: row.code, name: row.name, kind: row.kind, createdAt: Number(row.created_at) }
      : null;
  }

  async listVendors(): Promise<Vendor[]> {
    const rows = await this.#db.selectFrom('vendors').selectAll().orderBy('created_at').execute();
    return rows.map((row) => ({
      id: row.id,
      code: row.code,
      name: row.name,
      kind: row.kind,
      createdAt: Number(row.created_at),
    }));
  }
}

export { isUniqueViolation };
