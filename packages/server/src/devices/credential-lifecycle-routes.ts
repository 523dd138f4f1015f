// Credential lifecycle routes (DEV-8) for vendors (operators with devices:write, organisation owners):
// rotate the secret, revoke a certificate, a vendor CA or every credential, disable/enable,
// decommission. Each is audited; a device of another tenant answers like a missing one (ORG-3).
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { Type } from 'typebox';
import type { Principal } from '../accounts/index.ts';
import {
  type AuthenticateHook,
  authenticatedErrors,
  bearerSecurity,
  principalOf,
  type RecordAudit,
  StrictObject,
} from '../http/index.ts';
import { vendorFor } from './certificates/device-certificates-routes.ts';
import { deviceFor } from './device-route-params.ts';
import type { CredentialLifecycle } from './credential-lifecycle.ts';
import type { DevicesService } from './devices-service.ts';

export interface CredentialLifecycleRoutesOptions {
  devices: DevicesService;
  lifecycle: CredentialLifecycle;
  authenticate: AuthenticateHook;
  audit: RecordAudit;
  /** Step-up for people (ACC-6): throws unless they authenticated recently. Operators pass. */
  requireRecentAuthentication: (principal: Principal) => void;
}

const DeviceIdParam = Type.String({ minLength: 1, maxLength: 64 });
const Errors = { ...authenticatedErrors, 409: { $ref: 'ErrorResponse#' } };
/** RFC 5280 5.3.1 reasons, in the API's spelling. */
const RevokeReason = Type.Union(
  [
    Type.Literal('unspecified'),
    Type.Literal('key-compromise'),
    Type.Literal('ca-compromise'),
    Type.Literal('superseded'),
    Type.Literal('cessation-of-operation'),
    Type.Literal('privilege-withdrawn'),
  ],
  { default: 'unspecified' },
);
const ReasonBody = StrictObject({ reason: Type.Optional(RevokeReason) });
/** The reason body is optional: a request without a body is validated as `{}`. */
const emptyBody = async (request: FastifyRequest) => {
  request.body ??= {};
};
const StatusView = StrictObject({
  id: Type.String(),
  status: Type.String(),
  previousStatus: Type.String(),
  disconnected: Type.Integer({ description: 'live connections of the answering process dropped at once' }),
});

export async function credentialLifecycleRoutes(
  app: FastifyInstance,
  { devices, lifecycle, authenticate, audit, requireRecentAuthentication }: CredentialLifecycleRoutesOptions,
) {
  app.post(
    '/v1/devices/:deviceId/credentials/rotate',
    {
      onRequest: authenticate,
      schema: {
        summary:
          "Rotate a device's secret: the new one is shown only in this response; the old one and the device tokens stop working",
        tags: ['devices'],
        security: bearerSecurity,
        params: StrictObject({ deviceId: DeviceIdParam }),
        response: {
          200: StrictObject({ id: Type.String(), secret: Type.String(), disconnected: Type.Integer() }),
          ...Errors,
        },
      },
    },
    async (request) => {
      const device = await deviceFor(request, devices, 'device.credentials.manage');
      requireRecentAuthentication(principalOf(request));
      const { secret, tokens, disconnected } = await lifecycle.rotateSecret(device);
      await audit(request, {
        type: 'device.credentials.rotate',
        tenant: device.vendorId,
        target: device.id,
        details: { tokens, disconnected },
      });
      return { id: device.id, secret, disconnected };
    },
  );

  app.post(
    '/v1/devices/:deviceId/certificates/:serial/revoke',
    {
      onRequest: authenticate,
      preValidation: emptyBody,
      schema: {
        summary: 'Revoke a device certificate (or SM2 key) by serial: refused at connect, a live connection is dropped',
        tags: ['devices'],
        security: bearerSecurity,
        params: StrictObject({
          deviceId: DeviceIdParam,
          serial: Type.String({ pattern: '^[0-9a-fA-F]{1,40}$', description: 'hex, as listed' }),
        }),
        body: ReasonBody,
        response: {
          200: StrictObject({
            id: Type.String(),
            serial: Type.String(),
            revoked: Type.Integer(),
            disconnected: Type.Integer(),
          }),
          ...Errors,
        },
      },
    },
    async (request) => {
      const device = await deviceFor(request, devices, 'device.credentials.manage');
      const { serial } = request.params as { serial: string };
      const reason = (request.body as { reason?: string } | undefined)?.reason ?? 'unspecified';
      const { revoked, disconnected } = await lifecycle.revokeCertificate(device, serial, reason);
      await audit(request, {
        type: 'device.certificate.revoke',
        tenant: device.vendorId,
        target: device.id,
        details: { serial: revoked[0]!.serial, fingerprints: revoked.map((c) => c.fingerprint), reason, disconnected },
      });
      return { id: device.id, serial: revoked[0]!.serial, revoked: revoked.length, disconnected };
    },
  );

  app.post(
    '/v1/devices/:deviceId/credentials/revoke',
    {
      onRequest: authenticate,
      preValidation: emptyBody,
      schema: {
        summary: 'Revoke every credential of a device: secret destroyed, certificates, keys and device tokens revoked',
        tags: ['devices'],
        security: bearerSecurity,
        params: StrictObject({ deviceId: DeviceIdParam }),
        body: ReasonBody,
        response: {
          200: StrictObject({
            id: Type.String(),
            certificates: Type.Integer(),
            tokens: Type.Integer(),
            disconnected: Type.Integer(),
          }),
          ...Errors,
        },
      },
    },
    async (request) => {
      const device = await deviceFor(request, devices, 'device.credentials.manage');
      const reason = (request.body as { reason?: string } | undefined)?.reason ?? 'unspecified';
      const result = await lifecycle.revokeAll(device, reason);
      await audit(request, {
        type: 'device.credentials.revoke',
        tenant: device.vendorId,
        target: device.id,
        details: { reason, ...result },
      });
      return { id: device.id, ...result };
    },
  );

  for (const [action, enabled] of [
    ['disable', false],
    ['enable', true],
  ] as const) {
    app.post(
      `/v1/devices/:deviceId/${action}`,
      {
        onRequest: authenticate,
        schema: {
          summary: enabled
            ? 'Enable a disabled device: it may connect again'
            : 'Disable a device: refused at connect, a live connection is dropped',
          tags: ['devices'],
          security: bearerSecurity,
          params: StrictObject({ deviceId: DeviceIdParam }),
          response: { 200: StatusView, ...Errors },
        },
      },
      async (request) => {
        const device = await deviceFor(request, devices, 'device.credentials.manage');
        const change = await lifecycle.setEnabled(device, enabled);
        await audit(request, {
          type: `device.${action}`,
          tenant: device.vendorId,
          target: device.id,
          details: { previousStatus: change.previous, disconnected: change.disconnected },
        });
        return {
          id: device.id,
          status: change.status,
          previousStatus: change.previous,
          disconnected: change.disconnected,
        };
      },
    );
  }

  app.post(
    '/v1/devices/:deviceId/decommission',
    {
      onRequest: authenticate,
      preValidation: emptyBody,
      schema: {
        summary: 'Decommission a device for good: credentials destroyed, never connects again, its ID never reused',
        tags: ['devices'],
        security: bearerSecurity,
        params: StrictObject({ deviceId: DeviceIdParam }),
        body: ReasonBody,
        response: { 200: StatusView, ...Errors },
      },
    },
    async (request) => {
      const device = await deviceFor(request, devices, 'device.credentials.manage');
      requireRecentAuthentication(principalOf(request));
      const reason = (request.body as { reason?: string } | undefined)?.reason ?? 'cessation-of-operation';
      const change = await lifecycle.decommission(device, reason);
      await audit(request, {
        type: 'device.decommission',
        tenant: device.vendorId,
        target: device.id,
        details: {
          previousStatus: change.previous,
          reason,
          certificates: change.certificates,
          disconnected: change.disconnected,
        },
      });
      return {
        id: device.id,
        status: change.status,
        previousStatus: change.previous,
        disconnected: change.disconnected,
      };
    },
  );

  app.post(
    '/v1/vendors/:vendorId/device-cas/:caId/revoke',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Revoke a CA the vendor uploaded: every certificate it issued is refused, live connections dropped',
        tags: ['devices'],
        security: bearerSecurity,
        params: StrictObject({
          vendorId: Type.String({ minLength: 1, maxLength: 64, pattern: '^vnd_[A-Za-z0-9_-]{22}$' }),
          caId: Type.String({ minLength: 1, maxLength: 64, pattern: '^dca_[A-Za-z0-9_-]{22}$' }),
        }),
        response: {
          200: StrictObject({ id: Type.String(), devices: Type.Integer(), disconnected: Type.Integer() }),
          ...Errors,
        },
      },
    },
    async (request) => {
      const vendorId = vendorFor(request, 'device.credentials.manage');
      const { caId } = request.params as { caId: string };
      const result = await lifecycle.revokeCa(vendorId, caId);
      await audit(request, {
        type: 'device.ca.revoke',
        tenant: vendorId,
        target: caId,
        details: { devices: result.deviceIds.length, disconnected: result.disconnected },
      });
      return { id: caId, devices: result.deviceIds.length, disconnected: result.disconnected };
    },
  );
}
