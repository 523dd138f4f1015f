// Signing in with a password (ACC-4, ACC-8) and what a signed-in person does with their own account
// (step-up, password change, deletion). The routes are in session-routes.ts.
//
// Brute force (ACC-4, OWASP Authentication Cheat Sheet "Protect against automated attacks"): failures
// are counted per account, per client IP and per client (the device cookie). Once any count reaches its
// threshold within accounts.loginFailureWindowMinutes, attempts are refused with ERR_AUTH_LOCKED before
// any password hash is computed, so a locked account costs the server nothing. Every attempt reserves
// its point before the hash is checked (a success gives it back), so a burst of parallel guesses gets
// no more checks than one guess after another would. Failures answer after a progressive delay. Unknown identifiers, pending accounts and wrong passwords all give the same
// ERR_AUTH_INVALID after the same work (a decoy hash for unknown ones): nothing tells them apart.
import { setTimeout as sleep } from 'node:timers/promises';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { CastellanError } from '../errors/index.ts';
import type { AccountsContext } from './accounts-context.ts';
import { hashPassword, needsRehash, verifyPassword } from './password-hasher.ts';
import { checkPasswordPolicy } from './password-policy.ts';
import type { IssuedSession } from './session-store.ts';
import { deviceIdOf, noteSuccessfulSignIn } from './sign-in-alerts.ts';
import { type Identifier, normaliseIdentifier } from './user-directory.ts';
import { clientNetworkOf } from '../guard/index.ts';
import { refuseWithRetryAfter } from '../http/retry-after.ts';

export type SecondFactor = 'totp' | 'webauthn';

export type SignInOutcome =
  | { readonly kind: 'full'; readonly userId: string; readonly issued: IssuedSession }
  | {
      readonly kind: 'mfa';
      readonly userId: string;
      readonly issued: IssuedSession;
      readonly methods: readonly SecondFactor[];
    };

/** Delay before answering the n-th failure in a row: 0, 0, 250 ms, 500 ms, 1 s, … at most 4 s. */
export function failureDelayMs(failures: number): number {
  return failures < 3 ? 0 : Math.min(4_000, 250 * 2 ** (failures - 3));
}

interface ThrottleKeys {
  /** `usr:<id>` for a known account, else a keyed hash of the identifier (unknown ones lock alike). */
  readonly account: string;
  readonly ip?: string;
  readonly client?: string;
}

/** The three failure counters of ACC-4. */
class FailureThrottle {
  readonly #ctx: AccountsContext;

  constructor(ctx: AccountsContext) {
    this.#ctx = ctx;
  }

  #dimensions(keys: ThrottleKeys): { dimension: string; key: string; points: number }[] {
    const c = this.#ctx.config;
    const dims = [{ dimension: 'login-account', key: keys.account, points: c.loginFailuresPerAccount }];
    if (keys.ip !== undefined) dims.push({ dimension: 'login-ip', key: keys.ip, points: c.loginFailuresPerIp });
    // A client may mistype on two accounts before its own limit applies.
    if (keys.client !== undefined) {
      dims.push({ dimension: 'login-client', key: keys.client, points: 2 * c.loginFailuresPerAccount });
    }
    return dims;
  }

  get #windowS(): number {
    return this.#ctx.config.loginFailureWindowMinutes * 60;
  }

  /**
   * Reserves one attempt in every counter before the password is checked. Refused (with the
   * milliseconds until the lock lifts) when any counter is over its threshold; otherwise returns the
   * account's count, which sets the delay of a failure (slowing guesses at one account; a client or
   * an address spraying many accounts meets its own limit instead).
   */
  async reserve(keys: ThrottleKeys): Promise<{ ok: true; streak: number } | { ok: false; waitMs: number }> {
    let wait = 0;
    let streak = 0;
    for (const d of this.#dimensions(keys)) {
      const outcome = await this.#ctx.limits.consume(d.dimension, d.key, d.points, this.#windowS);
      if (!outcome.allowed) wait = Math.max(wait, outcome.retryAfterMs, 1);
      if (d.dimension === 'login-account') streak = outcome.consumed;
    }
    return wait > 0 ? { ok: false, waitMs: wait } : { ok: true, streak };
  }

  /**
   * A success clears the account's and the client's counts; the address's keeps its failures (many
   * people share one) but gets back the point this attempt reserved.
   */
  async succeed(keys: ThrottleKeys): Promise<void> {
    for (const d of this.#dimensions(keys)) {
      if (d.dimension === 'login-ip') await this.#ctx.limits.refund(d.dimension, d.key, d.points, this.#windowS);
      else await this.#ctx.limits.reset(d.dimension, d.key, d.points, this.#windowS);
    }
  }
}

const locked = (reply: FastifyReply, waitMs: number): CastellanError =>
  refuseWithRetryAfter(reply, waitMs, 'ERR_AUTH_LOCKED');

/** The second factors a person has set up (a confirmed TOTP, passkeys). */
export async function secondFactorsOf(ctx: AccountsContext, userId: string): Promise<SecondFactor[]> {
  const methods: SecondFactor[] = [];
  if (await ctx.totp.isEnrolled(userId)) methods.push('totp');
  const passkey = await ctx.db
    .selectFrom('webauthn_credentials')
    .select('id')
    .where('principal_id', '=', userId)
    .limit(1)
    .executeTakeFirst();
  if (passkey) methods.push('webauthn');
  return methods;
}

export class SignInService {
  readonly #ctx: AccountsContext;
  readonly #throttle: FailureThrottle;

  constructor(ctx: AccountsContext) {
    this.#ctx = ctx;
    this.#throttle = new FailureThrottle(ctx);
  }

  /**
   * POST /v1/auth/login. Every refusal is audited as `user.login` (failure, or denied while locked);
   * the identifier itself never reaches the audit log or the logs.
   */
  async signIn(
    request: FastifyRequest,
    reply: FastifyReply,
    input: { identifier: string; password: string; keepSignedIn?: boolean | undefined },
  ): Promise<SignInOutcome> {
    const ctx = this.#ctx;
    const device = deviceIdOf(request, reply);
    let identifier: Identifier | null = null;
    try {
      identifier = normaliseIdentifier(input.identifier);
    } catch {
      // A malformed identifier is simply an unknown one: the same answer, the same work.
    }
    const user = identifier ? await ctx.users.findByIdentifier(identifier) : null;
    const keys: ThrottleKeys = {
      account: user
        ? `usr:${user.id}`
        : `idx:${ctx.keys.blindIndex('platform', 'login-throttle', identifier?.value ?? input.identifier).toString('base64url')}`,
      ip: clientNetworkOf(request.ip),
      client: ctx.keys.blindIndex('platform', 'login-client', device).toString('base64url'),
    };
    const attempt = await this.#throttle.reserve(keys);
    if (!attempt.ok) {
      await ctx.audit(request, {
        type: 'user.login',
        result: 'denied',
        target: user?.id ?? null,
        details: { reason: 'locked' },
      });
      throw locked(reply, attempt.waitMs);
    }
    const valid = await verifyPassword(user?.passwordHash, input.password);
    if (!valid || !user || user.status !== 'active') {
      await ctx.audit(request, {
        type: 'user.login',
        result: 'failure',
        target: user?.id ?? null,
        details: { reason: 'invalid' },
      });
      await sleep(failureDelayMs(attempt.streak));
      throw new CastellanError('ERR_AUTH_INVALID');
    }
    await this.#throttle.succeed(keys);
    // Stronger parameters than the stored hash's: upgrade it now that the password is at hand (ACC-3).
    if (needsRehash(user.passwordHash!)) await ctx.users.setPasswordHash(user.id, await hashPassword(input.password));

    const methods = await secondFactorsOf(ctx, user.id);
    const persistent = input.keepSignedIn === true;
    if (methods.length > 0) {
      const issued = await ctx.sessions.create({
        principalKind: 'user',
        principalId: user.id,
        level: 'mfa-pending',
        persistent,
        ip: request.ip,
      });
      await ctx.audit(request, {
        type: 'user.login',
        target: user.id,
        details: { stage: 'password', mfaRequired: true, sessionId: issued.session.id },
      });
      return { kind: 'mfa', userId: user.id, issued, methods };
    }
    const issued = await ctx.sessions.create({
      principalKind: 'user',
      principalId: user.id,
      level: 'full',
      persistent,
      ip: request.ip,
    });
    await ctx.audit(request, {
      type: 'user.login',
      target: user.id,
      details: { sessionId: issued.session.id, persistent },
    });
    await noteSuccessfulSignIn(ctx, request, reply, user.id);
    return { kind: 'full', userId: user.id, issued };
  }

  /**
   * Checks a signed-in person's own password (step-up, password change). Shares the account's failure
   * counter with sign-in, so a stolen session cannot be used to guess the password either.
   */
  async verifyOwnPassword(request: FastifyRequest, reply: FastifyReply, userId: string, password: string) {
    const keys: ThrottleKeys = { account: `usr:${userId}` };
    const attempt = await this.#throttle.reserve(keys);
    if (!attempt.ok) throw locked(reply, attempt.waitMs);
    const user = await this.#ctx.users.get(userId);
    if (!(await verifyPassword(user?.passwordHash, password))) {
      await sleep(failureDelayMs(attempt.streak));
      throw new CastellanError('ERR_AUTH_INVALID');
    }
    await this.#throttle.succeed(keys);
  }

  /** Step-up: a new session token whose authentication time is now (SESS-1 rotation, ACC-6). */
  async reauthenticate(request: FastifyRequest, sessionId: string): Promise<IssuedSession> {
    return this.#ctx.sessions.rotate(sessionId, request.ip, { authenticatedAt: this.#ctx.now() });
  }

  /**
   * Changes the password (the caller has checked the current one and a recent authentication): the
   * policy applies, every other session ends, the current one is rotated.
   */
  async changePassword(request: FastifyRequest, userId: string, sessionId: string, newPassword: string) {
    const ctx = this.#ctx;
    const contact = await ctx.users.contactOf(userId);
    checkPasswordPolicy(
      newPassword,
      { minLength: ctx.config.passwordMinLength, minScore: ctx.config.passwordMinScore },
      contact ? [contact.value, contact.value.split('@')[0]!] : [],
    );
    await ctx.users.setPasswordHash(userId, await hashPassword(newPassword));
    const ended = await ctx.sessions.revokeAll(userId, sessionId);
    const issued = await ctx.sessions.rotate(sessionId, request.ip, { authenticatedAt: ctx.now() });
    return { issued, ended };
  }

  /**
   * Deletes the person's account: sessions end, the row keeps only its ID and status (for the audit
   * trail), the person's own data goes, and their key is destroyed so every copy of their encrypted
   * data (backups included) becomes unreadable (KEY-6 crypto-shredding).
   */
  async deleteAccount(userId: string): Promise<{ sessionsEnded: number; keysDestroyed: number }> {
    const ctx = this.#ctx;
    // An enterprise organisation must keep an owner (ORG-1): the last owner hands it over first.
    const owned = await ctx.db
      .selectFrom('organisation_members as m')
      .innerJoin('vendors as v', 'v.id', 'm.vendor_id')
      .select('m.vendor_id')
      .where('m.user_id', '=', userId)
      .where('m.role', '=', 'owner')
      .where('v.kind', '=', 'enterprise')
      .execute();
    for (const { vendor_id } of owned) {
      const others = await ctx.db
        .selectFrom('organisation_members')
        .select('user_id')
        .where('vendor_id', '=', vendor_id)
        .where('role', '=', 'owner')
        .where('user_id', '!=', userId)
        .limit(1)
        .executeTakeFirst();
      if (!others) {
        throw new CastellanError('ERR_ORG_LAST_OWNER', {
          message:
            'You are the last owner of an organisation: make someone else its owner before deleting your account',
        });
      }
    }
    const sessionsEnded = await ctx.sessions.revokeAll(userId);
    await ctx.db.transaction().execute(async (trx) => {
      await trx
        .updateTable('users')
        .set({
          status: 'disabled',
          email_index: null,
          phone_index: null,
          email_ciphertext: null,
          phone_ciphertext: null,
          password_hash: null,
        })
        .where('id', '=', userId)
        .execute();
      await trx.deleteFrom('known_sign_ins').where('principal_id', '=', userId).execute();
      await trx.deleteFrom('mfa_totp').where('principal_id', '=', userId).execute();
      await trx.deleteFrom('webauthn_credentials').where('principal_id', '=', userId).execute();
      await trx.deleteFrom('recovery_codes').where('principal_id', '=', userId).execute();
      await trx.deleteFrom('oidc_identities').where('user_id', '=', userId).execute();
      // Memberships go; a personal organisation keeps its data (the tenant's), now without members.
      await trx.deleteFrom('organisation_members').where('user_id', '=', userId).execute();
    });
    const destroyed = await ctx.keys.shred('platform', { user: userId });
    return { sessionsEnded, keysDestroyed: Array.isArray(destroyed) ? destroyed.length : 0 };
  }
}

/** `a***@example.com`, `+44*****89`: enough to recognise, not enough to learn (PRIV-1). */
export function maskContact(contact: Identifier): string {
  if (contact.kind === 'email') {
    const at = contact.value.lastIndexOf('@');
    return `${contact.value.slice(0, 1)}***${contact.value.slice(at)}`;
  }
  return `${contact.value.slice(0, 3)}*****${contact.value.slice(-2)}`;
}
