// Registered hardware IDs (DEV-4) on both databases, through the device SDK: the vendor uploads MAC/IMEI
// lists (stored only as a blind index) and issues a product secret (shown once); a device registers over
// HTTPS with a listed, unused hardware ID and an HMAC proof under the product secret, and receives its
// own secret sealed for it. The MAC alone, an unlisted or reused MAC, a replay or an old secret never work.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { DeviceClient, DeviceConnectError, DeviceHttpClient } from '@castellan/device';
import { signRegistration } from '@castellan/protocol';
import { dialectCases } from '../helpers/dialects.ts';
import {
  provisionTenant,
  request,
  startTestPlatform,
  type Tenant,
  type TestPlatform,
} from '../helpers/test-platform.ts';

const REFUSED = { code: 'ERR_DEVICE_REGISTRATION_FAILED', message: 'Device registration failed' };

for (const dialect of await dialectCases()) {
  describe(`hardware-ID registration on ${dialect.name}`, { skip: dialect.skip }, () => {
    let tp: TestPlatform;
    let tenant: Tenant;
    let other: Tenant;
    let productId: string;
    let productSecret: string;

    before(async () => {
      tp = await startTestPlatform(dialect.name);
      tenant = await provisionTenant(tp, 0);
      other = await provisionTenant(tp, 0, tenant.adminToken);
      const product = await request(tp.platform, 'POST', '/v1/products', {
        token: tenant.vendorToken,
        body: { name: 'Plug', category: 'plug', authModes: ['hardware-id'] },
      });
      assert.equal(product.status, 201, product.text);
      productId = product.body.id;
    });
    after(() => tp?.close());

    const upload = (ids: string[], id = productId, token = tenant.vendorToken) =>
      request(tp.platform, 'POST', `/v1/products/${id}/hardware-ids`, { token, body: { ids } });
    const register = (body: unknown) => request(tp.platform, 'POST', '/v1/device-api/register', { body });
    const sdkRegister = (hardwareId: string, secret = productSecret, id = productId) =>
      DeviceHttpClient.register({
        baseUrl: tp.platform.httpUrl,
        ca: tp.platform.caPem,
        productId: id,
        hardwareId,
        productSecret: secret,
      });
    const deviceCount = async () =>
      Number(
        (await tp.query<{ n: number }>('select count(*) as n from devices where product_id = $1', [productId]))[0]!.n,
      );
    const assertRefused = (
      res: { status: number; body: { error: { code: string; message: string } } },
      label: string,
    ) => {
      assert.equal(res.status, 401, `${label}: ${JSON.stringify(res.body)}`);
      assert.deepEqual({ code: res.body.error.code, message: res.body.error.message }, REFUSED, label);
    };

    test('[DEV-4] the vendor uploads hardware IDs (normalised, blind-indexed) and issues a product secret shown once', async () => {
      const res = await upload([
        'AA:BB:CC:00:11:22',
        'aa-bb-cc-00-11-23',
        'aabb.cc00.1124',
        'AABBCC001122',
        '352099001761481',
      ]);
      assert.equal(res.status, 201, res.text);
      assert.deepEqual(res.body, { added: 4, duplicates: 1, registered: 4, used: 0 });
      // One bad entry refuses the whole upload, naming it.
      const bad = await upload(['aa:bb:cc:00:11:30', 'not-a-mac']);
      assert.equal(bad.status, 400);
      assert.equal(bad.body.error.code, 'ERR_HARDWARE_ID_INVALID');
      assert.deepEqual(bad.body.error.details, { index: 1 });
      const counts = await request(tp.platform, 'GET', `/v1/products/${productId}/hardware-ids`, {
        token: tenant.vendorToken,
      });
      assert.deepEqual(counts.body, { registered: 4, used: 0 });
      const tooMany = await upload(Array.from({ length: 10_001 }, () => 'aa:bb:cc:00:11:22'));
      assert.equal(tooMany.status, 400);
      // Not in clear anywhere: the rows hold a 32-byte keyed index.
      const rows = await tp.query<{ hardware_index: Uint8Array; kind: string }>(
        'select hardware_index, kind from product_hardware_ids where product_id = $1',
        [productId],
      );
      assert.equal(rows.length, 4);
      for (const row of rows) assert.equal(Buffer.from(row.hardware_index).length, 32);
      assert.deepEqual(rows.map((r) => r.kind).sort(), ['imei', 'mac', 'mac', 'mac']);
      if (dialect.name === 'sqlite') {
        const file = readFileSync(join(tp.dataDir, 'castellan.db'));
        for (const needle of ['aabbcc001122', 'AA:BB:CC:00:11:22', '352099001761481']) {
          assert.equal(file.includes(needle), false, `${needle} is not in the database file`);
        }
      }

      const issued = await request(tp.platform, 'POST', `/v1/products/${productId}/secret`, {
        token: tenant.vendorToken,
      });
      assert.equal(issued.status, 201, issued.text);
      assert.match(issued.body.secret, /^cas_prs_[A-Za-z0-9_-]{43}$/);
      productSecret = issued.body.secret;
      const stored = await tp.query<{ secret_ciphertext: Uint8Array }>(
        'select secret_ciphertext from products where id = $1',
        [productId],
      );
      assert.equal(Buffer.from(stored[0]!.secret_ciphertext).includes(Buffer.from(productSecret)), false);
      const product = await request(tp.platform, 'GET', `/v1/products/${productId}`, { token: tenant.vendorToken });
      assert.equal(product.body.secretIssuedAt, issued.body.issuedAt);
      assert.equal(JSON.stringify(product.body).includes(productSecret), false, 'shown only once');
    });

    test('[DEV-4] products without the hardware-id mode and other tenants are refused', async () => {
      const plain = await request(tp.platform, 'POST', '/v1/products', {
        token: tenant.vendorToken,
        body: { name: 'Lamp', category: 'lamp' },
      });
      const disabled = await upload(['aa:bb:cc:00:22:00'], plain.body.id);
      assert.equal(disabled.status, 409);
      assert.equal(disabled.body.error.code, 'ERR_PRODUCT_HARDWARE_IDS_DISABLED');
      const secret = await request(tp.platform, 'POST', `/v1/products/${plain.body.id}/secret`, {
        token: tenant.vendorToken,
      });
      assert.equal(secret.body.error.code, 'ERR_PRODUCT_HARDWARE_IDS_DISABLED');
      const foreign = await upload(['aa:bb:cc:00:22:01'], productId, other.vendorToken);
      assert.equal(foreign.status, 404);
      const foreignSecret = await request(tp.platform, 'POST', `/v1/products/${productId}/secret`, {
        token: other.vendorToken,
      });
      assert.equal(foreignSecret.status, 404);
    });

    test('[DEV-4] a listed MAC with the product-secret proof registers through the SDK; its secret works on MQTT and HTTPS', async () => {
      const before_ = await deviceCount();
      const registered = await sdkRegister('AA:BB:CC:00:11:22');
      assert.match(registered.deviceId, /^[0-9a-f]{24}$/);
      assert.equal(await deviceCount(), before_ + 1);
      const mqtt = await DeviceClient.connect({
        url: tp.platform.mqttUrl,
        ca: tp.platform.caPem,
        deviceId: registered.deviceId,
        secret: registered.secret,
      });
      await mqtt.publishTelemetry({ on: true });
      await mqtt.close();
      assert.equal((await registered.client.reportTelemetry({ on: false })).status, 202);
      const counts = await request(tp.platform, 'GET', `/v1/products/${productId}/hardware-ids`, {
        token: tenant.vendorToken,
      });
      assert.deepEqual(counts.body, { registered: 4, used: 1 });
      await tp.platform.audit.flush();
      const audit = await tp.platform.audit.query({ type: 'device.register', target: registered.deviceId, limit: 5 });
      assert.equal(audit.length, 1);
      assert.equal(JSON.stringify(audit).includes('aabbcc001122'), false, 'the MAC is not in the audit log');
      assert.equal(tp.logs.text().includes(registered.secret), false);

      // The product allows only hardware-id: a device issued any other way cannot use its secret.
      const issued = await request(tp.platform, 'POST', `/v1/products/${productId}/devices`, {
        token: tenant.vendorToken,
        body: { count: 1 },
      });
      const plain = issued.body.devices[0] as { id: string; secret: string };
      await assert.rejects(
        DeviceClient.connect({
          url: tp.platform.mqttUrl,
          ca: tp.platform.caPem,
          deviceId: plain.id,
          secret: plain.secret,
        }),
        (e: unknown) => e instanceof DeviceConnectError,
      );
    });

    test('[DEV-4] the MAC alone, unlisted or reused MACs, replays, stale or foreign proofs never register', async () => {
      const before_ = await deviceCount();
      const mac = 'mac:aabbcc001123';
      const good = signRegistration({ productId, hardwareId: mac, productSecret });
      const cases: Array<[string, unknown]> = [
        ['the MAC with no valid proof', { ...good, proof: 'A'.repeat(43) }],
        ['the MAC with the MAC as the secret', signRegistration({ productId, hardwareId: mac, productSecret: mac })],
        ['an unlisted MAC', signRegistration({ productId, hardwareId: 'aa:bb:cc:00:99:99', productSecret })],
        ['a used MAC', signRegistration({ productId, hardwareId: 'aa:bb:cc:00:11:22', productSecret })],
        ['a stale ts', signRegistration({ productId, hardwareId: mac, productSecret, now: Date.now() - 301_000 })],
        ['a non-canonical hardware ID', { ...good, hardwareId: 'AA:BB:CC:00:11:23' }],
        ['the proof moved to another hardware ID', { ...good, hardwareId: 'mac:aabbcc001124' }],
        ['an unknown product', { ...good, productId: `prd_${'A'.repeat(22)}` }],
      ];
      for (const [label, body] of cases) assertRefused(await register(body), label);
      assert.equal(await deviceCount(), before_, 'no device was created by any refused attempt');

      // The valid request works once; its replay is refused.
      assert.equal((await register(good)).status, 201);
      assertRefused(await register(good), 'a replayed registration');
      // After a rotation, firmware with the old product secret cannot register listed hardware.
      const rotated = await request(tp.platform, 'POST', `/v1/products/${productId}/secret`, {
        token: tenant.vendorToken,
      });
      assert.equal(rotated.status, 201);
      assertRefused(
        await register(signRegistration({ productId, hardwareId: 'aa:bb:cc:00:11:24', productSecret })),
        'the old product secret',
      );
      productSecret = rotated.body.secret;
      await tp.platform.audit.flush();
      const reasons = new Set(
        (await tp.platform.audit.query({ type: 'device.register', limit: 100 }))
          .filter((e) => e.result === 'failure')
          .map((e) => e.details.reason),
      );
      for (const r of ['bad-proof', 'hardware-id-unlisted-or-used', 'stale-ts', 'replayed-nonce'])
        assert.ok(reasons.has(r), r);
    });

    test('[DEV-4] two devices racing for one hardware ID: exactly one gets it', async () => {
      const mac = 'aa:bb:cc:00:11:24';
      const results = await Promise.allSettled([sdkRegister(mac), sdkRegister(mac), sdkRegister(mac)]);
      assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1);
      const counts = await request(tp.platform, 'GET', `/v1/products/${productId}/hardware-ids`, {
        token: tenant.vendorToken,
      });
      assert.equal(counts.body.used, 3);
    });
  });
}
