// Sign-in with an outside OpenID Connect provider (ACC-7); the protocol is in oidc-login.ts.
//
//   GET /v1/auth/oidc/:provider/start     → 302 to the provider, attempt cookie set
//   GET /v1/auth/oidc/:provider/callback  → session (303 to the app for browsers, JSON for apps),
//                                           or { mfaRequired, mfaToken } when a second factor is set
//
// Every refused callback answers the same 401 ERR_OIDC_FAILED; the reason goes to the debug log only.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { Type } from 'typebox';
import { CastellanError } from '../errors/index.ts';
import { publicErrors, StrictObject } from '../http/index.ts';
import type { AccountsContext } from './accounts-context.ts';
import { accountForIdentity, OIDC_CHALLENGE_TTL_MS, OidcFailure, OidcLogin } from './oidc-login.ts';
import { deliverSession, wantsBodyTokens } from './session-delivery.ts';
import { noteSuccessfulSignIn } from './sign-in-alerts.ts';
import { secondFactorsOf } from './sign-in-service.ts';
import { refuseWithRetryAfter } from '../http/retry-after.ts';
import { clientNetworkOf } from '../guard/index.ts';

/**
 * Binds an attempt to the browser that started it. SameSite=Lax, not Strict: the callback is a
 * cross-site top-level GET navigation from the provider, on which browsers send Lax cookies but not
 * Strict ones (RFC 6265bis section 5.4.7.1). The cookie holds only the attempt's random ID; `__Host-`
 * keeps sibling hosts from planting one (RFC 6265bis section 4.1.3.2).
 */
export const OIDC_COOKIE = '__Host-castellan_oidc';
const oidcCookie = { path: '/', secure: true, httpOnly: true, sameSite: 'lax' } as const;

const ProviderParams = StrictObject({ provider: Type.String({ pattern: '^[a-z][a-z0-9-]{0,31}$' }) });

// The callback's query is written by the provider, which may add parameters of its own (iss,
// session_state, …): known ones are bounded, others are tolerated and ignored by the checks.
const CallbackQuery = Type.Object({
  code: Type.Optional(Type.String({ maxLength: 4096 })),
  state: Type.Optional(Type.String({ maxLength: 1024 })),
  iss: Type.Optional(Type.String({ maxLength: 2048 })),
  error: Type.Optional(Type.String({ maxLength: 256 })),
  error_description: Type.Optional(Type.String({ maxLength: 1024 })),
});

const SessionResponse = StrictObject({
  sessionId: Type.String(),
  expiresAt: Type.Integer(),
  token: Type.Optional(Type.String({ description: 'Only for `X-Castellan-Client: app`' })),
  created: Type.Boolean({ description: 'True when this sign-in created the account' }),
});
const MfaResponse = StrictObject({
  mfaRequired: Type.Literal(true),
  mfaToken: Type.String({ description: 'Token of the short MFA-pending session; complete it with a second factor' }),
  methods: Type.Array(Type.String()),
});

const tooMany = (reply: FastifyReply, retryAfterMs: number): CastellanError =>
  refuseWithRetryAfter(reply, retryAfterMs, 'ERR_RATE_LIMITED');

export async function oidcRoutes(app: FastifyInstance, ctx: AccountsContext): Promise<void> {
  const login = new OidcLogin(ctx);
  const windowS = ctx.config.loginFailureWindowMinutes * 60;

  // Each start stores an attempt, each failed callback costs an outbound request: both are limited
  // per client IP with the sign-in failures (ACC-4).
  const limit = async (request: FastifyRequest, reply: FastifyReply): Promise<void> => {
    const outcome = await ctx.limits.consume(
      'oidc-ip',
      clientNetworkOf(request.ip),
      ctx.config.loginFailuresPerIp,
      windowS,
    );
    if (!outcome.allowed) throw tooMany(reply, outcome.retryAfterMs);
  };

  app.get(
    '/v1/auth/oidc/:provider/start',
    {
      schema: {
        summary: 'Start signing in with an outside OpenID Connect provider (redirects to it)',
        tags: ['accounts'],
        params: ProviderParams,
        response: {
          302: Type.Null(),
          ...publicErrors,
          404: { $ref: 'ErrorResponse#' },
          429: { $ref: 'ErrorResponse#' },
        },
      },
    },
    async (request, reply) => {
      const { provider } = request.params as { provider: string };
      login.assertKnown(provider);
      await limit(request, reply);
      let started: Awaited<ReturnType<OidcLogin['start']>>;
      try {
        started = await login.start(provider);
      } catch (error) {
        if (error instanceof CastellanError) throw error;
        // The provider's discovery failed (unreachable, untrusted certificate, bad metadata).
        request.log.warn({ provider, reason: (error as Error).message }, 'oidc: provider discovery failed');
        throw new CastellanError('ERR_OIDC_FAILED');
      }
      reply.setCookie(OIDC_COOKIE, started.challengeId, { ...oidcCookie, maxAge: OIDC_CHALLENGE_TTL_MS / 1000 });
      reply.header('cache-control', 'no-store');
      return reply.redirect(started.authorizationUrl, 302);
    },
  );

  app.get(
    '/v1/auth/oidc/:provider/callback',
    {
      // The query holds the authorization code and state: request logs show the path only.
      logSerializers: {
        req: (req: { method?: string; url?: string }) => ({ method: req.method, url: req.url?.split('?')[0] }),
      },
      schema: {
        summary: 'The provider sends the browser back here; signs in (or creates the account) and starts a session',
        tags: ['accounts'],
        params: ProviderParams,
        querystring: CallbackQuery,
        response: {
          200: Type.Union([SessionResponse, MfaResponse]),
          303: Type.Null(),
          ...publicErrors,
          404: { $ref: 'ErrorResponse#' },
          409: { $ref: 'ErrorResponse#' },
          429: { $ref: 'ErrorResponse#' },
        },
      },
    },
    async (request, reply) => {
      const { provider } = request.params as { provider: string };
      login.assertKnown(provider);
      reply.header('cache-control', 'no-store');
      // Single use whatever happens next: the attempt row is consumed and the cookie cleared.
      const challengeId = request.cookies[OIDC_COOKIE];
      reply.clearCookie(OIDC_COOKIE, oidcCookie);
      const query = new URL(request.url, 'https://callback.invalid').searchParams;
      let identity: Awaited<ReturnType<OidcLogin['finish']>>;
      let account: Awaited<ReturnType<typeof accountForIdentity>>;
      try {
        identity = await login.finish(provider, challengeId, query);
        account = await accountForIdentity(ctx, identity);
      } catch (error) {
        // ERR_OIDC_EMAIL_REQUIRED and ERR_OIDC_ACCOUNT_EXISTS tell the person what to do instead;
        // everything else is one fixed answer.
        const refusal =
          error instanceof CastellanError &&
          (error.code === 'ERR_OIDC_EMAIL_REQUIRED' || error.code === 'ERR_OIDC_ACCOUNT_EXISTS');
        // Only the message: library errors may carry the ID token's claims (personal data) as `cause`.
        const reason = refusal ? error.code : (error as Error).message;
        if (!refusal && !(error instanceof OidcFailure)) {
          request.log.warn({ provider, reason }, 'oidc: callback failed unexpectedly');
        }
        request.log.debug({ provider, reason }, 'oidc: callback refused');
        await ctx.audit(request, {
          type: 'user.login',
          result: 'failure',
          details: { method: 'oidc', provider, reason: refusal ? reason : 'failed' },
        });
        await ctx.limits.consume('oidc-ip', clientNetworkOf(request.ip), ctx.config.loginFailuresPerIp, windowS);
        if (refusal) throw error;
        throw new CastellanError('ERR_OIDC_FAILED');
      }
      const { user, created } = account;
      const methods = await secondFactorsOf(ctx, user.id);
      // The provider's sign-in is one factor: a second factor set up here is still asked for.
      const issued = await ctx.sessions.create({
        principalKind: 'user',
        principalId: user.id,
        level: methods.length > 0 ? 'mfa-pending' : 'full',
        persistent: false,
        ip: request.ip,
      });
      await ctx.audit(request, {
        type: 'user.login',
        target: user.id,
        details: {
          method: 'oidc',
          provider,
          created,
          sessionId: issued.session.id,
          ...(methods.length > 0 ? { stage: 'oidc', mfaRequired: true } : {}),
        },
      });
      if (methods.length > 0) return { mfaRequired: true as const, mfaToken: issued.token, methods };
      await noteSuccessfulSignIn(ctx, request, reply, user.id);
      const view = deliverSession(request, reply, issued);
      if (wantsBodyTokens(request)) {
        return { sessionId: view.sessionId, expiresAt: view.expiresAt, token: view.token, created };
      }
      return reply.redirect(`${ctx.publicUrl().replace(/\/+$/, '')}/`, 303);
    },
  );
}
