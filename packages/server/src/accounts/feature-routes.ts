// The accounts features' route plugins, registered in one place with the shared context.
import type { FastifyInstance } from 'fastify';
import type { AccountsContext } from './accounts-context.ts';

export async function accountFeatureRoutes(app: FastifyInstance, ctx: AccountsContext): Promise<void> {
  void ctx;
  void app;
}
