// Storage: Kysely over the embedded SQLite file (node:sqlite, WAL) or PostgreSQL, one API for both.
import { chmodSync, closeSync, mkdirSync, openSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { Kysely, PostgresDialect, type PostgresPool, sql } from 'kysely';
import pg from 'pg';
import { CastellanError } from '../errors/index.ts';
import { NodeSqliteDatabase } from './node-sqlite-adapter.ts';
import { PreparingPool } from './postgres-prepared-pool.ts';
import type { Database } from './schema.ts';
import { DurableSqliteDialect, WalSyncer } from './sqlite-durable-driver.ts';

export type DialectName = 'sqlite' | 'postgres';

export interface Store<DB = Database> {
  readonly db: Kysely<DB>;
  readonly dialect: DialectName;
  /** Human-readable location without credentials (for logs). */
  readonly location: string;
  ping(): Promise<void>;
  close(): Promise<void>;
}

export interface OpenStoreOptions {
  /** postgres://… for PostgreSQL; empty for SQLite. */
  url: string;
  dataDir: string;
  sqliteFile: string;
  poolMax: number;
  /** PostgreSQL schema to create and use (tests isolate themselves this way). */
  schema?: string;
  /** SQLite: makes the -wal file's group-commit syncer (tests inject a controllable fsync). */
  walSyncer?: (databaseFile: string) => WalSyncer;
}

const PG_INT8 = 20;

function describePostgres(url: string): string {
  try {
    const u = new URL(url);
    return `postgres://${u.hostname}:${u.port || 5432}${u.pathname}`;
  } catch {
    return 'postgres://(unparseable url)';
  }
}

export async function openStore<DB = Database>(options: OpenStoreOptions): Promise<Store<DB>> {
  if (options.url === '' || options.url.startsWith('sqlite:')) return openSqlite<DB>(options);
  if (!/^postgres(ql)?:\/\//.test(options.url)) {
    throw new CastellanError('ERR_CONFIG_INVALID', {
      message:
        'Invalid configuration: database.url must start with postgres:// or postgresql://, or be empty for SQLite',
    });
  }
  return openPostgres<DB>(options);
}

function openSqlite<DB>(options: OpenStoreOptions): Store<DB> {
  const dir = resolve(options.dataDir);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const file = options.url.startsWith('sqlite:') ? options.url.slice('sqlite:'.length) : join(dir, options.sqliteFile);
  // Created 0600 before SQLite opens it; SQLite gives the -wal and -shm files the same mode.
  closeSync(openSync(file, 'a', 0o600));
  chmodSync(file, 0o600);
  // The busy timeout comes first: switching a new file to WAL needs a lock another process may hold.
  const raw = new DatabaseSync(file, { timeout: 5000 });
  // WAL lets readers run beside the single writer. NORMAL stops a commit waiting for fsync on the event
  // loop; the driver answers a write only after the -wal file's fsync on the thread pool, so a committed
  // write still survives power loss ("QoS 1 acknowledged only after the write"): see
  // sqlite-durable-driver.ts.
  raw.exec('PRAGMA journal_mode = WAL');
  raw.exec('PRAGMA synchronous = NORMAL');
  raw.exec('PRAGMA foreign_keys = ON');
  const adapter = new NodeSqliteDatabase(raw);
  const syncer = options.walSyncer?.(file) ?? new WalSyncer(file);
  const db = new Kysely<DB>({ dialect: new DurableSqliteDialect(adapter, syncer) });
  return {
    db,
    dialect: 'sqlite',
    location: `sqlite:${file}`,
    async ping() {
      await sql`select 1`.execute(db);
    },
    async close() {
      await db.destroy();
    },
  };
}

async function openPostgres<DB>(options: OpenStoreOptions): Promise<Store<DB>> {
  const schema = options.schema ?? '';
  const types = {
    getTypeParser(oid: number, format?: string) {
      // int8 (timestamps in ms, sequence numbers) fit a double for the next 285,000 years.
      if (oid === PG_INT8) return (value: string) => Number(value);
      return pg.types.getTypeParser(oid, format as 'text') as (value: string) => unknown;
    },
  };
  const pool = new pg.Pool({
    connectionString: options.url,
    max: options.poolMax,
    types: types,
    ...(schema ? { options: `-c search_path=${schema}` } : {}),
    connectionTimeoutMillis: 5000,
  });
  // An idle client's error (server restart) must not crash the process; the next query reports it.
  pool.on('error', () => {});
  try {
    const client = await pool.connect();
    try {
      if (schema) {
        // Two processes creating the same schema at once race inside PostgreSQL's catalog even with
        // IF NOT EXISTS; the loser's unique violation means the schema now exists, which is the goal.
        await client.query(`create schema if not exists "${schema}"`).catch((error: { code?: string }) => {
          if (error.code !== '23505' && error.code !== '42P06') throw error;
        });
      }
    } finally {
      client.release();
    }
  } catch (error) {
    await pool.end().catch(() => {});
    throw new CastellanError('ERR_STORE_UNAVAILABLE', {
      message: `Cannot connect to PostgreSQL at ${describePostgres(options.url)}: ${(error as Error).message}`,
      cause: error,
    });
  }
  // Named prepared statements: parsed and planned once per connection (postgres-prepared-pool.ts).
  const db = new Kysely<DB>({
    dialect: new PostgresDialect({ pool: new PreparingPool(pool) as unknown as PostgresPool }),
  });
  return {
    db,
    dialect: 'postgres',
    location: describePostgres(options.url) + (schema ? ` (schema ${schema})` : ''),
    async ping() {
      await sql`select 1`.execute(db);
    },
    async close() {
      await db.destroy();
      // Kysely only ends a pool it has used; a store closed before its first query must end it too.
      if (!pool.ended) await pool.end().catch(() => {});
    },
  };
}
