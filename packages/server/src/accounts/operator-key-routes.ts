// Operator access keys (ORG-2): staff issue them for a vendor; an organisation's owners issue, list
// and revoke their own. Secrets appear once, in the issuing response. Each route: authenticate →
// validate → authorise (policy; a non-member gets "not found", ORG-3) → service → response schema
// with only declared fields. Every key operation is audited, refusals included.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { Type } from 'typebox';
import { CastellanError } from '../errors/index.ts';
import { authenticatedErrors, bearerSecurity, DisplayName, principalOf, StrictObject } from '../http/index.ts';
import { can } from './access-policy.ts';
import type { AccountsContext } from './accounts-context.ts';
import {
  type IssuedOperatorKey,
  MAX_ALLOWED_CIDRS,
  type OperatorKeyView,
  OperatorKeysService,
} from './operator-keys-service.ts';
import { OPERATOR_SCOPES, type OperatorScope, type Principal } from './principal.ts';
import { requireRecentAuthentication } from './step-up.ts';

const VendorId = Type.String({ minLength: 1, maxLength: 64, pattern: '^vnd_[A-Za-z0-9_-]{22}$' });
const KeyId = Type.String({ minLength: 1, maxLength: 64, pattern: '^opk_[A-Za-z0-9_-]{22}$' });
const Scope = Type.Union(OPERATOR_SCOPES.map((s) => Type.Literal(s)));
const Scopes = Type.Array(Scope, {
  minItems: 1,
  maxItems: OPERATOR_SCOPES.length,
  uniqueItems: true,
  description: 'What the key may do; all scopes when omitted',
});
const Cidrs = Type.Array(Type.String({ minLength: 2, maxLength: 49 }), {
  maxItems: MAX_ALLOWED_CIDRS,
  description: 'Source addresses allowed to use the key (CIDR, e.g. 203.0.113.0/24); any when empty or omitted',
});

const IssueBody = StrictObject({
  label: DisplayName,
  scopes: Type.Optional(Scopes),
  allowedCidrs: Type.Optional(Cidrs),
});
const IssuedView = StrictObject({
  id: Type.String({ description: 'Access key ID (opk_…), public' }),
  secret: Type.String({ description: 'Signing secret, shown only in this response' }),
  label: Type.String(),
  scopes: Type.Array(Type.String()),
  allowedCidrs: Type.Array(Type.String()),
});
const KeyView = StrictObject({
  id: Type.String(),
  label: Type.String(),
  scopes: Type.Array(Type.String()),
  allowedCidrs: Type.Array(Type.String()),
  createdAt: Type.Integer(),
  lastUsedAt: Type.Union([Type.Integer(), Type.Null()]),
  revokedAt: Type.Union([Type.Integer(), Type.Null()]),
});

type IssueInput = { label: string; scopes?: OperatorScope[]; allowedCidrs?: string[] };

const presentIssued = (k: IssuedOperatorKey) => ({
  id: k.id,
  secret: k.secret,
  label: k.label,
  scopes: k.scopes,
  allowedCidrs: k.allowedCidrs,
});
const presentKey = (k: OperatorKeyView) => ({
  id: k.id,
  label: k.label,
  scopes: k.scopes,
  allowedCidrs: k.allowedCidrs,
  createdAt: k.createdAt,
  lastUsedAt: k.lastUsedAt,
  revokedAt: k.revokedAt,
});

/** Owners only; a caller who cannot see the organisation learns nothing (404, ORG-3). */
function authoriseOwner(principal: Principal, vendorId: string): void {
  if (can(principal, 'org.access-keys.manage', { vendorId })) return;
  const member = principal.kind === 'user' && Object.hasOwn(principal.memberships, vendorId);
  const ownOperator = principal.kind === 'operator' && principal.id === vendorId;
  throw new CastellanError(member || ownOperator ? 'ERR_AUTH_FORBIDDEN' : 'ERR_ORG_NOT_FOUND');
}

export async function operatorKeyRoutes(app: FastifyInstance, ctx: AccountsContext): Promise<void> {
  const keys = new OperatorKeysService({ db: ctx.db, keys: ctx.keys, now: ctx.now });

  async function issue(request: FastifyRequest, vendorId: string) {
    const body = request.body as IssueInput;
    const issued = await keys.issue(vendorId, { ...body, createdBy: principalOf(request).id });
    await ctx.audit(request, {
      type: 'operator-key.issue',
      tenant: vendorId,
      target: issued.id,
      details: { label: issued.label, scopes: issued.scopes, allowedCidrs: issued.allowedCidrs },
    });
    return presentIssued(issued);
  }

  /** Audits a refused key operation, then lets the refusal through. */
  async function denied(request: FastifyRequest, type: string, vendorId: string, error: unknown): Promise<never> {
    await ctx.audit(request, { type, tenant: vendorId, target: vendorId, result: 'denied' });
    throw error;
  }

  app.post(
    '/v1/vendors/:vendorId/access-keys',
    {
      onRequest: ctx.authenticate,
      schema: {
        summary: 'Issue an operator access key for a vendor (staff: support); the secret is shown once',
        tags: ['accounts'],
        security: bearerSecurity,
        params: StrictObject({ vendorId: VendorId }),
        body: IssueBody,
        response: { 201: IssuedView, ...authenticatedErrors },
      },
    },
    async (request, reply) => {
      const { vendorId } = request.params as { vendorId: string };
      const principal = principalOf(request);
      if (!can(principal, 'vendor.access-key.issue', { vendorId })) {
        return denied(request, 'operator-key.issue', vendorId, new CastellanError('ERR_AUTH_FORBIDDEN'));
      }
      if (!(await keys.vendorExists(vendorId))) throw new CastellanError('ERR_VENDOR_NOT_FOUND');
      return reply.status(201).send(await issue(request, vendorId));
    },
  );

  app.post(
    '/v1/orgs/:vendorId/access-keys',
    {
      onRequest: ctx.authenticate,
      schema: {
        summary: "Issue an access key for the organisation's business systems (owners); the secret is shown once",
        tags: ['organisations'],
        security: bearerSecurity,
        params: StrictObject({ vendorId: VendorId }),
        body: IssueBody,
        response: { 201: IssuedView, ...authenticatedErrors },
      },
    },
    async (request, reply) => {
      const { vendorId } = request.params as { vendorId: string };
      const principal = principalOf(request);
      try {
        authoriseOwner(principal, vendorId);
      } catch (error) {
        return denied(request, 'operator-key.issue', vendorId, error);
      }
      // Granting access is a sensitive operation (ACC-6): it needs a recent authentication.
      requireRecentAuthentication(principal, ctx);
      return reply.status(201).send(await issue(request, vendorId));
    },
  );

  app.get(
    '/v1/orgs/:vendorId/access-keys',
    {
      onRequest: ctx.authenticate,
      schema: {
        summary: "List the organisation's access keys (owners); secrets are never shown again",
        tags: ['organisations'],
        security: bearerSecurity,
        params: StrictObject({ vendorId: VendorId }),
        response: { 200: StrictObject({ items: Type.Array(KeyView) }), ...authenticatedErrors },
      },
    },
    async (request) => {
      const { vendorId } = request.params as { vendorId: string };
      authoriseOwner(principalOf(request), vendorId);
      return { items: (await keys.list(vendorId)).map(presentKey) };
    },
  );

  app.delete(
    '/v1/orgs/:vendorId/access-keys/:keyId',
    {
      onRequest: ctx.authenticate,
      schema: {
        summary: 'Revoke an access key (owners): its next request is refused',
        tags: ['organisations'],
        security: bearerSecurity,
        params: StrictObject({ vendorId: VendorId, keyId: KeyId }),
        response: { 204: Type.Null(), ...authenticatedErrors },
      },
    },
    async (request, reply) => {
      const { vendorId, keyId } = request.params as { vendorId: string; keyId: string };
      try {
        authoriseOwner(principalOf(request), vendorId);
      } catch (error) {
        return denied(request, 'operator-key.revoke', vendorId, error);
      }
      if (!(await keys.revoke(vendorId, keyId))) throw new CastellanError('ERR_ACCESS_KEY_NOT_FOUND');
      await ctx.audit(request, { type: 'operator-key.revoke', tenant: vendorId, target: keyId });
      return reply.status(204).send();
    },
  );
}
