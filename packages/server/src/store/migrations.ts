// One ordered migration set for both dialects, run at start-up. Never edit a released migration:
// add a new one.
import { type Kysely, type Migration, type MigrationProvider, Migrator, sql } from 'kysely';
import { CastellanError } from '../errors/index.ts';
import type { DialectName } from './database.ts';

interface ColumnTypes {
  binary: 'blob' | 'bytea';
  serial: 'integer' | 'bigserial';
}

function columnTypes(dialect: DialectName): ColumnTypes {
  return dialect === 'postgres' ? { binary: 'bytea', serial: 'bigserial' } : { binary: 'blob', serial: 'integer' };
}

// biome-ignore lint/suspicious/noExplicitAny: migrations run before the typed schema exists.
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- migrations run before the typed schema exists.
type AnyDb = Kysely<any>;

function migrationsFor(dialect: DialectName): Record<string, Migration> {
  const t = columnTypes(dialect);
  return {
    '0001_foundation': {
      async up(db: AnyDb) {
        // accounts
        await db.schema
          .createTable('admins')
          .addColumn('id', 'text', (c) => c.primaryKey())
          .addColumn('name', 'text', (c) => c.notNull())
          .addColumn('created_at', 'bigint', (c) => c.notNull())
          .execute();
        await db.schema
          .createTable('setup_tokens')
          .addColumn('id', 'text', (c) => c.primaryKey())
          .addColumn('token_hash', t.binary, (c) => c.notNull().unique())
          .addColumn('created_at', 'bigint', (c) => c.notNull())
          .addColumn('used_at', 'bigint')
          .execute();
        await db.schema
          .createTable('api_credentials')
          .addColumn('id', 'text', (c) => c.primaryKey())
          .addColumn('kind', 'text', (c) => c.notNull())
          .addColumn('principal_id', 'text', (c) => c.notNull())
          .addColumn('token_hash', t.binary, (c) => c.notNull().unique())
          .addColumn('label', 'text', (c) => c.notNull())
          .addColumn('created_at', 'bigint', (c) => c.notNull())
          .addColumn('revoked_at', 'bigint')
          .execute();
        await db.schema
          .createTable('vendors')
          .addColumn('id', 'text', (c) => c.primaryKey())
          .addColumn('code', 'text', (c) => c.notNull().unique())
          .addColumn('name', 'text', (c) => c.notNull())
          .addColumn('created_at', 'bigint', (c) => c.notNull())
          .execute();
        // devices
        await db.schema
          .createTable('products')
          .addColumn('id', 'text', (c) => c.primaryKey())
          .addColumn('vendor_id', 'text', (c) => c.notNull())
          .addColumn('code', 'text', (c) => c.notNull())
          .addColumn('name', 'text', (c) => c.notNull())
          .addColumn('category', 'text', (c) => c.notNull())
          .addColumn('created_at', 'bigint', (c) => c.notNull())
          .addUniqueConstraint('products_vendor_code_unique', ['vendor_id', 'code'])
          .execute();
        await db.schema
          .createTable('devices')
          .addColumn('id', 'text', (c) => c.primaryKey())
          .addColumn('vendor_id', 'text', (c) => c.notNull())
          .addColumn('product_id', 'text', (c) => c.notNull().references('products.id'))
          .addColumn('secret_ciphertext', t.binary, (c) => c.notNull())
          .addColumn('status', 'text', (c) => c.notNull())
          .addColumn('created_at', 'bigint', (c) => c.notNull())
          .execute();
        await db.schema.createIndex('devices_product_idx').on('devices').columns(['product_id']).execute();
        await db.schema
          .createTable('telemetry')
          .addColumn('seq', t.serial, (c) => (dialect === 'sqlite' ? c.primaryKey().autoIncrement() : c.primaryKey()))
          .addColumn('device_id', 'text', (c) => c.notNull())
          .addColumn('received_at', 'bigint', (c) => c.notNull())
          .addColumn('payload', t.binary, (c) => c.notNull())
          .execute();
        await db.schema.createIndex('telemetry_device_seq_idx').on('telemetry').columns(['device_id', 'seq']).execute();
      },
    },
  };
}

class StaticProvider implements MigrationProvider {
  readonly #migrations: Record<string, Migration>;
  constructor(migrations: Record<string, Migration>) {
    this.#migrations = migrations;
  }
  async getMigrations(): Promise<Record<string, Migration>> {
    return this.#migrations;
  }
}

/** Brings the schema up to date; throws ERR_STORE_UNAVAILABLE naming the failed migration. */
export async function migrateToLatest(db: AnyDb, dialect: DialectName, schema?: string): Promise<string[]> {
  // The migration tables are schema-qualified: Kysely checks for them across all schemas, so another
  // schema's tables (another tenant database, a parallel test) must not be mistaken for ours.
  const migrator = new Migrator({
    db,
    provider: new StaticProvider(migrationsFor(dialect)),
    ...(schema ? { migrationTableSchema: schema } : {}),
  });
  const { error, results } = await migrator.migrateToLatest();
  const failed = results?.find((r) => r.status === 'Error');
  if (error) {
    throw new CastellanError('ERR_STORE_UNAVAILABLE', {
      message: `Database migration ${failed?.migrationName ?? ''} failed: ${(error as Error | undefined)?.message ?? 'unknown error'}`,
      cause: error,
    });
  }
  return (results ?? []).filter((r) => r.status === 'Success').map((r) => r.migrationName);
}

export { sql };
