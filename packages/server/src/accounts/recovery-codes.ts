// Recovery codes (ACC-6): ten single-use codes issued with the first second factor, for the day the
// phone or security key is lost. Shown once; stored only as SHA-256 hashes. Each carries 80 CSPRNG
// bits, so a fast hash is enough (nothing to brute-force, as with tokens); a code is spent by the one
// UPDATE that sets used_at, so it works once even under concurrency.
import { randomBytes } from 'node:crypto';
import type { Kysely } from 'kysely';
import { hashToken, newId } from '../lib/random-ids.ts';
import type { Database } from '../store/index.ts';

export const RECOVERY_CODE_COUNT = 10;

// The RFC 4648 base32 alphabet (no 0, 1, 8 or 9 to mistake for letters), in lower case for typing.
// 256 is a multiple of 32, so `byte & 31` picks every symbol with equal probability.
const ALPHABET = 'abcdefghijklmnopqrstuvwxyz234567';

/** 16 symbols of 5 bits = 80 bits, shown as xxxx-xxxx-xxxx-xxxx. */
function newRecoveryCode(): string {
  const bytes = randomBytes(16);
  let code = '';
  for (let i = 0; i < 16; i++) {
    code += ALPHABET[bytes[i]! & 31];
    if (i % 4 === 3 && i < 15) code += '-';
  }
  return code;
}

/** Accepts the code as shown, in any case, with or without separators and spaces. */
export function normaliseRecoveryCode(input: string): string | null {
  const compact = input.toLowerCase().replace(/[\s-]/g, '');
  return /^[a-z2-7]{16}$/.test(compact) ? compact : null;
}

function codeHash(normalised: string): Buffer {
  return hashToken(`recovery:${normalised}`);
}

export class RecoveryCodes {
  readonly #db: Kysely<Database>;
  readonly #now: () => number;

  constructor(options: { db: Kysely<Database>; now?: () => number }) {
    this.#db = options.db;
    this.#now = options.now ?? Date.now;
  }

  /** Replaces a person's codes with ten new ones and returns them (the only time they are visible). */
  async regenerate(principalId: string, db: Kysely<Database> = this.#db): Promise<string[]> {
    const now = this.#now();
    const codes = Array.from({ length: RECOVERY_CODE_COUNT }, newRecoveryCode);
    const run = async (trx: Kysely<Database>) => {
      await trx.deleteFrom('recovery_codes').where('principal_id', '=', principalId).execute();
      await trx
        .insertInto('recovery_codes')
        .values(
          codes.map((code) => ({
            id: newId('rcv'),
            principal_id: principalId,
            code_hash: codeHash(normaliseRecoveryCode(code)!),
            created_at: now,
            used_at: null,
          })),
        )
        .execute();
    };
    if (db.isTransaction) await run(db);
    else await db.transaction().execute(run);
    return codes;
  }

  /** Spends a code: true once for each issued code, false for anything else. */
  async consume(principalId: string, input: string): Promise<boolean> {
    const normalised = normaliseRecoveryCode(input);
    if (!normalised) return false;
    const result = await this.#db
      .updateTable('recovery_codes')
      .set({ used_at: this.#now() })
      .where('principal_id', '=', principalId)
      .where('code_hash', '=', codeHash(normalised))
      .where('used_at', 'is', null)
      .executeTakeFirst();
    return Number(result.numUpdatedRows) === 1;
  }

  /** Unused codes left. */
  async remaining(principalId: string): Promise<number> {
    const row = await this.#db
      .selectFrom('recovery_codes')
      .select((eb) => eb.fn.countAll<number | string>().as('n'))
      .where('principal_id', '=', principalId)
      .where('used_at', 'is', null)
      .executeTakeFirstOrThrow();
    return Number(row.n);
  }

  async removeAll(principalId: string): Promise<void> {
    await this.#db.deleteFrom('recovery_codes').where('principal_id', '=', principalId).execute();
  }
}
