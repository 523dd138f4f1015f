// Key lifecycle operations for administrators (KEY-2): list, create, rotate and move a key version
// through its states. Every operation is audited by the key service itself.
import type { SuiteName } from '@castellan/protocol';
import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import { assertCan } from '../accounts/index.ts';
import {
  type AuthenticateHook,
  authenticatedErrors,
  bearerSecurity,
  principalOf,
  StrictObject,
} from '../http/index.ts';
import { KEY_OPERATIONS, type KeyOperation } from './key-lifecycle.ts';
import type { KeyService, KeyVersion } from './key-service.ts';

export interface KeyRoutesOptions {
  keys: KeyService;
  authenticate: AuthenticateHook;
}

const KeyView = StrictObject({
  id: Type.String(),
  tenant: Type.String(),
  version: Type.Integer(),
  suite: Type.String(),
  state: Type.String(),
  createdAt: Type.Integer(),
  stateChangedAt: Type.Integer(),
});
const Tenant = Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9_:-]+$' });
const Suite = Type.Optional(
  Type.Union([Type.Literal('intl'), Type.Literal('sm')], {
    description: "crypto suite; default: the tenant's current one",
  }),
);
const errors = { ...authenticatedErrors, 409: { $ref: 'ErrorResponse#' } };
const present = (k: KeyVersion) => ({ ...k });

export async function keyRoutes(app: FastifyInstance, { keys, authenticate }: KeyRoutesOptions) {
  app.get(
    '/v1/keys',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Key versions (never their material), optionally for one tenant',
        tags: ['keys'],
        security: bearerSecurity,
        querystring: StrictObject({ tenant: Type.Optional(Tenant) }),
        response: { 200: StrictObject({ items: Type.Array(KeyView) }), ...errors },
      },
    },
    async (request) => {
      assertCan(principalOf(request), 'keys.manage');
      const { tenant } = request.query as { tenant?: string };
      return { items: (await keys.list(tenant === undefined ? {} : { tenant })).map(present) };
    },
  );

  app.post(
    '/v1/keys',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Create a new (pre-active) key version for a tenant',
        tags: ['keys'],
        security: bearerSecurity,
        body: StrictObject({ tenant: Tenant, suite: Suite }),
        response: { 201: KeyView, ...errors },
      },
    },
    async (request, reply) => {
      assertCan(principalOf(request), 'keys.manage');
      const { tenant, suite } = request.body as { tenant: string; suite?: SuiteName };
      return reply.status(201).send(present(await keys.create(tenant, suite)));
    },
  );

  app.post(
    '/v1/keys/rotate',
    {
      onRequest: authenticate,
      schema: {
        summary: "Rotate a tenant's key: a new active version; the previous one decrypts only",
        tags: ['keys'],
        security: bearerSecurity,
        body: StrictObject({ tenant: Tenant, suite: Suite }),
        response: { 201: KeyView, ...errors },
      },
    },
    async (request, reply) => {
      assertCan(principalOf(request), 'keys.manage');
      const { tenant, suite } = request.body as { tenant: string; suite?: SuiteName };
      return reply.status(201).send(present(await keys.rotate(tenant, suite)));
    },
  );

  app.post(
    '/v1/keys/:keyId/:operation',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Apply a lifecycle operation: activate, suspend, deactivate, compromise or destroy',
        tags: ['keys'],
        security: bearerSecurity,
        params: StrictObject({
          keyId: Type.String({ minLength: 1, maxLength: 64 }),
          operation: Type.Union(KEY_OPERATIONS.map((op) => Type.Literal(op))),
        }),
        response: { 200: KeyView, ...errors },
      },
    },
    async (request) => {
      assertCan(principalOf(request), 'keys.manage');
      const { keyId, operation } = request.params as { keyId: string; operation: KeyOperation };
      return present(await keys.transition(keyId, operation));
    },
  );
}
