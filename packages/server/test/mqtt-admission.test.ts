// Admission control on the MQTT over TLS listener (issue 6, RATE-1): connect attempts are judged on the
// raw TCP socket before any TLS work (a per-client-network token bucket, a cap on handshakes in
// progress), refusals for load or rate at CONNACK tell MQTT 5 clients when to come back (`retry-after`),
// and HTTPS connections refused by the allow/deny lists are counted. Loopback source addresses
// (127.0.0.x via `localAddress`) stand in for separate clients.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import tls from 'node:tls';
import mqtt, { type IClientOptions, type Packet } from 'mqtt';
import { ConnectionAdmission, RetryAdvisor, refusalProperties } from '../src/gateway/mqtt/connection-admission.ts';
import { MqttBroker } from '../src/gateway/mqtt/mqtt-broker.ts';
import { type MqttListener, startMqttListener } from '../src/gateway/mqtt/mqtt-listener.ts';
import { ReasonCode } from '../src/gateway/mqtt/reason-codes.ts';
import { generateDevPki, type TlsMaterial } from '../src/keys/index.ts';
import { createLogger } from '../src/logging/index.ts';
import { defaultLimits, openHooks } from './helpers/mqtt-core.ts';
import { provisionTenant, startTestPlatform, type Tenant, type TestPlatform } from './helpers/test-platform.ts';

const LONG_MS = 2000;

/**
 * A TCP connection from `localAddress` that sends nothing and waits to be closed by the server. An
 * admitted one would be held until the handshake timeout (5 s in these tests): closing it well before
 * that, without a byte, is the proof it was refused before TLS.
 */
async function silentProbe(port: number, localAddress: string): Promise<{ bytes: number; closedByServer: boolean }> {
  const socket = net.connect({ host: '127.0.0.1', port, localAddress });
  let bytes = 0;
  socket.on('data', (chunk: Buffer) => (bytes += chunk.length));
  socket.on('error', () => {}); // a reset is one way of being closed
  let closedByServer = true;
  const timer = setTimeout(() => {
    closedByServer = false;
    socket.destroy();
  }, LONG_MS);
  await once(socket, 'close');
  clearTimeout(timer);
  return { bytes, closedByServer };
}

/** A TCP connection that is accepted and then says nothing (a slow or hostile client). */
async function idleSocket(port: number, localAddress: string): Promise<net.Socket> {
  const socket = net.connect({ host: '127.0.0.1', port, localAddress });
  socket.on('error', () => {});
  await once(socket, 'connect');
  return socket;
}

/** A TLS handshake from `localAddress`: 'admitted' on secureConnect, else the error code. */
function tlsAttempt(port: number, localAddress: string, ca: string): Promise<string> {
  return new Promise((resolve) => {
    const tcp = net.connect({ host: '127.0.0.1', port, localAddress });
    tcp.on('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? error.message));
    const socket = tls.connect({ socket: tcp, ca, servername: 'localhost' }, () => {
      resolve('admitted');
      socket.end(); // orderly: the server has nothing to log about it
    });
    socket.on('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? error.message));
  });
}

interface Connack {
  code: number;
  properties: Record<string, unknown> | undefined;
}

/** CONNECTs with mqtt.js and resolves with the CONNACK's code and properties (or throws if none came). */
function connack(
  url: string,
  ca: string,
  options: Partial<IClientOptions> & { localAddress?: string },
): Promise<Connack> {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect(url, {
      protocolVersion: 5,
      reconnectPeriod: 0,
      connectTimeout: 5000,
      ca,
      rejectUnauthorized: true,
      servername: 'localhost',
      ...options,
    } as IClientOptions);
    client.on('packetreceive', (packet: Packet) => {
      if (packet.cmd !== 'connack') return;
      const code = (packet.reasonCode ?? packet.returnCode)!;
      resolve({ code, properties: packet.properties as Record<string, unknown> | undefined });
      client.end(true);
    });
    client.on('error', () => {});
    client.on('close', () => reject(new Error('closed without CONNACK')));
  });
}

async function metricsText(tp: TestPlatform): Promise<string> {
  return new Promise((resolve, reject) => {
    http
      .get(`${tp.platform.adminUrl!}/metrics`, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve(body));
      })
      .on('error', reject);
  });
}

function metricValue(text: string, name: string, labels = ''): number {
  const line = text.split('\n').find((l) => l.startsWith(name) && l.includes(labels) && !l.startsWith('#'));
  assert.ok(line, `${name} ${labels} is exported`);
  return Number(line.split(' ').at(-1));
}

async function eventually(check: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 250; i++) {
    if (check()) return;
    await sleep(10);
  }
  assert.fail(`never happened: ${what}`);
}

describe('[RATE-1] admission before TLS on the platform', () => {
  let tp: TestPlatform;
  before(async () => {
    tp = await startTestPlatform('sqlite', {
      // One steady attempt per second plus a burst of two: three at once, the fourth is dropped.
      mqtt: { connectsPerIpPerSecond: 1, connectBurstPerIp: 2 },
      http: { deny: ['127.0.0.66'] },
    });
  });
  after(() => tp?.close());

  test('[RATE-1] a burst beyond the bucket is dropped before any TLS byte; another address is unaffected', async () => {
    const stats = tp.platform.broker.stats;
    const port = tp.platform.mqttPort;
    const ca = tp.platform.caPem;
    const started = stats.tlsHandshakesStarted;
    const refused = stats.connectsRefused;
    for (let i = 0; i < 3; i++) assert.equal(await tlsAttempt(port, '127.0.0.31', ca), 'admitted', `attempt ${i}`);
    assert.equal(stats.tlsHandshakesStarted - started, 3);
    // The fourth within the second: closed by the server at once, with nothing read.
    assert.deepEqual(await silentProbe(port, '127.0.0.31'), { bytes: 0, closedByServer: true });
    assert.equal(stats.tlsHandshakesStarted - started, 3, 'no TLS handshake was started for it');
    assert.equal(stats.connectsThrottled, 1);
    assert.equal(stats.connectsRefused - refused, 1);
    // A real handshake from the same address gets no further.
    assert.notEqual(await tlsAttempt(port, '127.0.0.31', ca), 'admitted');
    assert.equal(stats.connectsThrottled, 2);
    // The bucket is per client network: another address is untouched.
    assert.equal(await tlsAttempt(port, '127.0.0.32', ca), 'admitted');
    assert.equal(stats.tlsHandshakesStarted - started, 4);
    // Dropped before TLS: the TLS layer never saw it, so it logged no handshake failure.
    assert.doesNotMatch(tp.logs.text(), /TLS handshake refused/);
    const text = await metricsText(tp);
    assert.equal(metricValue(text, 'castellan_mqtt_events_total', 'event="connectsThrottled"'), 2);
    assert.equal(metricValue(text, 'castellan_mqtt_events_total', 'event="tlsHandshakesStarted"'), 4);
  });

  test('[CHAN-5] an HTTPS connection refused by http.deny is counted on /metrics', async () => {
    const before = metricValue(await metricsText(tp), 'castellan_https_connections_refused_total');
    assert.deepEqual(await silentProbe(tp.platform.httpPort, '127.0.0.66'), { bytes: 0, closedByServer: true });
    assert.equal(await tlsAttempt(tp.platform.httpPort, '127.0.0.66', tp.platform.caPem), 'ECONNRESET');
    const text = await metricsText(tp);
    assert.equal(metricValue(text, 'castellan_https_connections_refused_total') - before, 2);
    assert.match(tp.logs.text(), /https: connection refused before TLS/);
    assert.doesNotMatch(tp.logs.text(), /127\.0\.0\.66/, 'no address in the log (PRIV-4)');
  });
});

describe('[RATE-1] server-suggested backoff in the refusing CONNACK', () => {
  let tp: TestPlatform;
  let tenant: Tenant;
  before(async () => {
    // One CONNECT per IP per minute; alert only, so the IP is not blocked before TLS afterwards.
    tp = await startTestPlatform('sqlite', { guard: { mqttConnectsPerIpPerMinute: 1, ipResponse: 'alert' } });
    tenant = await provisionTenant(tp, 1);
  });
  after(() => tp?.close());

  test('[RATE-1] CONNACK 0x9F carries retry-after (MQTT 5), growing with the IP’s refusals; 3.1.1 gets 0x03', async () => {
    const device = tenant.devices[0]!;
    const url = tp.platform.mqttUrl;
    const ca = tp.platform.caPem;
    const login = { clientId: device.id, username: device.id, password: device.secret, localAddress: '127.0.0.51' };
    assert.equal((await connack(url, ca, login)).code, 0);
    const first = await connack(url, ca, login);
    assert.equal(first.code, ReasonCode.ConnectionRateExceeded);
    const seconds = Number((first.properties?.userProperties as Record<string, string>)['retry-after']);
    // The first refusal: within [min, 2·min] = [5, 10]; the second: [10, 20].
    assert.ok(Number.isInteger(seconds) && seconds >= 5 && seconds <= 10, `retry-after ${seconds}`);
    assert.equal(first.properties?.reasonString, `connection rate exceeded: retry after ${seconds} s`);
    const second = await connack(url, ca, login);
    const later = Number((second.properties?.userProperties as Record<string, string>)['retry-after']);
    assert.ok(later >= 10 && later <= 20, `second retry-after ${later}`);
    // MQTT 3.1.1 has no properties: the refusal is the bare return code, then the close.
    const v4 = await connack(url, ca, { ...login, protocolVersion: 4 });
    assert.deepEqual(v4, { code: 0x03, properties: undefined });
    // A refusal that is the client's own fault carries no advice.
    const bad = await connack(url, ca, { ...login, password: 'x'.repeat(40), localAddress: '127.0.0.52' });
    assert.deepEqual(bad, { code: ReasonCode.BadUserNameOrPassword, properties: undefined });
  });
});

describe('[RATE-1] the retry advice', () => {
  test('[RATE-1] bounded by min and max, doubling per recent refusal, per client network, jittered', () => {
    let now = 1_000_000;
    const low = new RetryAdvisor({ minSeconds: 5, maxSeconds: 30, random: () => 0, now: () => now });
    const high = new RetryAdvisor({ minSeconds: 5, maxSeconds: 30, random: () => 0.999999, now: () => now });
    assert.deepEqual(
      [1, 2, 3, 4].map(() => low.refused('192.0.2.1')),
      [5, 10, 15, 15],
    );
    assert.deepEqual(
      [1, 2, 3, 4].map(() => high.refused('192.0.2.1')),
      [10, 20, 30, 30],
    );
    // An IPv6 /64 is one client network: rotating addresses inside it buys nothing.
    assert.equal(high.refused('2001:db8:1:2::1'), 10);
    assert.equal(high.refused('2001:db8:1:2:ffff::9'), 20);
    assert.equal(high.refused('2001:db8:1:3::1'), 10);
    // After ten quiet minutes the count starts again.
    now += 600_001;
    assert.equal(high.refused('192.0.2.1'), 10);
    // min = max: no jitter, exactly that.
    const fixed = new RetryAdvisor({ minSeconds: 7, maxSeconds: 7 });
    assert.deepEqual([fixed.refused('192.0.2.9'), fixed.refused('192.0.2.9')], [7, 7]);
  });

  test('[RATE-1] only load and rate refusals are advised; the advice yields to the client’s Maximum Packet Size', () => {
    const broker = {};
    assert.deepEqual(refusalProperties(broker, '192.0.2.1', ReasonCode.NotAuthorized), {});
    for (const code of [ReasonCode.ConnectionRateExceeded, ReasonCode.ServerBusy, ReasonCode.ServerUnavailable]) {
      const { properties } = refusalProperties(broker, '192.0.2.1', code);
      assert.match(String(properties?.userProperties?.['retry-after']), /^\d+$/);
    }
    // [MQTT-3.2.2-19] [MQTT-3.2.2-20]: first the Reason String goes, then the User Property.
    const small = refusalProperties(broker, '192.0.2.2', ReasonCode.ServerBusy, 30);
    assert.deepEqual(Object.keys(small.properties ?? {}), ['userProperties']);
    assert.deepEqual(refusalProperties(broker, '192.0.2.2', ReasonCode.ServerBusy, 5), {});
  });
});

describe('[RATE-1] the cap on TLS handshakes in progress', () => {
  let dir: string;
  let pki: TlsMaterial;
  let broker: MqttBroker;
  let listener: MqttListener;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'castellan-admission-'));
    pki = await generateDevPki(join(dir, 'pki'));
    broker = new MqttBroker({ hooks: openHooks(), limits: defaultLimits, log: createLogger({ level: 'silent' }) });
    listener = await startMqttListener(
      broker,
      {
        cert: pki.cert,
        key: pki.key,
        minVersion: 'TLSv1.2',
        host: '127.0.0.1',
        port: 0,
        maxConnections: 100,
        admission: { maxPendingHandshakes: 3 },
      },
      createLogger({ level: 'silent' }),
    );
  });
  after(async () => {
    await listener?.close();
    await broker?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test('[RATE-1] N silent sockets fill the cap, the next is dropped at once, a client gets in once they go', async () => {
    const port = listener.address().port;
    const idle = [
      await idleSocket(port, '127.0.0.41'),
      await idleSocket(port, '127.0.0.42'),
      await idleSocket(port, '127.0.0.43'),
    ];
    await eventually(() => listener.admission.pendingHandshakes === 3, 'three handshakes pending');
    const started = broker.stats.tlsHandshakesStarted;
    assert.deepEqual(await silentProbe(port, '127.0.0.44'), { bytes: 0, closedByServer: true });
    assert.notEqual(await tlsAttempt(port, '127.0.0.45', pki.ca), 'admitted');
    assert.equal(broker.stats.handshakesShed, 2);
    assert.equal(broker.stats.tlsHandshakesStarted, started, 'no handshake started beyond the cap');
    for (const socket of idle) socket.destroy();
    await eventually(() => listener.admission.pendingHandshakes === 0, 'the silent sockets are released');
    assert.equal(await tlsAttempt(port, '127.0.0.44', pki.ca), 'admitted');
    // A finished handshake frees its slot too.
    await eventually(() => listener.admission.pendingHandshakes === 0, 'the finished handshake is released');
  });

  test('[RATE-1] a ClientHello sent right after the connect waits in the socket while the gate decides', async () => {
    // Sent at once with the connection: it waits in the socket while the limiter decides.
    const socket = tls.connect({
      host: '127.0.0.1',
      port: listener.address().port,
      ca: pki.ca,
      servername: 'localhost',
    });
    await once(socket, 'secureConnect');
    socket.destroy();
  });
});

describe('[RATE-1] ConnectionAdmission unit', () => {
  test('[CHAN-5] an address refusal is counted in connectsRefused only and never consumes the bucket', async () => {
    const stats = { connectsRefused: 0, connectsThrottled: 0, handshakesShed: 0, tlsHandshakesStarted: 0 };
    const admission = new ConnectionAdmission(
      {
        allow: [],
        deny: ['127.0.0.61'],
        connectsPerIpPerSecond: 1,
        connectBurstPerIp: 0,
        maxPendingHandshakes: 10,
        retryAfterMinSeconds: 5,
        retryAfterMaxSeconds: 30,
      },
      stats,
      createLogger({ level: 'silent' }),
    );
    const server = net.createServer();
    const forwarded: string[] = [];
    server.on('connection', (socket: net.Socket) => {
      forwarded.push(socket.remoteAddress!);
      socket.destroy();
    });
    admission.attach(server);
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const port = (server.address() as net.AddressInfo).port;
    try {
      assert.equal((await silentProbe(port, '127.0.0.61')).closedByServer, true);
      assert.deepEqual(stats, { connectsRefused: 1, connectsThrottled: 0, handshakesShed: 0, tlsHandshakesStarted: 0 });
      assert.equal((await silentProbe(port, '127.0.0.62')).closedByServer, true);
      assert.equal((await silentProbe(port, '127.0.0.62')).closedByServer, true);
      assert.deepEqual(stats, { connectsRefused: 2, connectsThrottled: 1, handshakesShed: 0, tlsHandshakesStarted: 1 });
      assert.deepEqual(forwarded, ['127.0.0.62']);
    } finally {
      server.close();
    }
  });
});
