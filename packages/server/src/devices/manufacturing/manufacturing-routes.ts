// Manufacturing line routes (DEV-7). Vendors (owners; operators with devices:write) register factory
// stations and issue batches under /v1/products/:productId/…; the factory tool, with its station token,
// fetches sealed batches and uploads burn receipts under /v1/factory/… and nowhere else.
// Object-level authorisation: another tenant's product, station or batch answers like a missing one.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { Type } from 'typebox';
import { type Action } from '../../accounts/index.ts';
import { type AuditEvent, AuditQueueFullError } from '../../audit/index.ts';
import { CastellanError } from '../../errors/index.ts';
import {
  type AuthenticateHook,
  authenticatedErrors,
  bearerSecurity,
  DisplayName,
  principalOf,
  type RecordAudit,
  StrictObject,
} from '../../http/index.ts';
import type { DevicesService } from '../devices-service.ts';
import { createFactoryAuthenticate, stationOf } from './factory-authenticate.ts';
import {
  type Batch,
  type BatchDevice,
  type FactoryStation,
  MAX_BATCH_DEVICES,
  MAX_STATION_DAYS,
  type ManufacturingService,
} from './manufacturing-service.ts';
import { productFor } from '../device-route-params.ts';

export interface ManufacturingRoutesOptions {
  manufacturing: ManufacturingService;
  devices: DevicesService;
  authenticate: AuthenticateHook;
  audit: RecordAudit;
  /** Records an event of a factory request (whose actor is a station, not a principal). */
  record: (event: AuditEvent) => Promise<unknown>;
}

const ProductId = Type.String({ minLength: 1, maxLength: 64, pattern: '^prd_[A-Za-z0-9_-]{22}$' });
const StationId = Type.String({ minLength: 26, maxLength: 26, pattern: '^fst_[A-Za-z0-9_-]{22}$' });
const BatchId = Type.String({ minLength: 26, maxLength: 26, pattern: '^bat_[A-Za-z0-9_-]{22}$' });
const DeviceIdString = Type.String({ pattern: '^[0-9a-f]{24}$' });
const Pem = (description: string) => Type.String({ minLength: 1, maxLength: 4096, description });
const NullableTime = Type.Union([Type.Integer(), Type.Null()]);
/** The factory token is a bearer token of its own (cas_fac_…), valid on /v1/factory/* only. */
const factorySecurity = [{ bearer: [] }];

const StationView = StrictObject({
  id: Type.String(),
  vendorId: Type.String(),
  productId: Type.String(),
  name: Type.String(),
  encryptionCurve: Type.Union([Type.Literal('X25519'), Type.Literal('P-256')]),
  encryptionPublicKey: Type.String({ description: 'SPKI PEM; batches are sealed to it' }),
  signingPublicKey: Type.String({ description: 'SPKI PEM (Ed25519); burn receipts are verified with it' }),
  status: Type.Union([Type.Literal('active'), Type.Literal('revoked'), Type.Literal('expired')]),
  createdAt: Type.Integer(),
  expiresAt: Type.Integer(),
  revokedAt: NullableTime,
  lastUsedAt: NullableTime,
});

const BatchView = StrictObject({
  id: Type.String(),
  productId: Type.String(),
  stationId: Type.String(),
  deviceCount: Type.Integer(),
  createdAt: Type.Integer(),
  firstFetchedAt: Type.Union([Type.Integer(), Type.Null()], { description: 'first fetch by the factory tool' }),
  fetchCount: Type.Integer(),
});

const BatchCountsView = StrictObject(
  {
    issued: Type.Integer({ description: 'devices the batch issued' }),
    burned: Type.Integer({ description: 'devices with a recorded burn receipt' }),
    activated: Type.Integer({ description: 'devices that have connected (after their receipt)' }),
  },
  { description: 'Manufacturing progress of the batch' },
);

const BatchDeviceView = StrictObject({
  deviceId: Type.String(),
  state: Type.Union([Type.Literal('issued'), Type.Literal('burned'), Type.Literal('activated')]),
  burnedAt: NullableTime,
  receiptRecordedAt: NullableTime,
  activatedAt: NullableTime,
});

const BatchFileView = StrictObject(
  {
    format: Type.Literal('castellan-factory-batch/1'),
    alg: Type.Literal('ECDH-ES+HKDF-SHA256+A256GCM'),
    curve: Type.Union([Type.Literal('X25519'), Type.Literal('P-256')]),
    batchId: Type.String(),
    stationId: Type.String(),
    productId: Type.String(),
    deviceCount: Type.Integer(),
    createdAt: Type.Integer(),
    ephemeralPublicKey: Type.String({ description: 'SPKI DER, base64url' }),
    iv: Type.String({ description: '12 bytes, base64url' }),
    ciphertext: Type.String({ description: 'AES-256-GCM ciphertext, base64url' }),
    tag: Type.String({ description: '16 bytes, base64url' }),
  },
  { description: 'The batch sealed to the station (docs/device-lifecycle.md, Manufacturing line)' },
);

const SignedReceiptInput = StrictObject({
  receipt: StrictObject({
    batchId: BatchId,
    deviceId: DeviceIdString,
    stationId: StationId,
    burnedAt: Type.Integer({ minimum: 0, maximum: 8_640_000_000_000_000 }),
    imageDigest: Type.String({ pattern: '^[0-9a-f]{64}$', description: 'SHA-256 of the written device file, hex' }),
  }),
  signature: Type.String({
    pattern: '^[A-Za-z0-9_-]{86}$',
    description: "Ed25519 over the receipt's canonical JSON, base64url",
  }),
});

const conflictError = { 409: { $ref: 'ErrorResponse#' } } as const;
const factoryErrors = {
  400: { $ref: 'ErrorResponse#' },
  401: { $ref: 'ErrorResponse#' },
  404: { $ref: 'ErrorResponse#' },
} as const;

const presentStation = (s: FactoryStation) => ({
  id: s.id,
  vendorId: s.vendorId,
  productId: s.productId,
  name: s.name,
  encryptionCurve: s.encryptionCurve,
  encryptionPublicKey: s.encryptionPublicKey,
  signingPublicKey: s.signingPublicKey,
  status: s.status,
  createdAt: s.createdAt,
  expiresAt: s.expiresAt,
  revokedAt: s.revokedAt,
  lastUsedAt: s.lastUsedAt,
});
const presentBatch = (b: Batch) => ({
  id: b.id,
  productId: b.productId,
  stationId: b.stationId,
  deviceCount: b.deviceCount,
  createdAt: b.createdAt,
  firstFetchedAt: b.firstFetchedAt,
  fetchCount: b.fetchCount,
});
const presentBatchDevice = (d: BatchDevice) => ({
  deviceId: d.deviceId,
  state: d.state,
  burnedAt: d.burnedAt,
  receiptRecordedAt: d.receiptRecordedAt,
  activatedAt: d.activatedAt,
});

export async function manufacturingRoutes(app: FastifyInstance, options: ManufacturingRoutesOptions) {
  const { manufacturing, devices, authenticate, audit } = options;
  const factoryAuthenticate = createFactoryAuthenticate(manufacturing);
  app.decorateRequest('factoryStation', undefined);

  const ownedProduct = (request: FastifyRequest, action: Action) => productFor(request, devices, action);

  /** A factory request's audit entry: the station is the actor; committed before the answer. */
  async function recordFactory(
    request: FastifyRequest,
    event: Pick<AuditEvent, 'type' | 'target' | 'result' | 'details'>,
  ): Promise<void> {
    const station = stationOf(request);
    try {
      await options.record({
        actor: { type: 'factory', id: station.id },
        tenant: station.vendorId,
        sourceIp: request.ip,
        ...event,
        details: { ...event.details, stationId: station.id, productId: station.productId, requestId: request.id },
      });
    } catch (error) {
      if (error instanceof AuditQueueFullError) throw new CastellanError('ERR_AUDIT_UNAVAILABLE');
      throw error;
    }
  }

  // ---------------------------------------------------------------------------------------------------
  // Vendors: stations

  app.post(
    '/v1/products/:productId/factory-stations',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Register a factory station for a product; its token is shown only in this response',
        tags: ['manufacturing'],
        security: bearerSecurity,
        params: StrictObject({ productId: ProductId }),
        body: StrictObject({
          name: DisplayName,
          encryptionPublicKey: Pem('X25519 or P-256 public key, SPKI PEM: batches are sealed to it'),
          signingPublicKey: Pem('Ed25519 public key, SPKI PEM: burn receipts are verified with it'),
          expiresInDays: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_STATION_DAYS, default: 90 })),
        }),
        response: {
          201: StrictObject({
            ...StationView.properties,
            token: Type.String({ description: 'cas_fac_…: the factory tool’s credential, shown once' }),
          }),
          ...authenticatedErrors,
        },
      },
    },
    async (request, reply) => {
      const product = await ownedProduct(request, 'device.create');
      const body = request.body as {
        name: string;
        encryptionPublicKey: string;
        signingPublicKey: string;
        expiresInDays?: number;
      };
      const { station, token } = await manufacturing.registerStation(product, body, principalOf(request).id);
      await audit(request, {
        type: 'factory.station.create',
        tenant: product.vendorId,
        target: station.id,
        details: { productId: product.id, curve: station.encryptionCurve, expiresAt: station.expiresAt },
      });
      return reply.status(201).send({ ...presentStation(station), token });
    },
  );

  app.get(
    '/v1/products/:productId/factory-stations',
    {
      onRequest: authenticate,
      schema: {
        summary: "List a product's factory stations",
        tags: ['manufacturing'],
        security: bearerSecurity,
        params: StrictObject({ productId: ProductId }),
        response: { 200: StrictObject({ items: Type.Array(StationView) }), ...authenticatedErrors },
      },
    },
    async (request) => {
      const product = await ownedProduct(request, 'device.list');
      return { items: (await manufacturing.listStations(product.id)).map(presentStation) };
    },
  );

  app.delete(
    '/v1/products/:productId/factory-stations/:stationId',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Revoke a factory station: its token stops working at once',
        tags: ['manufacturing'],
        security: bearerSecurity,
        params: StrictObject({ productId: ProductId, stationId: StationId }),
        response: { 200: StationView, ...authenticatedErrors },
      },
    },
    async (request) => {
      const product = await ownedProduct(request, 'device.create');
      const { stationId } = request.params as { stationId: string };
      const station = await manufacturing.revokeStation(product.id, stationId);
      if (!station) throw new CastellanError('ERR_FACTORY_STATION_NOT_FOUND');
      await audit(request, {
        type: 'factory.station.revoke',
        tenant: product.vendorId,
        target: station.id,
        details: { productId: product.id },
      });
      return presentStation(station);
    },
  );

  // ---------------------------------------------------------------------------------------------------
  // Vendors: batches

  app.post(
    '/v1/products/:productId/batches',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Issue a batch of devices to a factory station (secrets only inside the sealed batch file)',
        tags: ['manufacturing'],
        security: bearerSecurity,
        params: StrictObject({ productId: ProductId }),
        body: StrictObject({
          count: Type.Integer({ minimum: 1, maximum: MAX_BATCH_DEVICES }),
          stationId: StationId,
        }),
        response: {
          201: StrictObject({ ...BatchView.properties, deviceIds: Type.Array(Type.String()) }),
          ...authenticatedErrors,
          ...conflictError,
        },
      },
    },
    async (request, reply) => {
      const product = await ownedProduct(request, 'device.create');
      const input = request.body as { count: number; stationId: string };
      const { batch, deviceIds } = await manufacturing.issueBatch(product, input, principalOf(request).id);
      await audit(request, {
        type: 'factory.batch.create',
        tenant: product.vendorId,
        target: batch.id,
        details: {
          productId: product.id,
          stationId: batch.stationId,
          count: deviceIds.length,
          first: deviceIds[0],
          last: deviceIds.at(-1),
        },
      });
      request.log.info({ productId: product.id, batchId: batch.id, count: deviceIds.length }, 'batch issued');
      return reply.status(201).send({ ...presentBatch(batch), deviceIds });
    },
  );

  app.get(
    '/v1/products/:productId/batches',
    {
      onRequest: authenticate,
      schema: {
        summary: "List a product's batches, ordered by ID",
        tags: ['manufacturing'],
        security: bearerSecurity,
        params: StrictObject({ productId: ProductId }),
        querystring: StrictObject({
          limit: Type.Integer({ minimum: 1, maximum: 1000, default: 100 }),
          after: Type.Optional(BatchId),
        }),
        response: {
          200: StrictObject({ items: Type.Array(BatchView), next: Type.Union([Type.String(), Type.Null()]) }),
          ...authenticatedErrors,
        },
      },
    },
    async (request) => {
      const product = await ownedProduct(request, 'device.list');
      const { limit, after } = request.query as { limit: number; after?: string };
      const items = await manufacturing.listBatches(product.id, { limit, ...(after ? { after } : {}) });
      return { items: items.map(presentBatch), next: items.length === limit ? items.at(-1)!.id : null };
    },
  );

  app.get(
    '/v1/products/:productId/batches/:batchId',
    {
      onRequest: authenticate,
      schema: {
        summary: 'A batch with its counts: issued, burned (receipt recorded), activated (connected)',
        tags: ['manufacturing'],
        security: bearerSecurity,
        params: StrictObject({ productId: ProductId, batchId: BatchId }),
        response: { 200: StrictObject({ ...BatchView.properties, counts: BatchCountsView }), ...authenticatedErrors },
      },
    },
    async (request) => {
      const product = await ownedProduct(request, 'device.list');
      const batch = await manufacturing.getBatch(product.id, (request.params as { batchId: string }).batchId);
      if (!batch) throw new CastellanError('ERR_FACTORY_BATCH_NOT_FOUND');
      return { ...presentBatch(batch), counts: batch.counts };
    },
  );

  app.get(
    '/v1/products/:productId/batches/:batchId/devices',
    {
      onRequest: authenticate,
      schema: {
        summary: "A batch's devices with their state (issued, burned, activated), ordered by ID",
        tags: ['manufacturing'],
        security: bearerSecurity,
        params: StrictObject({ productId: ProductId, batchId: BatchId }),
        querystring: StrictObject({
          limit: Type.Integer({ minimum: 1, maximum: 1000, default: 100 }),
          after: Type.Optional(DeviceIdString),
        }),
        response: {
          200: StrictObject({ items: Type.Array(BatchDeviceView), next: Type.Union([Type.String(), Type.Null()]) }),
          ...authenticatedErrors,
        },
      },
    },
    async (request) => {
      const product = await ownedProduct(request, 'device.list');
      const { batchId } = request.params as { batchId: string };
      if (!(await manufacturing.getBatch(product.id, batchId))) throw new CastellanError('ERR_FACTORY_BATCH_NOT_FOUND');
      const { limit, after } = request.query as { limit: number; after?: string };
      const items = await manufacturing.listBatchDevices(batchId, { limit, ...(after ? { after } : {}) });
      return { items: items.map(presentBatchDevice), next: items.length === limit ? items.at(-1)!.deviceId : null };
    },
  );

  // ---------------------------------------------------------------------------------------------------
  // The factory tool (station token only)

  app.get(
    '/v1/factory/batches/:batchId',
    {
      onRequest: factoryAuthenticate,
      schema: {
        summary: 'The batch file, sealed to the calling station (factory token)',
        tags: ['manufacturing'],
        security: factorySecurity,
        params: StrictObject({ batchId: BatchId }),
        response: { 200: BatchFileView, ...factoryErrors },
      },
    },
    async (request) => {
      const { batchId } = request.params as { batchId: string };
      const found = await manufacturing.fetchSealedBatch(stationOf(request), batchId);
      if (!found) {
        await recordFactory(request, { type: 'factory.batch.fetch', target: batchId, result: 'denied' });
        throw new CastellanError('ERR_FACTORY_BATCH_NOT_FOUND');
      }
      await recordFactory(request, {
        type: 'factory.batch.fetch',
        target: batchId,
        result: 'success',
        details: { deviceCount: found.batch.deviceCount, fetchCount: found.batch.fetchCount },
      });
      return found.file;
    },
  );

  app.post(
    '/v1/factory/batches/:batchId/receipts',
    {
      onRequest: factoryAuthenticate,
      schema: {
        summary: 'Upload signed burn receipts (all or nothing; identical receipts are accepted again)',
        tags: ['manufacturing'],
        security: factorySecurity,
        params: StrictObject({ batchId: BatchId }),
        body: StrictObject({ receipts: Type.Array(SignedReceiptInput, { minItems: 1, maxItems: MAX_BATCH_DEVICES }) }),
        response: {
          200: StrictObject({
            batchId: Type.String(),
            accepted: Type.Integer({ description: 'distinct devices of the upload whose receipt is now recorded' }),
            recorded: Type.Integer({ description: 'of those, recorded by this upload' }),
            duplicates: Type.Integer({ description: 'of those, already recorded with the identical receipt' }),
          }),
          ...factoryErrors,
          ...conflictError,
        },
      },
    },
    async (request) => {
      const { batchId } = request.params as { batchId: string };
      const { receipts } = request.body as { receipts: Parameters<ManufacturingService['recordReceipts']>[2] };
      let outcome: Awaited<ReturnType<ManufacturingService['recordReceipts']>>;
      try {
        outcome = await manufacturing.recordReceipts(stationOf(request), batchId, receipts);
      } catch (error) {
        if (error instanceof CastellanError) {
          await recordFactory(request, {
            type: 'factory.receipts',
            target: batchId,
            result: 'denied',
            details: { code: error.code, ...error.details, receipts: receipts.length },
          });
        }
        throw error;
      }
      const { result } = outcome;
      await recordFactory(request, {
        type: 'factory.receipts',
        target: batchId,
        result: 'success',
        details: { receipts: receipts.length, recorded: result.recorded, duplicates: result.duplicates },
      });
      return { batchId, accepted: result.accepted, recorded: result.recorded, duplicates: result.duplicates };
    },
  );
}
