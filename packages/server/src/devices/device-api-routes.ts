// The HTTPS device API (DEV-6) for devices that do not keep an MQTT connection: server time, challenge-
// response tokens, hardware-ID registration (DEV-4) and status reports (state, telemetry, events) that go
// through exactly the checks of the MQTT path (report-rate limits, payload shape, the channel handlers
// such as the product schema, durable telemetry) and reach the same DeviceEvents listeners.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { Type } from 'typebox';
import { CastellanError } from '../errors/index.ts';
import type { DeviceChannelHandler } from '../gateway/index.ts';
import { PublishRefusedError } from '../gateway/mqtt/broker-hooks.ts';
import type { GuardService } from '../guard/index.ts';
import { deviceSecurity, StrictObject } from '../http/index.ts';
import type { DeviceEvents } from './device-events.ts';
import { type DeviceHttpAuth, deviceOf, verifyDeviceBody } from './device-http-auth.ts';
import type { DevicesService } from './devices-service.ts';
import type { HardwareIdsService } from './hardware-ids-service.ts';
import type { SignedTimeService } from './signed-time-service.ts';
import { checkTelemetryPayload } from './telemetry-payload.ts';
import { TelemetryQueueFullError } from './telemetry-writer.ts';

type Channel = 'telemetry' | 'state' | 'events' | 'acks';

export interface DeviceApiRoutesOptions {
  devices: DevicesService;
  auth: DeviceHttpAuth;
  guard: Pick<GuardService, 'deviceMessage' | 'stateChange'>;
  /** The same handler lists the broker runs (platform.ts deviceChannels), read at request time. */
  channels: Partial<Record<Channel, DeviceChannelHandler[]>>;
  events?: DeviceEvents;
  hardwareIds?: HardwareIdsService;
  /** Signs GET /v1/device-api/time?nonce=… answers (trusted time); absent: ERR_TIME_SIGNING_UNAVAILABLE. */
  signedTime?: SignedTimeService;
  now?: () => number;
}

const B64url = (min: number, max: number) =>
  Type.String({ minLength: min, maxLength: max, pattern: '^[A-Za-z0-9_-]+$' });
const DeviceId = Type.String({ pattern: '^[0-9a-f]{24}$', description: '24 hex digits (DEV-1)' });
const Nonce = B64url(22, 128);
const errorRef = { $ref: 'ErrorResponse#' } as const;
const deviceErrors = { 400: errorRef, 401: errorRef, 429: errorRef, 503: errorRef } as const;
const JsonObject = Type.Object({}, { additionalProperties: true, description: 'a JSON object of data points' });
const Accepted = StrictObject({ receivedAt: Type.Integer() });

export async function deviceApiRoutes(
  app: FastifyInstance,
  { devices, auth, guard, channels, events, hardwareIds, signedTime, now = Date.now }: DeviceApiRoutesOptions,
) {
  if (!app.hasRequestDecorator('device')) app.decorateRequest('device', undefined);
  // Every route of this plugin behind the device hook also compares the body with the signed hash.
  app.addHook('preParsing', verifyDeviceBody);

  /** One accepted device message, checked exactly as on MQTT (device-broker-hooks.ts onPublish). */
  async function ingest(request: FastifyRequest, channel: Channel, body: unknown): Promise<{ receivedAt: number }> {
    const device = deviceOf(request);
    const receivedAt = now();
    const verdict = await guard.deviceMessage(
      { id: device.id, productId: device.productId, tenant: device.vendorId },
      await devices.productLimits(device.productId),
    );
    if (!verdict.allowed) throw new CastellanError('ERR_RATE_LIMITED');
    if (channel === 'state') await guard.stateChange(device.id, device.vendorId);
    const payload = Buffer.from(JSON.stringify(body), 'utf8');
    if (channel === 'telemetry') {
      const check = checkTelemetryPayload(payload);
      if (!check.ok) throw new CastellanError('ERR_DEVICE_PAYLOAD_INVALID', { details: { reason: check.reason } });
    }
    const connected = { id: device.id, vendorId: device.vendorId, productId: device.productId };
    const message = { rest: [] as string[], payload, receivedAt };
    try {
      for (const handle of channels[channel] ?? []) await handle(connected, message);
      if (channel === 'telemetry') await devices.recordTelemetry(device.id, payload, receivedAt);
    } catch (error) {
      if (error instanceof PublishRefusedError) {
        if (error.reason === 'payload-invalid') {
          throw new CastellanError('ERR_DEVICE_PAYLOAD_INVALID', { details: { reason: error.message } });
        }
        if (error.reason === 'rate-limited') throw new CastellanError('ERR_RATE_LIMITED');
        throw new CastellanError('ERR_STORE_UNAVAILABLE');
      }
      if (error instanceof TelemetryQueueFullError) throw new CastellanError('ERR_STORE_UNAVAILABLE');
      throw error;
    }
    events?.emit('message', {
      deviceId: device.id,
      vendorId: device.vendorId,
      productId: device.productId,
      channel,
      ...message,
    });
    return { receivedAt };
  }

  app.get(
    '/v1/device-api/time',
    {
      schema: {
        summary: "The platform's clock, for devices to sign requests within the ±300 s window",
        tags: ['device-api'],
        description:
          'With `?nonce=` (22-128 base64url characters, 16+ random bytes), the time comes signed with that nonce by ' +
          'the key of the TLS server certificate, for devices without a clock (docs/protocol.md, Signed time)',
        querystring: StrictObject({ nonce: Type.Optional(Nonce) }),
        response: {
          200: StrictObject({
            now: Type.Integer({ description: 'ms since the epoch' }),
            time: Type.Optional(Type.Integer({ description: 'ms since the epoch, signed (= now)' })),
            nonce: Type.Optional(Type.String({ description: 'the request nonce, echoed' })),
            signature: Type.Optional(
              Type.String({ description: 'base64url(r ‖ s): ECDSA P-256 SHA-256 of castellan-time-v1|nonce|time' }),
            ),
            certificate: Type.Optional(Type.String({ description: 'PEM of the signing (TLS server) certificate' })),
            chain: Type.Optional(Type.Array(Type.String(), { description: 'PEM intermediates, leaf to CA' })),
          }),
          400: errorRef,
          429: errorRef,
          503: errorRef,
        },
      },
    },
    async (request) => {
      const { nonce } = request.query as { nonce?: string };
      if (nonce === undefined) return { now: now() };
      if (!signedTime) throw new CastellanError('ERR_TIME_SIGNING_UNAVAILABLE');
      const answer = signedTime.answer(nonce);
      return { now: answer.time, ...answer };
    },
  );

  app.post(
    '/v1/device-api/challenges',
    {
      schema: {
        summary: 'Challenge-response, step 1: a single-use challenge and the platform’s proof of the device key',
        tags: ['device-api'],
        body: StrictObject({ deviceId: DeviceId, clientNonce: Nonce }),
        response: {
          201: StrictObject({
            challenge: Type.String(),
            expiresAt: Type.Integer(),
            serverProof: Type.String({
              description: 'HMAC(key, "server|deviceId|clientNonce|challenge"): verify before answering',
            }),
          }),
          ...deviceErrors,
        },
      },
    },
    async (request, reply) => {
      const { deviceId, clientNonce } = request.body as { deviceId: string; clientNonce: string };
      return reply.status(201).send(await auth.issueChallenge(deviceId, clientNonce));
    },
  );

  app.post(
    '/v1/device-api/tokens',
    {
      schema: {
        summary: 'Challenge-response, step 2: the device’s response buys a 15-minute device token',
        tags: ['device-api'],
        body: StrictObject({ deviceId: DeviceId, challenge: B64url(43, 43), response: B64url(43, 1024) }),
        response: {
          201: StrictObject({
            token: Type.String({ description: 'cas_dvt_…: send as `authorization: Bearer <token>`' }),
            tokenType: Type.Literal('Bearer'),
            expiresAt: Type.Integer(),
          }),
          ...deviceErrors,
        },
      },
    },
    async (request, reply) => {
      const { deviceId, challenge, response } = request.body as {
        deviceId: string;
        challenge: string;
        response: string;
      };
      const issued = await auth.redeemChallenge(request, deviceId, challenge, response);
      return reply.status(201).send({ token: issued.token, tokenType: 'Bearer', expiresAt: issued.expiresAt });
    },
  );

  for (const channel of ['state', 'telemetry', 'events'] as const) {
    app.post(
      `/v1/device-api/${channel}`,
      {
        onRequest: auth.authenticate,
        schema: {
          security: deviceSecurity,
          summary: `Report ${channel} over HTTPS (the same checks as devices/{id}/${channel} over MQTT)`,
          tags: ['device-api'],
          description:
            'Authenticated as a device: `authorization: CAS-DEVICE-HMAC-SHA256 …` with x-castellan-content-sha256, or `authorization: Bearer cas_dvt_…` (docs/protocol.md)',
          body: JsonObject,
          response: { 202: Accepted, ...deviceErrors },
        },
      },
      async (request, reply) => reply.status(202).send(await ingest(request, channel, request.body)),
    );
  }

  if (hardwareIds) {
    app.post(
      '/v1/device-api/register',
      {
        schema: {
          summary: 'Hardware-ID registration (DEV-4): a listed MAC/IMEI plus the product secret’s proof',
          tags: ['device-api'],
          body: StrictObject({
            productId: Type.String({ pattern: '^prd_[A-Za-z0-9_-]{22}$' }),
            hardwareId: Type.String({ minLength: 1, maxLength: 64 }),
            ts: Type.Integer({ minimum: 1 }),
            nonce: Nonce,
            proof: B64url(43, 43),
          }),
          response: {
            201: StrictObject({
              deviceId: Type.String(),
              sealedSecret: Type.String({
                description: 'AES-256-GCM under HKDF(product secret, salt = nonce): see docs/protocol.md',
              }),
            }),
            ...deviceErrors,
          },
        },
      },
      async (request, reply) => {
        const body = request.body as {
          productId: string;
          hardwareId: string;
          ts: number;
          nonce: string;
          proof: string;
        };
        return reply.status(201).send(await hardwareIds.register(request, body));
      },
    );
  }
}
