// Named prepared statements for Kysely's PostgreSQL driver. Kysely sends every query as an unnamed
// statement, so PostgreSQL parses and plans it on every execution; for the short joined queries of an
// authenticated request, planning cost more than executing (`EXPLAIN ANALYZE`: ~520 µs planning against
// ~115 µs execution for a device read's two queries). A named statement is parsed once per connection,
// and after five executions PostgreSQL may keep a generic plan.
//
// The pool handed to Kysely wraps pg's: each client's query(text, values) becomes
// query({ name, text, values }) for the first STATEMENT_NAMES_MAX distinct texts of this process (the
// rest stay unnamed, so a stream of distinct texts such as IN lists of every length cannot grow every
// connection's server-side memory without bound).
import type pg from 'pg';

const STATEMENT_NAMES_MAX = 500;
// Statements worth preparing: DML and queries with a body. begin/commit/DDL/SET run unnamed.
const PREPARABLE = /^\s*(?:select|insert|update|delete|with)\b/i;
// "cached plan must not change result type": a table changed under a prepared `select *`.
const PLAN_INVALIDATED = '0A000';

interface QueryResultLike {
  command: string;
  rowCount: number | null;
  rows: unknown[];
}

interface PoolClientLike {
  query(textOrConfig: unknown, values?: unknown[]): Promise<QueryResultLike>;
  release(error?: Error | boolean): void;
}

export class StatementNames {
  readonly #names = new Map<string, string>();
  /** Texts whose prepared form failed once: they run unnamed from then on. */
  readonly #unnamed = new Set<string>();

  nameOf(text: string): string | null {
    const known = this.#names.get(text);
    if (known !== undefined) return known;
    if (this.#names.size >= STATEMENT_NAMES_MAX || this.#unnamed.has(text) || !PREPARABLE.test(text)) return null;
    const name = `castellan_${this.#names.size}`;
    this.#names.set(text, name);
    return name;
  }

  forget(text: string): void {
    this.#unnamed.add(text);
  }

  get size(): number {
    return this.#names.size;
  }
}

class PreparingClient {
  readonly #client: pg.PoolClient;
  readonly #names: StatementNames;

  constructor(client: pg.PoolClient, names: StatementNames) {
    this.#client = client;
    this.#names = names;
  }

  async query(textOrConfig: unknown, values?: unknown[]): Promise<QueryResultLike> {
    const client = this.#client as unknown as PoolClientLike;
    if (typeof textOrConfig !== 'string') return client.query(textOrConfig, values);
    const name = this.#names.nameOf(textOrConfig);
    if (name === null) return client.query(textOrConfig, values);
    try {
      return await client.query({ name, text: textOrConfig, values });
    } catch (error) {
      const { code, message } = error as { code?: string; message?: string };
      if (code !== PLAN_INVALIDATED || !message?.includes('cached plan')) throw error;
      // Outside a transaction the failed statement changed nothing; inside one the transaction is
      // aborted and the caller's retry logic (if any) applies, as for any failed statement.
      this.#names.forget(textOrConfig);
      return client.query(textOrConfig, values);
    }
  }

  release(error?: Error | boolean): void {
    this.#client.release(error);
  }
}

/** The pool Kysely's PostgresDialect is given: pg's pool, its clients preparing named statements. */
export class PreparingPool {
  readonly #pool: pg.Pool;
  readonly names = new StatementNames();
  readonly #clients = new WeakMap<pg.PoolClient, PreparingClient>();

  constructor(pool: pg.Pool) {
    this.#pool = pool;
  }

  async connect(): Promise<PreparingClient> {
    const client = await this.#pool.connect();
    let wrapped = this.#clients.get(client);
    if (!wrapped) {
      wrapped = new PreparingClient(client, this.names);
      this.#clients.set(client, wrapped);
    }
    return wrapped;
  }

  end(): Promise<void> {
    return this.#pool.end();
  }
}
