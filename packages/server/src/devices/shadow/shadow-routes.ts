// Shadow routes (CHAN-7): read the shadow (device.view), change desired state (device.control). Every
// request asks DeviceAccess; a refusal is ERR_DEVICE_NOT_FOUND, exactly like a missing device (BIND-2).
import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import {
  type AuthenticateHook,
  authenticatedErrors,
  bearerSecurity,
  principalOf,
  type RecordAudit,
  StrictObject,
} from '../../http/index.ts';
import type { DeviceAccess } from '../device-access.ts';
import { DeviceIdParam, deviceIdOf } from '../device-route-params.ts';
import type { Shadow, ShadowService } from './shadow-service.ts';

export interface ShadowRoutesOptions {
  shadows: ShadowService;
  access: DeviceAccess;
  authenticate: AuthenticateHook;
  audit: RecordAudit;
}

const errorRef = { $ref: 'ErrorResponse#' } as const;
const AnyObject = (description: string) => Type.Object({}, { additionalProperties: true, description });
const Stamps = Type.Record(Type.String(), Type.Integer());
const NullableTime = Type.Union([Type.Integer(), Type.Null()]);

const ShadowView = StrictObject({
  deviceId: Type.String(),
  desired: AnyObject('what apps and operators want the device to be'),
  reported: AnyObject('what the device last reported'),
  delta: AnyObject('desired keys whose value the device has not reported yet'),
  version: Type.Integer({ description: 'grows on every change; 0 when the device has no shadow' }),
  desiredVersion: Type.Integer({ description: 'the version of the last desired change' }),
  metadata: StrictObject(
    { desired: Stamps, reported: Stamps },
    { description: 'when each top-level key last changed (ms since the epoch)' },
  ),
  desiredUpdatedAt: NullableTime,
  reportedUpdatedAt: NullableTime,
  staleReports: Type.Integer({ description: 'device reports ignored because a newer desired state had crossed them' }),
});

const present = (s: Shadow) => ({
  deviceId: s.deviceId,
  desired: s.desired,
  reported: s.reported,
  delta: s.delta,
  version: s.version,
  desiredVersion: s.desiredVersion,
  metadata: { desired: s.metadata.desired, reported: s.metadata.reported },
  desiredUpdatedAt: s.desiredUpdatedAt,
  reportedUpdatedAt: s.reportedUpdatedAt,
  staleReports: s.staleReports,
});

export async function shadowRoutes(
  app: FastifyInstance,
  { shadows, access, authenticate, audit }: ShadowRoutesOptions,
) {
  app.get(
    '/v1/devices/:deviceId/shadow',
    {
      onRequest: authenticate,
      schema: {
        summary: "A device's shadow: desired, reported, delta, version",
        tags: ['devices'],
        security: bearerSecurity,
        params: StrictObject({ deviceId: DeviceIdParam }),
        response: { 200: ShadowView, ...authenticatedErrors },
      },
    },
    async (request) => {
      const device = await access.authorize(principalOf(request), deviceIdOf(request), 'device.view');
      return present(await shadows.get(device.id));
    },
  );

  app.put(
    '/v1/devices/:deviceId/shadow/desired',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Change desired state (merged; null deletes a key); published to the device, retained',
        tags: ['devices'],
        security: bearerSecurity,
        params: StrictObject({ deviceId: DeviceIdParam }),
        body: StrictObject({
          state: AnyObject('keys to set (objects merge, null deletes); at most 8 KiB and 4 levels deep'),
          expectedVersion: Type.Optional(
            Type.Integer({
              minimum: 0,
              description: 'apply only if the shadow is still at this version (0: no shadow yet); else 409',
            }),
          ),
        }),
        response: { 200: ShadowView, ...authenticatedErrors, 409: errorRef },
      },
    },
    async (request) => {
      const device = await access.authorize(principalOf(request), deviceIdOf(request), 'device.control');
      const { state, expectedVersion } = request.body as { state: Record<string, unknown>; expectedVersion?: number };
      const shadow = await shadows.setDesired(device, state, expectedVersion);
      // Keys only: values may describe the household (PRIV-1).
      await audit(request, {
        type: 'device.shadow.desired',
        tenant: device.vendorId,
        target: device.id,
        details: { version: shadow.version, keys: Object.keys(state).slice(0, 50) },
      });
      return present(shadow);
    },
  );
}
