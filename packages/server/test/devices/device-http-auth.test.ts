// Device HTTPS authentication (DEV-6) on both databases, through the device SDK's DeviceHttpClient:
// timestamp mode (signed with a key derived from the secret, ±300 s, single-use nonces shared across
// processes, body bound to the signature) and mutual challenge-response (the platform proves it holds
// the device key; a 15-minute device token). Every refusal is the same 401.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { DeviceHttpClient, DeviceHttpError } from '@castellan/device';
import { challengeDeviceResponse, deviceRequestKey, newDeviceNonce, signDeviceRequest } from '@castellan/protocol';
import type { FastifyRequest } from 'fastify';
import fc from 'fast-check';
import type { AuditEvent } from '../../src/audit/index.ts';
import { CastellanError } from '../../src/errors/index.ts';
import { DeviceHttpAuth } from '../../src/devices/device-http-auth.ts';
import { dialectCases } from '../helpers/dialects.ts';
import {
  provisionTenant,
  request,
  startTestPlatform,
  type Tenant,
  type TestPlatform,
} from '../helpers/test-platform.ts';

const FAILED = { code: 'ERR_DEVICE_AUTH_FAILED', message: 'Device authentication failed' };

for (const dialect of await dialectCases()) {
  describe(`device HTTPS authentication on ${dialect.name}`, { skip: dialect.skip }, () => {
    let tp: TestPlatform;
    let tenant: Tenant;
    let host: string;

    before(async () => {
      tp = await startTestPlatform(dialect.name);
      tenant = await provisionTenant(tp, 3);
      host = new URL(tp.platform.httpUrl).host;
    });
    after(() => tp?.close());

    const client = (device: { id: string; secret: string }) =>
      new DeviceHttpClient({
        baseUrl: tp.platform.httpUrl,
        ca: tp.platform.caPem,
        deviceId: device.id,
        secret: device.secret,
      });

    const telemetryCount = async (deviceId: string) =>
      Number(
        (await tp.query<{ n: number }>('select count(*) as n from telemetry where device_id = $1', [deviceId]))[0]!.n,
      );

    /** Sends exactly these headers and body bytes (for replays and tampering). */
    const raw = (path: string, headers: Record<string, string>, body?: string, method = 'POST') =>
      request(tp.platform, method, path, {
        ...(body !== undefined ? { rawBody: body } : {}),
        headers: { host, ...headers },
      });

    const assertRefused = (
      res: { status: number; body: { error: { code: string; message: string } } },
      label: string,
    ) => {
      assert.equal(res.status, 401, `${label}: ${JSON.stringify(res.body)}`);
      assert.equal(res.body.error.code, FAILED.code, label);
      assert.equal(res.body.error.message, FAILED.message, label);
    };

    test('[DEV-6] timestamp mode: a signed telemetry report is stored; the secret never travels', async () => {
      const d = tenant.devices[0]!;
      const heard: unknown[] = [];
      const listener = (m: { deviceId: string; channel: string }) => m.deviceId === d.id && heard.push(m.channel);
      tp.platform.deviceEvents.on('message', listener);
      const res = await client(d).reportTelemetry({ temperature: 21.5 });
      tp.platform.deviceEvents.off('message', listener);
      assert.equal(res.status, 202, JSON.stringify(res.body));
      const latest = await tp.platform.devices.latestTelemetry(d.id);
      assert.deepEqual(latest?.payload, { temperature: 21.5 });
      assert.deepEqual(heard, ['telemetry']);
      const state = await client(d).reportState({ on: true });
      assert.equal(state.status, 202, JSON.stringify(state.body));
      assert.ok(!tp.logs.text().includes(d.secret), 'the secret is in no log line');
      const time = await request(tp.platform, 'GET', '/v1/device-api/time');
      assert.equal(time.status, 200);
      assert.ok(Math.abs(time.body.now - Date.now()) < 5000);
    });

    test('[DEV-6] replayed, stale, future, wrongly signed, tampered and malformed requests all get the same 401', async () => {
      const [d, other] = tenant.devices as [Tenant['devices'][0], Tenant['devices'][0]];
      const path = '/v1/device-api/telemetry';
      const body = JSON.stringify({ temperature: 1 });
      const sign = (over: Partial<Parameters<typeof signDeviceRequest>[0]> = {}) =>
        signDeviceRequest({ deviceId: d.id, secret: d.secret, method: 'POST', path, host, body, ...over });
      const before = await telemetryCount(d.id);

      const good = sign();
      const first = await raw(path, good, body);
      assert.equal(first.status, 202);
      assertRefused(await raw(path, good, body), 'the same request replayed');

      const unknownId = `01${tenant.vendorCode}${tenant.productCode}0000000000`;
      const cases: Array<[string, Record<string, string>, string]> = [
        ['ts 301 s old', sign({ now: Date.now() - 301_000 }), body],
        ['ts 301 s ahead', sign({ now: Date.now() + 301_000 }), body],
        ["another device's secret", sign({ secret: other.secret }), body],
        ['an unknown device', sign({ deviceId: unknownId }), body],
        ['the device ID as the secret', sign({ secret: d.id }), body],
        ['another body than the signed one', sign(), JSON.stringify({ temperature: 99 })],
        ['signed for another path', sign({ path: '/v1/device-api/state' }), body],
        ['signed for another host', sign({ host: 'evil.example.com' }), body],
        ['no authorization header', { 'x-castellan-content-sha256': good['x-castellan-content-sha256']! }, body],
        ['no content hash header', { authorization: sign().authorization! }, body],
        [
          'a lower-case scheme',
          { ...sign(), authorization: sign().authorization!.replace('CAS-DEVICE', 'cas-device') },
          body,
        ],
        ['the secret as a bearer', { authorization: `Bearer ${d.secret}` }, body],
        [
          'an invented device token',
          { authorization: `Bearer cas_dvt_${randomBytes(32).toString('base64url')}` },
          body,
        ],
      ];
      // A signature made for device A presented as device B.
      const stolen = sign();
      cases.push([
        "a valid signature under another device's ID",
        { ...stolen, authorization: stolen.authorization!.replace(`device=${d.id}`, `device=${other.id}`) },
        body,
      ]);
      for (const [label, headers, sent] of cases) assertRefused(await raw(path, headers, sent), label);
      // A raw '+' in the query is ambiguous (plus or space?): refused even with a signature over %2B.
      assertRefused(await raw(`${path}?a+b=1`, sign({ path: `${path}?a%2Bb=1` }), body), "a raw '+' in the query");
      assert.equal(await telemetryCount(d.id), before + 1, 'only the first, valid request stored anything');

      await tp.platform.audit.flush();
      const reasons = new Set(
        (await tp.platform.audit.query({ type: 'device.http-auth', limit: 200 })).map((e) => e.details.reason),
      );
      for (const reason of [
        'replayed-nonce',
        'stale-ts',
        'bad-signature',
        'malformed',
        'unknown-token',
        'body-hash-mismatch',
      ]) {
        assert.ok(reasons.has(reason), `the audit log records ${reason}`);
      }
    });

    test('[DEV-6] challenge-response: the platform proves itself, the device gets a short-lived token stored hashed', async () => {
      const d = tenant.devices[1]!;
      const device = client(d);
      const { expiresAt } = await device.authenticateWithChallenge();
      assert.ok(expiresAt > Date.now() + 14 * 60_000 && expiresAt <= Date.now() + 15 * 60_000 + 1000);
      assert.ok(device.hasToken);
      const res = await device.reportTelemetry({ temperature: 2 });
      assert.equal(res.status, 202, JSON.stringify(res.body));
      const rows = await tp.query<{ token_hash: Uint8Array; method: string }>(
        'select token_hash, method from device_tokens where device_id = $1',
        [d.id],
      );
      assert.equal(rows.length, 1);
      assert.equal(rows[0]!.method, 'secret');
      assert.equal(Buffer.from(rows[0]!.token_hash).length, 32, 'only a SHA-256 of the token is stored');
      await tp.platform.audit.flush();
      const issued = await tp.platform.audit.query({ type: 'device.token-issue', target: d.id, limit: 5 });
      assert.equal(issued.length, 1);
      assert.equal(JSON.stringify(issued).includes('cas_dvt_'), false, 'the token is not in the audit log');
    });

    test('[DEV-6] a challenge is single-use, bound to its device, and useless without the key', async () => {
      const [a, b] = tenant.devices as [Tenant['devices'][0], Tenant['devices'][0]];
      const issue = async (deviceId: string, clientNonce = newDeviceNonce()) => {
        const res = await request(tp.platform, 'POST', '/v1/device-api/challenges', {
          body: { deviceId, clientNonce },
        });
        assert.equal(res.status, 201, res.text);
        return { ...(res.body as { challenge: string; serverProof: string; expiresAt: number }), clientNonce };
      };
      const redeem = (deviceId: string, challenge: string, response: string) =>
        request(tp.platform, 'POST', '/v1/device-api/tokens', { body: { deviceId, challenge, response } });
      const answer = (secret: string, deviceId: string, c: { challenge: string; clientNonce: string }) =>
        challengeDeviceResponse(deviceRequestKey(secret), deviceId, c.challenge, c.clientNonce);

      const c1 = await issue(a.id);
      assert.equal((await redeem(a.id, c1.challenge, answer(a.secret, a.id, c1))).status, 201);
      assertRefused(await redeem(a.id, c1.challenge, answer(a.secret, a.id, c1)), 'a challenge used twice');

      const c2 = await issue(a.id);
      assertRefused(await redeem(a.id, c2.challenge, answer(b.secret, a.id, c2)), "another device's key");
      assertRefused(await redeem(a.id, c2.challenge, answer(a.secret, a.id, c2)), 'the right answer after a wrong one');

      const c3 = await issue(a.id);
      assertRefused(await redeem(b.id, c3.challenge, answer(b.secret, b.id, c3)), "A's challenge redeemed as B");
      assertRefused(await redeem(a.id, c3.challenge, c3.serverProof), 'the serverProof reflected as the response');

      // An unknown device gets a challenge of the same shape; nothing redeems it.
      const unknownId = `01${tenant.vendorCode}${tenant.productCode}0000000001`;
      const cu = await issue(unknownId);
      assert.match(cu.challenge, /^[A-Za-z0-9_-]{43}$/);
      assert.match(cu.serverProof, /^[A-Za-z0-9_-]{43}$/);
      assertRefused(await redeem(unknownId, cu.challenge, answer(a.secret, unknownId, cu)), 'an unknown device');
      const bad = await request(tp.platform, 'POST', '/v1/device-api/challenges', {
        body: { deviceId: a.id, clientNonce: 'short' },
      });
      assert.equal(bad.status, 400);
    });

    test("[DEV-6] a device token identifies only its own device; another device's token reports as that device", async () => {
      const [a, b] = tenant.devices as [Tenant['devices'][0], Tenant['devices'][0]];
      const devA = client(a);
      await devA.authenticateWithChallenge();
      const beforeB = await telemetryCount(b.id);
      // Whatever the body claims, the token decides who is reporting.
      const res = await devA.request('POST', '/v1/device-api/telemetry', { temperature: 5 });
      assert.equal(res.status, 202);
      assert.equal(await telemetryCount(b.id), beforeB, "nothing was stored for B with A's token");
    });

    test('[DEV-6] the SDK refuses a platform that cannot prove it knows the device key (forged serverProof)', async () => {
      const d = tenant.devices[2]!;
      // A server holding the platform's own TLS certificate (a stolen key, a rogue node), but not the
      // device keys: TLS pinning passes, the serverProof does not.
      const pki = join(tp.dataDir, 'pki');
      let tokenRequests = 0;
      const fake = https.createServer(
        { key: readFileSync(join(pki, 'server.key')), cert: readFileSync(join(pki, 'server.crt')) },
        (req, res) => {
          if (req.url === '/v1/device-api/tokens') tokenRequests++;
          res.writeHead(201, { 'content-type': 'application/json' });
          res.end(
            JSON.stringify({
              challenge: randomBytes(32).toString('base64url'),
              expiresAt: Date.now() + 60_000,
              serverProof: randomBytes(32).toString('base64url'),
            }),
          );
        },
      );
      fake.listen(0, '127.0.0.1');
      await once(fake, 'listening');
      try {
        const port = (fake.address() as AddressInfo).port;
        const sdk = new DeviceHttpClient({
          baseUrl: `https://127.0.0.1:${port}`,
          ca: tp.platform.caPem,
          servername: 'localhost',
          deviceId: d.id,
          secret: d.secret,
        });
        await assert.rejects(sdk.authenticateWithChallenge(), (e: unknown) => {
          assert.ok(e instanceof DeviceHttpError);
          assert.equal(e.code, 'ERR_PLATFORM_NOT_AUTHENTIC');
          return true;
        });
        assert.equal(tokenRequests, 0, 'the device never answered the forged challenge');
        assert.equal(sdk.hasToken, false);
      } finally {
        fake.close();
      }
      // A platform whose certificate does not chain to the pinned CA is refused by TLS itself.
      const foreignCa = readFileSync(join(pki, 'server.crt'), 'utf8');
      const unpinned = new DeviceHttpClient({
        baseUrl: tp.platform.httpUrl,
        ca: foreignCa,
        deviceId: d.id,
        secret: d.secret,
      });
      await assert.rejects(unpinned.reportTelemetry({ t: 1 }));
    });

    test('[DEV-6] nonces, challenges and tokens are shared across processes and expire', async () => {
      const d = tenant.devices[0]!;
      let clock = Date.now();
      const events: AuditEvent[] = [];
      const make = () =>
        new DeviceHttpAuth({
          db: tp.platform.store.db,
          devices: tp.platform.devices,
          record: (e) => events.push(e),
          now: () => clock,
          purgeIntervalMs: 0,
        });
      const one = make();
      const two = make();
      const fakeRequest = (headers: Record<string, string>, url = '/v1/device-api/state') =>
        ({ headers, raw: { url }, method: 'POST', ip: '127.0.0.1', id: 'req-test' }) as unknown as FastifyRequest;
      const headers = {
        host,
        ...signDeviceRequest({
          deviceId: d.id,
          secret: d.secret,
          method: 'POST',
          path: '/v1/device-api/state',
          host,
          body: '{}',
          now: clock,
        }),
      };
      await one.authenticate(fakeRequest(headers), {} as never);
      await assert.rejects(two.authenticate(fakeRequest(headers), {} as never), (e: unknown) => {
        assert.ok(e instanceof CastellanError);
        assert.equal(e.code, 'ERR_DEVICE_AUTH_FAILED');
        return true;
      });
      assert.equal(events.at(-1)?.details?.reason, 'replayed-nonce', 'the second process remembered the nonce');

      // A challenge issued by one process is redeemable once, by any process, within 60 s only.
      const clientNonce = newDeviceNonce();
      const answer = (c: string) => challengeDeviceResponse(deviceRequestKey(d.secret), d.id, c, clientNonce);
      const late = await one.issueChallenge(d.id, clientNonce);
      clock += 61_000;
      await assert.rejects(two.redeemChallenge(fakeRequest({}), d.id, late.challenge, answer(late.challenge)));
      const fresh = await one.issueChallenge(d.id, clientNonce);
      const token = await two.redeemChallenge(fakeRequest({}), d.id, fresh.challenge, answer(fresh.challenge));
      assert.match(token.token, /^cas_dvt_[A-Za-z0-9_-]{43}$/);
      const bearer = { host, authorization: `Bearer ${token.token}` };
      const ok = fakeRequest(bearer);
      await one.authenticate(ok, {} as never);
      assert.equal(ok.device?.id, d.id);
      clock += 15 * 60_000 + 1;
      await assert.rejects(one.authenticate(fakeRequest(bearer), {} as never));
      assert.equal(events.at(-1)?.details?.reason, 'unknown-token');
      // Expired rows go (ts-window nonces, challenges, tokens).
      clock += DAY;
      assert.ok((await one.purgeExpired()) >= 3);
      const left = await tp.query<{ n: number }>('select count(*) as n from device_tokens where device_id = $1', [
        d.id,
      ]);
      assert.equal(Number(left[0]!.n), 0);
      one.close();
      two.close();
    });

    test('[DEV-6] property: any single-character change to a signed header is refused', async () => {
      const d = tenant.devices[0]!;
      const path = '/v1/device-api/telemetry';
      const body = '{"p":1}';
      const base = signDeviceRequest({
        deviceId: d.id,
        secret: d.secret,
        method: 'POST',
        path,
        host,
        body,
        now: Date.now(),
      });
      const auth = base.authorization!;
      await fc.assert(
        fc.asyncProperty(
          fc.integer({ min: 23, max: auth.length - 1 }),
          fc.constantFrom(...'AZaz09_-'),
          async (i, ch) => {
            fc.pre(auth[i] !== ch);
            const mutated = `${auth.slice(0, i)}${ch}${auth.slice(i + 1)}`;
            const res = await raw(path, { ...base, authorization: mutated }, body);
            assert.equal(res.status, 401, mutated);
          },
        ),
        { numRuns: 25 },
      );
    });
  });
}

const DAY = 86_400_000;
