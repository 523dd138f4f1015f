// Public account routes: the proof-of-work challenge, registration, activation, and forgotten
// passwords (ACC-1..5). Checklist per route: per-IP limit (onRequest, before the body is parsed) →
// schema (unknown fields refused) → proof of work → per-identifier limit → service → a response that
// is the same whether or not the identifier is registered.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { Type } from 'typebox';
import { CastellanError, type ErrorCode } from '../errors/index.ts';
import { normaliseIp } from '../guard/address-filter.ts';
import { publicErrors, StrictObject } from '../http/index.ts';
import type { AccountsContext } from './accounts-context.ts';
import { PasswordField } from './accounts-routes.ts';
import type { UserKind } from './principal.ts';
import { MAX_PAYLOAD_LENGTH } from './proof-of-work.ts';
import { RegistrationService } from './registration-service.ts';
import { type Identifier, normaliseIdentifier } from './user-directory.ts';
import { refuseWithRetryAfter } from '../http/retry-after.ts';

/** Registrations (or code requests) per identifier per hour, whoever asks (ACC-2). */
export const CODE_REQUESTS_PER_IDENTIFIER_PER_HOUR = 5;

const errorRef = { $ref: 'ErrorResponse#' } as const;
const limitedErrors = { ...publicErrors, 429: errorRef } as const;

const IdentifierField = Type.String({
  minLength: 3,
  maxLength: 320,
  description: 'E-mail address or E.164 phone number (+ country code, digits)',
});
const CodeField = Type.String({ pattern: '^[0-9]{6,10}$', description: 'The one-time code from the message' });
const AltchaField = Type.String({
  minLength: 1,
  maxLength: MAX_PAYLOAD_LENGTH,
  description: 'The solved ALTCHA payload: base64 of JSON {challenge, solution}',
});

const Pending = StrictObject({ status: Type.Literal('pending'), next: Type.Literal('activate') });
const SentIfRegistered = StrictObject({ status: Type.Literal('sent-if-registered') });

const ChallengeView = StrictObject({
  parameters: StrictObject({
    algorithm: Type.String(),
    nonce: Type.String(),
    salt: Type.String(),
    cost: Type.Integer(),
    keyLength: Type.Integer(),
    keyPrefix: Type.String(),
    keySignature: Type.Optional(Type.String()),
    expiresAt: Type.Optional(Type.Integer({ description: 'Unix time, seconds' })),
  }),
  signature: Type.String(),
});

interface Limit {
  dimension: string;
  points: number;
  windowSeconds: number;
  /** ERR_RATE_LIMITED for quotas, ERR_AUTH_LOCKED for guessing protection. */
  code: Extract<ErrorCode, 'ERR_RATE_LIMITED' | 'ERR_AUTH_LOCKED'>;
}

export async function registrationRoutes(app: FastifyInstance, ctx: AccountsContext): Promise<void> {
  const service = new RegistrationService(ctx);
  const cfg = ctx.config;
  const hour = 3600;
  const lockWindow = () => cfg.loginFailureWindowMinutes * 60;
  const registrationIp = (): Limit => ({
    dimension: 'account-registration-ip',
    points: cfg.registrationsPerIpPerHour,
    windowSeconds: hour,
    code: 'ERR_RATE_LIMITED',
  });
  const registrationId = (): Limit => ({
    dimension: 'account-registration-identifier',
    points: CODE_REQUESTS_PER_IDENTIFIER_PER_HOUR,
    windowSeconds: hour,
    code: 'ERR_RATE_LIMITED',
  });
  const guessIp = (dimension: string) => (): Limit => ({
    dimension: `${dimension}-ip`,
    points: cfg.loginFailuresPerIp,
    windowSeconds: lockWindow(),
    code: 'ERR_AUTH_LOCKED',
  });
  const guessId = (dimension: string) => (): Limit => ({
    dimension: `${dimension}-identifier`,
    points: cfg.loginFailuresPerAccount,
    windowSeconds: lockWindow(),
    code: 'ERR_AUTH_LOCKED',
  });

  /** Consumes one point; refuses with Retry-After (RFC 9110 10.2.3) when the window is used up. */
  async function enforce(
    request: FastifyRequest,
    reply: FastifyReply,
    auditType: string,
    limit: Limit,
    key: string,
    scope: 'ip' | 'identifier',
  ): Promise<void> {
    const outcome = await ctx.limits.consume(limit.dimension, key, limit.points, limit.windowSeconds);
    if (outcome.allowed) return;
    await ctx.audit(request, { type: auditType, result: 'denied', details: { limit: scope } });
    throw refuseWithRetryAfter(reply, outcome.retryAfterMs, limit.code);
  }

  const perIp = (auditType: string, limit: () => Limit) => async (request: FastifyRequest, reply: FastifyReply) =>
    enforce(request, reply, auditType, limit(), normaliseIp(request.ip), 'ip');
  const perIdentifier = (
    request: FastifyRequest,
    reply: FastifyReply,
    auditType: string,
    limit: () => Limit,
    identifier: Identifier,
  ) => enforce(request, reply, auditType, limit(), service.limitKey(identifier), 'identifier');

  /** Normalises the identifier; a malformed one is refused (and audited) like any schema failure. */
  async function identifierOf(request: FastifyRequest, auditType: string, raw: string): Promise<Identifier> {
    try {
      return normaliseIdentifier(raw);
    } catch (error) {
      await ctx.audit(request, { type: auditType, result: 'failure', details: { reason: 'identifier-invalid' } });
      throw error;
    }
  }

  app.post(
    '/v1/auth/challenge',
    {
      onRequest: perIp('user.challenge', registrationIp),
      schema: {
        summary: 'A proof-of-work (ALTCHA) challenge; solve it and send the payload with the registration',
        tags: ['accounts'],
        response: { 200: ChallengeView, ...limitedErrors },
      },
    },
    async () => service.pow.challenge(),
  );

  app.post(
    '/v1/auth/register',
    {
      onRequest: perIp('user.register', registrationIp),
      schema: {
        summary:
          'Register with an e-mail address or phone number; an activation code is sent. The answer is the same whether or not the identifier is taken',
        tags: ['accounts'],
        body: StrictObject({
          identifier: IdentifierField,
          password: PasswordField,
          kind: Type.Optional(Type.Union([Type.Literal('consumer'), Type.Literal('developer')])),
          altcha: Type.Optional(AltchaField),
        }),
        response: { 202: Pending, ...limitedErrors },
      },
    },
    async (request, reply) => {
      const body = request.body as { identifier: string; password: string; kind?: UserKind; altcha?: string };
      const type = 'user.register';
      const identifier = await identifierOf(request, type, body.identifier);
      try {
        await service.pow.verifyAndConsume(body.altcha);
      } catch (error) {
        await ctx.audit(request, { type, result: 'denied', details: { reason: 'proof-of-work' } });
        throw error;
      }
      await perIdentifier(request, reply, type, registrationId, identifier);
      let result: Awaited<ReturnType<RegistrationService['register']>>;
      try {
        service.checkPassword(body.password, identifier);
        result = await service.register({ identifier, password: body.password, kind: body.kind ?? 'consumer' });
      } catch (error) {
        await ctx.audit(request, {
          type,
          result: 'failure',
          details: { reason: error instanceof CastellanError ? error.code : 'error' },
        });
        throw error;
      }
      await ctx.audit(request, {
        type,
        target: result.userId,
        details: { outcome: result.outcome, kind: body.kind ?? 'consumer', channel: identifier.kind },
      });
      return reply.status(202).send({ status: 'pending', next: 'activate' });
    },
  );

  app.post(
    '/v1/auth/activate',
    {
      onRequest: perIp('user.activate', guessIp('account-activation')),
      schema: {
        summary:
          'Activate a registered account with the code that was sent and the password it was registered with (a wrong password is refused like a wrong code)',
        tags: ['accounts'],
        body: StrictObject({ identifier: IdentifierField, code: CodeField, password: PasswordField }),
        response: { 200: StrictObject({ status: Type.Literal('active') }), ...limitedErrors },
      },
    },
    async (request, reply) => {
      const body = request.body as { identifier: string; code: string; password: string };
      const type = 'user.activate';
      const identifier = await identifierOf(request, type, body.identifier);
      await perIdentifier(request, reply, type, guessId('account-activation'), identifier);
      // The password binds the activation to the registration it confirms (ACC-1, ACC-4): a later
      // re-registration of the pending identifier cannot have the owner's code activate its password.
      const activated = await service.activate(identifier, body.code, body.password);
      if (!activated) {
        await ctx.audit(request, { type, result: 'failure' });
        throw new CastellanError('ERR_ACCOUNT_CODE_INVALID');
      }
      await ctx.audit(request, {
        type,
        target: activated.user.id,
        details: { kind: activated.user.kind, organisationId: activated.organisationId },
      });
      return { status: 'active' };
    },
  );

  app.post(
    '/v1/auth/activate/resend',
    {
      onRequest: perIp('user.activation-resend', registrationIp),
      schema: {
        summary: 'Send a new activation code (if the identifier has a pending account; the answer does not say)',
        tags: ['accounts'],
        body: StrictObject({ identifier: IdentifierField }),
        response: { 202: SentIfRegistered, ...limitedErrors },
      },
    },
    async (request, reply) => {
      const type = 'user.activation-resend';
      const identifier = await identifierOf(request, type, (request.body as { identifier: string }).identifier);
      await perIdentifier(request, reply, type, registrationId, identifier);
      const userId = await service.resendActivation(identifier);
      await ctx.audit(request, { type, target: userId, details: { sent: userId !== null } });
      return reply.status(202).send({ status: 'sent-if-registered' });
    },
  );

  app.post(
    '/v1/auth/password/forgot',
    {
      onRequest: perIp('user.password-reset-request', guessIp('password-forgot')),
      schema: {
        summary: 'Send a password reset code (if the identifier has an active account; the answer does not say)',
        tags: ['accounts'],
        body: StrictObject({ identifier: IdentifierField }),
        response: { 202: SentIfRegistered, ...limitedErrors },
      },
    },
    async (request, reply) => {
      const type = 'user.password-reset-request';
      const identifier = await identifierOf(request, type, (request.body as { identifier: string }).identifier);
      await perIdentifier(request, reply, type, guessId('password-forgot'), identifier);
      const userId = await service.requestReset(identifier);
      await ctx.audit(request, { type, target: userId, details: { sent: userId !== null } });
      return reply.status(202).send({ status: 'sent-if-registered' });
    },
  );

  app.post(
    '/v1/auth/password/reset',
    {
      onRequest: perIp('user.password-reset', guessIp('password-reset')),
      schema: {
        summary: 'Set a new password with the reset code; every session of the account ends',
        tags: ['accounts'],
        body: StrictObject({ identifier: IdentifierField, code: CodeField, newPassword: PasswordField }),
        response: {
          200: StrictObject({ status: Type.Literal('reset'), next: Type.Literal('sign-in') }),
          ...limitedErrors,
        },
      },
    },
    async (request, reply) => {
      const body = request.body as { identifier: string; code: string; newPassword: string };
      const type = 'user.password-reset';
      const identifier = await identifierOf(request, type, body.identifier);
      await perIdentifier(request, reply, type, guessId('password-reset'), identifier);
      let userId: string | null;
      try {
        userId = await service.resetPassword(identifier, body.code, body.newPassword);
      } catch (error) {
        await ctx.audit(request, {
          type,
          result: 'failure',
          details: { reason: error instanceof CastellanError ? error.code : 'error' },
        });
        throw error;
      }
      if (!userId) {
        await ctx.audit(request, { type, result: 'failure', details: { reason: 'code' } });
        throw new CastellanError('ERR_ACCOUNT_CODE_INVALID');
      }
      await ctx.audit(request, { type, target: userId, details: { sessionsRevoked: true } });
      return { status: 'reset', next: 'sign-in' };
    },
  );
}
