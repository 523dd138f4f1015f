// Trusted time (DEV-6, issue 8) on both databases, through the device SDK's DeviceHttpClient: a device
// without a usable clock gets the platform's time signed together with its own fresh nonce by the TLS
// server key, checks it against the pinned CA, and can then sign requests in timestamp mode. Forged,
// replayed (another nonce) and foreign-CA answers are refused and leave the device's clock alone.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readFileSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { DeviceHttpClient, DeviceHttpError } from '@castellan/device';
import { newTimeNonce, signTime, verifySignedTime } from '@castellan/protocol';
import { dialectCases } from '../helpers/dialects.ts';
import {
  provisionTenant,
  request,
  startTestPlatform,
  type Tenant,
  type TestPlatform,
} from '../helpers/test-platform.ts';
import { makeServerChain, type ServerChain } from '../helpers/tls-chains.ts';

const V = JSON.parse(
  readFileSync(new URL('../../../protocol/vectors/signed-time.json', import.meta.url), 'utf8'),
) as Record<
  'nonce' | 'caPem' | 'leafPem' | 'leafKeyPem' | 'rogueCaPem' | 'rogueLeafPem' | 'rogueLeafKeyPem',
  string
> & {
  time: number;
};

const YEAR_2001 = Date.UTC(2001, 0, 1);

/** A device clock stuck near 1 January 2001 (it still ticks). */
const wrongClock = () => {
  const start = Date.now();
  return () => YEAR_2001 + (Date.now() - start);
};

/** An HTTPS server answering GET /v1/device-api/time?nonce=… with `answer(nonce)`. */
async function timeServer(
  tls: { key: string; cert: string },
  answer: (nonce: string) => unknown,
): Promise<{ url: string; close: () => Promise<void> }> {
  const server = https.createServer(tls, (req, res) => {
    const nonce = new URL(req.url ?? '/', 'https://x').searchParams.get('nonce') ?? '';
    Promise.resolve(answer(nonce)).then(
      (body) => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body)),
      () => res.writeHead(500).end(),
    );
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    url: `https://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

for (const dialect of await dialectCases()) {
  describe(`trusted time on ${dialect.name}`, { skip: dialect.skip }, () => {
    let tp: TestPlatform;
    let tenant: Tenant;
    let pki: { key: string; cert: string };
    let rogue: ServerChain;

    before(async () => {
      tp = await startTestPlatform(dialect.name);
      tenant = await provisionTenant(tp, 1);
      pki = {
        key: readFileSync(join(tp.dataDir, 'pki', 'server.key'), 'utf8'),
        cert: readFileSync(join(tp.dataDir, 'pki', 'server.crt'), 'utf8'),
      };
      rogue = await makeServerChain('p256', 2, 'Castellan Development');
    });
    after(() => tp?.close());

    const device = (baseUrl: string, over: Partial<ConstructorParameters<typeof DeviceHttpClient>[0]> = {}) =>
      new DeviceHttpClient({
        baseUrl,
        ca: tp.platform.caPem,
        deviceId: tenant.devices[0]!.id,
        secret: tenant.devices[0]!.secret,
        clock: wrongClock(),
        ...over,
      });

    /** The platform's real signed answer for `nonce`, fetched as a man in the middle would. */
    const realAnswer = async (nonce: string) =>
      (await request(tp.platform, 'GET', `/v1/device-api/time?nonce=${nonce}`)).body as Record<string, unknown>;

    test('[DEV-6] a device whose clock says 2001 syncs to signed time, then passes timestamp authentication', async () => {
      const d = device(tp.platform.httpUrl);
      const refused = await d.reportTelemetry({ temperature: 1 });
      assert.equal(refused.status, 401, 'a request signed in 2001 is outside the ±300 s window');
      assert.equal((refused.body as { error: { code: string } }).error.code, 'ERR_DEVICE_AUTH_FAILED');
      const offset = await d.syncClock();
      assert.equal(d.clockSource, 'signed');
      assert.ok(offset > 25 * 365 * 86_400_000, `offset ${offset}`);
      assert.ok(Math.abs(d.now() - Date.now()) < 5_000, 'the corrected clock is the platform’s');
      const accepted = await d.reportTelemetry({ temperature: 21.5 });
      assert.equal(accepted.status, 202, JSON.stringify(accepted.body));
      assert.deepEqual((await tp.platform.devices.latestTelemetry(tenant.devices[0]!.id))?.payload, {
        temperature: 21.5,
      });
    });

    test('[DEV-6] the wire answer: signed with the TLS key over castellan-time-v1|nonce|time; no nonce, plain time', async () => {
      const nonce = newTimeNonce();
      const res = await request(tp.platform, 'GET', `/v1/device-api/time?nonce=${nonce}`);
      assert.equal(res.status, 200);
      assert.deepEqual(Object.keys(res.body).sort(), ['certificate', 'nonce', 'now', 'signature', 'time']);
      assert.equal(res.body.nonce, nonce);
      assert.equal(res.body.now, res.body.time);
      assert.equal(
        res.body.certificate.trim(),
        pki.cert.trim(),
        'the signing certificate is the TLS server certificate',
      );
      assert.equal(res.headers['cache-control'], 'no-store');
      const time = verifySignedTime(res.body, { ca: tp.platform.caPem, nonce });
      assert.ok(Math.abs(time - Date.now()) < 5_000);
      const plain = await request(tp.platform, 'GET', '/v1/device-api/time');
      assert.deepEqual(Object.keys(plain.body), ['now']);
      for (const bad of ['short', 'A'.repeat(129), 'AAAAAAAAAAAAAAAAAAAAAA%2B']) {
        const res400 = await request(tp.platform, 'GET', `/v1/device-api/time?nonce=${bad}`);
        assert.equal(res400.status, 400, bad);
        assert.equal(res400.body.error.code, 'ERR_VALIDATION_FAILED');
      }
    });

    test('[DEV-6] forged, replayed (another nonce) and foreign-CA answers are refused; the clock stays wrong', async () => {
      const cases: Array<[string, (nonce: string) => Promise<unknown>]> = [
        [
          'forged signature',
          async (nonce) => {
            const real = await realAnswer(nonce);
            const sig = Buffer.from(real.signature as string, 'base64url');
            sig[5]! ^= 0x01;
            return { ...real, signature: sig.toString('base64url') };
          },
        ],
        ['shifted time', async (nonce) => ({ ...(await realAnswer(nonce)), time: YEAR_2001 + 5_000 })],
        ['replayed answer for another nonce', async () => realAnswer(newTimeNonce())],
        ['another nonce echoed as ours', async (nonce) => ({ ...(await realAnswer(newTimeNonce())), nonce })],
        [
          'certificate not under the pinned CA',
          (nonce) =>
            Promise.resolve(signTime({ key: rogue.keyPem, certificates: rogue.certPem }, nonce, YEAR_2001 + 5_000)),
        ],
        [
          'foreign CA passed off as an intermediate',
          (nonce) =>
            Promise.resolve({
              ...signTime({ key: rogue.keyPem, certificates: rogue.certPem }, nonce, YEAR_2001 + 5_000),
              chain: [rogue.rootPem],
            }),
        ],
        ['unsigned answer to a signed request', async () => ({ now: YEAR_2001 + 5_000 })],
      ];
      for (const [label, answer] of cases) {
        // A man in the middle holding the platform's own TLS certificate (the transport is not the issue).
        const mitm = await timeServer(pki, answer);
        try {
          const d = device(mitm.url, { requireSignedTime: true });
          await assert.rejects(d.syncClock(), (error: unknown) => {
            assert.ok(error instanceof DeviceHttpError, `${label}: ${String(error)}`);
            assert.equal(error.code, 'ERR_TIME_NOT_AUTHENTIC', label);
            return true;
          });
          assert.equal(d.clockSource, null, label);
          assert.ok(Math.abs(d.now() - YEAR_2001) < 60_000, `${label}: the clock was not moved`);
        } finally {
          await mitm.close();
        }
      }
      // The same server relaying the real answer untouched is accepted (the harness itself is sound).
      const relay = await timeServer(pki, (nonce) => realAnswer(nonce));
      try {
        const d = device(relay.url, { requireSignedTime: true });
        await d.syncClock();
        assert.equal(d.clockSource, 'signed');
      } finally {
        await relay.close();
      }
    });

    test('[DEV-6] when TLS refuses the certificate dates (clock far off), the chain is checked by signature and only signed time is taken', async () => {
      // The vector leaf expired on 2026-01-01 by this machine's clock, but was valid at its signed time.
      const tls = { key: V.leafKeyPem, cert: V.leafPem };
      const genuine = await timeServer(tls, (nonce) =>
        signTime({ key: V.leafKeyPem, certificates: V.leafPem }, nonce, V.time),
      );
      const unsigned = await timeServer(tls, () => ({ now: V.time }));
      const foreign = await timeServer({ key: V.rogueLeafKeyPem, cert: V.rogueLeafPem }, (nonce) =>
        signTime({ key: V.rogueLeafKeyPem, certificates: V.rogueLeafPem }, nonce, V.time),
      );
      const client = (baseUrl: string) =>
        device(baseUrl, { ca: V.caPem, servername: 'castellan.example.com', clock: Date.now });
      try {
        // The ordinary pinned request is refused by TLS for the dates …
        const plain = client(genuine.url);
        await assert.rejects(plain.request('GET', '/v1/device-api/time'), { code: 'CERT_HAS_EXPIRED' });
        // … syncClock falls back, verifies the signed answer and takes its time.
        const offset = await plain.syncClock();
        assert.equal(plain.clockSource, 'signed');
        assert.ok(Math.abs(plain.now() - V.time) < 5_000, `offset ${offset}`);
        // On that fallback an unsigned answer is never used, even without requireSignedTime.
        await assert.rejects(client(unsigned.url).syncClock(), { code: 'ERR_TIME_NOT_AUTHENTIC' });
        // A server under another CA (same names) is refused at the TLS step, before any answer is read.
        await assert.rejects(client(foreign.url).syncClock(), { code: 'ERR_PLATFORM_NOT_AUTHENTIC' });
        // A wrong name is refused too.
        const misnamed = device(genuine.url, { ca: V.caPem, servername: 'other.example.com' });
        await assert.rejects(misnamed.syncClock(), { code: 'ERR_PLATFORM_NOT_AUTHENTIC' });
      } finally {
        await Promise.all([genuine.close(), unsigned.close(), foreign.close()]);
      }
    });

    test('[DEV-6] a configured P-256 chain with an intermediate signs time; an RSA TLS key gives ERR_TIME_SIGNING_UNAVAILABLE', async () => {
      for (const [type, levels] of [
        ['p256', 3],
        ['rsa2048', 2],
      ] as const) {
        const chain = await makeServerChain(type, levels, `Configured ${type}`);
        const dir = tp.dataDir;
        const files = {
          certFile: join(dir, `${type}.crt`),
          keyFile: join(dir, `${type}.key`),
          caFile: join(dir, `${type}-ca.crt`),
        };
        writeFileSync(files.certFile, chain.certPem);
        writeFileSync(files.keyFile, chain.keyPem, { mode: 0o600 });
        writeFileSync(files.caFile, chain.rootPem);
        const other = await startTestPlatform(dialect.name, { tls: files });
        try {
          const nonce = newTimeNonce();
          const res = await request(other.platform, 'GET', `/v1/device-api/time?nonce=${nonce}`);
          const d = new DeviceHttpClient({
            baseUrl: other.platform.httpUrl,
            ca: chain.rootPem,
            deviceId: tenant.devices[0]!.id,
            secret: tenant.devices[0]!.secret,
            clock: wrongClock(),
          });
          if (type === 'p256') {
            assert.equal(res.status, 200);
            assert.equal((res.body.chain as string[]).length, 1, 'the intermediate travels in chain');
            assert.ok(Math.abs(verifySignedTime(res.body, { ca: chain.rootPem, nonce }) - Date.now()) < 5_000);
            await d.syncClock();
            assert.equal(d.clockSource, 'signed');
          } else {
            assert.equal(res.status, 503);
            assert.equal(res.body.error.code, 'ERR_TIME_SIGNING_UNAVAILABLE');
            assert.equal(res.body.error.message, 'Signed time is not available: the TLS server key is not ECDSA P-256');
            assert.equal((await request(other.platform, 'GET', '/v1/device-api/time')).status, 200);
            // The SDK falls back to the plain time unless signed time is required.
            await d.syncClock();
            assert.equal(d.clockSource, 'unsigned');
            assert.ok(Math.abs(d.now() - Date.now()) < 5_000);
            const strict = new DeviceHttpClient({
              baseUrl: other.platform.httpUrl,
              ca: chain.rootPem,
              deviceId: tenant.devices[0]!.id,
              secret: tenant.devices[0]!.secret,
              requireSignedTime: true,
            });
            await assert.rejects(strict.syncClock(), { code: 'ERR_TIME_NOT_AUTHENTIC' });
          }
        } finally {
          await other.close();
        }
      }
    });
  });
}
