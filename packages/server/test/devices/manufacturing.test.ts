// The manufacturing line (DEV-7) end to end on both databases: a factory station (token + public keys)
// for one product, batches sealed to the station, the factory library and the `castellan-factory`
// command burning them, signed burn receipts, the receipt gate at connect and activation on the first
// connection, all through the real platform and the device SDK.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import {
  type BatchFile,
  burnBatch,
  burnDevices,
  DeviceClient,
  DeviceConnectError,
  DeviceHttpClient,
  fetchBatch,
  FactoryError,
  generateStationKeys,
  keygen,
  loadDeviceCredentials,
  loadStationKeys,
  openBatch,
  sealBatch,
  type SignedReceipt,
  signReceipt,
  spkiPem,
  STATION_KEY_FILES,
  uploadReceipts,
} from '@castellan/device';
import fc from 'fast-check';
import type { DeviceChange } from '../../src/devices/index.ts';
import { dialectCases } from '../helpers/dialects.ts';
import {
  provisionTenant,
  request,
  startTestPlatform,
  type Tenant,
  type TestPlatform,
} from '../helpers/test-platform.ts';

const FACTORY_BIN = fileURLToPath(new URL('../../../device/bin/castellan-factory.js', import.meta.url));
const NOT_AUTHORIZED_V5 = 0x87;
const work = mkdtempSync(join(tmpdir(), 'castellan-factory-test-'));
after(() => rmSync(work, { recursive: true, force: true }));
let dirs = 0;
const newDir = (label: string) => join(work, `${label}-${++dirs}`);

function runFactory(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [FACTORY_BIN, ...args], { timeout: 60_000 }, (error, stdout, stderr) => {
      resolve({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

/** Flips one base64url character of a field (a different byte, same length). */
function tamper(file: BatchFile, field: 'ciphertext' | 'iv' | 'tag', at = 5): BatchFile {
  const value = file[field];
  const i = at % value.length;
  const swapped = value[i] === 'A' ? 'B' : 'A';
  return { ...file, [field]: `${value.slice(0, i)}${swapped}${value.slice(i + 1)}` };
}

describe('[DEV-7] batch file format', () => {
  test('[DEV-7] a sealed batch opens only with the station key; any changed byte or header field fails authentication', () => {
    for (const curve of ['X25519', 'P-256'] as const) {
      const station = generateStationKeys(curve);
      const other = generateStationKeys(curve);
      const plaintext = {
        batchId: `bat_${'A'.repeat(22)}`,
        stationId: `fst_${'B'.repeat(22)}`,
        productId: `prd_${'C'.repeat(22)}`,
        devices: [],
      };
      const file = sealBatch(plaintext, spkiPem(station.encryption.publicKey), { createdAt: 1 });
      assert.deepEqual(openBatch(file, station.encryption.privateKey), plaintext);
      assert.throws(() => openBatch(file, other.encryption.privateKey), {
        message: 'batch file failed authentication',
      });
      fc.assert(
        fc.property(fc.constantFrom('ciphertext' as const, 'iv' as const, 'tag' as const), fc.nat(), (field, at) => {
          assert.throws(() => openBatch(tamper(file, field, at), station.encryption.privateKey), {
            name: 'FactoryError',
            message: 'batch file failed authentication',
          });
        }),
        { numRuns: 60 },
      );
      // The header is associated data: moving the file to another batch, station or product fails.
      for (const [field, value] of [
        ['batchId', `bat_${'Z'.repeat(22)}`],
        ['stationId', `fst_${'Z'.repeat(22)}`],
        ['productId', `prd_${'Z'.repeat(22)}`],
        ['createdAt', 2],
      ] as const) {
        assert.throws(() => openBatch({ ...file, [field]: value }, station.encryption.privateKey), {
          message: 'batch file failed authentication',
        });
      }
    }
  });
});

for (const dialect of await dialectCases()) {
  describe(`[DEV-7] manufacturing line on ${dialect.name}`, { skip: dialect.skip }, () => {
    let tp: TestPlatform;
    let tenant: Tenant;
    let other: Tenant;
    const changes: DeviceChange[] = [];

    before(async () => {
      tp = await startTestPlatform(dialect.name);
      tenant = await provisionTenant(tp, 0);
      other = await provisionTenant(tp, 0, tenant.adminToken);
      tp.platform.deviceEvents.on('change', (change) => changes.push(change));
    });
    after(() => tp?.close());

    const connection = (token: string) => ({ url: tp.platform.httpUrl, ca: tp.platform.caPem, token });

    async function registerStation(t: Tenant, keysDir = newDir('keys')) {
      const keys = keygen({ outDir: keysDir });
      const res = await request(tp.platform, 'POST', `/v1/products/${t.productId}/factory-stations`, {
        token: t.vendorToken,
        body: {
          name: 'Line 1',
          encryptionPublicKey: keys.encryptionPublicKey,
          signingPublicKey: keys.signingPublicKey,
        },
      });
      assert.equal(res.status, 201, res.text);
      return { id: res.body.id as string, token: res.body.token as string, keysDir, body: res.body };
    }

    async function issueBatch(t: Tenant, stationId: string, count: number) {
      const res = await request(tp.platform, 'POST', `/v1/products/${t.productId}/batches`, {
        token: t.vendorToken,
        body: { count, stationId },
      });
      assert.equal(res.status, 201, res.text);
      return res.body as { id: string; deviceIds: string[] };
    }

    async function counts(t: Tenant, batchId: string) {
      const res = await request(tp.platform, 'GET', `/v1/products/${t.productId}/batches/${batchId}`, {
        token: t.vendorToken,
      });
      assert.equal(res.status, 200, res.text);
      return res.body.counts as { issued: number; burned: number; activated: number };
    }

    async function deviceStates(t: Tenant, batchId: string) {
      const res = await request(tp.platform, 'GET', `/v1/products/${t.productId}/batches/${batchId}/devices`, {
        token: t.vendorToken,
      });
      assert.equal(res.status, 200, res.text);
      return Object.fromEntries(
        (res.body.items as { deviceId: string; state: string }[]).map((d) => [d.deviceId, d.state]),
      );
    }

    const recordedReceipts = async (batchId: string) =>
      Number(
        (
          await tp.query<{ n: number }>('select count(receipt) as n from manufacturing_devices where batch_id = $1', [
            batchId,
          ])
        )[0]!.n,
      );

    test('[DEV-7] station → batch → burn → receipts → the device connects with its burned file and is activated', async () => {
      const station = await registerStation(tenant);
      assert.match(station.token, /^cas_fac_[A-Za-z0-9_-]{43}$/);
      assert.equal(station.body.status, 'active');
      // The token is stored only as its SHA-256.
      const [row] = await tp.query<{ token_hash: Uint8Array }>(
        'select token_hash from factory_stations where id = $1',
        [station.id],
      );
      assert.deepEqual(Buffer.from(row!.token_hash), createHash('sha256').update(station.token, 'utf8').digest());
      const listed = await request(tp.platform, 'GET', `/v1/products/${tenant.productId}/factory-stations`, {
        token: tenant.vendorToken,
      });
      assert.equal(listed.status, 200);
      assert.ok(!listed.text.includes(station.token), 'the token is shown once');

      const issued = await request(tp.platform, 'POST', `/v1/products/${tenant.productId}/batches`, {
        token: tenant.vendorToken,
        body: { count: 3, stationId: station.id },
      });
      assert.equal(issued.status, 201, issued.text);
      const batch = issued.body as { id: string; deviceIds: string[] };
      assert.deepEqual(Object.keys(issued.body).sort(), [
        'createdAt',
        'deviceCount',
        'deviceIds',
        'fetchCount',
        'firstFetchedAt',
        'id',
        'productId',
        'stationId',
      ]);
      assert.equal(batch.deviceIds.length, 3);
      for (const id of batch.deviceIds) assert.match(id, new RegExp(`^01${tenant.vendorCode}${tenant.productCode}`));
      assert.deepEqual(await counts(tenant, batch.id), { issued: 3, burned: 0, activated: 0 });

      const outDir = newDir('burn');
      const summary = await burnBatch({
        ...connection(station.token),
        keys: station.keysDir,
        batchId: batch.id,
        outDir,
      });
      assert.equal(summary.burned, 3);
      assert.equal(summary.accepted, 3);
      assert.equal(summary.recorded, 3);
      assert.deepEqual(
        readdirSync(outDir)
          .filter((f) => f.endsWith('.json') && !f.startsWith('receipts-'))
          .sort(),
        batch.deviceIds.map((id) => `${id}.json`).sort(),
      );
      const secrets: string[] = [];
      for (const file of summary.files) {
        assert.equal(statSync(file).mode & 0o777, 0o600, `${file} is owner-only`);
        const creds = loadDeviceCredentials(file);
        assert.equal(creds.ca, tp.platform.caPem);
        assert.equal(creds.mqttUrl, tp.platform.mqttUrl);
        assert.equal(creds.httpUrl, tp.platform.httpUrl);
        secrets.push(creds.secret);
      }
      assert.deepEqual(await counts(tenant, batch.id), { issued: 3, burned: 3, activated: 0 });

      // Secrets never left the platform in clear: not in the vendor's answer, the stored batch, the audit.
      const [stored] = await tp.query<{ sealed_file: Uint8Array }>(
        'select sealed_file from manufacturing_batches where id = $1',
        [batch.id],
      );
      await tp.platform.audit.flush();
      const auditText = JSON.stringify(await tp.platform.audit.query({ tenant: tenant.vendorId, limit: 500 }));
      for (const secret of secrets) {
        assert.ok(!issued.text.includes(secret));
        assert.ok(!Buffer.from(stored!.sealed_file).toString('utf8').includes(secret));
        assert.ok(!auditText.includes(secret));
        assert.ok(!tp.logs.text().includes(secret));
      }
      assert.ok(!tp.logs.text().includes(station.token));

      const deviceId = batch.deviceIds[0]!;
      const creds = loadDeviceCredentials(join(outDir, `${deviceId}.json`));
      const client = await DeviceClient.connect({
        url: creds.mqttUrl!,
        deviceId: creds.deviceId,
        secret: creds.secret,
        ca: creds.ca,
      });
      try {
        await client.publishTelemetry({ temperature: 21 });
        await waitFor('activation', async () => (await counts(tenant, batch.id)).activated === 1);
      } finally {
        await client.close();
      }
      const states = await deviceStates(tenant, batch.id);
      assert.equal(states[deviceId], 'activated');
      assert.deepEqual(
        batch.deviceIds.filter((id) => id !== deviceId).map((id) => states[id]),
        ['burned', 'burned'],
      );
      const activated = changes.filter((c) => c.kind === 'device.activated' && c.deviceId === deviceId);
      assert.equal(activated.length, 1);
      assert.deepEqual(activated[0]!.data, { batchId: batch.id });
      assert.equal(activated[0]!.vendorId, tenant.vendorId);

      // A second connection does not activate again.
      const [before] = await tp.query<{ activated_at: number }>(
        'select activated_at from manufacturing_devices where device_id = $1',
        [deviceId],
      );
      const again = await DeviceClient.connect({ url: creds.mqttUrl!, deviceId, secret: creds.secret, ca: creds.ca });
      await again.close();
      await sleep(100);
      const [afterRow] = await tp.query<{ activated_at: number }>(
        'select activated_at from manufacturing_devices where device_id = $1',
        [deviceId],
      );
      assert.equal(Number(afterRow!.activated_at), Number(before!.activated_at));
      assert.equal(changes.filter((c) => c.kind === 'device.activated' && c.deviceId === deviceId).length, 1);

      await tp.platform.audit.flush();
      for (const type of [
        'factory.station.create',
        'factory.batch.create',
        'factory.batch.fetch',
        'factory.receipts',
      ]) {
        const entries = await tp.platform.audit.query({ type, tenant: tenant.vendorId, limit: 50 });
        assert.ok(
          entries.some((e) => e.result === 'success'),
          `${type} is audited`,
        );
      }
      const fetches = await tp.platform.audit.query({ type: 'factory.batch.fetch', target: batch.id, limit: 10 });
      assert.equal(fetches[0]!.actor.id, station.id);
      const activations = await tp.platform.audit.query({ type: 'device.activate', target: deviceId, limit: 10 });
      assert.equal(activations.length, 1);
    });

    test('[DEV-7] a batch device without a burn receipt is refused at connect and not activated', async () => {
      const station = await registerStation(tenant);
      const batch = await issueBatch(tenant, station.id, 2);
      // The factory opens the batch but records no receipt (a device that skipped the line).
      const keys = loadStationKeys(station.keysDir);
      const plain = openBatch(await fetchBatch(connection(station.token), batch.id), keys.encryptionKey);
      const outDir = newDir('unburned');
      const local = burnDevices(plain, keys, outDir);
      const [first, second] = batch.deviceIds.map((id) => loadDeviceCredentials(join(outDir, `${id}.json`)));
      for (const creds of [first!, second!]) {
        await assert.rejects(
          DeviceClient.connect({ url: creds.mqttUrl!, deviceId: creds.deviceId, secret: creds.secret, ca: creds.ca }),
          (error: unknown) => error instanceof DeviceConnectError && error.code === `MQTT_CONNACK_${NOT_AUTHORIZED_V5}`,
        );
      }
      assert.equal(tp.platform.broker.isConnected(first!.deviceId), false);
      await tp.platform.audit.flush();
      const denied = await tp.platform.audit.query({ type: 'device.connect', target: first!.deviceId, limit: 10 });
      assert.ok(denied.some((e) => e.result === 'denied' && e.details.reason === 'no-burn-receipt'));
      assert.deepEqual(await counts(tenant, batch.id), { issued: 2, burned: 0, activated: 0 });
      assert.ok(!changes.some((c) => c.kind === 'device.activated' && batch.deviceIds.includes(c.deviceId)));

      // Only the device whose receipt is recorded may connect, and it is then activated.
      const firstReceipt = local.receipts.filter((r) => r.receipt.deviceId === first!.deviceId);
      const upload = await uploadReceipts(connection(station.token), batch.id, firstReceipt);
      assert.deepEqual(upload, { accepted: 1, recorded: 1, duplicates: 0 });
      const client = await DeviceClient.connect({
        url: first!.mqttUrl!,
        deviceId: first!.deviceId,
        secret: first!.secret,
        ca: first!.ca,
      });
      await client.close();
      await waitFor('activation', async () => (await counts(tenant, batch.id)).activated === 1);
      await assert.rejects(
        DeviceClient.connect({
          url: second!.mqttUrl!,
          deviceId: second!.deviceId,
          secret: second!.secret,
          ca: second!.ca,
        }),
        (error: unknown) => error instanceof DeviceConnectError && error.code === `MQTT_CONNACK_${NOT_AUTHORIZED_V5}`,
      );
      assert.deepEqual(await deviceStates(tenant, batch.id), {
        [first!.deviceId]: 'activated',
        [second!.deviceId]: 'issued',
      });
    });

    test('[DEV-7] a burned device that only uses the HTTPS device API is activated by its first admitted request', async () => {
      const station = await registerStation(tenant);
      const batch = await issueBatch(tenant, station.id, 1);
      const outDir = newDir('https-only');
      await burnBatch({ ...connection(station.token), keys: station.keysDir, batchId: batch.id, outDir });
      const creds = loadDeviceCredentials(join(outDir, `${batch.deviceIds[0]}.json`));
      const http = new DeviceHttpClient({
        baseUrl: creds.httpUrl!,
        deviceId: creds.deviceId,
        secret: creds.secret,
        ca: creds.ca,
      });
      assert.deepEqual(await counts(tenant, batch.id), { issued: 1, burned: 1, activated: 0 });
      const reported = await http.request('POST', '/v1/device-api/telemetry', { temperature: 21 });
      assert.equal(reported.status, 202, JSON.stringify(reported.body));
      await waitFor('activation', async () => (await counts(tenant, batch.id)).activated === 1);
      // Later requests change nothing: one activation, one event.
      await http.request('POST', '/v1/device-api/telemetry', { temperature: 22 });
      await sleep(100);
      assert.equal(changes.filter((c) => c.kind === 'device.activated' && c.deviceId === creds.deviceId).length, 1);
    });

    test('[DEV-7] a factory token works only on /v1/factory/* and only for its own batches', async () => {
      const mine = await registerStation(tenant);
      const theirs = await registerStation(other);
      const theirBatch = await issueBatch(other, theirs.id, 1);
      const myBatch = await issueBatch(tenant, mine.id, 1);
      const sibling = await registerStation(tenant);

      const missing = await request(tp.platform, 'GET', `/v1/factory/batches/bat_${'A'.repeat(22)}`, {
        token: mine.token,
      });
      assert.equal(missing.status, 404);
      assert.equal(missing.body.error.code, 'ERR_FACTORY_BATCH_NOT_FOUND');
      for (const [token, batchId] of [
        [mine.token, theirBatch.id],
        [sibling.token, myBatch.id],
      ] as const) {
        const fetched = await request(tp.platform, 'GET', `/v1/factory/batches/${batchId}`, { token });
        assert.equal(fetched.status, 404, 'another product’s or station’s batch answers like a missing one');
        assert.equal(fetched.body.error.code, 'ERR_FACTORY_BATCH_NOT_FOUND');
        assert.equal(fetched.body.error.message, missing.body.error.message);
        const posted = await request(tp.platform, 'POST', `/v1/factory/batches/${batchId}/receipts`, {
          token,
          body: {
            receipts: [
              {
                receipt: {
                  batchId,
                  deviceId: theirBatch.deviceIds[0],
                  stationId: mine.id,
                  burnedAt: Date.now(),
                  imageDigest: '0'.repeat(64),
                },
                signature: 'A'.repeat(86),
              },
            ],
          },
        });
        assert.equal(posted.status, 404);
        assert.equal(posted.body.error.code, 'ERR_FACTORY_BATCH_NOT_FOUND');
      }
      // Nothing happened to the other tenant's batch.
      const [theirRow] = await tp.query<{ fetch_count: number }>(
        'select fetch_count from manufacturing_batches where id = $1',
        [theirBatch.id],
      );
      assert.equal(Number(theirRow!.fetch_count), 0);
      assert.equal(await recordedReceipts(theirBatch.id), 0);

      // Not a vendor credential: every /v1/products route refuses it like any invalid credential.
      for (const [method, path, body] of [
        ['GET', '/v1/products', undefined],
        ['GET', `/v1/products/${tenant.productId}`, undefined],
        ['GET', `/v1/products/${tenant.productId}/batches/${myBatch.id}`, undefined],
        ['POST', `/v1/products/${tenant.productId}/batches`, { count: 1, stationId: mine.id }],
        ['GET', `/v1/products/${tenant.productId}/devices`, undefined],
        ['GET', `/v1/devices/${myBatch.deviceIds[0]}`, undefined],
      ] as const) {
        const res = await request(tp.platform, method, path, { token: mine.token, ...(body ? { body } : {}) });
        assert.equal(res.status, 401, `${method} ${path}`);
        assert.equal(res.body.error.code, 'ERR_AUTH_INVALID', `${method} ${path}`);
      }
      assert.equal((await counts(tenant, myBatch.id)).issued, 1);

      // And vendor credentials are no factory credentials; failures look alike.
      const anonymous = await request(tp.platform, 'GET', `/v1/factory/batches/${myBatch.id}`);
      assert.equal(anonymous.status, 401);
      assert.equal(anonymous.body.error.code, 'ERR_AUTH_REQUIRED');
      const invalid: unknown[] = [];
      for (const token of [
        tenant.vendorToken,
        'cas_fac_short',
        `cas_fac_${'A'.repeat(43)}`,
        `cas_ses_${'A'.repeat(43)}`,
      ]) {
        const res = await request(tp.platform, 'GET', `/v1/factory/batches/${myBatch.id}`, { token });
        assert.equal(res.status, 401);
        invalid.push(res.body.error.code, res.body.error.message);
      }
      assert.deepEqual(new Set(invalid), new Set(['ERR_AUTH_INVALID', 'Invalid credentials']));

      // A vendor cannot reach another vendor's batches or stations either.
      const peek = await request(tp.platform, 'GET', `/v1/products/${other.productId}/batches/${theirBatch.id}`, {
        token: tenant.vendorToken,
      });
      assert.equal(peek.status, 404);
      assert.equal(peek.body.error.code, 'ERR_PRODUCT_NOT_FOUND');
      const crossed = await request(tp.platform, 'GET', `/v1/products/${tenant.productId}/batches/${theirBatch.id}`, {
        token: tenant.vendorToken,
      });
      assert.equal(crossed.body.error.code, 'ERR_FACTORY_BATCH_NOT_FOUND');
      const borrowed = await request(tp.platform, 'POST', `/v1/products/${tenant.productId}/batches`, {
        token: tenant.vendorToken,
        body: { count: 1, stationId: theirs.id },
      });
      assert.equal(borrowed.status, 404);
      assert.equal(borrowed.body.error.code, 'ERR_FACTORY_STATION_NOT_FOUND');

      // Revoked and expired stations are refused at once.
      const revoked = await request(
        tp.platform,
        'DELETE',
        `/v1/products/${tenant.productId}/factory-stations/${mine.id}`,
        {
          token: tenant.vendorToken,
        },
      );
      assert.equal(revoked.status, 200);
      assert.equal(revoked.body.status, 'revoked');
      const afterRevoke = await request(tp.platform, 'GET', `/v1/factory/batches/${myBatch.id}`, { token: mine.token });
      assert.equal(afterRevoke.status, 401);
      assert.equal(afterRevoke.body.error.code, 'ERR_AUTH_INVALID');
      const toRevoked = await request(tp.platform, 'POST', `/v1/products/${tenant.productId}/batches`, {
        token: tenant.vendorToken,
        body: { count: 1, stationId: mine.id },
      });
      assert.equal(toRevoked.status, 409);
      assert.equal(toRevoked.body.error.code, 'ERR_FACTORY_STATION_INACTIVE');
      await tp.platform.store.db
        .updateTable('factory_stations')
        .set({ expires_at: Date.now() - 1 })
        .where('id', '=', sibling.id)
        .execute();
      const expired = await request(tp.platform, 'GET', `/v1/factory/batches/${myBatch.id}`, { token: sibling.token });
      assert.equal(expired.status, 401);
      assert.equal(expired.body.error.code, 'ERR_AUTH_INVALID');
    });

    test('[DEV-7] a batch file opened with the wrong key or tampered with fails authentication', async () => {
      const station = await registerStation(tenant);
      const batch = await issueBatch(tenant, station.id, 2);
      const file = await fetchBatch(connection(station.token), batch.id);
      const keys = loadStationKeys(station.keysDir);
      assert.equal(openBatch(file, keys.encryptionKey).devices.length, 2);
      const wrong = loadStationKeys(keygen({ outDir: newDir('wrong') }).dir);
      for (const [label, attempt] of [
        ['the wrong key', () => openBatch(file, wrong.encryptionKey)],
        ['a changed ciphertext', () => openBatch(tamper(file, 'ciphertext'), keys.encryptionKey)],
        ['a changed tag', () => openBatch(tamper(file, 'tag'), keys.encryptionKey)],
        [
          'another batch ID in the header',
          () => openBatch({ ...file, batchId: `bat_${'Q'.repeat(22)}` }, keys.encryptionKey),
        ],
        ['a changed device count', () => openBatch({ ...file, deviceCount: 1 }, keys.encryptionKey)],
      ] as const) {
        assert.throws(attempt, (error: unknown) => {
          assert.ok(error instanceof FactoryError, label);
          assert.equal(error.message, 'batch file failed authentication', label);
          assert.equal(error.exitCode, 65, label);
          return true;
        });
      }
      // burnBatch with the wrong keys writes nothing and records nothing.
      const outDir = newDir('wrong-burn');
      await assert.rejects(burnBatch({ ...connection(station.token), keys: wrong, batchId: batch.id, outDir }), {
        message: 'batch file failed authentication',
      });
      assert.throws(() => readdirSync(outDir), { code: 'ENOENT' });
      assert.equal(await recordedReceipts(batch.id), 0);
    });

    test('[DEV-7] forged or mismatched receipts are refused and nothing of the upload is recorded', async () => {
      const station = await registerStation(tenant);
      const batch = await issueBatch(tenant, station.id, 2);
      const elsewhere = await issueBatch(tenant, station.id, 1);
      const keys = loadStationKeys(station.keysDir);
      const plain = openBatch(await fetchBatch(connection(station.token), batch.id), keys.encryptionKey);
      const { receipts } = burnDevices(plain, keys, newDir('forge'));
      const [good, victim] = receipts as [SignedReceipt, SignedReceipt];
      const forger = generateStationKeys();
      const resign = (receipt: SignedReceipt['receipt']) => signReceipt(receipt, keys.signingKey);
      const cases: [string, SignedReceipt, string][] = [
        ['signed with another key', signReceipt(victim.receipt, forger.signing.privateKey), 'signature'],
        [
          'a valid signature over another receipt',
          { receipt: { ...victim.receipt, burnedAt: victim.receipt.burnedAt + 1 }, signature: victim.signature },
          'signature',
        ],
        [
          'an image digest that is not the issued image',
          resign({ ...victim.receipt, imageDigest: 'ab'.repeat(32) }),
          'image-digest',
        ],
        ['a device of another batch', resign({ ...victim.receipt, deviceId: elsewhere.deviceIds[0]! }), 'not-in-batch'],
        ['another station', resign({ ...victim.receipt, stationId: `fst_${'Z'.repeat(22)}` }), 'batch-mismatch'],
        [
          'a burn time far in the future',
          resign({ ...victim.receipt, burnedAt: Date.now() + 86_400_000 }),
          'burned-at',
        ],
      ];
      for (const [label, bad, reason] of cases) {
        const res = await request(tp.platform, 'POST', `/v1/factory/batches/${batch.id}/receipts`, {
          token: station.token,
          body: { receipts: [good, bad] },
        });
        assert.equal(res.status, 400, `${label}: ${res.text}`);
        assert.equal(res.body.error.code, 'ERR_FACTORY_RECEIPT_INVALID', label);
        assert.equal(res.body.error.message, 'A burn receipt failed verification', label);
        assert.deepEqual(res.body.error.details, { index: 1, deviceId: bad.receipt.deviceId, reason }, label);
        assert.equal(await recordedReceipts(batch.id), 0, `${label}: the good receipt beside it is not recorded`);
      }
      await tp.platform.audit.flush();
      const denied = (await tp.platform.audit.query({ type: 'factory.receipts', target: batch.id, limit: 20 })).filter(
        (e) => e.result === 'denied',
      );
      assert.equal(denied.length, cases.length);
      assert.deepEqual(await counts(tenant, batch.id), { issued: 2, burned: 0, activated: 0 });
    });

    test('[DEV-7] a replayed receipt is accepted again; a different receipt for a burned device is a conflict', async () => {
      const station = await registerStation(tenant);
      const batch = await issueBatch(tenant, station.id, 2);
      const outDir = newDir('replay');
      const first = await burnBatch({ ...connection(station.token), keys: station.keysDir, batchId: batch.id, outDir });
      assert.deepEqual([first.accepted, first.recorded, first.duplicates], [2, 2, 0]);
      const stored = await tp.query<{ device_id: string; receipt: string; burned_at: number }>(
        'select device_id, receipt, burned_at from manufacturing_devices where batch_id = $1 order by device_id',
        [batch.id],
      );
      // The tool re-run re-uses its signed receipts: the platform sees a replay.
      const again = await burnBatch({ ...connection(station.token), keys: station.keysDir, batchId: batch.id, outDir });
      assert.deepEqual([again.burned, again.accepted, again.recorded, again.duplicates], [2, 2, 0, 2]);
      const receipts = JSON.parse(readFileSync(first.receiptsFile, 'utf8')) as SignedReceipt[];
      const replay = await request(tp.platform, 'POST', `/v1/factory/batches/${batch.id}/receipts`, {
        token: station.token,
        body: { receipts: [receipts[0], receipts[0], receipts[1]] },
      });
      assert.equal(replay.status, 200, replay.text);
      assert.deepEqual(replay.body, { batchId: batch.id, accepted: 2, recorded: 0, duplicates: 2 });

      const keys = loadStationKeys(station.keysDir);
      const different = signReceipt(
        { ...receipts[1]!.receipt, burnedAt: receipts[1]!.receipt.burnedAt + 1000 },
        keys.signingKey,
      );
      const conflict = await request(tp.platform, 'POST', `/v1/factory/batches/${batch.id}/receipts`, {
        token: station.token,
        body: { receipts: [receipts[0], different] },
      });
      assert.equal(conflict.status, 409);
      assert.equal(conflict.body.error.code, 'ERR_FACTORY_RECEIPT_CONFLICT');
      assert.deepEqual(conflict.body.error.details, { index: 1, deviceId: different.receipt.deviceId });
      assert.deepEqual(
        await tp.query(
          'select device_id, receipt, burned_at from manufacturing_devices where batch_id = $1 order by device_id',
          [batch.id],
        ),
        stored,
        'the recorded receipts are unchanged',
      );
    });

    test('[DEV-7] stations need supported public keys; batches need an active station and stay within limits', async () => {
      const keys = generateStationKeys();
      const ed = spkiPem(keys.signing.publicKey);
      const x = spkiPem(keys.encryption.publicKey);
      const cases: [string, Record<string, string>, string][] = [
        ['an Ed25519 key to encrypt to', { encryptionPublicKey: ed, signingPublicKey: ed }, 'encryptionPublicKey'],
        ['an X25519 key to verify with', { encryptionPublicKey: x, signingPublicKey: x }, 'signingPublicKey'],
        [
          'a private key',
          {
            encryptionPublicKey: keys.encryption.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
            signingPublicKey: ed,
          },
          'encryptionPublicKey',
        ],
        ['not PEM', { encryptionPublicKey: 'hello', signingPublicKey: ed }, 'encryptionPublicKey'],
      ];
      for (const [label, body, field] of cases) {
        const res = await request(tp.platform, 'POST', `/v1/products/${tenant.productId}/factory-stations`, {
          token: tenant.vendorToken,
          body: { name: 'Bad', ...body },
        });
        assert.equal(res.status, 400, label);
        assert.equal(res.body.error.code, 'ERR_FACTORY_KEY_INVALID', label);
        assert.equal(res.body.error.details.field, field, label);
      }
      // P-256 stations work too.
      const p256 = generateStationKeys('P-256');
      const res = await request(tp.platform, 'POST', `/v1/products/${tenant.productId}/factory-stations`, {
        token: tenant.vendorToken,
        body: {
          name: 'Line P',
          encryptionPublicKey: spkiPem(p256.encryption.publicKey),
          signingPublicKey: spkiPem(p256.signing.publicKey),
          expiresInDays: 1,
        },
      });
      assert.equal(res.status, 201, res.text);
      assert.equal(res.body.encryptionCurve, 'P-256');
      assert.ok(res.body.expiresAt - res.body.createdAt === 86_400_000);
      const batch = await issueBatch(tenant, res.body.id, 1);
      const opened = openBatch(await fetchBatch(connection(res.body.token), batch.id), p256.encryption.privateKey);
      assert.deepEqual(
        opened.devices.map((d) => d.deviceId),
        batch.deviceIds,
      );
      const devicesBefore = await tp.query<{ n: number }>('select count(*) as n from devices where product_id = $1', [
        tenant.productId,
      ]);
      const tooMany = await request(tp.platform, 'POST', `/v1/products/${tenant.productId}/batches`, {
        token: tenant.vendorToken,
        body: { count: 1001, stationId: res.body.id },
      });
      assert.equal(tooMany.status, 400);
      const devicesAfter = await tp.query<{ n: number }>('select count(*) as n from devices where product_id = $1', [
        tenant.productId,
      ]);
      assert.equal(Number(devicesAfter[0]!.n), Number(devicesBefore[0]!.n));

      // Batches carry per-device secrets: a certificate-only product (L2/L3, DEV-5) gets none.
      const certOnly = await registerStation(other);
      const products = tp.platform.store.db.updateTable('products').where('id', '=', other.productId);
      await products.set({ security_level: 'L2', auth_modes: JSON.stringify(['certificate']) }).execute();
      try {
        const refused = await request(tp.platform, 'POST', `/v1/products/${other.productId}/batches`, {
          token: other.vendorToken,
          body: { count: 1, stationId: certOnly.id },
        });
        assert.equal(refused.status, 400, refused.text);
        assert.equal(refused.body.error.code, 'ERR_PRODUCT_AUTH_MODE_NOT_ALLOWED');
        const none = await request(tp.platform, 'GET', `/v1/products/${other.productId}/batches`, {
          token: other.vendorToken,
        });
        assert.ok(none.body.items.every((b: { stationId: string }) => b.stationId !== certOnly.id));
      } finally {
        await products.set({ security_level: 'L1', auth_modes: JSON.stringify(['secret']) }).execute();
      }
    });

    test('[DEV-7] castellan-factory keygen and burn as a subprocess (Node 26), with clear exit codes', async () => {
      const keysDir = newDir('cli-keys');
      const generated = await runFactory(['keygen', '--out', keysDir]);
      assert.equal(generated.code, 0, generated.stderr);
      assert.equal(generated.stdout.match(/-----BEGIN PUBLIC KEY-----/g)?.length, 2);
      for (const name of Object.values(STATION_KEY_FILES))
        assert.equal(statSync(join(keysDir, name)).mode & 0o777, 0o600);
      const again = await runFactory(['keygen', '--out', keysDir]);
      assert.equal(again.code, 73, 'existing keys are never overwritten');

      const res = await request(tp.platform, 'POST', `/v1/products/${tenant.productId}/factory-stations`, {
        token: tenant.vendorToken,
        body: {
          name: 'CLI line',
          encryptionPublicKey: readFileSync(join(keysDir, STATION_KEY_FILES.encryptionPublic), 'utf8'),
          signingPublicKey: readFileSync(join(keysDir, STATION_KEY_FILES.signingPublic), 'utf8'),
        },
      });
      assert.equal(res.status, 201, res.text);
      const tokenFile = join(work, `token-${res.body.id}`);
      writeFileSync(tokenFile, `${res.body.token}\n`, { mode: 0o600 });
      const caFile = join(work, `ca-${dialect.name}.pem`);
      writeFileSync(caFile, tp.platform.caPem);
      const batch = await issueBatch(tenant, res.body.id, 2);
      const outDir = newDir('cli-out');
      const args = (overrides: Record<string, string> = {}) =>
        Object.entries({
          url: tp.platform.httpUrl,
          ca: caFile,
          'token-file': tokenFile,
          keys: keysDir,
          batch: batch.id,
          out: outDir,
          ...overrides,
        }).flatMap(([k, v]) => [`--${k}`, v]);

      const missingToken = await runFactory(['burn', ...args({ 'token-file': join(work, 'no-such-token') })]);
      assert.equal(missingToken.code, 66);
      assert.match(missingToken.stderr, /cannot read token file .*no-such-token \(ENOENT\)/);
      const wrongKeys = await runFactory(['burn', ...args({ keys: keygen({ outDir: newDir('cli-wrong') }).dir })]);
      assert.equal(wrongKeys.code, 65);
      assert.match(wrongKeys.stderr, /batch file failed authentication/);
      const usage = await runFactory(['burn', '--url', tp.platform.httpUrl]);
      assert.equal(usage.code, 2);
      assert.match(usage.stderr, /burn needs --ca, --token-file, --keys, --batch, --out/);
      const unknownBatch = await runFactory(['burn', ...args({ batch: `bat_${'A'.repeat(22)}` })]);
      assert.equal(unknownBatch.code, 77);
      assert.match(unknownBatch.stderr, /ERR_FACTORY_BATCH_NOT_FOUND/);
      assert.equal(await recordedReceipts(batch.id), 0);

      const burned = await runFactory(['burn', ...args()]);
      assert.equal(burned.code, 0, burned.stderr);
      assert.match(burned.stdout, /burned 2 devices, 2 receipts accepted/);
      assert.deepEqual(await counts(tenant, batch.id), { issued: 2, burned: 2, activated: 0 });
      const creds = loadDeviceCredentials(join(outDir, `${batch.deviceIds[1]}.json`));
      const client = await DeviceClient.connect({
        url: creds.mqttUrl!,
        deviceId: creds.deviceId,
        secret: creds.secret,
        ca: creds.ca,
      });
      await client.close();
      await waitFor('activation', async () => (await counts(tenant, batch.id)).activated === 1);
    });
  });
}
