// Authentication as an onRequest hook, before the body is read, so an unauthenticated caller costs no
// parsing. The accounts subsystem decides what a credential means (RequestAuthenticator); this hook
// only maps "no credential" to 401 ERR_AUTH_REQUIRED and "bad credential" to 401 ERR_AUTH_INVALID,
// with fixed messages. Tokens never appear in URLs, messages or logs (SESS-5).
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Principal } from '../accounts/principal.ts';
import { CastellanError } from '../errors/index.ts';

declare module 'fastify' {
  interface FastifyRequest {
    principal: Principal | undefined;
  }
}

export type RequestPrincipal = Principal;

export type AuthenticateHook = (request: FastifyRequest, reply: FastifyReply) => Promise<void>;

export interface PrincipalResolver {
  hasCredential(request: FastifyRequest): boolean;
  resolve(request: FastifyRequest): Promise<Principal | null>;
}

export function createAuthenticateHook(resolver: PrincipalResolver): AuthenticateHook {
  return async function authenticate(request) {
    if (!resolver.hasCredential(request)) throw new CastellanError('ERR_AUTH_REQUIRED');
    const principal = await resolver.resolve(request);
    if (!principal) throw new CastellanError('ERR_AUTH_INVALID');
    request.principal = principal;
  };
}

/** The authenticated principal, for handlers behind the authenticate hook. */
export function principalOf(request: FastifyRequest): Principal {
  if (!request.principal) throw new CastellanError('ERR_AUTH_REQUIRED');
  return request.principal;
}
