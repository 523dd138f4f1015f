// Binding, sharing and unbinding routes for people (BIND-1, BIND-3, BIND-5). Every device route asks
// the bindings service (DeviceAccess.authorize); a refusal is ERR_DEVICE_NOT_FOUND, like a missing device.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { Type } from 'typebox';
import { type AccountsContext, requireRecentAuthentication, type UserPrincipal } from '../../accounts/index.ts';
import { CastellanError } from '../../errors/index.ts';
import {
  type AuthenticateHook,
  authenticatedErrors,
  bearerSecurity,
  principalOf,
  type RecordAudit,
  StrictObject,
} from '../../http/index.ts';
import type { BindingTokenView } from './binding-token-store.ts';
import type { BindingsService, Share, UserDevice } from './bindings-service.ts';
import { DeviceIdParam, deviceIdOf } from '../device-route-params.ts';

export interface BindingRoutesOptions {
  bindings: BindingsService;
  authenticate: AuthenticateHook;
  audit: RecordAudit;
  /** Step-up for sharing and unbinding (ACC-6: "sharing access" is a sensitive operation). */
  stepUp: Pick<AccountsContext, 'config' | 'now'>;
}

const errorRef = { $ref: 'ErrorResponse#' } as const;
const TokenId = Type.String({ minLength: 1, maxLength: 64, pattern: '^bnt_[A-Za-z0-9_-]{22}$' });
const ShareId = Type.String({ minLength: 1, maxLength: 64, pattern: '^shr_[A-Za-z0-9_-]{22}$' });
const UserId = Type.String({ minLength: 1, maxLength: 64, pattern: '^usr_[A-Za-z0-9_-]{22}$' });
const ShareRoleSchema = Type.Union([Type.Literal('admin'), Type.Literal('member'), Type.Literal('guest')]);
const NullableTime = Type.Union([Type.Integer(), Type.Null()]);

const TokenView = StrictObject({
  id: Type.String(),
  status: Type.Union([Type.Literal('pending'), Type.Literal('bound'), Type.Literal('expired')]),
  createdAt: Type.Integer(),
  expiresAt: Type.Integer(),
  usedAt: NullableTime,
  deviceId: Type.Union([Type.String(), Type.Null()], { description: 'the device bound with this token' }),
});

const ShareView = StrictObject({
  id: Type.String(),
  deviceId: Type.String(),
  userId: Type.String(),
  role: ShareRoleSchema,
  createdBy: Type.String(),
  createdAt: Type.Integer(),
  expiresAt: NullableTime,
});

const MyDeviceView = StrictObject({
  id: Type.String(),
  vendorId: Type.String(),
  productId: Type.String(),
  status: Type.String(),
  role: Type.Union([Type.Literal('owner'), ShareRoleSchema]),
  since: Type.Integer({ description: 'bound (owner) or shared at' }),
  expiresAt: Type.Union([Type.Integer(), Type.Null()], { description: 'end of the share; null: none' }),
});

const presentToken = (t: BindingTokenView) => ({
  id: t.id,
  status: t.status,
  createdAt: t.createdAt,
  expiresAt: t.expiresAt,
  usedAt: t.usedAt,
  deviceId: t.deviceId,
});
const presentShare = (s: Share) => ({
  id: s.id,
  deviceId: s.deviceId,
  userId: s.userId,
  role: s.role,
  createdBy: s.createdBy,
  createdAt: s.createdAt,
  expiresAt: s.expiresAt,
});
const presentMyDevice = (d: UserDevice) => ({
  id: d.device.id,
  vendorId: d.device.vendorId,
  productId: d.device.productId,
  status: d.device.status,
  role: d.role,
  since: d.since,
  expiresAt: d.expiresAt,
});

/** Binding tokens and "my devices" are for people only. */
function personOf(request: FastifyRequest): UserPrincipal {
  const principal = principalOf(request);
  if (principal.kind !== 'user') throw new CastellanError('ERR_AUTH_FORBIDDEN');
  return principal;
}

export async function bindingRoutes(
  app: FastifyInstance,
  { bindings, authenticate, audit, stepUp }: BindingRoutesOptions,
) {
  app.post(
    '/v1/binding-tokens',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Get a one-time binding token for pairing a device (shown once; single use; short-lived)',
        tags: ['bindings'],
        security: bearerSecurity,
        response: {
          201: StrictObject({
            id: Type.String({ description: 'poll GET /v1/binding-tokens/:tokenId for the outcome' }),
            token: Type.String({ description: 'goes to the device inside the encrypted provisioning payload' }),
            expiresAt: Type.Integer(),
          }),
          ...authenticatedErrors,
          429: errorRef,
        },
      },
    },
    async (request, reply) => {
      const person = personOf(request);
      const issued = await bindings.issueToken(person.id);
      await audit(request, {
        type: 'binding-token.issue',
        target: issued.id,
        details: { expiresAt: issued.expiresAt },
      });
      return reply.status(201).send({ id: issued.id, token: issued.token, expiresAt: issued.expiresAt });
    },
  );

  app.get(
    '/v1/binding-tokens/:tokenId',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Status of one of my binding tokens: pending, bound (with the device) or expired',
        tags: ['bindings'],
        security: bearerSecurity,
        params: StrictObject({ tokenId: TokenId }),
        response: { 200: TokenView, ...authenticatedErrors },
      },
    },
    async (request) => {
      const person = personOf(request);
      const { tokenId } = request.params as { tokenId: string };
      try {
        return presentToken(await bindings.tokenStatus(person.id, tokenId));
      } catch (error) {
        // Another person's token (or none): audited, answered like a missing one.
        await audit(request, { type: 'binding-token.read', target: tokenId, result: 'denied' });
        throw error;
      }
    },
  );

  app.delete(
    '/v1/binding-tokens/:tokenId',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Withdraw one of my unused binding tokens',
        tags: ['bindings'],
        security: bearerSecurity,
        params: StrictObject({ tokenId: TokenId }),
        response: { 204: Type.Null(), ...authenticatedErrors },
      },
    },
    async (request, reply) => {
      const person = personOf(request);
      const { tokenId } = request.params as { tokenId: string };
      try {
        await bindings.cancelToken(person.id, tokenId);
      } catch (error) {
        await audit(request, { type: 'binding-token.cancel', target: tokenId, result: 'denied' });
        throw error;
      }
      await audit(request, { type: 'binding-token.cancel', target: tokenId });
      return reply.status(204).send();
    },
  );

  app.get(
    '/v1/me/devices',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Devices I own or that are shared with me, with my role',
        tags: ['bindings'],
        security: bearerSecurity,
        response: { 200: StrictObject({ items: Type.Array(MyDeviceView) }), ...authenticatedErrors },
      },
    },
    async (request) => {
      const person = personOf(request);
      return { items: (await bindings.listUserDevices(person.id)).map(presentMyDevice) };
    },
  );

  app.post(
    '/v1/devices/:deviceId/shares',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Share a device with another person (owner: any role; admin: member or guest); needs step-up',
        tags: ['bindings'],
        security: bearerSecurity,
        params: StrictObject({ deviceId: DeviceIdParam }),
        body: StrictObject({
          email: Type.Optional(Type.String({ minLength: 3, maxLength: 254 })),
          userId: Type.Optional(UserId),
          role: ShareRoleSchema,
          expiresAt: Type.Optional(Type.Integer({ minimum: 0, description: 'ms since the epoch; omitted: no end' })),
        }),
        response: { 201: ShareView, ...authenticatedErrors },
      },
    },
    async (request, reply) => {
      const deviceId = deviceIdOf(request);
      const principal = principalOf(request);
      const device = await bindings.authorize(principal, deviceId, 'device.share');
      const person = principal as UserPrincipal;
      requireRecentAuthentication(person, stepUp);
      const body = request.body as { email?: string; userId?: string; role: Share['role']; expiresAt?: number };
      if ((body.email === undefined) === (body.userId === undefined)) {
        throw new CastellanError('ERR_VALIDATION_FAILED', { message: 'Give exactly one of email or userId' });
      }
      const invitee = body.email !== undefined ? { email: body.email } : { userId: body.userId! };
      let share: Share;
      try {
        share = await bindings.share(person.id, device, {
          invitee,
          role: body.role,
          expiresAt: body.expiresAt ?? null,
        });
      } catch (error) {
        await audit(request, {
          type: 'device.share',
          tenant: device.vendorId,
          target: device.id,
          result: 'denied',
          details: { role: body.role, code: (error as CastellanError).code },
        });
        throw error;
      }
      await audit(request, {
        type: 'device.share',
        tenant: device.vendorId,
        target: device.id,
        details: { shareId: share.id, userId: share.userId, role: share.role, expiresAt: share.expiresAt },
      });
      return reply.status(201).send(presentShare(share));
    },
  );

  app.get(
    '/v1/devices/:deviceId/shares',
    {
      onRequest: authenticate,
      schema: {
        summary: "A device's current shares (owner and admins)",
        tags: ['bindings'],
        security: bearerSecurity,
        params: StrictObject({ deviceId: DeviceIdParam }),
        response: { 200: StrictObject({ items: Type.Array(ShareView) }), ...authenticatedErrors },
      },
    },
    async (request) => {
      const device = await bindings.authorize(principalOf(request), deviceIdOf(request), 'device.share');
      return { items: (await bindings.listShares(device.id)).map(presentShare) };
    },
  );

  app.delete(
    '/v1/devices/:deviceId/shares/:shareId',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Revoke a share, effective immediately (owner; admins for member/guest; anyone their own)',
        tags: ['bindings'],
        security: bearerSecurity,
        params: StrictObject({ deviceId: DeviceIdParam, shareId: ShareId }),
        response: { 204: Type.Null(), ...authenticatedErrors },
      },
    },
    async (request, reply) => {
      const deviceId = deviceIdOf(request);
      const { shareId } = request.params as { shareId: string };
      const { share: revoked, device } = await bindings.revokeShare(principalOf(request), deviceId, shareId);
      await audit(request, {
        type: 'device.share.revoke',
        tenant: device.vendorId,
        target: deviceId,
        details: { shareId: revoked.id, userId: revoked.userId, role: revoked.role },
      });
      return reply.status(204).send();
    },
  );

  app.delete(
    '/v1/devices/:deviceId/binding',
    {
      onRequest: authenticate,
      schema: {
        summary:
          'Unbind my device: wipes the data held about it for me (telemetry, shadow, passcodes, shares); needs step-up',
        tags: ['bindings'],
        security: bearerSecurity,
        params: StrictObject({ deviceId: DeviceIdParam }),
        response: { 200: StrictObject({ unbound: Type.Boolean() }), ...authenticatedErrors, 503: errorRef },
      },
    },
    async (request) => {
      const principal = principalOf(request);
      const device = await bindings.authorize(principal, deviceIdOf(request), 'device.unbind');
      requireRecentAuthentication(principal, stepUp);
      // The service audits the unbind (success or a failed wiper) itself, as the device path does.
      const unbound = await bindings.unbind(device, { type: 'user', id: principal.id, sourceIp: request.ip }, 'owner');
      return { unbound };
    },
  );
}
