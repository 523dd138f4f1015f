// One-time codes sent by e-mail or SMS (ACC-1 activation, ACC-4 password reset). Eight decimal digits
// from the CSPRNG; only a keyed hash is stored (HMAC under a root-derived key, bound to the code's
// row, so a database dump yields nothing to brute-force offline). A code lives codeTtlMinutes, is
// void after codeMaxAttempts guesses, works once, and issuing a new one voids the earlier ones of the
// same purpose. Every guess is counted before it is compared, so parallel guesses cannot overrun the
// limit.
import { randomInt } from 'node:crypto';
import { constantTimeEqual, newId } from '../lib/random-ids.ts';
import type { AccountsContext } from './accounts-context.ts';

export type CodePurpose = 'activate' | 'reset';

export const CODE_DIGITS = 8;

type CodesContext = Pick<AccountsContext, 'db' | 'keys' | 'config' | 'now'>;

export class OneTimeCodes {
  readonly #ctx: CodesContext;

  constructor(ctx: CodesContext) {
    this.#ctx = ctx;
  }

  #hash(codeId: string, code: string): Buffer {
    return this.#ctx.keys.blindIndex('platform', 'one-time-code', `${codeId}:${code}`);
  }

  /** Issues a new code for a person and purpose; returns it (to be sent, never stored or logged). */
  async issue(userId: string, purpose: CodePurpose): Promise<string> {
    const code = String(randomInt(0, 10 ** CODE_DIGITS)).padStart(CODE_DIGITS, '0');
    const id = newId('otc');
    const now = this.#ctx.now();
    await this.#ctx.db.transaction().execute(async (trx) => {
      await trx
        .updateTable('verification_codes')
        .set({ used_at: now })
        .where('user_id', '=', userId)
        .where('purpose', '=', purpose)
        .where('used_at', 'is', null)
        .execute();
      await trx
        .insertInto('verification_codes')
        .values({
          id,
          user_id: userId,
          purpose,
          code_hash: this.#hash(id, code),
          attempts: 0,
          created_at: now,
          expires_at: now + this.#ctx.config.codeTtlMinutes * 60_000,
          used_at: null,
        })
        .execute();
    });
    return code;
  }

  /** True once for the right code of the live code; false for anything else (wrong, expired, used, void). */
  async consume(userId: string, purpose: CodePurpose, code: string): Promise<boolean> {
    const now = this.#ctx.now();
    const max = this.#ctx.config.codeMaxAttempts;
    const row = await this.#ctx.db
      .selectFrom('verification_codes')
      .select(['id', 'code_hash'])
      .where('user_id', '=', userId)
      .where('purpose', '=', purpose)
      .where('used_at', 'is', null)
      .where('expires_at', '>', now)
      .where('attempts', '<', max)
      .orderBy('created_at', 'desc')
      .executeTakeFirst();
    if (!row) return false;
    // Count the guess first (atomically, bounded by the limit), then compare.
    const counted = await this.#ctx.db
      .updateTable('verification_codes')
      .set((eb) => ({ attempts: eb('attempts', '+', 1) }))
      .where('id', '=', row.id)
      .where('used_at', 'is', null)
      .where('attempts', '<', max)
      .executeTakeFirst();
    if (Number(counted.numUpdatedRows) !== 1) return false;
    if (!constantTimeEqual(this.#hash(row.id, code), Buffer.from(row.code_hash))) return false;
    const used = await this.#ctx.db
      .updateTable('verification_codes')
      .set({ used_at: now })
      .where('id', '=', row.id)
      .where('used_at', 'is', null)
      .executeTakeFirst();
    return Number(used.numUpdatedRows) === 1;
  }
}
