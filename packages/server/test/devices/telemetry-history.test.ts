// Telemetry history on both databases: time-range listing with cursor paging returns every row exactly
// once in either order (property-based), downsampled data points match an independent computation from
// the stored rows, retention deletes only what is older than each product's own retention, and who may
// read (BIND-2: vendor tenant rules, owner and shares; revoked shares and strangers see a missing
// device), and unbinding wipes the previous owner's telemetry (BIND-5). Devices report through the SDK.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { DeviceClient } from '@castellan/device';
import fc from 'fast-check';
import { numericPoints } from '../../src/devices/telemetry-history.ts';
import { dialectCases } from '../helpers/dialects.ts';
import { bindDevice, newConsumer, shareDevice, sdkDevice } from '../helpers/device-flows.ts';
import {
  provisionTenant,
  request,
  startTestPlatform,
  type Tenant,
  type TestPlatform,
} from '../helpers/test-platform.ts';

const DAY = 86_400_000;
const BUCKETS = { '1m': 60_000, '5m': 300_000, '1h': 3_600_000, '1d': DAY } as const;

interface Row {
  seq: number;
  received_at: number;
  payload: unknown;
}

for (const dialect of await dialectCases()) {
  describe(`telemetry history on ${dialect.name}`, { skip: dialect.skip }, () => {
    let tp: TestPlatform;
    let tenant: Tenant;
    let other: Tenant;
    const clients: DeviceClient[] = [];

    before(async () => {
      tp = await startTestPlatform(dialect.name, {
        telemetry: { retentionDays: 30 },
        accounts: { stepUpMinutes: 60 },
      });
      tenant = await provisionTenant(tp, 6);
      other = await provisionTenant(tp, 1, tenant.adminToken);
    });
    after(async () => {
      for (const client of clients) await client.close().catch(() => {});
      await tp?.close();
    });

    const sdk = (device: { id: string; secret: string }) => sdkDevice(tp, device, clients);
    /** Writes rows at chosen times through the platform's telemetry writer (the path MQTT uses). */
    const seed = (deviceId: string, rows: { at: number; payload: unknown }[]) =>
      Promise.all(
        rows.map((r) =>
          tp.platform.telemetry.append({
            deviceId,
            receivedAt: r.at,
            payload: Buffer.from(JSON.stringify(r.payload)),
          }),
        ),
      );
    const stored = async (deviceId: string): Promise<Row[]> =>
      (
        await tp.query<{ seq: number; received_at: number; payload: Uint8Array }>(
          'select seq, received_at, payload from telemetry where device_id = $1',
          [deviceId],
        )
      ).map((r) => ({
        seq: Number(r.seq),
        received_at: Number(r.received_at),
        payload: JSON.parse(Buffer.from(r.payload).toString('utf8')) as unknown,
      }));
    const get = (path: string, token: Tenant['vendorToken'] | string = tenant.vendorToken) =>
      request(tp.platform, 'GET', path, { token });

    /** Follows `next` to the end; returns the seqs in the order received. */
    const walk = async (deviceId: string, query: Record<string, string | number>) => {
      const seqs: number[] = [];
      const times: number[] = [];
      let cursor: string | null = null;
      for (let pages = 0; pages < 1000; pages++) {
        const qs = new URLSearchParams(
          Object.entries({ ...query, ...(cursor ? { cursor } : {}) }).map(([k, v]) => [k, String(v)]),
        );
        const res = await get(`/v1/devices/${deviceId}/telemetry?${qs.toString()}`);
        assert.equal(res.status, 200, res.text);
        for (const item of res.body.items as { seq: number; receivedAt: number }[]) {
          seqs.push(item.seq);
          times.push(item.receivedAt);
        }
        cursor = res.body.next;
        if (cursor === null) return { seqs, times };
      }
      assert.fail('paging did not end');
    };

    test('range listing with cursor paging returns every row exactly once, in order, either way (property)', async () => {
      const device = tenant.devices[0]!;
      const t0 = Date.UTC(2030, 0, 1);
      // Same-millisecond rows included: the cursor orders by (receivedAt, seq).
      const rows = Array.from({ length: 400 }, (_, i) => ({
        at: t0 + Math.floor(i / 3) * 1000,
        payload: { i, temp: 20 + (i % 17) / 2 },
      }));
      await seed(device.id, rows);
      const all = await stored(device.id);
      assert.equal(all.length, 400);
      await fc.assert(
        fc.asyncProperty(
          fc.integer({ min: -10, max: 140 }),
          fc.integer({ min: 1, max: 150 }),
          fc.integer({ min: 5, max: 60 }),
          fc.constantFrom('asc', 'desc'),
          async (fromS, spanS, limit, order) => {
            const from = t0 + fromS * 1000;
            const to = from + spanS * 1000;
            const expected = all
              .filter((r) => r.received_at >= from && r.received_at < to)
              .sort((a, b) => a.received_at - b.received_at || a.seq - b.seq)
              .map((r) => r.seq);
            if (order === 'desc') expected.reverse();
            const { seqs } = await walk(device.id, { from, to, limit, order });
            assert.deepEqual(seqs, expected);
          },
        ),
        { numRuns: 10 },
      );
      // Without bounds: everything, newest first; the first API's beforeSeq still pages the same rows.
      const { seqs: newest } = await walk(device.id, { limit: 97 });
      assert.equal(new Set(newest).size, 400);
      const legacy: number[] = [];
      let before: number | null = null;
      do {
        const res = await get(
          `/v1/devices/${device.id}/telemetry?limit=150${before === null ? '' : `&beforeSeq=${before}`}`,
        );
        legacy.push(...res.body.items.map((i: { seq: number }) => i.seq));
        before = res.body.nextBeforeSeq;
      } while (before !== null);
      assert.deepEqual(legacy, newest);
    });

    test('bad paging and ranges are refused with stable codes', async () => {
      const device = tenant.devices[0]!;
      const page = await get(`/v1/devices/${device.id}/telemetry?limit=2&order=asc`);
      assert.equal(page.status, 200);
      const ascCursor = page.body.next as string;
      assert.equal(page.body.nextBeforeSeq, null, 'beforeSeq pages newest first only');
      const cases: [string, string, string][] = [
        [
          `order=desc&cursor=${ascCursor}`,
          'ERR_TELEMETRY_CURSOR_INVALID',
          'The paging cursor is malformed or belongs to another ordering',
        ],
        [
          'cursor=bm90LWEtY3Vyc29y',
          'ERR_TELEMETRY_CURSOR_INVALID',
          'The paging cursor is malformed or belongs to another ordering',
        ],
        [
          `beforeSeq=5&cursor=${ascCursor}`,
          'ERR_TELEMETRY_CURSOR_INVALID',
          'beforeSeq pages newest first by itself: it cannot be combined with cursor or order=asc',
        ],
        ['from=100&to=100', 'ERR_TELEMETRY_RANGE_INVALID', 'The time range is empty: from must be before to'],
      ];
      for (const [qs, code, message] of cases) {
        const res = await get(`/v1/devices/${device.id}/telemetry?${qs}`);
        assert.equal(res.status, 400, qs);
        assert.equal(res.body.error.code, code, qs);
        assert.equal(res.body.error.message, message, qs);
      }
      const points = await get(`/v1/devices/${device.id}/telemetry/points/temp?from=0&to=${2 * DAY}&bucket=1m`);
      assert.equal(points.status, 400);
      assert.equal(points.body.error.code, 'ERR_TELEMETRY_TOO_MANY_BUCKETS');
      assert.equal(
        points.body.error.message,
        'The time range holds 2880 buckets of 1m; at most 1000 per request: narrow from/to or choose a larger bucket',
      );
      const badAgg = await get(`/v1/devices/${device.id}/telemetry/points/temp?from=0&to=1000&agg=median`);
      assert.equal(badAgg.status, 400);
      assert.equal(badAgg.body.error.code, 'ERR_VALIDATION_FAILED');
    });

    test('downsampled data points match an independent computation from the stored rows', async () => {
      const device = tenant.devices[1]!;
      const t0 = Date.UTC(2030, 2, 1, 5, 17, 23);
      let seed32 = 7;
      const random = () => (seed32 = (seed32 * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
      const rows = Array.from({ length: 1500 }, (_, i) => ({
        at: t0 + Math.floor(random() * 2 * DAY),
        payload: {
          temp: Math.round((random() * 60 - 20) * 100) / 100,
          on: random() < 0.5,
          mode: 'eco',
          ...(i % 5 === 0 ? { humidity: Math.floor(random() * 100) } : {}),
        },
      }));
      // In several writer batches, out of time order, as a busy broker would deliver them.
      for (let i = 0; i < rows.length; i += 300) await seed(device.id, rows.slice(i, i + 300));
      // And some through the SDK, at the real clock (outside the seeded range, so not compared below).
      const client = await sdk(device);
      await client.publishTelemetry({ temp: 1.5, on: true });
      const all = await stored(device.id);
      assert.equal(all.length, 1501);

      const expectedBuckets = (point: string, width: number, from: number, to: number) => {
        const buckets = new Map<number, { values: number[]; last: { at: number; seq: number; v: number } }>();
        for (const row of all) {
          if (row.received_at < from || row.received_at >= to) continue;
          const value = (row.payload as Record<string, unknown>)[point];
          const v = typeof value === 'boolean' ? Number(value) : value;
          if (typeof v !== 'number') continue;
          const start = row.received_at - (row.received_at % width);
          const b = buckets.get(start) ?? { values: [], last: { at: -1, seq: -1, v } };
          b.values.push(v);
          if (row.received_at > b.last.at || (row.received_at === b.last.at && row.seq > b.last.seq)) {
            b.last = { at: row.received_at, seq: row.seq, v };
          }
          buckets.set(start, b);
        }
        return [...buckets.entries()]
          .sort(([a], [b]) => a - b)
          .map(([start, b]) => ({
            start,
            count: b.values.length,
            avg: b.values.reduce((s, x) => s + x, 0) / b.values.length,
            min: Math.min(...b.values),
            max: Math.max(...b.values),
            last: b.last.v,
          }));
      };

      const ranges: [keyof typeof BUCKETS, number, number][] = [
        ['1d', t0, t0 + 2 * DAY],
        ['1h', t0, t0 + 2 * DAY],
        ['5m', t0 + 3_600_000, t0 + 40 * 3_600_000],
        ['1m', t0 + 7_777_777, t0 + 7_777_777 + 16 * 3_600_000],
      ];
      for (const point of ['temp', 'on', 'humidity']) {
        for (const [bucket, from, to] of ranges) {
          const res = await get(
            `/v1/devices/${device.id}/telemetry/points/${point}?from=${from}&to=${to}&bucket=${bucket}`,
          );
          assert.equal(res.status, 200, res.text);
          const width = BUCKETS[bucket];
          const alignedFrom = Math.floor(from / width) * width;
          const alignedTo = Math.ceil(to / width) * width;
          assert.equal(res.body.from, alignedFrom);
          assert.equal(res.body.to, alignedTo);
          const expected = expectedBuckets(point, width, alignedFrom, alignedTo);
          assert.ok(expected.length > 0);
          assert.equal(res.body.items.length, expected.length, `${point} ${bucket}`);
          res.body.items.forEach((got: Record<string, number>, i: number) => {
            const want = expected[i]!;
            assert.deepEqual(
              { start: got.start, count: got.count, min: got.min, max: got.max, last: got.last },
              { start: want.start, count: want.count, min: want.min, max: want.max, last: want.last },
              `${point} ${bucket} bucket ${i}`,
            );
            assert.ok(Math.abs(got.avg! - want.avg) <= 1e-9 * Math.max(1, Math.abs(want.avg)), `${point} avg`);
          });
        }
      }
      // Only the aggregates asked for; strings are not data points with numbers.
      const some = await get(
        `/v1/devices/${device.id}/telemetry/points/temp?from=${t0}&to=${t0 + DAY}&bucket=1d&agg=count,last`,
      );
      assert.deepEqual(Object.keys(some.body.items[0]).sort(), ['count', 'last', 'start']);
      const mode = await get(`/v1/devices/${device.id}/telemetry/points/mode?from=${t0}&to=${t0 + DAY}&bucket=1d`);
      assert.deepEqual(mode.body.items, []);
      assert.deepEqual(numericPoints(Buffer.from('{"a":1,"b":"x","c":true,"d":null,"e":{"f":2},"bad key":3}')), [
        ['a', 1],
        ['c', 1],
      ]);
    });

    test("retention purge deletes only rows older than each product's retention", async () => {
      const now = Date.now();
      const [keepDefault, shortLived] = [tenant.devices[2]!, other.devices[0]!];
      // The other tenant's product keeps telemetry 2 days; this tenant's uses the platform's 30.
      await tp.platform.devices.updateProduct(other.productId, { telemetryRetentionDays: 2 });
      const times = [now - 40 * DAY, now - 10 * DAY, now - 3 * DAY, now - 1 * DAY, now - 60_000];
      for (const device of [keepDefault, shortLived]) {
        await seed(
          device.id,
          times.map((at, i) => ({ at, payload: { v: i } })),
        );
      }
      const minutes = (deviceId: string) =>
        tp.query<{ minute: number }>(
          'select m.minute from telemetry_point_minutes m join telemetry_series s on s.id = m.series_id where s.device_id = $1',
          [deviceId],
        );
      assert.equal((await minutes(shortLived.id)).length, 5);
      const otherBefore = (await stored(tenant.devices[1]!.id)).length;

      const result = await tp.platform.telemetryHistory.purge();
      assert.ok(result.rows >= 4, JSON.stringify(result));
      const left = async (deviceId: string) => (await stored(deviceId)).map((r) => r.received_at).sort();
      assert.deepEqual(await left(keepDefault.id), times.slice(1).sort(), '30 days: only the 40-day-old row goes');
      assert.deepEqual(await left(shortLived.id), times.slice(3).sort(), '2 days: older rows go');
      assert.equal((await minutes(shortLived.id)).length, 2, 'and their minute aggregates');
      assert.equal((await minutes(keepDefault.id)).length, 4);
      // Rows seeded in 2030 (future) and those of other devices are untouched.
      assert.equal((await stored(tenant.devices[1]!.id)).length, otherBefore);
      assert.deepEqual(await tp.platform.telemetryHistory.purge(), { rows: 0, aggregates: 0 }, 'idempotent');
    });

    test('[BIND-2] the owner and shared people read telemetry; strangers and revoked shares see a missing device', async () => {
      const device = tenant.devices[3]!;
      const owner = await bindDevice(tp, device);
      const guest = await shareDevice(tp, owner.userToken, device.id, 'guest');
      const stranger = await newConsumer(tp, 'stranger');
      const client = await sdk(device);
      await client.publishTelemetry({ temp: 21.5, on: true });
      const now = Date.now();
      const paths = [
        `/v1/devices/${device.id}/telemetry/latest`,
        `/v1/devices/${device.id}/telemetry?limit=5`,
        `/v1/devices/${device.id}/telemetry/points/temp?from=${now - 3_600_000}&to=${now + 60_000}&bucket=5m`,
      ];
      for (const path of paths) {
        for (const who of [owner.userToken, guest.userToken, tenant.vendorToken]) {
          const res = await get(path, who);
          assert.equal(res.status, 200, `${path}: ${res.text}`);
          assert.ok(res.text.includes('21.5'), path);
        }
        const missing = await get(path.replace(device.id, `01${tenant.vendorCode}${tenant.productCode}00000000ff`));
        for (const who of [stranger.userToken, other.vendorToken]) {
          const res = await get(path, who);
          assert.equal(res.status, 404, path);
          assert.deepEqual({ ...res.body.error, requestId: '' }, { ...missing.body.error, requestId: '' });
          assert.ok(!res.text.includes('21.5'));
        }
      }
      const revoke = await request(tp.platform, 'DELETE', `/v1/devices/${device.id}/shares/${guest.shareId}`, {
        token: owner.userToken,
      });
      assert.equal(revoke.status, 204, revoke.text);
      for (const path of paths) {
        const res = await get(path, guest.userToken);
        assert.equal(res.status, 404, path);
        assert.equal(res.body.error.code, 'ERR_DEVICE_NOT_FOUND');
      }
    });

    test('[BIND-5] unbinding wipes the telemetry and data-point aggregates kept for the previous owner', async () => {
      const [device, bystander] = [tenant.devices[4]!, tenant.devices[5]!];
      const owner = await bindDevice(tp, device);
      const client = await sdk(device);
      for (let i = 0; i < 5; i++) await client.publishTelemetry({ temp: i });
      await seed(bystander.id, [{ at: Date.now(), payload: { temp: 3 } }]);
      const count = async (table: 'telemetry' | 'telemetry_point_minutes', deviceId: string) =>
        Number(
          (
            await tp.query<{ n: number }>(
              table === 'telemetry'
                ? 'select count(*) as n from telemetry where device_id = $1'
                : 'select count(*) as n from telemetry_point_minutes m join telemetry_series s on s.id = m.series_id where s.device_id = $1',
              [deviceId],
            )
          )[0]!.n,
        );
      assert.equal(await count('telemetry', device.id), 5);
      assert.ok((await count('telemetry_point_minutes', device.id)) >= 1);
      const unbind = await request(tp.platform, 'DELETE', `/v1/devices/${device.id}/binding`, {
        token: owner.userToken,
      });
      assert.equal(unbind.status, 200, unbind.text);
      assert.equal(unbind.body.unbound, true);
      assert.equal(await count('telemetry', device.id), 0);
      assert.equal(await count('telemetry_point_minutes', device.id), 0);
      assert.equal(await count('telemetry', bystander.id), 1, "another device's telemetry stays");
      // The previous owner no longer reads anything; the device keeps reporting for its next owner.
      const res = await get(`/v1/devices/${device.id}/telemetry/latest`, owner.userToken);
      assert.equal(res.status, 404);
      await client.publishTelemetry({ temp: 99 });
      const latest = await get(`/v1/devices/${device.id}/telemetry/latest`);
      assert.deepEqual(latest.body.payload, { temp: 99 });
    });
  });
}
