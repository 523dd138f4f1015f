// Devices over MQTT/TLS on both databases: authentication with the device's own secret (DEV-3), the
// per-device topic ACL (CHAN-6), durable telemetry (QoS 1 acknowledged only after the write).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { dialectCases } from './helpers/dialects.ts';
import { connectDevice, endClient, mqttConnect, publishOutcome, subscribeOutcome } from './helpers/mqtt-clients.ts';
import {
  provisionTenant,
  request,
  startTestPlatform,
  type Tenant,
  type TestPlatform,
} from './helpers/test-platform.ts';

const BAD_CREDENTIALS = { 4: 4, 5: 0x86 } as const;
const IDENTIFIER_REJECTED = { 4: 2, 5: 0x85 } as const;

for (const dialect of await dialectCases()) {
  describe(`devices over MQTT on ${dialect.name}`, { skip: dialect.skip }, () => {
    let tp: TestPlatform;
    let tenant: Tenant;
    let other: Tenant;

    before(async () => {
      tp = await startTestPlatform(dialect.name);
      tenant = await provisionTenant(tp, 3);
      other = await provisionTenant(tp, 1, tenant.adminToken);
    });
    after(() => tp?.close());

    const telemetryRows = async (deviceId: string) =>
      Number(
        (await tp.query<{ n: number }>('select count(*) as n from telemetry where device_id = $1', [deviceId]))[0]!.n,
      );

    for (const version of [4, 5] as const) {
      test(`[DEV-3] MQTT ${version === 5 ? '5' : '3.1.1'}: a device ID alone, or with a wrong or borrowed secret, is refused`, async () => {
        const [d1, d2] = tenant.devices as [Tenant['devices'][0], Tenant['devices'][0]];
        const attempts: Array<[string, { username?: string; password?: string; clientId?: string }]> = [
          ['no password', { username: d1.id }],
          ['empty password', { username: d1.id, password: '' }],
          ['the device ID as password', { username: d1.id, password: d1.id }],
          [
            'a wrong secret',
            { username: d1.id, password: `${d1.secret.slice(0, -1)}${d1.secret.endsWith('A') ? 'B' : 'A'}` },
          ],
          ["another device's secret", { username: d1.id, password: d2.secret }],
          [
            'an unknown device',
            { username: `01${tenant.vendorCode}${tenant.productCode}0000000000`, password: d1.secret },
          ],
          ['a username that is not a device ID', { username: 'admin', password: d1.secret, clientId: d1.id }],
        ];
        for (const [label, options] of attempts) {
          const outcome = await mqttConnect(tp.platform, { ...options, protocolVersion: version });
          assert.equal(outcome.client, undefined, `${label} must not connect`);
          assert.equal(outcome.refusedWith, BAD_CREDENTIALS[version], `${label}: same refusal for every failure`);
        }
        assert.equal(tp.platform.broker.connectionCount, 0);
      });

      test(`[DEV-3] MQTT ${version === 5 ? '5' : '3.1.1'}: the own secret connects; another device's client ID is refused`, async () => {
        const d = tenant.devices[0]!;
        const client = await connectDevice(tp.platform, d, version);
        assert.equal(tp.platform.broker.isConnected(d.id), true);
        await endClient(client);
        const spoof = await mqttConnect(tp.platform, {
          username: d.id,
          password: d.secret,
          clientId: tenant.devices[1]!.id,
          protocolVersion: version,
        });
        assert.equal(spoof.refusedWith, IDENTIFIER_REJECTED[version]);
        // Authenticated, then refused: audited as a denied connect with why (no CONNACK 0x00, no presence).
        await tp.platform.audit.flush();
        const denied = (await tp.platform.audit.query({ type: 'device.connect', target: d.id, limit: 50 })).filter(
          (e) => e.result === 'denied' && e.details.reason === 'client-id-mismatch',
        );
        assert.ok(denied.length >= 1, 'the refusal is audited');
        assert.ok(denied.every((e) => e.details.reasonCode === 0x85 && e.tenant === tenant.vendorId));
      });
    }

    test('[DEV-3] MQTT 5: an empty client ID is assigned the device ID', async () => {
      const d = tenant.devices[0]!;
      const outcome = await mqttConnect(tp.platform, {
        username: d.id,
        password: d.secret,
        clientId: '',
        protocolVersion: 5,
      });
      assert.ok(outcome.client);
      assert.equal(tp.platform.broker.isConnected(d.id), true);
      await endClient(outcome.client);
    });

    test('telemetry QoS 1 is acknowledged only once stored, and the vendor reads it back', async () => {
      const d = tenant.devices[1]!;
      const client = await connectDevice(tp.platform, d);
      const readings = [{ power_w: 1 }, { power_w: 2, on: true }, { power_w: 3, note: 'ünïcødé' }];
      for (const reading of readings) {
        const before = await telemetryRows(d.id);
        assert.equal(await publishOutcome(client, `devices/${d.id}/telemetry`, JSON.stringify(reading), 1), 0);
        // Right after the PUBACK, a separate connection already sees the row.
        assert.equal(await telemetryRows(d.id), before + 1);
      }
      await endClient(client);
      const latest = await request(tp.platform, 'GET', `/v1/devices/${d.id}/telemetry/latest`, {
        token: tenant.vendorToken,
      });
      assert.equal(latest.status, 200);
      assert.deepEqual(latest.body.payload, readings.at(-1));
      const history = await request(tp.platform, 'GET', `/v1/devices/${d.id}/telemetry?limit=2`, {
        token: tenant.vendorToken,
      });
      assert.deepEqual(
        history.body.items.map((i: { payload: unknown }) => i.payload),
        [readings[2], readings[1]],
      );
      const older = await request(
        tp.platform,
        'GET',
        `/v1/devices/${d.id}/telemetry?limit=2&beforeSeq=${history.body.nextBeforeSeq}`,
        {
          token: tenant.vendorToken,
        },
      );
      assert.deepEqual(
        older.body.items.map((i: { payload: unknown }) => i.payload),
        [readings[0]],
      );
    });

    test('telemetry QoS 0 is stored too', async () => {
      const d = tenant.devices[2]!;
      const client = await connectDevice(tp.platform, d, 4);
      const before = await telemetryRows(d.id);
      client.publish(`devices/${d.id}/telemetry`, '{"qos":0}', { qos: 0 });
      for (let i = 0; i < 100 && (await telemetryRows(d.id)) === before; i++) await sleep(20);
      assert.equal(await telemetryRows(d.id), before + 1);
      await endClient(client);
    });

    test('telemetry that is not a JSON object is refused and not stored (MQTT 5: reason 0x99)', async () => {
      const d = tenant.devices[0]!;
      const client = await connectDevice(tp.platform, d, 5);
      const before = await telemetryRows(d.id);
      for (const payload of ['not json', '[1,2]', '42', '', Buffer.from([0xff, 0xfe, 0x7b, 0x7d])]) {
        assert.equal(await publishOutcome(client, `devices/${d.id}/telemetry`, payload, 1), 0x99, String(payload));
      }
      assert.equal(await telemetryRows(d.id), before);
      await endClient(client);
    });

    test('telemetry that is not a JSON object closes an MQTT 3.1.1 connection and is not stored', async () => {
      const d = tenant.devices[0]!;
      const client = await connectDevice(tp.platform, d, 4);
      const before = await telemetryRows(d.id);
      assert.equal(await publishOutcome(client, `devices/${d.id}/telemetry`, 'not json', 1), 'closed');
      assert.equal(await telemetryRows(d.id), before);
      client.end(true);
    });

    test("[CHAN-6] MQTT 5: publishing to another device's topics is refused (0x87) and nothing reaches it", async () => {
      const d = tenant.devices[0]!;
      const victim = other.devices[0]!;
      const client = await connectDevice(tp.platform, d, 5);
      const before = await telemetryRows(victim.id);
      const topics = [
        `devices/${victim.id}/telemetry`,
        `devices/${tenant.devices[1]!.id}/telemetry`,
        `devices/${d.id}/commands/reboot`, // commands flow cloud → device only
        `devices/${d.id}/telemetry/extra`,
        `devices/${d.id}/other`,
        'devices',
        `$SYS/${d.id}`,
        'broadcast/all',
      ];
      for (const topic of topics) assert.equal(await publishOutcome(client, topic, '{"x":1}', 1), 0x87, topic);
      assert.equal(await telemetryRows(victim.id), before, 'nothing was stored for the other device');
      await endClient(client);
    });

    test('a device keeps one retained message, its state: retained events are refused (0x97) and not retained', async () => {
      const d = tenant.devices[0]!;
      const client = await connectDevice(tp.platform, d, 5);
      const before = tp.platform.broker.retainedCount;
      for (const topic of [`devices/${d.id}/events`, `devices/${d.id}/events/a`, `devices/${d.id}/state/extra`]) {
        assert.equal(await publishOutcome(client, topic, '{"x":1}', 1, true), 0x97, topic);
      }
      assert.equal(tp.platform.broker.retainedCount, before, 'nothing was retained');
      assert.equal(await publishOutcome(client, `devices/${d.id}/state`, '{"on":true}', 1, true), 0);
      assert.equal(tp.platform.broker.retainedCount, before + 1);
      // Clearing is always allowed [MQTT-3.3.1-6].
      assert.equal(await publishOutcome(client, `devices/${d.id}/state`, '', 1, true), 0);
      assert.equal(tp.platform.broker.retainedCount, before);
      await endClient(client);
    });

    test("[CHAN-6] MQTT 3.1.1: publishing to another device's topic closes the connection and stores nothing", async () => {
      const d = tenant.devices[0]!;
      const victim = other.devices[0]!;
      const client = await connectDevice(tp.platform, d, 4);
      const before = await telemetryRows(victim.id);
      assert.equal(await publishOutcome(client, `devices/${victim.id}/telemetry`, '{"x":1}', 1), 'closed');
      assert.equal(await telemetryRows(victim.id), before);
      client.end(true);
    });

    for (const version of [4, 5] as const) {
      test(`[CHAN-6] MQTT ${version === 5 ? '5' : '3.1.1'}: subscriptions outside the own namespace are refused, own ones granted`, async () => {
        const d = tenant.devices[0]!;
        const victim = other.devices[0]!;
        const client = await connectDevice(tp.platform, d, version);
        const refused = version === 5 ? 0x87 : 0x80;
        const denied = [
          '#',
          '+/#',
          'devices/#',
          'devices/+/telemetry',
          `devices/${victim.id}/#`,
          `devices/${victim.id}/telemetry`,
          '$SYS/#',
        ];
        const granted = await subscribeOutcome(client, [
          ...denied,
          `devices/${d.id}/commands/#`,
          `devices/${d.id}/state`,
        ]);
        assert.deepEqual(granted, [...denied.map(() => refused), 1, 1]);

        // A message the victim publishes must not reach the attacker through any filter.
        const received: string[] = [];
        client.on('message', (topic) => received.push(topic));
        const victimClient = await connectDevice(tp.platform, victim, 5);
        assert.equal(await publishOutcome(victimClient, `devices/${victim.id}/telemetry`, '{"secret":1}', 1), 0);
        assert.equal(await publishOutcome(victimClient, `devices/${victim.id}/state`, '{"on":true}', 1), 0);
        // Own state does arrive (routing works), as a barrier after the victim's messages.
        assert.equal(await publishOutcome(client, `devices/${d.id}/state`, '{"on":false}', 1), 0);
        for (let i = 0; i < 100 && received.length === 0; i++) await sleep(10);
        assert.deepEqual(received, [`devices/${d.id}/state`]);
        await endClient(victimClient);
        await endClient(client);
      });
    }

    test('a second connection with the same device takes over the first (MQTT 5: 0x8E)', async () => {
      const d = tenant.devices[1]!;
      const first = await connectDevice(tp.platform, d, 5);
      const reason = new Promise<number | undefined>((resolve) =>
        first.once('disconnect', (p) => resolve(p.reasonCode)),
      );
      const second = await connectDevice(tp.platform, d, 5);
      assert.equal(await reason, 0x8e);
      assert.equal(await publishOutcome(second, `devices/${d.id}/telemetry`, '{"after":"takeover"}', 1), 0);
      await endClient(second);
      first.end(true);
    });
  });
}
