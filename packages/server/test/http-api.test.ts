// The HTTPS API end to end on both databases: the foundation path, bad input, authentication,
// authorisation and tenant isolation. Every refusal is checked by code and message, and by what did
// not happen (no row written, no data of another tenant returned).
import assert from 'node:assert/strict';
import { existsSync, statSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { dialectCases } from './helpers/dialects.ts';
import {
  provisionTenant,
  rawHttps,
  request,
  startTestPlatform,
  TEST_STAFF_PASSWORD,
  type Tenant,
  type TestPlatform,
} from './helpers/test-platform.ts';

for (const dialect of await dialectCases()) {
  describe(`HTTPS API on ${dialect.name}`, { skip: dialect.skip }, () => {
    let tp: TestPlatform;
    let a: Tenant;
    let b: Tenant;

    before(async () => {
      tp = await startTestPlatform(dialect.name, { http: { bodyLimitBytes: 4096 } });
      a = await provisionTenant(tp, 3);
      b = await provisionTenant(tp, 1, a.adminToken);
    });
    after(() => tp?.close());

    const p = () => tp.platform;

    test('setup token is single use and leaves no file behind', async () => {
      assert.equal(existsSync(tp.platform.accounts.setupTokenPath), false);
      const again = await request(p(), 'POST', '/v1/setup', {
        body: { setupToken: p().setupToken, adminName: 'second', username: 'second', password: TEST_STAFF_PASSWORD },
      });
      assert.equal(again.status, 401);
      assert.equal(again.body.error.code, 'ERR_SETUP_TOKEN_INVALID');
      assert.equal(again.body.error.message, 'Setup token is invalid or already used');
      const admins = await tp.query<{ n: number }>('select count(*) as n from admins');
      assert.equal(Number(admins[0]!.n), 1);
    });

    test('[DEV-1] issued device IDs carry the vendor and product codes and are unique', async () => {
      const ids = a.devices.map((d) => d.id);
      assert.equal(new Set(ids).size, ids.length);
      for (const id of ids) assert.match(id, new RegExp(`^01${a.vendorCode}${a.productCode}[0-9a-f]{8}00$`));
      for (const d of a.devices) assert.match(d.secret, /^[A-Za-z0-9_-]{43}$/, '256-bit base64url secret');
    });

    test('[DEV-3] device secrets are stored only encrypted, never in clear', async () => {
      const rows = await tp.query<{ id: string; secret_ciphertext: Uint8Array }>(
        'select id, secret_ciphertext from devices',
      );
      assert.equal(rows.length, 4);
      for (const device of [...a.devices, ...b.devices]) {
        const row = rows.find((r) => r.id === device.id)!;
        const stored = Buffer.from(row.secret_ciphertext);
        assert.equal(stored.includes(Buffer.from(device.secret)), false);
        assert.equal(stored.toString('base64url').includes(device.secret), false);
        assert.equal(stored[0], 0x02, 'an envelope (format 2) under the tenant key');
        assert.ok(stored.length >= 3 + 60 + 12 + 43 + 16, 'header + wrapped data key + nonce + ciphertext + tag');
      }
    });

    test('device listing pages by ID and never shows secrets', async () => {
      const page = await request(p(), 'GET', `/v1/products/${a.productId}/devices?limit=2`, {
        token: a.vendorToken,
      });
      assert.equal(page.status, 200);
      assert.equal(page.body.items.length, 2);
      assert.ok(page.body.next);
      const rest = await request(p(), 'GET', `/v1/products/${a.productId}/devices?limit=2&after=${page.body.next}`, {
        token: a.vendorToken,
      });
      assert.equal(rest.body.items.length, 1);
      assert.equal(rest.body.next, null);
      assert.doesNotMatch(page.text + rest.text, /secret/);
    });

    test('[ACC-5] an unknown body field is refused and nothing is created', async () => {
      const before = await tp.query<{ n: number }>('select count(*) as n from products');
      const res = await request(p(), 'POST', '/v1/products', {
        token: a.vendorToken,
        body: { name: 'Lamp', category: 'light', isAdmin: true },
      });
      assert.equal(res.status, 400);
      assert.equal(res.body.error.code, 'ERR_VALIDATION_UNKNOWN_FIELD');
      assert.equal(res.body.error.message, 'Unknown field body/isAdmin');
      assert.deepEqual(res.body.error.details, { field: 'body/isAdmin' });
      const after = await tp.query<{ n: number }>('select count(*) as n from products');
      assert.equal(Number(after[0]!.n), Number(before[0]!.n));
    });

    test('[ACC-5] an unknown query parameter is refused', async () => {
      const res = await request(p(), 'GET', `/v1/products/${a.productId}/devices?limit=2&admin=1`, {
        token: a.vendorToken,
      });
      assert.equal(res.status, 400);
      assert.equal(res.body.error.code, 'ERR_VALIDATION_UNKNOWN_FIELD');
      assert.equal(res.body.error.message, 'Unknown field querystring/admin');
    });

    test('[ACC-5] malformed JSON, wrong media type, empty and oversized bodies get distinct codes', async () => {
      const malformed = await request(p(), 'POST', '/v1/products', {
        token: a.vendorToken,
        rawBody: '{"name": "Lamp",',
      });
      assert.equal(malformed.status, 400);
      assert.equal(malformed.body.error.code, 'ERR_HTTP_MALFORMED_JSON');
      assert.equal(malformed.body.error.message, 'Request body is not valid JSON');

      const text = await request(p(), 'POST', '/v1/products', {
        token: a.vendorToken,
        rawBody: 'name=Lamp',
        contentType: 'text/plain',
      });
      assert.equal(text.status, 415);
      assert.equal(text.body.error.code, 'ERR_HTTP_UNSUPPORTED_MEDIA_TYPE');

      const empty = await request(p(), 'POST', '/v1/products', {
        token: a.vendorToken,
        rawBody: '',
        contentType: 'application/json',
      });
      assert.equal(empty.status, 400);
      assert.ok(['ERR_HTTP_EMPTY_BODY', 'ERR_VALIDATION_FAILED'].includes(empty.body.error.code), empty.text);

      const huge = await request(p(), 'POST', '/v1/products', {
        token: a.vendorToken,
        body: { name: 'x'.repeat(5000), category: 'light' },
      });
      assert.equal(huge.status, 413);
      assert.equal(huge.body.error.code, 'ERR_HTTP_BODY_TOO_LARGE');
    });

    test('[ACC-5] wrong types, missing fields and out-of-range values name the field', async () => {
      const cases: Array<[unknown, string]> = [
        [{ count: '3' }, 'body/count must be integer'],
        [{ count: 0 }, 'body/count must be >= 1'],
        [{}, "body must have required property 'count'"],
        [{ count: 2.5 }, 'body/count must be integer'],
      ];
      for (const [body, message] of cases) {
        const res = await request(p(), 'POST', `/v1/products/${a.productId}/devices`, {
          token: a.vendorToken,
          body,
        });
        assert.equal(res.status, 400, JSON.stringify(body));
        assert.equal(res.body.error.code, 'ERR_VALIDATION_FAILED');
        assert.equal(res.body.error.message, message);
      }
      const devices = await tp.query<{ n: number }>('select count(*) as n from devices where product_id = $1', [
        a.productId,
      ]);
      assert.equal(Number(devices[0]!.n), 3, 'no device was created by a refused request');
    });

    test('[DEV-1] a device ID of the wrong shape is refused with what is wrong', async () => {
      const cases: Array<[string, string]> = [
        ['abc', 'Device ID is malformed: device ID must be 24 hex digits, got 3 characters'],
        ['01ABCDEF0123456789abcdef', 'Device ID is malformed: device ID must contain only lower-case hex digits'],
        ['02abcdef0123456789abcdef', 'Device ID is malformed: device ID spec version must be 01'],
      ];
      for (const [id, message] of cases) {
        const res = await request(p(), 'GET', `/v1/devices/${id}`, { token: a.vendorToken });
        assert.equal(res.status, 400);
        assert.equal(res.body.error.code, 'ERR_DEVICE_ID_INVALID');
        assert.equal(res.body.error.message, message);
      }
    });

    test('authentication: missing, malformed and unknown credentials are refused alike', async () => {
      const none = await request(p(), 'GET', '/v1/products');
      assert.equal(none.status, 401);
      assert.equal(none.body.error.code, 'ERR_AUTH_REQUIRED');
      assert.match(String(none.headers['www-authenticate']), /^Bearer/);
      for (const header of ['Basic dXNlcjpwYXNz', 'Bearer', `Bearer ${a.vendorToken.secret}`, 'Bearer cas_vnd_short']) {
        const res = await request(p(), 'GET', '/v1/products', { headers: { authorization: header } });
        assert.equal(res.status, 401, header);
        assert.equal(res.body.error.code, 'ERR_AUTH_INVALID');
        assert.equal(res.body.error.message, 'Invalid credentials');
      }
    });

    test('[ORG-3] roles: vendors cannot use administrator routes and administrators cannot act as vendors', async () => {
      const vendorTriesAdmin = await request(p(), 'POST', '/v1/vendors', {
        token: a.vendorToken,
        body: { name: 'Rogue' },
      });
      assert.equal(vendorTriesAdmin.status, 403);
      assert.equal(vendorTriesAdmin.body.error.code, 'ERR_AUTH_FORBIDDEN');
      const credential = await request(p(), 'POST', `/v1/vendors/${b.vendorId}/access-keys`, {
        token: a.vendorToken,
        body: { label: 'steal' },
      });
      assert.equal(credential.status, 403);
      const adminTriesVendor = await request(p(), 'POST', '/v1/products', {
        token: a.adminToken,
        body: { name: 'X', category: 'x' },
      });
      assert.equal(adminTriesVendor.status, 403);
      const vendors = await tp.query<{ n: number }>('select count(*) as n from vendors');
      assert.equal(Number(vendors[0]!.n), 2, 'no vendor was created');
      const keys = await tp.query<{ n: number }>('select count(*) as n from operator_keys');
      assert.equal(Number(keys[0]!.n), 2, 'no access key was issued');
    });

    test("[ORG-3] a vendor sees another tenant's objects exactly as if they did not exist", async () => {
      const theirs = a.devices[0]!.id;
      const missing = `01${a.vendorCode}${a.productCode}0000000000`;
      for (const path of [
        `/v1/devices/${theirs}`,
        `/v1/devices/${theirs}/telemetry/latest`,
        `/v1/devices/${theirs}/telemetry`,
      ]) {
        const res = await request(p(), 'GET', path, { token: b.vendorToken });
        const ghost = await request(p(), 'GET', path.replace(theirs, missing), { token: b.vendorToken });
        assert.equal(res.status, 404, path);
        assert.equal(res.body.error.code, 'ERR_DEVICE_NOT_FOUND');
        assert.deepEqual({ ...res.body.error, requestId: '' }, { ...ghost.body.error, requestId: '' });
        assert.equal(res.text.includes(theirs), false, 'nothing of the other tenant is returned');
      }
      const product = await request(p(), 'GET', `/v1/products/${a.productId}`, { token: b.vendorToken });
      assert.equal(product.status, 404);
      assert.equal(product.body.error.code, 'ERR_PRODUCT_NOT_FOUND');
      const create = await request(p(), 'POST', `/v1/products/${a.productId}/devices`, {
        token: b.vendorToken,
        body: { count: 5 },
      });
      assert.equal(create.status, 404);
      const count = await tp.query<{ n: number }>('select count(*) as n from devices where product_id = $1', [
        a.productId,
      ]);
      assert.equal(Number(count[0]!.n), 3, "no device was added to the other tenant's product");
      const list = await request(p(), 'GET', '/v1/products', { token: b.vendorToken });
      assert.deepEqual(
        list.body.items.map((x: { id: string }) => x.id),
        [b.productId],
      );
    });

    test('telemetry of a device with none yet is a clear 404', async () => {
      const res = await request(p(), 'GET', `/v1/devices/${b.devices[0]!.id}/telemetry/latest`, {
        token: b.vendorToken,
      });
      assert.equal(res.status, 404);
      assert.equal(res.body.error.code, 'ERR_TELEMETRY_NOT_FOUND');
    });

    test('requests too broken to route still get the one error format', async () => {
      const garbage = await rawHttps(p(), 'NOT-HTTP\r\n\r\n');
      assert.match(garbage, /^HTTP\/1\.1 400 Bad Request\r\n/);
      assert.match(garbage, /"code":"ERR_HTTP_BAD_REQUEST"/);
      const huge = await rawHttps(p(), `GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`);
      assert.match(huge, /^HTTP\/1\.1 431 /);
      assert.match(huge, /"code":"ERR_HTTP_HEADERS_TOO_LARGE"/);
    });

    test('unknown routes get the one error format', async () => {
      const res = await request(p(), 'GET', '/v1/nothing-here');
      assert.equal(res.status, 404);
      assert.equal(res.body.error.code, 'ERR_HTTP_NOT_FOUND');
      assert.match(res.body.error.requestId, /^[0-9a-f-]{36}$/);
      assert.equal(res.headers['x-request-id'], res.body.error.requestId);
    });

    test('[OPS-1] health, readiness and the OpenAPI document are served', async () => {
      const health = await request(p(), 'GET', '/healthz');
      assert.deepEqual(health.body, { status: 'ok' });
      const ready = await request(p(), 'GET', '/readyz');
      assert.deepEqual(ready.body, { status: 'ready', checks: { storage: 'ok', mqtt: 'ok' } });
      const openapi = await request(p(), 'GET', '/openapi.json');
      assert.equal(openapi.body.openapi, '3.1.0');
      for (const path of [
        '/v1/setup',
        '/v1/vendors',
        '/v1/products',
        '/v1/products/{productId}/devices',
        '/v1/devices/{deviceId}/telemetry/latest',
      ]) {
        assert.ok(openapi.body.paths[path], `${path} is documented`);
      }
      assert.equal(
        openapi.body.paths['/v1/products'].post.requestBody.content['application/json'].schema.additionalProperties,
        false,
      );
    });

    test('security headers are set on every response', async () => {
      const res = await request(p(), 'GET', '/healthz');
      assert.match(String(res.headers['strict-transport-security']), /max-age=\d+/);
      assert.equal(res.headers['x-content-type-options'], 'nosniff');
      assert.equal(res.headers['x-frame-options'], 'SAMEORIGIN');
      assert.equal(res.headers['cache-control'], 'no-store');
      assert.ok(res.headers['content-security-policy']);
    });

    test('development files are private to the owner (0600)', () => {
      for (const file of ['root.key', 'pki/ca.key', 'pki/server.key', 'pki/ca.crt', 'pki/server.crt']) {
        assert.equal(statSync(`${tp.dataDir}/${file}`).mode & 0o777, 0o600, file);
      }
      if (dialect.name === 'sqlite') assert.equal(statSync(`${tp.dataDir}/castellan.db`).mode & 0o777, 0o600);
    });
  });
}
