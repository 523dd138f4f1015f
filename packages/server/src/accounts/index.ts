export { type Action, assertCan, can, type ResourceScope } from './access-policy.ts';
export { accountsRoutes } from './accounts-routes.ts';
export {
  AccountsService,
  type AccountsServiceOptions,
  type IssuedCredential,
  isUniqueViolation,
  type Principal,
  type PrincipalKind,
  SETUP_TOKEN_FILE,
  type Vendor,
} from './accounts-service.ts';
