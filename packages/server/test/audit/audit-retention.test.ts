// Retention (AUD-2, PRIV-4): entries past the retention period are removed only together with a signed
// checkpoint recording the removal, so the log still verifies; source IPs become unreadable after
// their day key is destroyed, while the entries holding them stay verifiable.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { pino } from 'pino';
import { AuditLog, readFileCheckpoints, verifyAuditLog, verifyInclusion } from '../../src/audit/index.ts';
import { migrateToLatest, openStore, type Store } from '../../src/store/index.ts';
import { dialectCases, dropSchema, POSTGRES_URL, uniqueSchema } from '../helpers/dialects.ts';

const DAY = 86_400_000;

for (const dialect of await dialectCases()) {
  describe(`audit retention on ${dialect.name}`, { skip: dialect.skip }, () => {
    let store: Store;
    let dataDir: string;
    let schema: string | undefined;
    let clock = Date.parse('2026-01-01T12:00:00Z');
    const rootKey = randomBytes(32);

    before(async () => {
      dataDir = mkdtempSync(join(tmpdir(), 'castellan-retention-'));
      schema = dialect.name === 'postgres' ? uniqueSchema() : undefined;
      store = await openStore({
        url: dialect.name === 'postgres' ? POSTGRES_URL : '',
        dataDir,
        sqliteFile: 'r.db',
        poolMax: 2,
        ...(schema ? { schema } : {}),
      });
      await migrateToLatest(store.db, store.dialect);
    });
    after(async () => {
      await store?.close();
      if (schema) await dropSchema(schema);
      rmSync(dataDir, { recursive: true, force: true });
    });

    const open = () =>
      AuditLog.open({
        db: store.db,
        dialect: store.dialect,
        rootKey,
        dataDir,
        log: pino({ level: 'silent' }),
        batchMaxRows: 100,
        queueMaxRows: 10_000,
        checkpointIntervalMs: 0,
        retentionDays: 200,
        ipRetentionDays: 30,
        witnessUrl: '',
        now: () => clock,
      });

    test('[AUD-2] [PRIV-4] old entries are pruned with a signed record of the removal; old IPs become unreadable; the log still verifies', async () => {
      const audit = await open();
      const record = (n: number) =>
        audit.record({
          actor: { type: 'system', id: 'test' },
          type: 'test.event',
          target: `t${n}`,
          sourceIp: '192.0.2.10',
          result: 'success',
        });
      for (let i = 0; i < 13; i++) await record(i); // day 0: will pass retention
      await audit.checkpoint('periodic');
      clock += 190 * DAY;
      for (let i = 13; i < 20; i++) await record(i); // day 190: kept, but its IP key will be destroyed
      clock += 40 * DAY; // day 230: day 0 is past 200 days, day 190 past 30 days
      for (let i = 20; i < 23; i++) await record(i);
      const { pruned, ipKeysDestroyed } = await audit.applyRetention();
      // The boundary is rounded down to an even position (entry 12 stays) so every kept entry keeps its
      // inclusion proof: the first kept leaf's sibling is a leaf, and leaves live only with their entries.
      assert.equal(pruned, 12);
      assert.equal(ipKeysDestroyed, 2);
      await audit.close();

      const remaining = await audit.query({ limit: 100 });
      assert.deepEqual(
        remaining.map((e) => e.seq),
        Array.from({ length: 11 }, (_, i) => 12 + i),
      );
      assert.deepEqual(
        remaining.map((e) => e.sourceIp),
        [...Array(8).fill(null), ...Array(3).fill('192.0.2.10')],
      );
      const latest = (await audit.latestCheckpoint())!;
      for (const seq of [12, 13, 22]) {
        const { leafHash, proof } = await audit.inclusionProof(seq, latest.treeSize);
        assert.ok(
          verifyInclusion(seq, latest.treeSize, leafHash, proof, Buffer.from(latest.rootHash, 'hex')),
          `entry ${seq}`,
        );
      }

      const result = await verifyAuditLog({
        db: store.db,
        publicKey: audit.signer.publicKey,
        fileCheckpoints: readFileCheckpoints(dataDir),
      });
      assert.deepEqual(result.problems, []);
      assert.equal(result.entries, 11);
      assert.equal(result.treeSize, 23);

      // A fresh writer continues the same tree after the prune (the frontier survives in stored nodes).
      const again = await open();
      assert.equal(again.size, 23);
      await again.record({ actor: { type: 'system', id: 'test' }, type: 'test.event', result: 'success' });
      await again.close();
      const after = await verifyAuditLog({
        db: store.db,
        publicKey: again.signer.publicKey,
        fileCheckpoints: readFileCheckpoints(dataDir),
      });
      assert.deepEqual(after.problems, []);
      assert.equal(after.treeSize, 24);
      // Deleting a retained entry is still caught after a prune.
      await store.db.deleteFrom('audit_entries').where('seq', '=', 15).execute();
      const tampered = await verifyAuditLog({
        db: store.db,
        publicKey: again.signer.publicKey,
        fileCheckpoints: readFileCheckpoints(dataDir),
      });
      assert.ok(tampered.problems.some((p) => p.kind === 'deleted' && p.position === 15));
    });
  });
}
