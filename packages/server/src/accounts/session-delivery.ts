// How session tokens reach clients (SESS-1, SESS-5). Browsers get cookies they cannot read from
// script: `__Host-` prefix (Secure, Path=/, no Domain), HttpOnly, SameSite=Strict. Apps that send
// `X-Castellan-Client: app` get the tokens in the response body instead and present them as
// `Authorization: Bearer`. Tokens never go into URLs.
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { IssuedSession } from './session-store.ts';

export const SESSION_COOKIE = '__Host-castellan_session';
export const REFRESH_COOKIE = '__Host-castellan_refresh';
export const DEVICE_COOKIE = '__Host-castellan_device';

/** True when the client asked for tokens in the body (mobile and desktop apps, the CLI). */
export function wantsBodyTokens(request: FastifyRequest): boolean {
  return request.headers['x-castellan-client'] === 'app';
}

const cookieBase = { path: '/', secure: true, httpOnly: true, sameSite: 'strict' } as const;

export interface SessionView {
  sessionId: string;
  expiresAt: number;
  token?: string;
  refreshToken?: string;
  refreshExpiresAt?: number;
}

/** Sets cookies or returns the tokens, and returns the view for the response body. */
export function deliverSession(request: FastifyRequest, reply: FastifyReply, issued: IssuedSession): SessionView {
  const view: SessionView = { sessionId: issued.session.id, expiresAt: issued.expiresAt };
  if (issued.refreshExpiresAt !== undefined) view.refreshExpiresAt = issued.refreshExpiresAt;
  if (wantsBodyTokens(request)) {
    view.token = issued.token;
    if (issued.refreshToken) view.refreshToken = issued.refreshToken;
    return view;
  }
  // Not persistent: a browser-session cookie (no Max-Age), gone when the browser closes.
  reply.setCookie(SESSION_COOKIE, issued.token, {
    ...cookieBase,
    ...(issued.session.persistent ? { maxAge: Math.max(1, Math.floor((issued.expiresAt - Date.now()) / 1000)) } : {}),
  });
  if (issued.refreshToken && issued.refreshExpiresAt !== undefined) {
    reply.setCookie(REFRESH_COOKIE, issued.refreshToken, {
      ...cookieBase,
      maxAge: Math.max(1, Math.floor((issued.refreshExpiresAt - Date.now()) / 1000)),
    });
  }
  return view;
}

/** Clears the session cookies (logout). */
export function clearSessionCookies(reply: FastifyReply): void {
  reply.clearCookie(SESSION_COOKIE, cookieBase);
  reply.clearCookie(REFRESH_COOKIE, cookieBase);
}

/** The session token a request carries: `Authorization: Bearer cas_ses_…` or the session cookie. */
export function sessionTokenOf(request: FastifyRequest): string | undefined {
  const header = request.headers.authorization;
  if (header?.startsWith('Bearer cas_ses_')) return header.slice('Bearer '.length);
  return request.cookies?.[SESSION_COOKIE];
}
