// PostgreSQL named prepared statements (postgres-prepared-pool.ts): queries are prepared once per
// connection, give the same answers, survive a table changing under a prepared `select *`, and
// statements that are not DML stay unnamed.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { sql } from 'kysely';
import { openStore, type Store } from '../src/store/index.ts';
import { StatementNames } from '../src/store/postgres-prepared-pool.ts';
import { dialectCases, dropSchema, POSTGRES_URL, uniqueSchema } from './helpers/dialects.ts';

const postgres = (await dialectCases()).find((d) => d.name === 'postgres')!;

test('statement names: DML only, one name per text, bounded', () => {
  const names = new StatementNames();
  assert.equal(names.nameOf('select 1 where $1 = 1'), 'castellan_0');
  assert.equal(names.nameOf('select 1 where $1 = 1'), 'castellan_0');
  assert.equal(names.nameOf('  INSERT into t values ($1)'), 'castellan_1');
  for (const text of ['begin', 'commit', 'create table x (a int)', 'set search_path = a', 'drop table x']) {
    assert.equal(names.nameOf(text), null, text);
  }
  names.forget('update t set a = $1');
  assert.equal(names.nameOf('update t set a = $1'), null, 'a forgotten text stays unnamed');
  for (let i = 0; i < 600; i++) names.nameOf(`select ${i}`);
  assert.equal(names.size, 500, 'at most 500 names per process');
  assert.equal(names.nameOf('select 9999'), null);
});

describe('PostgreSQL named prepared statements', { skip: postgres.skip }, () => {
  let store: Store<{ t: { id: number; v: string } }>;
  let schema: string;
  let dataDir: string;

  before(async () => {
    schema = uniqueSchema();
    dataDir = mkdtempSync(join(tmpdir(), 'castellan-pg-prepared-'));
    // One connection, so that pg_prepared_statements (per session) shows what this store prepared.
    store = await openStore({ url: POSTGRES_URL, dataDir, sqliteFile: 'x.db', poolMax: 1, schema });
    await sql`create table t (id integer primary key, v text not null)`.execute(store.db);
  });
  after(async () => {
    await store?.close();
    await dropSchema(schema);
    rmSync(dataDir, { recursive: true, force: true });
  });

  const prepared = async () =>
    (
      await sql<{ statement: string }>`select statement from pg_prepared_statements order by statement`.execute(
        store.db,
      )
    ).rows.map((r) => r.statement);

  test('a query is prepared once and answers as before', async () => {
    await store.db.insertInto('t').values({ id: 1, v: 'a' }).execute();
    await store.db.insertInto('t').values({ id: 2, v: 'b' }).execute();
    for (const id of [1, 2, 1]) {
      const row = await store.db.selectFrom('t').select(['id', 'v']).where('id', '=', id).executeTakeFirst();
      assert.deepEqual({ ...row }, { id, v: id === 1 ? 'a' : 'b' });
    }
    const statements = await prepared();
    assert.equal(statements.filter((s) => s.startsWith('select "id", "v" from "t"')).length, 1);
    assert.equal(statements.filter((s) => s.startsWith('insert into "t"')).length, 1);
    assert.ok(!statements.some((s) => s.startsWith('create table')), 'DDL is not prepared');
  });

  test('a table changed under a prepared select * still answers, with the new column', async () => {
    const read = () => store.db.selectFrom('t').selectAll().where('id', '=', 1).executeTakeFirstOrThrow();
    assert.deepEqual({ ...(await read()) }, { id: 1, v: 'a' });
    await sql`alter table t add column extra integer not null default 7`.execute(store.db);
    assert.deepEqual({ ...(await read()) }, { id: 1, v: 'a', extra: 7 });
    assert.deepEqual({ ...(await read()) }, { id: 1, v: 'a', extra: 7 });
  });

  test('errors of a prepared statement reach the caller unchanged', async () => {
    await assert.rejects(store.db.insertInto('t').values({ id: 1, v: 'dup' }).execute(), { code: '23505' });
    const rows = await store.db.selectFrom('t').select('v').where('id', '=', 1).execute();
    assert.deepEqual(
      rows.map((r) => r.v),
      ['a'],
      'the duplicate was not written',
    );
  });
});
