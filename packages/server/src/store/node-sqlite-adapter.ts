// Kysely's SqliteDialect was written against better-sqlite3's statement shape (`reader`, array
// parameters). This adapter gives Node's built-in `node:sqlite` that shape, so the embedded default needs
// no native build.
import type { DatabaseSync, SQLInputValue, StatementSync } from 'node:sqlite';
import type { SqliteDatabase, SqliteStatement } from 'kysely';

function toSqlite(value: unknown): SQLInputValue {
  if (typeof value === 'boolean') return value ? 1 : 0;
  if (value === undefined) return null;
  return value as SQLInputValue;
}

class NodeSqliteStatement implements SqliteStatement {
  readonly reader: boolean;
  readonly #stmt: StatementSync;
  readonly #fresh: () => StatementSync;

  constructor(stmt: StatementSync, fresh: () => StatementSync) {
    this.#stmt = stmt;
    this.#fresh = fresh;
    // A statement returns rows when it has result columns: SELECT, PRAGMA, or anything with RETURNING.
    this.reader = stmt.columns().length > 0;
  }

  all(parameters: ReadonlyArray<unknown>): unknown[] {
    return this.#stmt.all(...parameters.map(toSqlite));
  }

  run(parameters: ReadonlyArray<unknown>): { changes: number | bigint; lastInsertRowid: number | bigint } {
    return this.#stmt.run(...parameters.map(toSqlite));
  }

  iterate(parameters: ReadonlyArray<unknown>): IterableIterator<unknown> {
    // A statement of its own: an iteration stays open across awaits, while the cached statement is
    // reused by the next query.
    return this.#fresh().iterate(...parameters.map(toSqlite)) as IterableIterator<unknown>;
  }
}

/** Prepared statements kept per connection, by SQL text (oldest dropped first). */
const STATEMENT_CACHE_SIZE = 500;

export class NodeSqliteDatabase implements SqliteDatabase {
  readonly #db: DatabaseSync;
  // Kysely prepares every query afresh; preparing (and reading the result columns) was ~11 % of an
  // authenticated API request's CPU (bench: http-auth profile). Statements run to completion
  // synchronously (all/run), so one prepared statement per SQL text can serve every query.
  readonly #statements = new Map<string, NodeSqliteStatement>();

  constructor(db: DatabaseSync) {
    this.#db = db;
  }

  prepare(sql: string): SqliteStatement {
    let statement = this.#statements.get(sql);
    if (statement) return statement;
    statement = new NodeSqliteStatement(this.#db.prepare(sql), () => this.#db.prepare(sql));
    if (this.#statements.size >= STATEMENT_CACHE_SIZE) {
      this.#statements.delete(this.#statements.keys().next().value!);
    }
    this.#statements.set(sql, statement);
    return statement;
  }

  close(): void {
    this.#statements.clear();
    if (this.#db.isOpen) this.#db.close();
  }
}
