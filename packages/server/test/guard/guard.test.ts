// The guard end to end: rate limits in every dimension (RATE-1), intrusion detection and its
// responses (IDS-1, AUD-3), listener allow/deny lists (CHAN-5) and metrics (OPS-1). Clients pick
// loopback source addresses (127.0.0.x) to be different IPs; thresholds are set per platform.
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, describe, test } from 'node:test';
import { connectDevice, endClient, mqttConnect, publishOutcome } from '../helpers/mqtt-clients.ts';
import {
  type OperatorKey,
  provisionTenant,
  request,
  startTestPlatform,
  type TestPlatform,
} from '../helpers/test-platform.ts';

const platforms: TestPlatform[] = [];
after(async () => {
  for (const p of platforms) await p.close();
});

async function platform(guard: Record<string, unknown>, extra: Record<string, unknown> = {}): Promise<TestPlatform> {
  const tp = await startTestPlatform('sqlite', { guard, ...extra });
  platforms.push(tp);
  return tp;
}

async function eventually(check: () => Promise<boolean> | boolean, what: string): Promise<void> {
  for (let i = 0; i < 150; i++) {
    if (await check()) return;
    await sleep(20);
  }
  assert.fail(`never happened: ${what}`);
}

describe('guard', () => {
  test('[RATE-1] per-IP HTTP limit: 429 with Retry-After, other IPs unaffected, breach audited', async () => {
    const tp = await platform({ httpPerIpPerMinute: 5 });
    const statuses: number[] = [];
    let retryAfter: string | undefined;
    for (let i = 0; i < 8; i++) {
      const res = await request(tp.platform, 'GET', '/healthz', { localAddress: '127.0.0.5' });
      statuses.push(res.status);
      if (res.status === 429) {
        retryAfter = String(res.headers['retry-after']);
        assert.equal(res.body.error.code, 'ERR_RATE_LIMITED');
      }
    }
    assert.deepEqual(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
    assert.match(retryAfter!, /^\d+$/);
    assert.equal((await request(tp.platform, 'GET', '/healthz', { localAddress: '127.0.0.6' })).status, 200);
    await tp.platform.audit.flush();
    const breaches = await tp.platform.audit.query({ type: 'guard.rate-limited', limit: 10 });
    assert.equal(breaches.length, 1, 'breaches are audited, sampled to one entry per key per minute');
    assert.equal(breaches[0]!.target, '127.0.0.5');
  });

  test('[RATE-1] per-credential and write quotas: a vendor key is limited, another key is not', async () => {
    const tp = await platform({ httpWritesPerCredentialPerMinute: 5 });
    // Each vendor key spends 2 writes in provisioning (product, devices); the staff token 5 in total
    // (TOTP confirmation, then vendor and access key twice).
    const a = await provisionTenant(tp, 1);
    const b = await provisionTenant(tp, 1, a.adminToken);
    const create = (token: OperatorKey) =>
      request(tp.platform, 'POST', '/v1/products', { token, body: { name: 'P', category: 'plug' } });
    assert.equal((await create(a.vendorToken)).status, 201);
    assert.equal((await create(a.vendorToken)).status, 201);
    assert.equal((await create(a.vendorToken)).status, 201);
    const refused = await create(a.vendorToken);
    assert.equal(refused.status, 429);
    assert.equal(refused.body.error.code, 'ERR_RATE_LIMITED');
    assert.match(String(refused.headers['retry-after']), /^\d+$/);
    assert.equal(
      (await request(tp.platform, 'GET', '/v1/products', { token: a.vendorToken })).status,
      200,
      'reads are not writes',
    );
    assert.equal((await create(b.vendorToken)).status, 201, "another credential's quota is its own");
    const products = await tp.query<{ n: number }>('select count(*) as n from products where vendor_id = $1', [
      a.vendorId,
    ]);
    assert.equal(Number(products[0]!.n), 4, 'the refused write created nothing');
  });

  test('[RATE-1] limits hold across two processes sharing Redis', async () => {
    const prefix = `castellan-test:${process.pid}:${Date.now()}:`;
    const guard = { httpPerIpPerMinute: 6 };
    const redis = { url: process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379', keyPrefix: prefix };
    const a = await platform(guard, { redis });
    const { spawn } = await import('node:child_process');
    const child = spawn(
      process.execPath,
      [
        new URL('../helpers/platform-child.ts', import.meta.url).pathname,
        JSON.stringify({
          http: { host: '127.0.0.1', port: 0 },
          mqtt: { host: '127.0.0.1', port: 0 },
          admin: { enabled: false },
          guard,
          redis,
        }),
      ],
      { stdio: ['pipe', 'pipe', 'inherit'] },
    );
    try {
      const line = await new Promise<string>((resolve, reject) => {
        let buffered = '';
        child.stdout.on('data', (chunk: Buffer) => {
          buffered += chunk.toString();
          if (buffered.includes('\n')) resolve(buffered.split('\n')[0]!);
        });
        child.once('exit', (code) => reject(new Error(`second platform exited with ${code}`)));
      });
      const b = JSON.parse(line) as { httpUrl: string; caPem: string };
      const statuses: number[] = [];
      for (let i = 0; i < 10; i++) {
        const target = i % 2 === 0 ? a.platform : b;
        statuses.push((await request(target, 'GET', '/healthz', { localAddress: '127.0.0.7' })).status);
      }
      // Six requests in total pass, alternating between the processes; every later one is refused.
      assert.deepEqual(statuses, [200, 200, 200, 200, 200, 200, 429, 429, 429, 429]);
    } finally {
      child.kill('SIGTERM');
      await new Promise((resolve) => child.once('exit', resolve));
    }
  });

  test('[IDS-1] [AUD-3] an IP that fails authentication N times is blocked, and the block is audited and alerted', async () => {
    const tp = await platform({ authFailuresPerIp: 3, ipBlockSeconds: 600 });
    const tenant = await provisionTenant(tp, 1);
    const d = tenant.devices[0]!;
    const attacker = '127.0.0.9';
    for (let i = 0; i < 4; i++) {
      const outcome = await mqttConnect(tp.platform, {
        username: d.id,
        password: `wrong-${i}-${'x'.repeat(30)}`,
        localAddress: attacker,
      });
      assert.equal(outcome.refusedWith, 0x86, `attempt ${i} is refused as bad credentials`);
    }
    // Blocked: from now on the attacker's connections are dropped before TLS, on both listeners.
    await eventually(() => tp.platform.guard.blocks.isBlockedLocally(attacker), 'the attacker is blocked');
    const again = await mqttConnect(tp.platform, { username: d.id, password: d.secret, localAddress: attacker });
    assert.equal(again.client, undefined, 'even the right secret does not help from a blocked IP');
    await assert.rejects(request(tp.platform, 'GET', '/healthz', { localAddress: attacker }));
    // Everyone else is still served.
    const good = await connectDevice(tp.platform, d);
    await endClient(good);
    await tp.platform.audit.flush();
    const audited = await tp.platform.audit.query({ type: 'guard.auth-failure-storm', limit: 10 });
    assert.equal(audited.length, 1);
    assert.equal(audited[0]!.sourceIp, attacker);
    assert.equal(audited[0]!.details.response, 'ip-blocked');
    const failures = await tp.platform.audit.query({ type: 'device.connect', result: 'failure', limit: 10 });
    assert.equal(failures.length, 4, 'every failed attempt is in the audit log');
    const alerts = await request(tp.platform, 'GET', '/v1/guard/alerts', { token: tenant.adminToken });
    assert.equal(alerts.body.items[0].kind, 'auth-failure-storm');
    assert.equal(alerts.body.items[0].sourceIp, attacker);
    assert.equal(alerts.body.items[0].response, 'ip-blocked');
    // An administrator lifts the block (audited).
    const lifted = await request(tp.platform, 'DELETE', `/v1/guard/blocks/${attacker}`, { token: tenant.adminToken });
    assert.equal(lifted.status, 204);
    assert.equal((await request(tp.platform, 'GET', '/healthz', { localAddress: attacker })).status, 200);
  });

  test('[RATE-1] [IDS-1] a flooding device is refused (0x97, then disconnected with 0x96) and counted while a well-behaved device loses nothing', async () => {
    const tp = await platform({ excessBeforeDisconnect: 20, deviceResponse: 'quarantine' });
    const tenant = await provisionTenant(tp, 0);
    const product = await request(tp.platform, 'POST', '/v1/products', {
      token: tenant.vendorToken,
      body: { name: 'Meter', category: 'meter', reportLimits: { perSecond: 5, perDay: 1000 } },
    });
    assert.deepEqual(product.body.reportLimits, { perSecond: 5, perDay: 1000 });
    const issued = await request(tp.platform, 'POST', `/v1/products/${product.body.id}/devices`, {
      token: tenant.vendorToken,
      body: { count: 2 },
    });
    const [flooder, calm] = issued.body.devices as { id: string; secret: string }[];
    const noisy = await connectDevice(tp.platform, flooder!);
    const quiet = await connectDevice(tp.platform, calm!);
    // 60 at once: within the broker's Receive Maximum (64), far beyond the product's 5 per second.
    const outcomes = await Promise.all(
      Array.from({ length: 60 }, (_, i) => publishOutcome(noisy, `devices/${flooder!.id}/telemetry`, `{"i":${i}}`, 1)),
    );
    const accepted = outcomes.filter((o) => o === 0).length;
    const refused = outcomes.filter((o) => o === 0x97).length;
    assert.ok(accepted >= 5 && accepted <= 10, `accepted ${accepted} (limit 5/s): ${JSON.stringify(outcomes)}`);
    // 20 refusals a minute are tolerated (each PUBACK 0x97 Quota exceeded); the next one also ends the connection (DISCONNECT 0x96).
    assert.ok(refused >= 20, `refused ${refused} with 0x97`);
    assert.equal(accepted + refused + outcomes.filter((o) => o === 'closed').length, 60);
    // The well-behaved device, within its limit, loses nothing.
    for (let i = 0; i < 4; i++)
      assert.equal(await publishOutcome(quiet, `devices/${calm!.id}/telemetry`, `{"calm":${i}}`, 1), 0);
    const stored = await tp.query<{ n: number }>('select count(*) as n from telemetry where device_id = $1', [
      calm!.id,
    ]);
    assert.equal(Number(stored[0]!.n), 4);
    const floodRows = await tp.query<{ n: number }>('select count(*) as n from telemetry where device_id = $1', [
      flooder!.id,
    ]);
    assert.equal(Number(floodRows[0]!.n), accepted, 'exactly the accepted messages were stored');
    // Counted: metrics and the guard's refusal counters.
    assert.ok((tp.platform.guard.detections.get('message-flood') ?? 0) >= 1);
    const metrics = await fetch(`${tp.platform.adminUrl}/metrics`).then((r) => r.text());
    assert.match(metrics, /castellan_rate_limited_total\{[^}]*dimension="device-second"[^}]*\} \d+/);
    assert.match(metrics, /castellan_detections_total\{[^}]*kind="message-flood"[^}]*\} 1/);
    // The flood quarantined the device: its connection ended and reconnecting is refused (0x8A).
    await eventually(() => noisy.disconnected || !noisy.connected, 'the flooding device is disconnected');
    const back = await mqttConnect(tp.platform, { username: flooder!.id, password: flooder!.secret });
    assert.equal(back.refusedWith, 0x8a);
    // Its owner releases it (audited); it may connect again.
    const release = await request(tp.platform, 'POST', `/v1/devices/${flooder!.id}/release`, {
      token: tenant.vendorToken,
    });
    assert.deepEqual(release.body, { id: flooder!.id, status: 'active' });
    const reconnected = await connectDevice(tp.platform, flooder!);
    await endClient(reconnected);
    await endClient(quiet);
    noisy.end(true);
  });

  test('[AUD-3] [IDS-1] a burst of invalid requests from one IP is detected', async () => {
    const tp = await platform({ invalidRequestsPerIp: 5, ipResponse: 'alert' });
    for (let i = 0; i < 7; i++) {
      const res = await request(tp.platform, 'POST', '/v1/setup', {
        body: { setupToken: 'x', bogus: i },
        localAddress: '127.0.0.11',
      });
      assert.equal(res.status, 400);
    }
    await eventually(
      () => (tp.platform.guard.detections.get('invalid-request-burst') ?? 0) === 1,
      'the burst is detected',
    );
    const alerts = await tp.platform.guard.listAlerts({ limit: 5 });
    assert.equal(alerts[0]!.response, 'alert-only', 'alert-only response: nothing blocked');
    assert.equal((await request(tp.platform, 'GET', '/healthz', { localAddress: '127.0.0.11' })).status, 200);
  });

  test('[AUD-3] a device changing state abnormally often is detected and quarantined', async () => {
    const tp = await platform({ deviceStateChangesPerMinute: 10 });
    const tenant = await provisionTenant(tp, 1);
    const d = tenant.devices[0]!;
    const client = await connectDevice(tp.platform, d);
    for (let i = 0; i < 12; i++) await publishOutcome(client, `devices/${d.id}/state`, `{"on":${i % 2 === 0}}`, 1);
    await eventually(() => (tp.platform.guard.detections.get('state-flapping') ?? 0) === 1, 'flapping detected');
    const alerts = await request(tp.platform, 'GET', '/v1/guard/alerts', { token: tenant.vendorToken });
    assert.equal(alerts.body.items[0].kind, 'state-flapping');
    assert.equal(alerts.body.items[0].target, d.id);
    assert.equal(alerts.body.items[0].sourceIp, null, 'vendors do not see source IPs');
    client.end(true);
  });

  test('[IDS-1] vendors see only alerts about their own devices', async () => {
    const tp = await platform({ deviceStateChangesPerMinute: 2, deviceResponse: 'alert' });
    const a = await provisionTenant(tp, 1);
    const b = await provisionTenant(tp, 1, a.adminToken);
    const client = await connectDevice(tp.platform, a.devices[0]!);
    for (let i = 0; i < 4; i++) await publishOutcome(client, `devices/${a.devices[0]!.id}/state`, '{"on":true}', 1);
    await eventually(() => (tp.platform.guard.detections.get('state-flapping') ?? 0) === 1, 'flapping detected');
    const forA = await request(tp.platform, 'GET', '/v1/guard/alerts', { token: a.vendorToken });
    const forB = await request(tp.platform, 'GET', '/v1/guard/alerts', { token: b.vendorToken });
    assert.equal(forA.body.items.length, 1);
    assert.deepEqual(forB.body.items, []);
    client.end(true);
  });

  test('[IDS-2] a credential used by two clients at once (session tug-of-war) raises the device risk and quarantines it', async () => {
    const tp = await platform({ takeoversPerHour: 3 });
    const a = await provisionTenant(tp, 2);
    const b = await provisionTenant(tp, 1, a.adminToken);
    const d = a.devices[0]!;
    const before = await request(tp.platform, 'GET', `/v1/devices/${d.id}/risk`, { token: a.vendorToken });
    assert.deepEqual(before.body, { deviceId: d.id, score: 0, factors: [] });
    const clients = [];
    for (let i = 0; i < 5; i++) {
      const outcome = await mqttConnect(tp.platform, {
        username: d.id,
        password: d.secret,
        localAddress: i % 2 === 0 ? '127.0.0.12' : '127.0.0.13',
      });
      if (outcome.client) clients.push(outcome.client);
    }
    await eventually(
      () => (tp.platform.guard.detections.get('credential-shared') ?? 0) === 1,
      'the shared credential is detected',
    );
    const risk = await request(tp.platform, 'GET', `/v1/devices/${d.id}/risk`, { token: a.vendorToken });
    assert.ok(risk.body.score >= 40, `risk ${risk.body.score}`);
    assert.deepEqual(risk.body.factors.map((f: { kind: string }) => f.kind).sort(), [
      'credential-shared',
      'quarantined',
    ]);
    const calm = await request(tp.platform, 'GET', `/v1/devices/${a.devices[1]!.id}/risk`, { token: a.vendorToken });
    assert.equal(calm.body.score, 0, 'other devices are unaffected');
    const foreign = await request(tp.platform, 'GET', `/v1/devices/${d.id}/risk`, { token: b.vendorToken });
    assert.equal(foreign.status, 404);
    for (const c of clients) c.end(true);
  });

  test('[IDS-1] a device that keeps reconnecting raises connection-flapping, an alert only (no quarantine)', async () => {
    const tp = await platform({ reconnectsPerHour: 2 });
    const a = await provisionTenant(tp, 1);
    const d = a.devices[0]!;
    for (let i = 0; i < 3; i++) await endClient(await connectDevice(tp.platform, d));
    await eventually(
      () => (tp.platform.guard.detections.get('connection-flapping') ?? 0) === 1,
      'the reconnect loop is detected',
    );
    const alerts = await request(tp.platform, 'GET', '/v1/guard/alerts', { token: a.vendorToken });
    assert.deepEqual(
      alerts.body.items.map((x: { kind: string; target: string; response: string }) => [x.kind, x.target, x.response]),
      [['connection-flapping', d.id, 'alert-only']],
    );
    // Not a punishment: the device still connects.
    await endClient(await connectDevice(tp.platform, d));
  });

  test('[IDS-1] a connection flood from one IP is refused (CONNACK 0x9F), detected and blocked', async () => {
    const tp = await platform({ mqttConnectsPerIpPerMinute: 3 });
    const tenant = await provisionTenant(tp, 1);
    const d = tenant.devices[0]!;
    for (let i = 0; i < 3; i++) {
      const ok = await mqttConnect(tp.platform, { username: d.id, password: d.secret, localAddress: '127.0.0.14' });
      assert.ok(ok.client, `connect ${i} is within the rate`);
      await endClient(ok.client);
    }
    const flood = await mqttConnect(tp.platform, { username: d.id, password: d.secret, localAddress: '127.0.0.14' });
    assert.equal(flood.refusedWith, 0x9f);
    await eventually(() => tp.platform.guard.blocks.isBlockedLocally('127.0.0.14'), 'the flooding IP is blocked');
    const alerts = await tp.platform.guard.listAlerts({ limit: 5 });
    assert.deepEqual(
      [alerts[0]!.kind, alerts[0]!.sourceIp, alerts[0]!.response],
      ['connection-flood', '127.0.0.14', 'ip-blocked'],
    );
    const other = await connectDevice(tp.platform, d);
    await endClient(other);
  });

  test('[IDS-1] failed logins against one device from many IPs alert its owner without locking the device out', async () => {
    const tp = await platform({ authFailuresPerDevice: 2 });
    const tenant = await provisionTenant(tp, 1);
    const d = tenant.devices[0]!;
    for (const [i, ip] of ['127.0.0.15', '127.0.0.16', '127.0.0.17'].entries()) {
      const outcome = await mqttConnect(tp.platform, {
        username: d.id,
        password: `guess-${i}-${'y'.repeat(40)}`,
        localAddress: ip,
      });
      assert.equal(outcome.refusedWith, 0x86);
    }
    await eventually(
      () => (tp.platform.guard.detections.get('device-auth-failure-storm') ?? 0) === 1,
      'the storm is detected',
    );
    // Device IDs are not secret: a storm of guesses must not become a switch that turns the device off.
    const owner = await connectDevice(tp.platform, d);
    await endClient(owner);
    const device = await request(tp.platform, 'GET', `/v1/devices/${d.id}`, { token: tenant.vendorToken });
    assert.equal(device.body.status, 'active');
    const alerts = await request(tp.platform, 'GET', '/v1/guard/alerts', { token: tenant.vendorToken });
    assert.equal(alerts.body.items[0].kind, 'device-auth-failure-storm');
    assert.equal(alerts.body.items[0].target, d.id);
    assert.equal(alerts.body.items[0].response, 'ip-blocked', 'the IP that crossed the threshold is blocked');
  });

  test('[AUD-3] a device reporting resource exhaustion raises an alert without being punished', async () => {
    const tp = await platform({ resourceThresholdPercent: 90 });
    const tenant = await provisionTenant(tp, 1);
    const d = tenant.devices[0]!;
    const client = await connectDevice(tp.platform, d);
    assert.equal(
      await publishOutcome(
        client,
        `devices/${d.id}/events`,
        '{"type":"resources","cpuPercent":40,"memoryPercent":97}',
        1,
      ),
      0,
    );
    await eventually(() => (tp.platform.guard.detections.get('resource-exhaustion') ?? 0) === 1, 'exhaustion alerted');
    const [alert] = await tp.platform.guard.listAlerts({ limit: 1 });
    assert.deepEqual(
      [alert!.target, alert!.response, alert!.details.resource, alert!.tenant],
      [d.id, 'alert-only', 'memory', tenant.vendorId],
    );
    assert.equal(await publishOutcome(client, `devices/${d.id}/telemetry`, '{"still":"connected"}', 1), 0);
    await endClient(client);
  });

  test('[AUD-2] [IDS-1] checkpoints go to the witness and alerts to the alert webhook', async () => {
    const received: { path: string; body: Record<string, unknown> }[] = [];
    const { createServer } = await import('node:http');
    const server = createServer((req, res) => {
      let body = '';
      req.on('data', (c: Buffer) => (body += c.toString()));
      req.on('end', () => {
        received.push({ path: req.url ?? '', body: JSON.parse(body) as Record<string, unknown> });
        res.writeHead(204).end();
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as { port: number }).port;
    try {
      const tp = await platform(
        { deviceStateChangesPerMinute: 1, deviceResponse: 'alert', alertWebhookUrl: `http://127.0.0.1:${port}/alerts` },
        { audit: { witnessUrl: `http://127.0.0.1:${port}/witness`, checkpointIntervalSeconds: 0 } },
      );
      const tenant = await provisionTenant(tp, 1);
      const checkpoint = await request(tp.platform, 'POST', '/v1/audit/checkpoints', { token: tenant.adminToken });
      const d = tenant.devices[0]!;
      const client = await connectDevice(tp.platform, d);
      for (let i = 0; i < 3; i++) await publishOutcome(client, `devices/${d.id}/state`, '{"on":true}', 1);
      await eventually(
        () => received.some((r) => r.path === '/alerts') && received.some((r) => r.path === '/witness'),
        'both webhooks called',
      );
      const witnessed = received.find((r) => r.path === '/witness')!.body;
      assert.deepEqual(witnessed.checkpoint, checkpoint.body);
      assert.equal(typeof witnessed.publicKey, 'string');
      const alert = received.find((r) => r.path === '/alerts')!.body.alert as { kind: string; target: string };
      assert.deepEqual([alert.kind, alert.target], ['state-flapping', d.id]);
      await endClient(client);
    } finally {
      server.closeAllConnections();
      server.close();
    }
  });

  test('[CHAN-5] listener deny and allow lists refuse addresses before TLS', async () => {
    const tp = await platform({}, { mqtt: { deny: ['127.0.0.2/32'] }, http: { allow: ['127.0.0.1/32', '127.0.0.3'] } });
    const tenant = await provisionTenant(tp, 1);
    const d = tenant.devices[0]!;
    const denied = await mqttConnect(tp.platform, { username: d.id, password: d.secret, localAddress: '127.0.0.2' });
    assert.equal(denied.client, undefined);
    const allowed = await mqttConnect(tp.platform, { username: d.id, password: d.secret, localAddress: '127.0.0.3' });
    assert.ok(allowed.client);
    await endClient(allowed.client);
    await assert.rejects(
      request(tp.platform, 'GET', '/healthz', { localAddress: '127.0.0.4' }),
      'not on the HTTPS allow list',
    );
    assert.equal((await request(tp.platform, 'GET', '/healthz', { localAddress: '127.0.0.3' })).status, 200);
  });

  test('[OPS-1] Prometheus metrics are served on the loopback admin listener', async () => {
    const tp = await platform({});
    await provisionTenant(tp, 1);
    await tp.platform.audit.flush();
    const res = await fetch(`${tp.platform.adminUrl}/metrics`);
    assert.equal(res.status, 200);
    const text = await res.text();
    assert.match(text, /^castellan_audit_appends_total\{service="castellan"\} [1-9]\d*$/m);
    assert.match(text, /^castellan_mqtt_connections\{service="castellan"\} 0$/m);
    assert.match(text, /# TYPE castellan_rate_limited_total counter/);
    assert.match(text, /# TYPE castellan_detections_total counter/);
    assert.equal(new URL(tp.platform.adminUrl!).hostname, '127.0.0.1');
    assert.equal((await fetch(`${tp.platform.adminUrl}/healthz`)).status, 200);
  });
});
