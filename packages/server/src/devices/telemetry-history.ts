// Telemetry history: time-range queries per device with keyset paging, downsampling per data point,
// retention per product and the unbind wipe (BIND-5). Rows stay as received (the `telemetry` table);
// numeric data points are also kept as per-minute aggregates per series (`telemetry_point_minutes`,
// written by the telemetry writer in the batch's transaction), so downsampling never parses JSON
// payloads. Measurements behind this choice: docs/telemetry-and-push.md.
import { type Kysely, type Selectable, sql } from 'kysely';
import type { Logger } from 'pino';
import { CastellanError } from '../errors/index.ts';
import { asBuffer } from '../lib/bytes.ts';
import { payloadJson } from './payload-json.ts';
import type { Database } from '../store/index.ts';
import type { TelemetryItem } from './devices-service.ts';
import type { TelemetryRecord } from './telemetry-writer.ts';

/** A data point is a top-level key of the telemetry object (product data-point codes fit this). */
export const POINT_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}$/;
/** Numeric points aggregated per message: a message with hundreds of keys costs no more than this. */
export const MAX_POINTS_PER_MESSAGE = 64;
/** Most buckets one downsampling request may return. */
export const MAX_BUCKETS = 1000;
export const BUCKET_MS = { '1m': 60_000, '5m': 300_000, '1h': 3_600_000, '1d': 86_400_000 } as const;
export type Bucket = keyof typeof BUCKET_MS;
export const AGGREGATES = ['avg', 'min', 'max', 'count', 'last'] as const;
export type Aggregate = (typeof AGGREGATES)[number];

const MINUTE_MS = 60_000;
const DAY_MS = 86_400_000;
/** Rows one purge or wipe statement deletes at most: each holds the writer up only briefly. */
const DELETE_BATCH_ROWS = 2000;
const PURGE_DEVICE_PAGE = 200;
const CURSOR = /^t1\.(asc|desc)\.(\d{1,16})\.(\d{1,19})$/;

export type TelemetryOrder = 'asc' | 'desc';

export interface TelemetryQuery {
  /** Inclusive lower bound on received_at (ms since the epoch). */
  from?: number;
  /** Exclusive upper bound on received_at. */
  to?: number;
  limit: number;
  order: TelemetryOrder;
  cursor?: string;
  /** The first API's paging (seq order, newest first); kept for existing clients. */
  beforeSeq?: number;
}

export interface TelemetryPage {
  items: TelemetryItem[];
  /** Opaque cursor for the next page in the same order; null at the end. */
  next: string | null;
  /** For clients of the first API: the next page of a newest-first listing with beforeSeq. */
  nextBeforeSeq: number | null;
}

export interface PointBucket {
  /** Start of the bucket (ms since the epoch, aligned to the bucket width from the epoch, UTC). */
  start: number;
  count?: number;
  avg?: number;
  min?: number;
  max?: number;
  last?: number;
}

export interface PointSeries {
  deviceId: string;
  point: string;
  bucket: Bucket;
  /** The requested range widened to whole buckets: [from, to). */
  from: number;
  to: number;
  /** Buckets holding at least one reading, oldest first. */
  items: PointBucket[];
}

/**
 * The numeric data points of a telemetry payload: top-level keys with a finite number (or a boolean, as
 * 1/0). Other values (strings, objects, arrays) stay in the stored payload only.
 */
export function numericPoints(payload: Uint8Array): Array<[string, number]> {
  const json = payloadJson(asBuffer(payload));
  if (!json.ok) return [];
  const { value } = json;
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return [];
  const points: Array<[string, number]> = [];
  for (const [key, v] of Object.entries(value as Record<string, unknown>)) {
    if (points.length >= MAX_POINTS_PER_MESSAGE) break;
    if (!POINT_NAME.test(key)) continue;
    if (typeof v === 'number' && Number.isFinite(v)) points.push([key, v]);
    else if (typeof v === 'boolean') points.push([key, v ? 1 : 0]);
  }
  return points;
}

export interface MinuteAggregate {
  deviceId: string;
  point: string;
  minute: number;
  n: number;
  total: number;
  min: number;
  max: number;
  lastAt: number;
  lastValue: number;
}

/** Folds a batch into one aggregate per device, point and minute (batch order breaks ties for `last`). */
export function aggregateMinutes(batch: readonly TelemetryRecord[]): MinuteAggregate[] {
  const byKey = new Map<string, MinuteAggregate>();
  for (const record of batch) {
    const minute = record.receivedAt - (record.receivedAt % MINUTE_MS);
    for (const [point, value] of numericPoints(record.payload)) {
      const key = `${record.deviceId}\u0000${point}\u0000${minute}`;
      const a = byKey.get(key);
      if (!a) {
        byKey.set(key, {
          deviceId: record.deviceId,
          point,
          minute,
          n: 1,
          total: value,
          min: value,
          max: value,
          lastAt: record.receivedAt,
          lastValue: value,
        });
        continue;
      }
      a.n++;
      a.total += value;
      if (value < a.min) a.min = value;
      if (value > a.max) a.max = value;
      if (record.receivedAt >= a.lastAt) {
        a.lastAt = record.receivedAt;
        a.lastValue = value;
      }
    }
  }
  return [...byKey.values()];
}

const seriesKey = (deviceId: string, point: string) => `${deviceId}\u0000${point}`;
const SERIES_CACHE_MAX = 200_000;

/**
 * The telemetry writer's `derive`: per-minute aggregates of each batch's numeric data points. Series IDs
 * are looked up (and created) before the batch's transaction, in their own statements, and cached only
 * once committed, so a batch that fails never leaves an ID in the cache that the store does not hold.
 */
export class TelemetryPointAggregates {
  readonly #db: Kysely<Database>;
  readonly #series = new Map<string, number>();

  constructor(db: Kysely<Database>) {
    this.#db = db;
  }

  readonly derive = async (
    batch: readonly TelemetryRecord[],
  ): Promise<((trx: Kysely<Database>) => Promise<void>) | null> => {
    const aggregates = aggregateMinutes(batch);
    if (aggregates.length === 0) return null;
    const ids = await this.#seriesIds(aggregates);
    const rows = aggregates.map((a) => ({
      series_id: ids.get(seriesKey(a.deviceId, a.point))!,
      minute: a.minute,
      n: a.n,
      total: a.total,
      min_value: a.min,
      max_value: a.max,
      last_at: a.lastAt,
      last_value: a.lastValue,
    }));
    return async (trx) => {
      // 8 parameters a row: 500 rows stay far below both databases' bound-parameter limits.
      for (let i = 0; i < rows.length; i += 500) {
        await trx
          .insertInto('telemetry_point_minutes')
          .values(rows.slice(i, i + 500))
          .onConflict((oc) =>
            oc.columns(['series_id', 'minute']).doUpdateSet({
              // Portable SQL: CASE rather than SQLite's min()/PostgreSQL's least().
              n: sql`telemetry_point_minutes.n + excluded.n`,
              total: sql`telemetry_point_minutes.total + excluded.total`,
              min_value: sql`case when excluded.min_value < telemetry_point_minutes.min_value then excluded.min_value else telemetry_point_minutes.min_value end`,
              max_value: sql`case when excluded.max_value > telemetry_point_minutes.max_value then excluded.max_value else telemetry_point_minutes.max_value end`,
              // A later batch wins a tie: batches commit in arrival order.
              last_value: sql`case when excluded.last_at >= telemetry_point_minutes.last_at then excluded.last_value else telemetry_point_minutes.last_value end`,
              last_at: sql`case when excluded.last_at >= telemetry_point_minutes.last_at then excluded.last_at else telemetry_point_minutes.last_at end`,
            }),
          )
          .execute();
      }
    };
  };

  async #seriesIds(aggregates: readonly MinuteAggregate[]): Promise<Map<string, number>> {
    const missing = new Map<string, { device_id: string; point: string }>();
    for (const a of aggregates) {
      const key = seriesKey(a.deviceId, a.point);
      if (!this.#series.has(key)) missing.set(key, { device_id: a.deviceId, point: a.point });
    }
    if (missing.size > 0) {
      const wanted = [...missing.values()];
      if (this.#series.size + wanted.length > SERIES_CACHE_MAX) this.#series.clear();
      for (let i = 0; i < wanted.length; i += 400) {
        const chunk = wanted.slice(i, i + 400);
        await this.#db
          .insertInto('telemetry_series')
          .values(chunk)
          .onConflict((oc) => oc.columns(['device_id', 'point']).doNothing())
          .execute();
        const found = await this.#db
          .selectFrom('telemetry_series')
          .select(['id', 'device_id', 'point'])
          .where('device_id', 'in', [...new Set(chunk.map((c) => c.device_id))])
          .where('point', 'in', [...new Set(chunk.map((c) => c.point))])
          .execute();
        for (const row of found) this.#series.set(seriesKey(row.device_id, row.point), Number(row.id));
      }
    }
    const ids = new Map<string, number>();
    for (const a of aggregates) {
      const key = seriesKey(a.deviceId, a.point);
      const id = this.#series.get(key);
      if (id === undefined) throw new Error(`telemetry series missing after insert: ${a.point}`);
      ids.set(key, id);
    }
    return ids;
  }
}

function encodeCursor(order: TelemetryOrder, item: TelemetryItem): string {
  return Buffer.from(`t1.${order}.${item.receivedAt}.${item.seq}`, 'utf8').toString('base64url');
}

function decodeCursor(cursor: string, order: TelemetryOrder): { at: number; seq: number } {
  const match = CURSOR.exec(Buffer.from(cursor, 'base64url').toString('utf8'));
  const at = Number(match?.[2]);
  const seq = Number(match?.[3]);
  if (!match || match[1] !== order || !Number.isSafeInteger(at) || !Number.isSafeInteger(seq)) {
    throw new CastellanError('ERR_TELEMETRY_CURSOR_INVALID');
  }
  return { at, seq };
}

function toItem(row: Selectable<Database['telemetry']>): TelemetryItem {
  return {
    seq: Number(row.seq),
    deviceId: row.device_id,
    receivedAt: Number(row.received_at),
    payload: JSON.parse(asBuffer(row.payload).toString('utf8')) as unknown,
  };
}

const yieldTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

export interface TelemetryHistoryOptions {
  db: Kysely<Database>;
  log: Logger;
  /** Committed before a wipe deletes, so no row of the previous owner lands after it. */
  writer: { flush(): Promise<void> };
  /** telemetry.retentionDays: for products without their own telemetryRetentionDays. */
  defaultRetentionDays: number;
  /** telemetry.purgeIntervalMinutes, in ms. */
  purgeIntervalMs: number;
  now?: () => number;
}

export class TelemetryHistory {
  readonly #db: Kysely<Database>;
  readonly #log: Logger;
  readonly #writer: { flush(): Promise<void> };
  readonly #defaultRetentionDays: number;
  readonly #purgeIntervalMs: number;
  readonly #now: () => number;
  #timer: NodeJS.Timeout | undefined;
  #purging: Promise<{ rows: number; aggregates: number }> | undefined;

  constructor(options: TelemetryHistoryOptions) {
    this.#db = options.db;
    this.#log = options.log;
    this.#writer = options.writer;
    this.#defaultRetentionDays = options.defaultRetentionDays;
    this.#purgeIntervalMs = options.purgeIntervalMs;
    this.#now = options.now ?? Date.now;
  }

  /** Rows of one device in a time range, newest or oldest first, a page at a time. */
  async list(deviceId: string, query: TelemetryQuery): Promise<TelemetryPage> {
    if (query.from !== undefined && query.to !== undefined && query.from >= query.to) {
      throw new CastellanError('ERR_TELEMETRY_RANGE_INVALID');
    }
    if (query.beforeSeq !== undefined && (query.cursor !== undefined || query.order === 'asc')) {
      throw new CastellanError('ERR_TELEMETRY_CURSOR_INVALID', {
        message: 'beforeSeq pages newest first by itself: it cannot be combined with cursor or order=asc',
      });
    }
    let q = this.#db.selectFrom('telemetry').selectAll().where('device_id', '=', deviceId);
    if (query.from !== undefined) q = q.where('received_at', '>=', query.from);
    if (query.to !== undefined) q = q.where('received_at', '<', query.to);
    if (query.beforeSeq !== undefined) {
      q = q.where('seq', '<', query.beforeSeq).orderBy('seq', 'desc');
    } else {
      const { order } = query;
      if (query.cursor !== undefined) {
        const { at, seq } = decodeCursor(query.cursor, order);
        const op = order === 'desc' ? '<' : '>';
        q = q.where((eb) =>
          eb.or([eb('received_at', op, at), eb.and([eb('received_at', '=', at), eb('seq', op, seq)])]),
        );
      }
      q = q.orderBy('received_at', order).orderBy('seq', order);
    }
    // One row more than asked for tells whether there is a next page.
    const rows = await q.limit(query.limit + 1).execute();
    const more = rows.length > query.limit;
    const items = rows.slice(0, query.limit).map(toItem);
    const last = items.at(-1);
    return {
      items,
      next: more && last && query.beforeSeq === undefined ? encodeCursor(query.order, last) : null,
      nextBeforeSeq: more && last && query.order === 'desc' ? last.seq : null,
    };
  }

  async latest(deviceId: string): Promise<TelemetryItem | null> {
    return (await this.list(deviceId, { limit: 1, order: 'desc' })).items[0] ?? null;
  }

  /**
   * One data point of one device, downsampled in SQL from the per-minute aggregates: buckets aligned
   * to their width from the epoch (UTC days for 1d), the range widened to whole buckets.
   */
  async points(
    deviceId: string,
    point: string,
    query: { from: number; to: number; bucket: Bucket; aggregates: readonly Aggregate[] },
  ): Promise<PointSeries> {
    if (query.from >= query.to) throw new CastellanError('ERR_TELEMETRY_RANGE_INVALID');
    const width = BUCKET_MS[query.bucket];
    const from = Math.floor(query.from / width) * width;
    const to = Math.ceil(query.to / width) * width;
    const buckets = (to - from) / width;
    if (buckets > MAX_BUCKETS) {
      throw new CastellanError('ERR_TELEMETRY_TOO_MANY_BUCKETS', {
        message: `The time range holds ${buckets} buckets of ${query.bucket}; at most ${MAX_BUCKETS} per request: narrow from/to or choose a larger bucket`,
        details: { buckets, maxBuckets: MAX_BUCKETS },
      });
    }
    const series = await this.#db
      .selectFrom('telemetry_series')
      .select('id')
      .where('device_id', '=', deviceId)
      .where('point', '=', point)
      .executeTakeFirst();
    if (!series) return { deviceId, point, bucket: query.bucket, from, to, items: [] };
    // The last value of a bucket is its latest minute's last value (minutes do not overlap).
    const { rows } = await sql<{
      b: number;
      n: number;
      total: number;
      min_value: number;
      max_value: number;
      last_value: number;
    }>`select b, sum(n) as n, sum(total) as total, min(min_value) as min_value, max(max_value) as max_value,
        max(case when rn = 1 then last_value end) as last_value
      from (
        select minute - (minute % ${width}) as b, n, total, min_value, max_value, last_value,
          row_number() over (partition by minute - (minute % ${width}) order by minute desc) as rn
        from telemetry_point_minutes
        where series_id = ${series.id} and minute >= ${from} and minute < ${to}
      ) as m
      group by b
      order by b`.execute(this.#db);
    const wanted = new Set(query.aggregates);
    const items = rows.map((row) => {
      const n = Number(row.n);
      const bucket: PointBucket = { start: Number(row.b) };
      if (wanted.has('count')) bucket.count = n;
      if (wanted.has('avg')) bucket.avg = Number(row.total) / n;
      if (wanted.has('min')) bucket.min = Number(row.min_value);
      if (wanted.has('max')) bucket.max = Number(row.max_value);
      if (wanted.has('last')) bucket.last = Number(row.last_value);
      return bucket;
    });
    return { deviceId, point, bucket: query.bucket, from, to, items };
  }

  /**
   * Deletes telemetry older than its product's retention (telemetryRetentionDays, else the platform
   * default), a product and a page of devices at a time, in statements of at most DELETE_BATCH_ROWS
   * rows with a turn of the event loop between them. One purge at a time.
   */
  purge(): Promise<{ rows: number; aggregates: number }> {
    this.#purging ??= this.#purge().finally(() => {
      this.#purging = undefined;
    });
    return this.#purging;
  }

  async #purge(): Promise<{ rows: number; aggregates: number }> {
    const now = this.#now();
    const deleted = { rows: 0, aggregates: 0 };
    let afterProduct = '';
    for (;;) {
      const products = await this.#db
        .selectFrom('products')
        .select(['id', 'telemetry_retention_days'])
        .where('id', '>', afterProduct)
        .orderBy('id')
        .limit(100)
        .execute();
      if (products.length === 0) break;
      for (const product of products) {
        const days = product.telemetry_retention_days ?? this.#defaultRetentionDays;
        const cutoff = now - days * DAY_MS;
        let afterDevice = '';
        for (;;) {
          const ids = (
            await this.#db
              .selectFrom('devices')
              .select('id')
              .where('product_id', '=', product.id)
              .where('id', '>', afterDevice)
              .orderBy('id')
              .limit(PURGE_DEVICE_PAGE)
              .execute()
          ).map((r) => r.id);
          if (ids.length === 0) break;
          const result = await this.#deleteOlder(ids, cutoff);
          deleted.rows += result.rows;
          deleted.aggregates += result.aggregates;
          afterDevice = ids.at(-1)!;
        }
      }
      afterProduct = products.at(-1)!.id;
    }
    if (deleted.rows > 0 || deleted.aggregates > 0) this.#log.info(deleted, 'telemetry: retention purge deleted');
    return deleted;
  }

  /**
   * BIND-5: everything stored about the device's telemetry goes with its owner (registered with
   * DeviceAccess.onUnbind). Queued rows are committed first so none lands after the wipe.
   */
  async wipeDevice(deviceId: string): Promise<{ rows: number; aggregates: number }> {
    await this.#writer.flush();
    const deleted = await this.#deleteOlder([deviceId], Number.MAX_SAFE_INTEGER);
    this.#log.info({ deviceId, ...deleted }, 'telemetry: wiped on unbind');
    return deleted;
  }

  /** Rows received before `cutoff` and the minutes that end by it. */
  async #deleteOlder(deviceIds: string[], cutoff: number): Promise<{ rows: number; aggregates: number }> {
    let rows = 0;
    for (;;) {
      const result = await this.#db
        .deleteFrom('telemetry')
        .where('seq', 'in', (eb) =>
          eb
            .selectFrom('telemetry')
            .select('seq')
            .where('device_id', 'in', deviceIds)
            .where('received_at', '<', cutoff)
            .limit(DELETE_BATCH_ROWS),
        )
        .executeTakeFirst();
      const n = Number(result.numDeletedRows);
      rows += n;
      if (n < DELETE_BATCH_ROWS) break;
      await yieldTurn();
    }
    let aggregates = 0;
    const lastMinute = cutoff - MINUTE_MS;
    const series = (
      await this.#db.selectFrom('telemetry_series').select('id').where('device_id', 'in', deviceIds).execute()
    ).map((r) => Number(r.id));
    for (let i = 0; i < series.length;) {
      const ids = series.slice(i, i + PURGE_DEVICE_PAGE);
      const result = await sql`delete from telemetry_point_minutes
        where (series_id, minute) in (
          select series_id, minute from telemetry_point_minutes
          where series_id in (${sql.join(ids)}) and minute <= ${lastMinute}
          limit ${DELETE_BATCH_ROWS}
        )`.execute(this.#db);
      const n = Number(result.numAffectedRows ?? 0);
      aggregates += n;
      // The next page of series once this one has nothing older left.
      if (n < DELETE_BATCH_ROWS) i += PURGE_DEVICE_PAGE;
      else await yieldTurn();
    }
    return { rows, aggregates };
  }

  /** Starts the periodic retention purge. */
  start(): void {
    this.#timer = setInterval(() => {
      this.purge().catch((error: unknown) => this.#log.warn({ err: error }, 'telemetry: retention purge failed'));
    }, this.#purgeIntervalMs);
    this.#timer.unref();
  }

  async close(): Promise<void> {
    clearInterval(this.#timer);
    this.#timer = undefined;
    await this.#purging?.catch(() => {});
  }
}
