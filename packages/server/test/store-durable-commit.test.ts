// The SQLite driver's durable commits: a write is answered only after the -wal file's fsync, which runs
// off the event loop and is shared by concurrent commits; reads never wait for one; a failed fsync fails
// the write it was meant to make durable.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { promisify } from 'node:util';
import { after, before, beforeEach, describe, test } from 'node:test';
import { sql } from 'kysely';
import { type FsyncFunction, openStore, type Store, WalSyncer } from '../src/store/index.ts';

const execFileAsync = promisify(execFile);

/** An fsync the test releases by hand. */
class HeldFsync {
  calls = 0;
  #pending: { resolve(): void; reject(error: Error): void }[] = [];
  readonly fsync: FsyncFunction = () =>
    new Promise((resolve, reject) => {
      this.calls++;
      this.#pending.push({ resolve, reject });
    });
  get waiting(): number {
    return this.#pending.length;
  }
  releaseAll(): void {
    for (const p of this.#pending.splice(0)) p.resolve();
  }
  failAll(error: Error): void {
    for (const p of this.#pending.splice(0)) p.reject(error);
  }
}

const settled = async (promise: Promise<unknown>): Promise<boolean> => {
  let done = false;
  void promise.then(
    () => (done = true),
    () => (done = true),
  );
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
  return done;
};

describe('SQLite durable commits', () => {
  let dir: string;
  let store: Store<{ t: { id: number; v: string } }>;
  let held: HeldFsync;

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'castellan-durable-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  const closeStore = async () => {
    if (!store) return;
    // A failed test may leave an fsync held: release it so closing does not wait forever.
    const closing = store.close();
    while (!(await settled(closing))) held.releaseAll();
    await closing;
  };

  beforeEach(async () => {
    await closeStore();
    held = new HeldFsync();
    store = await openStore({
      url: '',
      dataDir: dir,
      sqliteFile: `db-${Math.random().toString(36).slice(2)}.sqlite`,
      poolMax: 1,
      walSyncer: (file) => new WalSyncer(file, held.fsync),
    });
    const create = sql`create table t (id integer primary key, v text not null)`.execute(store.db);
    while (!(await settled(create))) held.releaseAll();
    await create;
  });

  test('a write is answered only after its fsync, and reads run meanwhile', async () => {
    const insert = store.db.insertInto('t').values({ id: 1, v: 'a' }).execute();
    assert.equal(await settled(insert), false, 'the insert waits for the fsync');
    assert.equal(held.waiting, 1);
    // The connection is free while the fsync runs: a read sees the committed row at once.
    const rows = await store.db.selectFrom('t').selectAll().execute();
    assert.deepEqual(
      rows.map((r) => ({ ...r })),
      [{ id: 1, v: 'a' }],
    );
    assert.equal(held.waiting, 1, 'a read does not fsync');
    held.releaseAll();
    await insert;
  });

  test('concurrent commits share fsyncs (group commit)', async () => {
    const before = held.calls;
    const first = store.db.insertInto('t').values({ id: 1, v: 'first' }).execute();
    await new Promise((r) => setImmediate(r));
    // 50 writes made while the first fsync runs all need the next one, and share it.
    const rest = Array.from({ length: 50 }, (_, i) =>
      store.db
        .insertInto('t')
        .values({ id: i + 2, v: 'x' })
        .execute(),
    );
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
    assert.equal(held.calls - before, 1, 'only the first fsync has started');
    held.releaseAll();
    await first;
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
    assert.equal(held.calls - before, 2, 'one more fsync for the 50 later writes');
    assert.equal(await settled(Promise.all(rest)), false, 'they wait for it');
    held.releaseAll();
    await Promise.all(rest);
    const { n } = await store.db
      .selectFrom('t')
      .select((eb) => eb.fn.countAll<number>().as('n'))
      .executeTakeFirstOrThrow();
    assert.equal(Number(n), 51);
  });

  test('a transaction is answered after one fsync at its end', async () => {
    const before = held.calls;
    const trx = store.db.transaction().execute(async (t) => {
      await t.insertInto('t').values({ id: 1, v: 'a' }).execute();
      await t.insertInto('t').values({ id: 2, v: 'b' }).execute();
      return 'done';
    });
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
    assert.equal(held.calls - before, 1);
    assert.equal(await settled(trx), false);
    held.releaseAll();
    assert.equal(await trx, 'done');
  });

  test('a failed fsync fails the write it was to make durable; the next write works', async () => {
    const insert = store.db.insertInto('t').values({ id: 1, v: 'a' }).execute();
    for (let i = 0; i < 3; i++) await new Promise((r) => setImmediate(r));
    held.failAll(Object.assign(new Error('EIO: i/o error, fsync'), { code: 'EIO' }));
    await assert.rejects(insert, /EIO/);
    const next = store.db.insertInto('t').values({ id: 2, v: 'b' }).execute();
    for (let i = 0; i < 3; i++) await new Promise((r) => setImmediate(r));
    held.releaseAll();
    await next;
  });

  test('the connection runs with synchronous = NORMAL in WAL mode', async () => {
    const { rows } = await sql<{ synchronous: number }>`pragma synchronous`.execute(store.db);
    assert.equal(rows[0]!.synchronous, 1);
    const mode = await sql<{ journal_mode: string }>`pragma journal_mode`.execute(store.db);
    assert.equal(mode.rows[0]!.journal_mode, 'wal');
  });
});

describe('SQLite durable commits, real fsync', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'castellan-durable-real-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  test('rows answered before the process is killed are in the file', async () => {
    // A child writes rows one by one with the real driver, prints each ID once its insert resolved,
    // then kills itself without closing the database (no checkpoint, no clean shutdown).
    const file = join(dir, 'killed.sqlite');
    const script = `
      import { openStore } from ${JSON.stringify(new URL('../src/store/index.ts', import.meta.url).href)};
      import { sql } from 'kysely';
      const store = await openStore({ url: '', dataDir: ${JSON.stringify(dir)}, sqliteFile: 'killed.sqlite', poolMax: 1 });
      await sql\`create table t (id integer primary key)\`.execute(store.db);
      for (let id = 1; id <= 200; id++) {
        await store.db.insertInto('t').values({ id }).execute();
        if (id % 50 === 0) process.stdout.write(id + '\\n');
      }
      process.kill(process.pid, 'SIGKILL');
    `;
    const result = await execFileAsync(process.execPath, ['--input-type=module', '-e', script], {
      cwd: new URL('..', import.meta.url).pathname,
    }).catch((error: { stdout: string; signal: string }) => error);
    assert.equal((result as { signal?: string }).signal, 'SIGKILL');
    const acknowledged = Math.max(...result.stdout.trim().split('\n').map(Number));
    assert.equal(acknowledged, 200);
    const db = new DatabaseSync(file);
    try {
      const row = db.prepare('select count(*) as n from t').get() as { n: number };
      assert.equal(row.n, 200);
    } finally {
      db.close();
    }
  });
});
