// Tenant isolation and deny-by-default, generated from /openapi.json (ORG-3, SESS-2, OPS-2): every
// documented route is tried anonymously, as another tenant's operator, as another organisation's
// owner, as a consumer, and (for writes) as a read-only staff auditor, each time aimed at tenant A's
// resources. A route this suite does not know (a path parameter without a fixture, a body it cannot
// build, an unauthenticated route not on the public list) fails the suite, so a new route cannot
// escape it. Refusal alone is not enough: no response may carry tenant A's data, and at the end
// tenant A's rows are exactly as they were.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { generateDeviceKeyPair, generateStationKeys, spkiPem } from '@castellan/device';
import { normaliseIdentifier } from '../../src/accounts/index.ts';
import { dialectCases } from '../helpers/dialects.ts';
import { csrFor } from '../helpers/device-pki.ts';
import {
  type HttpResult,
  provisionTenant,
  request,
  startTestPlatform,
  type Tenant,
  type TestPlatform,
} from '../helpers/test-platform.ts';

/** Routes anyone may call without a credential (sign-up, sign-in, ceremonies). Anything else needs one. */
const PUBLIC_ROUTES = new Set([
  'GET /healthz',
  'GET /readyz',
  'POST /v1/setup',
  'POST /v1/staff/login',
  'POST /v1/staff/enrol',
  'POST /v1/staff/enrol/confirm',
  'POST /v1/auth/challenge',
  'POST /v1/auth/register',
  'POST /v1/auth/activate',
  'POST /v1/auth/activate/resend',
  'POST /v1/auth/login',
  'POST /v1/auth/refresh',
  'POST /v1/auth/password/forgot',
  'POST /v1/auth/password/reset',
  'POST /v1/auth/mfa/totp',
  'POST /v1/auth/mfa/recovery',
  'POST /v1/auth/mfa/webauthn-options',
  'POST /v1/auth/mfa/webauthn',
  'POST /v1/auth/passkey/options',
  'POST /v1/auth/passkey',
  'GET /v1/auth/oidc/{provider}/start',
  'GET /v1/auth/oidc/{provider}/callback',
  'GET /v1/audit/public-key',
  // The device API's own ceremonies (DEV-6, DEV-4): they hand out a challenge or a token, or register
  // a listed hardware ID against the product secret's proof.
  'GET /v1/device-api/time',
  'POST /v1/device-api/challenges',
  'POST /v1/device-api/tokens',
  'POST /v1/device-api/register',
  // The secure channel (CHAN-3): the keys are public, hellos and frames authenticate themselves (the
  // psk-keyed MAC, then the session's AEAD); the device API behind them keeps its own check.
  'GET /v1/device-api/secure-channel/keys',
  'POST /v1/device-api/secure-channel/hello',
  'POST /v1/device-api/secure-channel/request',
]);

/** Routes only a device's own credential opens (deviceSignature / deviceToken): no person's or operator's. */
const DEVICE_ROUTE = /^\/v1\/device-api\//;

/**
 * A person's own account and sign-in ceremonies: checked for the anonymous case only (they act on the
 * caller, never on a tenant).
 */
const SELF_SERVICE = /^\/v1\/(auth\/|me(\/|$)|invitations\/accept$|staff\/(login|logout|enrol|mfa\/|credentials$))/;

/** Write routes a read-only auditor may still call (they act on the auditor or append to the log). */
const AUDITOR_MAY_WRITE = new Set(['POST /v1/audit/checkpoints']);

interface Operation {
  method: string;
  path: string;
  key: string;
  params: string[];
  /** Built on first use, so public routes need no samples. */
  query: () => Record<string, unknown>;
  body: () => Record<string, unknown> | undefined;
  secured: boolean;
  /** A path parameter or a vendorId names tenant A's resources. */
  targetsA: boolean;
}

type JsonSchema = {
  type?: string | string[];
  properties?: Record<string, JsonSchema>;
  required?: string[];
  items?: JsonSchema;
  enum?: unknown[];
  const?: unknown;
  anyOf?: JsonSchema[];
  oneOf?: JsonSchema[];
  minimum?: number;
  minLength?: number;
  maxLength?: number;
  minItems?: number;
  minProperties?: number;
  patternProperties?: Record<string, JsonSchema>;
  additionalProperties?: boolean | JsonSchema;
  pattern?: string;
  format?: string;
  default?: unknown;
};

for (const dialect of await dialectCases()) {
  describe(`tenant isolation matrix on ${dialect.name}`, { skip: dialect.skip }, () => {
    let tp: TestPlatform;
    let a: Tenant;
    let b: Tenant;
    let ownerA: string;
    let ownerB: string;
    let consumer: string;
    let auditor: string;
    let aKeyVersionId: string;
    let aOperatorKeyId: string;
    /** DEV-7: tenant A's factory station and batch; tenant B's station token (factory routes). */
    let aStationId: string;
    let aBatch: { id: string; deviceIds: string[] };
    let bFactoryToken: string;
    /** DEV-5: a certificate of tenant A's first device (the revoke route names its serial). */
    let aCertificateSerial: string;
    let aCaId: string;
    let operations: Operation[];
    const markers: string[] = [];

    before(async () => {
      tp = await startTestPlatform(dialect.name, { accounts: { stepUpMinutes: 60 } });
      a = await provisionTenant(tp, 2);
      b = await provisionTenant(tp, 1, a.adminToken);
      const ctx = tp.platform.accountsContext;
      const person = async (email: string, kind: 'consumer' | 'developer', vendorId?: string) => {
        const user = await ctx.users.create({
          identifier: normaliseIdentifier(email),
          kind,
          status: 'active',
          passwordHash: null,
        });
        if (vendorId) {
          await ctx.db
            .insertInto('organisation_members')
            .values({ vendor_id: vendorId, user_id: user.id, role: 'owner', created_at: Date.now() })
            .execute();
        }
        return user.id;
      };
      ownerA = await person('owner-a@example.com', 'developer', a.vendorId);
      ownerB = await person('owner-b@example.com', 'developer', b.vendorId);
      consumer = await person('consumer@example.com', 'consumer');
      const staff = await request(tp.platform, 'POST', '/v1/staff', {
        token: a.adminToken,
        body: { name: 'Read Only', username: 'auditor', roles: ['auditor'] },
      });
      assert.equal(staff.status, 201, staff.text);
      auditor = staff.body.id;
      // The auditor's factor is marked confirmed directly: enrolment is covered by staff.test.ts.
      await ctx.totp.enrol(auditor, 'auditor');
      await ctx.db
        .updateTable('mfa_totp')
        .set({ confirmed_at: Date.now() })
        .where('principal_id', '=', auditor)
        .execute();

      const keys = await request(tp.platform, 'GET', `/v1/keys?tenant=${a.vendorId}`, { token: a.adminToken });
      aKeyVersionId = keys.body.items.find((k: { tenant: string }) => k.tenant === a.vendorId).id;
      aOperatorKeyId = (a.vendorToken as unknown as { id: string }).id;
      const product = await request(tp.platform, 'GET', `/v1/products/${a.productId}`, { token: a.vendorToken });
      const station = async (t: Tenant) => {
        const keys = generateStationKeys();
        const res = await request(tp.platform, 'POST', `/v1/products/${t.productId}/factory-stations`, {
          token: t.vendorToken,
          body: {
            name: 'Line',
            encryptionPublicKey: spkiPem(keys.encryption.publicKey),
            signingPublicKey: spkiPem(keys.signing.publicKey),
          },
        });
        assert.equal(res.status, 201, res.text);
        return res.body as { id: string; token: string };
      };
      const certificate = await request(tp.platform, 'POST', `/v1/devices/${a.devices[0]!.id}/certificates`, {
        token: a.vendorToken,
        body: { csr: await csrFor(generateDeviceKeyPair('p256')) },
      });
      assert.equal(certificate.status, 201, certificate.text);
      aCertificateSerial = certificate.body.certificate.serial;
      aCaId = certificate.body.certificate.caId;
      aStationId = (await station(a)).id;
      bFactoryToken = (await station(b)).token;
      const batch = await request(tp.platform, 'POST', `/v1/products/${a.productId}/batches`, {
        token: a.vendorToken,
        body: { count: 1, stationId: aStationId },
      });
      assert.equal(batch.status, 201, batch.text);
      aBatch = batch.body;
      markers.push(a.vendorId, a.productId, ...a.devices.map((d) => d.id), ownerA, aKeyVersionId, aOperatorKeyId);
      markers.push(aStationId, aBatch.id, ...aBatch.deviceIds, aCertificateSerial, aCaId);
      assert.equal(product.status, 200);

      const doc = (await request(tp.platform, 'GET', '/openapi.json')).body as {
        paths: Record<
          string,
          Record<
            string,
            {
              security?: unknown[];
              parameters?: { in: string; name: string; required?: boolean; schema: JsonSchema }[];
              requestBody?: { content: Record<string, { schema: JsonSchema }> };
            }
          >
        >;
      };
      operations = [];
      for (const [path, methods] of Object.entries(doc.paths)) {
        for (const [method, op] of Object.entries(methods)) {
          const upper = method.toUpperCase();
          const params = (op.parameters ?? []).filter((p) => p.in === 'path').map((p) => p.name);
          const namesTenant =
            (op.parameters ?? []).some((p) => p.name === 'vendorId') ||
            op.requestBody?.content['application/json']?.schema.properties?.vendorId !== undefined;
          const query = () => {
            const out: Record<string, unknown> = {};
            for (const q of (op.parameters ?? []).filter((p) => p.in === 'query' && p.required)) {
              out[q.name] = sample(q.schema, `${upper} ${path} ?${q.name}`);
            }
            if ((op.parameters ?? []).some((p) => p.in === 'query' && p.name === 'vendorId')) out.vendorId = a.vendorId;
            return out;
          };
          const bodySchema = op.requestBody?.content['application/json']?.schema;
          operations.push({
            method: upper,
            path,
            key: `${upper} ${path}`,
            params,
            query,
            body: () =>
              bodySchema ? (sample(bodySchema, `${upper} ${path} body`) as Record<string, unknown>) : undefined,
            secured: Array.isArray(op.security) && op.security.length > 0,
            targetsA: params.length > 0 || namesTenant,
          });
        }
      }
    });
    after(() => tp?.close());

    /** Path parameter values that point at tenant A (or, for staff routes, at the platform). */
    const paramFixture = (name: string, key: string): string => {
      // /v1/keys/{keyId}: a key version; /v1/orgs/{vendorId}/access-keys/{keyId}: an operator key.
      if (name === 'keyId' && key.includes(' /v1/keys/')) return aKeyVersionId;
      const fixtures: Record<string, string> = {
        backupKeyId: 'bkk_AAAAAAAAAAAAAAAAAAAAAA',
        vendorId: a.vendorId,
        productId: a.productId,
        deviceId: a.devices[0]!.id,
        userId: ownerA,
        keyId: aOperatorKeyId,
        operation: 'suspend',
        adminId: auditor,
        ip: '203.0.113.9',
        credentialId: 'AAAAAAAAAAAAAAAAAAAAAA',
        provider: 'nowhere',
        stationId: aStationId,
        serial: aCertificateSerial,
        caId: aCaId,
        // Objects that need a bound, online or lock device: well-formed IDs, so the route's own
        // authorisation answers (tenant A's device or product is in the same path).
        commandId: 'cmd_AAAAAAAAAAAAAAAAAAAAAA',
        deliveryId: 'whd_AAAAAAAAAAAAAAAAAAAAAA',
        passcodeId: 'lpc_AAAAAAAAAAAAAAAAAAAAAA',
        shareId: 'shr_AAAAAAAAAAAAAAAAAAAAAA',
        tokenId: 'bnt_AAAAAAAAAAAAAAAAAAAAAA',
        webhookId: 'whk_AAAAAAAAAAAAAAAAAAAAAA',
        version: '1.0.0',
        batchId: aBatch.id,
        point: 'temp',
      };
      const value = fixtures[name];
      assert.ok(value, `${key}: no fixture for path parameter "${name}"; add one so the route is covered`);
      return value;
    };

    /** A minimal valid value for a schema; fails for schemas it cannot satisfy (add an override). */
    function sample(schema: JsonSchema, where: string): unknown {
      if (schema.const !== undefined) return schema.const;
      if (schema.enum) return schema.enum[0];
      if (schema.default !== undefined) return schema.default;
      const alt = schema.anyOf ?? schema.oneOf;
      if (alt) return sample(alt.find((s) => s.type !== 'null') ?? alt[0]!, where);
      const type = Array.isArray(schema.type) ? schema.type.find((t) => t !== 'null') : schema.type;
      switch (type) {
        case 'object': {
          const out: Record<string, unknown> = {};
          for (const name of schema.required ?? []) out[name] = sample(schema.properties![name]!, `${where}.${name}`);
          // A record (no declared properties): one entry whose key and value fit its schemas.
          if (!schema.properties && (schema.minProperties ?? 0) > 0) {
            const valueSchema =
              Object.values(schema.patternProperties ?? {})[0] ??
              (typeof schema.additionalProperties === 'object' ? schema.additionalProperties : { type: 'string' });
            out['/sample'] = sample(valueSchema, `${where}[key]`);
          }
          // At least minProperties: optional properties in order (a PATCH needs one change).
          for (const name of Object.keys(schema.properties ?? {})) {
            if (Object.keys(out).length >= (schema.minProperties ?? 0)) break;
            if (!(name in out) && name !== 'vendorId')
              out[name] = sample(schema.properties![name]!, `${where}.${name}`);
          }
          // A tenant named in the body is always tenant A: the attack is naming someone else's.
          if (schema.properties?.vendorId) out.vendorId = a.vendorId;
          return out;
        }
        case 'array':
          return (schema.minItems ?? 0) > 0 ? [sample(schema.items ?? {}, `${where}[]`)] : [];
        case 'integer':
        case 'number':
          return schema.minimum ?? 1;
        case 'boolean':
          return false;
        case 'string': {
          const candidates = [
            'Sample Name',
            'sample-value',
            'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA',
            '123456',
            'someone@example.com',
            '127.0.0.1/32',
            '-----BEGIN PUBLIC KEY-----',
            ...['inv', 'enr', 'rft', 'ses'].map((p) => `cas_${p}_${'A'.repeat(43)}`),
            ...['usr', 'vnd', 'opk', 'adm', 'fst', 'bat', 'cmd'].map((p) => `${p}_${'A'.repeat(22)}`),
            // A SHA-256 in lower-case hex (posture digests).
            'a'.repeat(64),
            // A device ID, a SHA-256 in hex, an Ed25519 signature in base64url (burn receipts, DEV-7).
            '0'.repeat(24),
            '0'.repeat(64),
            'A'.repeat(86),
          ];
          const fits = (v: string) =>
            v.length >= (schema.minLength ?? 0) &&
            v.length <= (schema.maxLength ?? Infinity) &&
            (!schema.pattern || new RegExp(schema.pattern, 'u').test(v));
          const found = candidates.find(fits);
          assert.ok(found !== undefined, `${where}: cannot build a string for pattern ${schema.pattern}`);
          return found;
        }
        default:
          return {};
      }
    }

    const fill = (op: Operation) => {
      let url = op.path.replace(/\{(\w+)\}/g, (_m, name: string) => encodeURIComponent(paramFixture(name, op.key)));
      const qs = new URLSearchParams(Object.entries(op.query()).map(([k, v]) => [k, String(v)]));
      if ([...qs].length > 0) url += `?${qs.toString()}`;
      return url;
    };

    const call = (op: Operation, token?: unknown): Promise<HttpResult> => {
      const body = op.body();
      return request(tp.platform, op.method, fill(op), {
        ...(token ? { token: token as string } : {}),
        ...(body !== undefined ? { body } : {}),
      });
    };

    const session = async (kind: 'user' | 'staff', id: string) =>
      (
        await tp.platform.accountsContext.sessions.create({
          principalKind: kind,
          principalId: id,
          level: 'full',
          persistent: false,
          ip: '127.0.0.1',
        })
      ).token;

    test('[ORG-3] every route is either on the public list or refuses anonymous callers (deny by default)', async () => {
      assert.ok(operations.length > 30, `only ${operations.length} operations documented`);
      const unlisted: string[] = [];
      for (const op of operations) {
        if (!op.secured) {
          if (!PUBLIC_ROUTES.has(op.key)) unlisted.push(op.key);
          continue;
        }
        const res = await call(op);
        assert.equal(res.status, 401, `${op.key} anonymous: ${res.text}`);
        const expected = DEVICE_ROUTE.test(op.path) ? 'ERR_DEVICE_AUTH_FAILED' : 'ERR_AUTH_REQUIRED';
        assert.equal((res.body as { error: { code: string } }).error.code, expected, op.key);
      }
      assert.deepEqual(unlisted, [], 'routes without security that are not on the public list');
    });

    test("[ORG-3] [SESS-2] another tenant's operator, another organisation's owner and a consumer never reach tenant A", async () => {
      const checked: string[] = [];
      for (const op of operations) {
        if (!op.secured || SELF_SERVICE.test(op.path)) continue;
        const targetsA = op.targetsA;
        // /v1/factory/* takes only a factory station's token (DEV-7): there the attacker is B's station.
        const principals: [string, () => Promise<unknown>][] = op.path.startsWith('/v1/factory/')
          ? [['factory station B', async () => bFactoryToken]]
          : [
              ['operator B', async () => b.vendorToken],
              ['owner B', () => session('user', ownerB)],
              ['consumer', () => session('user', consumer)],
            ];
        for (const [who, credential] of principals) {
          const res = await call(op, await credential());
          const where = `${op.key} as ${who}: ${res.status} ${res.text.slice(0, 300)}`;
          // A person's or operator's credential is no device credential: not even recognised there.
          if (DEVICE_ROUTE.test(op.path)) {
            assert.equal(res.status, 401, where);
            assert.equal((res.body as { error: { code: string } }).error.code, 'ERR_DEVICE_AUTH_FAILED', where);
            continue;
          }
          assert.notEqual(res.status, 401, `${where} (the credential is valid: a 401 proves nothing)`);
          assert.notEqual(
            res.status,
            400,
            `${where} (the request must be valid to test authorisation; fix the sample)`,
          );
          if (targetsA) assert.ok([403, 404].includes(res.status), where);
          else assert.ok(res.status < 500, where);
          for (const marker of markers) assert.ok(!res.text.includes(marker), `${where} leaked ${marker}`);
        }
        checked.push(op.key);
      }
      assert.ok(checked.length > 20, `only ${checked.length} tenant routes checked`);
    });

    test('[OPS-2] a read-only staff auditor cannot change anything', async () => {
      for (const op of operations) {
        if (!op.secured || op.method === 'GET' || SELF_SERVICE.test(op.path) || AUDITOR_MAY_WRITE.has(op.key)) continue;
        const res = await call(op, await session('staff', auditor));
        const where = `${op.key} as auditor: ${res.status} ${res.text.slice(0, 300)}`;
        // Staff credentials are no factory or device credentials: there they are not even recognised.
        if (op.path.startsWith('/v1/factory/') || DEVICE_ROUTE.test(op.path)) {
          assert.equal(res.status, 401, where);
          continue;
        }
        assert.notEqual(res.status, 400, `${where} (fix the sample)`);
        assert.ok([403, 404].includes(res.status), where);
      }
    });

    test("[ORG-3] after the whole matrix, tenant A's data is exactly as it was", async () => {
      const q = tp.query.bind(tp);
      const products = await q<{ id: string }>('select id from products where vendor_id = $1', [a.vendorId]);
      assert.deepEqual(
        products.map((p) => p.id),
        [a.productId],
      );
      const devices = await q<{ id: string; status: string }>(
        'select id, status from devices where vendor_id = $1 order by id',
        [a.vendorId],
      );
      assert.deepEqual(
        devices.map((d) => d.id),
        [...a.devices.map((d) => d.id), ...aBatch.deviceIds].sort(),
      );
      assert.ok(devices.every((d) => d.status === 'active'));
      const members = await q<{ user_id: string; role: string }>(
        'select user_id, role from organisation_members where vendor_id = $1',
        [a.vendorId],
      );
      assert.deepEqual(
        members.map((m) => ({ ...m })),
        [{ user_id: ownerA, role: 'owner' }],
      );
      const keys = await q<{ revoked_at: unknown }>('select revoked_at from operator_keys where vendor_id = $1', [
        a.vendorId,
      ]);
      assert.ok(keys.length >= 1 && keys.every((k) => k.revoked_at === null));
      const key = await tp.platform.keys.get(aKeyVersionId);
      assert.equal(key.state, 'active');
      // Tenant A's operator still works.
      const own = await request(tp.platform, 'GET', `/v1/products/${a.productId}`, { token: a.vendorToken });
      assert.equal(own.status, 200);
    });
  });
}
