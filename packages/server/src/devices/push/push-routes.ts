// Push routes (BIND-4): Server-Sent Events over the HTTPS API. People subscribe to all the devices they
// own or share (`GET /v1/me/events`), anyone allowed to read one device to that device
// (`GET /v1/devices/:deviceId/events/stream`: vendors by tenant rules, people by role). Browsers'
// EventSource authenticates with the session cookie; apps send the bearer token.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { Type } from 'typebox';
import { can } from '../../accounts/index.ts';
import { CastellanError } from '../../errors/index.ts';
import {
  type AuthenticateHook,
  authenticatedErrors,
  bearerSecurity,
  principalOf,
  type RequestPrincipal,
  StrictObject,
} from '../../http/index.ts';
import type { DeviceAccess } from '../device-access.ts';
import type { DevicesService } from '../devices-service.ts';
import { checkedDeviceId, deviceIdOf } from '../device-route-params.ts';
import type { PushHub } from './push-hub.ts';
import { DEFAULT_PUSH_TYPES, PUSH_EVENT_TYPES, type PushEventType } from './push-events.ts';
import type { PushScope } from './push-stream.ts';

export interface PushRoutesOptions {
  hub: PushHub;
  devices: Pick<DevicesService, 'getDevice'>;
  access: Pick<DeviceAccess, 'authorize'>;
  authenticate: AuthenticateHook;
}

const errorRef = { $ref: 'ErrorResponse#' } as const;
const streamErrors = { ...authenticatedErrors, 429: errorRef, 503: errorRef } as const;
const TYPE_LIST = `^(${PUSH_EVENT_TYPES.join('|')})(,(${PUSH_EVENT_TYPES.join('|')})){0,${PUSH_EVENT_TYPES.length - 1}}$`;
const Types = Type.String({
  pattern: TYPE_LIST,
  default: DEFAULT_PUSH_TYPES.join(','),
  description: `comma-separated event types: ${PUSH_EVENT_TYPES.join(', ')} (telemetry is opt-in)`,
});
const STREAM_DESCRIPTION =
  'text/event-stream. Events: `ready` (first), `presence`, `state`, `event`, `change`, `telemetry` (each with ' +
  'an `id:` for Last-Event-ID resume), `access` (a device was granted or revoked), `reset` (resume impossible: ' +
  'reload state), `end` (why the server closes the stream); comment heartbeats. See docs/telemetry-and-push.md.';

function parseTypes(list: string): ReadonlySet<PushEventType> {
  return new Set(list.split(',') as PushEventType[]);
}

/** The key of the per-principal stream limit: the person or staff member, or the operator's access key. */
function principalKey(principal: RequestPrincipal): string {
  return principal.kind === 'operator' ? `operator:${principal.credentialId}` : `${principal.kind}:${principal.id}`;
}

export async function pushRoutes(app: FastifyInstance, { hub, devices, access, authenticate }: PushRoutesOptions) {
  // Open streams would hold the server's close() open: they end first.
  app.addHook('preClose', async () => hub.close());

  function openStream(
    request: FastifyRequest,
    reply: FastifyReply,
    scope: PushScope,
    types: ReadonlySet<PushEventType>,
    initial: readonly string[],
  ): void {
    const principal = principalOf(request);
    const lastEventId = request.headers['last-event-id'];
    hub.open({
      principalKey: principalKey(principal),
      scope,
      types,
      devices: initial,
      ...(typeof lastEventId === 'string' && lastEventId.length <= 64 ? { lastEventId } : {}),
      sink: reply.raw,
      // Sessions and staff credentials are checked again at each heartbeat (a signed-out session's
      // stream ends); a signed operator request cannot be replayed, so its stream ends at the
      // maximum lifetime (devices.pushMaxStreamMinutes) and reconnects with a fresh signature.
      ...(principal.kind === 'operator'
        ? {}
        : {
            reauthenticate: async () => {
              await authenticate(request, reply);
              return request.principal?.kind === principal.kind && request.principal.id === principal.id;
            },
          }),
      start() {
        reply.hijack();
        reply.raw.writeHead(200, {
          'content-type': 'text/event-stream; charset=utf-8',
          'cache-control': 'no-store',
          'x-request-id': request.id,
          // Reverse proxies (nginx) must pass events through at once.
          'x-accel-buffering': 'no',
        });
        request.log.info({ scope: scope.kind, devices: initial.length }, 'push: stream opened');
      },
    });
  }

  app.get(
    '/v1/me/events',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Real-time events of all the devices I own or share (Server-Sent Events, BIND-4)',
        description: STREAM_DESCRIPTION,
        tags: ['devices'],
        security: bearerSecurity,
        querystring: StrictObject({
          deviceId: Type.Optional(Type.String({ minLength: 1, maxLength: 64, description: 'only this device' })),
          types: Types,
        }),
        response: { 200: Type.String({ description: STREAM_DESCRIPTION }), ...streamErrors },
      },
    },
    async (request, reply) => {
      const principal = principalOf(request);
      if (principal.kind !== 'user') throw new CastellanError('ERR_AUTH_FORBIDDEN');
      const q = request.query as { deviceId?: string; types: string };
      const filter = q.deviceId === undefined ? null : checkedDeviceId(q.deviceId);
      const initial = await hub.initialDevices(principal.id, filter);
      openStream(
        request,
        reply,
        { kind: 'person', userId: principal.id, deviceId: filter },
        parseTypes(q.types),
        initial,
      );
      return reply;
    },
  );

  app.get(
    '/v1/devices/:deviceId/events/stream',
    {
      onRequest: authenticate,
      schema: {
        summary: "Real-time events of one device (Server-Sent Events): its vendor's operators, or its people",
        description: STREAM_DESCRIPTION,
        tags: ['devices'],
        security: bearerSecurity,
        params: StrictObject({ deviceId: Type.String({ minLength: 1, maxLength: 64 }) }),
        querystring: StrictObject({ types: Types }),
        response: { 200: Type.String({ description: STREAM_DESCRIPTION }), ...streamErrors },
      },
    },
    async (request, reply) => {
      const deviceId = deviceIdOf(request);
      const principal = principalOf(request);
      const types = parseTypes((request.query as { types: string }).types);
      const device = await devices.getDevice(deviceId);
      if (device && can(principal, 'device.read', { vendorId: device.vendorId })) {
        // Telemetry is the telemetry.read permission's (an access key with devices:read only gets the rest).
        if (types.has('telemetry') && !can(principal, 'telemetry.read', { vendorId: device.vendorId })) {
          throw new CastellanError('ERR_AUTH_FORBIDDEN');
        }
        openStream(request, reply, { kind: 'tenant', vendorId: device.vendorId, deviceId }, types, [deviceId]);
        return reply;
      }
      if (!device || principal.kind !== 'user') throw new CastellanError('ERR_DEVICE_NOT_FOUND');
      // A person: by role, checked again for every event (BIND-2).
      await access.authorize(principal, deviceId, 'device.view');
      const initial = await hub.initialDevices(principal.id, deviceId);
      openStream(request, reply, { kind: 'person', userId: principal.id, deviceId }, types, initial);
      return reply;
    },
  );
}
