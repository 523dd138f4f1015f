// Scale mode (RES-2): two processes over one PostgreSQL schema and one Redis. Process B is this test's
// own platform; process A is `castellan up` in a child process, configured to share B's database, key
// store, root key, TLS material and Redis prefix. Devices connect to one process while the API call
// that concerns them lands on the other: commands, desired state, revocation and push must cross, TLS
// sessions resume on either, and a device taken over by the other process stays online.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import tls from 'node:tls';
import { DeviceClient } from '@castellan/device';
import { Redis } from 'ioredis';
import type { MqttClient } from 'mqtt';
import { signRequest } from '@castellan/protocol';
import { dialectCases, POSTGRES_URL } from './helpers/dialects.ts';
import { connectDevice } from './helpers/mqtt-clients.ts';
import {
  type OperatorKey,
  provisionTenant,
  request,
  startTestPlatform,
  type Tenant,
  type TestPlatform,
} from './helpers/test-platform.ts';

const bin = resolve(import.meta.dirname, '../bin/castellan.js');
const REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';
const SESSION_TAKEN_OVER = 0x8e;

interface Runtime {
  httpUrl: string;
  mqttUrl: string;
}

const generousGuard = {
  httpPerIpPerMinute: 1_000_000,
  httpPerCredentialPerMinute: 1_000_000,
  httpWritesPerCredentialPerMinute: 1_000_000,
  mqttConnectsPerIpPerMinute: 1_000_000,
  authFailuresPerIp: 100_000,
  authFailuresPerDevice: 100_000,
  invalidRequestsPerIp: 1_000_000,
  deviceStateChangesPerMinute: 1_000_000,
};

/** Starts `castellan up` as another process of B's deployment; resolves with its URLs. */
async function startProcess(
  b: TestPlatform,
  prefix: string,
  extra: Record<string, unknown> = {},
): Promise<{ child: ChildProcess; runtime: Runtime; dir: string; output: () => string }> {
  const dir = mkdtempSync(join(tmpdir(), 'castellan-scale-'));
  const pki = join(b.dataDir, 'pki');
  const config = {
    dataDir: join(dir, 'data'),
    log: { level: 'info' },
    http: { host: '127.0.0.1', port: 0 },
    mqtt: { host: '127.0.0.1', port: 0, connectsPerIpPerSecond: 1_000_000, connectBurstPerIp: 1_000_000 },
    admin: { enabled: false },
    database: { url: POSTGRES_URL, schema: b.schema },
    rootKey: { file: join(b.dataDir, 'root.key') },
    tls: { certFile: join(pki, 'server.crt'), keyFile: join(pki, 'server.key'), caFile: join(pki, 'ca.crt') },
    redis: { url: REDIS_URL, keyPrefix: prefix },
    cluster: { enabled: true, heartbeatSeconds: 1 },
    // Revocation must reach this process through the bus, not through its own sweep.
    devices: { credentialSweepSeconds: 3600 },
    guard: generousGuard,
    ...extra,
  };
  const file = join(dir, 'castellan.config.json');
  writeFileSync(file, JSON.stringify(config));
  const env = Object.fromEntries(
    Object.entries(process.env).filter(
      ([k]) => !k.startsWith('CASTELLAN_') && k !== 'DATABASE_URL' && k !== 'REDIS_URL',
    ),
  );
  const child = spawn(process.execPath, [bin, 'up', '--config', file], {
    cwd: dir,
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (c) => (output += c));
  child.stderr.on('data', (c) => (output += c));
  const runtimeFile = join(dir, 'data', 'runtime.json');
  for (let i = 0; i < 600 && !existsSync(runtimeFile) && child.exitCode === null; i++) await sleep(50);
  if (!existsSync(runtimeFile)) {
    child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
    assert.fail(`the second process did not start:\n${output}`);
  }
  await sleep(50);
  const runtime = JSON.parse(readFileSync(runtimeFile, 'utf8')) as Runtime & { workers?: unknown[] };
  return { child, runtime, dir, output: () => output };
}

async function stopProcess(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGTERM');
  await Promise.race([exited, sleep(30_000).then(() => child.kill('SIGKILL'))]);
}

const portOf = (url: string) => Number(new URL(url).port);

/** One TLS handshake to 127.0.0.1:port; resolves with the session ticket and whether it resumed. */
function handshake(
  port: number,
  ca: string,
  session?: Buffer,
): Promise<{ reused: boolean; session: Buffer | undefined }> {
  return new Promise((resolvePromise, reject) => {
    let ticket: Buffer | undefined;
    const socket = tls.connect({
      host: '127.0.0.1',
      port,
      ca,
      servername: 'localhost',
      ...(session ? { session } : {}),
    });
    socket.on('session', (s: Buffer) => {
      ticket = s;
      // TLS 1.3 tickets arrive after the handshake: wait for one before closing.
      const reused = socket.isSessionReused();
      socket.end();
      resolvePromise({ reused, session: ticket });
    });
    socket.once('secureConnect', () => {
      if (socket.isSessionReused() && session) {
        // A resumed TLS 1.3 session may still send a new ticket; do not wait for it.
        setTimeout(() => {
          socket.end();
          resolvePromise({ reused: true, session: ticket ?? session });
        }, 50);
      }
    });
    socket.on('error', reject);
  });
}

/** A vendor's Server-Sent Events stream of one device (GET /v1/devices/:id/events/stream). */
function openStream(
  httpUrl: string,
  ca: string,
  path: string,
  token: string | OperatorKey,
): Promise<{ events: Array<{ event: string; data: unknown }>; close(): void }> {
  const url = new URL(path, httpUrl);
  const auth =
    typeof token === 'string'
      ? { authorization: `Bearer ${token}` }
      : { host: url.host, ...signRequest({ key: token, method: 'GET', target: path, host: url.host }) };
  return new Promise((resolvePromise, reject) => {
    const events: Array<{ event: string; data: unknown }> = [];
    const req = https.request(url, {
      method: 'GET',
      ca,
      agent: false,
      headers: { accept: 'text/event-stream', ...auth },
    });
    req.on('response', (res) => {
      assert.equal(res.statusCode, 200);
      res.setEncoding('utf8');
      let buffer = '';
      res.on('data', (chunk: string) => {
        buffer += chunk;
        let end: number;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const name = /^event: (.*)$/m.exec(block)?.[1];
          const data = [...block.matchAll(/^data: (.*)$/gm)].map((m) => m[1]).join('\n');
          if (name) events.push({ event: name, data: data ? JSON.parse(data) : null });
        }
      });
      resolvePromise({ events, close: () => req.destroy() });
    });
    req.on('error', reject);
    req.end();
  });
}

async function until(what: string, check: () => boolean | Promise<boolean>, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

const postgres = (await dialectCases()).find((d) => d.name === 'postgres')!;

describe('scale mode: two processes over PostgreSQL and Redis (RES-2)', { skip: postgres.skip }, () => {
  let b: TestPlatform;
  let a: Awaited<ReturnType<typeof startProcess>>;
  let tenant: Tenant;
  let spare: Tenant['devices'];
  const prefix = `castellan-test-${randomBytes(4).toString('hex')}:`;
  const clients: DeviceClient[] = [];
  const raws: MqttClient[] = [];
  /** A raw MQTT 5 connection (no reconnects) to A or B. */
  const raw = async (side: 'A' | 'B', device: { id: string; secret: string }) => {
    const target = side === 'A' ? { ...b.platform, mqttUrl: a.runtime.mqttUrl } : b.platform;
    const client = await connectDevice(target, device, 5);
    raws.push(client);
    return client;
  };
  const aPlatform = () => ({ httpUrl: a.runtime.httpUrl, caPem: b.platform.caPem });

  before(async () => {
    b = await startTestPlatform('postgres', {
      cluster: { enabled: true, heartbeatSeconds: 1 },
      redis: { url: REDIS_URL, keyPrefix: prefix },
      devices: { credentialSweepSeconds: 3600 },
    });
    tenant = await provisionTenant(b, 8);
    spare = [...tenant.devices];
    a = await startProcess(b, prefix);
  });
  after(async () => {
    for (const client of clients) await client.close().catch(() => {});
    for (const client of raws) client.end(true);
    if (a) {
      await stopProcess(a.child);
      rmSync(a.dir, { recursive: true, force: true });
    }
    await b?.close();
  });

  const nextDevice = () => {
    const device = spare.shift();
    assert.ok(device, 'enough test devices');
    return device;
  };
  const connect = async (mqttUrl: string, device: { id: string; secret: string }) => {
    const client = await DeviceClient.connect({
      url: mqttUrl,
      deviceId: device.id,
      secret: device.secret,
      ca: b.platform.caPem,
      servername: 'localhost',
      protocolVersion: 5,
    });
    clients.push(client);
    return client;
  };
  const presenceRow = async (deviceId: string) =>
    (
      await b.query<{ online: number; node_id: string | null }>(
        'select online, node_id from device_presence where device_id = $1',
        [deviceId],
      )
    )[0];

  test('[RES-2] both processes registered as live cluster nodes', async () => {
    assert.ok(b.platform.cluster, 'scale mode is on');
    const nodes = await b.platform.cluster.nodes.liveNodes();
    assert.equal(nodes.length, 2, `two live nodes: ${nodes.join(', ')}`);
    assert.ok(nodes.includes(b.platform.cluster.nodeId));
  });

  for (const [label, deviceSide, apiSide] of [
    ['the other process', 'A', 'B'],
    ['the test process', 'B', 'A'],
  ] as const) {
    test(`[RES-2] a command to a device connected to ${label} is delivered and acknowledged (device on ${deviceSide}, API on ${apiSide})`, async () => {
      const device = nextDevice();
      const client = await connect(deviceSide === 'A' ? a.runtime.mqttUrl : b.platform.mqttUrl, device);
      const handled: unknown[] = [];
      await client.onCommand('set-scene', async (command) => {
        handled.push(command.params);
        return { applied: command.params.scene };
      });
      const api = apiSide === 'A' ? aPlatform() : b.platform;
      await until('presence online', async () => (await presenceRow(device.id))?.online === 1);
      const sent = await request(api, 'POST', `/v1/devices/${device.id}/commands`, {
        token: tenant.vendorToken,
        body: { name: 'set-scene', params: { scene: 'evening' }, timeoutSeconds: 10 },
      });
      assert.equal(sent.status, 202, sent.text);
      const done = await request(api, 'GET', `/v1/devices/${device.id}/commands/${sent.body.id}?wait=true`, {
        token: tenant.vendorToken,
      });
      assert.equal(done.status, 200, done.text);
      assert.equal(done.body.status, 'succeeded');
      assert.deepEqual(done.body.result, { applied: 'evening' });
      assert.deepEqual(handled, [{ scene: 'evening' }], 'delivered exactly once');
    });
  }

  test('[RES-2] desired state set through one process reaches the device on the other, and is retained for its next connection there', async () => {
    const device = nextDevice();
    const client = await connect(a.runtime.mqttUrl, device);
    const seen: unknown[] = [];
    await client.onDesired((desired) => {
      seen.push(desired);
    });
    const put = await request(b.platform, 'PUT', `/v1/devices/${device.id}/shadow/desired`, {
      token: tenant.vendorToken,
      body: { state: { level: 3 } },
    });
    assert.ok(put.status === 200 || put.status === 202, put.text);
    await until('desired state on the device', () => seen.some((d) => JSON.stringify(d).includes('"level":3')));
    await client.close();
    // A's retained copy came over the bus (B wrote the store): a new connection to A gets it at once.
    const again = await connect(a.runtime.mqttUrl, device);
    const synced = await again.syncShadow({ settleMs: 300 });
    assert.equal((synced as { desired?: { level?: number } }).desired?.level ?? 3, 3);
  });

  test('[RES-2] [DEV-8] revoking a device through one process drops its connection on the other at once', async () => {
    const device = nextDevice();
    const client = await raw('A', device);
    const closed = new Promise<void>((r) => client.once('close', () => r()));
    const revoked = await request(b.platform, 'POST', `/v1/devices/${device.id}/credentials/revoke`, {
      token: tenant.vendorToken,
      body: { reason: 'key-compromise' },
    });
    assert.equal(revoked.status, 200, revoked.text);
    // A's own sweep runs hourly here: only the bus can have done it.
    await Promise.race([closed, sleep(5_000).then(() => assert.fail('the connection on A was not dropped'))]);
  });

  test('[RES-2] a bus message without the cluster MAC (anyone with Redis access) is dropped: the device stays connected', async () => {
    const device = nextDevice();
    const client = await raw('B', device);
    const redis = new Redis(REDIS_URL);
    try {
      const before = b.platform.cluster!.bus.stats.forged;
      const body = JSON.stringify({ t: 'disconnect', clientId: device.id, reasonCode: 0x98, o: 'nod_attacker' });
      for (const text of [body, `AAAA.${body}`]) await redis.publish(`${prefix}cluster:broker`, text);
      await until('both forgeries counted', () => b.platform.cluster!.bus.stats.forged === before + 2);
      await sleep(200);
      assert.equal(client.connected, true, 'the forged disconnect order was not obeyed');
      assert.equal(b.platform.broker.isConnected(device.id), true);
    } finally {
      redis.disconnect();
    }
  });

  test('[RES-2] a device that connects to the other process takes its session over; it stays online there', async () => {
    const device = nextDevice();
    const first = await raw('A', device);
    await until('online on A', async () => (await presenceRow(device.id))?.online === 1);
    const nodeA = (await presenceRow(device.id))!.node_id;
    let reason: number | undefined;
    first.on('disconnect', (packet: { reasonCode?: number }) => (reason = packet.reasonCode));
    const closed = new Promise<void>((r) => first.once('close', () => r()));
    await raw('B', device);
    await Promise.race([closed, sleep(5_000).then(() => assert.fail('A kept the old connection'))]);
    assert.equal(reason, SESSION_TAKEN_OVER);
    await sleep(300);
    const row = await presenceRow(device.id);
    assert.equal(row?.online, 1, 'still online');
    assert.equal(row?.node_id, b.platform.cluster!.nodeId);
    assert.notEqual(row?.node_id, nodeA);
  });

  test('[RES-2] a push stream on one process carries telemetry of a device connected to the other', async () => {
    const device = nextDevice();
    const stream = await openStream(
      b.platform.httpUrl,
      b.platform.caPem,
      `/v1/devices/${device.id}/events/stream?types=telemetry,presence`,
      tenant.vendorToken,
    );
    try {
      // A learns at once that B listens (the bridge announces its subscription).
      await sleep(300);
      const client = await connect(a.runtime.mqttUrl, device);
      await client.publishTelemetry({ temperature: 21.5 });
      await until('the telemetry event on B', () =>
        stream.events.some((e) => e.event === 'telemetry' && JSON.stringify(e.data).includes('21.5')),
      ).catch((error: unknown) => {
        throw new Error(`${(error as Error).message}: ${JSON.stringify(stream.events)}`);
      });
    } finally {
      stream.close();
    }
  });

  test('[RES-2] [CHAN-2] TLS sessions resume across processes (shared ticket keys), on MQTT and HTTPS', async () => {
    for (const [name, first, second] of [
      ['mqtt', portOf(a.runtime.mqttUrl), b.platform.mqttPort],
      ['https', b.platform.httpPort, portOf(a.runtime.httpUrl)],
    ] as const) {
      const full = await handshake(first, b.platform.caPem);
      assert.equal(full.reused, false);
      assert.ok(full.session, `${name}: a ticket was issued`);
      const resumed = await handshake(second, b.platform.caPem, full.session);
      assert.equal(resumed.reused, true, `${name}: the ticket from one process resumes on the other`);
    }
  });

  test("[RES-2] a process starting leaves the devices of live processes online; a stopped one's are set offline", async () => {
    const device = nextDevice();
    await connect(a.runtime.mqttUrl, device);
    await until('online on A', async () => (await presenceRow(device.id))?.online === 1);
    const third = await startProcess(b, prefix);
    try {
      assert.equal((await presenceRow(device.id))?.online, 1, 'a third process starting did not set it offline');
    } finally {
      await stopProcess(third.child);
      rmSync(third.dir, { recursive: true, force: true });
    }
    assert.equal((await presenceRow(device.id))?.online, 1, 'a third process stopping did not set it offline');
  });
});

describe(
  'scale mode: `castellan up` with two worker processes sharing the listeners (RES-2)',
  { skip: postgres.skip },
  () => {
    let b: TestPlatform;
    let w: Awaited<ReturnType<typeof startProcess>>;
    let tenant: Tenant;
    const prefix = `castellan-test-${randomBytes(4).toString('hex')}:`;
    const raws: MqttClient[] = [];

    before(async () => {
      b = await startTestPlatform('postgres', {
        cluster: { enabled: true, heartbeatSeconds: 1 },
        redis: { url: REDIS_URL, keyPrefix: prefix },
      });
      tenant = await provisionTenant(b, 6);
      w = await startProcess(b, prefix, { cluster: { enabled: true, workers: 2, heartbeatSeconds: 1 } });
    });
    after(async () => {
      for (const client of raws) client.end(true);
      if (w) {
        await stopProcess(w.child);
        rmSync(w.dir, { recursive: true, force: true });
      }
      await b?.close();
    });

    test('[RES-2] two workers serve one port each for MQTT and HTTPS: devices land on both, commands and resumption work on either; a killed worker is replaced and its devices go offline', async () => {
      const workers = (
        JSON.parse(readFileSync(join(w.dir, 'data', 'runtime.json'), 'utf8')) as {
          workers: Array<{ pid: number; nodeId: string }>;
        }
      ).workers;
      assert.equal(workers.length, 2);
      assert.notEqual(workers[0]!.pid, workers[1]!.pid);
      for (const worker of workers) process.kill(worker.pid, 0); // alive
      const target = { ...b.platform, mqttUrl: w.runtime.mqttUrl };
      const api = { httpUrl: w.runtime.httpUrl, caPem: b.platform.caPem };
      const devices = tenant.devices.slice(0, 4);
      const answered: string[] = [];
      for (const device of devices) {
        const client = await connectDevice(target, device, 5);
        raws.push(client);
        client.on('message', (topic, payload) => {
          if (!topic.startsWith(`devices/${device.id}/commands/`)) return;
          const { id } = JSON.parse(payload.toString('utf8')) as { id: string };
          answered.push(device.id);
          client.publish(
            `devices/${device.id}/acks/${id}`,
            JSON.stringify({ status: 'succeeded', result: { ok: true } }),
            { qos: 1 },
          );
        });
        await new Promise<void>((r, j) =>
          client.subscribe(`devices/${device.id}/commands/#`, { qos: 1 }, (e) => (e ? j(e) : r())),
        );
      }
      const presence = async () =>
        b.query<{ device_id: string; online: number; node_id: string }>(
          `select device_id, online, node_id from device_presence where device_id in (${devices.map((_, i) => `$${i + 1}`).join(',')})`,
          devices.map((d) => d.id),
        );
      await until('all four online', async () => (await presence()).filter((r) => r.online === 1).length === 4);
      const nodes = new Set((await presence()).map((r) => r.node_id));
      assert.deepEqual(
        [...nodes].sort(),
        workers.map((x) => x.nodeId).sort(),
        'connections were spread over both workers',
      );
      for (const device of devices) {
        const sent = await request(api, 'POST', `/v1/devices/${device.id}/commands`, {
          token: tenant.vendorToken,
          body: { name: 'ping', params: {}, timeoutSeconds: 10 },
        });
        assert.equal(sent.status, 202, sent.text);
        const done = await request(api, 'GET', `/v1/devices/${device.id}/commands/${sent.body.id}?wait=true`, {
          token: tenant.vendorToken,
        });
        assert.equal(done.body.status, 'succeeded', done.text);
      }
      assert.deepEqual(answered.sort(), devices.map((d) => d.id).sort());
      // Resumption whichever worker the next connection lands on.
      const port = portOf(w.runtime.mqttUrl);
      const full = await handshake(port, b.platform.caPem);
      for (let i = 0; i < 4; i++) {
        assert.equal((await handshake(port, b.platform.caPem, full.session)).reused, true, `resumption ${i + 1}`);
      }

      // A worker killed outright: the primary starts another; the dead one's devices are set offline.
      const victim = workers[0]!;
      const victims = (await presence()).filter((r) => r.node_id === victim.nodeId).map((r) => r.device_id);
      process.kill(victim.pid, 'SIGKILL');
      await until(
        'its devices offline',
        async () =>
          (await presence()).filter((r) => victims.includes(r.device_id) && r.online === 0).length === victims.length,
        20_000,
      );
      await until(
        'a replacement worker',
        async () => {
          const live = await b.platform.cluster!.nodes.liveNodes();
          return live.length === 3 && !live.includes(victim.nodeId);
        },
        20_000,
      );
      const again = await connectDevice(target, devices[0]!, 5);
      raws.push(again);
    });
  },
);
