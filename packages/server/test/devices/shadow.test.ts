// Device shadow (CHAN-7) on both databases, devices through the SDK (DeviceClient): desired state with
// optimistic concurrency (a stale expectedVersion changes nothing), merges with null deleting keys,
// size and depth limits, desired published retained so a device that connects later gets it, the
// device applying it and reporting back, stale and malformed reports, the product schema, who may
// read and change it (BIND-2), and unbinding wiping it (BIND-5).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { DeviceClient } from '@castellan/device';
import { mergeState, stateDelta } from '@castellan/device';
import fc from 'fast-check';
import { parseAck } from '../../src/devices/commands/command-payloads.ts';
import type { DeviceChange } from '../../src/devices/index.ts';
import {
  checkDocument,
  deltaOf,
  type JsonObject,
  jsonEqual,
  mergeDocument,
} from '../../src/devices/shadow/json-document.ts';
import { dialectCases } from '../helpers/dialects.ts';
import { bindDevice, shareDevice, sdkDevice } from '../helpers/device-flows.ts';
import { connectDevice, endClient, publishOutcome, subscribeOutcome } from '../helpers/mqtt-clients.ts';
import {
  provisionTenant,
  request,
  startTestPlatform,
  type Tenant,
  type TestPlatform,
} from '../helpers/test-platform.ts';

const PAYLOAD_FORMAT_INVALID = 0x99;
const NOT_AUTHORIZED = 0x87;

describe('shadow documents (properties)', () => {
  const key = fc.constantFrom('a', 'b', 'c', 'mode', 'level');
  const leaf = fc.oneof(fc.integer(), fc.boolean(), fc.string({ maxLength: 4 }), fc.constant(null));
  const doc: fc.Arbitrary<JsonObject> = fc.letrec((tie) => ({
    obj: fc.dictionary(key, fc.oneof({ depthSize: 'small' }, leaf, tie('obj')), { maxKeys: 4 }),
  })).obj as fc.Arbitrary<JsonObject>;

  test('[CHAN-7] applying the delta brings reported in step with desired; server and SDK agree', () => {
    fc.assert(
      fc.property(doc, doc, (desiredUpdate, reportedUpdate) => {
        const desired = mergeDocument({}, desiredUpdate);
        const reported = mergeDocument({}, reportedUpdate);
        const delta = deltaOf(desired, reported);
        assert.deepEqual(stateDelta(desired, reported), delta);
        assert.deepEqual(mergeState(reported, delta), mergeDocument(reported, delta));
        assert.deepEqual(deltaOf(desired, mergeDocument(reported, delta)), {});
        // Merging never leaves a null at an object key, and is idempotent.
        assert.ok(!JSON.stringify(desired).includes(':null'));
        assert.ok(jsonEqual(mergeDocument(desired, desiredUpdate), desired));
      }),
      { numRuns: 500 },
    );
  });

  test('[CHAN-7] limits and acknowledgement parsing never throw, whatever arrives', () => {
    fc.assert(
      fc.property(fc.jsonValue(), (value) => {
        const verdict = checkDocument(value);
        assert.ok(verdict === null || typeof verdict === 'string');
        const ack = parseAck(Buffer.from(JSON.stringify(value) ?? ''));
        assert.ok(typeof ack === 'string' || ['succeeded', 'failed', 'rejected'].includes(ack.status));
      }),
      { numRuns: 500 },
    );
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
        const ack = parseAck(Buffer.from(bytes));
        assert.ok(typeof ack === 'string' || typeof ack.status === 'string');
      }),
      { numRuns: 300 },
    );
  });
});

for (const dialect of await dialectCases()) {
  describe(`device shadow on ${dialect.name}`, { skip: dialect.skip }, () => {
    let tp: TestPlatform;
    let tenant: Tenant;
    let spare: Tenant['devices'];
    const changes: DeviceChange[] = [];
    const clients: DeviceClient[] = [];

    before(async () => {
      tp = await startTestPlatform(dialect.name, { accounts: { stepUpMinutes: 60 } });
      tenant = await provisionTenant(tp, 12);
      spare = [...tenant.devices];
      tp.platform.deviceEvents.on('change', (c) => changes.push(c));
    });
    after(async () => {
      for (const client of clients) await client.close().catch(() => {});
      await tp?.close();
    });

    const nextDevice = () => {
      const device = spare.shift();
      assert.ok(device, 'enough test devices');
      return device;
    };
    const sdk = (device: { id: string; secret: string }, protocolVersion: 4 | 5 = 5) =>
      sdkDevice(tp, device, clients, protocolVersion);
    const putDesired = (deviceId: string, body: unknown, token: Tenant['vendorToken'] | string = tenant.vendorToken) =>
      request(tp.platform, 'PUT', `/v1/devices/${deviceId}/shadow/desired`, { token, body });
    const getShadow = (deviceId: string, token: Tenant['vendorToken'] | string = tenant.vendorToken) =>
      request(tp.platform, 'GET', `/v1/devices/${deviceId}/shadow`, { token });
    /** Waits until the shadow satisfies `check` (reports are applied before the device's PUBACK). */
    const eventually = async <T>(read: () => Promise<T>, check: (value: T) => boolean, what: string): Promise<T> => {
      for (let i = 0; i < 100; i++) {
        const value = await read();
        if (check(value)) return value;
        await sleep(50);
      }
      assert.fail(`timed out waiting for ${what}`);
    };

    test('[CHAN-7] desired state is published retained: a device that connects later gets it, applies it and reports back', async () => {
      const device = nextDevice();
      const empty = await getShadow(device.id);
      assert.equal(empty.status, 200, empty.text);
      assert.deepEqual(
        {
          desired: empty.body.desired,
          reported: empty.body.reported,
          delta: empty.body.delta,
          version: empty.body.version,
        },
        { desired: {}, reported: {}, delta: {}, version: 0 },
      );

      const before = Date.now();
      const set = await putDesired(device.id, { state: { power: 'on', light: { level: 40, color: 'warm' } } });
      assert.equal(set.status, 200, set.text);
      assert.equal(set.body.version, 1);
      assert.equal(set.body.desiredVersion, 1);
      assert.deepEqual(set.body.delta, { power: 'on', light: { level: 40, color: 'warm' } });
      assert.ok(set.body.metadata.desired.power >= before);
      assert.ok(set.body.desiredUpdatedAt >= before);
      assert.equal(set.body.reportedUpdatedAt, null);
      const desiredChange = changes.find((c) => c.deviceId === device.id && c.kind === 'shadow.desired');
      assert.deepEqual(desiredChange?.data, {
        version: 1,
        state: { power: 'on', light: { level: 40, color: 'warm' } },
      });

      // The device was offline: it connects now and finds the desired document waiting (retained).
      const client = await sdk(device);
      const applied: Array<Record<string, unknown>> = [];
      await client.onDesired((delta) => {
        applied.push(delta);
      });
      const synced = await client.syncShadow();
      assert.equal(synced.version, 1);
      assert.deepEqual(synced.desired, { power: 'on', light: { level: 40, color: 'warm' } });
      assert.deepEqual(applied, [{ power: 'on', light: { level: 40, color: 'warm' } }]);

      const after = await eventually(
        () => getShadow(device.id),
        (r) => r.body.version === 2,
        'the report',
      );
      assert.deepEqual(after.body.reported, { power: 'on', light: { level: 40, color: 'warm' } });
      assert.deepEqual(after.body.delta, {});
      assert.equal(after.body.desiredVersion, 1);
      assert.ok(after.body.metadata.reported.light >= before);
      assert.ok(changes.some((c) => c.deviceId === device.id && c.kind === 'shadow.reported'));
    });

    test('[CHAN-7] a connected device receives desired changes as they happen; null deletes a key, objects merge', async () => {
      const device = nextDevice();
      const client = await sdk(device);
      const seen: Array<{ delta: Record<string, unknown>; version: number }> = [];
      await client.onDesired((delta, desired) => {
        seen.push({ delta, version: desired.version });
      });
      await client.reportState({ power: 'off', light: { level: 10, color: 'cold' }, firmware: '1.2.0' });
      await eventually(
        () => getShadow(device.id),
        (r) => r.body.version === 1,
        'the first report',
      );

      const set = await putDesired(device.id, { state: { power: 'on', light: { level: 80 } }, expectedVersion: 1 });
      assert.equal(set.status, 200, set.text);
      assert.equal(set.body.version, 2);
      assert.deepEqual(set.body.desired, { power: 'on', light: { level: 80 } });
      assert.deepEqual(set.body.delta, { power: 'on', light: { level: 80 } });
      const applied = await eventually(
        () => getShadow(device.id),
        (r) => r.body.version === 3,
        'the device applying desired state',
      );
      assert.deepEqual(seen, [{ delta: { power: 'on', light: { level: 80 } }, version: 2 }]);
      assert.deepEqual(applied.body.reported, { power: 'on', light: { level: 80, color: 'cold' }, firmware: '1.2.0' });
      assert.deepEqual(applied.body.delta, {});

      // null deletes (nested too); other keys stay.
      const removed = await putDesired(device.id, { state: { light: { level: null }, power: null, mode: 'eco' } });
      assert.equal(removed.status, 200, removed.text);
      assert.deepEqual(removed.body.desired, { light: {}, mode: 'eco' });
      assert.equal(removed.body.metadata.desired.power, undefined);
      assert.equal(typeof removed.body.metadata.desired.mode, 'number');
      // The device applies the new key and reports it back.
      const settled = await eventually(
        () => getShadow(device.id),
        (r) => r.body.reported.mode === 'eco',
        'the device applying mode',
      );
      assert.equal(settled.body.version, removed.body.version + 1);
      // Setting what is already there changes nothing: same version, nothing published.
      const same = await putDesired(device.id, { state: { mode: 'eco' } });
      assert.equal(same.body.version, settled.body.version);
    });

    test('[CHAN-7] a stale expectedVersion is refused with the current version and nothing is stored', async () => {
      const device = nextDevice();
      assert.equal((await putDesired(device.id, { state: { target: 20 }, expectedVersion: 0 })).status, 200);
      const second = await putDesired(device.id, { state: { target: 21 }, expectedVersion: 1 });
      assert.equal(second.body.version, 2);
      // A second app still holding version 1:
      const stale = await putDesired(device.id, { state: { target: 35, boost: true }, expectedVersion: 1 });
      assert.equal(stale.status, 409, stale.text);
      assert.equal(stale.body.error.code, 'ERR_SHADOW_VERSION_CONFLICT');
      assert.equal(
        stale.body.error.message,
        'The shadow is at version 2: read it again and retry with that expectedVersion',
      );
      assert.deepEqual(stale.body.error.details, { version: 2 });
      const ahead = await putDesired(device.id, { state: { target: 35 }, expectedVersion: 7 });
      assert.equal(ahead.status, 409);
      const now = await getShadow(device.id);
      assert.deepEqual(now.body.desired, { target: 21 });
      assert.equal(now.body.version, 2);
      const rows = await tp.query<{ desired: string; version: number }>(
        'select desired, version from device_shadows where device_id = $1',
        [device.id],
      );
      assert.deepEqual(
        rows.map((r) => [JSON.parse(r.desired), Number(r.version)]),
        [[{ target: 21 }, 2]],
      );

      // Racing writers with the same expectedVersion: exactly one wins.
      const race = await Promise.all(
        [1, 2, 3, 4, 5].map((n) => putDesired(device.id, { state: { target: 40 + n }, expectedVersion: 2 })),
      );
      assert.deepEqual(race.map((r) => r.status).sort(), [200, 409, 409, 409, 409]);
      const winner = race.find((r) => r.status === 200)!;
      assert.deepEqual((await getShadow(device.id)).body.desired, winner.body.desired);
      assert.equal((await getShadow(device.id)).body.version, 3);
    });

    test('[CHAN-7] desired state over the size and depth limits, or not an object, is refused and not stored', async () => {
      const device = nextDevice();
      const refusals: Array<[unknown, number, string, string]> = [
        [
          { state: { blob: 'x'.repeat(9000) } },
          400,
          'ERR_SHADOW_STATE_INVALID',
          'Desired state is 9011 bytes; at most 8192 are allowed',
        ],
        [
          { state: { a: { b: { c: { d: { e: 1 } } } } } },
          400,
          'ERR_SHADOW_STATE_INVALID',
          'Desired state a.b.c.d nests deeper than 4 levels',
        ],
        [
          { state: { 'bad key': 1 } },
          400,
          'ERR_SHADOW_STATE_INVALID',
          'Desired state key "bad key" is not allowed (1-64 characters: letters, digits, _ . : -)',
        ],
        // Refused by the JSON parser already (prototype poisoning); the MQTT path checks it itself.
        [
          { state: { ['__proto__']: { polluted: true } } },
          400,
          'ERR_HTTP_MALFORMED_JSON',
          'Request body is not valid JSON',
        ],
        [{ state: [1, 2] }, 400, 'ERR_VALIDATION_FAILED', 'body/state must be object'],
        [{ state: { a: 1 }, expectedVersion: -1 }, 400, 'ERR_VALIDATION_FAILED', 'body/expectedVersion must be >= 0'],
        [{ state: { a: 1 }, extra: true }, 400, 'ERR_VALIDATION_UNKNOWN_FIELD', 'Unknown field body/extra'],
      ];
      for (const [body, status, code, message] of refusals) {
        const raw = JSON.stringify(body);
        const res = await request(tp.platform, 'PUT', `/v1/devices/${device.id}/shadow/desired`, {
          token: tenant.vendorToken,
          rawBody: raw,
        });
        assert.equal(res.status, status, `${raw.slice(0, 60)}: ${res.text}`);
        assert.equal(res.body.error.code, code);
        assert.equal(res.body.error.message, message);
      }
      assert.deepEqual(await tp.query('select device_id from device_shadows where device_id = $1', [device.id]), []);
      assert.equal(({} as Record<string, unknown>).polluted, undefined);
      // The merged document counts too: two updates that fit alone but not together.
      assert.equal((await putDesired(device.id, { state: { a: 'x'.repeat(5000) } })).status, 200);
      const merged = await putDesired(device.id, { state: { b: 'y'.repeat(5000) } });
      assert.equal(merged.status, 400);
      assert.match(merged.body.error.message, /^The desired document after this update is \d+ bytes; at most 8192/);
      assert.deepEqual(Object.keys((await getShadow(device.id)).body.desired), ['a']);
    });

    test('[CHAN-7] reports: stale ones are ignored and counted, malformed ones refused with 0x99, others merged', async () => {
      const device = nextDevice();
      await putDesired(device.id, { state: { mode: 'auto' } });
      await putDesired(device.id, { state: { mode: 'manual' } });
      const client = await connectDevice(tp.platform, device, 5);
      const topic = `devices/${device.id}/state`;
      // Based on desired version 1, but version 2 changed desired since: stale.
      assert.equal(await publishOutcome(client, topic, JSON.stringify({ state: { mode: 'auto' }, version: 1 }), 1), 0);
      let shadow = await getShadow(device.id);
      assert.deepEqual(shadow.body.reported, {});
      assert.equal(shadow.body.staleReports, 1);
      assert.equal(shadow.body.version, 2);
      // Based on the current desired version: applied.
      assert.equal(
        await publishOutcome(client, topic, JSON.stringify({ state: { mode: 'manual' }, version: 2 }), 1),
        0,
      );
      // A plain object is the reported state itself (simple devices); retained publishes are allowed.
      assert.equal(await publishOutcome(client, topic, JSON.stringify({ temperature: 21.5 }), 1, true), 0);
      shadow = await getShadow(device.id);
      assert.deepEqual(shadow.body.reported, { mode: 'manual', temperature: 21.5 });
      assert.equal(shadow.body.version, 4);
      for (const [payload, why] of [
        ['not json', 'not JSON'],
        ['[1,2]', 'an array'],
        [JSON.stringify({ state: { mode: 'x' }, version: -3 }), 'a negative version'],
        [JSON.stringify({ state: { a: { b: { c: { d: { e: 1 } } } } } }), 'too deep'],
        [JSON.stringify({ huge: 'z'.repeat(9000) }), 'too large'],
        ['{"state":{"__proto__":{"polluted":true}}}', 'a __proto__ key'],
      ] as const) {
        assert.equal(await publishOutcome(client, topic, payload, 1), PAYLOAD_FORMAT_INVALID, why);
      }
      shadow = await getShadow(device.id);
      assert.deepEqual(shadow.body.reported, { mode: 'manual', temperature: 21.5 }, 'nothing changed');
      assert.equal(shadow.body.version, 4);
      await endClient(client);
      // MQTT 3.1.1 has no negative PUBACK: the connection is closed instead.
      const old = await connectDevice(tp.platform, device, 4);
      assert.equal(await publishOutcome(old, topic, 'not json', 1), 'closed');
      old.end(true);
      assert.deepEqual((await getShadow(device.id)).body.reported, { mode: 'manual', temperature: 21.5 });
    });

    test('[CHAN-7] a device can neither report into nor subscribe to another device’s shadow', async () => {
      const [victim, attacker] = [nextDevice(), nextDevice()];
      await putDesired(victim.id, { state: { secretMode: 'away' } });
      const client = await connectDevice(tp.platform, attacker, 5);
      assert.equal(
        await publishOutcome(client, `devices/${victim.id}/state`, JSON.stringify({ state: { door: 'open' } }), 1),
        NOT_AUTHORIZED,
      );
      assert.deepEqual(await subscribeOutcome(client, [`devices/${victim.id}/shadow/desired`]), [NOT_AUTHORIZED]);
      await endClient(client);
      assert.deepEqual((await getShadow(victim.id)).body.reported, {});
    });

    test('[CHAN-7] desired state is checked against the product data points', async () => {
      const other = await provisionTenant(tp, 1, tenant.adminToken);
      await tp.platform.devices.updateProduct(other.productId, {
        dataPoints: {
          properties: [
            { code: 'power', type: 'bool', access: 'rw' },
            { code: 'temperature', type: 'number', access: 'ro' },
            { code: 'level', type: 'integer', min: 0, max: 100, access: 'rw' },
          ],
          commands: [],
          events: [],
        },
      });
      const device = other.devices[0]!;
      const put = (state: unknown) =>
        request(tp.platform, 'PUT', `/v1/devices/${device.id}/shadow/desired`, {
          token: other.vendorToken,
          body: { state },
        });
      assert.equal((await put({ power: true, level: 50 })).status, 200);
      for (const state of [{ temperature: 3 }, { level: 101 }, { colour: 'red' }, { power: 'yes' }]) {
        const res = await put(state);
        assert.equal(res.status, 400, JSON.stringify(state));
        assert.equal(res.body.error.code, 'ERR_SHADOW_STATE_INVALID');
        assert.match(res.body.error.message, /^Desired state does not fit the product's data points: /);
      }
      assert.equal((await put({ level: null })).status, 200, 'null clears a rw key');
      const shadow = await request(tp.platform, 'GET', `/v1/devices/${device.id}/shadow`, { token: other.vendorToken });
      assert.deepEqual(shadow.body.desired, { power: true });
    });

    test('[BIND-2] consumers: owner, admin and member change desired state; a guest only reads; strangers and other vendors see nothing', async () => {
      const device = nextDevice();
      const owner = await bindDevice(tp, device);
      const admin = await shareDevice(tp, owner.userToken, device.id, 'admin');
      const member = await shareDevice(tp, owner.userToken, device.id, 'member');
      const guest = await shareDevice(tp, owner.userToken, device.id, 'guest');
      const stranger = await bindDevice(tp, nextDevice());
      const otherVendor = await provisionTenant(tp, 0, tenant.adminToken);

      assert.equal((await putDesired(device.id, { state: { scene: 'movie' } }, owner.userToken)).status, 200);
      assert.equal((await putDesired(device.id, { state: { volume: 3 } }, admin.userToken)).status, 200);
      assert.equal((await putDesired(device.id, { state: { volume: 4 } }, member.userToken)).status, 200);
      for (const [who, token] of [
        ['guest', guest.userToken],
        ['stranger', stranger.userToken],
        ['other vendor', otherVendor.vendorToken],
      ] as const) {
        const res = await putDesired(device.id, { state: { scene: 'party' } }, token);
        assert.equal(res.status, 404, who);
        assert.equal(res.body.error.code, 'ERR_DEVICE_NOT_FOUND', who);
      }
      const read = await getShadow(device.id, guest.userToken);
      assert.equal(read.status, 200);
      assert.deepEqual(read.body.desired, { scene: 'movie', volume: 4 });
      for (const token of [stranger.userToken, otherVendor.vendorToken]) {
        const res = await getShadow(device.id, token);
        assert.equal(res.status, 404);
        assert.equal(res.body.error.code, 'ERR_DEVICE_NOT_FOUND');
      }
      // Desired changes are audited with their keys, not their values.
      await tp.platform.audit.flush();
      const entries = await tp.platform.audit.query({ type: 'device.shadow.desired', target: device.id, limit: 10 });
      assert.equal(entries.length, 3);
      assert.ok(entries.every((e) => !JSON.stringify(e.details).includes('movie')));
      assert.ok(entries.some((e) => JSON.stringify(e.details.keys) === '["scene"]'));
    });

    test('[BIND-5] unbinding wipes the shadow and clears the retained desired state', async () => {
      const device = nextDevice();
      const owner = await bindDevice(tp, device);
      await putDesired(device.id, { state: { away: true } }, owner.userToken);
      const client = await sdk(device);
      await client.reportState({ occupied: false });
      await eventually(
        () => getShadow(device.id),
        (r) => Object.keys(r.body.reported).length === 1,
        'the report',
      );
      await client.close();
      const unbind = await request(tp.platform, 'DELETE', `/v1/devices/${device.id}/binding`, {
        token: owner.userToken,
      });
      assert.equal(unbind.status, 200, unbind.text);
      assert.deepEqual(await tp.query('select device_id from device_shadows where device_id = $1', [device.id]), []);
      const shadow = await getShadow(device.id);
      assert.equal(shadow.body.version, 0);
      assert.deepEqual(shadow.body.desired, {});
      // The next connection finds no desired state left from the previous owner.
      const again = await sdk(device);
      const synced = await again.syncShadow({ settleMs: 300 });
      assert.deepEqual(synced.desired, {});
      assert.equal(synced.version, 0);
      await eventually(
        () => tp.query('select topic from broker_retained where topic = $1', [`devices/${device.id}/shadow/desired`]),
        (rows) => rows.length === 0,
        'the retained desired message to be cleared in the store',
      );
    });
  });
}
