// One ordered migration set for both dialects, run at start-up. Never edit a released migration:
// add a new one.
import { type Kysely, type Migration, sql } from 'kysely';
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

/** The key store's own migrations: it lives apart from the data (its own file or schema, own backups). */
function keyStoreMigrationsFor(dialect: DialectName): Record<string, Migration> {
  const t = columnTypes(dialect);
  return {
    '0001_key_versions': {
      async up(db: AnyDb) {
        await db.schema
          .createTable('key_versions')
          .addColumn('id', 'text', (c) => c.primaryKey())
          .addColumn('key_name', 'text', (c) => c.notNull())
          .addColumn('tenant', 'text', (c) => c.notNull())
          .addColumn('version', 'integer', (c) => c.notNull())
          .addColumn('suite', 'text', (c) => c.notNull())
          .addColumn('state', 'text', (c) => c.notNull())
          // The key material wrapped under the root key; NULL once destroyed (crypto-shredding).
          .addColumn('wrapped_material', t.binary)
          .addColumn('created_at', 'bigint', (c) => c.notNull())
          .addColumn('state_changed_at', 'bigint', (c) => c.notNull())
          .addUniqueConstraint('key_versions_name_version_unique', ['key_name', 'version'])
          .execute();
        await db.schema.createIndex('key_versions_tenant_idx').on('key_versions').columns(['tenant']).execute();
      },
    },
    '0002_backup_keys': {
      async up(db: AnyDb) {
        // Keys that seal key-store backups; destroying one makes every backup sealed by it unreadable.
        await db.schema
          .createTable('backup_keys')
          .addColumn('id', 'text', (c) => c.primaryKey())
          .addColumn('state', 'text', (c) => c.notNull())
          .addColumn('wrapped_material', t.binary)
          .addColumn('created_at', 'bigint', (c) => c.notNull())
          .addColumn('state_changed_at', 'bigint', (c) => c.notNull())
          .execute();
      },
    },
  };
}

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
    '0002_audit': {
      async up(db: AnyDb) {
        // audit: the entries are the Merkle tree's leaves; seq is the leaf index, assigned by the writer.
        await db.schema
          .createTable('audit_entries')
          .addColumn('seq', 'bigint', (c) => c.primaryKey())
          .addColumn('time', 'bigint', (c) => c.notNull())
          .addColumn('actor_type', 'text', (c) => c.notNull())
          .addColumn('actor_id', 'text', (c) => c.notNull())
          .addColumn('tenant', 'text')
          .addColumn('event_type', 'text', (c) => c.notNull())
          .addColumn('target', 'text')
          .addColumn('result', 'text', (c) => c.notNull())
          .addColumn('ip_epoch', 'text')
          .addColumn('source_ip', t.binary)
          .addColumn('details', 'text', (c) => c.notNull())
          .addColumn('leaf_hash', t.binary, (c) => c.notNull())
          .execute();
        await db.schema.createIndex('audit_entries_time_idx').on('audit_entries').columns(['time']).execute();
        await db.schema
          .createIndex('audit_entries_tenant_idx')
          .on('audit_entries')
          .columns(['tenant', 'seq'])
          .execute();
        await db.schema
          .createIndex('audit_entries_target_idx')
          .on('audit_entries')
          .columns(['target', 'seq'])
          .execute();
        // Interior nodes of complete subtrees, for proofs and for localising tampering.
        await db.schema
          .createTable('audit_nodes')
          .addColumn('height', 'integer', (c) => c.notNull())
          .addColumn('idx', 'bigint', (c) => c.notNull())
          .addColumn('hash', t.binary, (c) => c.notNull())
          .addPrimaryKeyConstraint('audit_nodes_pk', ['height', 'idx'])
          .execute();
        await db.schema
          .createTable('audit_checkpoints')
          .addColumn('tree_size', 'bigint', (c) => c.notNull())
          .addColumn('time', 'bigint', (c) => c.notNull())
          .addColumn('body', 'text', (c) => c.notNull())
          .addPrimaryKeyConstraint('audit_checkpoints_pk', ['tree_size', 'time'])
          .execute();
        // One key per day for source IPs; destroyed after the security-retention period (PRIV-4).
        await db.schema
          .createTable('audit_ip_keys')
          .addColumn('epoch', 'text', (c) => c.primaryKey())
          .addColumn('sealed_key', t.binary)
          .addColumn('created_at', 'bigint', (c) => c.notNull())
          .addColumn('destroyed_at', 'bigint')
          .execute();
      },
    },
    '0003_guard': {
      async up(db: AnyDb) {
        // guard: detections and the response taken.
        await db.schema
          .createTable('guard_alerts')
          .addColumn('id', 'text', (c) => c.primaryKey())
          .addColumn('time', 'bigint', (c) => c.notNull())
          .addColumn('kind', 'text', (c) => c.notNull())
          .addColumn('source_ip', 'text')
          .addColumn('target', 'text', (c) => c.notNull())
          .addColumn('tenant', 'text')
          .addColumn('response', 'text', (c) => c.notNull())
          .addColumn('details', 'text', (c) => c.notNull())
          .execute();
        await db.schema
          .createIndex('guard_alerts_tenant_time_idx')
          .on('guard_alerts')
          .columns(['tenant', 'time'])
          .execute();
        // devices: a product's report-rate limits (null: the platform defaults).
        await db.schema.alterTable('products').addColumn('messages_per_second', 'integer').execute();
        await db.schema.alterTable('products').addColumn('messages_per_day', 'integer').execute();
      },
    },
    '0004_product_suite': {
      async up(db) {
        // devices: a product's own crypto suite (KEY-4); null: the vendor's key and suite.
        await db.schema.alterTable('products').addColumn('crypto_suite', 'text').execute();
      },
    },
  };
}

const MIGRATIONS_TABLE = 'castellan_migrations';

/**
 * Brings the schema up to date in one transaction; throws ERR_STORE_UNAVAILABLE naming the failed
 * migration. A small runner of our own rather than Kysely's Migrator: the Migrator looks for its
 * tables across every schema of the database, which races with other schemas being created or dropped
 * (parallel tests, other tenants' databases). Here everything happens in the connection's own schema,
 * serialised by a transaction-scoped advisory lock (PostgreSQL) or the write lock (SQLite), so several
 * processes starting at once apply each migration exactly once.
 */
export async function migrateToLatest(
  db: AnyDb,
  dialect: DialectName,
  set: 'data' | 'keys' = 'data',
): Promise<string[]> {
  const migrations = set === 'keys' ? keyStoreMigrationsFor(dialect) : migrationsFor(dialect);
  let current = '(setup)';
  const apply = async (trx: AnyDb): Promise<string[]> => {
    await trx.schema
      .createTable(MIGRATIONS_TABLE)
      .ifNotExists()
      .addColumn('name', 'text', (c) => c.primaryKey())
      .addColumn('applied_at', 'bigint', (c) => c.notNull())
      .execute();
    const rows = (await trx.selectFrom(MIGRATIONS_TABLE).select('name').execute()) as { name: string }[];
    const applied = new Set(rows.map((r) => r.name));
    const done: string[] = [];
    for (const [name, migration] of Object.entries(migrations)) {
      if (applied.has(name)) continue;
      current = name;
      await migration.up(trx);
      await trx.insertInto(MIGRATIONS_TABLE).values({ name, applied_at: Date.now() }).execute();
      done.push(name);
    }
    return done;
  };
  try {
    if (dialect === 'postgres') {
      return await db.transaction().execute(async (trx) => {
        await sql`select pg_advisory_xact_lock(hashtext(current_schema() || '.castellan_migrations'))`.execute(trx);
        return apply(trx);
      });
    }
    // SQLite: BEGIN IMMEDIATE takes the write lock up front, so two processes never both read the
    // migration list and then race to write.
    return await db.connection().execute(async (conn) => {
      await sql`begin immediate`.execute(conn);
      try {
        const done = await apply(conn);
        await sql`commit`.execute(conn);
        return done;
      } catch (error) {
        await sql`rollback`.execute(conn);
        throw error;
      }
    });
  } catch (error) {
    throw new CastellanError('ERR_STORE_UNAVAILABLE', {
      message: `Database migration ${current} failed: ${error instanceof Error ? error.message : 'unknown error'}`,
      cause: error,
    });
  }
}

export { sql };
