// TOTP second factor (RFC 6238, SHA-1, 6 digits, 30 s: what authenticator apps implement). The secret
// is encrypted under the principal's key; a code is accepted once (the last accepted time step is
// stored, RFC 6238 section 5.2) and one step of clock drift either way is tolerated.
import type { Kysely } from 'kysely';
import { Secret, TOTP } from 'otpauth';
import { CastellanError } from '../errors/index.ts';
import type { Database } from '../store/index.ts';

export interface TotpCipher {
  encrypt(tenant: string, plaintext: Uint8Array, context: string, scope?: { user?: string }): Promise<Buffer>;
  decrypt(tenant: string, sealed: Uint8Array, context: string, scope?: { user?: string }): Promise<Buffer>;
}

export interface TotpEnrolment {
  /** Base32 secret, shown once. */
  readonly secret: string;
  /** otpauth:// URI for a QR code. */
  readonly uri: string;
}

const PERIOD = 30;
const ISSUER = 'Castellan';

function totpFor(secret: Secret, label: string): TOTP {
  return new TOTP({ issuer: ISSUER, label, algorithm: 'SHA1', digits: 6, period: PERIOD, secret });
}

/** The key scope of a principal's personal secrets: people have their own key; staff use the platform key. */
function scopeOf(principalId: string): { user?: string } {
  return principalId.startsWith('usr_') ? { user: principalId } : {};
}

export class TotpService {
  readonly #db: Kysely<Database>;
  readonly #cipher: TotpCipher;
  readonly #now: () => number;

  constructor(options: { db: Kysely<Database>; cipher: TotpCipher; now?: () => number }) {
    this.#db = options.db;
    this.#cipher = options.cipher;
    this.#now = options.now ?? Date.now;
  }

  /** Starts (or restarts, while unconfirmed) an enrolment. A confirmed factor is replaced only after removal. */
  async enrol(principalId: string, label: string): Promise<TotpEnrolment> {
    const existing = await this.#db
      .selectFrom('mfa_totp')
      .select('confirmed_at')
      .where('principal_id', '=', principalId)
      .executeTakeFirst();
    if ((existing?.confirmed_at ?? null) !== null) throw new CastellanError('ERR_MFA_ALREADY_ENROLLED');
    const secret = new Secret({ size: 20 });
    const sealed = await this.#cipher.encrypt(
      'platform',
      Buffer.from(secret.base32, 'utf8'),
      `mfa_totp.secret:${principalId}`,
      scopeOf(principalId),
    );
    const now = this.#now();
    await this.#db.transaction().execute(async (trx) => {
      await trx.deleteFrom('mfa_totp').where('principal_id', '=', principalId).execute();
      await trx
        .insertInto('mfa_totp')
        .values({
          principal_id: principalId,
          secret_ciphertext: sealed,
          confirmed_at: null,
          last_step: 0,
          created_at: now,
        })
        .execute();
    });
    return { secret: secret.base32, uri: totpFor(secret, label).toString() };
  }

  /** True when the principal has a confirmed TOTP factor. */
  async isEnrolled(principalId: string): Promise<boolean> {
    const row = await this.#db
      .selectFrom('mfa_totp')
      .select('confirmed_at')
      .where('principal_id', '=', principalId)
      .executeTakeFirst();
    return (row?.confirmed_at ?? null) !== null;
  }

  /**
   * Checks a code; on success records its time step so it cannot be used again. `confirm` also
   * completes an enrolment. Returns false for a wrong, reused or malformed code.
   */
  async verify(principalId: string, code: string, options: { confirm?: boolean } = {}): Promise<boolean> {
    if (!/^\d{6}$/.test(code)) return false;
    const row = await this.#db
      .selectFrom('mfa_totp')
      .selectAll()
      .where('principal_id', '=', principalId)
      .executeTakeFirst();
    if (!row) return false;
    if (row.confirmed_at === null && !options.confirm) return false;
    const base32 = (
      await this.#cipher.decrypt(
        'platform',
        row.secret_ciphertext,
        `mfa_totp.secret:${principalId}`,
        scopeOf(principalId),
      )
    ).toString('utf8');
    const totp = totpFor(Secret.fromBase32(base32), principalId);
    const now = this.#now();
    const delta = totp.validate({ token: code, timestamp: now, window: 1 });
    if (delta === null) return false;
    const step = Math.floor(now / 1000 / PERIOD) + delta;
    // Single use: only the UPDATE that moves last_step forward wins, even under concurrency.
    const updated = await this.#db
      .updateTable('mfa_totp')
      .set({ last_step: step, ...(row.confirmed_at === null ? { confirmed_at: now } : {}) })
      .where('principal_id', '=', principalId)
      .where('last_step', '<', step)
      .executeTakeFirst();
    return Number(updated.numUpdatedRows) === 1;
  }

  async remove(principalId: string): Promise<void> {
    await this.#db.deleteFrom('mfa_totp').where('principal_id', '=', principalId).execute();
  }
}

/** The current code for a base32 secret (tests, the CLI's setup flow). */
export function totpCode(base32Secret: string, timestamp = Date.now()): string {
  return totpFor(Secret.fromBase32(base32Secret), 'x').generate({ timestamp });
}
