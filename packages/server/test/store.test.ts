// Storage on both databases: migrations, the batched telemetry writer (atomic batches, bounded queue)
// and device-ID collision handling by the store.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { execFile } from 'node:child_process';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import { pino } from 'pino';
import { AccountsService } from '../src/accounts/index.ts';
import { DevicesService, TelemetryQueueFullError, TelemetryWriter } from '../src/devices/index.ts';
import { SecretBox } from '../src/keys/index.ts';
import { migrateToLatest, type Store } from '../src/store/index.ts';
import {
  dialectCases,
  dropSchema,
  openTestStore,
  POSTGRES_URL,
  type TestStore,
  uniqueSchema,
} from './helpers/dialects.ts';

const silent = pino({ level: 'silent' });
const execFileAsync = promisify(execFile);

for (const dialect of await dialectCases()) {
  describe(`storage on ${dialect.name}`, { skip: dialect.skip }, () => {
    let testStore: TestStore;
    let store: Store;
    let dataDir: string;

    before(async () => {
      testStore = await openTestStore(dialect.name, 'store');
      ({ store, dataDir } = testStore);
    });
    after(() => testStore?.dispose());

    const count = async () =>
      Number(
        (
          await store.db
            .selectFrom('telemetry')
            .select((eb) => eb.fn.countAll().as('n'))
            .executeTakeFirstOrThrow()
        ).n,
      );

    test('migrations are idempotent', async () => {
      assert.deepEqual(await migrateToLatest(store.db, store.dialect), []);
    });

    test('several processes migrating one fresh database at once apply each migration exactly once', async () => {
      const fresh = dialect.name === 'postgres' ? uniqueSchema() : '';
      const dir = mkdtempSync(join(tmpdir(), 'castellan-migrate-'));
      const child = resolve(import.meta.dirname, 'helpers/migrate-child.ts');
      const url = dialect.name === 'postgres' ? POSTGRES_URL : '';
      try {
        const outputs = await Promise.all(
          [1, 2, 3].map(async () => {
            const { stdout } = await execFileAsync(process.execPath, [child, url, dir, fresh], { timeout: 30_000 });
            return JSON.parse(stdout) as string[];
          }),
        );
        assert.deepEqual(outputs.flat().sort(), [
          '0001_foundation',
          '0002_audit',
          '0003_guard',
          '0004_product_suite',
          '0005_accounts',
          '0006_broker',
          '0007_presence',
          '0008_device_requests',
          '0009_device_identity',
          '0010_device_certificates',
          '0011_manufacturing',
          '0012_bindings',
          '0013_shadow_commands',
          '0014_telemetry_history',
          '0015_webhooks_posture',
          '0016_lock_passcodes',
          '0017_secure_channel_sessions',
          '0018_cluster_nodes',
          '0019_posture_tls',
        ]);
      } finally {
        if (fresh) await dropSchema(fresh);
        rmSync(dir, { recursive: true, force: true });
      }
    });

    test('the telemetry writer batches many appends into few transactions and resolves each after commit', async () => {
      const writer = new TelemetryWriter({
        db: store.db,
        log: silent,
        batchMaxRows: 100,
        flushIntervalMs: 5,
        queueMaxRows: 10_000,
      });
      const before = await count();
      await Promise.all(
        Array.from({ length: 1000 }, (_, i) =>
          writer.append({ deviceId: 'd1', receivedAt: Date.now(), payload: Buffer.from(`{"i":${i}}`) }),
        ),
      );
      assert.equal(await count(), before + 1000);
      assert.equal(writer.stats.rowsWritten, 1000);
      assert.ok(writer.stats.batchesWritten <= 20, `${writer.stats.batchesWritten} batches for 1000 rows`);
      await writer.close();
    });

    test('a failing batch is all-or-nothing: no partial rows, every publisher told', async () => {
      const writer = new TelemetryWriter({
        db: store.db,
        log: silent,
        batchMaxRows: 10,
        flushIntervalMs: 50,
        queueMaxRows: 1000,
      });
      const before = await count();
      const results = await Promise.allSettled([
        writer.append({ deviceId: 'd2', receivedAt: Date.now(), payload: Buffer.from('{"ok":1}') }),
        // A NULL payload violates NOT NULL: the database refuses the whole multi-row insert.
        writer.append({ deviceId: 'd2', receivedAt: Date.now(), payload: null as unknown as Buffer }),
        writer.append({ deviceId: 'd2', receivedAt: Date.now(), payload: Buffer.from('{"ok":3}') }),
      ]);
      assert.deepEqual(
        results.map((r) => r.status),
        ['rejected', 'rejected', 'rejected'],
      );
      assert.equal(await count(), before);
      // The writer keeps working afterwards.
      await writer.append({ deviceId: 'd2', receivedAt: Date.now(), payload: Buffer.from('{"ok":4}') });
      assert.equal(await count(), before + 1);
      await writer.close();
    });

    test('a full queue refuses new rows instead of growing; queued rows are still written on close', async () => {
      const writer = new TelemetryWriter({
        db: store.db,
        log: silent,
        batchMaxRows: 1000,
        flushIntervalMs: 1000,
        queueMaxRows: 50,
      });
      const before = await count();
      const accepted = Array.from({ length: 50 }, () =>
        writer.append({ deviceId: 'd3', receivedAt: Date.now(), payload: Buffer.from('{}') }),
      );
      await assert.rejects(
        writer.append({ deviceId: 'd3', receivedAt: Date.now(), payload: Buffer.from('{}') }),
        TelemetryQueueFullError,
      );
      assert.equal(writer.stats.rowsRefused, 1);
      await writer.close();
      await Promise.all(accepted);
      assert.equal(await count(), before + 50);
      await assert.rejects(
        writer.append({ deviceId: 'd3', receivedAt: Date.now(), payload: Buffer.from('{}') }),
        /closed/,
      );
    });

    test('[DEV-1] a colliding device ID is detected by the store and drawn again; the batch stays whole', async () => {
      // No administrator is created here: the accounts cipher is never called.
      const accounts = new AccountsService({
        db: store.db,
        dataDir,
        cipher: { encrypt: () => Promise.reject(new Error('unused')), blindIndex: () => Buffer.alloc(32) },
        totp: undefined as never,
        passwordPolicy: { minLength: 10, minScore: 3 },
      });
      const vendor = await accounts.createVendor('Collision Test');
      const telemetry = new TelemetryWriter({
        db: store.db,
        log: silent,
        batchMaxRows: 10,
        flushIntervalMs: 5,
        queueMaxRows: 100,
      });
      const box = new SecretBox(randomBytes(32), 'device-secret');
      // A field cipher double: the keys subsystem's hierarchy is tested on its own.
      const secrets = {
        ensureKey: async () => {},
        rewrap: async () => null,
        encrypt: async (_tenant: string, plaintext: Uint8Array, context: string) => box.seal(plaintext, context),
        decrypt: async (_tenant: string, sealed: Uint8Array, context: string) => box.open(sealed, context),
      };
      const plain = new DevicesService({
        db: store.db,
        secrets,
        vendors: accounts,
        telemetry,
        maxBatch: 100,
      });
      const product = await plain.createProduct(vendor.id, { name: 'P', category: 'plug' });
      const [existing] = await plain.createDevices(product.id, 1);
      // A generator that first repeats the existing ID, then a fresh one.
      const fresh = `01${vendor.code}${product.code}abcdef0100`;
      const draws = [existing!.id, existing!.id, fresh];
      const colliding = new DevicesService({
        db: store.db,
        secrets,
        vendors: accounts,
        telemetry,
        maxBatch: 100,
        generateDeviceId: () => draws.shift() ?? fresh,
      });
      const issued = await colliding.createDevices(product.id, 1);
      assert.deepEqual(
        issued.map((d) => d.id),
        [fresh],
      );
      // The existing device kept its secret: the collision did not overwrite it.
      assert.ok(await plain.authenticateDevice(existing!.id, Buffer.from(existing!.secret)));
      // A generator that only ever repeats ends in a clear error, with nothing written.
      const stuck = new DevicesService({
        db: store.db,
        secrets,
        vendors: accounts,
        telemetry,
        maxBatch: 100,
        generateDeviceId: () => fresh,
      });
      await assert.rejects(stuck.createDevices(product.id, 3), { code: 'ERR_DEVICE_ID_EXHAUSTED' });
      const devices = await plain.listDevices(product.id, { limit: 100 });
      assert.equal(devices.length, 2, 'the refused batch left no rows behind');
      await telemetry.close();
    });
  });
}
