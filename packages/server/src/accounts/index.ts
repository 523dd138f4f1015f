export { type Action, assertCan, can, type ResourceScope } from './access-policy.ts';
export type { AccountsContext, AccountsKeys } from './accounts-context.ts';
export { purgeExpiredAccountsData } from './accounts-purge.ts';
export { accountsRoutes } from './accounts-routes.ts';
export {
  AccountsService,
  type AccountsServiceOptions,
  type IssuedCredential,
  isUniqueViolation,
  SETUP_TOKEN_FILE,
  type SetupResult,
  type Vendor,
} from './accounts-service.ts';
export { accountFeatureRoutes } from './feature-routes.ts';
export type { MessageSender, OutgoingMessage } from './message-sender.ts';
export { createMessageSender, OUTBOX_DIR } from './message-senders.ts';
export { hashPassword, verifyPassword } from './password-hasher.ts';
export {
  defaultTenant,
  OPERATOR_SCOPES,
  type OperatorPrincipal,
  type OperatorScope,
  ORG_ROLES,
  type OrgRole,
  type Principal,
  type PrincipalKind,
  roleAtLeast,
  STAFF_ROLES,
  type StaffPrincipal,
  type StaffRole,
  type UserPrincipal,
} from './principal.ts';
export { RequestAuthenticator, type SignedRequestVerifier, SIGNATURE_SCHEME } from './request-authenticator.ts';
export { SessionStore } from './session-store.ts';
export { TotpService, totpCode } from './totp-service.ts';
export { requireRecentAuthentication } from './step-up.ts';
export { type Identifier, normaliseIdentifier, UserDirectory, type UserRecord } from './user-directory.ts';
export { staffRoutes } from './staff-routes.ts';
