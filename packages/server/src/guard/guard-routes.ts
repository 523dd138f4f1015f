// The guard in the HTTP path (limiter first in the checklist: limiter → authenticate → validate →
// authorise), and the routes that show alerts and lift blocks and quarantines.
import { isIP } from 'node:net';
import { DeviceIdError, parseDeviceId } from '@castellan/protocol';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { Type } from 'typebox';
import { assertCan, can, defaultTenant } from '../accounts/index.ts';
import type { AuditEvent } from '../audit/index.ts';
import type { DevicesService } from '../devices/index.ts';
import { CastellanError } from '../errors/index.ts';
import {
  type AuthenticateHook,
  authenticatedErrors,
  bearerSecurity,
  principalOf,
  type RecordAudit,
  StrictObject,
} from '../http/index.ts';
import { normaliseIp } from './address-filter.ts';
import type { GuardService } from './guard-service.ts';
import { refuseWithRetryAfter } from '../http/retry-after.ts';

const WRITE_METHODS = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

const tooMany = (reply: FastifyReply, retryAfterMs: number): CastellanError =>
  refuseWithRetryAfter(reply, retryAfterMs, 'ERR_RATE_LIMITED');

/**
 * Installs the guard's hooks on the root instance: blocked IPs and the per-IP limit before anything
 * else (even before authentication), the per-credential and write limits once the caller is known,
 * and failed or malformed requests fed to intrusion detection.
 */
export function guardHttp(app: FastifyInstance, guard: GuardService, record: (event: AuditEvent) => void): void {
  app.addHook('onRequest', async (request, reply) => {
    const ip = normaliseIp(request.ip);
    if (await guard.blocks.isBlocked(ip)) throw new CastellanError('ERR_GUARD_IP_BLOCKED');
    const outcome = await guard.httpPerIp(ip);
    if (!outcome.allowed) {
      guard.auditSampled(`http-ip:${ip}`, {
        actor: { type: 'system', id: 'guard' },
        type: 'guard.rate-limited',
        target: ip,
        sourceIp: ip,
        result: 'denied',
        details: { dimension: 'http-ip' },
      });
      throw tooMany(reply, outcome.retryAfterMs);
    }
  });
  // preValidation runs after the route's authentication (onRequest) and before schema validation.
  app.addHook('preValidation', async (request, reply) => {
    const principal = request.principal;
    if (!principal) return;
    const outcome = await guard.httpPerCredential(principal.credentialId, WRITE_METHODS.has(request.method));
    if (!outcome.allowed) {
      guard.auditSampled(`http-credential:${principal.credentialId}`, {
        actor: { type: principal.kind, id: principal.id },
        tenant: principal.kind === 'operator' ? principal.id : null,
        type: 'guard.rate-limited',
        target: principal.credentialId,
        sourceIp: normaliseIp(request.ip),
        result: 'denied',
        details: { dimension: WRITE_METHODS.has(request.method) ? 'http-write' : 'http-credential' },
      });
      throw tooMany(reply, outcome.retryAfterMs);
    }
  });
  app.addHook('onResponse', async (request, reply) => {
    const ip = normaliseIp(request.ip);
    const status = reply.statusCode;
    if (status === 401) {
      record({
        actor: { type: 'system', id: 'anonymous' },
        type: 'api.auth-failure',
        target: request.routeOptions.url ?? null,
        sourceIp: ip,
        result: 'failure',
        details: { method: request.method, requestId: request.id },
      });
      await guard.authFailure(ip, null);
    } else if (status === 400 || status === 404 || status === 413 || status === 415) {
      await guard.invalidRequest(ip, `http ${status}`);
    }
  });
}

export interface GuardRoutesOptions {
  guard: GuardService;
  devices: DevicesService;
  authenticate: AuthenticateHook;
  audit: RecordAudit;
}

const AlertView = StrictObject({
  id: Type.String(),
  time: Type.Integer(),
  kind: Type.String(),
  sourceIp: Type.Union([Type.String(), Type.Null()], {
    description: 'administrators only, during the security-retention period',
  }),
  target: Type.String(),
  tenant: Type.Union([Type.String(), Type.Null()]),
  response: Type.String(),
  details: Type.Object({}, { additionalProperties: true }),
});

function deviceIdFrom(request: FastifyRequest): string {
  const raw = (request.params as { deviceId: string }).deviceId;
  try {
    parseDeviceId(raw);
    return raw;
  } catch (error) {
    if (error instanceof DeviceIdError)
      throw new CastellanError('ERR_DEVICE_ID_INVALID', { message: `Device ID is malformed: ${error.message}` });
    throw error;
  }
}

export async function guardRoutes(app: FastifyInstance, options: GuardRoutesOptions) {
  const { guard, devices, authenticate, audit } = options;

  app.get(
    '/v1/guard/alerts',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Intrusion-detection alerts, newest first; vendors see their own devices only',
        tags: ['guard'],
        security: bearerSecurity,
        querystring: StrictObject({
          limit: Type.Integer({ minimum: 1, maximum: 1000, default: 100 }),
          beforeTime: Type.Optional(Type.Integer({ minimum: 0 })),
          vendorId: Type.Optional(
            Type.String({ maxLength: 64, description: "People: the organisation whose devices' alerts to list" }),
          ),
        }),
        response: { 200: StrictObject({ items: Type.Array(AlertView) }), ...authenticatedErrors },
      },
    },
    async (request) => {
      const principal = principalOf(request);
      const all = can(principal, 'guard.alerts.read-all');
      const { limit, beforeTime, vendorId } = request.query as {
        limit: number;
        beforeTime?: number;
        vendorId?: string;
      };
      // An operator sees its own tenant (naming another is refused); a person names an organisation and
      // the policy checks the role there.
      const tenant = all ? undefined : (vendorId ?? defaultTenant(principal));
      if (!all) assertCan(principal, 'guard.alerts.read', { vendorId: tenant });
      const alerts = await guard.listAlerts({
        limit,
        ...(beforeTime ? { beforeTime } : {}),
        ...(tenant === undefined ? {} : { tenant }),
      });
      return { items: alerts.map((a) => ({ ...a, sourceIp: all ? a.sourceIp : null })) };
    },
  );

  app.get(
    '/v1/guard/blocks',
    {
      onRequest: authenticate,
      schema: {
        summary: 'IP addresses blocked by this process (administrators)',
        tags: ['guard'],
        security: bearerSecurity,
        response: {
          200: StrictObject({ items: Type.Array(StrictObject({ ip: Type.String(), until: Type.Integer() })) }),
          ...authenticatedErrors,
        },
      },
    },
    async (request) => {
      assertCan(principalOf(request), 'guard.blocks.manage');
      return { items: guard.blocks.list() };
    },
  );

  app.delete(
    '/v1/guard/blocks/:ip',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Lift a block (administrators)',
        tags: ['guard'],
        security: bearerSecurity,
        params: StrictObject({ ip: Type.String({ minLength: 2, maxLength: 45 }) }),
        response: { 204: Type.Null(), ...authenticatedErrors },
      },
    },
    async (request, reply) => {
      assertCan(principalOf(request), 'guard.blocks.manage');
      const ip = normaliseIp((request.params as { ip: string }).ip);
      if (isIP(ip) === 0)
        throw new CastellanError('ERR_VALIDATION_FAILED', { message: 'params/ip must be an IP address' });
      if (!(await guard.blocks.unblock(ip))) throw new CastellanError('ERR_GUARD_BLOCK_NOT_FOUND');
      await audit(request, { type: 'guard.unblock', target: ip });
      return reply.status(204).send();
    },
  );

  app.get(
    '/v1/devices/:deviceId/risk',
    {
      onRequest: authenticate,
      schema: {
        summary: "A device's risk score (0–100) from its recent detections and status",
        tags: ['guard'],
        security: bearerSecurity,
        params: StrictObject({ deviceId: Type.String({ minLength: 1, maxLength: 64 }) }),
        response: {
          200: StrictObject({
            deviceId: Type.String(),
            score: Type.Integer({ minimum: 0, maximum: 100 }),
            factors: Type.Array(StrictObject({ kind: Type.String(), count: Type.Integer(), weight: Type.Integer() })),
          }),
          ...authenticatedErrors,
        },
      },
    },
    async (request) => {
      const device = await devices.getDevice(deviceIdFrom(request));
      if (!device || !can(principalOf(request), 'guard.alerts.read', { vendorId: device.vendorId })) {
        throw new CastellanError('ERR_DEVICE_NOT_FOUND');
      }
      return { deviceId: device.id, ...(await guard.deviceRisk(device.id, device.status)) };
    },
  );

  app.post(
    '/v1/devices/:deviceId/release',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Release a quarantined device: it may connect again',
        tags: ['guard'],
        security: bearerSecurity,
        params: StrictObject({ deviceId: Type.String({ minLength: 1, maxLength: 64 }) }),
        response: {
          200: StrictObject({ id: Type.String(), status: Type.String() }),
          ...authenticatedErrors,
          409: { $ref: 'ErrorResponse#' },
        },
      },
    },
    async (request) => {
      const device = await devices.getDevice(deviceIdFrom(request));
      if (!device || !can(principalOf(request), 'device.release', { vendorId: device.vendorId })) {
        throw new CastellanError('ERR_DEVICE_NOT_FOUND');
      }
      if (device.status !== 'quarantined') throw new CastellanError('ERR_DEVICE_NOT_QUARANTINED');
      await devices.setStatus(device.id, 'active');
      await audit(request, { type: 'device.release', tenant: device.vendorId, target: device.id });
      return { id: device.id, status: 'active' };
    },
  );
}
