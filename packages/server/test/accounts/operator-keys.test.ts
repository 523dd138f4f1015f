// Operator access keys and signed requests (ORG-2): issuing (staff, organisation owners), listing,
// revoking, and every way a signed request is refused — replay, foreign address, stale date, tampered
// body, wrong secret, revoked key — each checked by code and message and by what did not happen (no
// product created). Tenant isolation and scopes for operators; the secret never stored nor logged in
// clear.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { type AccessKey, signRequest } from '@castellan/protocol';
import { normaliseIdentifier } from '../../src/accounts/index.ts';
import { createPersonalOrganisation } from '../../src/accounts/organisations-service.ts';
import { dialectCases } from '../helpers/dialects.ts';
import {
  issueAccessKey,
  provisionTenant,
  request,
  startTestPlatform,
  type Tenant,
  type TestPlatform,
} from '../helpers/test-platform.ts';

const INVALID = { code: 'ERR_AUTH_INVALID', message: 'Invalid credentials' };
const PRODUCT = { name: 'Signed plug', category: 'plug' };

for (const dialect of await dialectCases()) {
  describe(`operator access keys on ${dialect.name}`, { skip: dialect.skip }, () => {
    let tp: TestPlatform;
    let a: Tenant;
    let b: Tenant;
    const p = () => tp.platform;
    const host = () => new URL(p().httpUrl).host;

    before(async () => {
      tp = await startTestPlatform(dialect.name);
      a = await provisionTenant(tp, 0);
      b = await provisionTenant(tp, 0, a.adminToken);
    });
    after(() => tp?.close());

    /** Sends a request with exactly these headers (a replay sends the same ones twice). */
    const send = (
      method: string,
      path: string,
      headers: Record<string, string>,
      options: { body?: string; localAddress?: string } = {},
    ) =>
      request(p(), method, path, {
        headers: { host: host(), ...headers },
        ...(options.body !== undefined ? { rawBody: options.body } : {}),
        ...(options.localAddress ? { localAddress: options.localAddress } : {}),
      });

    const sign = (key: AccessKey, method: string, target: string, body?: string, now?: number) =>
      signRequest({ key, method, target, host: host(), body, ...(now !== undefined ? { now } : {}) });

    const count = async (table: string, where = '', values: unknown[] = []) =>
      Number((await tp.query<{ n: number }>(`select count(*) as n from ${table} ${where}`, values))[0]!.n);
    const products = (vendorId: string) => count('products', 'where vendor_id = $1', [vendorId]);

    /** The refusal reasons audited for a key since `afterSeq`. */
    async function refusals(keyId: string): Promise<string[]> {
      await p().audit.flush();
      const entries = await p().audit.query({ type: 'operator.signature-refused', target: keyId, limit: 1000 });
      return entries.map((e) => e.details.reason as string);
    }

    function assertInvalid(res: { status: number; body: { error: { code: string; message: string } } }) {
      assert.equal(res.status, 401);
      assert.deepEqual({ code: res.body.error.code, message: res.body.error.message }, INVALID);
    }

    test('[ORG-2] a signed request works; the key is shown once and used-at is recorded', async () => {
      const key = await issueAccessKey(p(), a.adminToken, a.vendorId, { label: 'erp' });
      assert.match(key.id, /^opk_[A-Za-z0-9_-]{22}$/);
      assert.match(key.secret, /^cas_ops_[A-Za-z0-9_-]{43}$/, '256-bit secret');
      const before = await products(a.vendorId);
      const created = await request(p(), 'POST', '/v1/products', { token: key, body: PRODUCT });
      assert.equal(created.status, 201, created.text);
      assert.equal(await products(a.vendorId), before + 1);
      const list = await request(p(), 'GET', `/v1/products?vendorId=${a.vendorId}`, { token: key });
      assert.equal(list.status, 200, list.text);
      assert.ok(list.body.items.some((x: { id: string }) => x.id === created.body.id));
      // Percent-encoding the client chose (%35 = '5', lower-case hex) is normalised on both sides.
      const devices = await request(
        p(),
        'GET',
        `/v1/products/${created.body.id}/devices?limit=%35&after=%61${'0'.repeat(23)}`,
        {
          token: key,
        },
      );
      assert.equal(devices.status, 200, devices.text);
      const row = (
        await tp.query<{ last_used_at: unknown }>('select last_used_at from operator_keys where id = $1', [key.id])
      )[0]!;
      assert.notEqual(row.last_used_at, null);
      await p().audit.flush();
      const issued = await p().audit.query({ type: 'operator-key.issue', target: key.id, limit: 5 });
      assert.equal(issued.length, 1);
      assert.deepEqual([issued[0]!.actor.type, issued[0]!.tenant], ['admin', a.vendorId]);
      assert.equal(JSON.stringify(issued).includes(key.secret), false);
    });

    test('[ORG-2] a replayed signed request is refused and has no effect', async () => {
      const body = JSON.stringify({ name: 'Replayed plug', category: 'plug' });
      const headers = sign(a.vendorToken, 'POST', '/v1/products', body);
      const before = await products(a.vendorId);
      const first = await send('POST', '/v1/products', headers, { body });
      assert.equal(first.status, 201, first.text);
      const replay = await send('POST', '/v1/products', headers, { body });
      assertInvalid(replay);
      assert.equal(await products(a.vendorId), before + 1, 'the replay created no second product');
      assert.ok((await refusals(a.vendorToken.id)).includes('replayed-nonce'));
    });

    test('[ORG-2] a request from outside the key’s allow-list is refused', async () => {
      const key = await issueAccessKey(p(), a.adminToken, a.vendorId, { allowedCidrs: ['127.0.0.1/32'] });
      const inside = await request(p(), 'GET', '/v1/products', { token: key, localAddress: '127.0.0.1' });
      assert.equal(inside.status, 200, inside.text);
      const before = await products(a.vendorId);
      const outside = await request(p(), 'POST', '/v1/products', {
        token: key,
        body: PRODUCT,
        localAddress: '127.0.0.2',
      });
      assertInvalid(outside);
      assert.equal(await products(a.vendorId), before);
      assert.deepEqual(await refusals(key.id), ['address-not-allowed']);
      const bad = await request(p(), 'POST', `/v1/vendors/${a.vendorId}/access-keys`, {
        token: a.adminToken,
        body: { label: 'x', allowedCidrs: ['10.0.0.0/33'] },
      });
      assert.equal(bad.status, 400);
      assert.equal(bad.body.error.code, 'ERR_ACCESS_KEY_CIDR_INVALID');
    });

    test('[ORG-2] a date outside the window is refused, in the past and in the future', async () => {
      const key = await issueAccessKey(p(), a.adminToken, a.vendorId);
      const before = await products(a.vendorId);
      const body = JSON.stringify(PRODUCT);
      // 20 s beyond the window: whole-second dates and a loaded machine must not bring it back inside.
      for (const skew of [-320_000, 320_000]) {
        const res = await send('POST', '/v1/products', sign(key, 'POST', '/v1/products', body, Date.now() + skew), {
          body,
        });
        assertInvalid(res);
      }
      assert.equal(await products(a.vendorId), before);
      assert.deepEqual(await refusals(key.id), ['stale-date', 'stale-date']);
      const near = await send('GET', '/v1/products', sign(key, 'GET', '/v1/products', undefined, Date.now() - 240_000));
      assert.equal(near.status, 200, 'inside the 300 s window');
    });

    test('[ORG-2] a tampered body is refused and nothing is created', async () => {
      const key = await issueAccessKey(p(), a.adminToken, a.vendorId);
      const before = await products(a.vendorId);
      const signedBody = JSON.stringify({ name: 'Signed', category: 'plug' });
      const otherBody = JSON.stringify({ name: 'Tampered', category: 'plug' });
      // The signature covers the hash of the signed body, but another body is sent.
      const swapped = await send('POST', '/v1/products', sign(key, 'POST', '/v1/products', signedBody), {
        body: otherBody,
      });
      assertInvalid(swapped);
      // The declared hash is changed to match the other body: the signature no longer matches.
      const rehashed = sign(key, 'POST', '/v1/products', signedBody);
      const forged = await send(
        'POST',
        '/v1/products',
        {
          ...rehashed,
          'x-castellan-content-sha256': sign(key, 'POST', '/v1/products', otherBody)['x-castellan-content-sha256']!,
        },
        { body: otherBody },
      );
      assertInvalid(forged);
      // A body sent where the empty body was signed.
      const emptySigned = await send('POST', '/v1/products', sign(key, 'POST', '/v1/products'), { body: otherBody });
      assertInvalid(emptySigned);
      assert.equal(await products(a.vendorId), before, 'no product was created');
      assert.deepEqual((await refusals(key.id)).sort(), ['bad-signature', 'body-hash-mismatch', 'body-hash-mismatch']);
    });

    test('[ORG-2] a wrong secret, a changed path and malformed headers are refused alike', async () => {
      const before = await products(a.vendorId);
      const wrong = {
        id: a.vendorToken.id,
        secret: `${a.vendorToken.secret.slice(0, -1)}${a.vendorToken.secret.endsWith('A') ? 'B' : 'A'}`,
      };
      assertInvalid(await request(p(), 'POST', '/v1/products', { token: wrong, body: PRODUCT }));
      const otherPath = sign(a.vendorToken, 'GET', '/v1/products?limit=1');
      assertInvalid(await send('GET', '/v1/products?limit=2', otherPath));
      const headers = sign(a.vendorToken, 'GET', '/v1/products');
      for (const broken of [
        { ...headers, 'x-castellan-nonce': 'short' },
        { ...headers, 'x-castellan-date': String(Date.now()) },
        { ...headers, authorization: headers.authorization!.replace(', Signature', ',Signature') },
        {
          ...headers,
          authorization: headers.authorization!.replace(/opk_[A-Za-z0-9_-]{22}/, 'opk_AAAAAAAAAAAAAAAAAAAAAA'),
        },
      ]) {
        assertInvalid(await send('GET', '/v1/products', broken));
      }
      // The secret itself is not a bearer token.
      assertInvalid(await request(p(), 'GET', '/v1/products', { token: a.vendorToken.secret }));
      assert.equal(await products(a.vendorId), before);
      const reasons = await refusals(a.vendorToken.id);
      assert.ok(reasons.includes('bad-signature') && reasons.includes('malformed'));
    });

    test('[ORG-2] a raw + in a signed query is refused: it would reach the handler as a space', async () => {
      const key = await issueAccessKey(p(), a.adminToken, a.vendorId);
      // Signed for `x=a%2Bb` (a plus); the parser would read `x=a+b` as "a b", yet the two spellings
      // used to canonicalise alike, so the signature carried over to a request with another meaning.
      const headers = sign(key, 'GET', '/v1/products?x=a%2Bb');
      assertInvalid(await send('GET', '/v1/products?x=a+b', headers));
      assert.deepEqual(await refusals(key.id), ['query-plus']);
      // The refusal did not burn the nonce: the same headers on the spelling that was signed pass
      // authentication and reach validation, which knows no parameter `x`.
      const signed = await send('GET', '/v1/products?x=a%2Bb', headers);
      assert.equal(signed.status, 400, signed.text);
      assert.equal(signed.body.error.code, 'ERR_VALIDATION_UNKNOWN_FIELD');
      assert.deepEqual(await refusals(key.id), ['query-plus']);
    });

    test('[ORG-2] repeated query parameters cannot be reordered under one signature', async () => {
      const key = await issueAccessKey(p(), a.adminToken, a.vendorId);
      const headers = sign(key, 'GET', '/v1/products?x=1&x=2');
      assertInvalid(await send('GET', '/v1/products?x=2&x=1', headers));
      assert.deepEqual(await refusals(key.id), ['bad-signature']);
    });

    test('[ORG-2] a key sees only its tenant; scopes are enforced', async () => {
      const foreign = await request(p(), 'GET', `/v1/products/${a.productId}`, { token: b.vendorToken });
      assert.equal(foreign.status, 404);
      assert.equal(foreign.body.error.code, 'ERR_PRODUCT_NOT_FOUND');
      const own = await request(p(), 'GET', `/v1/products/${a.productId}`, { token: a.vendorToken });
      assert.equal(own.status, 200);
      const readOnly = await issueAccessKey(p(), a.adminToken, a.vendorId, { scopes: ['products:read'] });
      assert.equal((await request(p(), 'GET', '/v1/products', { token: readOnly })).status, 200);
      const before = await products(a.vendorId);
      const write = await request(p(), 'POST', '/v1/products', { token: readOnly, body: PRODUCT });
      assert.equal(write.status, 403);
      assert.equal(write.body.error.code, 'ERR_AUTH_FORBIDDEN');
      assert.equal(await products(a.vendorId), before);
      // Operators never mint keys, for their own tenant or another.
      const mint = await request(p(), 'POST', `/v1/vendors/${a.vendorId}/access-keys`, {
        token: a.vendorToken,
        body: { label: 'self-issued' },
      });
      assert.equal(mint.status, 403);
      const keys = await count('operator_keys', 'where vendor_id = $1 and label = $2', [a.vendorId, 'self-issued']);
      assert.equal(keys, 0);
    });

    test('[ORG-2] owners issue, list and revoke keys; a revoked key is refused; others see nothing', async () => {
      const ctx = p().accountsContext;
      const owner = await ctx.users.create({
        identifier: normaliseIdentifier('owner@example.com'),
        kind: 'developer',
        status: 'active',
        passwordHash: null,
      });
      const { vendorId } = await createPersonalOrganisation(ctx, owner.id);
      const session = (userId: string) =>
        ctx.sessions.create({
          principalKind: 'user',
          principalId: userId,
          level: 'full',
          persistent: false,
          ip: '127.0.0.1',
        });
      const ownerToken = (await session(owner.id)).token;
      const issued = await request(p(), 'POST', `/v1/orgs/${vendorId}/access-keys`, {
        token: ownerToken,
        body: { label: 'billing', scopes: ['products:read', 'products:write'] },
      });
      assert.equal(issued.status, 201, issued.text);
      const key = { id: issued.body.id as string, secret: issued.body.secret as string };
      assert.deepEqual(issued.body.scopes, ['products:read', 'products:write']);
      assert.equal((await request(p(), 'POST', '/v1/products', { token: key, body: PRODUCT })).status, 201);

      const list = await request(p(), 'GET', `/v1/orgs/${vendorId}/access-keys`, { token: ownerToken });
      assert.equal(list.status, 200);
      assert.deepEqual(
        list.body.items.map((k: { id: string }) => k.id),
        [key.id],
      );
      assert.equal(list.text.includes(key.secret), false, 'the secret is never shown again');
      assert.equal('secret' in list.body.items[0], false);

      const stranger = await ctx.users.create({
        identifier: normaliseIdentifier('stranger@example.com'),
        kind: 'developer',
        status: 'active',
        passwordHash: null,
      });
      const strangerToken = (await session(stranger.id)).token;
      for (const [method, path] of [
        ['GET', `/v1/orgs/${vendorId}/access-keys`],
        ['DELETE', `/v1/orgs/${vendorId}/access-keys/${key.id}`],
        ['POST', `/v1/orgs/${vendorId}/access-keys`],
      ] as const) {
        const res = await request(p(), method, path, {
          token: strangerToken,
          ...(method === 'POST' ? { body: { label: 'steal' } } : {}),
        });
        assert.equal(res.status, 404, `${method} ${path}`);
        assert.equal(res.body.error.code, 'ERR_ORG_NOT_FOUND');
      }
      assert.equal(await count('operator_keys', 'where vendor_id = $1', [vendorId]), 1, 'the stranger issued nothing');
      assert.equal(await count('operator_keys', 'where id = $1 and revoked_at is null', [key.id]), 1, 'nor revoked');

      const revoked = await request(p(), 'DELETE', `/v1/orgs/${vendorId}/access-keys/${key.id}`, { token: ownerToken });
      assert.equal(revoked.status, 204);
      const before = await products(vendorId);
      assertInvalid(await request(p(), 'POST', '/v1/products', { token: key, body: PRODUCT }));
      assert.equal(await products(vendorId), before);
      assert.deepEqual(await refusals(key.id), ['revoked-key']);
      const again = await request(p(), 'DELETE', `/v1/orgs/${vendorId}/access-keys/${key.id}`, { token: ownerToken });
      assert.equal(again.status, 404);
      assert.equal(again.body.error.code, 'ERR_ACCESS_KEY_NOT_FOUND');
      // Another organisation's key cannot be revoked through this one.
      const foreign = await request(p(), 'DELETE', `/v1/orgs/${vendorId}/access-keys/${a.vendorToken.id}`, {
        token: ownerToken,
      });
      assert.equal(foreign.status, 404);
      assert.equal(await count('operator_keys', 'where id = $1 and revoked_at is null', [a.vendorToken.id]), 1);
      await p().audit.flush();
      const audited = await p().audit.query({ type: 'operator-key.revoke', target: key.id, limit: 5 });
      assert.deepEqual(
        audited.map((e) => [e.actor.type, e.actor.id, e.tenant, e.result]),
        [['user', owner.id, vendorId, 'success']],
      );
    });

    test('[ORG-2] the secret is stored only encrypted and never logged', async () => {
      const key = await issueAccessKey(p(), a.adminToken, a.vendorId);
      assert.equal((await request(p(), 'GET', '/v1/products', { token: key })).status, 200);
      const rows = await tp.query<Record<string, unknown>>('select * from operator_keys where id = $1', [key.id]);
      assert.equal(rows.length, 1);
      const bytes = JSON.stringify(rows, (_k, v: unknown) =>
        v instanceof Uint8Array ? Buffer.from(v).toString('latin1') : v,
      );
      const raw = Buffer.from(key.secret);
      const body = key.secret.slice('cas_ops_'.length);
      for (const form of [
        key.secret,
        body,
        raw.toString('base64'),
        raw.toString('hex'),
        Buffer.from(body, 'base64url').toString('latin1'),
      ]) {
        assert.equal(bytes.includes(form), false, 'the secret is in the row');
      }
      assert.ok((rows[0]!.secret_ciphertext as Uint8Array).length > 43, 'a ciphertext is stored');
      const logs = tp.logs.text();
      assert.ok(logs.includes('signed request refused'), 'refusals are logged (without secrets)');
      for (const secret of [key.secret, a.vendorToken.secret, b.vendorToken.secret]) {
        assert.equal(logs.includes(secret.slice(-20)), false, 'a secret appears in the logs');
      }
      await p().audit.flush();
      const audit = JSON.stringify(await p().audit.query({ limit: 10_000 }));
      assert.equal(audit.includes(key.secret.slice(-20)), false, 'a secret appears in the audit log');
    });
  });
}
