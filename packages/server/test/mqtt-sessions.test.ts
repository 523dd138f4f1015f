// Session behaviour of the broker core: wills, takeover, flow control in both protocol versions, and
// messages too large for a client.
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { connectDevice, endClient, mqttConnect, publishOutcome, subscribeOutcome } from './helpers/mqtt-clients.ts';
import { provisionTenant, startTestPlatform, type Tenant, type TestPlatform } from './helpers/test-platform.ts';

describe('MQTT sessions', () => {
  let tp: TestPlatform;
  let tenant: Tenant;

  before(async () => {
    tp = await startTestPlatform('sqlite');
    tenant = await provisionTenant(tp, 3);
  });
  after(() => tp?.close());

  const rows = async (deviceId: string, payload: string) =>
    Number(
      (
        await tp.query<{ n: number }>('select count(*) as n from telemetry where device_id = $1 and payload = $2', [
          deviceId,
          Buffer.from(payload),
        ])
      )[0]!.n,
    );

  async function eventually(check: () => Promise<boolean>, what: string): Promise<void> {
    for (let i = 0; i < 100; i++) {
      if (await check()) return;
      await sleep(20);
    }
    assert.fail(`never happened: ${what}`);
  }

  const withWill = (deviceId: string, payload: string) => ({
    will: { topic: `devices/${deviceId}/telemetry`, payload: Buffer.from(payload), qos: 1 as const, retain: false },
  });

  test('a connection lost without DISCONNECT publishes its will through the same durable path', async () => {
    const d = tenant.devices[0]!;
    const payload = '{"will":"lost"}';
    const outcome = await mqttConnect(tp.platform, { username: d.id, password: d.secret, ...withWill(d.id, payload) });
    assert.ok(outcome.client);
    outcome.client.stream.destroy();
    await eventually(async () => (await rows(d.id, payload)) === 1, 'the will was stored');
  });

  test('a graceful DISCONNECT discards the will', async () => {
    const d = tenant.devices[0]!;
    const payload = '{"will":"graceful"}';
    const outcome = await mqttConnect(tp.platform, { username: d.id, password: d.secret, ...withWill(d.id, payload) });
    await endClient(outcome.client!);
    // Barrier: a later message on the same path is stored, the will is not.
    const probe = await connectDevice(tp.platform, d);
    assert.equal(await publishOutcome(probe, `devices/${d.id}/telemetry`, '{"probe":1}', 1), 0);
    await endClient(probe);
    assert.equal(await rows(d.id, payload), 0);
  });

  test("[CHAN-6] a will aimed at another device's topic is refused at CONNECT (0x87 / 5)", async () => {
    const d = tenant.devices[0]!;
    const victim = tenant.devices[1]!;
    for (const [version, code] of [
      [5, 0x87],
      [4, 5],
    ] as const) {
      const outcome = await mqttConnect(tp.platform, {
        username: d.id,
        password: d.secret,
        protocolVersion: version,
        ...withWill(victim.id, '{"forged":1}'),
      });
      assert.equal(outcome.refusedWith, code);
    }
  });

  test('a session taken over by a new connection publishes the old connection will', async () => {
    const d = tenant.devices[2]!;
    const payload = '{"will":"takeover"}';
    const first = await mqttConnect(tp.platform, { username: d.id, password: d.secret, ...withWill(d.id, payload) });
    assert.ok(first.client);
    const second = await connectDevice(tp.platform, d);
    await eventually(async () => (await rows(d.id, payload)) === 1, 'the taken-over connection will was stored');
    await endClient(second);
    first.client.end(true);
  });

  test('MQTT 3.1.1 has no Receive Maximum: a burst beyond the in-flight limit is slowed, not dropped', async () => {
    const d = tenant.devices[1]!;
    const client = await connectDevice(tp.platform, d, 4);
    const burst = 300; // far beyond mqtt.maxInflight (64)
    const outcomes = await Promise.all(
      Array.from({ length: burst }, (_, i) => publishOutcome(client, `devices/${d.id}/telemetry`, `{"burst":${i}}`, 1)),
    );
    assert.deepEqual(new Set(outcomes), new Set([0]));
    const stored = await tp.query<{ n: number }>(
      'select count(*) as n from telemetry where device_id = $1 and payload like \'{"burst":%\'',
      [d.id],
    );
    assert.equal(Number(stored[0]!.n), burst);
    await endClient(client);
  });

  test('MQTT 5 QoS 0 telemetry that is not JSON ends the connection with 0x99 and is not stored', async () => {
    const d = tenant.devices[1]!;
    const client = await connectDevice(tp.platform, d, 5);
    const reason = new Promise<number | undefined>((resolve) =>
      client.once('disconnect', (p) => resolve(p.reasonCode)),
    );
    client.publish(`devices/${d.id}/telemetry`, 'nope', { qos: 0 });
    assert.equal(await reason, 0x99);
    assert.equal(await rows(d.id, 'nope'), 0);
    client.end(true);
  });

  test("a message larger than the client's Maximum Packet Size is discarded, and later ones still flow", async () => {
    const d = tenant.devices[2]!;
    const outcome = await mqttConnect(tp.platform, {
      username: d.id,
      password: d.secret,
      properties: { maximumPacketSize: 256 },
    });
    const client = outcome.client!;
    assert.deepEqual(await subscribeOutcome(client, [`devices/${d.id}/state`]), [1]);
    const received: string[] = [];
    client.on('message', (_topic, payload) => received.push(payload.toString()));
    // Published by a second session of the same device would take it over, so the device sends to itself.
    assert.equal(await publishOutcome(client, `devices/${d.id}/state`, JSON.stringify({ big: 'x'.repeat(400) }), 1), 0);
    assert.equal(await publishOutcome(client, `devices/${d.id}/state`, '{"small":1}', 1), 0);
    await eventually(async () => received.length > 0, 'the small message arrived');
    assert.deepEqual(received, ['{"small":1}']);
    await endClient(client);
  });
});
