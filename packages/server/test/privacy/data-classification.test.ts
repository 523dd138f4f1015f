// PRIV-1: every stored column has a classification, on both databases; a column added without one
// fails this test. Secret columns are never stored in clear.
import assert from 'node:assert/strict';
import { DatabaseSync } from 'node:sqlite';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { DATA_CLASSIFICATION, KEY_STORE_CLASSIFICATION } from '../../src/privacy/index.ts';
import { dialectCases, pgQuery } from '../helpers/dialects.ts';
import { startTestPlatform, type TestPlatform } from '../helpers/test-platform.ts';

async function columnsOf(tp: TestPlatform, store: 'data' | 'keys'): Promise<Map<string, string[]>> {
  const out = new Map<string, string[]>();
  if (tp.dialect === 'sqlite') {
    const db = new DatabaseSync(join(tp.dataDir, store === 'data' ? 'castellan.db' : 'keystore.db'), {
      readOnly: true,
    });
    try {
      const tables = db
        .prepare("select name from sqlite_master where type = 'table' and name not like 'sqlite_%'")
        .all() as { name: string }[];
      for (const { name } of tables) {
        out.set(
          name,
          (db.prepare(`pragma table_info("${name}")`).all() as { name: string }[]).map((c) => c.name),
        );
      }
    } finally {
      db.close();
    }
  } else {
    const schema = store === 'data' ? tp.schema! : `${tp.schema!}_keys`;
    const rows = await pgQuery<{ table_name: string; column_name: string }>(
      schema,
      'select table_name, column_name from information_schema.columns where table_schema = $1 order by table_name, ordinal_position',
      [schema],
    );
    for (const r of rows) out.set(r.table_name, [...(out.get(r.table_name) ?? []), r.column_name]);
  }
  return out;
}

for (const dialect of await dialectCases()) {
  describe(`data classification on ${dialect.name}`, { skip: dialect.skip }, () => {
    let tp: TestPlatform;
    before(async () => {
      tp = await startTestPlatform(dialect.name);
    });
    after(() => tp?.close());

    for (const [store, registry] of [
      ['data', DATA_CLASSIFICATION],
      ['keys', KEY_STORE_CLASSIFICATION],
    ] as const) {
      test(`[PRIV-1] every column of the ${store} store is classified, and the registry names no column that does not exist`, async () => {
        const actual = await columnsOf(tp, store);
        const unclassified: string[] = [];
        for (const [table, columns] of actual) {
          for (const column of columns) if (!registry[table]?.[column]) unclassified.push(`${table}.${column}`);
        }
        assert.deepEqual(unclassified, [], 'classify these columns in src/privacy/data-classification.ts');
        const stale: string[] = [];
        for (const [table, columns] of Object.entries(registry)) {
          for (const column of Object.keys(columns))
            if (!actual.get(table)?.includes(column)) stale.push(`${table}.${column}`);
        }
        assert.deepEqual(stale, []);
      });
    }

    test('[PRIV-1] secret and personal columns are protected at rest', () => {
      for (const registry of [DATA_CLASSIFICATION, KEY_STORE_CLASSIFICATION]) {
        for (const [table, columns] of Object.entries(registry)) {
          for (const [column, cls] of Object.entries(columns)) {
            if (cls.level === 'secret')
              assert.notEqual(cls.protection, 'none', `${table}.${column} is secret but unprotected`);
            if (cls.level === 'personal' && cls.protection === 'none') {
              assert.ok(cls.retention, `${table}.${column} is personal, unprotected and has no retention rule`);
            }
          }
        }
      }
    });
  });
}
