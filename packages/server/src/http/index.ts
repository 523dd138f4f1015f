export { type AuthenticateHook, createAuthenticateHook, principalOf, type RequestPrincipal } from './authenticate.ts';
export { createHttpServer, type HttpServerOptions } from './create-http-server.ts';
export { ErrorResponseSchema, sendError, toCastellanError } from './error-responses.ts';
export type { RecordAudit, RequestAuditEvent } from './request-audit.ts';
export {
  authenticatedErrors,
  bearerSecurity,
  deviceSecurity,
  DisplayName,
  publicErrors,
  StrictObject,
} from './route-schemas.ts';
export { SignedBodies } from './signed-bodies.ts';
