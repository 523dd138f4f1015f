// Kysely driver for node:sqlite whose commits do not block the event loop on fsync.
//
// node:sqlite runs every statement synchronously on the calling thread. With `synchronous = FULL` each
// commit also waits there for fsync (1–2 ms on the bench machine): the profiles of the telemetry, command
// and audit benchmarks put 20–40 % of the platform's event-loop time in those waits. Here the connection
// runs with `synchronous = NORMAL` in WAL mode, where a commit only writes its frames to the -wal file,
// and a query that wrote is answered only after an fsync of that file has completed on libuv's thread
// pool. That gives the same promise as FULL (what a caller was told is committed survives power loss)
// without the wait on the event loop, and concurrent commits share one fsync (group commit).
//
// Why an fsync of the -wal file is enough (https://sqlite.org/pragma.html#pragma_synchronous,
// https://sqlite.org/wal.html): under NORMAL, SQLite itself syncs the WAL before every checkpoint, the
// database file after it, and the WAL header when the WAL restarts; the frames of commits since the last
// checkpoint live only in the -wal file, which an fsync of that inode (from any descriptor) makes durable.
// Recovery replays every frame up to the last valid commit frame, so everything committed before the
// fsync began is recovered. The -wal file keeps its inode while the connection is open (SQLite deletes it
// only when the last connection closes).
import { closeSync, fsync, fsyncSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import {
  CompiledQuery,
  type DatabaseConnection,
  type DatabaseIntrospector,
  type Dialect,
  type DialectAdapter,
  type Driver,
  type Kysely,
  type QueryCompiler,
  type QueryResult,
  SelectQueryNode,
  SqliteAdapter,
  type SqliteDatabase,
  SqliteIntrospector,
  SqliteQueryCompiler,
} from 'kysely';

/** Flushes a file descriptor to stable storage off the event loop. */
export type FsyncFunction = (fd: number) => Promise<void>;

const fsyncOnThreadPool: FsyncFunction = (fd) =>
  new Promise((resolve, reject) => fsync(fd, (error) => (error ? reject(error) : resolve())));

/**
 * Group commit for the -wal file: a commit made while an fsync is running needs the next one (the
 * running one may have started before the commit's frames were written); everyone who commits
 * meanwhile shares that next fsync.
 */
export class WalSyncer {
  readonly #walPath: string;
  readonly #fsync: FsyncFunction;
  #fd: number | undefined;
  #running: Promise<void> | undefined;
  #next: Promise<void> | undefined;
  readonly stats = { syncs: 0, waits: 0 };

  constructor(databaseFile: string, fsyncFunction: FsyncFunction = fsyncOnThreadPool) {
    this.#walPath = `${databaseFile}-wal`;
    this.#fsync = fsyncFunction;
  }

  /** Resolves once every frame written before the call is on stable storage. */
  sync(): Promise<void> {
    this.stats.waits++;
    if (!this.#running) return this.#start();
    this.#next ??= this.#running.then(
      () => this.#startNext(),
      () => this.#startNext(),
    );
    return this.#next;
  }

  #startNext(): Promise<void> {
    this.#next = undefined;
    return this.#start();
  }

  #start(): Promise<void> {
    let fd: number;
    try {
      fd = this.#open();
    } catch (error) {
      return Promise.reject(error instanceof Error ? error : new Error(String(error)));
    }
    this.stats.syncs++;
    const running = this.#fsync(fd).finally(() => {
      if (this.#running === running) this.#running = undefined;
    });
    this.#running = running;
    return running;
  }

  #open(): number {
    if (this.#fd !== undefined) return this.#fd;
    this.#fd = openSync(this.#walPath, 'r');
    // The -wal file's directory entry must be durable too (SQLite under FULL does the same once).
    const dir = openSync(dirname(this.#walPath), 'r');
    try {
      fsyncSync(dir); // once per process
    } finally {
      closeSync(dir);
    }
    return this.#fd;
  }

  /** Waits for running fsyncs, then releases the descriptor. */
  async close(): Promise<void> {
    while (this.#running || this.#next) await (this.#next ?? this.#running)?.catch(() => {});
    if (this.#fd !== undefined) closeSync(this.#fd);
    this.#fd = undefined;
  }
}

// Statements that cannot change the database file. Anything else (insert, update, delete, DDL, commit,
// and `with …` whose body may write) marks the connection as having written.
const READ_ONLY_STATEMENT = /^\s*(?:select|pragma|begin|rollback|savepoint|release|explain)\b/i;

class DurableSqliteConnection implements DatabaseConnection {
  readonly #db: SqliteDatabase;
  /** Set when a statement that may write ran since the connection was acquired. */
  wrote = false;

  constructor(db: SqliteDatabase) {
    this.#db = db;
  }

  executeQuery<R>(compiledQuery: CompiledQuery): Promise<QueryResult<R>> {
    const { sql, parameters } = compiledQuery;
    const stmt = this.#db.prepare(sql);
    if (!READ_ONLY_STATEMENT.test(sql)) this.wrote = true;
    if (stmt.reader) return Promise.resolve({ rows: stmt.all(parameters) as R[] });
    const { changes, lastInsertRowid } = stmt.run(parameters);
    return Promise.resolve({
      numAffectedRows: changes === undefined || changes === null ? undefined : BigInt(changes),
      insertId: lastInsertRowid === undefined || lastInsertRowid === null ? undefined : BigInt(lastInsertRowid),
      rows: [],
    });
  }

  async *streamQuery<R>(compiledQuery: CompiledQuery): AsyncIterableIterator<QueryResult<R>> {
    const { sql, parameters, query } = compiledQuery;
    if (!SelectQueryNode.is(query)) throw new Error('The SQLite driver streams only select queries');
    for (const row of this.#db.prepare(sql).iterate(parameters)) yield { rows: [row as R] };
  }
}

function quoteIdentifier(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

/** One connection (SQLite has a single writer); a queue hands it to one user at a time. */
class DurableSqliteDriver implements Driver {
  readonly #db: SqliteDatabase;
  readonly #syncer: WalSyncer;
  readonly #connection: DurableSqliteConnection;
  #locked: Promise<void> | undefined;
  #unlock: (() => void) | undefined;

  constructor(db: SqliteDatabase, syncer: WalSyncer) {
    this.#db = db;
    this.#syncer = syncer;
    this.#connection = new DurableSqliteConnection(db);
  }

  async init(): Promise<void> {}

  async acquireConnection(): Promise<DatabaseConnection> {
    while (this.#locked) await this.#locked;
    this.#locked = new Promise((resolve) => {
      this.#unlock = resolve;
    });
    this.#connection.wrote = false;
    return this.#connection;
  }

  async beginTransaction(connection: DatabaseConnection): Promise<void> {
    await connection.executeQuery(CompiledQuery.raw('begin'));
  }

  async commitTransaction(connection: DatabaseConnection): Promise<void> {
    await connection.executeQuery(CompiledQuery.raw('commit'));
  }

  async rollbackTransaction(connection: DatabaseConnection): Promise<void> {
    await connection.executeQuery(CompiledQuery.raw('rollback'));
  }

  async savepoint(connection: DatabaseConnection, name: string): Promise<void> {
    await connection.executeQuery(CompiledQuery.raw(`savepoint ${quoteIdentifier(name)}`));
  }

  async rollbackToSavepoint(connection: DatabaseConnection, name: string): Promise<void> {
    await connection.executeQuery(CompiledQuery.raw(`rollback to ${quoteIdentifier(name)}`));
  }

  async releaseSavepoint(connection: DatabaseConnection, name: string): Promise<void> {
    await connection.executeQuery(CompiledQuery.raw(`release ${quoteIdentifier(name)}`));
  }

  async releaseConnection(): Promise<void> {
    const wrote = this.#connection.wrote;
    this.#connection.wrote = false;
    const unlock = this.#unlock;
    this.#locked = undefined;
    this.#unlock = undefined;
    // The next user gets the connection now; this one's caller is answered once its frames are durable
    // (Kysely awaits releaseConnection before it returns the query's result).
    unlock?.();
    if (wrote) await this.#syncer.sync();
  }

  async destroy(): Promise<void> {
    await this.#syncer.close();
    this.#db.close();
  }
}

export class DurableSqliteDialect implements Dialect {
  readonly #db: SqliteDatabase;
  readonly #syncer: WalSyncer;

  constructor(db: SqliteDatabase, syncer: WalSyncer) {
    this.#db = db;
    this.#syncer = syncer;
  }

  createDriver(): Driver {
    return new DurableSqliteDriver(this.#db, this.#syncer);
  }

  createQueryCompiler(): QueryCompiler {
    return new SqliteQueryCompiler();
  }

  createAdapter(): DialectAdapter {
    return new SqliteAdapter();
  }

  createIntrospector(db: Kysely<unknown>): DatabaseIntrospector {
    return new SqliteIntrospector(db);
  }
}
