// Per-listener IP allow/deny lists (CHAN-5): a connection from an address that is denied, or not on a
// non-empty allow list, is closed by the server before a single TLS byte is exchanged; deny wins over
// allow; each listener has its own lists; IPv4, IPv6 and IPv4-mapped IPv6 ranges all apply; a malformed
// range stops start-up naming the key. Loopback source addresses (127.0.0.x via `localAddress`) stand
// in for separate clients.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, describe, test } from 'node:test';
import tls from 'node:tls';
import { loadConfig } from '../src/config/index.ts';
import { endClient, mqttConnect } from './helpers/mqtt-clients.ts';
import {
  provisionTenant,
  request,
  startTestPlatform,
  type Tenant,
  type TestPlatform,
} from './helpers/test-platform.ts';

type Outcome = 'admitted' | 'refused';

/**
 * A TCP connection from `localAddress` that sends nothing. A refused address is closed by the server
 * on its own, without a byte: proof that the refusal came before any TLS handshake (the client never
 * even sent a ClientHello). Only called for addresses expected to be refused: an admitted one would be
 * held open until the handshake timeout.
 */
async function silentProbe(host: string, port: number, localAddress: string): Promise<{ bytes: number }> {
  const socket = net.connect({ host, port, localAddress });
  let bytes = 0;
  socket.on('data', (chunk: Buffer) => {
    bytes += chunk.length;
  });
  socket.on('error', () => {}); // a reset is one way of being closed
  // Well before the TLS handshake timeout (connectTimeoutMs, 5 s in tests), which would also close it.
  let stillOpen = false;
  const timer = setTimeout(() => {
    stillOpen = true;
    socket.destroy();
  }, HANDSHAKE_TIMEOUT_MS / 2);
  await once(socket, 'close');
  clearTimeout(timer);
  assert.equal(stillOpen, false, `${localAddress} was not closed by the server`);
  return { bytes };
}

const HANDSHAKE_TIMEOUT_MS = 5000;

/** A TLS handshake from `localAddress`: resolves 'admitted' on secureConnect, else the error code. */
function tlsAttempt(host: string, port: number, localAddress: string, ca: string): Promise<string> {
  return new Promise((resolvePromise) => {
    // tls.connect has no localAddress of its own: hand it a TCP socket bound to that address.
    const tcp = net.connect({ host, port, localAddress });
    const socket = tls.connect({ socket: tcp, ca, servername: 'localhost' }, () => {
      resolvePromise('admitted');
      socket.destroy();
    });
    socket.on('error', (error: NodeJS.ErrnoException) => resolvePromise(error.code ?? error.message));
  });
}

/** GET /healthz from `localAddress`: the HTTP status, or the network error code. */
async function healthFrom(tp: TestPlatform, localAddress: string, host?: string): Promise<number | string> {
  const target = host ? { ...tp.platform, httpUrl: `https://${host}:${tp.platform.httpPort}` } : tp.platform;
  try {
    return (await request(target, 'GET', '/healthz', { localAddress })).status;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code ?? String(error);
  }
}

/** The value of one labelled counter on the platform's Prometheus endpoint. */
async function metric(tp: TestPlatform, name: string, labels: string): Promise<number> {
  const text = await new Promise<string>((resolvePromise, reject) => {
    http
      .get(`${tp.platform.adminUrl!}/metrics`, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolvePromise(body));
      })
      .on('error', reject);
  });
  const line = text.split('\n').find((l) => l.startsWith(`${name}{`) && l.includes(labels));
  assert.ok(line, `${name}{${labels}} is exported`);
  return Number(line.split(' ').at(-1));
}

async function ipv6Loopback(): Promise<boolean> {
  const server = net.createServer();
  try {
    await new Promise<void>((ok, fail) => {
      server.once('error', fail);
      server.listen(0, '::1', ok);
    });
    return true;
  } catch {
    return false;
  } finally {
    server.close();
  }
}

describe('[CHAN-5] IPv4 allow and deny lists on the MQTT and HTTPS listeners', () => {
  let tp: TestPlatform;
  let tenant: Tenant;
  // MQTT admits 127.0.0.0–7 except 127.0.0.2 (a denied address inside the allowed range) and
  // 127.0.0.6–7 (a denied CIDR); HTTPS admits 127.0.0.1 and 127.0.0.4–7 except 127.0.0.5.
  const MQTT: Record<string, Outcome> = {
    '127.0.0.1': 'admitted',
    '127.0.0.2': 'refused', // deny beats allow
    '127.0.0.4': 'admitted',
    '127.0.0.6': 'refused', // denied by a CIDR inside the allowed range
    '127.0.0.7': 'refused',
    '127.0.0.9': 'refused', // not on the allow list
    '127.0.1.1': 'refused',
  };
  const HTTPS: Record<string, Outcome> = {
    '127.0.0.1': 'admitted',
    '127.0.0.2': 'refused', // not on this listener's allow list (the lists are per listener)
    '127.0.0.4': 'admitted',
    '127.0.0.5': 'refused', // deny beats allow
    '127.0.0.6': 'admitted', // refused by MQTT, admitted by HTTPS
    '127.0.0.9': 'refused',
  };

  before(async () => {
    tp = await startTestPlatform('sqlite', {
      mqtt: { allow: ['127.0.0.0/29'], deny: ['127.0.0.2', '127.0.0.6/31'] },
      http: { allow: ['127.0.0.1', '127.0.0.4/30'], deny: ['127.0.0.5/32'] },
    });
    // Provisioning talks to the API from 127.0.0.1, which is admitted.
    tenant = await provisionTenant(tp, 1);
  });
  after(() => tp?.close());

  test('[CHAN-5] MQTT: admitted addresses complete TLS and CONNECT; refused ones are closed before TLS', async () => {
    const device = tenant.devices[0]!;
    const stats = tp.platform.broker.stats;
    const refusedBefore = stats.connectsRefused;
    const openedBefore = stats.connectionsOpened;
    let refusals = 0;
    for (const [address, expected] of Object.entries(MQTT)) {
      if (expected === 'admitted') {
        const outcome = await mqttConnect(tp.platform, {
          username: device.id,
          password: device.secret,
          localAddress: address,
        });
        assert.ok(outcome.client, `${address} connects: ${outcome.error?.message}`);
        await endClient(outcome.client);
        continue;
      }
      // Closed by the server without a byte while the client has sent nothing at all.
      assert.deepEqual(await silentProbe('127.0.0.1', tp.platform.mqttPort, address), { bytes: 0 }, address);
      // A real handshake attempt from the same address gets no further.
      assert.equal(await tlsAttempt('127.0.0.1', tp.platform.mqttPort, address, tp.platform.caPem), 'ECONNRESET');
      // And an MQTT client with valid credentials gets no CONNACK.
      const outcome = await mqttConnect(tp.platform, {
        username: device.id,
        password: device.secret,
        localAddress: address,
      });
      assert.equal(outcome.client, undefined, `${address} must not connect`);
      assert.equal(outcome.refusedWith, undefined, `${address}: refused before CONNACK, not by it`);
      refusals += 3;
    }
    // Every refusal is counted (docs/configuration.md: `connectsRefused`), and none reached the broker.
    assert.equal(stats.connectsRefused - refusedBefore, refusals);
    const admitted = Object.values(MQTT).filter((o) => o === 'admitted').length;
    assert.equal(stats.connectionsOpened - openedBefore, admitted);
    assert.equal(
      await metric(tp, 'castellan_mqtt_events_total', 'event="connectsRefused"'),
      stats.connectsRefused,
      'exported to Prometheus',
    );
  });

  test('[CHAN-5] HTTPS: admitted addresses are served; refused ones are closed before TLS', async () => {
    for (const [address, expected] of Object.entries(HTTPS)) {
      if (expected === 'admitted') {
        assert.equal(await healthFrom(tp, address), 200, address);
        continue;
      }
      assert.deepEqual(await silentProbe('127.0.0.1', tp.platform.httpPort, address), { bytes: 0 }, address);
      assert.equal(await tlsAttempt('127.0.0.1', tp.platform.httpPort, address, tp.platform.caPem), 'ECONNRESET');
      assert.equal(await healthFrom(tp, address), 'ECONNRESET', address);
    }
  });
});

describe('[CHAN-5] IPv6 and IPv4-mapped ranges on dual-stack listeners', async () => {
  const v6 = await ipv6Loopback();
  let tp: TestPlatform;
  let tenant: Tenant;

  before(async () => {
    if (!v6) return;
    tp = await startTestPlatform('sqlite', {
      // Dual stack: IPv4 clients arrive as ::ffff:a.b.c.d and are matched as IPv4 addresses.
      mqtt: {
        host: '::',
        allow: ['::1/128', '::ffff:127.0.0.0/120'],
        deny: ['::ffff:127.0.0.2'],
      },
      // Uncompressed notation for ::1.
      http: { host: '::', deny: ['0:0:0:0:0:0:0:1/128'] },
    });
    // `localhost` may resolve to ::1, which this platform's HTTPS listener refuses: provision over IPv4.
    const ipv4 = { ...tp.platform, httpUrl: `https://127.0.0.1:${tp.platform.httpPort}` };
    tenant = await provisionTenant({ ...tp, platform: ipv4 }, 1);
  });
  after(() => tp?.close());

  test('[CHAN-5] MQTT: an IPv6 allow range, an IPv4-mapped allow range and a mapped deny entry', async (t) => {
    if (!v6) {
      t.skip('no IPv6 loopback (::1) on this machine');
      return;
    }
    const device = tenant.devices[0]!;
    const ca = tp.platform.caPem;
    const port = tp.platform.mqttPort;
    // ::1 is allowed by the IPv6 range; 127.0.0.1 by the IPv4-mapped one.
    assert.equal(await tlsAttempt('::1', port, '::1', ca), 'admitted');
    assert.equal(await tlsAttempt('127.0.0.1', port, '127.0.0.1', ca), 'admitted');
    const outcome = await mqttConnect(
      { ...tp.platform, mqttUrl: `mqtts://[::1]:${port}` },
      { username: device.id, password: device.secret },
    );
    assert.ok(outcome.client, outcome.error?.message ?? 'no CONNACK');
    await endClient(outcome.client);
    // 127.0.0.2 is inside the mapped allow range but denied in mapped form; 127.0.1.1 is outside it.
    for (const address of ['127.0.0.2', '127.0.1.1']) {
      assert.deepEqual(await silentProbe('127.0.0.1', port, address), { bytes: 0 }, address);
      assert.equal(await tlsAttempt('127.0.0.1', port, address, ca), 'ECONNRESET', address);
    }
  });

  test('[CHAN-5] HTTPS: an uncompressed IPv6 deny entry refuses ::1 and leaves IPv4 alone', async (t) => {
    if (!v6) {
      t.skip('no IPv6 loopback (::1) on this machine');
      return;
    }
    assert.deepEqual(await silentProbe('::1', tp.platform.httpPort, '::1'), { bytes: 0 });
    assert.equal(await healthFrom(tp, '::1', '[::1]'), 'ECONNRESET');
    assert.equal(await healthFrom(tp, '127.0.0.1', '127.0.0.1'), 200);
  });
});

describe('connections that never finish the TLS handshake are closed on both listeners', () => {
  let tp: TestPlatform;
  before(async () => {
    // The MQTT handshake gets mqtt.connectTimeoutMs, the HTTPS one http.requestTimeoutMs (both minima).
    tp = await startTestPlatform('sqlite', { mqtt: { connectTimeoutMs: 100 }, http: { requestTimeoutMs: 1000 } });
  });
  after(() => tp?.close());

  /** Resolves with the time the server took to close a connection that sent `bytes` and then nothing. */
  async function closedAfter(port: number, bytes: Buffer, limitMs: number): Promise<number> {
    const socket = net.connect({ host: '127.0.0.1', port });
    socket.on('error', () => {});
    await once(socket, 'connect');
    const start = Date.now();
    if (bytes.length > 0) socket.write(bytes);
    let stillOpen = false;
    const timer = setTimeout(() => {
      stillOpen = true;
      socket.destroy();
    }, limitMs);
    await once(socket, 'close');
    clearTimeout(timer);
    assert.equal(stillOpen, false, `port ${port} still open after ${limitMs} ms`);
    return Date.now() - start;
  }

  test('silent clients and half-sent ClientHellos do not hold a connection slot', async () => {
    // Node reports a handshake timeout without closing the socket (a slow-loris hold on maxConnections).
    const probes = [Buffer.alloc(0), Buffer.from([0x16]), Buffer.from('160301020001', 'hex')];
    const times = await Promise.all([
      ...probes.map((b) => closedAfter(tp.platform.mqttPort, b, 2000)),
      ...probes.map((b) => closedAfter(tp.platform.httpPort, b, 3000)),
    ]);
    for (const ms of times.slice(0, 3)) assert.ok(ms >= 90, `MQTT closed only at its handshake timeout (${ms} ms)`);
    for (const ms of times.slice(3)) assert.ok(ms >= 900, `HTTPS closed only at its handshake timeout (${ms} ms)`);
    assert.equal(tp.platform.broker.connectionCount, 0);
  });
});

describe('[CHAN-5] malformed ranges are refused at start', () => {
  const bin = resolve(import.meta.dirname, '../bin/castellan.js');
  const dirs: string[] = [];
  after(() => {
    for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
  });

  test('[CHAN-5] each list, from the file/overrides and from the environment, names the offending entry', () => {
    const cases: Array<[string, Record<string, unknown>, string]> = [
      [
        'mqtt.deny[1]',
        { mqtt: { deny: ['127.0.0.2', '10.0.0.0/33'] } },
        'is not an IP address or CIDR range: 10.0.0.0/33',
      ],
      ['mqtt.allow[0]', { mqtt: { allow: ['999.1.1.1'] } }, 'is not an IP address or CIDR range: 999.1.1.1'],
      ['http.allow[0]', { http: { allow: ['::1/129'] } }, 'is not an IP address or CIDR range: ::1/129'],
      ['http.deny[0]', { http: { deny: ['1::2::3'] } }, 'is not an IP address or CIDR range: 1::2::3'],
      ['http.deny[0]', { http: { deny: ['10.0.0.1.5'] } }, 'is not an IP address or CIDR range: 10.0.0.1.5'],
      // Characters outside the schema's pattern (a zone ID, a second prefix) fail the pattern check.
      ['mqtt.deny[0]', { mqtt: { deny: ['fe80::1%eth0'] } }, 'must match pattern "^[0-9a-fA-F:.]+(/[0-9]{1,3})?$"'],
      ['mqtt.allow[0]', { mqtt: { allow: ['10.0.0.0/8/8'] } }, 'must match pattern "^[0-9a-fA-F:.]+(/[0-9]{1,3})?$"'],
    ];
    for (const [path, overrides, reason] of cases) {
      assert.throws(
        () => loadConfig({ env: {}, cwd: tmpdir(), overrides }),
        (error: Error & { code?: string }) => {
          assert.equal(error.code, 'ERR_CONFIG_INVALID');
          assert.equal(error.message, `Invalid configuration: ${path} ${reason}`);
          return true;
        },
        path,
      );
    }
    // The environment form is comma-separated; the index counts its entries.
    assert.throws(
      () => loadConfig({ env: { CASTELLAN_MQTT_ALLOW: '10.0.0.0/8, 192.168.1.0/24,300.1.1.1' }, cwd: tmpdir() }),
      {
        code: 'ERR_CONFIG_INVALID',
        message: 'Invalid configuration: mqtt.allow[2] is not an IP address or CIDR range: 300.1.1.1',
      },
    );
    // Valid forms, including an IPv4-mapped address and host bits under the prefix, are kept as written.
    const config = loadConfig({
      env: { CASTELLAN_HTTP_DENY: ' 10.1.2.3/8 ,::ffff:192.0.2.1,2001:db8::/32 ' },
      cwd: tmpdir(),
    });
    assert.deepEqual(config.http.deny, ['10.1.2.3/8', '::ffff:192.0.2.1', '2001:db8::/32']);
  });

  test('[CHAN-5] `castellan up` with a malformed range exits 78 before listening', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'castellan-acl-'));
    dirs.push(dir);
    const env = {
      PATH: process.env.PATH ?? '',
      HOME: dir,
      CASTELLAN_MQTT_DENY: '127.0.0.2,127.0.0.0/33',
      CASTELLAN_HTTP_PORT: '0',
      CASTELLAN_MQTT_PORT: '0',
      CASTELLAN_ADMIN_PORT: '0',
    };
    const result = await new Promise<{ code: number | null; stdout: string; stderr: string }>((done) => {
      const child = execFile(
        process.execPath,
        [bin, 'up', '--data-dir', dir],
        { env, cwd: dir, timeout: 60_000, encoding: 'utf8' },
        (_error, stdout, stderr) => done({ code: child.exitCode, stdout, stderr }),
      );
    });
    assert.equal(result.code, 78, result.stderr);
    assert.equal(
      result.stderr,
      'castellan: Invalid configuration: mqtt.deny[1] is not an IP address or CIDR range: 127.0.0.0/33\n',
    );
  });
});
