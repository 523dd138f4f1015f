// The device API's read side for devices without an MQTT connection (CHAN-7 over HTTP): a device that
// reaches the platform only by request (HTTPS, or the secure channel over plain HTTP, CHAN-3) polls its
// shadow and its open commands and acknowledges them. The same data as devices/{id}/shadow/desired and
// devices/{id}/commands/{name} over MQTT; acknowledgements go through the same `acks` channel handlers.
import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import { CastellanError } from '../../errors/index.ts';
import type { DeviceChannelHandler } from '../../gateway/index.ts';
import { PublishRefusedError } from '../../gateway/mqtt/broker-hooks.ts';
import type { GuardService } from '../../guard/index.ts';
import { deviceSecurity, StrictObject } from '../../http/index.ts';
import type { CommandsService } from '../commands/commands-service.ts';
import { type DeviceHttpAuth, deviceOf, verifyDeviceBody } from '../device-http-auth.ts';
import type { DevicesService } from '../devices-service.ts';
import type { ShadowService } from '../shadow/shadow-service.ts';

export interface DevicePollRoutesOptions {
  devices: Pick<DevicesService, 'productLimits'>;
  auth: DeviceHttpAuth;
  guard: Pick<GuardService, 'deviceMessage'>;
  shadows: Pick<ShadowService, 'get'>;
  commands: Pick<CommandsService, 'list'>;
  /** The broker's `acks` handlers (platform.ts deviceChannels.acks), read at request time. */
  acks: () => readonly DeviceChannelHandler[];
  now?: () => number;
}

const errorRef = { $ref: 'ErrorResponse#' } as const;
const deviceErrors = { 400: errorRef, 401: errorRef, 429: errorRef, 503: errorRef } as const;
const AnyObject = Type.Object({}, { additionalProperties: true });
const COMMAND_ID = '^cmd_[A-Za-z0-9_-]{22}$';

export async function devicePollRoutes(
  app: FastifyInstance,
  { devices, auth, guard, shadows, commands, acks, now = Date.now }: DevicePollRoutesOptions,
) {
  if (!app.hasRequestDecorator('device')) app.decorateRequest('device', undefined);
  app.addHook('preParsing', verifyDeviceBody);

  app.get(
    '/v1/device-api/shadow',
    {
      onRequest: auth.authenticate,
      schema: {
        security: deviceSecurity,
        summary: 'The device’s own shadow: desired state, what it last reported, the delta (CHAN-7)',
        tags: ['device-api'],
        response: {
          200: StrictObject({
            desired: AnyObject,
            reported: AnyObject,
            delta: AnyObject,
            version: Type.Integer(),
            desiredVersion: Type.Integer({ description: 'send it back as the report’s desiredVersion' }),
          }),
          ...deviceErrors,
        },
      },
    },
    async (request) => {
      const shadow = await shadows.get(deviceOf(request).id);
      return {
        desired: shadow.desired,
        reported: shadow.reported,
        delta: shadow.delta,
        version: shadow.version,
        desiredVersion: shadow.desiredVersion,
      };
    },
  );

  app.get(
    '/v1/device-api/commands',
    {
      onRequest: auth.authenticate,
      schema: {
        security: deviceSecurity,
        summary: 'The device’s open commands (pending or delivered, deadline not passed), oldest first',
        tags: ['device-api'],
        response: {
          200: StrictObject({
            commands: Type.Array(
              StrictObject({
                id: Type.String(),
                name: Type.String(),
                params: AnyObject,
                expiresAt: Type.Integer(),
              }),
            ),
          }),
          ...deviceErrors,
        },
      },
    },
    async (request) => {
      const device = deviceOf(request);
      const at = now();
      // A device has at most 16 open commands (commands-service maxOpenPerDevice); the newest 64 hold them.
      const open = (await commands.list(device.id, { limit: 64 }))
        .filter((c) => (c.status === 'pending' || c.status === 'delivered') && c.expiresAt > at)
        .reverse();
      return { commands: open.map((c) => ({ id: c.id, name: c.name, params: c.params, expiresAt: c.expiresAt })) };
    },
  );

  app.post(
    '/v1/device-api/acks',
    {
      onRequest: auth.authenticate,
      schema: {
        security: deviceSecurity,
        summary: 'Acknowledge a command (the same as devices/{id}/acks/{commandId} over MQTT)',
        tags: ['device-api'],
        body: StrictObject({
          commandId: Type.String({ pattern: COMMAND_ID }),
          status: Type.Union([Type.Literal('succeeded'), Type.Literal('failed'), Type.Literal('rejected')]),
          result: Type.Optional(Type.Unknown()),
          error: Type.Optional(Type.String({ maxLength: 1024 })),
        }),
        response: { 202: StrictObject({ receivedAt: Type.Integer() }), ...deviceErrors },
      },
    },
    async (request, reply) => {
      const device = deviceOf(request);
      const { commandId, ...ack } = request.body as { commandId: string; status: string };
      const receivedAt = now();
      const verdict = await guard.deviceMessage(
        { id: device.id, productId: device.productId, tenant: device.vendorId },
        await devices.productLimits(device.productId),
      );
      if (!verdict.allowed) throw new CastellanError('ERR_RATE_LIMITED');
      const connected = { id: device.id, vendorId: device.vendorId, productId: device.productId };
      const message = { rest: [commandId], payload: Buffer.from(JSON.stringify(ack), 'utf8'), receivedAt };
      try {
        for (const handle of acks()) await handle(connected, message);
      } catch (error) {
        if (error instanceof PublishRefusedError) {
          if (error.reason === 'payload-invalid') {
            throw new CastellanError('ERR_DEVICE_PAYLOAD_INVALID', { details: { reason: error.message } });
          }
          if (error.reason === 'rate-limited') throw new CastellanError('ERR_RATE_LIMITED');
          throw new CastellanError('ERR_STORE_UNAVAILABLE');
        }
        throw error;
      }
      return reply.status(202).send({ receivedAt });
    },
  );
}
