// Sign-in, sessions and the signed-in person's own account (ACC-4, ACC-6, ACC-8, SESS-1..5).
//   POST   /v1/auth/login            password sign-in (brute-force limits; second factor if set up)
//   POST   /v1/auth/refresh          "keep me signed in": rotate the refresh token
//   POST   /v1/auth/logout           end this session
//   POST   /v1/auth/logout-all       end every session of the person
//   POST   /v1/auth/reauthenticate   step-up with the password (rotates the session)
//   GET    /v1/me                    who am I (contact masked)
//   GET    /v1/me/sessions           where am I signed in (no tokens)
//   POST   /v1/me/password           change the password (recent authentication)
//   DELETE /v1/me                    delete the account (recent authentication; crypto-shredding)
// Tokens travel in HttpOnly cookies or, for apps, in response bodies and Authorization headers; never
// in URLs (SESS-5). Passwords travel only in request bodies over TLS (ACC-8).
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { Type } from 'typebox';
import { CastellanError } from '../errors/index.ts';
import { authenticatedErrors, bearerSecurity, principalOf, publicErrors, StrictObject } from '../http/index.ts';
import type { AccountsContext } from './accounts-context.ts';
import { PasswordField } from './accounts-routes.ts';
import type { UserPrincipal } from './principal.ts';
import { clearSessionCookies, deliverSession, REFRESH_COOKIE } from './session-delivery.ts';
import { maskContact, secondFactorsOf, SignInService } from './sign-in-service.ts';
import { requireRecentAuthentication } from './step-up.ts';

const errorRef = { $ref: 'ErrorResponse#' } as const;
const lockedErrors = { 429: errorRef } as const;

const SessionView = StrictObject({
  sessionId: Type.String(),
  expiresAt: Type.Integer({ description: 'Latest expiry (ms since the epoch); unused sessions expire sooner' }),
  token: Type.Optional(Type.String({ description: 'Apps only (X-Castellan-Client: app); browsers get a cookie' })),
  refreshToken: Type.Optional(Type.String({ description: 'Apps only, with keepSignedIn' })),
  refreshExpiresAt: Type.Optional(Type.Integer()),
});

const LoginView = StrictObject({
  mfaRequired: Type.Boolean(),
  mfaToken: Type.Optional(
    Type.String({ description: 'When mfaRequired: present it to the /v1/auth/mfa/* routes to finish signing in' }),
  ),
  methods: Type.Optional(Type.Array(Type.Union([Type.Literal('totp'), Type.Literal('webauthn')]))),
  sessionId: Type.Optional(Type.String()),
  expiresAt: Type.Optional(Type.Integer()),
  token: Type.Optional(Type.String()),
  refreshToken: Type.Optional(Type.String()),
  refreshExpiresAt: Type.Optional(Type.Integer()),
});

const MeView = StrictObject({
  id: Type.String(),
  kind: Type.Union([Type.Literal('consumer'), Type.Literal('developer')]),
  status: Type.String(),
  contact: Type.Union([Type.String(), Type.Null()], { description: 'Masked e-mail address or phone number' }),
  mfa: StrictObject({ totp: Type.Boolean(), webauthn: Type.Boolean() }),
});

const SessionListView = StrictObject({
  items: Type.Array(
    StrictObject({
      id: Type.String(),
      createdAt: Type.Integer(),
      lastSeenAt: Type.Integer(),
      persistent: Type.Boolean(),
      current: Type.Boolean(),
    }),
  ),
});

/** Routes for people only: staff and operators have their own ways in. */
function userOf(request: FastifyRequest): UserPrincipal {
  const principal = principalOf(request);
  if (principal.kind !== 'user') throw new CastellanError('ERR_AUTH_FORBIDDEN');
  return principal;
}

export async function sessionRoutes(app: FastifyInstance, ctx: AccountsContext): Promise<void> {
  const signIn = new SignInService(ctx);

  app.post(
    '/v1/auth/login',
    {
      schema: {
        summary: 'Sign in with an e-mail address or phone number and a password',
        tags: ['auth'],
        body: StrictObject({
          identifier: Type.String({ minLength: 1, maxLength: 320 }),
          password: PasswordField,
          keepSignedIn: Type.Optional(Type.Boolean({ description: 'Issue a refresh token ("keep me signed in")' })),
        }),
        response: { 200: LoginView, ...publicErrors, ...lockedErrors },
      },
    },
    async (request, reply) => {
      const body = request.body as { identifier: string; password: string; keepSignedIn?: boolean };
      const outcome = await signIn.signIn(request, reply, body);
      if (outcome.kind === 'mfa') {
        return {
          mfaRequired: true,
          mfaToken: outcome.issued.token,
          methods: [...outcome.methods],
          expiresAt: outcome.issued.expiresAt,
        };
      }
      return { mfaRequired: false, ...deliverSession(request, reply, outcome.issued) };
    },
  );

  app.post(
    '/v1/auth/refresh',
    {
      // Browsers refresh with the cookie alone and may send no body at all.
      preValidation: async (request) => {
        request.body ??= {};
      },
      schema: {
        summary: 'Exchange a refresh token (body for apps, cookie for browsers) for a new session and refresh token',
        tags: ['auth'],
        body: StrictObject({ refreshToken: Type.Optional(Type.String({ minLength: 1, maxLength: 128 })) }),
        response: { 200: SessionView, ...publicErrors },
      },
    },
    async (request, reply) => {
      const token = (request.body as { refreshToken?: string }).refreshToken ?? request.cookies?.[REFRESH_COOKIE];
      const outcome = token ? await ctx.sessions.refresh(token, request.ip) : null;
      if (outcome && 'reused' in outcome) {
        // A used refresh token came back: it was stolen, or its copy was. The whole family is already
        // revoked (RFC 9700 section 4.14.2); the person should be told and staff should look.
        const owner = await ctx.db
          .selectFrom('refresh_tokens')
          .select('principal_id')
          .where('family_id', '=', outcome.reused)
          .executeTakeFirst();
        await ctx.audit(request, {
          type: 'session.refresh-reuse',
          result: 'denied',
          target: owner?.principal_id ?? null,
          details: { familyId: outcome.reused },
        });
        ctx.record({
          actor: { type: 'system', id: 'sessions' },
          type: 'session.family-revoked',
          target: owner?.principal_id ?? null,
          sourceIp: request.ip,
          result: 'success',
          details: { familyId: outcome.reused, reason: 'refresh-token-reuse', requestId: request.id },
        });
        request.log.warn({ familyId: outcome.reused }, 'refresh token reused: session family revoked');
        clearSessionCookies(reply);
        throw new CastellanError('ERR_AUTH_INVALID');
      }
      if (!outcome) {
        await ctx.audit(request, { type: 'session.refresh', result: 'failure' });
        throw new CastellanError('ERR_AUTH_INVALID');
      }
      const { issued } = outcome;
      const user = issued.session.principalKind === 'user' ? await ctx.users.get(issued.session.principalId) : null;
      if (issued.session.principalKind === 'user' && user?.status !== 'active') {
        await ctx.sessions.revoke(issued.session.id);
        await ctx.audit(request, { type: 'session.refresh', result: 'failure', target: issued.session.principalId });
        throw new CastellanError('ERR_AUTH_INVALID');
      }
      await ctx.audit(request, {
        type: 'session.refresh',
        target: issued.session.principalId,
        details: { sessionId: issued.session.id },
      });
      return deliverSession(request, reply, issued);
    },
  );

  app.post(
    '/v1/auth/logout',
    {
      onRequest: ctx.authenticate,
      schema: {
        summary: 'Sign out: ends this session and its refresh token on the server',
        tags: ['auth'],
        security: bearerSecurity,
        response: { 204: Type.Null(), ...authenticatedErrors },
      },
    },
    async (request, reply) => {
      const principal = principalOf(request);
      const sessionBased = principal.kind === 'user' || (principal.kind === 'admin' && principal.via === 'session');
      if (!sessionBased) throw new CastellanError('ERR_AUTH_FORBIDDEN');
      await ctx.sessions.revoke(principal.credentialId);
      clearSessionCookies(reply);
      await ctx.audit(request, { type: 'session.logout', target: principal.credentialId });
      return reply.status(204).send();
    },
  );

  app.post(
    '/v1/auth/logout-all',
    {
      onRequest: ctx.authenticate,
      schema: {
        summary: 'Sign out everywhere: ends every session of the signed-in person, this one included',
        tags: ['auth'],
        security: bearerSecurity,
        response: { 200: StrictObject({ sessionsEnded: Type.Integer() }), ...authenticatedErrors },
      },
    },
    async (request, reply) => {
      const user = userOf(request);
      const sessionsEnded = await ctx.sessions.revokeAll(user.id);
      clearSessionCookies(reply);
      await ctx.audit(request, { type: 'session.logout-all', target: user.id, details: { sessionsEnded } });
      return { sessionsEnded };
    },
  );

  app.post(
    '/v1/auth/reauthenticate',
    {
      onRequest: ctx.authenticate,
      schema: {
        summary: 'Step-up: confirm the password before a sensitive operation; rotates the session token',
        tags: ['auth'],
        security: bearerSecurity,
        body: StrictObject({ password: PasswordField }),
        response: { 200: SessionView, ...authenticatedErrors, ...lockedErrors },
      },
    },
    async (request, reply) => {
      const user = userOf(request);
      try {
        await signIn.verifyOwnPassword(request, reply, user.id, (request.body as { password: string }).password);
      } catch (error) {
        await ctx.audit(request, { type: 'user.reauthenticate', result: 'failure', target: user.id });
        throw error;
      }
      const issued = await signIn.reauthenticate(request, user.credentialId);
      await ctx.audit(request, {
        type: 'user.reauthenticate',
        target: user.id,
        details: { sessionId: issued.session.id },
      });
      return deliverSession(request, reply, issued);
    },
  );

  app.get(
    '/v1/me',
    {
      onRequest: ctx.authenticate,
      schema: {
        summary: 'The signed-in person (contact masked)',
        tags: ['auth'],
        security: bearerSecurity,
        response: { 200: MeView, ...authenticatedErrors },
      },
    },
    async (request) => {
      const principal = userOf(request);
      const user = await ctx.users.get(principal.id);
      if (!user) throw new CastellanError('ERR_AUTH_INVALID');
      const contact = await ctx.users.contactOf(user.id);
      const methods = await secondFactorsOf(ctx, user.id);
      return {
        id: user.id,
        kind: user.kind,
        status: user.status,
        contact: contact ? maskContact(contact) : null,
        mfa: { totp: methods.includes('totp'), webauthn: methods.includes('webauthn') },
      };
    },
  );

  app.get(
    '/v1/me/sessions',
    {
      onRequest: ctx.authenticate,
      schema: {
        summary: "The signed-in person's live sessions (IDs only, never tokens)",
        tags: ['auth'],
        security: bearerSecurity,
        response: { 200: SessionListView, ...authenticatedErrors },
      },
    },
    async (request) => {
      const user = userOf(request);
      const sessions = await ctx.sessions.list(user.id);
      return {
        items: sessions
          .filter((s) => s.level === 'full')
          .map((s) => ({
            id: s.id,
            createdAt: s.createdAt,
            lastSeenAt: s.lastSeenAt,
            persistent: s.persistent,
            current: s.id === user.credentialId,
          })),
      };
    },
  );

  app.post(
    '/v1/me/password',
    {
      onRequest: ctx.authenticate,
      schema: {
        summary: 'Change the password (needs a recent sign-in); ends every other session, rotates this one',
        tags: ['auth'],
        security: bearerSecurity,
        body: StrictObject({ currentPassword: PasswordField, newPassword: PasswordField }),
        response: { 200: SessionView, ...authenticatedErrors, ...lockedErrors },
      },
    },
    async (request, reply) => {
      const user = userOf(request);
      const body = request.body as { currentPassword: string; newPassword: string };
      let result: Awaited<ReturnType<SignInService['changePassword']>>;
      try {
        requireRecentAuthentication(user, ctx);
        await signIn.verifyOwnPassword(request, reply, user.id, body.currentPassword);
        result = await signIn.changePassword(request, user.id, user.credentialId, body.newPassword);
      } catch (error) {
        await ctx.audit(request, { type: 'user.password-change', result: 'failure', target: user.id });
        throw error;
      }
      await ctx.audit(request, {
        type: 'user.password-change',
        target: user.id,
        details: { sessionId: result.issued.session.id, sessionsEnded: result.ended },
      });
      return deliverSession(request, reply, result.issued);
    },
  );

  app.delete(
    '/v1/me',
    {
      onRequest: ctx.authenticate,
      schema: {
        summary: "Delete the signed-in person's account (needs a recent sign-in); their data is crypto-shredded",
        tags: ['auth'],
        security: bearerSecurity,
        response: { 204: Type.Null(), ...authenticatedErrors },
      },
    },
    async (request, reply) => {
      const user = userOf(request);
      try {
        requireRecentAuthentication(user, ctx);
      } catch (error) {
        await ctx.audit(request, { type: 'user.delete', result: 'denied', target: user.id });
        throw error;
      }
      const outcome = await signIn.deleteAccount(user.id);
      clearSessionCookies(reply);
      await ctx.audit(request, { type: 'user.delete', target: user.id, details: outcome });
      return reply.status(204).send();
    },
  );
}
