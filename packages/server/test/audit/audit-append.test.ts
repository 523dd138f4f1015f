// The append path's batching (AUD-1): source IPs sealed when an event is recorded, with the key of the
// event's own UTC day even when one batch spans midnight; multi-row inserts of any batch size; and the
// verifier reading the log in pages (a modified entry past the first page is still named exactly).
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { pino } from 'pino';
import { type AuditEvent, AuditLog, readFileCheckpoints, verifyAuditLog } from '../../src/audit/index.ts';
import type { Store } from '../../src/store/index.ts';
import { dialectCases, openTestStore, type TestStore } from '../helpers/dialects.ts';

const MIDNIGHT = Date.parse('2026-03-02T00:00:00Z');

for (const dialect of await dialectCases()) {
  describe(`audit appends on ${dialect.name}`, { skip: dialect.skip }, () => {
    let testStore: TestStore;
    let store: Store;
    let dataDir: string;

    before(async () => {
      testStore = await openTestStore(dialect.name, 'audit-append');
      ({ store, dataDir } = testStore);
    });
    after(() => testStore?.dispose());

    test('[AUD-1] [PRIV-4] one batch across midnight seals each IP with its own day key; a bad entry fails alone; paged verification names the modified entry', async () => {
      // Each record() reads the clock once: 1 ms per entry, starting 150 ms before midnight.
      let clock = MIDNIGHT - 150;
      const audit = await AuditLog.open({
        db: store.db,
        dialect: store.dialect,
        rootKey: randomBytes(32),
        dataDir,
        log: pino({ level: 'silent' }),
        batchMaxRows: 1_000,
        queueMaxRows: 20_000,
        checkpointIntervalMs: 0,
        retentionDays: 400,
        ipRetentionDays: 30,
        witnessUrl: '',
        now: () => clock++,
      });
      const event = (i: number): AuditEvent => ({
        actor: { type: 'device', id: `dev${i}` },
        tenant: i % 3 ? 'vnd_a' : null,
        type: 'device.connect',
        target: `dev${i}`,
        ...(i % 4 ? { sourceIp: `198.51.100.${i % 250}` } : {}),
        result: 'success',
        details: { b: i, a: 'x', token: 'never-stored' },
      });
      // 300 in one tick: one batch of an odd size (several insert statements), 150 on each day.
      const first = await Promise.all(Array.from({ length: 300 }, (_, i) => audit.record(event(i))));
      assert.deepEqual(
        first,
        Array.from({ length: 300 }, (_, i) => i),
      );
      // Details that cannot be read fail that record() alone, not the batch it would have joined.
      const mixed = await Promise.allSettled([
        audit.record(event(300)),
        audit.record({
          ...event(301),
          details: {
            get broken(): unknown {
              throw new Error('unreadable');
            },
          },
        }),
        audit.record(event(301)),
      ]);
      assert.deepEqual(
        mixed.map((r) => r.status),
        ['fulfilled', 'rejected', 'fulfilled'],
      );
      // Enough entries for the verifier to read more than one page.
      const rest = Array.from({ length: 10_100 }, (_, i) => audit.record(event(302 + i)));
      await Promise.all(rest);
      await audit.close();

      const rows = await store.db
        .selectFrom('audit_entries')
        .select(['seq', 'time', 'ip_epoch', 'source_ip', 'details'])
        .where('seq', '<', 302)
        .orderBy('seq')
        .execute();
      for (const row of rows) {
        const i = Number(row.seq);
        const day = Number(row.time) < MIDNIGHT ? '2026-03-01' : '2026-03-02';
        assert.equal(row.ip_epoch, i % 4 ? day : null, `entry ${i}`);
        assert.equal(row.source_ip !== null, i % 4 !== 0, `entry ${i}`);
        assert.equal(row.details, JSON.stringify({ a: 'x', b: i, token: '[masked]' }));
      }
      assert.equal(rows.filter((r) => Number(r.time) < MIDNIGHT).length, 150);
      const viewed = await audit.query({ limit: 302 });
      assert.deepEqual(
        viewed.map((e) => e.sourceIp),
        Array.from({ length: 302 }, (_, i) => (i % 4 ? `198.51.100.${i % 250}` : null)),
      );

      const verify = () =>
        verifyAuditLog({
          db: store.db,
          publicKey: audit.signer.publicKey,
          fileCheckpoints: readFileCheckpoints(dataDir),
          requireFile: true,
        });
      const clean = await verify();
      assert.deepEqual(clean.problems, []);
      assert.equal(clean.entries, 10_402);
      assert.equal(clean.treeSize, 10_402);
      assert.equal(clean.checkpointsVerified, 1);

      await store.db.updateTable('audit_entries').set({ details: '{}' }).where('seq', '=', 10_050).execute();
      const tampered = await verify();
      assert.equal(tampered.ok, false);
      assert.deepEqual(
        tampered.problems.map((p) => [p.kind, p.position]),
        [
          ['root-mismatch', 0],
          ['modified', 10_050],
        ],
      );
    });
  });
}
