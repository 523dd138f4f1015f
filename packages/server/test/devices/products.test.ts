// Products v2 (DEV-2) on both databases: security level, allowed authentication modes (DEV-5: L2/L3 only
// the certificate mode, and an L2 product refuses a secret-only device over MQTT and HTTPS alike), the
// data-point schema (validated strictly, and enforced on telemetry through the device SDK), limits and
// retention. Property tests (fast-check) for the schema checker.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { DeviceClient, DeviceConnectError, DeviceHttpClient } from '@castellan/device';
import fc from 'fast-check';
import {
  checkCommand,
  checkDesiredState,
  checkEvent,
  checkTelemetry,
  checkValue,
  type DataPointField,
  type DataPointSchema,
  parseDataPointSchema,
  ProductSchemaError,
} from '../../src/devices/product-schema.ts';
import { dialectCases } from '../helpers/dialects.ts';
import {
  provisionTenant,
  request,
  startTestPlatform,
  type Tenant,
  type TestPlatform,
} from '../helpers/test-platform.ts';

const THERMOSTAT = {
  properties: [
    { code: 'temperature', type: 'number', min: -40, max: 125, step: 0.1, unit: '°C', access: 'ro' },
    { code: 'target', type: 'integer', min: 5, max: 30, access: 'rw' },
    { code: 'mode', type: 'enum', values: ['heat', 'cool', 'off'], access: 'rw' },
    { code: 'on', type: 'bool', access: 'rw' },
    { code: 'label', type: 'string', maxLength: 8, access: 'rw' },
  ],
  commands: [{ code: 'boost', params: [{ code: 'minutes', type: 'integer', min: 1, max: 120 }] }],
  events: [{ code: 'fault', params: [{ code: 'code', type: 'integer' }] }],
};

for (const dialect of await dialectCases()) {
  describe(`products v2 on ${dialect.name}`, { skip: dialect.skip }, () => {
    let tp: TestPlatform;
    let tenant: Tenant;
    let other: Tenant;

    before(async () => {
      tp = await startTestPlatform(dialect.name);
      tenant = await provisionTenant(tp, 0);
      other = await provisionTenant(tp, 0, tenant.adminToken);
    });
    after(() => tp?.close());

    const createProduct = (body: Record<string, unknown>, token = tenant.vendorToken) =>
      request(tp.platform, 'POST', '/v1/products', {
        token,
        body: { name: 'Thermostat', category: 'thermostat', ...body },
      });
    const issueDevices = async (productId: string, count = 1) => {
      const res = await request(tp.platform, 'POST', `/v1/products/${productId}/devices`, {
        token: tenant.vendorToken,
        body: { count },
      });
      assert.equal(res.status, 201, res.text);
      return res.body.devices as { id: string; secret: string }[];
    };

    test('[DEV-2] a product carries its level, modes, data points and retention; defaults are L1 + secret', async () => {
      const res = await createProduct({
        securityLevel: 'L1',
        authModes: ['secret', 'hardware-id'],
        dataPoints: THERMOSTAT,
        telemetryRetentionDays: 90,
        reportLimits: { perSecond: 5 },
      });
      assert.equal(res.status, 201, res.text);
      assert.equal(res.body.securityLevel, 'L1');
      assert.deepEqual(res.body.authModes, ['secret', 'hardware-id']);
      assert.deepEqual(res.body.dataPoints, THERMOSTAT);
      assert.equal(res.body.telemetryRetentionDays, 90);
      assert.equal(res.body.secretIssuedAt, null);
      const read = await request(tp.platform, 'GET', `/v1/products/${res.body.id}`, { token: tenant.vendorToken });
      assert.deepEqual(read.body, res.body);
      const plain = await createProduct({});
      assert.equal(plain.body.securityLevel, 'L1');
      assert.deepEqual(plain.body.authModes, ['secret']);
      assert.equal(plain.body.dataPoints, null);
      assert.equal(plain.body.telemetryRetentionDays, null);
      const l3 = await createProduct({ securityLevel: 'L3' });
      assert.deepEqual(l3.body.authModes, ['certificate'], 'L2/L3 default to the certificate mode');
    });

    test('[DEV-5] L2/L3 products accept only the certificate mode; the error names what is not allowed', async () => {
      const l2 = await createProduct({ securityLevel: 'L2', authModes: ['secret'] });
      assert.equal(l2.status, 400);
      assert.equal(l2.body.error.code, 'ERR_PRODUCT_AUTH_MODE_NOT_ALLOWED');
      assert.equal(
        l2.body.error.message,
        'Products of security level L2 accept only the certificate authentication mode; not allowed: secret',
      );
      const l3 = await createProduct({ securityLevel: 'L3', authModes: ['certificate', 'hardware-id'] });
      assert.equal(l3.body.error.code, 'ERR_PRODUCT_AUTH_MODE_NOT_ALLOWED');
      assert.match(l3.body.error.message, /L3 .*not allowed: hardware-id$/);
      const dup = await createProduct({ authModes: ['secret', 'secret'] });
      assert.equal(dup.status, 400);
      // Raising an L1 product to L2 without giving up the secret is refused; with it, allowed.
      const p = await createProduct({});
      const raise = await request(tp.platform, 'PATCH', `/v1/products/${p.body.id}`, {
        token: tenant.vendorToken,
        body: { securityLevel: 'L2' },
      });
      assert.equal(raise.body.error.code, 'ERR_PRODUCT_AUTH_MODE_NOT_ALLOWED');
      const still = await request(tp.platform, 'GET', `/v1/products/${p.body.id}`, { token: tenant.vendorToken });
      assert.equal(still.body.securityLevel, 'L1', 'the refused change left the product as it was');
      const ok = await request(tp.platform, 'PATCH', `/v1/products/${p.body.id}`, {
        token: tenant.vendorToken,
        body: { securityLevel: 'L2', authModes: ['certificate'] },
      });
      assert.equal(ok.status, 200, ok.text);
      assert.deepEqual([ok.body.securityLevel, ok.body.authModes], ['L2', ['certificate']]);
    });

    test('[DEV-2] malformed data-point schemas are refused with the entry named', async () => {
      const cases: Array<[string, unknown, string]> = [
        ['bad code', { properties: [{ code: 'Temp', type: 'bool', access: 'ro' }] }, 'properties[0].code must match'],
        [
          'duplicate code',
          {
            properties: [
              { code: 'a', type: 'bool', access: 'ro' },
              { code: 'a', type: 'bool', access: 'rw' },
            ],
          },
          "properties[1]: duplicate code 'a'",
        ],
        [
          'min > max',
          { properties: [{ code: 'a', type: 'integer', min: 5, max: 1, access: 'ro' }] },
          'min must not exceed max',
        ],
        [
          'values on integer',
          { properties: [{ code: 'a', type: 'integer', values: ['x'], access: 'ro' }] },
          'values applies only to enum',
        ],
        ['enum without values', { properties: [{ code: 'a', type: 'enum', access: 'ro' }] }, 'values must list'],
        ['no access', { properties: [{ code: 'a', type: 'bool' }] }, 'access must be ro or rw'],
        [
          'access on a param',
          { commands: [{ code: 'c', params: [{ code: 'p', type: 'bool', access: 'rw' }] }] },
          "unknown field 'access'",
        ],
        ['unknown list', { alarms: [] }, "unknown field 'alarms'"],
        [
          '201 properties',
          { properties: Array.from({ length: 201 }, (_, i) => ({ code: `p${i}`, type: 'bool', access: 'ro' })) },
          'at most 200 entries',
        ],
        [
          'step 0',
          { properties: [{ code: 'a', type: 'number', step: 0, access: 'ro' }] },
          'step must be greater than 0',
        ],
        [
          'non-integer bound',
          { properties: [{ code: 'a', type: 'integer', max: 1.5, access: 'ro' }] },
          'max must be a safe integer',
        ],
      ];
      for (const [label, dataPoints, fragment] of cases) {
        const res = await createProduct({ dataPoints });
        assert.equal(res.status, 400, label);
        assert.equal(res.body.error.code, 'ERR_PRODUCT_SCHEMA_INVALID', label);
        assert.ok(res.body.error.message.startsWith('The data-point schema is invalid: '), label);
        assert.ok(res.body.error.message.includes(fragment), `${label}: ${res.body.error.message}`);
      }
    });

    test('[DEV-2] PATCH changes schema, limits and retention; null resets; another tenant gets 404', async () => {
      const p = await createProduct({ reportLimits: { perSecond: 3 } });
      const patched = await request(tp.platform, 'PATCH', `/v1/products/${p.body.id}`, {
        token: tenant.vendorToken,
        body: { dataPoints: THERMOSTAT, telemetryRetentionDays: 30, reportLimits: { perSecond: null, perDay: 1000 } },
      });
      assert.equal(patched.status, 200, patched.text);
      assert.deepEqual(patched.body.dataPoints, THERMOSTAT);
      assert.equal(patched.body.telemetryRetentionDays, 30);
      assert.deepEqual(patched.body.reportLimits, { perSecond: null, perDay: 1000 });
      const cleared = await request(tp.platform, 'PATCH', `/v1/products/${p.body.id}`, {
        token: tenant.vendorToken,
        body: { dataPoints: null, telemetryRetentionDays: null },
      });
      assert.equal(cleared.body.dataPoints, null);
      assert.equal(cleared.body.telemetryRetentionDays, null);
      const empty = await request(tp.platform, 'PATCH', `/v1/products/${p.body.id}`, {
        token: tenant.vendorToken,
        body: {},
      });
      assert.equal(empty.status, 400);
      const foreign = await request(tp.platform, 'PATCH', `/v1/products/${p.body.id}`, {
        token: other.vendorToken,
        body: { telemetryRetentionDays: 1 },
      });
      assert.equal(foreign.status, 404);
      assert.equal(foreign.body.error.code, 'ERR_PRODUCT_NOT_FOUND');
      const after_ = await request(tp.platform, 'GET', `/v1/products/${p.body.id}`, { token: tenant.vendorToken });
      assert.equal(after_.body.telemetryRetentionDays, null, "the other tenant's change did not happen");
      await tp.platform.audit.flush();
      const audited = await tp.platform.audit.query({ type: 'product.update', target: p.body.id, limit: 10 });
      assert.equal(audited.length, 2);
    });

    test('[DEV-2] telemetry is held to the product schema over MQTT (SDK) and HTTPS', async () => {
      const p = await createProduct({ dataPoints: THERMOSTAT });
      const [d] = await issueDevices(p.body.id);
      const device = await DeviceClient.connect({
        url: tp.platform.mqttUrl,
        ca: tp.platform.caPem,
        deviceId: d!.id,
        secret: d!.secret,
      });
      try {
        await device.publishTelemetry({ temperature: 21.3, on: true, mode: 'heat' });
        for (const bad of [
          { temperature: 200 },
          { humidity: 50 },
          { mode: 'dry' },
          { target: 7.5 },
          { label: 'too long label' },
        ]) {
          await assert.rejects(device.publishTelemetry(bad), (e: unknown) => {
            assert.match(String((e as Error).message), /Payload format invalid/, 'PUBACK 0x99');
            return true;
          });
        }
      } finally {
        await device.close();
      }
      const stored = await tp.query<{ n: number }>('select count(*) as n from telemetry where device_id = $1', [d!.id]);
      assert.equal(Number(stored[0]!.n), 1, 'only the valid message was stored');
      const http = new DeviceHttpClient({
        baseUrl: tp.platform.httpUrl,
        ca: tp.platform.caPem,
        deviceId: d!.id,
        secret: d!.secret,
      });
      const refused = await http.reportTelemetry({ temperature: -41 });
      assert.equal(refused.status, 400);
      assert.deepEqual(
        (refused.body as { error: { code: string; details: unknown } }).error.code,
        'ERR_DEVICE_PAYLOAD_INVALID',
      );
      assert.deepEqual((refused.body as { error: { details: unknown } }).error.details, {
        reason: "'temperature' must be from -40 to 125",
      });
      assert.equal((await http.reportTelemetry({ temperature: -40 })).status, 202);
    });

    test('[DEV-5] an L2 product refuses a secret-only device over MQTT and over the device API', async () => {
      const p = await createProduct({});
      const [d] = await issueDevices(p.body.id);
      // While the product is L1 the secret works…
      const before_ = await DeviceClient.connect({
        url: tp.platform.mqttUrl,
        ca: tp.platform.caPem,
        deviceId: d!.id,
        secret: d!.secret,
      });
      await before_.close();
      const raised = await request(tp.platform, 'PATCH', `/v1/products/${p.body.id}`, {
        token: tenant.vendorToken,
        body: { securityLevel: 'L2', authModes: ['certificate'] },
      });
      assert.equal(raised.status, 200);
      // …once it is L2, the same secret gets the device nowhere.
      await assert.rejects(
        DeviceClient.connect({ url: tp.platform.mqttUrl, ca: tp.platform.caPem, deviceId: d!.id, secret: d!.secret }),
        (e: unknown) => e instanceof DeviceConnectError && !e.retryable,
      );
      const http = new DeviceHttpClient({
        baseUrl: tp.platform.httpUrl,
        ca: tp.platform.caPem,
        deviceId: d!.id,
        secret: d!.secret,
      });
      const signed = await http.reportTelemetry({ t: 1 });
      assert.equal(signed.status, 401);
      assert.equal((signed.body as { error: { code: string } }).error.code, 'ERR_DEVICE_AUTH_FAILED');
      await assert.rejects(http.authenticateWithChallenge(), /refused the challenge response/);
      await tp.platform.audit.flush();
      const denied = (await tp.platform.audit.query({ target: d!.id, limit: 50 })).filter(
        (e) => e.result === 'denied' && e.details.reason === 'auth-mode-not-allowed',
      );
      assert.ok(
        denied.some((e) => e.type === 'device.connect'),
        'MQTT refusal audited',
      );
      assert.ok(
        denied.some((e) => e.type === 'device.http-auth'),
        'HTTPS refusal audited',
      );
      const stored = await tp.query<{ n: number }>('select count(*) as n from telemetry where device_id = $1', [d!.id]);
      assert.equal(Number(stored[0]!.n), 0);
    });
  });
}

// --- the schema checker, property-based ---

const code = fc.stringMatching(/^[a-z][a-z0-9_]{0,31}$/);
const field: fc.Arbitrary<DataPointField> = fc.oneof(
  code.map((c) => ({ code: c, type: 'bool' as const })),
  fc
    .tuple(code, fc.integer({ min: -1000, max: 1000 }), fc.integer({ min: 0, max: 1000 }))
    .map(([c, min, span]) => ({ code: c, type: 'integer' as const, min, max: min + span })),
  fc
    .tuple(code, fc.integer({ min: 1, max: 64 }))
    .map(([c, maxLength]) => ({ code: c, type: 'string' as const, maxLength })),
  fc
    .tuple(code, fc.uniqueArray(fc.string({ minLength: 1, maxLength: 8 }), { minLength: 1, maxLength: 5 }))
    .map(([c, values]) => ({ code: c, type: 'enum' as const, values })),
  code.map((c) => ({ code: c, type: 'number' as const })),
);
const uniqueFields = <T extends { code: string }>(arb: fc.Arbitrary<T>) =>
  fc.uniqueArray(arb, { selector: (f) => f.code, maxLength: 8 });
const schema: fc.Arbitrary<DataPointSchema> = fc.record({
  properties: uniqueFields(
    fc.tuple(field, fc.constantFrom('ro' as const, 'rw' as const)).map(([f, access]) => ({ ...f, access })),
  ),
  commands: uniqueFields(fc.record({ code, params: uniqueFields(field) })),
  events: uniqueFields(fc.record({ code, params: uniqueFields(field) })),
});
const valueFor = (f: DataPointField): fc.Arbitrary<unknown> => {
  switch (f.type) {
    case 'bool':
      return fc.boolean();
    case 'integer':
      return fc.integer({ min: f.min!, max: f.max! });
    case 'string':
      return fc.string({ maxLength: f.maxLength! });
    case 'enum':
      return fc.constantFrom(...f.values!);
    default:
      return fc.double({ noNaN: true, noDefaultInfinity: true });
  }
};

describe('data-point schema checker (properties)', () => {
  test('[DEV-2] valid schemas parse to themselves; parsing is idempotent', () => {
    fc.assert(
      fc.property(schema, (s) => {
        const plain = JSON.parse(JSON.stringify(s)) as unknown;
        const parsed = parseDataPointSchema(plain);
        assert.deepEqual(parsed, plain);
        assert.deepEqual(parseDataPointSchema(parsed), parsed);
      }),
      { numRuns: 200 },
    );
  });

  test('[DEV-2] arbitrary input never crashes the parser: it is accepted or refused with ProductSchemaError', () => {
    fc.assert(
      fc.property(fc.oneof(fc.anything(), fc.record({ properties: fc.array(fc.anything()) })), (raw) => {
        try {
          parseDataPointSchema(raw);
        } catch (error) {
          assert.ok(error instanceof ProductSchemaError, String(error));
        }
      }),
      { numRuns: 500 },
    );
  });

  test('[DEV-2] telemetry made of declared values passes; one undeclared key or out-of-range value fails', () => {
    fc.assert(
      fc.property(
        schema
          .filter((s) => s.properties.length > 0)
          .chain((s) =>
            fc.tuple(
              fc.constant(s),
              fc.tuple(...s.properties.map((p) => fc.tuple(fc.constant(p.code), valueFor(p)))),
              fc.string({ minLength: 1, maxLength: 40 }),
            ),
          ),
        ([s, entries, stray]) => {
          const holder = { dataPoints: s };
          const payload = Object.fromEntries(entries);
          assert.equal(checkTelemetry(holder, payload), null);
          if (!s.properties.some((p) => p.code === stray)) {
            assert.match(checkTelemetry(holder, { ...payload, [stray]: 1 }) ?? '', /unknown data point/);
          }
          const bounded = s.properties.find((p) => p.type === 'integer');
          if (bounded) assert.notEqual(checkTelemetry(holder, { [bounded.code]: bounded.max! + 1 }), null);
        },
      ),
      { numRuns: 200 },
    );
  });

  test('[DEV-2] integer fields accept exactly the integers within [min, max] on the step grid', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: -100, max: 100 }),
        fc.integer({ min: 0, max: 100 }),
        fc.integer({ min: 1, max: 7 }),
        fc.oneof(fc.integer({ min: -300, max: 300 }), fc.double()),
        (min, span, step, value) => {
          const f: DataPointField = { code: 'x', type: 'integer', min, max: min + span, step };
          const expected =
            Number.isSafeInteger(value) && value >= min && value <= min + span && (value - min) % step === 0;
          assert.equal(checkValue(f, value) === null, expected, `${value} in ${min}..${min + span} step ${step}`);
        },
      ),
      { numRuns: 500 },
    );
  });

  test('[DEV-2] desired state: read-only properties are refused, null clears, commands and events are typed', () => {
    const holder = { dataPoints: parseDataPointSchema(THERMOSTAT) };
    assert.equal(checkDesiredState(holder, { target: 21, mode: 'cool', label: null }), null);
    assert.equal(checkDesiredState(holder, { temperature: 20 }), "data point 'temperature' is read-only");
    assert.equal(checkDesiredState(holder, { target: 31 }), "'target' must be from 5 to 30");
    assert.equal(checkCommand(holder, 'boost', { minutes: 30 }), null);
    assert.equal(checkCommand(holder, 'boost', { minutes: 0 }), "'minutes' must be from 1 to 120");
    assert.equal(checkCommand(holder, 'explode', {}), "unknown command 'explode'");
    assert.equal(checkEvent(holder, 'fault', { code: 3 }), null);
    assert.equal(checkEvent(holder, 'fault', { code: 'x' }), "'code' must be an integer");
    assert.equal(checkEvent(holder, 'fault', { extra: 1 }), "unknown data point 'extra'");
    // No schema: anything object-shaped goes, as before schemas existed.
    fc.assert(
      fc.property(fc.dictionary(fc.string(), fc.jsonValue()), (obj) => {
        assert.equal(checkTelemetry({ dataPoints: null }, obj), null);
        assert.equal(checkDesiredState({ dataPoints: null }, obj), null);
        assert.equal(checkCommand({ dataPoints: null }, 'any', obj), null);
      }),
      { numRuns: 100 },
    );
    fc.assert(
      fc.property(fc.double(), (v) => {
        const r = checkValue({ code: 't', type: 'number', min: -40, max: 125, step: 0.1 }, v);
        if (r === null) assert.ok(v >= -40 && v <= 125);
      }),
    );
  });
});
