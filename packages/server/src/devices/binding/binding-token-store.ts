// One-time binding tokens (BIND-1, the standard's 6.2.2b; anchor: Tuya's pairing token, valid 10 minutes,
// void after use). A signed-in person asks for one; the app carries it to the device inside the encrypted
// provisioning payload; the device presents it at activation and the platform binds the device to the
// token's issuer, never to anyone else. 128 CSPRNG bits (26 characters with the prefix: fits a BLE
// payload), stored as SHA-256 only, single use, bounded lifetime and a bounded number outstanding.
import { randomBytes } from 'node:crypto';
import type { Kysely, Transaction } from 'kysely';
import { CastellanError } from '../../errors/index.ts';
import { hashToken, newId } from '../../lib/random-ids.ts';
import type { Database } from '../../store/index.ts';

/** 128 bits: unguessable within a 10-minute life, yet short for a BLE advertisement or SoftAP frame. */
const TOKEN_BYTES = 16;
export const BINDING_TOKEN_PREFIX = 'bnd';
/** Used and expired tokens are kept this long (status polling after the bind), then purged. */
const KEEP_AFTER_MS = 86_400_000;

export interface IssuedBindingToken {
  readonly id: string;
  /** Shown once; only its hash is stored. */
  readonly token: string;
  readonly expiresAt: number;
}

export type BindingTokenStatus = 'pending' | 'bound' | 'expired';

export interface BindingTokenView {
  readonly id: string;
  readonly status: BindingTokenStatus;
  readonly createdAt: number;
  readonly expiresAt: number;
  readonly usedAt: number | null;
  readonly deviceId: string | null;
}

/** Why a presented token was refused: for the audit trail only, never for the caller. */
export type TokenRefusal = 'unknown' | 'used' | 'expired';

export interface RedeemableToken {
  readonly id: string;
  readonly userId: string;
}

export class BindingTokenStore {
  readonly #db: Kysely<Database>;
  readonly #ttlMs: number;
  readonly #perUser: number;
  readonly #now: () => number;

  constructor(options: { db: Kysely<Database>; ttlMs: number; perUser: number; now: () => number }) {
    this.#db = options.db;
    this.#ttlMs = options.ttlMs;
    this.#perUser = options.perUser;
    this.#now = options.now;
  }

  /** Issues a token to `userId`; ERR_BINDING_TOKEN_LIMIT when too many are outstanding. */
  async issue(userId: string): Promise<IssuedBindingToken> {
    const now = this.#now();
    const token = `${BINDING_TOKEN_PREFIX}_${randomBytes(TOKEN_BYTES).toString('base64url')}`;
    const id = newId('bnt');
    const expiresAt = now + this.#ttlMs;
    await this.#db.transaction().execute(async (trx) => {
      const outstanding = await trx
        .selectFrom('binding_tokens')
        .select((eb) => eb.fn.countAll<number | string>().as('n'))
        .where('user_id', '=', userId)
        .where('used_at', 'is', null)
        .where('expires_at', '>', now)
        .executeTakeFirstOrThrow();
      if (Number(outstanding.n) >= this.#perUser) throw new CastellanError('ERR_BINDING_TOKEN_LIMIT');
      await trx
        .insertInto('binding_tokens')
        .values({
          id,
          token_hash: hashToken(token),
          user_id: userId,
          created_at: now,
          expires_at: expiresAt,
          used_at: null,
          device_id: null,
        })
        .execute();
    });
    return { id, token, expiresAt };
  }

  /** The issuer's view of one of their tokens; null for a missing token or another person's. */
  async view(userId: string, tokenId: string): Promise<BindingTokenView | null> {
    const row = await this.#db
      .selectFrom('binding_tokens')
      .select(['id', 'created_at', 'expires_at', 'used_at', 'device_id'])
      .where('id', '=', tokenId)
      .where('user_id', '=', userId)
      .executeTakeFirst();
    if (!row) return null;
    const usedAt = row.used_at === null ? null : Number(row.used_at);
    const expiresAt = Number(row.expires_at);
    return {
      id: row.id,
      status: usedAt !== null ? 'bound' : expiresAt <= this.#now() ? 'expired' : 'pending',
      createdAt: Number(row.created_at),
      expiresAt,
      usedAt,
      deviceId: row.device_id,
    };
  }

  /** Withdraws an unused token of the issuer's (the app gave up pairing); false when none. */
  async cancel(userId: string, tokenId: string): Promise<boolean> {
    const result = await this.#db
      .deleteFrom('binding_tokens')
      .where('id', '=', tokenId)
      .where('user_id', '=', userId)
      .where('used_at', 'is', null)
      .executeTakeFirst();
    return Number(result.numDeletedRows) > 0;
  }

  /**
   * Finds a presented token inside the binding transaction: the token row when it can be used, else
   * why not. Constant work per lookup: the hash is the index key, so no comparison leaks timing.
   */
  async find(trx: Transaction<Database>, token: string): Promise<RedeemableToken | TokenRefusal> {
    const row = await trx
      .selectFrom('binding_tokens')
      .select(['id', 'user_id', 'expires_at', 'used_at'])
      .where('token_hash', '=', hashToken(token))
      .executeTakeFirst();
    if (!row) return 'unknown';
    if (row.used_at !== null) return 'used';
    if (Number(row.expires_at) <= this.#now()) return 'expired';
    return { id: row.id, userId: row.user_id };
  }

  /** Marks the token used for `deviceId`; false when another request used it first (single use). */
  async consume(trx: Transaction<Database>, tokenId: string, deviceId: string): Promise<boolean> {
    const result = await trx
      .updateTable('binding_tokens')
      .set({ used_at: this.#now(), device_id: deviceId })
      .where('id', '=', tokenId)
      .where('used_at', 'is', null)
      .executeTakeFirst();
    return Number(result.numUpdatedRows) === 1;
  }

  /** Forgets the tokens that bound a device (on unbind: they name the previous owner). */
  async forgetDevice(trx: Transaction<Database>, deviceId: string): Promise<void> {
    await trx.deleteFrom('binding_tokens').where('device_id', '=', deviceId).execute();
  }

  /** Deletes tokens expired or used more than a day ago. */
  async purge(): Promise<number> {
    const before = this.#now() - KEEP_AFTER_MS;
    const result = await this.#db
      .deleteFrom('binding_tokens')
      .where((eb) => eb.or([eb('expires_at', '<', before), eb('used_at', '<', before)]))
      .executeTakeFirst();
    return Number(result.numDeletedRows);
  }
}
