// Second factors of people (ACC-6): enrolment, the second step of sign-in, passwordless passkey
// sign-in, and step-up with a second factor.
//   GET    /v1/me/mfa                              factors (no secrets) and recovery codes left
//   POST   /v1/me/mfa/totp                         start a TOTP enrolment (secret shown once)
//   POST   /v1/me/mfa/totp/confirm                 confirm it with a code (first factor: recovery codes)
//   DELETE /v1/me/mfa/totp                         remove TOTP
//   POST   /v1/me/mfa/webauthn/registration-options  options for navigator.credentials.create()
//   POST   /v1/me/mfa/webauthn/registration        register a passkey (first factor: recovery codes)
//   DELETE /v1/me/mfa/webauthn/:credentialId       remove a passkey
//   POST   /v1/me/mfa/recovery-codes               replace the recovery codes
//   POST   /v1/auth/mfa/totp | recovery | webauthn-options | webauthn   finish a sign-in (mfaToken)
//   POST   /v1/auth/passkey/options, /v1/auth/passkey                    passwordless sign-in
//   POST   /v1/auth/reauthenticate/totp | webauthn-options | webauthn   step-up (rotates the session)
// Starting or removing a factor, and replacing recovery codes, need a recent authentication (step-up,
// the standard's 8.2.2 n). Confirming an enrolment does not: it completes a ceremony that one already
// started, and proves possession of the new secret or key.
//
// Guessing (ACC-4 applied to codes): wrong answers count per pending sign-in (5, then it is revoked
// and the person signs in again), per person (accounts.loginFailuresPerAccount, twice over, then
// ERR_AUTH_LOCKED) and per client IP (shared with password sign-in). TOTP codes and recovery codes
// are single use (RFC 6238 section 5.2); WebAuthn challenges are single use and bound to the ceremony.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { Type } from 'typebox';
import type { AuthenticationResponseJSON, RegistrationResponseJSON } from '@simplewebauthn/server';
import { CastellanError } from '../errors/index.ts';
import { authenticatedErrors, bearerSecurity, principalOf, publicErrors, StrictObject } from '../http/index.ts';
import type { AccountsContext } from './accounts-context.ts';
import type { UserPrincipal } from './principal.ts';
import { RecoveryCodes } from './recovery-codes.ts';
import { deliverSession } from './session-delivery.ts';
import type { SessionRecord } from './session-store.ts';
import { noteSuccessfulSignIn } from './sign-in-alerts.ts';
import { secondFactorsOf } from './sign-in-service.ts';
import { requireRecentAuthentication } from './step-up.ts';
import { type AssertionOutcome, WebauthnService } from './webauthn-service.ts';
import { refuseWithRetryAfter } from '../http/retry-after.ts';
import { clientNetworkOf } from '../guard/index.ts';

/** Wrong answers on one pending sign-in before it is revoked. */
export const PENDING_SIGN_IN_MAX_FAILURES = 5;

const errorRef = { $ref: 'ErrorResponse#' } as const;
const lockedErrors = { 429: errorRef } as const;
const conflictErrors = { 409: errorRef } as const;

const TotpCode = Type.String({ pattern: '^[0-9]{6}$' });
// The code as shown (xxxx-xxxx-xxxx-xxxx), typed with or without separators.
const RecoveryCode = Type.String({ minLength: 16, maxLength: 40 });
const MfaToken = Type.String({ minLength: 1, maxLength: 128, description: 'The mfaToken from POST /v1/auth/login' });
const Label = Type.String({ minLength: 1, maxLength: 100, pattern: '^\\S(.*\\S)?$' });
const b64url = (maxLength: number) => Type.String({ minLength: 1, maxLength, pattern: '^[A-Za-z0-9_-]+$' });
const CredentialIdField = b64url(1366); // 1023 bytes at most (WebAuthn Level 3, 5.1)
const Transports = Type.Array(Type.String({ maxLength: 32 }), { maxItems: 8 });
const ExtensionResults = Type.Record(Type.String({ maxLength: 64 }), Type.Unknown(), { maxProperties: 16 });
const Attachment = Type.Optional(Type.Union([Type.Literal('platform'), Type.Literal('cross-platform')]));

/** RegistrationResponseJSON (WebAuthn Level 3, 5.1 toJSON). */
const RegistrationResponse = StrictObject({
  id: CredentialIdField,
  rawId: CredentialIdField,
  type: Type.Literal('public-key'),
  response: StrictObject({
    clientDataJSON: b64url(4096),
    attestationObject: b64url(16384),
    authenticatorData: Type.Optional(b64url(16384)),
    transports: Type.Optional(Transports),
    publicKeyAlgorithm: Type.Optional(Type.Integer()),
    publicKey: Type.Optional(b64url(4096)),
  }),
  authenticatorAttachment: Attachment,
  clientExtensionResults: ExtensionResults,
});

/** AuthenticationResponseJSON. */
const AuthenticationResponse = StrictObject({
  id: CredentialIdField,
  rawId: CredentialIdField,
  type: Type.Literal('public-key'),
  response: StrictObject({
    clientDataJSON: b64url(4096),
    authenticatorData: b64url(4096),
    signature: b64url(1024),
    userHandle: Type.Optional(b64url(128)),
  }),
  authenticatorAttachment: Attachment,
  clientExtensionResults: ExtensionResults,
});

const CredentialDescriptor = StrictObject({
  id: Type.String(),
  type: Type.String(),
  transports: Type.Optional(Type.Array(Type.String())),
});

/** PublicKeyCredentialCreationOptionsJSON, for navigator.credentials.create(). */
const CreationOptionsView = StrictObject({
  challenge: Type.String(),
  rp: StrictObject({ name: Type.String(), id: Type.Optional(Type.String()) }),
  user: StrictObject({ id: Type.String(), name: Type.String(), displayName: Type.String() }),
  pubKeyCredParams: Type.Array(StrictObject({ alg: Type.Integer(), type: Type.String() })),
  timeout: Type.Optional(Type.Integer()),
  excludeCredentials: Type.Optional(Type.Array(CredentialDescriptor)),
  authenticatorSelection: Type.Optional(
    StrictObject({
      authenticatorAttachment: Type.Optional(Type.String()),
      residentKey: Type.Optional(Type.String()),
      requireResidentKey: Type.Optional(Type.Boolean()),
      userVerification: Type.Optional(Type.String()),
    }),
  ),
  attestation: Type.Optional(Type.String()),
  extensions: Type.Optional(StrictObject({ credProps: Type.Optional(Type.Boolean()) })),
  hints: Type.Optional(Type.Array(Type.String())),
});

/** PublicKeyCredentialRequestOptionsJSON, for navigator.credentials.get(). */
const RequestOptionsView = StrictObject({
  challenge: Type.String(),
  rpId: Type.Optional(Type.String()),
  allowCredentials: Type.Optional(Type.Array(CredentialDescriptor)),
  timeout: Type.Optional(Type.Integer()),
  userVerification: Type.Optional(Type.String()),
});

const SessionView = StrictObject({
  sessionId: Type.String(),
  expiresAt: Type.Integer({ description: 'Latest expiry (ms since the epoch); unused sessions expire sooner' }),
  token: Type.Optional(Type.String({ description: 'Apps only (X-Castellan-Client: app); browsers get a cookie' })),
  refreshToken: Type.Optional(Type.String({ description: 'Apps only, with keepSignedIn' })),
  refreshExpiresAt: Type.Optional(Type.Integer()),
});

const PasskeyView = StrictObject({
  id: Type.String({ description: 'Credential ID (base64url)' }),
  label: Type.String(),
  transports: Type.Array(Type.String()),
  createdAt: Type.Integer(),
  lastUsedAt: Type.Union([Type.Integer(), Type.Null()]),
});

const RecoveryCodesField = Type.Array(Type.String(), {
  description: 'Single-use recovery codes, shown only in this response',
});

const FactorsView = StrictObject({
  totp: StrictObject({ enrolled: Type.Boolean(), pending: Type.Boolean() }),
  passkeys: Type.Array(PasskeyView),
  recoveryCodesRemaining: Type.Integer(),
});

/** Routes for people only: staff and operators have their own ways in. */
function userOf(request: FastifyRequest): UserPrincipal {
  const principal = principalOf(request);
  if (principal.kind !== 'user') throw new CastellanError('ERR_AUTH_FORBIDDEN');
  return principal;
}

const locked = (reply: FastifyReply, waitMs: number): CastellanError =>
  refuseWithRetryAfter(reply, waitMs, 'ERR_AUTH_LOCKED');

type Method = 'totp' | 'recovery-code' | 'webauthn';

export async function mfaRoutes(app: FastifyInstance, ctx: AccountsContext): Promise<void> {
  const { authenticate } = ctx;
  const webauthn = new WebauthnService({ db: ctx.db, publicUrl: ctx.publicUrl, now: ctx.now });
  const recovery = new RecoveryCodes({ db: ctx.db, now: ctx.now });
  const windowS = ctx.config.loginFailureWindowMinutes * 60;
  const limits = (userId: string, sessionId: string, ip: string) => [
    { dimension: 'login-ip', key: ip, points: ctx.config.loginFailuresPerIp },
    { dimension: 'mfa-account', key: userId, points: 2 * ctx.config.loginFailuresPerAccount },
    { dimension: 'mfa-session', key: sessionId, points: PENDING_SIGN_IN_MAX_FAILURES },
  ];

  /** The pending sign-in's count after this request's reserved attempt. */
  const reserved = new WeakMap<FastifyRequest, number>();

  /**
   * Reserves this attempt in every counter before the code is checked (refused while one is over its
   * threshold), so parallel guesses get no more checks than sequential ones. `reserve: false` only
   * checks (for requests that verify nothing, such as fetching passkey options).
   */
  async function refuseWhileLocked(
    request: FastifyRequest,
    reply: FastifyReply,
    userId: string,
    sessionId: string,
    reserve = true,
  ) {
    let wait = 0;
    let onSession = 0;
    for (const l of limits(userId, sessionId, clientNetworkOf(request.ip))) {
      const state = reserve
        ? await ctx.limits.consume(l.dimension, l.key, l.points, windowS)
        : await ctx.limits.peek(l.dimension, l.key, l.points, windowS);
      if (!state.allowed) wait = Math.max(wait, state.retryAfterMs, 1);
      if (l.dimension === 'mfa-session') onSession = state.consumed;
    }
    if (wait > 0) {
      await ctx.audit(request, { type: 'user.mfa', result: 'denied', target: userId, details: { reason: 'locked' } });
      throw locked(reply, wait);
    }
    if (reserve) reserved.set(request, onSession);
  }

  /** A wrong answer was already counted when its attempt was reserved; returns the count on the session. */
  function countFailure(request: FastifyRequest): number {
    return reserved.get(request) ?? 0;
  }

  /** A right answer gives its reserved attempt back. */
  async function releaseAttempt(request: FastifyRequest, userId: string, sessionId: string): Promise<void> {
    if (!reserved.has(request)) return;
    reserved.delete(request);
    for (const l of limits(userId, sessionId, clientNetworkOf(request.ip))) {
      await ctx.limits.refund(l.dimension, l.key, l.points, windowS);
    }
  }

  /** The person's display name for authenticator apps: their contact, else their ID. */
  async function accountLabel(userId: string): Promise<string> {
    return (await ctx.users.contactOf(userId))?.value ?? userId;
  }

  /** After a factor is added: the first one comes with recovery codes. */
  async function recoveryCodesForFirstFactor(userId: string, hadFactor: boolean): Promise<string[] | undefined> {
    return hadFactor ? undefined : recovery.regenerate(userId);
  }

  /** After a factor is removed: without any factor, recovery codes have nothing to recover. */
  async function dropRecoveryCodesIfNoFactor(userId: string): Promise<void> {
    if ((await secondFactorsOf(ctx, userId)).length === 0) await recovery.removeAll(userId);
  }

  // ---- enrolment ---------------------------------------------------------------------------------

  app.get(
    '/v1/me/mfa',
    {
      onRequest: authenticate,
      schema: {
        summary: 'My second factors (no secrets) and how many recovery codes are left',
        tags: ['mfa'],
        security: bearerSecurity,
        response: { 200: FactorsView, ...authenticatedErrors },
      },
    },
    async (request) => {
      const user = userOf(request);
      const totp = await ctx.db
        .selectFrom('mfa_totp')
        .select('confirmed_at')
        .where('principal_id', '=', user.id)
        .executeTakeFirst();
      return {
        totp: {
          enrolled: totp !== undefined && totp.confirmed_at !== null,
          pending: totp !== undefined && totp.confirmed_at === null,
        },
        passkeys: await webauthn.list(user.id),
        recoveryCodesRemaining: await recovery.remaining(user.id),
      };
    },
  );

  app.post(
    '/v1/me/mfa/totp',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Start a TOTP enrolment (recent authentication); the secret is shown only in this response',
        tags: ['mfa'],
        security: bearerSecurity,
        response: {
          201: StrictObject({
            secret: Type.String({ description: 'Base32 TOTP secret, shown only in this response' }),
            uri: Type.String({ description: 'otpauth:// URI for a QR code' }),
          }),
          ...authenticatedErrors,
          ...conflictErrors,
        },
      },
    },
    async (request, reply) => {
      const user = userOf(request);
      requireRecentAuthentication(user, ctx);
      const enrolment = await ctx.totp.enrol(user.id, await accountLabel(user.id));
      await ctx.audit(request, { type: 'user.mfa-totp-enrol', target: user.id });
      return reply.status(201).send(enrolment);
    },
  );

  app.post(
    '/v1/me/mfa/totp/confirm',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Confirm the TOTP enrolment with a current code; the first factor returns recovery codes',
        tags: ['mfa'],
        security: bearerSecurity,
        body: StrictObject({ code: TotpCode }),
        response: {
          200: StrictObject({ confirmed: Type.Boolean(), recoveryCodes: Type.Optional(RecoveryCodesField) }),
          ...authenticatedErrors,
          ...conflictErrors,
          ...lockedErrors,
        },
      },
    },
    async (request, reply) => {
      const user = userOf(request);
      const row = await ctx.db
        .selectFrom('mfa_totp')
        .select('confirmed_at')
        .where('principal_id', '=', user.id)
        .executeTakeFirst();
      if (!row) throw new CastellanError('ERR_MFA_NOT_ENROLLED');
      if (row.confirmed_at !== null) throw new CastellanError('ERR_MFA_ALREADY_ENROLLED');
      await refuseWhileLocked(request, reply, user.id, user.credentialId);
      const hadFactor = (await secondFactorsOf(ctx, user.id)).length > 0;
      if (!(await ctx.totp.verify(user.id, (request.body as { code: string }).code, { confirm: true }))) {
        countFailure(request);
        await ctx.audit(request, { type: 'user.mfa-totp-confirm', target: user.id, result: 'failure' });
        throw new CastellanError('ERR_MFA_CODE_INVALID');
      }
      await releaseAttempt(request, user.id, user.credentialId);
      const recoveryCodes = await recoveryCodesForFirstFactor(user.id, hadFactor);
      await ctx.audit(request, {
        type: 'user.mfa-totp-confirm',
        target: user.id,
        details: { recoveryCodesIssued: recoveryCodes !== undefined },
      });
      return { confirmed: true, ...(recoveryCodes ? { recoveryCodes } : {}) };
    },
  );

  app.delete(
    '/v1/me/mfa/totp',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Remove the TOTP factor (recent authentication)',
        tags: ['mfa'],
        security: bearerSecurity,
        response: { 204: Type.Null(), ...authenticatedErrors, ...conflictErrors },
      },
    },
    async (request, reply) => {
      const user = userOf(request);
      requireRecentAuthentication(user, ctx);
      const exists = await ctx.db
        .selectFrom('mfa_totp')
        .select('principal_id')
        .where('principal_id', '=', user.id)
        .executeTakeFirst();
      if (!exists) throw new CastellanError('ERR_MFA_NOT_ENROLLED');
      await ctx.totp.remove(user.id);
      await dropRecoveryCodesIfNoFactor(user.id);
      await ctx.audit(request, { type: 'user.mfa-totp-remove', target: user.id });
      return reply.status(204).send();
    },
  );

  app.post(
    '/v1/me/mfa/webauthn/registration-options',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Options for registering a passkey (recent authentication); valid 5 minutes, for one response',
        tags: ['mfa'],
        security: bearerSecurity,
        response: { 200: CreationOptionsView, ...authenticatedErrors, ...conflictErrors },
      },
    },
    async (request) => {
      const user = userOf(request);
      requireRecentAuthentication(user, ctx);
      return webauthn.registrationOptions(user.id, await accountLabel(user.id));
    },
  );

  app.post(
    '/v1/me/mfa/webauthn/registration',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Register a passkey with the response to the registration options',
        tags: ['mfa'],
        security: bearerSecurity,
        body: StrictObject({ response: RegistrationResponse, label: Type.Optional(Label) }),
        response: {
          201: StrictObject({ passkey: PasskeyView, recoveryCodes: Type.Optional(RecoveryCodesField) }),
          ...authenticatedErrors,
          ...conflictErrors,
        },
      },
    },
    async (request, reply) => {
      const user = userOf(request);
      const body = request.body as { response: RegistrationResponseJSON; label?: string };
      const hadFactor = (await secondFactorsOf(ctx, user.id)).length > 0;
      let passkey: Awaited<ReturnType<WebauthnService['register']>>;
      try {
        passkey = await webauthn.register(user.id, body.response, body.label ?? 'Passkey');
      } catch (error) {
        await ctx.audit(request, { type: 'user.mfa-webauthn-register', target: user.id, result: 'failure' });
        throw error;
      }
      await releaseAttempt(request, user.id, user.credentialId);
      const recoveryCodes = await recoveryCodesForFirstFactor(user.id, hadFactor);
      await ctx.audit(request, {
        type: 'user.mfa-webauthn-register',
        target: user.id,
        details: { credentialId: passkey.id, recoveryCodesIssued: recoveryCodes !== undefined },
      });
      return reply.status(201).send({ passkey, ...(recoveryCodes ? { recoveryCodes } : {}) });
    },
  );

  app.delete(
    '/v1/me/mfa/webauthn/:credentialId',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Remove one of my passkeys (recent authentication)',
        tags: ['mfa'],
        security: bearerSecurity,
        params: StrictObject({ credentialId: CredentialIdField }),
        response: { 204: Type.Null(), ...authenticatedErrors },
      },
    },
    async (request, reply) => {
      const user = userOf(request);
      requireRecentAuthentication(user, ctx);
      const { credentialId } = request.params as { credentialId: string };
      // Another person's credential is "not found" too: IDs cannot be probed.
      if (!(await webauthn.remove(user.id, credentialId))) throw new CastellanError('ERR_MFA_FACTOR_NOT_FOUND');
      await dropRecoveryCodesIfNoFactor(user.id);
      await ctx.audit(request, { type: 'user.mfa-webauthn-remove', target: user.id, details: { credentialId } });
      return reply.status(204).send();
    },
  );

  app.post(
    '/v1/me/mfa/recovery-codes',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Replace my recovery codes (recent authentication); the old ones stop working',
        tags: ['mfa'],
        security: bearerSecurity,
        response: {
          200: StrictObject({ recoveryCodes: RecoveryCodesField }),
          ...authenticatedErrors,
          ...conflictErrors,
        },
      },
    },
    async (request) => {
      const user = userOf(request);
      requireRecentAuthentication(user, ctx);
      if ((await secondFactorsOf(ctx, user.id)).length === 0) throw new CastellanError('ERR_MFA_NOT_ENROLLED');
      const recoveryCodes = await recovery.regenerate(user.id);
      await ctx.audit(request, { type: 'user.mfa-recovery-codes', target: user.id });
      return { recoveryCodes };
    },
  );

  // ---- second step of sign-in ----------------------------------------------------------------------

  /** The pending sign-in behind an mfaToken, or ERR_AUTH_INVALID (unknown, used, expired, revoked). */
  async function pendingSignIn(
    request: FastifyRequest,
    reply: FastifyReply,
    mfaToken: string,
    method: Method,
    reserve = true,
  ): Promise<SessionRecord> {
    const session = await ctx.sessions.resolve(mfaToken, request.ip);
    const user = session?.principalKind === 'user' ? await ctx.users.get(session.principalId) : null;
    if (!session || session.level !== 'mfa-pending' || !user || user.status !== 'active') {
      await ctx.audit(request, {
        type: 'user.login',
        result: 'failure',
        target: user?.id ?? null,
        details: { stage: 'second-factor', method, reason: 'pending-session' },
      });
      throw new CastellanError('ERR_AUTH_INVALID');
    }
    await refuseWhileLocked(request, reply, session.principalId, session.id, reserve);
    return session;
  }

  /** A wrong answer: counted; the fifth on one pending sign-in revokes it. */
  async function secondStepFailed(
    request: FastifyRequest,
    session: SessionRecord,
    method: Method,
    reason: string,
  ): Promise<never> {
    const failures = countFailure(request);
    const revoked = failures >= PENDING_SIGN_IN_MAX_FAILURES;
    if (revoked) await ctx.sessions.revoke(session.id);
    await ctx.audit(request, {
      type: 'user.login',
      result: 'failure',
      target: session.principalId,
      details: { stage: 'second-factor', method, reason, pendingSessionId: session.id, revoked },
    });
    throw new CastellanError('ERR_MFA_CODE_INVALID');
  }

  /** Both factors given: the pending session becomes a full one under a new token (SESS-1). */
  async function completeSignIn(request: FastifyRequest, reply: FastifyReply, session: SessionRecord, method: Method) {
    await releaseAttempt(request, session.principalId, session.id);
    const issued = await ctx.sessions.rotate(session.id, request.ip, { level: 'full', authenticatedAt: ctx.now() });
    await ctx.audit(request, {
      type: 'user.login',
      target: session.principalId,
      details: { stage: 'second-factor', method, sessionId: issued.session.id, persistent: issued.session.persistent },
    });
    await noteSuccessfulSignIn(ctx, request, reply, session.principalId);
    return deliverSession(request, reply, issued);
  }

  const secondStepResponses = { 200: SessionView, ...publicErrors, ...lockedErrors };

  app.post(
    '/v1/auth/mfa/totp',
    {
      schema: {
        summary: 'Finish signing in with a TOTP code',
        tags: ['auth'],
        body: StrictObject({ mfaToken: MfaToken, code: TotpCode }),
        response: secondStepResponses,
      },
    },
    async (request, reply) => {
      const body = request.body as { mfaToken: string; code: string };
      const session = await pendingSignIn(request, reply, body.mfaToken, 'totp');
      if (!(await ctx.totp.verify(session.principalId, body.code))) {
        return secondStepFailed(request, session, 'totp', 'invalid');
      }
      return completeSignIn(request, reply, session, 'totp');
    },
  );

  app.post(
    '/v1/auth/mfa/recovery',
    {
      schema: {
        summary: 'Finish signing in with a recovery code (each works once)',
        tags: ['auth'],
        body: StrictObject({ mfaToken: MfaToken, code: RecoveryCode }),
        response: secondStepResponses,
      },
    },
    async (request, reply) => {
      const body = request.body as { mfaToken: string; code: string };
      const session = await pendingSignIn(request, reply, body.mfaToken, 'recovery-code');
      if (!(await recovery.consume(session.principalId, body.code))) {
        return secondStepFailed(request, session, 'recovery-code', 'invalid');
      }
      const remaining = await recovery.remaining(session.principalId);
      ctx.log.info({ userId: session.principalId, remaining }, 'recovery code used for sign-in');
      return completeSignIn(request, reply, session, 'recovery-code');
    },
  );

  app.post(
    '/v1/auth/mfa/webauthn-options',
    {
      schema: {
        summary: "Options for navigator.credentials.get() with the signing-in person's passkeys",
        tags: ['auth'],
        body: StrictObject({ mfaToken: MfaToken }),
        response: { 200: RequestOptionsView, ...publicErrors, ...lockedErrors, ...conflictErrors },
      },
    },
    async (request, reply) => {
      const body = request.body as { mfaToken: string };
      // Fetching options verifies nothing: it checks the locks without spending an attempt.
      const session = await pendingSignIn(request, reply, body.mfaToken, 'webauthn', false);
      if ((await webauthn.count(session.principalId)) === 0) throw new CastellanError('ERR_MFA_NOT_ENROLLED');
      const { options } = await webauthn.authenticationOptions('webauthn-mfa', session.principalId, session.id);
      return options;
    },
  );

  app.post(
    '/v1/auth/mfa/webauthn',
    {
      schema: {
        summary: 'Finish signing in with a passkey assertion',
        tags: ['auth'],
        body: StrictObject({ mfaToken: MfaToken, response: AuthenticationResponse }),
        response: secondStepResponses,
      },
    },
    async (request, reply) => {
      const body = request.body as { mfaToken: string; response: AuthenticationResponseJSON };
      const session = await pendingSignIn(request, reply, body.mfaToken, 'webauthn');
      const outcome = await webauthn.authenticate('webauthn-mfa', body.response, {
        userId: session.principalId,
        sessionId: session.id,
      });
      if (!outcome.ok) return secondStepFailed(request, session, 'webauthn', outcome.reason);
      return completeSignIn(request, reply, session, 'webauthn');
    },
  );

  // ---- passwordless passkey sign-in ------------------------------------------------------------

  // Options cost a stored row each: bounded per address, on top of the guard's request limits.
  const PASSKEY_OPTIONS_PER_IP_PER_MINUTE = 30;

  app.post(
    '/v1/auth/passkey/options',
    {
      schema: {
        summary: 'Options for a passwordless sign-in with a discoverable passkey',
        tags: ['auth'],
        response: {
          200: StrictObject({
            challengeId: Type.String({ description: 'Present it with the response' }),
            options: RequestOptionsView,
          }),
          ...publicErrors,
          ...lockedErrors,
        },
      },
    },
    async (request) => {
      const rate = await ctx.limits.consume(
        'passkey-options-ip',
        clientNetworkOf(request.ip),
        PASSKEY_OPTIONS_PER_IP_PER_MINUTE,
        60,
      );
      if (!rate.allowed) throw new CastellanError('ERR_RATE_LIMITED');
      return webauthn.authenticationOptions('webauthn-passkey', null);
    },
  );

  app.post(
    '/v1/auth/passkey',
    {
      schema: {
        summary: 'Sign in with a passkey (user verification required): a full session for its owner',
        tags: ['auth'],
        body: StrictObject({
          challengeId: Type.String({ minLength: 1, maxLength: 64, pattern: '^chl_[A-Za-z0-9_-]+$' }),
          response: AuthenticationResponse,
          keepSignedIn: Type.Optional(Type.Boolean({ description: 'Issue a refresh token ("keep me signed in")' })),
        }),
        response: { 200: SessionView, ...publicErrors, ...lockedErrors },
      },
    },
    async (request, reply) => {
      const body = request.body as {
        challengeId: string;
        response: AuthenticationResponseJSON;
        keepSignedIn?: boolean;
      };
      const ipLimit = {
        dimension: 'login-ip',
        key: clientNetworkOf(request.ip),
        points: ctx.config.loginFailuresPerIp,
      };
      const state = await ctx.limits.peek(ipLimit.dimension, ipLimit.key, ipLimit.points, windowS);
      if (!state.allowed) {
        await ctx.audit(request, {
          type: 'user.login',
          result: 'denied',
          details: { method: 'passkey', reason: 'locked' },
        });
        throw locked(reply, state.retryAfterMs);
      }
      const outcome: AssertionOutcome = await webauthn.authenticate('webauthn-passkey', body.response, {
        userId: null,
        challengeId: body.challengeId,
      });
      const user = outcome.ok ? await ctx.users.get(outcome.userId) : null;
      if (!outcome.ok || !user || user.status !== 'active') {
        await ctx.limits.consume(ipLimit.dimension, ipLimit.key, ipLimit.points, windowS);
        await ctx.audit(request, {
          type: 'user.login',
          result: 'failure',
          target: outcome.userId ?? null,
          details: { method: 'passkey', reason: outcome.ok ? 'account' : outcome.reason },
        });
        throw new CastellanError('ERR_AUTH_INVALID');
      }
      const issued = await ctx.sessions.create({
        principalKind: 'user',
        principalId: user.id,
        level: 'full',
        persistent: body.keepSignedIn === true,
        ip: request.ip,
      });
      await ctx.audit(request, {
        type: 'user.login',
        target: user.id,
        details: { method: 'passkey', sessionId: issued.session.id, persistent: issued.session.persistent },
      });
      await noteSuccessfulSignIn(ctx, request, reply, user.id);
      return deliverSession(request, reply, issued);
    },
  );

  // ---- step-up with a second factor --------------------------------------------------------------

  /** A fresh authentication: the session gets a new token and a new authenticatedAt (SESS-1). */
  async function steppedUp(request: FastifyRequest, reply: FastifyReply, user: UserPrincipal, method: Method) {
    await releaseAttempt(request, user.id, user.credentialId);
    const issued = await ctx.sessions.rotate(user.credentialId, request.ip, { authenticatedAt: ctx.now() });
    await ctx.audit(request, {
      type: 'user.reauthenticate',
      target: user.id,
      details: { method, sessionId: issued.session.id },
    });
    return deliverSession(request, reply, issued);
  }

  async function stepUpFailed(request: FastifyRequest, user: UserPrincipal, method: Method, reason: string) {
    countFailure(request);
    await ctx.audit(request, {
      type: 'user.reauthenticate',
      target: user.id,
      result: 'failure',
      details: { method, reason },
    });
    return new CastellanError('ERR_MFA_CODE_INVALID');
  }

  app.post(
    '/v1/auth/reauthenticate/totp',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Step-up with a TOTP code (rotates the session)',
        tags: ['auth'],
        security: bearerSecurity,
        body: StrictObject({ code: TotpCode }),
        response: { 200: SessionView, ...authenticatedErrors, ...lockedErrors },
      },
    },
    async (request, reply) => {
      const user = userOf(request);
      await refuseWhileLocked(request, reply, user.id, user.credentialId);
      if (!(await ctx.totp.verify(user.id, (request.body as { code: string }).code))) {
        throw await stepUpFailed(request, user, 'totp', 'invalid');
      }
      return steppedUp(request, reply, user, 'totp');
    },
  );

  app.post(
    '/v1/auth/reauthenticate/webauthn-options',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Options for a step-up with a passkey (user verification required)',
        tags: ['auth'],
        security: bearerSecurity,
        response: { 200: RequestOptionsView, ...authenticatedErrors, ...conflictErrors },
      },
    },
    async (request) => {
      const user = userOf(request);
      if ((await webauthn.count(user.id)) === 0) throw new CastellanError('ERR_MFA_NOT_ENROLLED');
      const { options } = await webauthn.authenticationOptions('webauthn-step-up', user.id, user.credentialId);
      return options;
    },
  );

  app.post(
    '/v1/auth/reauthenticate/webauthn',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Step-up with a passkey assertion (rotates the session)',
        tags: ['auth'],
        security: bearerSecurity,
        body: StrictObject({ response: AuthenticationResponse }),
        response: { 200: SessionView, ...authenticatedErrors, ...lockedErrors },
      },
    },
    async (request, reply) => {
      const user = userOf(request);
      await refuseWhileLocked(request, reply, user.id, user.credentialId);
      const body = request.body as { response: AuthenticationResponseJSON };
      const outcome = await webauthn.authenticate('webauthn-step-up', body.response, {
        userId: user.id,
        sessionId: user.credentialId,
      });
      if (!outcome.ok) throw await stepUpFailed(request, user, 'webauthn', outcome.reason);
      return steppedUp(request, reply, user, 'webauthn');
    },
  );
}
