// Storage test matrix: every storage test runs on SQLite and PostgreSQL. PostgreSQL comes from
// TEST_DATABASE_URL (default: the local server's `test` database). On CI (CI=true) an unreachable
// PostgreSQL fails the run instead of skipping it.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { migrateToLatest, openStore, type Store } from '../../src/store/index.ts';

export type DialectName = 'sqlite' | 'postgres';

export const POSTGRES_URL = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const onCi = process.env.CI === 'true';

let reachable: Promise<string | null> | undefined;

/** null when reachable, otherwise why not. */
function probePostgres(): Promise<string | null> {
  reachable ??= (async () => {
    const client = new pg.Client({ connectionString: POSTGRES_URL, connectionTimeoutMillis: 3000 });
    try {
      await client.connect();
      await client.query('select 1');
      return null;
    } catch (error) {
      return (error as Error).message;
    } finally {
      await client.end().catch(() => {});
    }
  })();
  return reachable;
}

export interface DialectCase {
  name: DialectName;
  /** Set when this dialect cannot run here (never on CI). */
  skip: string | false;
}

export async function dialectCases(): Promise<DialectCase[]> {
  const why = await probePostgres();
  if (why && onCi) throw new Error(`PostgreSQL at ${POSTGRES_URL} is unreachable on CI (CI=true): ${why}`);
  return [
    { name: 'sqlite', skip: false },
    { name: 'postgres', skip: why ? `PostgreSQL unreachable (${why}); set TEST_DATABASE_URL` : false },
  ];
}

/** A fresh schema name per test file/platform, dropped afterwards. */
export function uniqueSchema(): string {
  return `t_${randomBytes(6).toString('hex')}`;
}

export async function dropSchema(schema: string): Promise<void> {
  const client = new pg.Client({ connectionString: POSTGRES_URL });
  await client.connect();
  try {
    await client.query(`drop schema if exists "${schema}" cascade`);
  } finally {
    await client.end();
  }
}

/** Runs a query in a schema (to check what the platform stored, independently of its code). */
export async function pgQuery<T = Record<string, unknown>>(
  schema: string,
  text: string,
  values: unknown[] = [],
): Promise<T[]> {
  const client = new pg.Client({ connectionString: POSTGRES_URL, options: `-c search_path=${schema}` });
  await client.connect();
  try {
    return (await client.query(text, values)).rows as T[];
  } finally {
    await client.end();
  }
}

export interface TestStore {
  readonly store: Store;
  /** The SQLite file's directory (also a scratch directory on PostgreSQL). */
  readonly dataDir: string;
  /** The PostgreSQL schema, undefined on SQLite. */
  readonly schema: string | undefined;
  /** Closes the store and removes its schema and directory. */
  dispose(): Promise<void>;
}

/** A migrated store of its own for a storage test: a temporary SQLite file or a fresh PostgreSQL schema. */
export async function openTestStore(dialect: DialectName, prefix: string): Promise<TestStore> {
  const dataDir = mkdtempSync(join(tmpdir(), `castellan-${prefix}-`));
  const schema = dialect === 'postgres' ? uniqueSchema() : undefined;
  const store = await openStore({
    url: dialect === 'postgres' ? POSTGRES_URL : '',
    dataDir,
    sqliteFile: 'store.db',
    poolMax: 4,
    ...(schema ? { schema } : {}),
  });
  await migrateToLatest(store.db, store.dialect);
  return {
    store,
    dataDir,
    schema,
    async dispose() {
      await store.close();
      if (schema) await dropSchema(schema);
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
