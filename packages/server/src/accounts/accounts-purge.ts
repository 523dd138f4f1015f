// Housekeeping (SESS-4, PRIV data minimisation): expired sessions, refresh tokens, one-time codes,
// pending ceremonies and remembered nonces are deleted, not just ignored.
import type { Kysely } from 'kysely';
import type { Database } from '../store/index.ts';
import type { SessionStore } from './session-store.ts';

/**
 * A remembered request nonce expires at its signed date plus the signature window, and the verifier
 * still accepts a date exactly at that edge (|now - date| <= window). Other platform processes read
 * their own clocks, which may run behind this one's. A nonce is therefore kept this much longer than
 * its expiry, so no process can accept its request again after the purge forgot it (replay, ORG-2).
 */
export const NONCE_PURGE_MARGIN_MS = 60_000;

export async function purgeExpiredAccountsData(
  db: Kysely<Database>,
  sessions: SessionStore,
  now = Date.now(),
): Promise<number> {
  let removed = await sessions.purgeExpired();
  const codes = await db.deleteFrom('verification_codes').where('expires_at', '<=', now).executeTakeFirst();
  const challenges = await db.deleteFrom('auth_challenges').where('expires_at', '<=', now).executeTakeFirst();
  const nonces = await db
    .deleteFrom('request_nonces')
    .where('expires_at', '<', now - NONCE_PURGE_MARGIN_MS)
    .executeTakeFirst();
  const invitations = await db.deleteFrom('organisation_invitations').where('expires_at', '<=', now).executeTakeFirst();
  removed += [codes, challenges, nonces, invitations].reduce((sum, r) => sum + Number(r.numDeletedRows), 0);
  return removed;
}
