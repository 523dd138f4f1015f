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
export { sessionRoutes } from './session-routes.ts';
export { deviceIdOf, networkPrefix, noteSuccessfulSignIn } from './sign-in-alerts.ts';
export { maskContact, secondFactorsOf, SignInService } from './sign-in-service.ts';
export { TotpService, totpCode } from './totp-service.ts';
export { requireRecentAuthentication } from './step-up.ts';
export { type IssuedOperatorKey, type OperatorKeyView, OperatorKeysService } from './operator-keys-service.ts';
export { OperatorRequestVerifier, type SignatureRefusal, verifySignedBody } from './operator-request-signing.ts';
export { type Identifier, normaliseIdentifier, UserDirectory, type UserRecord } from './user-directory.ts';
export { staffRoutes } from './staff-routes.ts';
export { OneTimeCodes, type CodePurpose } from './one-time-codes.ts';
export { ProofOfWork } from './proof-of-work.ts';
export { RegistrationService } from './registration-service.ts';
export { registrationRoutes } from './registration-routes.ts';
export { createPersonalOrganisation, OrganisationsService, type Organisation } from './organisations-service.ts';
export { organisationRoutes } from './organisation-routes.ts';
export { accountForIdentity, OidcLogin, type OidcIdentity, type OidcProviderConfig } from './oidc-login.ts';
export { OIDC_COOKIE, oidcRoutes } from './oidc-routes.ts';
export { mfaRoutes, PENDING_SIGN_IN_MAX_FAILURES } from './mfa-routes.ts';
export { normaliseRecoveryCode, RECOVERY_CODE_COUNT, RecoveryCodes } from './recovery-codes.ts';
export { challengeIdOf, type PasskeyView, userHandleOf, WebauthnService } from './webauthn-service.ts';
