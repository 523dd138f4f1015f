// Devices routes for vendors: products, device identities (secrets shown once), presence. Telemetry
// routes (latest, history, data points) are in telemetry-history-routes.ts.
// Object-level authorisation: a resource of another tenant answers exactly like a missing one.
import { type SuiteName } from '@castellan/protocol';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { Type } from 'typebox';
import { type Action, can, defaultTenant } from '../accounts/index.ts';
import { CastellanError } from '../errors/index.ts';
import {
  type AuthenticateHook,
  authenticatedErrors,
  bearerSecurity,
  DisplayName,
  principalOf,
  type RecordAudit,
  StrictObject,
} from '../http/index.ts';
import type { DeviceAccess } from './device-access.ts';
import type { Device, DevicesService, Product, ProductSettings } from './devices-service.ts';
import type { DevicePresence } from './presence-events.ts';
import {
  presentProductIdentity,
  ProductPatchBody,
  productIdentityInput,
  productIdentityView,
} from './product-views.ts';
import { DeviceIdParam, deviceFor, deviceIdOf, productFor } from './device-route-params.ts';

export interface DevicesRoutesOptions {
  devices: DevicesService;
  /** Bound and shared people reach a device through its role (BIND-2). */
  access: DeviceAccess;
  authenticate: AuthenticateHook;
  audit: RecordAudit;
}

const VendorId = Type.String({ minLength: 1, maxLength: 64, pattern: '^vnd_[A-Za-z0-9_-]{22}$' });
const ProductId = Type.String({ minLength: 1, maxLength: 64, pattern: '^prd_[A-Za-z0-9_-]{22}$' });

const ProductView = StrictObject({
  id: Type.String(),
  vendorId: Type.String(),
  code: Type.String({ description: '6 hex digits, part of every device ID of this product' }),
  name: Type.String(),
  category: Type.String(),
  createdAt: Type.Integer(),
  reportLimits: StrictObject({
    perSecond: Type.Union([Type.Integer(), Type.Null()]),
    perDay: Type.Union([Type.Integer(), Type.Null()]),
  }),
  cryptoSuite: Type.Union([Type.Literal('intl'), Type.Literal('sm'), Type.Null()], {
    description: "the product's own crypto suite for device secrets; null: the vendor's",
  }),
  ...productIdentityView,
});

const ReportLimitsInput = StrictObject(
  {
    perSecond: Type.Optional(Type.Integer({ minimum: 1, maximum: 100000 })),
    perDay: Type.Optional(Type.Integer({ minimum: 1, maximum: 100000000 })),
  },
  { description: 'Messages each device may report per second and per day; omitted: platform defaults' },
);

const DeviceView = StrictObject({
  id: Type.String({ description: '24 hex digits: 01 + vendor code + product code + random + extension' }),
  vendorId: Type.String(),
  productId: Type.String(),
  status: Type.String(),
  createdAt: Type.Integer(),
});

const NullableTime = Type.Union([Type.Integer(), Type.Null()]);
const PresenceView = StrictObject(
  {
    online: Type.Boolean(),
    lastSeenAt: Type.Union([Type.Integer(), Type.Null()], {
      description: 'last CONNECT, PUBLISH or DISCONNECT from the device (activity is written at most every 30 s)',
    }),
    lastConnectedAt: NullableTime,
    lastDisconnectedAt: NullableTime,
    lastDisconnectReason: Type.Union(
      [
        Type.Literal('client'),
        Type.Literal('takeover'),
        Type.Literal('keep-alive'),
        Type.Literal('protocol-error'),
        Type.Literal('server'),
        Type.Literal('network'),
        Type.Literal('platform-restart'),
        Type.Null(),
      ],
      { description: 'why the last connection ended; null before the first disconnect' },
    ),
  },
  { description: 'MQTT presence; all null for a device that never connected' },
);

const DeviceDetailView = StrictObject({ ...DeviceView.properties, presence: PresenceView });

const presentProduct = (p: Product) => ({
  id: p.id,
  vendorId: p.vendorId,
  code: p.code,
  name: p.name,
  category: p.category,
  createdAt: p.createdAt,
  reportLimits: { perSecond: p.reportLimits.perSecond, perDay: p.reportLimits.perDay },
  cryptoSuite: p.cryptoSuite,
  ...presentProductIdentity(p),
});
const presentDevice = (d: Device) => ({
  id: d.id,
  vendorId: d.vendorId,
  productId: d.productId,
  status: d.status,
  createdAt: d.createdAt,
});
const presentPresence = (p: DevicePresence) => ({
  online: p.online,
  lastSeenAt: p.lastSeenAt,
  lastConnectedAt: p.lastConnectedAt,
  lastDisconnectedAt: p.lastDisconnectedAt,
  lastDisconnectReason: p.lastDisconnectReason,
});

/**
 * The tenant a product-collection request acts in. An operator's tenant is fixed (its own; naming
 * another is refused by the policy); a signed-in person names one of their organisations (ORG-1),
 * and the policy checks the membership and role.
 */
function tenantOf(request: FastifyRequest, requested: string | undefined): string | undefined {
  const principal = principalOf(request);
  if (principal.kind === 'user' && requested === undefined) {
    throw new CastellanError('ERR_VALIDATION_FAILED', {
      message: 'vendorId is required: name the organisation to act for',
    });
  }
  return requested ?? defaultTenant(principal);
}

export async function devicesRoutes(
  app: FastifyInstance,
  { devices, access, authenticate, audit }: DevicesRoutesOptions,
) {
  const ownedProduct = (request: FastifyRequest, action: Action) => productFor(request, devices, action);

  app.post(
    '/v1/products',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Define a product (vendors)',
        tags: ['devices'],
        security: bearerSecurity,
        body: StrictObject({
          vendorId: Type.Optional(VendorId),
          name: DisplayName,
          category: Type.String({ minLength: 1, maxLength: 64, pattern: '^[a-z0-9][a-z0-9_.-]*$' }),
          reportLimits: Type.Optional(ReportLimitsInput),
          cryptoSuite: Type.Optional(
            Type.Union([Type.Literal('intl'), Type.Literal('sm')], {
              description:
                "device secrets of this product under its own key in this suite (KEY-4); default: the vendor's",
            }),
          ),
          ...productIdentityInput,
        }),
        response: { 201: ProductView, ...authenticatedErrors },
      },
    },
    async (request, reply) => {
      const { vendorId: requested, ...input } = request.body as {
        vendorId?: string;
        name: string;
        category: string;
        reportLimits?: { perSecond?: number; perDay?: number };
        cryptoSuite?: SuiteName;
      } & ProductSettings;
      const vendorId = tenantOf(request, requested);
      if (vendorId === undefined || !can(principalOf(request), 'product.create', { vendorId })) {
        throw new CastellanError('ERR_AUTH_FORBIDDEN');
      }
      const product = await devices.createProduct(vendorId, input);
      await audit(request, {
        type: 'product.create',
        tenant: vendorId,
        target: product.id,
        details: {
          code: product.code,
          cryptoSuite: product.cryptoSuite,
          securityLevel: product.securityLevel,
          authModes: product.authModes,
        },
      });
      return reply.status(201).send(presentProduct(product));
    },
  );

  app.patch(
    '/v1/products/:productId',
    {
      onRequest: authenticate,
      schema: {
        summary: "Change a product's data points, report limits, telemetry retention, security level or modes",
        tags: ['devices'],
        security: bearerSecurity,
        params: StrictObject({ productId: ProductId }),
        body: ProductPatchBody,
        response: { 200: ProductView, ...authenticatedErrors },
      },
    },
    async (request) => {
      const product = await ownedProduct(request, 'product.update');
      const patch = request.body as Parameters<DevicesService['updateProduct']>[1];
      const updated = await devices.updateProduct(product.id, patch);
      await audit(request, {
        type: 'product.update',
        tenant: product.vendorId,
        target: product.id,
        details: { fields: Object.keys(patch), securityLevel: updated.securityLevel, authModes: updated.authModes },
      });
      return presentProduct(updated);
    },
  );

  app.get(
    '/v1/products',
    {
      onRequest: authenticate,
      schema: {
        summary: "List the calling vendor's products (people: of the organisation named by vendorId)",
        tags: ['devices'],
        security: bearerSecurity,
        querystring: StrictObject({ vendorId: Type.Optional(VendorId) }),
        response: { 200: StrictObject({ items: Type.Array(ProductView) }), ...authenticatedErrors },
      },
    },
    async (request) => {
      const vendorId = tenantOf(request, (request.query as { vendorId?: string }).vendorId);
      if (vendorId === undefined || !can(principalOf(request), 'product.list', { vendorId })) {
        throw new CastellanError('ERR_AUTH_FORBIDDEN');
      }
      return { items: (await devices.listProducts(vendorId)).map(presentProduct) };
    },
  );

  app.get(
    '/v1/products/:productId',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Read a product',
        tags: ['devices'],
        security: bearerSecurity,
        params: StrictObject({ productId: ProductId }),
        response: { 200: ProductView, ...authenticatedErrors },
      },
    },
    async (request) => presentProduct(await ownedProduct(request, 'product.read')),
  );

  app.post(
    '/v1/products/:productId/devices',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Issue device identities; each secret is shown only in this response',
        tags: ['devices'],
        security: bearerSecurity,
        params: StrictObject({ productId: ProductId }),
        body: StrictObject({ count: Type.Integer({ minimum: 1, maximum: 100000 }) }),
        response: {
          201: StrictObject({
            productId: Type.String(),
            devices: Type.Array(StrictObject({ id: Type.String(), secret: Type.String() })),
          }),
          ...authenticatedErrors,
          409: { $ref: 'ErrorResponse#' },
        },
      },
    },
    async (request, reply) => {
      const product = await ownedProduct(request, 'device.create');
      const issued = await devices.createDevices(product.id, (request.body as { count: number }).count);
      await audit(request, {
        type: 'device.issue',
        tenant: product.vendorId,
        target: product.id,
        details: { count: issued.length, first: issued[0]?.id, last: issued.at(-1)?.id },
      });
      request.log.info({ productId: product.id, count: issued.length }, 'devices issued');
      return reply
        .status(201)
        .send({ productId: product.id, devices: issued.map((d) => ({ id: d.id, secret: d.secret })) });
    },
  );

  app.get(
    '/v1/products/:productId/devices',
    {
      onRequest: authenticate,
      schema: {
        summary: "List a product's devices, ordered by ID",
        tags: ['devices'],
        security: bearerSecurity,
        params: StrictObject({ productId: ProductId }),
        querystring: StrictObject({
          limit: Type.Integer({ minimum: 1, maximum: 1000, default: 100 }),
          after: Type.Optional(Type.String({ pattern: '^[0-9a-f]{24}$' })),
        }),
        response: {
          200: StrictObject({
            items: Type.Array(DeviceView),
            next: Type.Union([Type.String(), Type.Null()]),
          }),
          ...authenticatedErrors,
        },
      },
    },
    async (request) => {
      const product = await ownedProduct(request, 'device.list');
      const { limit, after } = request.query as { limit: number; after?: string };
      const items = await devices.listDevices(product.id, { limit, ...(after ? { after } : {}) });
      return { items: items.map(presentDevice), next: items.length === limit ? items.at(-1)!.id : null };
    },
  );

  app.get(
    '/v1/devices/:deviceId',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Read a device, with its presence (online, last seen)',
        tags: ['devices'],
        security: bearerSecurity,
        params: StrictObject({ deviceId: DeviceIdParam }),
        response: { 200: DeviceDetailView, ...authenticatedErrors },
      },
    },
    async (request) => {
      const principal = principalOf(request);
      // People: by their role on the device or their organisation (BIND-2), device and presence read
      // together with the access check (one round trip).
      if (principal.kind === 'user') {
        const { device, presence } = await access.authorizeView(principal, deviceIdOf(request));
        return { ...presentDevice(device), presence: presentPresence(presence) };
      }
      const device = await deviceFor(request, devices, 'device.read');
      return { ...presentDevice(device), presence: presentPresence(await devices.presence.get(device.id)) };
    },
  );
}
