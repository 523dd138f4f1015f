// Auditor API: entries (filtered, tenant-isolated), signed checkpoints, the verification key, and
// inclusion / consistency proofs (RFC 9162) so an outside party can check what it was shown.
import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import { assertCan, can, defaultTenant } from '../accounts/index.ts';
import { CastellanError } from '../errors/index.ts';
import {
  type AuthenticateHook,
  authenticatedErrors,
  bearerSecurity,
  principalOf,
  StrictObject,
} from '../http/index.ts';
import type { AuditLog } from './audit-log.ts';
import type { Checkpoint } from './checkpoint-signer.ts';

export interface AuditRoutesOptions {
  audit: AuditLog;
  authenticate: AuthenticateHook;
}

const CheckpointView = StrictObject({
  treeSize: Type.Integer(),
  rootHash: Type.String({ description: 'hex SHA-256 Merkle tree head (RFC 9162)' }),
  time: Type.Integer(),
  kind: Type.String(),
  prunedBefore: Type.Integer(),
  prefix: Type.Array(Type.String()),
  keyId: Type.String(),
  signature: Type.String({ description: 'base64 Ed25519 signature over the checkpoint note' }),
});

const EntryView = StrictObject({
  seq: Type.Integer(),
  time: Type.Integer(),
  actor: StrictObject({ type: Type.String(), id: Type.String() }),
  tenant: Type.Union([Type.String(), Type.Null()]),
  type: Type.String(),
  target: Type.Union([Type.String(), Type.Null()]),
  result: Type.String(),
  sourceIp: Type.Union([Type.String(), Type.Null()], { description: 'administrators only, while the day key exists' }),
  details: Type.Object({}, { additionalProperties: true }),
});

const presentCheckpoint = (c: Checkpoint) => ({ ...c });
const errorRef = { $ref: 'ErrorResponse#' } as const;

export async function auditRoutes(app: FastifyInstance, { audit, authenticate }: AuditRoutesOptions) {
  app.get(
    '/v1/audit/entries',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Audit entries in log order; vendors see only their own tenant',
        tags: ['audit'],
        security: bearerSecurity,
        querystring: StrictObject({
          limit: Type.Integer({ minimum: 1, maximum: 1000, default: 100 }),
          afterSeq: Type.Optional(Type.Integer({ minimum: -1 })),
          from: Type.Optional(Type.Integer({ minimum: 0, description: 'time ≥ (ms since epoch)' })),
          to: Type.Optional(Type.Integer({ minimum: 0, description: 'time < (ms since epoch)' })),
          tenant: Type.Optional(Type.String({ maxLength: 64 })),
          actorType: Type.Optional(Type.String({ maxLength: 32 })),
          actorId: Type.Optional(Type.String({ maxLength: 128 })),
          type: Type.Optional(Type.String({ maxLength: 64 })),
          target: Type.Optional(Type.String({ maxLength: 128 })),
          result: Type.Optional(Type.Union([Type.Literal('success'), Type.Literal('failure'), Type.Literal('denied')])),
        }),
        response: {
          200: StrictObject({ items: Type.Array(EntryView), nextAfterSeq: Type.Union([Type.Integer(), Type.Null()]) }),
          ...authenticatedErrors,
        },
      },
    },
    async (request) => {
      const principal = principalOf(request);
      const q = request.query as Record<string, string | number | undefined> & { limit: number };
      const all = can(principal, 'audit.read-all');
      // Tenant isolation: an operator reads its own tenant (naming another is refused); a person names
      // one of their organisations (`tenant`) and the policy checks their role in it; staff read all.
      const tenant = (q.tenant as string | undefined) ?? (all ? undefined : defaultTenant(principal));
      assertCan(principal, 'audit.read', { vendorId: tenant });
      const items = await audit.query({
        ...q,
        ...(tenant === undefined ? {} : { tenant }),
        limit: q.limit,
      });
      return {
        items: items.map((e) => ({ ...e, sourceIp: all ? e.sourceIp : null })),
        nextAfterSeq: items.length === q.limit ? items.at(-1)!.seq : null,
      };
    },
  );

  app.get(
    '/v1/audit/public-key',
    {
      schema: {
        summary: 'The Ed25519 key that signs audit checkpoints',
        tags: ['audit'],
        response: {
          200: StrictObject({
            algorithm: Type.String(),
            keyId: Type.String(),
            publicKey: Type.String({ description: 'base64, raw 32 bytes' }),
          }),
        },
      },
    },
    async () => ({ algorithm: 'Ed25519', keyId: audit.signer.keyId, publicKey: audit.publicKeyRaw.toString('base64') }),
  );

  app.get(
    '/v1/audit/checkpoints/latest',
    {
      onRequest: authenticate,
      schema: {
        summary: 'The newest signed checkpoint',
        tags: ['audit'],
        security: bearerSecurity,
        response: { 200: CheckpointView, ...authenticatedErrors },
      },
    },
    async (request) => {
      const principal = principalOf(request);
      assertCan(principal, 'audit.read', { vendorId: principal.kind === 'operator' ? principal.id : undefined });
      const latest = await audit.latestCheckpoint();
      if (!latest) throw new CastellanError('ERR_AUDIT_NO_CHECKPOINT');
      return presentCheckpoint(latest);
    },
  );

  app.post(
    '/v1/audit/checkpoints',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Write a signed checkpoint now (administrators)',
        tags: ['audit'],
        security: bearerSecurity,
        response: { 201: CheckpointView, ...authenticatedErrors },
      },
    },
    async (request, reply) => {
      assertCan(principalOf(request), 'audit.checkpoint');
      return reply.status(201).send(presentCheckpoint(await audit.checkpoint('on-demand')));
    },
  );

  app.get(
    '/v1/audit/proofs/inclusion',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Inclusion proof of one entry in the tree of treeSize entries',
        tags: ['audit'],
        security: bearerSecurity,
        querystring: StrictObject({ seq: Type.Integer({ minimum: 0 }), treeSize: Type.Integer({ minimum: 1 }) }),
        response: {
          200: StrictObject({
            seq: Type.Integer(),
            treeSize: Type.Integer(),
            leafHash: Type.String(),
            proof: Type.Array(Type.String()),
          }),
          ...authenticatedErrors,
        },
      },
    },
    async (request) => {
      const principal = principalOf(request);
      const { seq, treeSize } = request.query as { seq: number; treeSize: number };
      if (!can(principal, 'audit.read-all')) {
        // An operator proves only its own tenant's entries, and only with the audit:read scope.
        const tenant = defaultTenant(principal);
        const [entry] =
          tenant && can(principal, 'audit.read', { vendorId: tenant })
            ? await audit.query({ afterSeq: seq - 1, limit: 1, tenant })
            : [];
        if (!entry || entry.seq !== seq) throw new CastellanError('ERR_AUDIT_ENTRY_NOT_FOUND');
      }
      try {
        const { leafHash, proof } = await audit.inclusionProof(seq, treeSize);
        return { seq, treeSize, leafHash: leafHash.toString('hex'), proof: proof.map((h) => h.toString('hex')) };
      } catch (error) {
        if (error instanceof RangeError)
          throw new CastellanError('ERR_AUDIT_PROOF_UNAVAILABLE', {
            message: `No such proof in this log: ${error.message}`,
          });
        throw error;
      }
    },
  );

  app.get(
    '/v1/audit/proofs/consistency',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Consistency proof between two tree sizes',
        tags: ['audit'],
        security: bearerSecurity,
        querystring: StrictObject({ first: Type.Integer({ minimum: 1 }), second: Type.Integer({ minimum: 1 }) }),
        response: {
          200: StrictObject({ first: Type.Integer(), second: Type.Integer(), proof: Type.Array(Type.String()) }),
          ...authenticatedErrors,
          400: errorRef,
        },
      },
    },
    async (request) => {
      const principal = principalOf(request);
      assertCan(principal, 'audit.read', { vendorId: principal.kind === 'operator' ? principal.id : undefined });
      const { first, second } = request.query as { first: number; second: number };
      try {
        return { first, second, proof: (await audit.consistencyProof(first, second)).map((h) => h.toString('hex')) };
      } catch (error) {
        if (error instanceof RangeError)
          throw new CastellanError('ERR_AUDIT_PROOF_UNAVAILABLE', {
            message: `No such proof in this log: ${error.message}`,
          });
        throw error;
      }
    },
  );
}
