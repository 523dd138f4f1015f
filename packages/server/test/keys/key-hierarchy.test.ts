// The key hierarchy (KEY-1), lifecycle (KEY-2), encrypted fields (KEY-3) and crypto-shredding (KEY-6),
// on both databases, through a real platform.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import { sql } from 'kysely';
import pg from 'pg';
import { CastellanError } from '../../src/errors/index.ts';
import {
  KEY_OPERATIONS,
  KEY_STATES,
  KeyService,
  type KeyState,
  nextState,
  openDistributedKey,
} from '../../src/keys/index.ts';
import { dialectCases, dropSchema, POSTGRES_URL, uniqueSchema } from '../helpers/dialects.ts';
import {
  provisionTenant,
  request,
  startTestPlatform,
  type Tenant,
  type TestPlatform,
} from '../helpers/test-platform.ts';

const ALLOWED: Record<string, Record<string, KeyState>> = {
  'pre-active': { activate: 'active', compromise: 'compromised', destroy: 'destroyed' },
  active: { suspend: 'suspended', deactivate: 'deactivated', compromise: 'compromised', destroy: 'destroyed' },
  suspended: { activate: 'active', deactivate: 'deactivated', compromise: 'compromised', destroy: 'destroyed' },
  deactivated: { compromise: 'compromised', destroy: 'destroyed' },
  compromised: { destroy: 'destroyed' },
  destroyed: {},
};

const code = (fn: () => unknown) => {
  try {
    fn();
  } catch (error) {
    return (error as CastellanError).code;
  }
  return 'ok';
};

describe('key lifecycle rules', () => {
  test('[KEY-2] every transition is allowed exactly where the lifecycle table says, and refused clearly elsewhere', () => {
    for (const state of KEY_STATES) {
      for (const op of KEY_OPERATIONS) {
        const expected = ALLOWED[state]![op];
        if (expected) assert.equal(nextState(state, op), expected, `${op} from ${state}`);
        else {
          assert.throws(
            () => nextState(state, op),
            (e: unknown) =>
              e instanceof CastellanError &&
              e.code === 'ERR_KEY_TRANSITION_INVALID' &&
              e.message === `Cannot ${op} a key that is ${state}`,
          );
        }
      }
    }
  });

  test('[KEY-2] property: under any sequence of operations a destroyed key stays destroyed', () => {
    fc.assert(
      fc.property(fc.array(fc.constantFrom(...KEY_OPERATIONS), { maxLength: 12 }), (ops) => {
        let state = 'pre-active' as KeyState;
        for (const op of ops) {
          const previous: KeyState = state;
          if (code(() => (state = nextState(state, op))) !== 'ok') state = previous;
          if (previous === 'destroyed') assert.equal(state, 'destroyed');
        }
      }),
    );
  });
});

for (const dialect of await dialectCases()) {
  describe(`key hierarchy on ${dialect.name}`, { skip: dialect.skip }, () => {
    let tp: TestPlatform;
    let x: Tenant;
    let y: Tenant;

    before(async () => {
      tp = await startTestPlatform(dialect.name);
      x = await provisionTenant(tp, 2);
      y = await provisionTenant(tp, 2, x.adminToken);
    });
    after(() => tp?.close());

    const keys = () => tp.platform.keys;

    test('[KEY-1] envelope round trip; a ciphertext moved to another row, column or tenant fails', async () => {
      const sealed = await keys().encrypt(x.vendorId, Buffer.from('lock code 4711'), 'locks.code:lock-1');
      assert.equal((await keys().decrypt(x.vendorId, sealed, 'locks.code:lock-1')).toString(), 'lock code 4711');
      for (const [tenant, context] of [
        [x.vendorId, 'locks.code:lock-2'],
        [x.vendorId, 'locks.owner:lock-1'],
        [y.vendorId, 'locks.code:lock-1'],
      ] as const) {
        await assert.rejects(keys().decrypt(tenant, sealed, context), { code: 'ERR_KEY_DECRYPT_FAILED' });
      }
      const [version] = await keys().list({ tenant: x.vendorId });
      assert.equal(KeyService.keyVersionOf(sealed), version!.id);
      assert.equal(version!.state, 'active');
    });

    test('[KEY-2] rotation: old data stays readable, new data goes to the new version, the old one only decrypts', async () => {
      const tenant = `rotation-${dialect.name}`;
      const before = await keys().encrypt(tenant, Buffer.from('before'), 'ctx');
      const rotated = await keys().rotate(tenant);
      const afterRotation = await keys().encrypt(tenant, Buffer.from('after'), 'ctx');
      assert.notEqual(KeyService.keyVersionOf(before), KeyService.keyVersionOf(afterRotation));
      assert.equal(KeyService.keyVersionOf(afterRotation), rotated.id);
      assert.equal((await keys().decrypt(tenant, before, 'ctx')).toString(), 'before');
      assert.equal((await keys().decrypt(tenant, afterRotation, 'ctx')).toString(), 'after');
      const versions = await keys().list({ tenant });
      assert.deepEqual(
        versions.map((v) => [v.version, v.state]),
        [
          [1, 'deactivated'],
          [2, 'active'],
        ],
      );
      await tp.platform.audit.flush();
      const audited = await tp.platform.audit.query({ type: 'key.rotate', target: rotated.id, limit: 5 });
      assert.equal(audited.length, 1, 'the rotation is audited');
    });

    test('[KEY-2] after a rotation device secrets are re-wrapped in the background, so the old version can be destroyed', async () => {
      const t = await provisionTenant(tp, 3, x.adminToken);
      const before = (await keys().list({ tenant: t.vendorId }))[0]!;
      const rotated = await keys().rotate(t.vendorId);
      const versions = async () =>
        (
          await tp.query<{ secret_ciphertext: Uint8Array }>(
            'select secret_ciphertext from devices where vendor_id = $1',
            [t.vendorId],
          )
        ).map((r) => KeyService.keyVersionOf(Buffer.from(r.secret_ciphertext)));
      for (let i = 0; i < 100 && (await versions()).some((v) => v !== rotated.id); i++)
        await new Promise((r) => setTimeout(r, 20));
      assert.deepEqual(await versions(), [rotated.id, rotated.id, rotated.id]);
      await keys().transition(before.id, 'destroy');
      for (const d of t.devices)
        assert.ok(await tp.platform.devices.authenticateDevice(d.id, Buffer.from(d.secret)), 'still authenticates');
    });

    test('[KEY-2] [ORG-2] operator access-key secrets are re-wrapped too: after the old version is destroyed the key still signs', async () => {
      const t = await provisionTenant(tp, 0, x.adminToken);
      const before = (await keys().list({ tenant: t.vendorId }))[0]!;
      const rotated = await keys().rotate(t.vendorId);
      const versions = async () =>
        (
          await tp.query<{ secret_ciphertext: Uint8Array }>(
            'select secret_ciphertext from operator_keys where vendor_id = $1',
            [t.vendorId],
          )
        ).map((r) => KeyService.keyVersionOf(Buffer.from(r.secret_ciphertext)));
      for (let i = 0; i < 100 && (await versions()).some((v) => v !== rotated.id); i++)
        await new Promise((r) => setTimeout(r, 20));
      assert.deepEqual(await versions(), [rotated.id]);
      await keys().transition(before.id, 'destroy');
      const signed = await request(tp.platform, 'GET', '/v1/products', { token: t.vendorToken });
      assert.equal(signed.status, 200, signed.text);
    });

    test("[KEY-4] a product with its own suite: its device secrets are under its own SM4 key, the vendor's stay intl", async () => {
      const t = await provisionTenant(tp, 1, x.adminToken);
      const bad = await request(tp.platform, 'POST', '/v1/products', {
        token: t.vendorToken,
        body: { name: 'Lock', category: 'lock', cryptoSuite: 'des' },
      });
      assert.equal(bad.status, 400);
      assert.equal(bad.body.error.code, 'ERR_VALIDATION_FAILED');
      const product = await request(tp.platform, 'POST', '/v1/products', {
        token: t.vendorToken,
        body: { name: 'Lock', category: 'lock', cryptoSuite: 'sm' },
      });
      assert.equal(product.status, 201, product.text);
      assert.equal(product.body.cryptoSuite, 'sm');
      const issued = await request(tp.platform, 'POST', `/v1/products/${product.body.id}/devices`, {
        token: t.vendorToken,
        body: { count: 2 },
      });
      assert.equal(issued.status, 201);
      const secrets = async (productId: string) =>
        (
          await tp.query<{ secret_ciphertext: Uint8Array }>(
            'select secret_ciphertext from devices where product_id = $1',
            [productId],
          )
        ).map((r) => KeyService.keyVersionOf(Buffer.from(r.secret_ciphertext)));
      const all = await keys().list({ tenant: t.vendorId });
      const productKey = all.find((v) => v.product === product.body.id)!;
      const vendorKey = all.find((v) => v.product === null && v.user === null)!;
      assert.deepEqual([productKey.suite, productKey.state, vendorKey.suite], ['sm', 'active', 'intl']);
      assert.deepEqual(await secrets(product.body.id), [productKey.id, productKey.id]);
      assert.deepEqual(await secrets(t.productId), [vendorKey.id], 'the other product stays on the vendor key');
      for (const d of [...issued.body.devices, ...t.devices])
        assert.ok(await tp.platform.devices.authenticateDevice(d.id, Buffer.from(d.secret)), 'authenticates');

      // A vendor rotation re-wraps the vendor-key secrets and leaves the product's own key alone.
      const rotated = await keys().rotate(t.vendorId);
      for (let i = 0; i < 100 && (await secrets(t.productId))[0] !== rotated.id; i++)
        await new Promise((r) => setTimeout(r, 20));
      assert.deepEqual(await secrets(t.productId), [rotated.id]);
      assert.deepEqual(await secrets(product.body.id), [productKey.id, productKey.id]);

      // A value under the product key does not open under the vendor's own scope.
      const row = (
        await tp.query<{ id: string; secret_ciphertext: Uint8Array }>(
          'select id, secret_ciphertext from devices where product_id = $1',
          [product.body.id],
        )
      )[0]!;
      await assert.rejects(
        keys().decrypt(t.vendorId, Buffer.from(row.secret_ciphertext), `devices.secret_ciphertext:${row.id}`),
        { code: 'ERR_KEY_DECRYPT_FAILED' },
      );
      // Shredding the vendor takes the product key too.
      const shredded = await keys().shred(t.vendorId);
      assert.ok(shredded.some((v) => v.id === productKey.id));
      assert.equal(
        await tp.platform.devices.authenticateDevice(
          issued.body.devices[0].id,
          Buffer.from(issued.body.devices[0].secret),
        ),
        null,
      );
    });

    test('[KEY-2] illegal transitions on stored keys are refused and change nothing; every change is audited', async () => {
      const tenant = `lifecycle-${dialect.name}`;
      const created = await keys().create(tenant);
      await assert.rejects(keys().transition(created.id, 'suspend'), {
        code: 'ERR_KEY_TRANSITION_INVALID',
        message: 'Cannot suspend a key that is pre-active',
      });
      assert.equal((await keys().get(created.id)).state, 'pre-active');
      await keys().transition(created.id, 'activate');
      const sealed = await keys().encrypt(tenant, Buffer.from('v'), 'c');
      await keys().transition(created.id, 'suspend');
      await assert.rejects(keys().encrypt(tenant, Buffer.from('v'), 'c'), { code: 'ERR_KEY_NOT_USABLE' });
      await assert.rejects(keys().decrypt(tenant, sealed, 'c'), { code: 'ERR_KEY_NOT_USABLE' });
      await keys().transition(created.id, 'activate');
      assert.equal((await keys().decrypt(tenant, sealed, 'c')).toString(), 'v');
      await keys().transition(created.id, 'destroy');
      await assert.rejects(keys().transition(created.id, 'activate'), {
        code: 'ERR_KEY_TRANSITION_INVALID',
        message: 'Cannot activate a key that is destroyed',
      });
      await assert.rejects(keys().decrypt(tenant, sealed, 'c'), { code: 'ERR_KEY_DESTROYED' });
      await tp.platform.audit.flush();
      const ops = (await tp.platform.audit.query({ target: created.id, limit: 20 })).map((e) => e.type);
      assert.deepEqual(ops, ['key.create', 'key.activate', 'key.suspend', 'key.activate', 'key.destroy']);
    });

    test('[KEY-4] suites per tenant: SM4-GCM envelopes under an sm key; a rotation to intl keeps old data readable', async () => {
      const tenant = `suite-${dialect.name}`;
      const sm = await keys().rotate(tenant, 'sm');
      assert.equal(sm.suite, 'sm');
      const underSm = await keys().encrypt(tenant, Buffer.from('国密 data'), 'ctx');
      assert.equal(underSm[1], 0x02, 'suite byte: sm');
      assert.equal(
        underSm.length,
        3 + sm.id.length + (12 + 16 + 16) + 12 + Buffer.byteLength('国密 data') + 16,
        'a 16-byte SM4 data key',
      );
      const intl = await keys().rotate(tenant, 'intl');
      const underIntl = await keys().encrypt(tenant, Buffer.from('aes data'), 'ctx');
      assert.equal(underIntl[1], 0x01, 'suite byte: intl');
      assert.equal((await keys().decrypt(tenant, underSm, 'ctx')).toString(), '国密 data');
      assert.equal((await keys().decrypt(tenant, underIntl, 'ctx')).toString(), 'aes data');
      assert.equal((await keys().list({ tenant })).at(-1)!.id, intl.id);
      const forged = Buffer.from(underSm);
      forged[1] = 0x01; // claim the other suite
      await assert.rejects(keys().decrypt(tenant, forged, 'ctx'), { code: 'ERR_KEY_DECRYPT_FAILED' });
    });

    test('[KEY-4] a platform whose default suite is sm keeps device secrets under SM4 and devices still authenticate', async () => {
      const smPlatform = await startTestPlatform(dialect.name, { keys: { defaultSuite: 'sm' } });
      try {
        const t = await provisionTenant(smPlatform, 1);
        const [version] = await smPlatform.platform.keys.list({ tenant: t.vendorId });
        assert.equal(version!.suite, 'sm');
        assert.ok(
          await smPlatform.platform.devices.authenticateDevice(t.devices[0]!.id, Buffer.from(t.devices[0]!.secret)),
        );
      } finally {
        await smPlatform.close();
      }
    });

    test('[KEY-2] key operations are for administrators only, and never show key material', async () => {
      const denied = await request(tp.platform, 'GET', '/v1/keys', { token: x.vendorToken });
      assert.equal(denied.status, 403);
      const list = await request(tp.platform, 'GET', `/v1/keys?tenant=${x.vendorId}`, { token: x.adminToken });
      assert.equal(list.status, 200);
      assert.ok(list.body.items.length >= 1);
      assert.doesNotMatch(list.text, /material|wrapped/);
      const created = await request(tp.platform, 'POST', '/v1/keys', {
        token: x.adminToken,
        body: { tenant: `api-${dialect.name}` },
      });
      assert.equal(created.body.state, 'pre-active');
      const bad = await request(tp.platform, 'POST', `/v1/keys/${created.body.id}/explode`, { token: x.adminToken });
      assert.equal(bad.status, 400);
      const illegal = await request(tp.platform, 'POST', `/v1/keys/${created.body.id}/suspend`, {
        token: x.adminToken,
      });
      assert.equal(illegal.status, 409);
      assert.equal(illegal.body.error.code, 'ERR_KEY_TRANSITION_INVALID');
      const destroyed = await request(tp.platform, 'POST', `/v1/keys/${created.body.id}/destroy`, {
        token: x.adminToken,
      });
      assert.equal(destroyed.body.state, 'destroyed');
      const missing = await request(tp.platform, 'POST', '/v1/keys/kv_missing/destroy', { token: x.adminToken });
      assert.equal(missing.status, 404);
    });

    test('[KEY-3] device secrets are found in neither the database files nor a dump (UTF-8, hex, base64)', async () => {
      const secrets = [...x.devices, ...y.devices].map((d) => d.secret);
      const forms = (s: string) => [s, Buffer.from(s).toString('hex'), Buffer.from(s).toString('base64')];
      let haystack: string;
      if (dialect.name === 'sqlite') {
        haystack = ['castellan.db', 'castellan.db-wal', 'keystore.db', 'keystore.db-wal']
          .map((f) => join(tp.dataDir, f))
          .filter((f) => existsSync(f))
          .map((f) => readFileSync(f).toString('latin1'))
          .join('\n');
        assert.ok(haystack.length > 0);
      } else {
        haystack = ['', '_keys']
          .map((suffix) =>
            execFileSync('pg_dump', ['-h', '127.0.0.1', '-U', 'postgres', '-n', `${tp.schema}${suffix}`, 'test'], {
              encoding: 'utf8',
            }),
          )
          .join('\n');
        assert.match(haystack, /CREATE TABLE/);
      }
      for (const secret of secrets)
        for (const form of forms(secret))
          assert.equal(haystack.includes(form), false, 'a device secret is stored readably');
    });

    test('[KEY-3] e-mail and phone fields: stored encrypted with a blind index, found by equality, never readable in the store', async () => {
      // A test table standing in for the accounts issue's users: ciphertexts plus a blind index.
      const table = `kt_people_${dialect.name}`;
      const people = [
        { id: 'p1', email: 'alice.smith@example.org', phone: '+86 138 0013 8000' },
        { id: 'p2', email: 'bob.jones@example.org', phone: '+49 30 1234567' },
      ];
      const k = keys();
      const rows = await Promise.all(
        people.map(async (p) => ({
          id: p.id,
          email_ct: (await k.encrypt(x.vendorId, Buffer.from(p.email), `${table}.email:${p.id}`)).toString('base64'),
          email_idx: k.blindIndex(x.vendorId, 'email', p.email.trim().toLowerCase()).toString('hex'),
          phone_ct: (await k.encrypt(x.vendorId, Buffer.from(p.phone), `${table}.phone:${p.id}`)).toString('base64'),
        })),
      );
      const store = tp.platform.store.db;
      await sql`create table ${sql.table(table)} (id text primary key, email_ct text, email_idx text, phone_ct text)`.execute(
        store,
      );
      for (const r of rows)
        await sql`insert into ${sql.table(table)} values (${r.id}, ${r.email_ct}, ${r.email_idx}, ${r.phone_ct})`.execute(
          store,
        );
      // Look-up by e-mail through the index only.
      const wanted = k.blindIndex(x.vendorId, 'email', ' Bob.Jones@Example.org '.trim().toLowerCase()).toString('hex');
      const found = await sql<{
        id: string;
        phone_ct: string;
      }>`select id, phone_ct from ${sql.table(table)} where email_idx = ${wanted}`.execute(store);
      assert.deepEqual(
        found.rows.map((r) => r.id),
        ['p2'],
      );
      const phone = await k.decrypt(x.vendorId, Buffer.from(found.rows[0]!.phone_ct, 'base64'), `${table}.phone:p2`);
      assert.equal(phone.toString(), '+49 30 1234567');
      // Another tenant's index of the same value differs (no cross-tenant correlation).
      assert.notDeepEqual(
        k.blindIndex(y.vendorId, 'email', 'bob.jones@example.org'),
        k.blindIndex(x.vendorId, 'email', 'bob.jones@example.org'),
      );
      // Neither the database files nor a dump contain the values, in any encoding.
      let haystack: string;
      if (dialect.name === 'sqlite') {
        haystack = ['castellan.db', 'castellan.db-wal']
          .map((f) => join(tp.dataDir, f))
          .filter((f) => existsSync(f))
          .map((f) => readFileSync(f).toString('latin1'))
          .join('\n');
      } else {
        haystack = execFileSync('pg_dump', ['-h', '127.0.0.1', '-U', 'postgres', '-n', tp.schema!, 'test'], {
          encoding: 'utf8',
        });
        assert.match(haystack, new RegExp(table));
      }
      for (const p of people) {
        for (const value of [p.email, p.phone]) {
          for (const form of [value, Buffer.from(value).toString('hex'), Buffer.from(value).toString('base64')]) {
            assert.equal(haystack.includes(form), false, 'a personal value is stored readably');
          }
        }
      }
    });

    test('[KEY-2] [KEY-6] key-store backups: sealed by a backup key they do not contain, restorable through an escrow, shredded by destroying the backup key', async () => {
      const tenant = `backup-${dialect.name}`;
      const sealed = await keys().encrypt(tenant, Buffer.from('kept across disasters'), 'ctx');
      const gone = `gone-${dialect.name}`;
      const goneKey = (await keys().rotate(gone)).id;
      await keys().transition(goneKey, 'destroy');
      const backup = await keys().backup();
      assert.equal(
        backup.keys.find((k) => k.id === goneKey)!.sealed,
        null,
        'a destroyed version is backed up without material',
      );
      const recipient = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
      const escrow = await keys().escrowBackupKey(
        backup.backupKeyId,
        recipient.publicKey.export({ format: 'pem', type: 'spki' }).toString(),
      );

      // Disaster: a fresh instance with an empty key store.
      const fresh = await startTestPlatform(dialect.name);
      try {
        await assert.rejects(
          fresh.platform.keys.restore(backup),
          { code: 'ERR_KEY_NOT_FOUND' },
          'the backup alone is not enough',
        );
        const privateKeyPem = recipient.privateKey.export({ format: 'pem', type: 'pkcs8' }).toString();
        const result = await fresh.platform.keys.restore(backup, { escrow, privateKeyPem });
        assert.equal(result.restored, backup.keys.length);
        assert.equal((await fresh.platform.keys.decrypt(tenant, sealed, 'ctx')).toString(), 'kept across disasters');
        assert.equal((await fresh.platform.keys.get(goneKey)).state, 'destroyed', 'a destroyed key is not resurrected');
        const other = generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
          .privateKey.export({ format: 'pem', type: 'pkcs8' })
          .toString();
        await assert.rejects(fresh.platform.keys.restore(backup, { escrow, privateKeyPem: other }), {
          code: 'ERR_KEY_DECRYPT_FAILED',
        });
      } finally {
        await fresh.close();
      }

      // Rotating the backup key and destroying the old one makes the old backup unreadable here.
      await keys().rotateBackupKey();
      await keys().destroyBackupKey(backup.backupKeyId);
      await assert.rejects(keys().restore(backup), { code: 'ERR_KEY_DESTROYED' });
      await assert.rejects(
        keys().restore(backup, {
          escrow,
          privateKeyPem: recipient.privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(),
        }),
        { code: 'ERR_KEY_DESTROYED' },
        'not even through an escrow, in the store that knows it was destroyed',
      );
      const states = (await keys().listBackupKeys()).map((k) => [k.id === backup.backupKeyId ? 'old' : 'new', k.state]);
      assert.deepEqual(states.sort(), [
        ['new', 'active'],
        ['old', 'destroyed'],
      ]);
      await tp.platform.audit.flush();
      const types = (await tp.platform.audit.query({ actorId: 'keys', limit: 1000 })).map((e) => e.type);
      for (const t of ['key.backup', 'key.backup-key.escrow', 'key.backup-key.rotate', 'key.backup-key.destroy'])
        assert.ok(types.includes(t), t);
    });

    test('[KEY-2] distribution: a key version sealed to a recipient key opens only with that key; destroyed versions are refused', async () => {
      const tenant = `dist-${dialect.name}`;
      const first = await keys().rotate(tenant);
      const pair = () => generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
      const pem = (k: ReturnType<typeof pair>) => ({
        publicPem: k.publicKey.export({ format: 'pem', type: 'spki' }).toString(),
        privatePem: k.privateKey.export({ format: 'pem', type: 'pkcs8' }).toString(),
      });
      const alice = pem(pair());
      const bob = pem(pair());
      const toAlice = await request(tp.platform, 'POST', `/v1/keys/${first.id}/distribute`, {
        token: x.adminToken,
        body: { recipientPublicKeyPem: alice.publicPem },
      });
      assert.equal(toAlice.status, 201);
      assert.equal(toAlice.body.format, 'castellan-key-distribution/v1');
      assert.equal(toAlice.body.version, first.version);
      const toBob = await keys().distribute(first.id, bob.publicPem);
      const material = openDistributedKey(toAlice.body, alice.privatePem);
      assert.equal(material.length, 32);
      assert.deepEqual(openDistributedKey(toBob, bob.privatePem), material, 'both recipients hold the same version');
      assert.notEqual(toBob.sealed, toAlice.body.sealed, 'each distribution uses a fresh ephemeral key');
      assert.throws(() => openDistributedKey(toAlice.body, bob.privatePem), { code: 'ERR_KEY_DECRYPT_FAILED' });
      assert.throws(() => openDistributedKey({ ...toAlice.body, keyId: 'kv_other' }, alice.privatePem), {
        code: 'ERR_KEY_DECRYPT_FAILED',
      });
      assert.throws(
        () => openDistributedKey({ ...toAlice.body, ephemeralPublicKey: 'AAAA' }, alice.privatePem),
        { code: 'ERR_KEY_DECRYPT_FAILED' },
        'a malformed file is a clear error, not a crash',
      );
      const second = await keys().rotate(tenant);
      assert.notDeepEqual(
        openDistributedKey(await keys().distribute(second.id, alice.publicPem), alice.privatePem),
        material,
        'another version is other material',
      );

      const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 })
        .publicKey.export({ format: 'pem', type: 'spki' })
        .toString();
      for (const recipientPublicKeyPem of ['not a key', rsa]) {
        const bad = await request(tp.platform, 'POST', `/v1/keys/${first.id}/distribute`, {
          token: x.adminToken,
          body: { recipientPublicKeyPem },
        });
        assert.equal(bad.status, 400);
        assert.equal(bad.body.error.code, 'ERR_VALIDATION_FAILED');
      }
      const denied = await request(tp.platform, 'POST', `/v1/keys/${first.id}/distribute`, {
        token: x.vendorToken,
        body: { recipientPublicKeyPem: alice.publicPem },
      });
      assert.equal(denied.status, 403);
      assert.doesNotMatch(denied.text, /sealed/);
      await keys().transition(first.id, 'destroy');
      await assert.rejects(keys().distribute(first.id, alice.publicPem), { code: 'ERR_KEY_DESTROYED' });
      await assert.rejects(keys().distribute('kv_missing', alice.publicPem), { code: 'ERR_KEY_NOT_FOUND' });
      await tp.platform.audit.flush();
      const audited = await tp.platform.audit.query({ type: 'key.distribute', target: first.id, limit: 10 });
      assert.deepEqual(
        audited.map((e) => e.actor.type),
        ['admin', 'system'],
        'every distribution is audited, naming the administrator behind an API call',
      );
      assert.ok(audited[0]!.sourceIp, 'with the source IP');
      assert.equal(typeof audited[0]!.details.requestId, 'string');
      assert.equal(typeof audited[0]!.details.credentialId, 'string');
      assert.deepEqual(audited[1]!.actor, { type: 'system', id: 'keys' });
    });

    test("[KEY-1] [KEY-6] per-user keys: a data backup taken before a user's key is shredded yields key-destroyed for that user only", async () => {
      const tenant = `users-${dialect.name}`;
      const table = `kt_users_${dialect.name}`;
      const k = keys();
      const users = [
        { id: 'u1', email: 'carol.white@example.org' },
        { id: 'u2', email: 'dave.brown@example.org' },
      ];
      const store = tp.platform.store.db;
      await sql`create table ${sql.table(table)} (id text primary key, email_ct text)`.execute(store);
      for (const u of users) {
        const ct = await k.encrypt(tenant, Buffer.from(u.email), `${table}.email:${u.id}`, { user: u.id });
        await sql`insert into ${sql.table(table)} values (${u.id}, ${ct.toString('base64')})`.execute(store);
      }
      const tenantValue = await k.encrypt(tenant, Buffer.from('tenant-wide setting'), 'settings:1');
      const listed = await k.list({ tenant });
      assert.deepEqual(listed.map((v) => v.user).sort(), [null, 'u1', 'u2'], 'one key per user beside the tenant key');
      const u2Ct = (
        await sql<{ email_ct: string }>`select email_ct from ${sql.table(table)} where id = 'u2'`.execute(store)
      ).rows[0]!.email_ct;
      for (const scope of [{}, { user: 'u1' }]) {
        await assert.rejects(k.decrypt(tenant, Buffer.from(u2Ct, 'base64'), `${table}.email:u2`, scope), {
          code: 'ERR_KEY_DECRYPT_FAILED',
        });
      }

      // A data-store backup, taken before the shredding.
      const backupDir = mkdtempSync(join(tmpdir(), 'castellan-user-backup-'));
      let backupRows: { id: string; email_ct: string }[];
      if (dialect.name === 'sqlite') {
        const file = join(backupDir, 'backup.db');
        await sql`vacuum into ${file}`.execute(store);
        const { DatabaseSync } = await import('node:sqlite');
        const db = new DatabaseSync(file, { readOnly: true });
        backupRows = db.prepare(`select id, email_ct from ${table}`).all() as typeof backupRows;
        db.close();
      } else {
        const dump = execFileSync(
          'pg_dump',
          ['-h', '127.0.0.1', '-U', 'postgres', '-t', `"${tp.schema}".${table}`, '--data-only', '--inserts', 'test'],
          { encoding: 'utf8' },
        );
        backupRows = [...dump.matchAll(/VALUES \('(u\d)', '([^']+)'\)/g)].map((m) => ({ id: m[1]!, email_ct: m[2]! }));
      }
      rmSync(backupDir, { recursive: true, force: true });
      assert.equal(backupRows.length, 2);

      const shredded = await request(tp.platform, 'POST', '/v1/keys/shred', {
        token: x.adminToken,
        body: { tenant, user: 'u1' },
      });
      assert.equal(shredded.status, 200);
      assert.deepEqual(
        shredded.body.items.map((v: { user: string; state: string }) => [v.user, v.state]),
        [['u1', 'destroyed']],
      );
      const byId = new Map(backupRows.map((r) => [r.id, Buffer.from(r.email_ct, 'base64')]));
      await assert.rejects(k.decrypt(tenant, byId.get('u1')!, `${table}.email:u1`, { user: 'u1' }), {
        code: 'ERR_KEY_DESTROYED',
        message: 'The key protecting this data was destroyed; the data is unreadable',
      });
      assert.equal(
        (await k.decrypt(tenant, byId.get('u2')!, `${table}.email:u2`, { user: 'u2' })).toString(),
        users[1]!.email,
        "another user's data in the same backup still decrypts",
      );
      assert.equal((await k.decrypt(tenant, tenantValue, 'settings:1')).toString(), 'tenant-wide setting');
      await assert.rejects(k.encrypt(tenant, Buffer.from('x'), 'c', { user: 'u1' }), {
        code: 'ERR_KEY_NOT_USABLE',
        message: 'No active key for user u1 of tenant ' + tenant,
      });
      await assert.rejects(k.encrypt(tenant, Buffer.from('x'), 'c', { user: 'a/b' }), {
        code: 'ERR_VALIDATION_FAILED',
      });
      const denied = await request(tp.platform, 'POST', '/v1/keys/shred', {
        token: x.vendorToken,
        body: { tenant, user: 'u2' },
      });
      assert.equal(denied.status, 403);
      assert.equal(
        (await k.decrypt(tenant, byId.get('u2')!, `${table}.email:u2`, { user: 'u2' })).toString(),
        users[1]!.email,
        'a refused shred destroyed nothing',
      );

      // Shredding the tenant takes its own key and every remaining user key.
      const all = await k.shred(tenant);
      assert.deepEqual(all.map((v) => v.user).sort(), [null, 'u2']);
      await assert.rejects(k.decrypt(tenant, byId.get('u2')!, `${table}.email:u2`, { user: 'u2' }), {
        code: 'ERR_KEY_DESTROYED',
      });
      assert.deepEqual(await k.shred(tenant), [], 'nothing left to shred');
    });

    test('[KEY-6] a data backup taken before a tenant key is destroyed stays unreadable for that tenant after a restore', async () => {
      const fresh = await startTestPlatform(dialect.name);
      try {
        const a = await provisionTenant(fresh, 1);
        const b = await provisionTenant(fresh, 1, a.adminToken);
        // Backup of the data store only (the key store is backed up separately).
        const backupDir = mkdtempSync(join(tmpdir(), 'castellan-backup-'));
        let backupSchema: string | undefined;
        if (dialect.name === 'sqlite') {
          await fresh.platform.close();
          cpSync(join(fresh.dataDir, 'castellan.db'), join(backupDir, 'castellan.db'));
        } else {
          backupSchema = uniqueSchema();
          const client = new pg.Client({ connectionString: POSTGRES_URL });
          await client.connect();
          await client.query(`create schema "${backupSchema}"`);
          for (const table of ['vendors', 'products', 'devices', 'telemetry']) {
            await client.query(`create table "${backupSchema}".${table} as table "${fresh.schema}".${table}`);
          }
          await client.end();
        }
        // Tenant A's key is destroyed in the live key store (after the backup was taken).
        const live = dialect.name === 'sqlite' ? await startTestPlatformAt(fresh.dataDir) : fresh;
        for (const v of await live.platform.keys.list({ tenant: a.vendorId }))
          await live.platform.keys.transition(v.id, 'destroy');
        // Restore: the backed-up data with today's key store.
        const deviceA = a.devices[0]!;
        const deviceB = b.devices[0]!;
        let rows: { id: string; vendor_id: string; secret_ciphertext: Uint8Array }[];
        if (dialect.name === 'sqlite') {
          const { DatabaseSync } = await import('node:sqlite');
          const db = new DatabaseSync(join(backupDir, 'castellan.db'), { readOnly: true });
          rows = db.prepare('select id, vendor_id, secret_ciphertext from devices').all() as typeof rows;
          db.close();
        } else {
          const client = new pg.Client({ connectionString: POSTGRES_URL });
          await client.connect();
          rows = (await client.query(`select id, vendor_id, secret_ciphertext from "${backupSchema}".devices`))
            .rows as typeof rows;
          await client.end();
          await dropSchema(backupSchema!);
        }
        const rowA = rows.find((r) => r.id === deviceA.id)!;
        const rowB = rows.find((r) => r.id === deviceB.id)!;
        await assert.rejects(
          live.platform.keys.decrypt(rowA.vendor_id, rowA.secret_ciphertext, `devices.secret_ciphertext:${deviceA.id}`),
          { code: 'ERR_KEY_DESTROYED', message: 'The key protecting this data was destroyed; the data is unreadable' },
        );
        const plainB = await live.platform.keys.decrypt(
          rowB.vendor_id,
          rowB.secret_ciphertext,
          `devices.secret_ciphertext:${deviceB.id}`,
        );
        assert.equal(plainB.toString(), deviceB.secret, "the other tenant's data still decrypts");
        assert.equal(await live.platform.devices.authenticateDevice(deviceA.id, Buffer.from(deviceA.secret)), null);
        assert.ok(await live.platform.devices.authenticateDevice(deviceB.id, Buffer.from(deviceB.secret)));
        if (live !== fresh) await live.platform.close();
        rmSync(backupDir, { recursive: true, force: true });
      } finally {
        await fresh.close();
      }
    });
  });
}

describe('key store placement', () => {
  const start = async (dataDir: string, database: string, storeUrl = '') =>
    (await startTestPlatformAt(dataDir, { database: { url: database }, keys: { storeUrl } })).platform;

  test('[KEY-6] with database.url = sqlite:<path> the key store still gets a file of its own', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'castellan-placement-'));
    try {
      const dataFile = join(dir, 'elsewhere.db');
      const platform = await start(dir, `sqlite:${dataFile}`);
      await platform.keys.encrypt('placement', Buffer.from('x'), 'ctx');
      await platform.close();
      const { DatabaseSync } = await import('node:sqlite');
      const tables = (file: string) => {
        const db = new DatabaseSync(file, { readOnly: true });
        const names = (
          db.prepare("select name from sqlite_master where type = 'table'").all() as { name: string }[]
        ).map((r) => r.name);
        db.close();
        return names;
      };
      assert.equal(tables(dataFile).includes('key_versions'), false, 'no key material in the data file');
      assert.ok(tables(join(dir, 'keystore.db')).includes('key_versions'));
      await assert.rejects(start(dir, `sqlite:${dataFile}`, `sqlite:${dataFile}`), {
        code: 'ERR_CONFIG_INVALID',
        message:
          'Invalid configuration: keys.storeUrl names the data store; the key store must live apart from the data (KEY-6)',
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

/** Restarts a SQLite platform on an existing data directory. */
async function startTestPlatformAt(dataDir: string, overrides: Record<string, unknown> = {}): Promise<TestPlatform> {
  const { loadConfig } = await import('../../src/config/index.ts');
  const { startPlatform } = await import('../../src/platform.ts');
  const config = loadConfig({
    env: {},
    cwd: dataDir,
    overrides: {
      dataDir,
      http: { host: '127.0.0.1', port: 0 },
      mqtt: { host: '127.0.0.1', port: 0 },
      admin: { enabled: false },
      log: { level: 'silent' },
      ...overrides,
    },
  });
  const platform = await startPlatform(config, { notice: () => {} });
  return { platform } as TestPlatform;
}
