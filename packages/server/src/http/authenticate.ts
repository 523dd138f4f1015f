// Bearer authentication for API credentials. Runs in onRequest, before the body is read, so an
// unauthenticated caller costs no parsing. Tokens never appear in URLs or logs.
import type { FastifyReply, FastifyRequest } from 'fastify';
import { CastellanError } from '../errors/index.ts';

/** Who is calling; the accounts subsystem defines the kinds. */
export interface RequestPrincipal {
  readonly kind: 'admin' | 'vendor';
  readonly id: string;
  readonly credentialId: string;
}

declare module 'fastify' {
  interface FastifyRequest {
    principal: RequestPrincipal | undefined;
  }
}

const BEARER = /^Bearer ([A-Za-z0-9_\-.~+/]+=*)$/;

export type AuthenticateHook = (request: FastifyRequest, reply: FastifyReply) => Promise<void>;

export function createAuthenticateHook(resolve: (token: string) => Promise<RequestPrincipal | null>): AuthenticateHook {
  return async function authenticate(request) {
    const header = request.headers.authorization;
    if (!header) throw new CastellanError('ERR_AUTH_REQUIRED');
    const match = BEARER.exec(header);
    if (!match) throw new CastellanError('ERR_AUTH_INVALID');
    const principal = await resolve(match[1]!);
    if (!principal) throw new CastellanError('ERR_AUTH_INVALID');
    request.principal = principal;
  };
}

/** The authenticated principal, for handlers behind the authenticate hook. */
export function principalOf(request: FastifyRequest): RequestPrincipal {
  if (!request.principal) throw new CastellanError('ERR_AUTH_REQUIRED');
  return request.principal;
}
