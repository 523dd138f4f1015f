// Telemetry history routes: the latest message, time-range listing with cursor paging, and downsampled
// data points. Readers: the vendor's operators and members (telemetry.read, tenant rules) and the people
// bound to or sharing the device (DeviceAccess, device.view; BIND-2). Anyone else, and a missing device,
// get the same ERR_DEVICE_NOT_FOUND.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { Type } from 'typebox';
import { can } from '../accounts/index.ts';
import { CastellanError } from '../errors/index.ts';
import {
  type AuthenticateHook,
  authenticatedErrors,
  bearerSecurity,
  principalOf,
  StrictObject,
} from '../http/index.ts';
import type { DeviceAccess } from './device-access.ts';
import type { Device, DevicesService, TelemetryItem } from './devices-service.ts';
import {
  AGGREGATES,
  type Aggregate,
  type Bucket,
  MAX_BUCKETS,
  POINT_NAME,
  type PointBucket,
  type TelemetryHistory,
  type TelemetryOrder,
} from './telemetry-history.ts';
import { DeviceIdParam, deviceIdOf } from './device-route-params.ts';

export interface TelemetryHistoryRoutesOptions {
  devices: Pick<DevicesService, 'getDevice'>;
  history: TelemetryHistory;
  access: Pick<DeviceAccess, 'authorize'>;
  authenticate: AuthenticateHook;
}

const Time = (description: string) => Type.Integer({ minimum: 0, maximum: 8_640_000_000_000_000, description });

const TelemetryView = StrictObject({
  seq: Type.Integer(),
  deviceId: Type.String(),
  receivedAt: Type.Integer(),
  payload: Type.Object({}, { additionalProperties: true }),
});

const BucketView = StrictObject({
  start: Type.Integer({ description: 'start of the bucket, ms since the epoch' }),
  count: Type.Optional(Type.Integer()),
  avg: Type.Optional(Type.Number()),
  min: Type.Optional(Type.Number()),
  max: Type.Optional(Type.Number()),
  last: Type.Optional(Type.Number()),
});

const AGG_LIST = `^(${AGGREGATES.join('|')})(,(${AGGREGATES.join('|')})){0,${AGGREGATES.length - 1}}$`;

const presentTelemetry = (t: TelemetryItem) => ({
  seq: t.seq,
  deviceId: t.deviceId,
  receivedAt: t.receivedAt,
  payload: t.payload,
});
const presentBucket = (b: PointBucket) => ({
  start: b.start,
  ...(b.count === undefined ? {} : { count: b.count }),
  ...(b.avg === undefined ? {} : { avg: b.avg }),
  ...(b.min === undefined ? {} : { min: b.min }),
  ...(b.max === undefined ? {} : { max: b.max }),
  ...(b.last === undefined ? {} : { last: b.last }),
});

export async function telemetryHistoryRoutes(
  app: FastifyInstance,
  { devices, history, access, authenticate }: TelemetryHistoryRoutesOptions,
) {
  /** The device when the caller may read its telemetry; otherwise exactly like a missing device. */
  async function readableDevice(request: FastifyRequest): Promise<Device> {
    const deviceId = deviceIdOf(request);
    const principal = principalOf(request);
    const device = await devices.getDevice(deviceId);
    if (device && can(principal, 'telemetry.read', { vendorId: device.vendorId })) return device;
    // A person's own or shared device (BIND-2): authorize throws ERR_DEVICE_NOT_FOUND otherwise.
    if (device && principal.kind === 'user') return access.authorize(principal, deviceId, 'device.view');
    throw new CastellanError('ERR_DEVICE_NOT_FOUND');
  }

  app.get(
    '/v1/devices/:deviceId/telemetry/latest',
    {
      onRequest: authenticate,
      schema: {
        summary: "A device's most recent telemetry message",
        tags: ['devices'],
        security: bearerSecurity,
        params: StrictObject({ deviceId: DeviceIdParam }),
        response: { 200: TelemetryView, ...authenticatedErrors },
      },
    },
    async (request) => {
      const device = await readableDevice(request);
      const latest = await history.latest(device.id);
      if (!latest) throw new CastellanError('ERR_TELEMETRY_NOT_FOUND');
      return presentTelemetry(latest);
    },
  );

  app.get(
    '/v1/devices/:deviceId/telemetry',
    {
      onRequest: authenticate,
      schema: {
        summary: "A device's telemetry in a time range, newest (or oldest) first, a page at a time",
        description:
          'Page with the opaque `next` cursor (same `order`, `from` and `to`): every row is returned exactly once. ' +
          '`beforeSeq`/`nextBeforeSeq` remain for clients of the first version (newest first only).',
        tags: ['devices'],
        security: bearerSecurity,
        params: StrictObject({ deviceId: DeviceIdParam }),
        querystring: StrictObject({
          from: Type.Optional(Time('inclusive lower bound on receivedAt, ms since the epoch')),
          to: Type.Optional(Time('exclusive upper bound on receivedAt, ms since the epoch')),
          limit: Type.Integer({ minimum: 1, maximum: 1000, default: 100 }),
          order: Type.Union([Type.Literal('desc'), Type.Literal('asc')], { default: 'desc' }),
          cursor: Type.Optional(Type.String({ minLength: 1, maxLength: 200, pattern: '^[A-Za-z0-9_-]+$' })),
          beforeSeq: Type.Optional(Type.Integer({ minimum: 1 })),
        }),
        response: {
          200: StrictObject({
            items: Type.Array(TelemetryView),
            next: Type.Union([Type.String(), Type.Null()], { description: 'cursor of the next page; null: no more' }),
            nextBeforeSeq: Type.Union([Type.Integer(), Type.Null()], {
              description: 'deprecated: beforeSeq of the next newest-first page',
            }),
          }),
          ...authenticatedErrors,
        },
      },
    },
    async (request) => {
      const device = await readableDevice(request);
      const q = request.query as {
        from?: number;
        to?: number;
        limit: number;
        order: TelemetryOrder;
        cursor?: string;
        beforeSeq?: number;
      };
      const page = await history.list(device.id, {
        limit: q.limit,
        order: q.order,
        ...(q.from === undefined ? {} : { from: q.from }),
        ...(q.to === undefined ? {} : { to: q.to }),
        ...(q.cursor === undefined ? {} : { cursor: q.cursor }),
        ...(q.beforeSeq === undefined ? {} : { beforeSeq: q.beforeSeq }),
      });
      return { items: page.items.map(presentTelemetry), next: page.next, nextBeforeSeq: page.nextBeforeSeq };
    },
  );

  app.get(
    '/v1/devices/:deviceId/telemetry/points/:point',
    {
      onRequest: authenticate,
      schema: {
        summary: 'One numeric data point of a device, downsampled into time buckets',
        description:
          `Buckets are aligned to their width from the epoch (UTC days for 1d); the range is widened to whole ` +
          `buckets and may hold at most ${MAX_BUCKETS}. Only buckets with readings are returned. Booleans count as 1/0.`,
        tags: ['devices'],
        security: bearerSecurity,
        params: StrictObject({
          deviceId: DeviceIdParam,
          point: Type.String({ minLength: 1, maxLength: 64, pattern: POINT_NAME.source }),
        }),
        querystring: StrictObject({
          from: Time('start of the range, ms since the epoch'),
          to: Time('end of the range (exclusive), ms since the epoch'),
          bucket: Type.Union([Type.Literal('1m'), Type.Literal('5m'), Type.Literal('1h'), Type.Literal('1d')], {
            default: '1h',
          }),
          agg: Type.String({
            pattern: AGG_LIST,
            default: AGGREGATES.join(','),
            description: `comma-separated: ${AGGREGATES.join(', ')}`,
          }),
        }),
        response: {
          200: StrictObject({
            deviceId: Type.String(),
            point: Type.String(),
            bucket: Type.String(),
            from: Type.Integer({ description: 'the range widened to whole buckets' }),
            to: Type.Integer(),
            items: Type.Array(BucketView),
          }),
          ...authenticatedErrors,
        },
      },
    },
    async (request) => {
      const device = await readableDevice(request);
      const { point } = request.params as { point: string };
      const q = request.query as { from: number; to: number; bucket: Bucket; agg: string };
      const series = await history.points(device.id, point, {
        from: q.from,
        to: q.to,
        bucket: q.bucket,
        aggregates: [...new Set(q.agg.split(',') as Aggregate[])],
      });
      return { ...series, items: series.items.map(presentBucket) };
    },
  );
}
