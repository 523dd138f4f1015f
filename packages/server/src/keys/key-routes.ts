// Key lifecycle operations for administrators (KEY-2): list, create, rotate and move a key version
// through its states. Every operation is audited by the key service itself.
import type { SuiteName } from '@castellan/protocol';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
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
import type { BackupKeyEscrow, KeyService, KeyStoreBackup, KeyVersion } from './key-service.ts';

export interface KeyRoutesOptions {
  keys: KeyService;
  authenticate: AuthenticateHook;
}

const KeyView = StrictObject({
  id: Type.String(),
  tenant: Type.String(),
  user: Type.Union([Type.String(), Type.Null()]),
  product: Type.Union([Type.String(), Type.Null()]),
  version: Type.Integer(),
  suite: Type.String(),
  state: Type.String(),
  createdAt: Type.Integer(),
  stateChangedAt: Type.Integer(),
});
const Tenant = Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9_:-]+$' });
const User = Type.Optional(
  Type.String({
    minLength: 1,
    maxLength: 64,
    pattern: '^[A-Za-z0-9_:-]+$',
    description: "a per-user key of the tenant (personal data); default: the tenant's own key",
  }),
);
const Suite = Type.Optional(
  Type.Union([Type.Literal('intl'), Type.Literal('sm')], {
    description: "crypto suite; default: the tenant's current one",
  }),
);
const errors = { ...authenticatedErrors, 409: { $ref: 'ErrorResponse#' } };
const present = (k: KeyVersion) => ({ ...k });

export async function keyRoutes(app: FastifyInstance, { keys, authenticate }: KeyRoutesOptions) {
  // Key audit entries name the administrator, credential, source IP and request behind the operation.
  const asCaller =
    (handler: (request: FastifyRequest, reply: FastifyReply) => Promise<unknown>) =>
    (request: FastifyRequest, reply: FastifyReply) => {
      const p = request.principal;
      if (!p) return handler(request, reply);
      const actor = {
        type: p.kind,
        id: p.id,
        credentialId: p.credentialId,
        sourceIp: request.ip,
        requestId: request.id,
      };
      return keys.as(actor, () => handler(request, reply));
    };
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
    asCaller(async (request) => {
      assertCan(principalOf(request), 'keys.manage');
      const { tenant } = request.query as { tenant?: string };
      return { items: (await keys.list(tenant === undefined ? {} : { tenant })).map(present) };
    }),
  );

  // create and rotate take the same body and answer the same view.
  for (const [url, summary, run] of [
    [
      '/v1/keys',
      'Create a new (pre-active) key version for a tenant',
      (tenant: string, suite: SuiteName | undefined, user: string | undefined) => keys.create(tenant, suite, { user }),
    ],
    [
      '/v1/keys/rotate',
      "Rotate a tenant's key: a new active version; the previous one decrypts only",
      (tenant: string, suite: SuiteName | undefined, user: string | undefined) => keys.rotate(tenant, suite, { user }),
    ],
  ] as const) {
    app.post(
      url,
      {
        onRequest: authenticate,
        schema: {
          summary,
          tags: ['keys'],
          security: bearerSecurity,
          body: StrictObject({ tenant: Tenant, suite: Suite, user: User }),
          response: { 201: KeyView, ...errors },
        },
      },
      asCaller(async (request, reply) => {
        assertCan(principalOf(request), 'keys.manage');
        const { tenant, suite, user } = request.body as { tenant: string; suite?: SuiteName; user?: string };
        return reply.status(201).send(present(await run(tenant, suite, user)));
      }),
    );
  }

  app.post(
    '/v1/keys/shred',
    {
      onRequest: authenticate,
      schema: {
        summary: "Crypto-shred: destroy every version of a user's key, or of a tenant's key and all its users' keys",
        tags: ['keys'],
        security: bearerSecurity,
        body: StrictObject({ tenant: Tenant, user: User }),
        response: { 200: StrictObject({ items: Type.Array(KeyView) }), ...errors },
      },
    },
    asCaller(async (request) => {
      assertCan(principalOf(request), 'keys.manage');
      const { tenant, user } = request.body as { tenant: string; user?: string };
      return { items: (await keys.shred(tenant, { user })).map(present) };
    }),
  );

  const adminOnly = { onRequest: authenticate };
  const Json = Type.Object({}, { additionalProperties: true });

  app.post(
    '/v1/keys/backups',
    {
      ...adminOnly,
      schema: {
        summary: 'Back up the key store, sealed by the active backup key (which the backup does not contain)',
        tags: ['keys'],
        security: bearerSecurity,
        response: { 201: Json, ...errors },
      },
    },
    asCaller(async (request, reply) => {
      assertCan(principalOf(request), 'keys.manage');
      return reply.status(201).send(await keys.backup());
    }),
  );

  app.post(
    '/v1/keys/restore',
    {
      ...adminOnly,
      schema: {
        summary: 'Restore key versions missing from this store; destroyed ones are never brought back',
        tags: ['keys'],
        security: bearerSecurity,
        body: StrictObject({
          backup: Json,
          escrow: Type.Optional(Json),
          privateKeyPem: Type.Optional(
            Type.String({ maxLength: 10000, description: 'the escrow recipient key; never stored or logged' }),
          ),
        }),
        response: { 200: StrictObject({ restored: Type.Integer(), skipped: Type.Integer() }), ...errors },
      },
    },
    asCaller(async (request) => {
      assertCan(principalOf(request), 'keys.manage');
      const body = request.body as { backup: KeyStoreBackup; escrow?: BackupKeyEscrow; privateKeyPem?: string };
      return keys.restore(
        body.backup,
        body.escrow && body.privateKeyPem ? { escrow: body.escrow, privateKeyPem: body.privateKeyPem } : undefined,
      );
    }),
  );

  app.get(
    '/v1/keys/backup-keys',
    {
      ...adminOnly,
      schema: {
        summary: 'Backup keys and their states',
        tags: ['keys'],
        security: bearerSecurity,
        response: {
          200: StrictObject({
            items: Type.Array(
              StrictObject({
                id: Type.String(),
                state: Type.String(),
                createdAt: Type.Integer(),
                stateChangedAt: Type.Integer(),
              }),
            ),
          }),
          ...errors,
        },
      },
    },
    asCaller(async (request) => {
      assertCan(principalOf(request), 'keys.manage');
      return { items: await keys.listBackupKeys() };
    }),
  );

  app.post(
    '/v1/keys/backup-keys/rotate',
    {
      ...adminOnly,
      schema: {
        summary: 'A new active backup key; the old one is retired',
        tags: ['keys'],
        security: bearerSecurity,
        response: { 201: StrictObject({ id: Type.String() }), ...errors },
      },
    },
    asCaller(async (request, reply) => {
      assertCan(principalOf(request), 'keys.manage');
      return reply.status(201).send({ id: await keys.rotateBackupKey() });
    }),
  );

  app.post(
    '/v1/keys/backup-keys/:backupKeyId/destroy',
    {
      ...adminOnly,
      schema: {
        summary: 'Destroy a backup key: every backup sealed by it becomes unreadable',
        tags: ['keys'],
        security: bearerSecurity,
        params: StrictObject({ backupKeyId: Type.String({ minLength: 1, maxLength: 64 }) }),
        response: { 204: Type.Null(), ...errors },
      },
    },
    asCaller(async (request, reply) => {
      assertCan(principalOf(request), 'keys.manage');
      await keys.destroyBackupKey((request.params as { backupKeyId: string }).backupKeyId);
      return reply.status(204).send();
    }),
  );

  app.post(
    '/v1/keys/backup-keys/:backupKeyId/escrow',
    {
      ...adminOnly,
      schema: {
        summary: 'Seal a backup key to a recipient P-256 public key (PEM) for disaster recovery',
        tags: ['keys'],
        security: bearerSecurity,
        params: StrictObject({ backupKeyId: Type.String({ minLength: 1, maxLength: 64 }) }),
        body: StrictObject({ recipientPublicKeyPem: Type.String({ minLength: 1, maxLength: 10000 }) }),
        response: { 201: Json, ...errors },
      },
    },
    asCaller(async (request, reply) => {
      assertCan(principalOf(request), 'keys.manage');
      const { backupKeyId } = request.params as { backupKeyId: string };
      return reply
        .status(201)
        .send(
          await keys.escrowBackupKey(
            backupKeyId,
            (request.body as { recipientPublicKeyPem: string }).recipientPublicKeyPem,
          ),
        );
    }),
  );

  app.post(
    '/v1/keys/:keyId/distribute',
    {
      ...adminOnly,
      schema: {
        summary: "Export a key version's material sealed to a recipient P-256 public key (PEM)",
        tags: ['keys'],
        security: bearerSecurity,
        params: StrictObject({ keyId: Type.String({ minLength: 1, maxLength: 64 }) }),
        body: StrictObject({ recipientPublicKeyPem: Type.String({ minLength: 1, maxLength: 10000 }) }),
        response: { 201: Json, ...errors },
      },
    },
    asCaller(async (request, reply) => {
      assertCan(principalOf(request), 'keys.manage');
      const { keyId } = request.params as { keyId: string };
      return reply
        .status(201)
        .send(await keys.distribute(keyId, (request.body as { recipientPublicKeyPem: string }).recipientPublicKeyPem));
    }),
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
    asCaller(async (request) => {
      assertCan(principalOf(request), 'keys.manage');
      const { keyId, operation } = request.params as { keyId: string; operation: KeyOperation };
      return present(await keys.transition(keyId, operation));
    }),
  );
}
