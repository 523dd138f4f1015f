// The device's side of binding over the device API (BIND-1, BIND-5): the device, authenticated as
// itself (DEV-6; devices/device-http-auth.ts), presents the binding token it received in the encrypted
// provisioning payload, or reports a factory reset.
import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import { deviceSecurity, StrictObject } from '../../http/index.ts';
import { type DeviceHttpAuth, deviceOf, verifyDeviceBody } from '../device-http-auth.ts';
import type { BindingsService } from './bindings-service.ts';

export interface BindingDeviceRoutesOptions {
  bindings: BindingsService;
  /** Authenticates the calling device (timestamp signature or device token). */
  auth: Pick<DeviceHttpAuth, 'authenticate'>;
}

const errorRef = { $ref: 'ErrorResponse#' } as const;
const deviceErrors = { 400: errorRef, 401: errorRef, 403: errorRef, 404: errorRef } as const;

export async function bindingDeviceRoutes(app: FastifyInstance, { bindings, auth }: BindingDeviceRoutesOptions) {
  if (!app.hasRequestDecorator('device')) app.decorateRequest('device', undefined);
  // The body must be the one whose hash the device signed (deviceOf refuses otherwise).
  app.addHook('preParsing', verifyDeviceBody);
  app.post(
    '/v1/device-api/bind',
    {
      onRequest: auth.authenticate,
      schema: {
        security: deviceSecurity,
        summary:
          "Device (signed request or device token): bind to the issuer of this binding token (from the app's provisioning payload)",
        tags: ['device-api'],
        body: StrictObject({ bindingToken: Type.String({ minLength: 1, maxLength: 128 }) }),
        response: {
          200: StrictObject({
            boundAt: Type.Integer(),
            alreadyBound: Type.Boolean({ description: 'the device was already bound to this same user' }),
          }),
          ...deviceErrors,
          409: errorRef,
        },
      },
    },
    async (request) => {
      const device = deviceOf(request);
      const { bindingToken } = request.body as { bindingToken: string };
      const result = await bindings.bind(device, bindingToken, request.ip);
      return { boundAt: result.boundAt, alreadyBound: result.alreadyBound };
    },
  );

  app.post(
    '/v1/device-api/reset',
    {
      onRequest: auth.authenticate,
      schema: {
        security: deviceSecurity,
        summary:
          'Device (signed request or device token): report a factory reset; the binding, shares and data held for the owner are wiped',
        tags: ['device-api'],
        body: Type.Optional(StrictObject({})),
        response: { 200: StrictObject({ unbound: Type.Boolean() }), ...deviceErrors, 503: errorRef },
      },
    },
    async (request) => {
      const device = deviceOf(request);
      const unbound = await bindings.unbind(
        device,
        { type: 'device', id: device.id, sourceIp: request.ip },
        'factory-reset',
      );
      return { unbound };
    },
  );
}
