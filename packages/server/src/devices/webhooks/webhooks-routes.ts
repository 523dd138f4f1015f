// Webhook routes for vendors: endpoints (the secret is shown once, at creation and rotation), their
// deliveries, the tenant's dead letters and their replay. Object-level authorisation: another tenant's
// endpoint or delivery answers exactly like a missing one.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { Type } from 'typebox';
import { can, defaultTenant } from '../../accounts/index.ts';
import { CastellanError } from '../../errors/index.ts';
import {
  type AuthenticateHook,
  authenticatedErrors,
  bearerSecurity,
  principalOf,
  type RecordAudit,
  StrictObject,
} from '../../http/index.ts';
import {
  WEBHOOK_EVENT_TYPES,
  type WebhookDelivery,
  type WebhookEndpoint,
  type WebhookEventType,
  type WebhooksService,
} from './webhooks-service.ts';

export interface WebhooksRoutesOptions {
  webhooks: WebhooksService;
  authenticate: AuthenticateHook;
  audit: RecordAudit;
}

const VendorId = Type.String({ minLength: 1, maxLength: 64, pattern: '^vnd_[A-Za-z0-9_-]{22}$' });
const WebhookId = Type.String({ pattern: '^whk_[A-Za-z0-9_-]{22}$' });
const DeliveryId = Type.String({ pattern: '^whd_[A-Za-z0-9_-]{22}$' });
const EventType = Type.Union(
  WEBHOOK_EVENT_TYPES.map((e) => Type.Literal(e)),
  {
    description:
      'device.telemetry, device.state, device.event, device.ack: accepted device messages; device.presence: connects and disconnects; device.change: changes the platform made (shadow, commands, bindings, posture…)',
  },
);
const NullableInt = Type.Union([Type.Integer(), Type.Null()]);

const EndpointView = StrictObject({
  id: Type.String(),
  vendorId: Type.String(),
  url: Type.String(),
  events: Type.Array(Type.String()),
  description: Type.Union([Type.String(), Type.Null()]),
  createdAt: Type.Integer(),
  secretRotatedAt: Type.Integer(),
  previousSecretExpiresAt: Type.Union([Type.Integer(), Type.Null()], {
    description: 'until then the secret before the last rotation also signs (a second v1= signature)',
  }),
});

const WithSecret = StrictObject({
  ...EndpointView.properties,
  secret: Type.String({ description: 'the signing secret; shown only in this response' }),
});

const DeliveryView = StrictObject({
  id: Type.String({ description: 'the message ID (castellan-webhook-id), the same on every attempt' }),
  webhookId: Type.String(),
  eventType: Type.String(),
  deviceId: Type.String(),
  state: Type.Union([Type.Literal('pending'), Type.Literal('delivered'), Type.Literal('dead')]),
  attempts: Type.Integer(),
  createdAt: Type.Integer(),
  nextAttemptAt: NullableInt,
  lastAttemptAt: NullableInt,
  lastStatus: Type.Union([Type.Integer(), Type.Null()], { description: 'HTTP status of the last answer' }),
  lastError: Type.Union([Type.String(), Type.Null()], {
    description:
      'why the last attempt failed: timeout, network: <code>, tls: <code>, http <status>, redirect <status>, dns, address refused',
  }),
  deliveredAt: NullableInt,
  deadAt: NullableInt,
});

const DeliveryPage = StrictObject({ items: Type.Array(DeliveryView), nextBeforeSeq: NullableInt });
const PageQuery = {
  limit: Type.Integer({ minimum: 1, maximum: 200, default: 50 }),
  beforeSeq: Type.Optional(Type.Integer({ minimum: 1 })),
};

const presentEndpoint = (e: WebhookEndpoint) => ({
  id: e.id,
  vendorId: e.vendorId,
  url: e.url,
  events: [...e.events],
  description: e.description,
  createdAt: e.createdAt,
  secretRotatedAt: e.secretRotatedAt,
  previousSecretExpiresAt: e.previousSecretExpiresAt,
});

const presentDelivery = (d: WebhookDelivery) => ({
  id: d.id,
  webhookId: d.endpointId,
  eventType: d.eventType,
  deviceId: d.deviceId,
  state: d.state,
  attempts: d.attempts,
  createdAt: d.createdAt,
  nextAttemptAt: d.nextAttemptAt,
  lastAttemptAt: d.lastAttemptAt,
  lastStatus: d.lastStatus,
  lastError: d.lastError,
  deliveredAt: d.deliveredAt,
  deadAt: d.deadAt,
});

const page = (items: WebhookDelivery[], limit: number) => ({
  items: items.map(presentDelivery),
  nextBeforeSeq: items.length === limit ? items.at(-1)!.seq : null,
});

/** The host alone: paths and queries may carry the receiver's own tokens, which stay out of the audit log. */
const hostOf = (url: string) => new URL(url).host;

/** An operator acts in its own tenant; a person names the organisation (ORG-1). */
function tenantOf(request: FastifyRequest, requested: string | undefined, action: 'webhook.read' | 'webhook.manage') {
  const principal = principalOf(request);
  if (principal.kind === 'user' && requested === undefined) {
    throw new CastellanError('ERR_VALIDATION_FAILED', {
      message: 'vendorId is required: name the organisation to act for',
    });
  }
  const vendorId = requested ?? defaultTenant(principal);
  if (vendorId === undefined || !can(principal, action, { vendorId })) throw new CastellanError('ERR_AUTH_FORBIDDEN');
  return vendorId;
}

export async function webhooksRoutes(app: FastifyInstance, { webhooks, authenticate, audit }: WebhooksRoutesOptions) {
  async function ownedEndpoint(request: FastifyRequest, action: 'webhook.read' | 'webhook.manage') {
    const endpoint = await webhooks.getEndpoint((request.params as { webhookId: string }).webhookId);
    if (!endpoint || !can(principalOf(request), action, { vendorId: endpoint.vendorId })) {
      throw new CastellanError('ERR_WEBHOOK_NOT_FOUND');
    }
    return endpoint;
  }

  app.post(
    '/v1/webhooks',
    {
      onRequest: authenticate,
      schema: {
        summary: "Register a webhook endpoint for the tenant's device events; the signing secret is shown once",
        tags: ['webhooks'],
        security: bearerSecurity,
        body: StrictObject({
          vendorId: Type.Optional(VendorId),
          url: Type.String({
            minLength: 1,
            maxLength: 2048,
            description: 'https:// URL of a public host (checked now and at every delivery)',
          }),
          events: Type.Array(EventType, { minItems: 1, maxItems: WEBHOOK_EVENT_TYPES.length, uniqueItems: true }),
          description: Type.Optional(Type.String({ minLength: 1, maxLength: 200 })),
        }),
        response: { 201: WithSecret, ...authenticatedErrors, 409: { $ref: 'ErrorResponse#' } },
      },
    },
    async (request, reply) => {
      const body = request.body as { vendorId?: string; url: string; events: WebhookEventType[]; description?: string };
      const vendorId = tenantOf(request, body.vendorId, 'webhook.manage');
      const { endpoint, secret } = await webhooks.createEndpoint(vendorId, body);
      await audit(request, {
        type: 'webhook.create',
        tenant: vendorId,
        target: endpoint.id,
        details: { host: hostOf(endpoint.url), events: [...endpoint.events] },
      });
      return reply.status(201).send({ ...presentEndpoint(endpoint), secret });
    },
  );

  app.get(
    '/v1/webhooks',
    {
      onRequest: authenticate,
      schema: {
        summary: "List the tenant's webhook endpoints (people: of the organisation named by vendorId)",
        tags: ['webhooks'],
        security: bearerSecurity,
        querystring: StrictObject({ vendorId: Type.Optional(VendorId) }),
        response: { 200: StrictObject({ items: Type.Array(EndpointView) }), ...authenticatedErrors },
      },
    },
    async (request) => {
      const vendorId = tenantOf(request, (request.query as { vendorId?: string }).vendorId, 'webhook.read');
      return { items: (await webhooks.listEndpoints(vendorId)).map(presentEndpoint) };
    },
  );

  app.get(
    '/v1/webhooks/dead-letters',
    {
      onRequest: authenticate,
      schema: {
        summary: "The tenant's dead-lettered deliveries (every attempt failed), newest first",
        tags: ['webhooks'],
        security: bearerSecurity,
        querystring: StrictObject({ vendorId: Type.Optional(VendorId), ...PageQuery }),
        response: { 200: DeliveryPage, ...authenticatedErrors },
      },
    },
    async (request) => {
      const query = request.query as { vendorId?: string; limit: number; beforeSeq?: number };
      const vendorId = tenantOf(request, query.vendorId, 'webhook.read');
      const items = await webhooks.listDeadLetters(vendorId, {
        limit: query.limit,
        ...(query.beforeSeq ? { beforeSeq: query.beforeSeq } : {}),
      });
      return page(items, query.limit);
    },
  );

  app.post(
    '/v1/webhooks/dead-letters/:deliveryId/replay',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Send a dead letter again, with a fresh attempt budget and the same message ID',
        tags: ['webhooks'],
        security: bearerSecurity,
        params: StrictObject({ deliveryId: DeliveryId }),
        response: { 202: DeliveryView, ...authenticatedErrors },
      },
    },
    async (request, reply) => {
      const { deliveryId } = request.params as { deliveryId: string };
      const delivery = await webhooks.getDelivery(deliveryId);
      if (!delivery || !can(principalOf(request), 'webhook.manage', { vendorId: delivery.vendorId })) {
        throw new CastellanError('ERR_WEBHOOK_DEAD_LETTER_NOT_FOUND');
      }
      const replayed = await webhooks.replay(delivery.vendorId, deliveryId);
      await audit(request, {
        type: 'webhook.replay',
        tenant: delivery.vendorId,
        target: delivery.endpointId,
        details: { deliveryId, eventType: delivery.eventType },
      });
      return reply.status(202).send(presentDelivery(replayed));
    },
  );

  app.get(
    '/v1/webhooks/:webhookId',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Read a webhook endpoint',
        tags: ['webhooks'],
        security: bearerSecurity,
        params: StrictObject({ webhookId: WebhookId }),
        response: { 200: EndpointView, ...authenticatedErrors },
      },
    },
    async (request) => presentEndpoint(await ownedEndpoint(request, 'webhook.read')),
  );

  app.delete(
    '/v1/webhooks/:webhookId',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Delete a webhook endpoint; its pending deliveries are dropped',
        tags: ['webhooks'],
        security: bearerSecurity,
        params: StrictObject({ webhookId: WebhookId }),
        response: { 204: Type.Null(), ...authenticatedErrors },
      },
    },
    async (request, reply) => {
      const endpoint = await ownedEndpoint(request, 'webhook.manage');
      if (!(await webhooks.deleteEndpoint(endpoint.id))) throw new CastellanError('ERR_WEBHOOK_NOT_FOUND');
      await audit(request, {
        type: 'webhook.delete',
        tenant: endpoint.vendorId,
        target: endpoint.id,
        details: { host: hostOf(endpoint.url) },
      });
      return reply.status(204).send();
    },
  );

  app.post(
    '/v1/webhooks/:webhookId/rotate-secret',
    {
      onRequest: authenticate,
      // No body at all means no options.
      preValidation: async (request) => {
        request.body ??= {};
      },
      schema: {
        summary: 'Issue a new signing secret (shown once); optionally keep the old one signing for a while',
        tags: ['webhooks'],
        security: bearerSecurity,
        params: StrictObject({ webhookId: WebhookId }),
        body: StrictObject({
          keepPreviousSeconds: Type.Optional(
            Type.Integer({
              minimum: 0,
              maximum: 604800,
              default: 0,
              description: 'how long the old secret also signs (0: it stops now)',
            }),
          ),
        }),
        response: { 200: WithSecret, ...authenticatedErrors },
      },
    },
    async (request) => {
      const endpoint = await ownedEndpoint(request, 'webhook.manage');
      const keep = (request.body as { keepPreviousSeconds?: number }).keepPreviousSeconds ?? 0;
      const rotated = await webhooks.rotateSecret(endpoint.id, keep);
      await audit(request, {
        type: 'webhook.rotate-secret',
        tenant: endpoint.vendorId,
        target: endpoint.id,
        details: { keepPreviousSeconds: keep },
      });
      return { ...presentEndpoint(rotated.endpoint), secret: rotated.secret };
    },
  );

  app.get(
    '/v1/webhooks/:webhookId/deliveries',
    {
      onRequest: authenticate,
      schema: {
        summary: "An endpoint's deliveries (pending, delivered, dead), newest first; page with beforeSeq",
        tags: ['webhooks'],
        security: bearerSecurity,
        params: StrictObject({ webhookId: WebhookId }),
        querystring: StrictObject(PageQuery),
        response: { 200: DeliveryPage, ...authenticatedErrors },
      },
    },
    async (request) => {
      const endpoint = await ownedEndpoint(request, 'webhook.read');
      const { limit, beforeSeq } = request.query as { limit: number; beforeSeq?: number };
      const items = await webhooks.listDeliveries(endpoint.id, { limit, ...(beforeSeq ? { beforeSeq } : {}) });
      return page(items, limit);
    },
  );
}
