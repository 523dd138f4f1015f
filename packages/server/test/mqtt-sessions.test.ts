// Session behaviour of the broker core: wills, takeover, flow control in both protocol versions,
// messages too large for a client, presence hooks, and the broker store (mirroring, flush before
// acknowledgement, restore after a restart, session ownership).
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import type mqttPacket from 'mqtt-packet';
import type { BrokerHooks } from '../src/gateway/mqtt/index.ts';
import { connectDevice, endClient, mqttConnect, publishOutcome, subscribeOutcome } from './helpers/mqtt-clients.ts';
import {
  connectClient,
  nextMessages,
  openHooks,
  RawClient,
  RecordingStore,
  startCoreBroker,
} from './helpers/mqtt-core.ts';
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

describe('MQTT sessions: presence hooks', () => {
  type Event = { what: 'connected' | 'disconnected'; clientId: string; reason?: string; reasonCode?: number };

  async function withRecorder(extra: Partial<BrokerHooks> = {}) {
    const events: Event[] = [];
    const waiters: Array<() => void> = [];
    const core = await startCoreBroker({
      limits: { maxKeepAliveSeconds: 1 },
      hooks: openHooks({
        onConnected(identity, info) {
          assert.equal(identity.clientId, info.clientId);
          events.push({ what: 'connected', clientId: info.clientId });
          for (const w of waiters.splice(0)) w();
        },
        onDisconnected(_identity, info) {
          events.push({
            what: 'disconnected',
            clientId: info.clientId,
            reason: info.reason,
            ...(info.reasonCode === undefined ? {} : { reasonCode: info.reasonCode }),
          });
          assert.ok(info.connectedForMs >= 0);
          for (const w of waiters.splice(0)) w();
        },
        ...extra,
      }),
    });
    const disconnectedOf = async (clientId: string): Promise<Event> => {
      for (;;) {
        const found = events.find((e) => e.what === 'disconnected' && e.clientId === clientId);
        if (found) return found;
        await new Promise<void>((resolve) => waiters.push(resolve));
      }
    };
    return { core, events, disconnectedOf };
  }

  test('onConnected after CONNACK; onDisconnected once per connection with why and the reason code', async () => {
    const { core, events, disconnectedOf } = await withRecorder();
    try {
      // client: DISCONNECT
      const a = await RawClient.connect(core.port, { clientId: 'p-client' });
      a.raw.send({ cmd: 'disconnect', reasonCode: 0 });
      assert.deepEqual(await disconnectedOf('p-client'), {
        what: 'disconnected',
        clientId: 'p-client',
        reason: 'client',
        reasonCode: 0,
      });
      // network: the socket closes without DISCONNECT
      const b = await RawClient.connect(core.port, { clientId: 'p-network' });
      b.raw.close();
      assert.equal((await disconnectedOf('p-network')).reason, 'network');
      // protocol-error: a second CONNECT
      const c = await RawClient.connect(core.port, { clientId: 'p-proto' });
      c.raw.send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 5, clientId: 'p-proto', keepalive: 30 });
      assert.deepEqual(await disconnectedOf('p-proto'), {
        what: 'disconnected',
        clientId: 'p-proto',
        reason: 'protocol-error',
        reasonCode: 0x82,
      });
      // takeover: the same client ID connects again
      const d1 = await RawClient.connect(core.port, { clientId: 'p-take' });
      const d2 = await RawClient.connect(core.port, { clientId: 'p-take' });
      assert.deepEqual(await disconnectedOf('p-take'), {
        what: 'disconnected',
        clientId: 'p-take',
        reason: 'takeover',
        reasonCode: 0x8e,
      });
      assert.equal(((await d1.raw.next('disconnect')) as mqttPacket.IDisconnectPacket).reasonCode, 0x8e);
      // server: the platform ends it
      assert.equal(core.broker.disconnectClient('p-take', 0x98), true);
      const ends = async () => events.filter((e) => e.what === 'disconnected' && e.clientId === 'p-take');
      while ((await ends()).length < 2) await new Promise((r) => setTimeout(r, 5));
      assert.deepEqual((await ends())[1], {
        what: 'disconnected',
        clientId: 'p-take',
        reason: 'server',
        reasonCode: 0x98,
      });
      await d2.raw.waitClosed();
      // keep-alive: silent beyond 1.5 × the (server) keep-alive of 1 s
      const e = await RawClient.connect(core.port, { clientId: 'p-silent', keepalive: 1 });
      assert.deepEqual(await disconnectedOf('p-silent'), {
        what: 'disconnected',
        clientId: 'p-silent',
        reason: 'keep-alive',
        reasonCode: 0x8d,
      });
      await e.raw.waitClosed();
      const connected = events.filter((x) => x.what === 'connected').map((x) => x.clientId);
      assert.deepEqual(connected, ['p-client', 'p-network', 'p-proto', 'p-take', 'p-take', 'p-silent']);
      // Exactly one end per connection.
      assert.equal(events.filter((x) => x.what === 'disconnected').length, connected.length);
      // A refused CONNECT never was connected: no presence events.
      const refused = await RawClient.open(core.port);
      refused.send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 5, clientId: '\u0000', keepalive: 30 });
      await refused.waitClosed();
      assert.equal(events.filter((x) => x.what === 'connected').length, connected.length);
    } finally {
      await core.close();
    }
  });

  test('a throwing hook is logged and never breaks the broker (the connection in question ends with 0x83)', async () => {
    const { core } = await withRecorder({
      onConnected() {
        throw new Error('hook bug');
      },
      onDisconnected() {
        throw new Error('hook bug');
      },
      authorizeSubscribe(_identity, filter) {
        if (filter.startsWith('boom')) throw new Error('hook bug');
        return true;
      },
      onViolation() {
        throw new Error('hook bug');
      },
    });
    try {
      const victim = await RawClient.connect(core.port, { clientId: 'p-boom' });
      victim.raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'boom/#', qos: 0 }] });
      assert.equal(((await victim.raw.next('disconnect')) as mqttPacket.IDisconnectPacket).reasonCode, 0x83);
      const violator = await RawClient.connect(core.port, { clientId: 'p-violator' });
      violator.raw.send({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 5, clientId: 'x', keepalive: 30 });
      assert.equal(((await violator.raw.next('disconnect')) as mqttPacket.IDisconnectPacket).reasonCode, 0x82);
      const sub = await connectClient(core.url, { clientId: 'p-throw-sub' });
      await sub.subscribeAsync('p/throw', { qos: 1 });
      const got = nextMessages(sub, 1);
      const pub = await connectClient(core.url, { clientId: 'p-throw-pub' });
      await pub.publishAsync('p/throw', 'still served', { qos: 1 });
      assert.equal((await got)[0]!.payload.toString(), 'still served');
      await endClient(pub);
      await endClient(sub);
    } finally {
      await core.close();
    }
  });
});

describe('MQTT sessions: the broker store', () => {
  const persistent = (clientId: string, extra: Record<string, unknown> = {}) => ({
    clientId,
    clean: false,
    properties: { sessionExpiryInterval: 300 },
    ...extra,
  });

  test('a persistent session is mirrored; QoS 1 PUBACK waits for the flush of a queued message', async () => {
    const store = new RecordingStore();
    const core = await startCoreBroker({ store });
    try {
      const sub = await RawClient.connect(core.port, persistent('s-mirror'));
      const meta = store.ops('saveSession').at(-1)!.args[0] as { disconnectedAt: number | null };
      assert.equal(meta.disconnectedAt, null);
      sub.raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'store/q', qos: 1, rap: true }] });
      await sub.raw.next('suback');
      assert.deepEqual(store.ops('addSubscription').at(-1)!.args[0], {
        filter: 'store/q',
        qos: 1,
        noLocal: false,
        retainAsPublished: true,
        retainHandling: 0,
      });
      sub.raw.send({ cmd: 'disconnect' });
      await sub.raw.waitClosed();
      while ((store.sessions.get('s-mirror')?.meta.disconnectedAt ?? null) === null)
        await new Promise((r) => setImmediate(r));

      store.hold();
      const pub = await RawClient.connect(core.port, { clientId: 's-mirror-pub' });
      pub.raw.send({
        cmd: 'publish',
        topic: 'store/q',
        payload: Buffer.from('queued'),
        qos: 1,
        messageId: 9,
        retain: false,
        dup: false,
      });
      // PINGRESP overtakes the PUBACK: the acknowledgement waits for the store.
      assert.equal(await pub.raw.barrier(), true);
      assert.equal(pub.raw.packets.filter((p) => p.cmd === 'puback').length, 0);
      const added = store.ops('addPending').at(-1)!;
      assert.equal(added.clientId, 's-mirror');
      assert.equal((added.args[0] as { state: string }).state, 'queued');
      store.release();
      assert.equal(((await pub.raw.next('puback')) as mqttPacket.IPubackPacket).reasonCode ?? 0, 0);

      // Nothing stored → no flush: a QoS 1 message without subscribers is acknowledged at once.
      const flushes = store.flushes;
      pub.raw.send({
        cmd: 'publish',
        topic: 'store/nobody',
        payload: Buffer.from('x'),
        qos: 1,
        messageId: 10,
        retain: false,
        dup: false,
      });
      await pub.raw.next('puback');
      assert.equal(store.flushes, flushes);

      // Resumed: sent (updatePending), acknowledged (removePending).
      const again = await RawClient.connect(core.port, persistent('s-mirror'));
      assert.equal(again.connack.sessionPresent, true);
      const delivered = (await again.raw.next('publish')) as mqttPacket.IPublishPacket;
      assert.equal(delivered.payload.toString(), 'queued');
      assert.deepEqual(store.ops('updatePending').at(-1)!.args.slice(1), ['sent', delivered.messageId]);
      again.raw.send({ cmd: 'puback', messageId: delivered.messageId! });
      await again.raw.barrier();
      assert.equal(store.sessions.get('s-mirror')!.pending.size, 0);
      // DISCONNECT with expiry 0 ends the session in the store as well.
      again.raw.send({ cmd: 'disconnect', properties: { sessionExpiryInterval: 0 } });
      await again.raw.waitClosed();
      while (store.sessions.has('s-mirror')) await new Promise((r) => setImmediate(r));
      pub.raw.close();
    } finally {
      await core.close();
    }
  });

  test('sessions that end with their connection, and their messages, never reach the store', async () => {
    const store = new RecordingStore();
    const core = await startCoreBroker({ store });
    try {
      const { raw } = await RawClient.connect(core.port, { clientId: 's-volatile' });
      raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'store/v', qos: 1 }] });
      await raw.next('suback');
      const pub = await connectClient(core.url, { clientId: 's-volatile-pub' });
      await pub.publishAsync('store/v', 'x', { qos: 1 });
      await raw.next('publish');
      raw.close();
      await endClient(pub);
      assert.deepEqual(
        store.calls.filter((c) => c.clientId !== undefined),
        [],
      );
    } finally {
      await core.close();
    }
  });

  test('a failing store flush refuses the QoS 1 message with 0x80 (3.1.1: closes) and the broker goes on', async () => {
    const store = new RecordingStore();
    const core = await startCoreBroker({ store });
    try {
      store.failFlush = true;
      const v5 = await connectClient(core.url, { clientId: 's-fail-5' });
      const outcome = await v5.publishAsync('store/retained', 'x', { qos: 1, retain: true }).then(
        () => 0,
        (error: { code?: number }) => error.code,
      );
      assert.equal(outcome, 0x80);
      const v4 = await RawClient.connect(core.port, { clientId: 's-fail-4' }, 4);
      v4.raw.send(
        {
          cmd: 'publish',
          topic: 'store/retained',
          payload: Buffer.from('y'),
          qos: 1,
          messageId: 1,
          retain: true,
          dup: false,
        },
        4,
      );
      assert.equal(await v4.raw.waitClosed(), true);
      assert.equal(v4.raw.packets.filter((p) => p.cmd === 'puback').length, 0);
      store.failFlush = false;
      await v5.publishAsync('store/retained', 'z', { qos: 1, retain: true });
      assert.ok(core.broker.stats.storeFlushFailures >= 2);
      await endClient(v5);
    } finally {
      await core.close();
    }
  });

  test('QoS 2 from a persistent session: the identifier is stored until PUBREL', async () => {
    const store = new RecordingStore();
    const core = await startCoreBroker({ store });
    try {
      const { raw } = await RawClient.connect(core.port, persistent('s-qos2'));
      raw.send({
        cmd: 'publish',
        topic: 'store/q2',
        payload: Buffer.from('x'),
        qos: 2,
        messageId: 4,
        retain: false,
        dup: false,
      });
      await raw.next('pubrec');
      assert.deepEqual([...store.sessions.get('s-qos2')!.inboundQos2], [4]);
      raw.send({ cmd: 'pubrel', messageId: 4 });
      await raw.next('pubcomp');
      assert.deepEqual([...store.sessions.get('s-qos2')!.inboundQos2], []);
      raw.close();
    } finally {
      await core.close();
    }
  });

  test('after a restart (a new broker over the same store) the queued QoS 1 message and the retained message are delivered', async () => {
    const store = new RecordingStore();
    const first = await startCoreBroker({ store });
    const sub = await RawClient.connect(first.port, persistent('s-restart', { username: 'owner' }));
    sub.raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'restart/#', qos: 1 }] });
    await sub.raw.next('suback');
    sub.raw.close();
    await sub.raw.waitClosed();
    const pub = await connectClient(first.url, { clientId: 's-restart-pub' });
    await pub.publishAsync('restart/queued', 'kept', { qos: 1 });
    await pub.publishAsync('restart/state', 'on', { qos: 1, retain: true });
    await endClient(pub);
    const flushesBeforeClose = store.flushes;
    await first.close();
    assert.ok(store.flushes > flushesBeforeClose, 'close() flushes the store');
    assert.equal(store.sessions.has('s-restart'), true, 'a shutdown keeps persistent sessions');

    const second = await startCoreBroker({ store });
    try {
      assert.equal(second.broker.retainedCount, 1);
      const back = await RawClient.connect(second.port, persistent('s-restart', { username: 'owner' }));
      assert.equal(back.connack.sessionPresent, true);
      const got: mqttPacket.IPublishPacket[] = [];
      for (let i = 0; i < 2; i++) {
        const p = (await back.raw.next('publish')) as mqttPacket.IPublishPacket;
        got.push(p);
        back.raw.send({ cmd: 'puback', messageId: p.messageId! });
      }
      assert.deepEqual(
        got.map((p) => [p.topic, p.payload.toString()]),
        [
          ['restart/queued', 'kept'],
          ['restart/state', 'on'],
        ],
      );
      back.raw.close();
      const fresh = await connectClient(second.url, { clientId: 's-restart-new' });
      const retained = nextMessages(fresh, 1);
      await fresh.subscribeAsync('restart/state', { qos: 1 });
      const [message] = await retained;
      assert.equal(message!.payload.toString(), 'on');
      assert.equal(message!.packet.retain, true);
      await endClient(fresh);
    } finally {
      await second.close();
    }
  });

  test('a restored session belongs to its principal: another principal with that client ID starts afresh', async () => {
    const store = new RecordingStore();
    const first = await startCoreBroker({ store });
    const owner = await RawClient.connect(first.port, persistent('s-owned', { username: 'owner' }));
    owner.raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'owned/#', qos: 1 }] });
    await owner.raw.next('suback');
    owner.raw.close();
    await owner.raw.waitClosed();
    await first.close();
    const second = await startCoreBroker({ store });
    try {
      const intruder = await RawClient.connect(second.port, persistent('s-owned', { username: 'intruder' }));
      assert.equal(intruder.connack.sessionPresent, false);
      assert.equal(store.sessions.get('s-owned')?.meta.principalId, 'intruder');
      assert.equal(store.sessions.get('s-owned')?.subscriptions.size, 0, "the owner's subscriptions are gone");
      intruder.raw.close();
    } finally {
      await second.close();
    }
  });
});
