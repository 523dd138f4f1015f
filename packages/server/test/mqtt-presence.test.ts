// Device presence over MQTT on both databases: online/offline and last seen in the device's API view,
// connect/disconnect/takeover in the audit log and on the in-process presence events, the guard's
// shared-credential detection after repeated takeovers, devices left online by a crashed process set
// offline at the next start, and the per-tenant read-only `$SYS` topics.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { MqttClient } from 'mqtt';
import type { PresenceChange } from '../src/devices/index.ts';
import { POSTGRES_URL, dialectCases, dropSchema, uniqueSchema } from './helpers/dialects.ts';
import { connectDevice, endClient, mqttConnect, publishOutcome, subscribeOutcome } from './helpers/mqtt-clients.ts';
import {
  provisionTenant,
  request,
  startTestPlatform,
  type Tenant,
  type TestPlatform,
} from './helpers/test-platform.ts';

type Device = Tenant['devices'][number];

async function eventually(check: () => Promise<boolean> | boolean, what: string): Promise<void> {
  for (let i = 0; i < 250; i++) {
    if (await check()) return;
    await sleep(20);
  }
  assert.fail(`never happened: ${what}`);
}

/** Resolves with the next presence change of a device matching `predicate` (emitted once stored). */
function nextChange(
  tp: TestPlatform,
  deviceId: string,
  predicate: (c: PresenceChange) => boolean = () => true,
): Promise<PresenceChange> {
  const events = tp.platform.devices.presence.events;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      events.off('change', listener);
      reject(new Error(`no presence change for ${deviceId}`));
    }, 10_000);
    const listener = (change: PresenceChange) => {
      if (change.deviceId !== deviceId || !predicate(change)) return;
      clearTimeout(timer);
      events.off('change', listener);
      resolve(change);
    };
    events.on('change', listener);
  });
}

const isConnected = (c: PresenceChange) => c.type === 'connected';
const isDisconnected = (c: PresenceChange) => c.type === 'disconnected';

/** Collects the messages a client receives; `waitFor` resolves with the first that matches. */
function inbox(client: MqttClient) {
  const messages: Array<{ topic: string; payload: string }> = [];
  client.on('message', (topic, payload) => messages.push({ topic, payload: payload.toString('utf8') }));
  return {
    messages,
    async waitFor(topic: string, payload?: string) {
      let found: { topic: string; payload: string } | undefined;
      await eventually(
        () => {
          found = messages.find((m) => m.topic === topic && (payload === undefined || m.payload === payload));
          return found !== undefined;
        },
        `message on ${topic}${payload === undefined ? '' : ` = ${payload}`}`,
      );
      return found!;
    },
  };
}

for (const dialect of await dialectCases()) {
  describe(`device presence over MQTT on ${dialect.name}`, { skip: dialect.skip }, () => {
    let tp: TestPlatform;
    let a: Tenant;
    let b: Tenant;

    before(async () => {
      // Three takeovers an hour are allowed; the fourth is a shared credential (the guard's signal).
      tp = await startTestPlatform(dialect.name, { guard: { takeoversPerHour: 3 } });
      a = await provisionTenant(tp, 6);
      b = await provisionTenant(tp, 2, a.adminToken);
    });
    after(() => tp?.close());

    const getDevice = async (d: Device, tenant = a) =>
      request(tp.platform, 'GET', `/v1/devices/${d.id}`, { token: tenant.vendorToken });

    test('a device that never connected is offline, with no times', async () => {
      const res = await getDevice(a.devices[5]!);
      assert.equal(res.status, 200);
      assert.deepEqual(res.body.presence, {
        online: false,
        lastSeenAt: null,
        lastConnectedAt: null,
        lastDisconnectedAt: null,
        lastDisconnectReason: null,
      });
      assert.equal(res.body.id, a.devices[5]!.id, 'the device fields are still there');
      assert.equal(res.body.status, 'active');
    });

    for (const version of [4, 5] as const) {
      test(`MQTT ${version === 5 ? '5' : '3.1.1'}: connect → online; DISCONNECT → offline (client), with last seen, audited once each`, async () => {
        const d = a.devices[version === 5 ? 0 : 1]!;
        const connected = nextChange(tp, d.id, isConnected);
        const t0 = Date.now();
        const client = await connectDevice(tp.platform, d, version);
        const up = await connected;
        assert.deepEqual(
          { ...up, at: 0 },
          {
            type: 'connected',
            deviceId: d.id,
            vendorId: a.vendorId,
            at: 0,
            online: true,
            protocolVersion: version,
            sessionPresent: false,
          },
        );
        const online = (await getDevice(d)).body.presence;
        assert.equal(online.online, true);
        assert.ok(online.lastConnectedAt >= t0 && online.lastConnectedAt <= Date.now());
        assert.equal(online.lastSeenAt, online.lastConnectedAt);

        // Activity is remembered in memory (no write per message) and shown at once.
        await sleep(5);
        assert.equal(await publishOutcome(client, `devices/${d.id}/telemetry`, '{"w":1}', 1), 0);
        const active = (await getDevice(d)).body.presence;
        assert.ok(active.lastSeenAt > online.lastConnectedAt, 'the message moved last seen');

        const disconnected = nextChange(tp, d.id, isDisconnected);
        await endClient(client);
        const down = await disconnected;
        assert.equal(down.type, 'disconnected');
        assert.equal(down.online, false);
        if (down.type === 'disconnected') {
          assert.equal(down.reason, 'client');
          assert.equal(down.protocolVersion, version);
          assert.ok(down.connectedForMs >= 5);
        }
        const offline = (await getDevice(d)).body.presence;
        assert.equal(offline.online, false);
        assert.equal(offline.lastDisconnectReason, 'client');
        assert.equal(offline.lastConnectedAt, online.lastConnectedAt);
        assert.ok(offline.lastDisconnectedAt >= active.lastSeenAt);
        assert.equal(offline.lastSeenAt, offline.lastDisconnectedAt, 'the DISCONNECT is the last thing seen');

        await tp.platform.audit.flush();
        const connects = await tp.platform.audit.query({ type: 'device.connect', target: d.id, limit: 10 });
        assert.equal(connects.filter((e) => e.result === 'success').length, 1, 'one connect, audited once');
        assert.equal(connects[0]!.details.protocolVersion, version);
        assert.equal(connects[0]!.details.sessionPresent, false);
        assert.equal(connects[0]!.sourceIp, '127.0.0.1');
        const disconnects = await tp.platform.audit.query({ type: 'device.disconnect', target: d.id, limit: 10 });
        assert.equal(disconnects.length, 1);
        assert.equal(disconnects[0]!.result, 'success');
        assert.equal(disconnects[0]!.tenant, a.vendorId);
        assert.equal(disconnects[0]!.sourceIp, '127.0.0.1');
        assert.equal(disconnects[0]!.details.reason, 'client');
        assert.equal(disconnects[0]!.details.protocolVersion, version);
        assert.equal(disconnects[0]!.details.sessionPresent, false);
        assert.equal(typeof disconnects[0]!.details.connectedForMs, 'number');
      });
    }

    test('a connection that drops without DISCONNECT is offline with reason network, last seen at its last message', async () => {
      const d = a.devices[2]!;
      const connected = nextChange(tp, d.id, isConnected);
      const client = await connectDevice(tp.platform, d, 5);
      await connected;
      assert.equal(await publishOutcome(client, `devices/${d.id}/state`, '{"on":true}', 1), 0);
      const seen = (await getDevice(d)).body.presence.lastSeenAt as number;
      const disconnected = nextChange(tp, d.id, isDisconnected);
      await sleep(5);
      client.stream.destroy();
      const down = await disconnected;
      assert.equal(down.type === 'disconnected' && down.reason, 'network');
      const presence = (await getDevice(d)).body.presence;
      assert.equal(presence.online, false);
      assert.equal(presence.lastDisconnectReason, 'network');
      assert.equal(presence.lastSeenAt, seen, 'silence after the last message is not being seen');
      assert.ok(presence.lastDisconnectedAt > seen);
      await tp.platform.audit.flush();
      const [entry] = await tp.platform.audit.query({ type: 'device.disconnect', target: d.id, limit: 1 });
      assert.equal(entry!.result, 'failure');
      assert.equal(entry!.details.reason, 'network');
      client.end(true);
    });

    test('a refused CONNECT changes no presence and audits no connect success', async () => {
      const d = a.devices[5]!;
      const outcome = await mqttConnect(tp.platform, { username: d.id, password: 'x'.repeat(43) });
      assert.equal(outcome.refusedWith, 0x86);
      assert.equal((await getDevice(d)).body.presence.online, false);
      await tp.platform.audit.flush();
      const connects = await tp.platform.audit.query({ type: 'device.connect', target: d.id, limit: 10 });
      assert.deepEqual(
        connects.map((e) => e.result),
        ['failure'],
      );
    });

    test('a takeover keeps the device online, is audited with both source IPs, and emits both halves', async () => {
      const d = a.devices[3]!;
      const firstUp = nextChange(tp, d.id, isConnected);
      const first = await mqttConnect(tp.platform, { username: d.id, password: d.secret, localAddress: '127.0.0.21' });
      assert.ok(first.client);
      await firstUp;
      const changes: PresenceChange[] = [];
      const record = (c: PresenceChange) => {
        if (c.deviceId === d.id) changes.push(c);
      };
      tp.platform.devices.presence.events.on('change', record);
      const reason = new Promise<number | undefined>((resolve) =>
        first.client!.once('disconnect', (p) => resolve(p.reasonCode)),
      );
      const secondUp = nextChange(tp, d.id, isConnected);
      const second = await mqttConnect(tp.platform, {
        username: d.id,
        password: d.secret,
        localAddress: '127.0.0.22',
      });
      assert.ok(second.client);
      assert.equal(await reason, 0x8e);
      await secondUp;
      tp.platform.devices.presence.events.off('change', record);
      assert.deepEqual(
        changes.map((c) => [c.type, c.online, c.type === 'disconnected' ? c.reason : null]),
        [
          ['disconnected', true, 'takeover'],
          ['connected', true, null],
        ],
      );
      const presence = (await getDevice(d)).body.presence;
      assert.equal(presence.online, true, 'one connection remains');
      assert.equal(presence.lastDisconnectReason, 'takeover');
      assert.deepEqual(tp.platform.devices.presence.connectedByTenant().get(a.vendorId), 1);

      await tp.platform.audit.flush();
      const takeovers = await tp.platform.audit.query({ type: 'device.session-takeover', target: d.id, limit: 10 });
      assert.equal(takeovers.length, 1);
      assert.deepEqual(
        [takeovers[0]!.actor, takeovers[0]!.tenant, takeovers[0]!.sourceIp, takeovers[0]!.details],
        [{ type: 'device', id: d.id }, a.vendorId, '127.0.0.22', { sameAddress: false }],
      );
      const [ended] = await tp.platform.audit.query({ type: 'device.disconnect', target: d.id, limit: 1 });
      assert.equal(ended!.sourceIp, '127.0.0.21', "the taken-over connection's IP is on its disconnect");
      assert.equal(ended!.details.reason, 'takeover');
      assert.equal(ended!.details.reasonCode, 0x8e);
      const connects = await tp.platform.audit.query({ type: 'device.connect', target: d.id, limit: 10 });
      assert.deepEqual(
        connects.map((e) => e.sourceIp),
        ['127.0.0.21', '127.0.0.22'],
      );

      const down = nextChange(tp, d.id, isDisconnected);
      await endClient(second.client);
      assert.equal((await down).online, false);
      first.client.end(true);
    });

    test('[IDS-1] two clients fighting over one identity (a clone): the fourth takeover in an hour is a shared credential', async () => {
      const d = a.devices[4]!;
      const before = tp.platform.guard.detections.get('credential-shared') ?? 0;
      const clients: MqttClient[] = [];
      for (let i = 0; i < 5; i++) {
        const up = nextChange(tp, d.id, isConnected);
        const outcome = await mqttConnect(tp.platform, {
          username: d.id,
          password: d.secret,
          localAddress: i % 2 === 0 ? '127.0.0.23' : '127.0.0.24',
        });
        if (!outcome.client) break; // quarantined: refused from now on
        clients.push(outcome.client);
        await up;
      }
      await eventually(
        () => (tp.platform.guard.detections.get('credential-shared') ?? 0) === before + 1,
        'the shared credential is detected',
      );
      await tp.platform.audit.flush();
      const takeovers = await tp.platform.audit.query({ type: 'device.session-takeover', target: d.id, limit: 10 });
      assert.equal(takeovers.length, 4, 'every takeover is recorded');
      const alerts = await tp.platform.audit.query({ type: 'guard.credential-shared', target: d.id, limit: 10 });
      assert.equal(alerts.length, 1);
      assert.equal(alerts[0]!.details.previousAddressDiffers, true);
      // The default response quarantines the device and ends its connection: presence follows.
      await eventually(async () => (await getDevice(d)).body.presence.online === false, 'the device is offline');
      assert.equal((await getDevice(d)).body.status, 'quarantined');
      for (const c of clients) c.end(true);
    });

    test('[CHAN-6] $SYS is read-only and per tenant: own subtree granted, everything else refused, publishing refused', async () => {
      const [a1, a2] = [a.devices[0]!, a.devices[1]!];
      const b1 = b.devices[0]!;
      const mine = await connectDevice(tp.platform, a1, 5);
      const sibling = await connectDevice(tp.platform, a2, 4);
      const theirs = await connectDevice(tp.platform, b1, 5);
      const own = `$SYS/tenants/${a.vendorId}`;
      const denied = [
        '$SYS/#',
        '$SYS/+/#',
        '$SYS/tenants/#',
        '$SYS/tenants/+/broker/clients/connected',
        `$SYS/tenants/${b.vendorId}/#`,
        `$SYS/tenants/${b.vendorId}/broker/clients/connected`,
        own, // the tenant level itself: only filters below it
        `${own}x/#`,
        '$SYS/broker/uptime',
      ];
      const granted = await subscribeOutcome(mine, [...denied, `${own}/#`, `${own}/broker/+`]);
      assert.deepEqual(granted, [...denied.map(() => 0x87), 1, 1]);
      assert.deepEqual(await subscribeOutcome(sibling, [`$SYS/tenants/${b.vendorId}/#`, `${own}/broker/#`]), [0x80, 1]);
      assert.deepEqual(await subscribeOutcome(theirs, [`$SYS/tenants/${b.vendorId}/#`]), [1]);

      // Nobody publishes to $SYS, not even to its own subtree: the core refuses `$` topics, and so does the hook.
      for (const topic of [`${own}/broker/clients/connected`, '$SYS/broker/uptime', `$SYS/tenants/${b.vendorId}/x`]) {
        assert.equal(await publishOutcome(mine, topic, '999', 1), 0x87, topic);
      }
      const identity = {
        principalId: a1.id,
        kind: 'device' as const,
        clientId: a1.id,
        attributes: { vendorId: a.vendorId, productId: a.productId },
      };
      assert.equal(tp.platform.broker.hooks.authorizePublish(identity, `${own}/broker/uptime`), false);
      assert.equal(tp.platform.broker.hooks.authorizePublish(identity, `$SYS/devices/${a1.id}/telemetry`), false);
      assert.equal(tp.platform.broker.hooks.authorizeSubscribe(identity, `${own}/#`), true);
      assert.equal(
        tp.platform.broker.hooks.authorizeSubscribe({ ...identity, attributes: {} }, `${own}/#`),
        false,
        'no tenant, no $SYS',
      );

      const mineBox = inbox(mine);
      const theirBox = inbox(theirs);
      await eventually(
        () =>
          tp.platform.devices.presence.connectedByTenant().get(a.vendorId) === 2 &&
          tp.platform.devices.presence.connectedByTenant().get(b.vendorId) === 1,
        'the counts settle',
      );
      tp.platform.sysTopics.publishNow();
      await mineBox.waitFor(`${own}/broker/clients/connected`, '2');
      const uptime = await mineBox.waitFor(`${own}/broker/uptime`);
      assert.match(uptime.payload, /^\d+$/);
      const version = await mineBox.waitFor(`${own}/broker/version`);
      assert.match(version.payload, /^\d+\.\d+\.\d+/);
      await theirBox.waitFor(`$SYS/tenants/${b.vendorId}/broker/clients/connected`, '1');
      await theirBox.waitFor(`$SYS/tenants/${b.vendorId}/broker/version`);
      assert.ok(
        mineBox.messages.every((m) => m.topic.startsWith(`${own}/`)),
        "tenant A's device sees only tenant A's subtree",
      );
      assert.ok(
        theirBox.messages.every((m) => m.topic.startsWith(`$SYS/tenants/${b.vendorId}/`)),
        "tenant B's device sees only tenant B's subtree",
      );
      assert.ok(!mineBox.messages.some((m) => m.payload === '999'), 'no refused publish was routed');

      for (const client of [mine, sibling, theirs]) await endClient(client);
    });

    test('activity is kept in memory and written at most once per flush, never moving last seen back', async () => {
      const { PresenceTracker } = await import('../src/devices/index.ts');
      let clock = 1_000_000;
      const tracker = new PresenceTracker({ db: tp.platform.store.db, now: () => clock, activityFlushMs: 3_600_000 });
      const id = `01${a.vendorCode}${a.productCode}ffffffff00`;
      const row = async () =>
        (
          await tp.query<{ online: number; last_seen_at: number; last_connected_at: number }>(
            'select online, last_seen_at, last_connected_at from device_presence where device_id = $1',
            [id],
          )
        )[0];
      const changes: PresenceChange[] = [];
      tracker.events.on('change', (c) => changes.push(c));
      tracker.events.on('change', () => {
        throw new Error('a failing listener');
      });
      tracker.events.on('change', (c) => changes.push(c));
      tracker.connected(
        { id, vendorId: a.vendorId },
        { protocolVersion: 5, sessionPresent: true, remoteAddress: '::1' },
      );
      await eventually(() => changes.length === 2, 'the connect is stored and emitted to every listener');
      assert.equal(changes[0]!.type === 'connected' && changes[0]!.sessionPresent, true);
      for (let i = 1; i <= 100; i++) tracker.activity(id, clock + i);
      assert.equal(Number((await row())!.last_seen_at), clock, 'no write per message');
      assert.equal((await tracker.get(id)).lastSeenAt, clock + 100, 'but it is shown');
      await tracker.flush();
      assert.equal(Number((await row())!.last_seen_at), clock + 100, 'one flush writes the latest');
      tracker.activity(id, clock + 50);
      await tracker.flush();
      assert.equal(Number((await row())!.last_seen_at), clock + 100, 'an older time never overwrites a newer one');
      assert.deepEqual(tracker.connectedByTenant(), new Map([[a.vendorId, 1]]));
      clock += 1000;
      const ended = tracker.disconnected(id, { reason: 'keep-alive', connectedForMs: 1000, remoteAddress: '::1' });
      assert.deepEqual(ended, {
        connectedAt: 1_000_000,
        protocolVersion: 5,
        sessionPresent: true,
        remoteAddress: '::1',
      });
      await tracker.close();
      const stored = (await row())!;
      assert.equal(stored.online, 0);
      assert.equal(Number(stored.last_seen_at), 1_000_100, 'a keep-alive timeout: last seen at the last message');
      assert.deepEqual(tracker.connectedByTenant(), new Map());
      assert.equal(changes.length, 4);
    });
  });
}

describe('per-tenant $SYS publisher', () => {
  test('publishes each tenant only its own figures, retained at QoS 0, and a final 0 when its last device leaves', async () => {
    const { SysTopicsPublisher } = await import('../src/gateway/index.ts');
    const sent: Array<{ topic: string; payload: string; retain: boolean; qos: 0 | 1 | undefined }> = [];
    const broker = {
      publishSystem(topic: string, payload: Buffer, options: { retain: boolean; qos?: 0 | 1 }) {
        sent.push({ topic, payload: payload.toString(), retain: options.retain, qos: options.qos });
      },
    };
    let counts = new Map([
      ['vnd_a', 2],
      ['vnd_b', 1],
      ['vnd_bad/+', 1],
    ]);
    let clock = 5_000;
    const publisher = new SysTopicsPublisher({
      broker,
      connectedByTenant: () => counts,
      version: '1.2.3',
      now: () => clock,
    });
    clock += 42_500;
    publisher.publishNow();
    assert.deepEqual(sent, [
      { topic: '$SYS/tenants/vnd_a/broker/clients/connected', payload: '2', retain: true, qos: 0 },
      { topic: '$SYS/tenants/vnd_a/broker/uptime', payload: '42', retain: true, qos: 0 },
      { topic: '$SYS/tenants/vnd_a/broker/version', payload: '1.2.3', retain: true, qos: 0 },
      { topic: '$SYS/tenants/vnd_b/broker/clients/connected', payload: '1', retain: true, qos: 0 },
      { topic: '$SYS/tenants/vnd_b/broker/uptime', payload: '42', retain: true, qos: 0 },
      { topic: '$SYS/tenants/vnd_b/broker/version', payload: '1.2.3', retain: true, qos: 0 },
    ]);
    sent.length = 0;
    counts = new Map([['vnd_a', 1]]);
    publisher.publishNow();
    assert.deepEqual(
      sent.map((m) => [m.topic, m.payload]),
      [
        ['$SYS/tenants/vnd_a/broker/clients/connected', '1'],
        ['$SYS/tenants/vnd_a/broker/uptime', '42'],
        ['$SYS/tenants/vnd_a/broker/version', '1.2.3'],
        ['$SYS/tenants/vnd_b/broker/clients/connected', '0'],
      ],
    );
    sent.length = 0;
    counts = new Map();
    publisher.publishNow();
    publisher.publishNow();
    assert.deepEqual(
      sent.map((m) => [m.topic, m.payload]),
      [['$SYS/tenants/vnd_a/broker/clients/connected', '0']],
      'the final 0 once, then nothing for tenants without devices',
    );
    publisher.start();
    publisher.stop();
  });
});

describe('presence after a crash', () => {
  for (const dialectName of ['sqlite', 'postgres'] as const) {
    test(`[${dialectName}] devices a killed process left online are offline (platform-restart) after the next start`, async (t) => {
      const cases = await dialectCases();
      const skip = cases.find((c) => c.name === dialectName)!.skip;
      if (skip) {
        t.skip(skip);
        return;
      }
      const rootKey = { base64: randomBytes(32).toString('base64') };
      const schema = dialectName === 'postgres' ? uniqueSchema() : undefined;
      const first = await startTestPlatform(dialectName, {
        rootKey,
        ...(schema ? { database: { schema } } : {}),
      });
      const storage =
        dialectName === 'postgres'
          ? { database: { url: POSTGRES_URL, schema }, keys: { storeSchema: `${schema}_keys` } }
          : {
              database: { url: `sqlite:${join(first.dataDir, 'castellan.db')}` },
              keys: { storeUrl: `sqlite:${join(first.dataDir, 'keystore.db')}` },
            };
      const tenant = await provisionTenant(first, 1);
      const d = tenant.devices[0]!;
      await first.platform.close();

      // The same storage in another process, which the device connects to and which is then killed.
      const child = spawn(
        process.execPath,
        [
          new URL('./helpers/platform-child.ts', import.meta.url).pathname,
          JSON.stringify({
            http: { host: '127.0.0.1', port: 0 },
            mqtt: { host: '127.0.0.1', port: 0 },
            admin: { enabled: false },
            rootKey,
            ...storage,
          }),
        ],
        { stdio: ['pipe', 'pipe', 'inherit'] },
      );
      let second: TestPlatform | undefined;
      try {
        const line = await new Promise<string>((resolve, reject) => {
          let buffered = '';
          child.stdout.on('data', (chunk: Buffer) => {
            buffered += chunk.toString();
            if (buffered.includes('\n')) resolve(buffered.split('\n')[0]!);
          });
          child.once('exit', (code) => reject(new Error(`the child platform exited with ${code}`)));
        });
        const crashing = JSON.parse(line) as { httpUrl: string; mqttUrl: string; caPem: string };
        const outcome = await mqttConnect(crashing, { username: d.id, password: d.secret });
        assert.ok(outcome.client, `the device connects to the child: ${outcome.error?.message}`);
        outcome.client.on('error', () => {});
        await eventually(
          async () =>
            (await request(crashing, 'GET', `/v1/devices/${d.id}`, { token: tenant.vendorToken })).body.presence
              ?.online === true,
          'the child stores the device online',
        );
        const exited = once(child, 'exit');
        child.kill('SIGKILL');
        await exited;
        outcome.client.end(true);

        second = await startTestPlatform(dialectName, { rootKey, ...storage });
        const res = await request(second.platform, 'GET', `/v1/devices/${d.id}`, { token: tenant.vendorToken });
        assert.equal(res.status, 200);
        assert.equal(res.body.presence.online, false);
        assert.equal(res.body.presence.lastDisconnectReason, 'platform-restart');
        assert.equal(res.body.presence.lastDisconnectedAt, res.body.presence.lastSeenAt);
        assert.ok(res.body.presence.lastConnectedAt > 0);
      } finally {
        if (child.exitCode === null && child.signalCode === null) {
          const exited = once(child, 'exit');
          child.kill('SIGKILL');
          await exited;
        }
        await second?.platform.close();
        if (second) await second.close().catch(() => {});
        await first.close().catch(() => {});
        if (schema) {
          await dropSchema(schema);
          await dropSchema(`${schema}_keys`);
        }
      }
    });
  }
});
