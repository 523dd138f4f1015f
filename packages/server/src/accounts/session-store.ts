// Sessions of people and staff (the standard's chapter 7; SESS-1..5).
//
// - Opaque tokens of 256 CSPRNG bits, stored only as SHA-256 hashes (SESS-1). A session's ID (ses_…)
//   is not its token: IDs may appear in logs and audit entries, tokens never do (SESS-5).
// - Idle and absolute timeouts; expired rows are purged (SESS-4).
// - "Keep me signed in" is the user's choice: a persistent session also gets a refresh token. Each
//   refresh rotates both tokens within a family; presenting a refresh token that was already used
//   revokes the whole family (OAuth 2.0 Security BCP, RFC 9700 section 4.14.2).
// - Rotation on sign-in, second factor and privilege change: the old token stops working at once.
// - Optional binding to the client IP (SESS-2): a keyed hash of the address, never the address.
import { createHmac } from 'node:crypto';
import type { Kysely, SelectQueryBuilder } from 'kysely';
import { CastellanError } from '../errors/index.ts';
import { hashToken, newId, newToken } from '../lib/random-ids.ts';
import type { Database } from '../store/index.ts';

export const SESSION_TOKEN_PREFIX = 'cas_ses';
export const REFRESH_TOKEN_PREFIX = 'cas_rft';

export type SessionLevel = 'full' | 'mfa-pending';
export type SessionPrincipalKind = 'user' | 'staff';

export interface SessionOptions {
  db: Kysely<Database>;
  idleMs: number;
  absoluteMs: number;
  refreshMs: number;
  bindToIp: boolean;
  /** Key for the IP binding hash (derived from the root key by the caller). */
  ipHashKey: Uint8Array;
  now?: () => number;
}

export interface SessionRecord {
  readonly id: string;
  readonly principalKind: SessionPrincipalKind;
  readonly principalId: string;
  readonly familyId: string;
  readonly level: SessionLevel;
  readonly persistent: boolean;
  readonly createdAt: number;
  readonly lastSeenAt: number;
  readonly authenticatedAt: number;
  readonly absoluteExpiresAt: number;
}

export interface IssuedSession {
  readonly session: SessionRecord;
  /** Shown once to the client; only the hash is stored. */
  readonly token: string;
  /** For persistent sessions only. */
  readonly refreshToken?: string;
  /** When the session token stops working at the latest (idle expiry may come sooner). */
  readonly expiresAt: number;
  /** When the refresh token stops working. */
  readonly refreshExpiresAt?: number;
}

export interface CreateSessionInput {
  principalKind: SessionPrincipalKind;
  principalId: string;
  level: SessionLevel;
  persistent: boolean;
  ip: string;
  /** Continue a refresh family (refresh, rotation); new sign-ins start a new one. */
  familyId?: string;
  authenticatedAt?: number;
}

type SessionRow = Database['sessions'];

function toRecord(row: Pick<SessionRow, keyof SessionRow>): SessionRecord {
  return {
    id: row.id,
    principalKind: row.principal_kind,
    principalId: row.principal_id,
    familyId: row.family_id,
    level: row.level as SessionLevel,
    persistent: Number(row.persistent) === 1,
    createdAt: Number(row.created_at),
    lastSeenAt: Number(row.last_seen_at),
    authenticatedAt: Number(row.authenticated_at),
    absoluteExpiresAt: Number(row.absolute_expires_at),
  };
}

/** A token of this shape is worth a database lookup. */
export function looksLikeToken(token: string, prefix: string): boolean {
  return token.length === prefix.length + 44 && token.startsWith(`${prefix}_`);
}

export class SessionStore {
  readonly #db: Kysely<Database>;
  readonly #o: SessionOptions;
  readonly #now: () => number;

  constructor(options: SessionOptions) {
    this.#db = options.db;
    this.#o = options;
    this.#now = options.now ?? Date.now;
  }

  get idleMs(): number {
    return this.#o.idleMs;
  }

  #ipHash(ip: string): Buffer {
    return createHmac('sha256', this.#o.ipHashKey).update(ip, 'utf8').digest();
  }

  /** Starts a session (and, when persistent, a refresh token). */
  async create(input: CreateSessionInput, db: Kysely<Database> = this.#db): Promise<IssuedSession> {
    const now = this.#now();
    const token = newToken(SESSION_TOKEN_PREFIX);
    const familyId = input.familyId ?? newId('fam');
    // An MFA-pending session is a short step between two factors: it lives minutes, not hours.
    const absolute = now + (input.level === 'mfa-pending' ? Math.min(this.#o.idleMs, 10 * 60_000) : this.#o.absoluteMs);
    const row: SessionRow = {
      id: newId('ses'),
      principal_kind: input.principalKind,
      principal_id: input.principalId,
      token_hash: hashToken(token),
      family_id: familyId,
      level: input.level,
      persistent: input.persistent ? 1 : 0,
      ip_hash: this.#o.bindToIp ? this.#ipHash(input.ip) : null,
      created_at: now,
      last_seen_at: now,
      authenticated_at: input.authenticatedAt ?? now,
      absolute_expires_at: absolute,
      revoked_at: null,
    };
    await db.insertInto('sessions').values(row).execute();
    let refreshToken: string | undefined;
    let refreshExpiresAt: number | undefined;
    if (input.persistent && input.level === 'full') {
      refreshToken = newToken(REFRESH_TOKEN_PREFIX);
      refreshExpiresAt = now + this.#o.refreshMs;
      await db
        .insertInto('refresh_tokens')
        .values({
          token_hash: hashToken(refreshToken),
          family_id: familyId,
          principal_id: input.principalId,
          created_at: now,
          expires_at: refreshExpiresAt,
          used_at: null,
        })
        .execute();
    }
    return {
      session: toRecord(row),
      token,
      expiresAt: absolute,
      ...(refreshToken ? { refreshToken, refreshExpiresAt: refreshExpiresAt! } : {}),
    };
  }

  /**
   * The live session behind a token, or null (unknown, revoked, idle or absolutely expired, or
   * presented from another IP while bound). Slides the idle timeout; the write is skipped when the
   * last one is recent, so a busy client costs one read per request.
   */
  async resolve(token: string, ip: string): Promise<SessionRecord | null> {
    const row = await this.lookup(token)?.selectAll().executeTakeFirst();
    return row ? this.accept(row, ip) : null;
  }

  /**
   * The unrevoked session row of a token as a query to extend, or null for a token of the wrong shape.
   * The request authenticator joins the principal to it (one round trip per request) and hands the
   * session's columns to accept(), which applies the same checks as resolve().
   */
  lookup(token: string): SelectQueryBuilder<Database, 'sessions', object> | null {
    if (!looksLikeToken(token, SESSION_TOKEN_PREFIX)) return null;
    return this.#db
      .selectFrom('sessions')
      .where('sessions.token_hash', '=', hashToken(token))
      .where('sessions.revoked_at', 'is', null);
  }

  /**
   * The session of a row read by lookup(), or null when idle or absolutely expired or presented from
   * another IP while bound. Read at every request, never cached, so a logout anywhere ends it (SESS-3).
   */
  async accept(row: SessionRow, ip: string): Promise<SessionRecord | null> {
    if (row.revoked_at !== null) return null;
    const now = this.#now();
    const lastSeen = Number(row.last_seen_at);
    if (now >= Number(row.absolute_expires_at) || now - lastSeen >= this.#o.idleMs) return null;
    if (row.ip_hash && !this.#ipHash(ip).equals(Buffer.from(row.ip_hash))) return null;
    if (now - lastSeen > Math.min(60_000, this.#o.idleMs / 20)) {
      await this.#db.updateTable('sessions').set({ last_seen_at: now }).where('id', '=', row.id).execute();
    }
    return toRecord(row);
  }

  /**
   * Replaces a session with a new token (after the second factor, a step-up or a privilege change):
   * the old token stops working in the same transaction (SESS-1).
   */
  async rotate(
    sessionId: string,
    ip: string,
    change: { level?: SessionLevel; authenticatedAt?: number } = {},
  ): Promise<IssuedSession> {
    return this.#db.transaction().execute(async (trx) => {
      const old = await trx
        .updateTable('sessions')
        .set({ revoked_at: this.#now() })
        .where('id', '=', sessionId)
        .where('revoked_at', 'is', null)
        .returningAll()
        .executeTakeFirst();
      if (!old) throw new CastellanError('ERR_AUTH_INVALID');
      const record = toRecord(old);
      // The new session of a persistent family gets its own refresh token: the family's earlier ones
      // are retired (presenting one later counts as reuse and revokes the family).
      await trx
        .updateTable('refresh_tokens')
        .set({ used_at: this.#now() })
        .where('family_id', '=', record.familyId)
        .where('used_at', 'is', null)
        .execute();
      return this.create(
        {
          principalKind: record.principalKind,
          principalId: record.principalId,
          level: change.level ?? record.level,
          persistent: record.persistent,
          ip,
          familyId: record.familyId,
          authenticatedAt: change.authenticatedAt ?? record.authenticatedAt,
        },
        trx,
      );
    });
  }

  /**
   * Exchanges a refresh token for a new session and a new refresh token. A token already used is a
   * sign of theft: the whole family (every session and refresh token descended from the same
   * sign-in) is revoked, and the caller learns only ERR_AUTH_INVALID.
   */
  async refresh(refreshToken: string, ip: string): Promise<{ issued: IssuedSession } | { reused: string } | null> {
    if (!looksLikeToken(refreshToken, REFRESH_TOKEN_PREFIX)) return null;
    const now = this.#now();
    const hash = hashToken(refreshToken);
    const outcome = await this.#db.transaction().execute(async (trx) => {
      const row = await trx.selectFrom('refresh_tokens').selectAll().where('token_hash', '=', hash).executeTakeFirst();
      if (!row) return null;
      if (row.used_at !== null) {
        await this.#revokeFamily(trx, row.family_id, now);
        return { reused: row.family_id } as const;
      }
      if (now >= Number(row.expires_at)) return null;
      // Single use even under concurrency: only the UPDATE that flips used_at wins.
      const claimed = await trx
        .updateTable('refresh_tokens')
        .set({ used_at: now })
        .where('token_hash', '=', hash)
        .where('used_at', 'is', null)
        .executeTakeFirst();
      if (Number(claimed.numUpdatedRows) !== 1) {
        await this.#revokeFamily(trx, row.family_id, now);
        return { reused: row.family_id } as const;
      }
      const current = await trx
        .selectFrom('sessions')
        .selectAll()
        .where('family_id', '=', row.family_id)
        .orderBy('created_at', 'desc')
        .limit(1)
        .executeTakeFirst();
      if (!current || current.level !== 'full') return null;
      // The family's live sessions end: the refreshed one replaces them.
      await trx
        .updateTable('sessions')
        .set({ revoked_at: now })
        .where('family_id', '=', row.family_id)
        .where('revoked_at', 'is', null)
        .execute();
      const issued = await this.create(
        {
          principalKind: current.principal_kind,
          principalId: current.principal_id,
          level: 'full',
          persistent: true,
          ip,
          familyId: row.family_id,
          authenticatedAt: Number(current.authenticated_at),
        },
        trx,
      );
      return { issued } as const;
    });
    return outcome;
  }

  async #revokeFamily(db: Kysely<Database>, familyId: string, now: number): Promise<void> {
    await db
      .updateTable('sessions')
      .set({ revoked_at: now })
      .where('family_id', '=', familyId)
      .where('revoked_at', 'is', null)
      .execute();
    await db
      .updateTable('refresh_tokens')
      .set({ used_at: now })
      .where('family_id', '=', familyId)
      .where('used_at', 'is', null)
      .execute();
  }

  /** Logout: ends the session and its refresh family (SESS-3). */
  async revoke(sessionId: string): Promise<void> {
    const now = this.#now();
    await this.#db.transaction().execute(async (trx) => {
      const row = await trx.selectFrom('sessions').select('family_id').where('id', '=', sessionId).executeTakeFirst();
      if (row) await this.#revokeFamily(trx, row.family_id, now);
    });
  }

  /** "Sign out everywhere" (and password change, account deletion): every session of a principal. */
  async revokeAll(principalId: string, exceptSessionId?: string): Promise<number> {
    const now = this.#now();
    return this.#db.transaction().execute(async (trx) => {
      let query = trx
        .updateTable('sessions')
        .set({ revoked_at: now })
        .where('principal_id', '=', principalId)
        .where('revoked_at', 'is', null);
      if (exceptSessionId) query = query.where('id', '!=', exceptSessionId);
      const result = await query.executeTakeFirst();
      let refresh = trx
        .updateTable('refresh_tokens')
        .set({ used_at: now })
        .where('principal_id', '=', principalId)
        .where('used_at', 'is', null);
      if (exceptSessionId) {
        const keep = await trx
          .selectFrom('sessions')
          .select('family_id')
          .where('id', '=', exceptSessionId)
          .executeTakeFirst();
        if (keep) refresh = refresh.where('family_id', '!=', keep.family_id);
      }
      await refresh.execute();
      return Number(result.numUpdatedRows);
    });
  }

  /** Lists a principal's live sessions (for "where am I signed in"). */
  async list(principalId: string): Promise<SessionRecord[]> {
    const now = this.#now();
    const rows = await this.#db
      .selectFrom('sessions')
      .selectAll()
      .where('principal_id', '=', principalId)
      .where('revoked_at', 'is', null)
      .where('absolute_expires_at', '>', now)
      .where('last_seen_at', '>', now - this.#o.idleMs)
      .orderBy('created_at')
      .execute();
    return rows.map(toRecord);
  }

  /** Deletes expired and revoked sessions and refresh tokens (SESS-4); returns rows removed. */
  async purgeExpired(): Promise<number> {
    const now = this.#now();
    const sessions = await this.#db
      .deleteFrom('sessions')
      .where((eb) =>
        eb.or([
          eb('absolute_expires_at', '<=', now),
          eb('last_seen_at', '<=', now - this.#o.idleMs),
          eb('revoked_at', 'is not', null),
        ]),
      )
      .executeTakeFirst();
    // Used refresh tokens stay until their family expires: reuse detection needs them.
    const refresh = await this.#db.deleteFrom('refresh_tokens').where('expires_at', '<=', now).executeTakeFirst();
    return Number(sessions.numDeletedRows) + Number(refresh.numDeletedRows);
  }
}
