// Accounts routes. Each reads as a checklist: authenticate → validate (schema) → authorise (policy)
// → service → presenter (the response schema emits only declared fields).
import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import {
  type AuthenticateHook,
  authenticatedErrors,
  bearerSecurity,
  principalOf,
  publicErrors,
  type RecordAudit,
  StrictObject,
  DisplayName,
} from '../http/index.ts';
import { assertCan } from './access-policy.ts';
import type { AccountsService, Vendor } from './accounts-service.ts';

export interface AccountsRoutesOptions {
  accounts: AccountsService;
  authenticate: AuthenticateHook;
  audit: RecordAudit;
}

const ResourceId = Type.String({ minLength: 1, maxLength: 64, pattern: '^[a-z]{3}_[A-Za-z0-9_-]{22}$' });

const VendorView = StrictObject({
  id: Type.String(),
  code: Type.String({ description: '6 hex digits, part of every device ID of this vendor' }),
  name: Type.String(),
  createdAt: Type.Integer(),
});

const CredentialView = StrictObject({
  id: Type.String(),
  kind: Type.String(),
  principalId: Type.String(),
  label: Type.String(),
  token: Type.String({ description: 'Bearer token, shown only in this response' }),
});

const presentVendor = (v: Vendor) => ({ id: v.id, code: v.code, name: v.name, createdAt: v.createdAt });

export async function accountsRoutes(app: FastifyInstance, { accounts, authenticate, audit }: AccountsRoutesOptions) {
  app.post(
    '/v1/setup',
    {
      schema: {
        summary: 'Create the first administrator with the one-time setup token',
        tags: ['accounts'],
        body: StrictObject({
          setupToken: Type.String({ minLength: 1, maxLength: 256 }),
          adminName: DisplayName,
        }),
        response: {
          201: StrictObject({ adminId: Type.String(), credential: CredentialView }),
          ...publicErrors,
        },
      },
    },
    async (request, reply) => {
      const body = request.body as { setupToken: string; adminName: string };
      let result: Awaited<ReturnType<AccountsService['completeSetup']>>;
      try {
        result = await accounts.completeSetup(body.setupToken, body.adminName);
      } catch (error) {
        await audit(request, { type: 'setup.complete', result: 'failure' });
        throw error;
      }
      await audit(request, {
        type: 'setup.complete',
        target: result.adminId,
        details: { credentialId: result.credential.id },
      });
      request.log.info({ adminId: result.adminId }, 'setup completed: first administrator created');
      return reply.status(201).send(result);
    },
  );

  app.post(
    '/v1/vendors',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Create a vendor organisation (administrators)',
        tags: ['accounts'],
        security: bearerSecurity,
        body: StrictObject({ name: DisplayName }),
        response: { 201: VendorView, ...authenticatedErrors },
      },
    },
    async (request, reply) => {
      assertCan(principalOf(request), 'vendor.create');
      const vendor = await accounts.createVendor((request.body as { name: string }).name);
      await audit(request, {
        type: 'vendor.create',
        tenant: vendor.id,
        target: vendor.id,
        details: { code: vendor.code },
      });
      return reply.status(201).send(presentVendor(vendor));
    },
  );

  app.get(
    '/v1/vendors',
    {
      onRequest: authenticate,
      schema: {
        summary: 'List vendor organisations (administrators)',
        tags: ['accounts'],
        security: bearerSecurity,
        response: { 200: StrictObject({ items: Type.Array(VendorView) }), ...authenticatedErrors },
      },
    },
    async (request) => {
      assertCan(principalOf(request), 'vendor.list');
      return { items: (await accounts.listVendors()).map(presentVendor) };
    },
  );

  app.post(
    '/v1/vendors/:vendorId/credentials',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Issue an API credential for a vendor (administrators); the token is shown once',
        tags: ['accounts'],
        security: bearerSecurity,
        params: StrictObject({ vendorId: ResourceId }),
        body: StrictObject({ label: DisplayName }),
        response: { 201: CredentialView, ...authenticatedErrors },
      },
    },
    async (request, reply) => {
      assertCan(principalOf(request), 'vendor-credential.create');
      const { vendorId } = request.params as { vendorId: string };
      const credential = await accounts.createVendorCredential(vendorId, (request.body as { label: string }).label);
      await audit(request, {
        type: 'vendor-credential.issue',
        tenant: vendorId,
        target: credential.id,
        details: { label: credential.label },
      });
      request.log.info({ credentialId: credential.id, vendorId }, 'vendor credential issued');
      return reply.status(201).send(credential);
    },
  );
}
