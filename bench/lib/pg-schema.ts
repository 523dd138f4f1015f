// Dropping a benchmark's PostgreSQL schema (and its `_keys` key-store schema), used by the platform process after it closed and by the
// runner as a fallback when that process died before it could.
import pg from 'pg';

const SCHEMA_NAME = /^bench_[a-f0-9]{8,32}$/;

export async function dropBenchSchema(databaseUrl: string, schema: string): Promise<void> {
  // Only names this harness generates: a typo must never drop somebody's real schema.
  if (!SCHEMA_NAME.test(schema)) throw new Error(`refusing to drop schema ${JSON.stringify(schema)}`);
  const client = new pg.Client({ connectionString: databaseUrl, connectionTimeoutMillis: 5000 });
  await client.connect();
  try {
    await client.query(`drop schema if exists "${schema}" cascade`);
    // The platform keeps its key store in a schema of its own next to the data (KEY-6).
    await client.query(`drop schema if exists "${schema}_keys" cascade`);
  } finally {
    await client.end();
  }
}
