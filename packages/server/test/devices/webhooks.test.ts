// Webhooks for business systems on both databases, device events sent through the SDK (DeviceClient):
// signed deliveries that verify with @castellan/protocol's verifier (a tampered body does not), a failing
// endpoint retried with backoff then dead-lettered and replayed, tenant isolation (ORG-3), secret
// rotation, and the SSRF guard: non-public addresses in every spelling refused at registration and at
// delivery (DNS rebinding), redirects not followed, slow receivers timed out.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { DeviceClient } from '@castellan/device';
import { verifyWebhookSignature, type WebhookVerificationError } from '@castellan/protocol';
import fc from 'fast-check';
import { nonPublicReason, OutboundGuard, systemResolver } from '../../src/devices/webhooks/index.ts';
import { dialectCases } from '../helpers/dialects.ts';
import {
  issueAccessKey,
  provisionTenant,
  request,
  startTestPlatform,
  type Tenant,
  type TestPlatform,
} from '../helpers/test-platform.ts';

interface Received {
  path: string;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  at: number;
}

/** An HTTP receiver on `host`, port 0: records every request; each path answers as `behaviour` says. */
async function startReceiver(host: string) {
  const received: Received[] = [];
  const behaviour = new Map<string, (res: http.ServerResponse) => void>();
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const path = req.url ?? '/';
      received.push({ path, headers: req.headers, body: Buffer.concat(chunks), at: Date.now() });
      const answer = behaviour.get(path);
      if (answer) answer(res);
      else res.writeHead(204).end();
    });
  });
  server.listen(0, host);
  await once(server, 'listening');
  const port = (server.address() as AddressInfo).port;
  return {
    received,
    behaviour,
    url: (path: string) => `http://${host}:${port}${path}`,
    port,
    at: (path: string) => received.filter((r) => r.path === path),
    close: () => {
      server.closeAllConnections();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
type Receiver = Awaited<ReturnType<typeof startReceiver>>;

const WEBHOOK_CONFIG = {
  // The receiver listens on 127.0.0.2 only; 127.0.0.1 (the "internal service") stays refused.
  allowTargets: ['127.0.0.2/32'],
  maxAttempts: 3,
  initialBackoffMs: 20,
  maxBackoffMs: 80,
  timeoutMs: 1000,
  concurrency: 8,
};

async function eventually<T>(read: () => T | Promise<T>, check: (value: T) => boolean, what: string): Promise<T> {
  for (let i = 0; i < 200; i++) {
    const value = await read();
    if (check(value)) return value;
    await sleep(25);
  }
  assert.fail(`timed out waiting for ${what}`);
}

describe('the SSRF guard classifies addresses', () => {
  const v4 = (a: number, b: number, c: number, d: number) => `${a}.${b}.${c}.${d}`;
  const byte = fc.integer({ min: 0, max: 255 });
  /** An address inside a refused IPv4 range: [first octet, second octet range] pairs. */
  const internalV4 = fc.oneof(
    fc.tuple(fc.constant(10), byte, byte, byte),
    fc.tuple(fc.constant(127), byte, byte, byte),
    fc.tuple(fc.constant(0), byte, byte, byte),
    fc.tuple(fc.constant(169), fc.constant(254), byte, byte),
    fc.tuple(fc.constant(172), fc.integer({ min: 16, max: 31 }), byte, byte),
    fc.tuple(fc.constant(192), fc.constant(168), byte, byte),
    fc.tuple(fc.constant(100), fc.integer({ min: 64, max: 127 }), byte, byte),
    fc.tuple(fc.integer({ min: 224, max: 255 }), byte, byte, byte),
  );
  const hex = (n: number) => n.toString(16);
  /** The same IPv4 address spelled inside IPv6 in the ways parsers accept. */
  const spellings = ([a, b, c, d]: [number, number, number, number]) => [
    v4(a, b, c, d),
    `::ffff:${v4(a, b, c, d)}`,
    `::FFFF:${hex(a * 256 + b)}:${hex(c * 256 + d)}`,
    `0:0:0:0:0:ffff:${hex(a * 256 + b)}:${hex(c * 256 + d)}`,
    `0000:0000:0000:0000:0000:ffff:${v4(a, b, c, d)}`,
    `64:ff9b::${v4(a, b, c, d)}`,
    `2002:${hex(a * 256 + b)}:${hex(c * 256 + d)}::1`,
    `::${v4(a, b, c, d)}`,
  ];

  test('every internal IPv4 address is refused in every IPv4 and IPv6 spelling (fast-check)', () => {
    fc.assert(
      fc.property(internalV4, (parts) => {
        for (const spelling of spellings(parts)) {
          assert.notEqual(nonPublicReason(spelling), null, `${spelling} must be refused`);
        }
      }),
      { numRuns: 500 },
    );
  });

  test('IPv6 loopback, unique-local, link-local, multicast and reserved addresses are refused (fast-check)', () => {
    const group = fc.integer({ min: 0, max: 0xffff });
    const rest = fc.array(group, { minLength: 7, maxLength: 7 });
    const withFirst = (lo: number, hi: number) =>
      fc.tuple(fc.integer({ min: lo, max: hi }), rest).map(([first, tail]) => [first, ...tail].map(hex).join(':'));
    fc.assert(
      fc.property(
        fc.oneof(
          withFirst(0xfc00, 0xfdff), // fc00::/7
          withFirst(0xfe80, 0xfebf), // fe80::/10
          withFirst(0xff00, 0xffff), // ff00::/8
          withFirst(0x4000, 0xfbff), // outside 2000::/3
          fc.constantFrom('::1', '::', '0:0:0:0:0:0:0:1', '::0001', 'fe80::1%eth0', '2001:db8::1', '2001::1'),
        ),
        (ip) => assert.notEqual(nonPublicReason(ip), null, ip),
      ),
      { numRuns: 500 },
    );
  });

  test('public unicast addresses pass, and so do IPv4 forms that embed one', () => {
    for (const ip of [
      '8.8.8.8',
      '1.1.1.1',
      '93.184.215.14',
      '2606:4700:4700::1111',
      '::ffff:8.8.8.8',
      '64:ff9b::808:808',
    ]) {
      assert.equal(nonPublicReason(ip), null, ip);
    }
  });

  test('URL spellings of loopback and metadata addresses are refused without any DNS lookup', async () => {
    const lookups: string[] = [];
    const guard = new OutboundGuard({
      allowTargets: [],
      resolver: async (host) => {
        lookups.push(host);
        return [{ address: '93.184.215.14', family: 4 }];
      },
    });
    for (const url of [
      'https://127.0.0.1/hook',
      'https://2130706433/hook',
      'https://0x7f.0.0.1/hook',
      'https://0177.0.0.1/hook',
      'https://127.1/hook',
      'https://[::1]/hook',
      'https://[::ffff:127.0.0.1]/hook',
      'https://[::ffff:7f00:1]/hook',
      'https://[0:0:0:0:0:ffff:a9fe:a9fe]/latest/meta-data',
      'https://169.254.169.254/latest/meta-data',
      'https://[fd00::1]/hook',
      'https://[fe80::1]/hook',
      'https://100.64.0.1/hook',
      'https://224.0.0.1/hook',
    ]) {
      await assert.rejects(guard.resolve(url), { name: 'OutboundRefusedError', reason: 'address-refused' }, url);
    }
    assert.deepEqual(lookups, []);
    await assert.rejects(guard.resolve('http://93.184.215.14/hook'), { reason: 'url-invalid' });
    await assert.rejects(guard.resolve('https://user:pw@example.com/hook'), { reason: 'url-invalid' });
    await assert.rejects(guard.resolve('https://example.com/hook#x'), { reason: 'url-invalid' });
    const ok = await guard.resolve('https://example.com:8443/hook?token=x');
    assert.deepEqual([ok.address, ok.port, ok.servername], ['93.184.215.14', 8443, 'example.com']);
  });

  test('a name with one internal address among public ones is refused', async () => {
    const guard = new OutboundGuard({
      allowTargets: [],
      resolver: async () => [
        { address: '93.184.215.14', family: 4 },
        { address: '10.0.0.7', family: 4 },
      ],
    });
    await assert.rejects(guard.resolve('https://mixed.example/hook'), { reason: 'address-refused' });
  });
});

for (const dialect of await dialectCases()) {
  describe(`webhooks on ${dialect.name}`, { skip: dialect.skip }, () => {
    let tp: TestPlatform;
    let tenant: Tenant;
    let other: Tenant;
    let receiver: Receiver;
    /** An "internal service" on 127.0.0.1 that no webhook may ever reach. */
    let internal: Receiver;
    const clients: DeviceClient[] = [];
    let spare: Tenant['devices'];

    before(async () => {
      receiver = await startReceiver('127.0.0.2');
      internal = await startReceiver('127.0.0.1');
      // A copy each time: the loaded configuration is frozen, arrays included.
      tp = await startTestPlatform(dialect.name, {
        webhooks: { ...WEBHOOK_CONFIG, allowTargets: [...WEBHOOK_CONFIG.allowTargets] },
      });
      tenant = await provisionTenant(tp, 8);
      other = await provisionTenant(tp, 1, tenant.adminToken);
      spare = [...tenant.devices];
      // internal.example resolves to 10.x; rebind.example answers as `rebindTo` says.
      tp.platform.webhooks.outbound.resolver = async (host) => {
        if (host === 'internal.example') return [{ address: '10.20.30.40', family: 4 }];
        if (host === 'rebind.example') return [{ address: rebindTo, family: 4 }];
        return systemResolver(host);
      };
    });
    after(async () => {
      for (const client of clients) await client.close().catch(() => {});
      await tp?.close();
      await receiver?.close();
      await internal?.close();
    });
    let rebindTo = '93.184.215.14';

    const sdk = async () => {
      const device = spare.shift();
      assert.ok(device, 'enough test devices');
      const client = await DeviceClient.connect({
        url: tp.platform.mqttUrl,
        deviceId: device.id,
        secret: device.secret,
        ca: tp.platform.caPem,
        servername: 'localhost',
      });
      clients.push(client);
      return client;
    };
    const register = (body: Record<string, unknown>, token: Tenant['vendorToken'] = tenant.vendorToken) =>
      request(tp.platform, 'POST', '/v1/webhooks', { token, body });
    const deliveries = async (webhookId: string, token: Tenant['vendorToken'] = tenant.vendorToken) =>
      (await request(tp.platform, 'GET', `/v1/webhooks/${webhookId}/deliveries`, { token })).body.items as Array<
        Record<string, any>
      >;
    const deadLetters = async (token: Tenant['vendorToken'] = tenant.vendorToken) =>
      (await request(tp.platform, 'GET', '/v1/webhooks/dead-letters', { token })).body.items as Array<
        Record<string, any>
      >;

    test('registration refuses non-public targets in every spelling, with one message, and creates nothing', async () => {
      const refused = [
        `http://127.0.0.1:${internal.port}/steal`,
        'https://127.0.0.1/steal',
        `http://[::ffff:127.0.0.1]:${internal.port}/steal`,
        'https://[::ffff:7f00:1]/steal',
        'https://[::1]/steal',
        'https://169.254.169.254/latest/meta-data',
        'https://2130706433/steal',
        'https://internal.example/steal',
        'https://localhost/steal',
      ];
      for (const url of refused) {
        const res = await register({ url, events: ['device.event'] });
        assert.equal(res.status, 400, `${url}: ${res.text}`);
        assert.equal(res.body.error.code, 'ERR_WEBHOOK_URL_REFUSED', url);
        assert.equal(res.body.error.message, 'The URL does not resolve to a public address');
      }
      const invalid: Array<[string, string]> = [
        ['http://93.184.215.14/hook', 'The webhook URL is not allowed: The URL must use https://'],
        ['ftp://example.com/hook', 'The webhook URL is not allowed: The URL must use https://'],
        [
          'https://user:pw@rebind.example/hook',
          'The webhook URL is not allowed: The URL must not carry a user name or password',
        ],
        ['not a url', 'The webhook URL is not allowed: The URL is not a valid absolute URL'],
      ];
      for (const [url, message] of invalid) {
        const res = await register({ url, events: ['device.event'] });
        assert.equal(res.status, 400, url);
        assert.equal(res.body.error.code, 'ERR_WEBHOOK_URL_INVALID', url);
        assert.equal(res.body.error.message, message);
      }
      const unknownEvent = await register({ url: receiver.url('/x'), events: ['device.secrets'] });
      assert.equal(unknownEvent.status, 400);
      assert.equal(unknownEvent.body.error.code, 'ERR_VALIDATION_FAILED');
      const list = await request(tp.platform, 'GET', '/v1/webhooks', { token: tenant.vendorToken });
      assert.deepEqual(list.body.items, []);
      assert.equal(internal.received.length, 0);
    });

    test('device events sent through the SDK arrive signed; the signature verifies and a tampered body does not', async () => {
      const created = await register({
        url: receiver.url('/ok'),
        events: ['device.telemetry', 'device.presence', 'device.event'],
        description: 'ERP',
      });
      assert.equal(created.status, 201, created.text);
      const { id: webhookId, secret } = created.body as { id: string; secret: string };
      assert.match(secret, /^cas_whsec_[A-Za-z0-9_-]{43}$/);
      assert.equal(created.body.url, receiver.url('/ok'));
      // The secret is stored only encrypted and never shown again.
      const rows = await tp.query<{ secret_ciphertext: Uint8Array }>(
        'select secret_ciphertext from webhook_endpoints where id = $1',
        [webhookId],
      );
      assert.equal(Buffer.from(rows[0]!.secret_ciphertext).includes(Buffer.from(secret)), false);
      const read = await request(tp.platform, 'GET', `/v1/webhooks/${webhookId}`, { token: tenant.vendorToken });
      assert.equal(read.status, 200);
      assert.equal(read.body.secret, undefined);
      assert.equal(read.text.includes(secret), false);

      const device = await sdk();
      await device.publishTelemetry({ temperature: 21.5 });
      const telemetry = await eventually(
        () => receiver.at('/ok').find((r) => JSON.parse(r.body.toString()).type === 'device.telemetry'),
        (r) => r !== undefined,
        'the telemetry webhook',
      );
      const verified = verifyWebhookSignature({ secret, headers: telemetry!.headers, body: telemetry!.body });
      const body = JSON.parse(telemetry!.body.toString());
      assert.equal(verified.id, body.id);
      assert.equal(telemetry!.headers['castellan-webhook-id'], body.id);
      assert.match(String(telemetry!.headers['castellan-signature']), /^v1=[0-9a-f]{64}$/);
      assert.equal(telemetry!.headers['content-type'], 'application/json');
      assert.deepEqual(
        { type: body.type, tenant: body.tenant, deviceId: body.deviceId, data: body.data },
        {
          type: 'device.telemetry',
          tenant: tenant.vendorId,
          deviceId: device.deviceId,
          data: { channel: 'telemetry', subtopic: null, payload: { temperature: 21.5 } },
        },
      );
      assert.equal(typeof body.occurredAt, 'number');
      // Presence (the SDK's connect) was delivered too.
      await eventually(
        () => receiver.at('/ok').map((r) => JSON.parse(r.body.toString())),
        (bodies) =>
          bodies.some(
            (b) => b.type === 'device.presence' && b.data.event === 'connected' && b.deviceId === device.deviceId,
          ),
        'the presence webhook',
      );

      // Tampering: another body, another ID, an old timestamp or the wrong secret fail verification.
      const tampered = Buffer.from(telemetry!.body.toString().replace('21.5', '99.9'));
      assert.throws(
        () => verifyWebhookSignature({ secret, headers: telemetry!.headers, body: tampered }),
        (e: WebhookVerificationError) => e.code === 'signature-mismatch',
      );
      assert.throws(
        () =>
          verifyWebhookSignature({
            secret,
            headers: { ...telemetry!.headers, 'castellan-webhook-id': 'whd_other' },
            body: telemetry!.body,
          }),
        (e: WebhookVerificationError) => e.code === 'signature-mismatch',
      );
      assert.throws(
        () =>
          verifyWebhookSignature({
            secret,
            headers: telemetry!.headers,
            body: telemetry!.body,
            now: Date.now() + 600_000,
          }),
        (e: WebhookVerificationError) => e.code === 'timestamp-out-of-tolerance',
      );
      assert.throws(
        () => verifyWebhookSignature({ secret: `${secret}x`, headers: telemetry!.headers, body: telemetry!.body }),
        (e: WebhookVerificationError) => e.code === 'signature-mismatch',
      );
      assert.throws(
        () => verifyWebhookSignature({ secret, headers: {}, body: telemetry!.body }),
        (e: WebhookVerificationError) => e.code === 'missing-header',
      );

      const list = await eventually(
        () => deliveries(webhookId),
        (items) => items.some((d) => d.id === body.id && d.state === 'delivered'),
        'the delivery recorded as delivered',
      );
      const record = list.find((d) => d.id === body.id)!;
      assert.deepEqual(
        [record.eventType, record.attempts, record.lastStatus, record.lastError],
        ['device.telemetry', 1, 204, null],
      );
      await tp.platform.audit.flush();
      const audited = await tp.platform.audit.query({ type: 'webhook.create', target: webhookId, limit: 5 });
      assert.equal(audited.length, 1);
      assert.deepEqual(audited[0]!.details.host, `127.0.0.2:${receiver.port}`);
      assert.equal(JSON.stringify(audited[0]).includes(secret), false);
      assert.equal(tp.logs.text().includes(secret), false);
      assert.equal(
        (await request(tp.platform, 'DELETE', `/v1/webhooks/${webhookId}`, { token: tenant.vendorToken })).status,
        204,
      );
    });

    test('a failing endpoint is retried with backoff, then dead-lettered; replay delivers it', async () => {
      let failing = true;
      receiver.behaviour.set('/flaky', (res) => res.writeHead(failing ? 500 : 200).end('{}'));
      const created = await register({ url: receiver.url('/flaky'), events: ['device.event'] });
      assert.equal(created.status, 201, created.text);
      const webhookId = created.body.id as string;
      const device = await sdk();
      await device.publish(`devices/${device.deviceId}/events`, JSON.stringify({ type: 'door', open: true }), 1);
      const dead = await eventually(
        () => deadLetters(),
        (items) => items.some((d) => d.webhookId === webhookId),
        'the dead letter',
      );
      const letter = dead.find((d) => d.webhookId === webhookId)!;
      assert.deepEqual(
        [letter.state, letter.attempts, letter.lastStatus, letter.lastError, letter.eventType, letter.deviceId],
        ['dead', 3, 500, 'http 500', 'device.event', device.deviceId],
      );
      const attempts = receiver.at('/flaky');
      assert.equal(attempts.length, 3, 'maxAttempts attempts, no more');
      // The same message on every attempt, each freshly signed; waits grow (backoff ≥ half the ceiling).
      assert.deepEqual(new Set(attempts.map((a) => a.headers['castellan-webhook-id'])), new Set([letter.id]));
      for (const a of attempts)
        verifyWebhookSignature({ secret: created.body.secret, headers: a.headers, body: a.body });
      assert.ok(attempts[1]!.at - attempts[0]!.at >= 10, `first wait ${attempts[1]!.at - attempts[0]!.at} ms`);
      assert.ok(attempts[2]!.at - attempts[1]!.at >= 20, `second wait ${attempts[2]!.at - attempts[1]!.at} ms`);
      await sleep(200);
      assert.equal(receiver.at('/flaky').length, 3, 'nothing is sent after dead-lettering');
      await tp.platform.audit.flush();
      const audited = await tp.platform.audit.query({ type: 'webhook.dead-letter', target: webhookId, limit: 5 });
      assert.equal(audited.length, 1);
      assert.equal(audited[0]!.details.deliveryId, letter.id);

      failing = false;
      const replay = await request(tp.platform, 'POST', `/v1/webhooks/dead-letters/${letter.id}/replay`, {
        token: tenant.vendorToken,
      });
      assert.equal(replay.status, 202, replay.text);
      assert.deepEqual([replay.body.state, replay.body.attempts], ['pending', 0]);
      await eventually(
        () => deliveries(webhookId),
        (items) => items.some((d) => d.id === letter.id && d.state === 'delivered'),
        'the replayed delivery',
      );
      const all = receiver.at('/flaky');
      assert.equal(all.length, 4);
      assert.equal(all[3]!.headers['castellan-webhook-id'], letter.id);
      assert.deepEqual(all[3]!.body, all[0]!.body, 'the same body');
      assert.equal(
        (await deadLetters()).some((d) => d.id === letter.id),
        false,
      );
      const again = await request(tp.platform, 'POST', `/v1/webhooks/dead-letters/${letter.id}/replay`, {
        token: tenant.vendorToken,
      });
      assert.equal(again.status, 404);
      assert.equal(again.body.error.code, 'ERR_WEBHOOK_DEAD_LETTER_NOT_FOUND');
      await request(tp.platform, 'DELETE', `/v1/webhooks/${webhookId}`, { token: tenant.vendorToken });
    });

    test('[ORG-3] another tenant never receives, sees or replays this tenant’s events', async () => {
      const mine = await register({ url: receiver.url('/mine'), events: ['device.event'] });
      const theirs = await register(
        {
          url: receiver.url('/theirs'),
          events: [
            ...['device.telemetry', 'device.state', 'device.event', 'device.ack', 'device.presence', 'device.change'],
          ],
        },
        other.vendorToken,
      );
      assert.equal(theirs.status, 201, theirs.text);
      const device = await sdk();
      await device.publish(`devices/${device.deviceId}/events`, JSON.stringify({ type: 'alarm' }), 1);
      await eventually(
        () => receiver.at('/mine').length,
        (n) => n === 1,
        "this tenant's delivery",
      );
      await tp.platform.webhooks.idle();
      await sleep(100);
      assert.equal(
        receiver.at('/theirs').filter((r) => JSON.parse(r.body.toString()).deviceId === device.deviceId).length,
        0,
        "another tenant's endpoint got nothing of this tenant's device",
      );
      // Objects of another tenant answer exactly like missing ones.
      for (const [method, path] of [
        ['GET', `/v1/webhooks/${mine.body.id}`],
        ['DELETE', `/v1/webhooks/${mine.body.id}`],
        ['GET', `/v1/webhooks/${mine.body.id}/deliveries`],
        ['POST', `/v1/webhooks/${mine.body.id}/rotate-secret`],
      ] as const) {
        const res = await request(tp.platform, method, path, { token: other.vendorToken });
        assert.equal(res.status, 404, `${method} ${path}`);
        assert.equal(res.body.error.code, 'ERR_WEBHOOK_NOT_FOUND');
      }
      const theirList = await request(tp.platform, 'GET', '/v1/webhooks', { token: other.vendorToken });
      assert.deepEqual(
        theirList.body.items.map((e: { id: string }) => e.id),
        [theirs.body.id],
      );
      // This tenant's dead letter cannot be replayed by the other tenant.
      receiver.behaviour.set('/mine', (res) => res.writeHead(503).end());
      await device.publish(`devices/${device.deviceId}/events`, JSON.stringify({ type: 'alarm', n: 2 }), 1);
      const dead = await eventually(
        () => deadLetters(),
        (items) => items.some((d) => d.webhookId === mine.body.id),
        'a dead letter',
      );
      const letter = dead.find((d) => d.webhookId === mine.body.id)!;
      assert.deepEqual(await deadLetters(other.vendorToken), []);
      const replay = await request(tp.platform, 'POST', `/v1/webhooks/dead-letters/${letter.id}/replay`, {
        token: other.vendorToken,
      });
      assert.equal(replay.status, 404);
      assert.equal(replay.body.error.code, 'ERR_WEBHOOK_DEAD_LETTER_NOT_FOUND');
      assert.equal(
        (await deadLetters()).some((d) => d.id === letter.id),
        true,
        'the dead letter is untouched',
      );
      await request(tp.platform, 'DELETE', `/v1/webhooks/${mine.body.id}`, { token: tenant.vendorToken });
      await request(tp.platform, 'DELETE', `/v1/webhooks/${theirs.body.id}`, { token: other.vendorToken });
    });

    test('at delivery, a target that now resolves inside, or names loopback in any form, is dead-lettered unsent', async () => {
      rebindTo = '93.184.215.14';
      const created = await register({ url: 'https://rebind.example/hook', events: ['device.event'] });
      assert.equal(created.status, 201, created.text);
      const webhookId = created.body.id as string;
      const device = await sdk();
      const targets = [
        ['https://rebind.example/hook', '10.9.8.7'],
        [`http://127.0.0.1:${internal.port}/steal`, null],
        [`http://[::ffff:127.0.0.1]:${internal.port}/steal`, null],
        ['https://internal.example/steal', null],
      ] as const;
      for (const [url, rebind] of targets) {
        // DNS rebinding: the name now answers with an internal address; literal URLs as if stored
        // before the rules (written straight to the store: the API refuses them).
        if (rebind) rebindTo = rebind;
        else
          await tp.platform.store.db
            .updateTable('webhook_endpoints')
            .set({ url })
            .where('id', '=', webhookId)
            .execute();
        const before = (await deadLetters()).length;
        await device.publish(`devices/${device.deviceId}/events`, JSON.stringify({ type: 'probe', url }), 1);
        const dead = await eventually(
          () => deadLetters(),
          (items) => items.length === before + 1,
          `refusal of ${url}`,
        );
        assert.deepEqual(
          [dead[0]!.attempts, dead[0]!.lastError, dead[0]!.lastStatus],
          [1, 'address refused', null],
          url,
        );
      }
      assert.equal(internal.received.length, 0, 'the internal service received nothing');
      await tp.platform.audit.flush();
      const audited = await tp.platform.audit.query({ type: 'webhook.target-refused', target: webhookId, limit: 10 });
      assert.equal(audited.length, targets.length);
      await request(tp.platform, 'DELETE', `/v1/webhooks/${webhookId}`, { token: tenant.vendorToken });
    });

    test('redirects are not followed and a receiver that does not answer in time counts as failed', async () => {
      receiver.behaviour.set('/redirect', (res) =>
        res.writeHead(307, { location: `http://127.0.0.1:${internal.port}/steal` }).end(),
      );
      receiver.behaviour.set('/slow', () => {}); // never answers
      const redirect = await register({ url: receiver.url('/redirect'), events: ['device.event'] });
      const slow = await register({ url: receiver.url('/slow'), events: ['device.event'] });
      const device = await sdk();
      await device.publish(`devices/${device.deviceId}/events`, JSON.stringify({ type: 'ping' }), 1);
      const dead = await eventually(
        () => deadLetters(),
        (items) =>
          items.some((d) => d.webhookId === redirect.body.id) && items.some((d) => d.webhookId === slow.body.id),
        'both dead letters',
      );
      const byHook = (id: string) => dead.find((d) => d.webhookId === id)!;
      assert.deepEqual(
        [byHook(redirect.body.id).lastStatus, byHook(redirect.body.id).lastError],
        [307, 'redirect 307'],
      );
      assert.deepEqual([byHook(slow.body.id).lastStatus, byHook(slow.body.id).lastError], [null, 'timeout']);
      assert.equal(internal.received.length, 0);
      for (const id of [redirect.body.id, slow.body.id]) {
        await request(tp.platform, 'DELETE', `/v1/webhooks/${id}`, { token: tenant.vendorToken });
      }
    });

    test('a rotated secret signs at once; with a grace period the previous one still verifies', async () => {
      const created = await register({ url: receiver.url('/rotate'), events: ['device.event'] });
      const webhookId = created.body.id as string;
      const first = created.body.secret as string;
      const rotated = await request(tp.platform, 'POST', `/v1/webhooks/${webhookId}/rotate-secret`, {
        token: tenant.vendorToken,
        body: { keepPreviousSeconds: 3600 },
      });
      assert.equal(rotated.status, 200, rotated.text);
      const second = rotated.body.secret as string;
      assert.notEqual(second, first);
      assert.ok(rotated.body.previousSecretExpiresAt > Date.now());
      const device = await sdk();
      const send = async (n: number) => {
        await device.publish(`devices/${device.deviceId}/events`, JSON.stringify({ type: 'tick', n }), 1);
        return eventually(
          () => receiver.at('/rotate').find((r) => JSON.parse(r.body.toString()).data.payload.n === n),
          (r) => r !== undefined,
          `delivery ${n}`,
        );
      };
      const during = (await send(1))!;
      assert.match(String(during.headers['castellan-signature']), /^v1=[0-9a-f]{64} v1=[0-9a-f]{64}$/);
      verifyWebhookSignature({ secret: second, headers: during.headers, body: during.body });
      verifyWebhookSignature({ secret: first, headers: during.headers, body: during.body });
      const again = await request(tp.platform, 'POST', `/v1/webhooks/${webhookId}/rotate-secret`, {
        token: tenant.vendorToken,
      });
      assert.equal(again.status, 200, again.text);
      assert.equal(again.body.previousSecretExpiresAt, null);
      const after = (await send(2))!;
      verifyWebhookSignature({ secret: again.body.secret, headers: after.headers, body: after.body });
      for (const old of [first, second]) {
        assert.throws(() => verifyWebhookSignature({ secret: old, headers: after.headers, body: after.body }), {
          code: 'signature-mismatch',
        });
      }
      await request(tp.platform, 'DELETE', `/v1/webhooks/${webhookId}`, { token: tenant.vendorToken });
    });

    test('deleting an endpoint drops its pending deliveries; a viewer-scoped key cannot manage webhooks', async () => {
      receiver.behaviour.set('/gone', (res) => res.writeHead(500).end());
      const created = await register({ url: receiver.url('/gone'), events: ['device.event'] });
      const device = await sdk();
      await device.publish(`devices/${device.deviceId}/events`, JSON.stringify({ type: 'x' }), 1);
      await eventually(
        () => receiver.at('/gone').length,
        (n) => n >= 1,
        'a first attempt',
      );
      assert.equal(
        (await request(tp.platform, 'DELETE', `/v1/webhooks/${created.body.id}`, { token: tenant.vendorToken })).status,
        204,
      );
      const rows = await tp.query<{ n: number }>(
        'select count(*) as n from webhook_deliveries where endpoint_id = $1',
        [created.body.id],
      );
      assert.equal(Number(rows[0]!.n), 0);
      // An attempt already on the wire may still land; none starts after that.
      await sleep(100);
      const count = receiver.at('/gone').length;
      await sleep(300);
      assert.equal(receiver.at('/gone').length, count, 'no attempt after deletion');
      const missing = await request(tp.platform, 'GET', `/v1/webhooks/${created.body.id}`, {
        token: tenant.vendorToken,
      });
      assert.equal(missing.body.error.code, 'ERR_WEBHOOK_NOT_FOUND');
      const reader = await issueAccessKey(tp.platform, tenant.adminToken, tenant.vendorId, {
        scopes: ['devices:read'],
      });
      const refused = await register({ url: receiver.url('/x'), events: ['device.event'] }, reader);
      assert.equal(refused.status, 403);
      assert.equal(refused.body.error.code, 'ERR_AUTH_FORBIDDEN');
      assert.equal((await request(tp.platform, 'GET', '/v1/webhooks', { token: reader })).status, 200);
    });
  });
}
