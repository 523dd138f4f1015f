// AUD-2: every kind of tampering with the stored log is detected by `castellan audit verify`, with
// the right position; an untouched log verifies. Runs on SQLite and PostgreSQL: a golden log is made
// by a real platform, then each case tampers with its own copy and runs the real CLI on it.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { type Checkpoint, CheckpointSigner, entryLeafHash, type StoredEntry } from '../../src/audit/index.ts';
import { dialectCases, dropSchema, POSTGRES_URL, uniqueSchema } from '../helpers/dialects.ts';
import { provisionTenant, startTestPlatform, type TestPlatform } from '../helpers/test-platform.ts';

const bin = resolve(import.meta.dirname, '../../bin/castellan.js');
const baseEnv: NodeJS.ProcessEnv = Object.fromEntries(
  Object.entries(process.env).filter(([k]) => !k.startsWith('CASTELLAN_') && k !== 'DATABASE_URL'),
);
const AUDIT_TABLES = ['audit_entries', 'audit_nodes', 'audit_checkpoints', 'audit_ip_keys'];
const FIRST_CHECKPOINT = 24;
const TOTAL = 40;

interface Problem {
  kind: string;
  position?: number;
  until?: number;
}

interface Copy {
  dataDir: string;
  env: NodeJS.ProcessEnv;
  exec(sql: string, values?: unknown[]): Promise<void>;
  rows(sql: string, values?: unknown[]): Promise<Record<string, unknown>[]>;
  close(): Promise<void>;
}

for (const dialect of await dialectCases()) {
  describe(`audit tamper detection on ${dialect.name}`, { skip: dialect.skip }, () => {
    let golden: TestPlatform;
    const copies: Copy[] = [];

    before(async () => {
      golden = await startTestPlatform(dialect.name, { audit: { checkpointIntervalSeconds: 0 } });
      await provisionTenant(golden, 1);
      const audit = golden.platform.audit;
      while (audit.size < FIRST_CHECKPOINT) {
        await audit.record({
          actor: { type: 'system', id: 'test' },
          type: 'test.event',
          target: `t${audit.size}`,
          sourceIp: '127.0.0.1',
          result: audit.size % 3 === 0 ? 'failure' : 'success',
          details: { n: audit.size },
        });
      }
      await audit.checkpoint('on-demand');
      while (audit.size < TOTAL) {
        await audit.record({
          actor: { type: 'system', id: 'test' },
          type: 'test.event',
          target: `t${audit.size}`,
          result: 'success',
        });
      }
      await golden.platform.close(); // writes the final (shutdown) checkpoint at TOTAL
    });
    after(async () => {
      for (const c of copies) await c.close();
      if (golden) await golden.close();
    });

    /** A private copy of the golden log (data directory, and database or schema). */
    async function copy(): Promise<Copy> {
      const dataDir = mkdtempSync(join(tmpdir(), 'castellan-tamper-'));
      cpSync(golden.dataDir, dataDir, { recursive: true });
      let result: Copy;
      if (dialect.name === 'sqlite') {
        const file = join(dataDir, 'castellan.db');
        const run = (fn: (db: DatabaseSync) => unknown) => {
          const db = new DatabaseSync(file);
          try {
            return fn(db);
          } finally {
            db.close();
          }
        };
        result = {
          dataDir,
          env: { CASTELLAN_DATA_DIR: dataDir },
          exec: async (sql, values = []) =>
            void run((db) => db.prepare(sql.replace(/\$\d+/g, '?')).run(...(values as never[]))),
          rows: async (sql, values = []) =>
            run((db) => db.prepare(sql.replace(/\$\d+/g, '?')).all(...(values as never[]))) as Record<
              string,
              unknown
            >[],
          close: async () => rmSync(dataDir, { recursive: true, force: true }),
        };
      } else {
        const schema = uniqueSchema();
        const client = new pg.Client({ connectionString: POSTGRES_URL, options: `-c search_path=${schema}` });
        await client.connect();
        await client.query(`create schema "${schema}"`);
        for (const table of AUDIT_TABLES)
          await client.query(`create table "${schema}".${table} as table "${golden.schema}".${table}`);
        result = {
          dataDir,
          env: { CASTELLAN_DATA_DIR: dataDir, CASTELLAN_DATABASE_URL: POSTGRES_URL, CASTELLAN_DATABASE_SCHEMA: schema },
          exec: async (sql, values = []) => void (await client.query(sql, values)),
          rows: async (sql, values = []) => (await client.query(sql, values)).rows as Record<string, unknown>[],
          close: async () => {
            await client.end();
            await dropSchema(schema);
            rmSync(dataDir, { recursive: true, force: true });
          },
        };
      }
      copies.push(result);
      return result;
    }

    function verify(c: Copy): { status: number | null; problems: Problem[]; text: string } {
      const run = spawnSync(process.execPath, [bin, 'audit', 'verify', '--json'], {
        env: { ...baseEnv, ...c.env },
        encoding: 'utf8',
        timeout: 60_000,
      });
      let problems: Problem[] = [];
      try {
        problems = (JSON.parse(run.stdout) as { problems: Problem[] }).problems;
      } catch {
        assert.fail(`verify printed no JSON (exit ${run.status}): ${run.stdout}${run.stderr}`);
      }
      return { status: run.status, problems, text: run.stdout };
    }

    const covers = (p: Problem, position: number) =>
      p.position !== undefined && p.position <= position && position <= (p.until ?? p.position);

    function expectDetected(result: ReturnType<typeof verify>, kind: string, position: number): void {
      assert.equal(result.status, 1, `verify must exit 1:\n${result.text}`);
      assert.ok(
        result.problems.some((p) => p.kind === kind && covers(p, position)),
        `expected ${kind} at ${position}, got ${JSON.stringify(result.problems)}`,
      );
    }

    async function entry(c: Copy, seq: number): Promise<StoredEntry> {
      const [r] = await c.rows('select * from audit_entries where seq = $1', [seq]);
      const buf = (v: unknown) => (v === null ? null : Buffer.from(v as Uint8Array));
      return {
        seq: Number(r!.seq),
        time: Number(r!.time),
        actorType: r!.actor_type as string,
        actorId: r!.actor_id as string,
        tenant: r!.tenant as string | null,
        eventType: r!.event_type as string,
        target: r!.target as string | null,
        result: r!.result as string,
        ipEpoch: r!.ip_epoch as string | null,
        sourceIp: buf(r!.source_ip),
        details: r!.details as string,
      };
    }

    test('[AUD-2] an untouched log verifies (exit 0)', async () => {
      const c = await copy();
      const result = verify(c);
      assert.equal(result.status, 0, result.text);
      assert.deepEqual(result.problems, []);
      const summary = JSON.parse(result.text) as { entries: number; checkpointsVerified: number };
      assert.equal(summary.entries, TOTAL);
      assert.ok(summary.checkpointsVerified >= 2);
    });

    test('[AUD-2] editing a field is reported at its position', async () => {
      const c = await copy();
      // Flipped, so the edit changes the entry whatever provisioning wrote there.
      await c.exec(
        "update audit_entries set result = case when result = 'success' then 'failure' else 'success' end where seq = 9",
      );
      expectDetected(verify(c), 'modified', 9);
    });

    test('[AUD-2] editing a field and rewriting its leaf hash is still reported at its position', async () => {
      const c = await copy();
      const e = await entry(c, 11);
      const forged = { ...e, target: 'someone-else' };
      await c.exec('update audit_entries set target = $1, leaf_hash = $2 where seq = 11', [
        'someone-else',
        entryLeafHash(forged),
      ]);
      expectDetected(verify(c), 'modified', 11);
    });

    test('[AUD-2] deleting an entry is reported at its position', async () => {
      const c = await copy();
      await c.exec('delete from audit_entries where seq = 13');
      expectDetected(verify(c), 'deleted', 13);
    });

    test('[AUD-2] deleting an entry and renumbering the rest is reported at its position', async () => {
      const c = await copy();
      await c.exec('delete from audit_entries where seq = 13');
      await c.exec('update audit_entries set seq = -(seq - 1) where seq > 13');
      await c.exec('update audit_entries set seq = -seq where seq < 0');
      expectDetected(verify(c), 'deleted', 13);
    });

    test('[AUD-2] inserting an entry (with a valid leaf hash) is reported at its position', async () => {
      const c = await copy();
      await c.exec('update audit_entries set seq = -(seq + 1) where seq >= 20');
      await c.exec('update audit_entries set seq = -seq where seq < 0');
      const forged = { ...(await entry(c, 19)), seq: 20, target: 'forged', details: '{}' };
      await c.exec(
        'insert into audit_entries (seq, time, actor_type, actor_id, tenant, event_type, target, result, ip_epoch, source_ip, details, leaf_hash) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)',
        [
          20,
          forged.time,
          forged.actorType,
          forged.actorId,
          forged.tenant,
          forged.eventType,
          forged.target,
          forged.result,
          forged.ipEpoch,
          forged.sourceIp,
          forged.details,
          entryLeafHash(forged),
        ],
      );
      expectDetected(verify(c), 'inserted', 20);
    });

    test('[AUD-2] swapping two entries is reported at both positions', async () => {
      const c = await copy();
      await c.exec('update audit_entries set seq = -1 where seq = 5');
      await c.exec('update audit_entries set seq = 5 where seq = 17');
      await c.exec('update audit_entries set seq = 17 where seq = -1');
      const result = verify(c);
      expectDetected(result, 'reordered', 5);
      expectDetected(result, 'reordered', 17);
    });

    test('[AUD-2] truncating the tail is reported from the first missing position', async () => {
      const c = await copy();
      await c.exec('delete from audit_entries where seq >= 30');
      expectDetected(verify(c), 'truncated', 30);
    });

    test('[AUD-2] deleting the newest checkpoint together with the entries after it is detected (the file keeps it)', async () => {
      const c = await copy();
      await c.exec('delete from audit_checkpoints where tree_size > $1', [FIRST_CHECKPOINT]);
      await c.exec('delete from audit_entries where seq >= $1', [FIRST_CHECKPOINT]);
      const result = verify(c);
      expectDetected(result, 'checkpoint-missing', TOTAL);
      expectDetected(result, 'truncated', FIRST_CHECKPOINT);
    });

    test('[AUD-2] checkpoints re-signed with another key are rejected', async () => {
      const c = await copy();
      const other = new CheckpointSigner(randomBytes(32));
      const resign = (cp: Checkpoint) =>
        other.sign({
          treeSize: cp.treeSize,
          rootHash: cp.rootHash,
          time: cp.time,
          kind: cp.kind,
          prunedBefore: cp.prunedBefore,
          prefix: cp.prefix,
        });
      for (const row of await c.rows('select tree_size, time, body from audit_checkpoints')) {
        const body = JSON.stringify(resign(JSON.parse(row.body as string) as Checkpoint));
        await c.exec('update audit_checkpoints set body = $1 where tree_size = $2 and time = $3', [
          body,
          row.tree_size,
          row.time,
        ]);
      }
      const file = join(c.dataDir, 'audit', 'checkpoints.jsonl');
      const lines = readFileSync(file, 'utf8').trim().split('\n');
      writeFileSync(file, `${lines.map((l) => JSON.stringify(resign(JSON.parse(l) as Checkpoint))).join('\n')}\n`);
      expectDetected(verify(c), 'checkpoint-signature', TOTAL);
    });
  });
}
