// The accounts features' route plugins, registered in one place with the shared context.
import type { FastifyInstance } from 'fastify';
import type { AccountsContext } from './accounts-context.ts';
import { mfaRoutes } from './mfa-routes.ts';
import { oidcRoutes } from './oidc-routes.ts';
import { operatorKeyRoutes } from './operator-key-routes.ts';
import { organisationRoutes } from './organisation-routes.ts';
import { registrationRoutes } from './registration-routes.ts';
import { sessionRoutes } from './session-routes.ts';

export async function accountFeatureRoutes(app: FastifyInstance, ctx: AccountsContext): Promise<void> {
  void ctx;
  void app;
  await app.register(registrationRoutes, ctx);
  await app.register(organisationRoutes, ctx);
  await app.register(sessionRoutes, ctx);
  await app.register(mfaRoutes, ctx);
  await app.register(oidcRoutes, ctx);
  await app.register(operatorKeyRoutes, ctx);
}
