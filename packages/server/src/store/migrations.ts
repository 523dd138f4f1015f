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
    '0005_accounts': {
      async up(db: AnyDb) {
        // accounts: people (consumers and developers). E-mail and phone are personal data: stored only
        // encrypted under the user's own key, found through keyed blind indexes (never in clear).
        await db.schema
          .createTable('users')
          .addColumn('id', 'text', (c) => c.primaryKey())
          .addColumn('kind', 'text', (c) => c.notNull())
          .addColumn('email_index', t.binary, (c) => c.unique())
          .addColumn('phone_index', t.binary, (c) => c.unique())
          .addColumn('email_ciphertext', t.binary)
          .addColumn('phone_ciphertext', t.binary)
          .addColumn('password_hash', 'text')
          .addColumn('status', 'text', (c) => c.notNull())
          .addColumn('created_at', 'bigint', (c) => c.notNull())
          .addColumn('activated_at', 'bigint')
          .addColumn('password_changed_at', 'bigint')
          .execute();
        // One-time codes (activation, password reset, e-mail/SMS second factor): hashed, short-lived.
        await db.schema
          .createTable('verification_codes')
          .addColumn('id', 'text', (c) => c.primaryKey())
          .addColumn('user_id', 'text', (c) => c.notNull())
          .addColumn('purpose', 'text', (c) => c.notNull())
          .addColumn('code_hash', t.binary, (c) => c.notNull())
          .addColumn('attempts', 'integer', (c) => c.notNull())
          .addColumn('created_at', 'bigint', (c) => c.notNull())
          .addColumn('expires_at', 'bigint', (c) => c.notNull())
          .addColumn('used_at', 'bigint')
          .execute();
        await db.schema
          .createIndex('verification_codes_user_idx')
          .on('verification_codes')
          .columns(['user_id', 'purpose'])
          .execute();
        // Sessions of people (users and staff): only the token's hash is stored (SESS-1).
        await db.schema
          .createTable('sessions')
          .addColumn('id', 'text', (c) => c.primaryKey())
          .addColumn('principal_kind', 'text', (c) => c.notNull())
          .addColumn('principal_id', 'text', (c) => c.notNull())
          .addColumn('token_hash', t.binary, (c) => c.notNull().unique())
          .addColumn('family_id', 'text', (c) => c.notNull())
          .addColumn('level', 'text', (c) => c.notNull())
          .addColumn('persistent', 'integer', (c) => c.notNull())
          .addColumn('ip_hash', t.binary)
          .addColumn('created_at', 'bigint', (c) => c.notNull())
          .addColumn('last_seen_at', 'bigint', (c) => c.notNull())
          .addColumn('authenticated_at', 'bigint', (c) => c.notNull())
          .addColumn('absolute_expires_at', 'bigint', (c) => c.notNull())
          .addColumn('revoked_at', 'bigint')
          .execute();
        await db.schema.createIndex('sessions_principal_idx').on('sessions').columns(['principal_id']).execute();
        await db.schema.createIndex('sessions_family_idx').on('sessions').columns(['family_id']).execute();
        // Refresh tokens ("keep me signed in"): rotated on every use; a reused one revokes its family.
        await db.schema
          .createTable('refresh_tokens')
          .addColumn('token_hash', t.binary, (c) => c.primaryKey())
          .addColumn('family_id', 'text', (c) => c.notNull())
          .addColumn('principal_id', 'text', (c) => c.notNull())
          .addColumn('created_at', 'bigint', (c) => c.notNull())
          .addColumn('expires_at', 'bigint', (c) => c.notNull())
          .addColumn('used_at', 'bigint')
          .execute();
        await db.schema.createIndex('refresh_tokens_family_idx').on('refresh_tokens').columns(['family_id']).execute();
        // Second factors. principal_id is a user (usr_) or a staff member (adm_).
        await db.schema
          .createTable('mfa_totp')
          .addColumn('principal_id', 'text', (c) => c.primaryKey())
          .addColumn('secret_ciphertext', t.binary, (c) => c.notNull())
          .addColumn('confirmed_at', 'bigint')
          .addColumn('last_step', 'bigint', (c) => c.notNull())
          .addColumn('created_at', 'bigint', (c) => c.notNull())
          .execute();
        await db.schema
          .createTable('webauthn_credentials')
          .addColumn('id', 'text', (c) => c.primaryKey())
          .addColumn('principal_id', 'text', (c) => c.notNull())
          .addColumn('public_key', t.binary, (c) => c.notNull())
          .addColumn('counter', 'bigint', (c) => c.notNull())
          .addColumn('transports', 'text', (c) => c.notNull())
          .addColumn('label', 'text', (c) => c.notNull())
          .addColumn('created_at', 'bigint', (c) => c.notNull())
          .addColumn('last_used_at', 'bigint')
          .execute();
        await db.schema
          .createIndex('webauthn_credentials_principal_idx')
          .on('webauthn_credentials')
          .columns(['principal_id'])
          .execute();
        await db.schema
          .createTable('recovery_codes')
          .addColumn('id', 'text', (c) => c.primaryKey())
          .addColumn('principal_id', 'text', (c) => c.notNull())
          .addColumn('code_hash', t.binary, (c) => c.notNull())
          .addColumn('created_at', 'bigint', (c) => c.notNull())
          .addColumn('used_at', 'bigint')
          .execute();
        await db.schema
          .createIndex('recovery_codes_principal_idx')
          .on('recovery_codes')
          .columns(['principal_id'])
          .execute();
        // Pending ceremonies (WebAuthn challenges, OIDC state, MFA sign-in steps): single use, short-lived.
        await db.schema
          .createTable('auth_challenges')
          .addColumn('id', 'text', (c) => c.primaryKey())
          .addColumn('principal_id', 'text')
          .addColumn('purpose', 'text', (c) => c.notNull())
          .addColumn('payload', 'text', (c) => c.notNull())
          .addColumn('created_at', 'bigint', (c) => c.notNull())
          .addColumn('expires_at', 'bigint', (c) => c.notNull())
          .execute();
        // Devices and networks a person signed in from (ACC-6): a keyed hash of a device cookie and of
        // the network prefix; never a raw IP address or a location.
        await db.schema
          .createTable('known_sign_ins')
          .addColumn('id', 'text', (c) => c.primaryKey())
          .addColumn('principal_id', 'text', (c) => c.notNull())
          .addColumn('device_hash', t.binary, (c) => c.notNull())
          .addColumn('network_hash', t.binary, (c) => c.notNull())
          .addColumn('first_seen_at', 'bigint', (c) => c.notNull())
          .addColumn('last_seen_at', 'bigint', (c) => c.notNull())
          .execute();
        await db.schema
          .createIndex('known_sign_ins_principal_idx')
          .on('known_sign_ins')
          .columns(['principal_id'])
          .execute();
        // Sign-in through an outside OpenID Connect provider (ACC-7).
        await db.schema
          .createTable('oidc_identities')
          .addColumn('provider', 'text', (c) => c.notNull())
          .addColumn('subject_index', t.binary, (c) => c.notNull())
          .addColumn('user_id', 'text', (c) => c.notNull())
          .addColumn('created_at', 'bigint', (c) => c.notNull())
          .addPrimaryKeyConstraint('oidc_identities_pk', ['provider', 'subject_index'])
          .execute();
        // Vendor organisations: personal or enterprise, with members in roles (ORG-1).
        await db.schema
          .alterTable('vendors')
          .addColumn('kind', 'text', (c) => c.notNull().defaultTo('enterprise'))
          .execute();
        await db.schema
          .createTable('organisation_members')
          .addColumn('vendor_id', 'text', (c) => c.notNull())
          .addColumn('user_id', 'text', (c) => c.notNull())
          .addColumn('role', 'text', (c) => c.notNull())
          .addColumn('created_at', 'bigint', (c) => c.notNull())
          .addPrimaryKeyConstraint('organisation_members_pk', ['vendor_id', 'user_id'])
          .execute();
        await db.schema
          .createIndex('organisation_members_user_idx')
          .on('organisation_members')
          .columns(['user_id'])
          .execute();
        await db.schema
          .createTable('organisation_invitations')
          .addColumn('id', 'text', (c) => c.primaryKey())
          .addColumn('vendor_id', 'text', (c) => c.notNull())
          .addColumn('email_index', t.binary, (c) => c.notNull())
          .addColumn('role', 'text', (c) => c.notNull())
          .addColumn('token_hash', t.binary, (c) => c.notNull().unique())
          .addColumn('invited_by', 'text', (c) => c.notNull())
          .addColumn('created_at', 'bigint', (c) => c.notNull())
          .addColumn('expires_at', 'bigint', (c) => c.notNull())
          .addColumn('accepted_at', 'bigint')
          .execute();
        // Operator access keys (ORG-2): the HMAC secret must be recoverable to verify signatures, so it
        // is encrypted under the tenant's key, never hashed.
        await db.schema
          .createTable('operator_keys')
          .addColumn('id', 'text', (c) => c.primaryKey())
          .addColumn('vendor_id', 'text', (c) => c.notNull())
          .addColumn('secret_ciphertext', t.binary, (c) => c.notNull())
          .addColumn('scopes', 'text', (c) => c.notNull())
          .addColumn('allowed_cidrs', 'text', (c) => c.notNull())
          .addColumn('label', 'text', (c) => c.notNull())
          .addColumn('created_by', 'text', (c) => c.notNull())
          .addColumn('created_at', 'bigint', (c) => c.notNull())
          .addColumn('last_used_at', 'bigint')
          .addColumn('revoked_at', 'bigint')
          .execute();
        await db.schema.createIndex('operator_keys_vendor_idx').on('operator_keys').columns(['vendor_id']).execute();
        // Nonces of signed requests, kept for the replay window (shared by every process).
        await db.schema
          .createTable('request_nonces')
          .addColumn('key_id', 'text', (c) => c.notNull())
          .addColumn('nonce', 'text', (c) => c.notNull())
          .addColumn('expires_at', 'bigint', (c) => c.notNull())
          .addPrimaryKeyConstraint('request_nonces_pk', ['key_id', 'nonce'])
          .execute();
        await db.schema.createIndex('request_nonces_expiry_idx').on('request_nonces').columns(['expires_at']).execute();
        // Staff API credentials expire (OPS-2): a leaked one does not stay a key to the platform forever.
        await db.schema.alterTable('api_credentials').addColumn('expires_at', 'bigint').execute();
        // Platform staff (OPS-2): a sign-in name (blind index), a password and least-privilege roles.
        await db.schema.alterTable('admins').addColumn('username_index', t.binary).execute();
        await db.schema.alterTable('admins').addColumn('password_hash', 'text').execute();
        await db.schema
          .alterTable('admins')
          .addColumn('roles', 'text', (c) => c.notNull().defaultTo('[]'))
          .execute();
        await db.schema.alterTable('admins').addColumn('disabled_at', 'bigint').execute();
        await db.schema.createIndex('admins_username_idx').on('admins').columns(['username_index']).unique().execute();
      },
    },
    '0006_broker': {
      async up(db: AnyDb) {
        // gateway (MQTT broker): persistent sessions (MQTT 5 3.1.2.11.2), written behind the broker's
        // in-memory state by SqlBrokerStore. expires_at = disconnected_at + expiry interval; NULL while
        // connected or for a session that never expires (0xFFFFFFFF), so purging is one indexed range.
        await db.schema
          .createTable('broker_sessions')
          .addColumn('client_id', 'text', (c) => c.primaryKey())
          .addColumn('principal_id', 'text', (c) => c.notNull())
          .addColumn('expiry_interval_s', 'bigint', (c) => c.notNull())
          .addColumn('disconnected_at', 'bigint')
          .addColumn('expires_at', 'bigint')
          .execute();
        await db.schema
          .createIndex('broker_sessions_expires_idx')
          .on('broker_sessions')
          .columns(['expires_at'])
          .execute();
        await db.schema
          .createTable('broker_subscriptions')
          .addColumn('client_id', 'text', (c) => c.notNull())
          .addColumn('filter', 'text', (c) => c.notNull())
          .addColumn('qos', 'integer', (c) => c.notNull())
          .addColumn('no_local', 'integer', (c) => c.notNull())
          .addColumn('retain_as_published', 'integer', (c) => c.notNull())
          .addColumn('retain_handling', 'integer', (c) => c.notNull())
          .addColumn('subscription_identifier', 'integer')
          .addPrimaryKeyConstraint('broker_subscriptions_pk', ['client_id', 'filter'])
          .execute();
        // Messages a session has yet to deliver or to finish delivering, in session order (seq).
        await db.schema
          .createTable('broker_pending')
          .addColumn('client_id', 'text', (c) => c.notNull())
          .addColumn('seq', 'bigint', (c) => c.notNull())
          .addColumn('state', 'text', (c) => c.notNull())
          .addColumn('packet_id', 'integer')
          .addColumn('topic', 'text', (c) => c.notNull())
          .addColumn('payload', t.binary, (c) => c.notNull())
          .addColumn('qos', 'integer', (c) => c.notNull())
          .addColumn('retain', 'integer', (c) => c.notNull())
          .addColumn('properties', 'text')
          .addColumn('expires_at', 'bigint')
          .addPrimaryKeyConstraint('broker_pending_pk', ['client_id', 'seq'])
          .execute();
        // QoS 2 packet IDs received from a client whose PUBREL has not arrived [MQTT-4.3.3-9].
        await db.schema
          .createTable('broker_inbound_qos2')
          .addColumn('client_id', 'text', (c) => c.notNull())
          .addColumn('packet_id', 'integer', (c) => c.notNull())
          .addPrimaryKeyConstraint('broker_inbound_qos2_pk', ['client_id', 'packet_id'])
          .execute();
        await db.schema
          .createTable('broker_retained')
          .addColumn('topic', 'text', (c) => c.primaryKey())
          .addColumn('payload', t.binary, (c) => c.notNull())
          .addColumn('qos', 'integer', (c) => c.notNull())
          .addColumn('properties', 'text')
          .addColumn('expires_at', 'bigint')
          .addColumn('updated_at', 'bigint', (c) => c.notNull())
          .execute();
        await db.schema
          .createIndex('broker_retained_expires_idx')
          .on('broker_retained')
          .columns(['expires_at'])
          .execute();
      },
    },
    '0007_presence': {
      async up(db: AnyDb) {
        // devices: presence, one row per device that ever connected. Written on connect and disconnect;
        // activity in between at most every flush interval (never per message). `online` is 0/1.
        await db.schema
          .createTable('device_presence')
          .addColumn('device_id', 'text', (c) => c.primaryKey())
          .addColumn('online', 'integer', (c) => c.notNull())
          .addColumn('last_seen_at', 'bigint')
          .addColumn('last_connected_at', 'bigint')
          .addColumn('last_disconnected_at', 'bigint')
          .addColumn('last_disconnect_reason', 'text')
          .execute();
        // Start-up sets the rows a crashed process left online to offline: one indexed range.
        await db.schema.createIndex('device_presence_online_idx').on('device_presence').columns(['online']).execute();
      },
    },
    '0008_device_requests': {
      // devices (DEV-6): device HTTPS authentication. Nonces of timestamp-mode requests (and of hardware-ID
      // registrations, subject = the product) within the replay window, shared by every process.
      async up(db: AnyDb) {
        await db.schema
          .createTable('device_request_nonces')
          .addColumn('subject', 'text', (c) => c.notNull())
          .addColumn('nonce', 'text', (c) => c.notNull())
          .addColumn('expires_at', 'bigint', (c) => c.notNull())
          .addPrimaryKeyConstraint('device_request_nonces_pk', ['subject', 'nonce'])
          .execute();
        await db.schema
          .createIndex('device_request_nonces_expiry_idx')
          .on('device_request_nonces')
          .columns(['expires_at'])
          .execute();
        // Challenges of challenge-response mode: single use, 60 s; only their SHA-256 is kept.
        await db.schema
          .createTable('device_challenges')
          .addColumn('challenge_hash', t.binary, (c) => c.primaryKey())
          .addColumn('device_id', 'text', (c) => c.notNull())
          .addColumn('client_nonce', 'text', (c) => c.notNull())
          .addColumn('expires_at', 'bigint', (c) => c.notNull())
          .execute();
        await db.schema
          .createIndex('device_challenges_expiry_idx')
          .on('device_challenges')
          .columns(['expires_at'])
          .execute();
        // Short-lived device tokens (cas_dvt_…), stored as SHA-256; `method` is how the device proved itself.
        await db.schema
          .createTable('device_tokens')
          .addColumn('token_hash', t.binary, (c) => c.primaryKey())
          .addColumn('device_id', 'text', (c) => c.notNull())
          .addColumn('method', 'text', (c) => c.notNull())
          .addColumn('created_at', 'bigint', (c) => c.notNull())
          .addColumn('expires_at', 'bigint', (c) => c.notNull())
          .execute();
        await db.schema.createIndex('device_tokens_device_idx').on('device_tokens').columns(['device_id']).execute();
        await db.schema.createIndex('device_tokens_expiry_idx').on('device_tokens').columns(['expires_at']).execute();
      },
    },
    '0009_device_identity': {
      // devices (DEV-2, DEV-4, DEV-5): products v2 and registered hardware IDs.
      async up(db: AnyDb) {
        await db.schema
          .alterTable('products')
          .addColumn('security_level', 'text', (c) => c.notNull().defaultTo('L1'))
          .execute();
        await db.schema
          .alterTable('products')
          .addColumn('auth_modes', 'text', (c) => c.notNull().defaultTo('["secret"]'))
          .execute();
        // The data-point schema (JSON); NULL: none declared, any telemetry object is accepted.
        await db.schema.alterTable('products').addColumn('data_points', 'text').execute();
        await db.schema.alterTable('products').addColumn('telemetry_retention_days', 'integer').execute();
        // The product secret of hardware-ID registration (DEV-4), encrypted under the vendor's key.
        await db.schema.alterTable('products').addColumn('secret_ciphertext', t.binary).execute();
        await db.schema.alterTable('products').addColumn('secret_issued_at', 'bigint').execute();
        // Registered MAC/IMEI values, kept only as a keyed blind index (KEY-3); device_id once used.
        await db.schema
          .createTable('product_hardware_ids')
          .addColumn('product_id', 'text', (c) => c.notNull())
          .addColumn('hardware_index', t.binary, (c) => c.notNull())
          .addColumn('kind', 'text', (c) => c.notNull())
          .addColumn('created_at', 'bigint', (c) => c.notNull())
          .addColumn('device_id', 'text')
          .addColumn('used_at', 'bigint')
          .addPrimaryKeyConstraint('product_hardware_ids_pk', ['product_id', 'hardware_index'])
          .execute();
        await db.schema
          .createIndex('product_hardware_ids_device_idx')
          .on('product_hardware_ids')
          .columns(['device_id'])
          .execute();
      },
    },
    '0010_device_certificates': {
      // devices: vendor CAs, device certificates and raw SM2 keys (DEV-5), credential lifecycle (DEV-8).
      async up(db: AnyDb) {
        // The platform's CA per vendor (slot 'platform', key sealed under the vendor's key) and CAs the
        // vendors uploaded with proof of possession (slot = their fingerprint, no key).
        await db.schema
          .createTable('device_cas')
          .addColumn('id', 'text', (c) => c.primaryKey())
          .addColumn('vendor_id', 'text', (c) => c.notNull())
          .addColumn('kind', 'text', (c) => c.notNull())
          .addColumn('slot', 'text', (c) => c.notNull())
          .addColumn('fingerprint', 'text', (c) => c.notNull().unique())
          .addColumn('subject', 'text', (c) => c.notNull())
          .addColumn('certificate_pem', 'text', (c) => c.notNull())
          .addColumn('key_ciphertext', t.binary)
          .addColumn('not_before', 'bigint', (c) => c.notNull())
          .addColumn('not_after', 'bigint', (c) => c.notNull())
          .addColumn('created_at', 'bigint', (c) => c.notNull())
          .addColumn('revoked_at', 'bigint')
          .addUniqueConstraint('device_cas_vendor_slot_unique', ['vendor_id', 'slot'])
          .execute();
        // Registration codes of the uploaded-CA proof of possession: SHA-256 only, single use, short-lived.
        await db.schema
          .createTable('device_ca_registration_codes')
          .addColumn('code_hash', t.binary, (c) => c.primaryKey())
          .addColumn('vendor_id', 'text', (c) => c.notNull())
          .addColumn('expires_at', 'bigint', (c) => c.notNull())
          .addColumn('used_at', 'bigint')
          .execute();
        // A device's certificates (issued from a CSR, or from an uploaded CA) and raw SM2 public keys.
        await db.schema
          .createTable('device_certificates')
          .addColumn('id', 'text', (c) => c.primaryKey())
          .addColumn('device_id', 'text', (c) => c.notNull())
          .addColumn('vendor_id', 'text', (c) => c.notNull())
          .addColumn('ca_id', 'text')
          .addColumn('kind', 'text', (c) => c.notNull())
          .addColumn('algorithm', 'text', (c) => c.notNull())
          .addColumn('serial', 'text', (c) => c.notNull())
          .addColumn('fingerprint', 'text', (c) => c.notNull().unique())
          .addColumn('public_key', t.binary, (c) => c.notNull())
          .addColumn('certificate_pem', 'text')
          .addColumn('not_before', 'bigint', (c) => c.notNull())
          .addColumn('not_after', 'bigint', (c) => c.notNull())
          .addColumn('created_at', 'bigint', (c) => c.notNull())
          .addColumn('revoked_at', 'bigint')
          .addColumn('revoke_reason', 'text')
          .execute();
        await db.schema
          .createIndex('device_certificates_device_idx')
          .on('device_certificates')
          .columns(['device_id', 'serial'])
          .execute();
        // When a device's secret was last replaced and its device tokens last revoked: a connection
        // authenticated before then is dropped by the sweep of every process.
        await db.schema
          .createTable('device_credential_state')
          .addColumn('device_id', 'text', (c) => c.primaryKey())
          .addColumn('secret_changed_at', 'bigint')
          .addColumn('tokens_revoked_at', 'bigint')
          .execute();
      },
    },
    '0011_manufacturing': {
      async up(db: AnyDb) {
        // devices/manufacturing (DEV-7): factory stations, one product each. The token is kept only as
        // its SHA-256 (high-entropy bearer secret); the public keys are what batches are sealed to and
        // what burn receipts are verified with.
        await db.schema
          .createTable('factory_stations')
          .addColumn('id', 'text', (c) => c.primaryKey())
          .addColumn('vendor_id', 'text', (c) => c.notNull())
          .addColumn('product_id', 'text', (c) => c.notNull())
          .addColumn('name', 'text', (c) => c.notNull())
          .addColumn('token_hash', t.binary, (c) => c.notNull().unique())
          .addColumn('encryption_curve', 'text', (c) => c.notNull())
          .addColumn('encryption_public_key', 'text', (c) => c.notNull())
          .addColumn('signing_public_key', 'text', (c) => c.notNull())
          .addColumn('created_by', 'text', (c) => c.notNull())
          .addColumn('created_at', 'bigint', (c) => c.notNull())
          .addColumn('expires_at', 'bigint', (c) => c.notNull())
          .addColumn('revoked_at', 'bigint')
          .addColumn('last_used_at', 'bigint')
          .execute();
        await db.schema
          .createIndex('factory_stations_product_idx')
          .on('factory_stations')
          .columns(['product_id'])
          .execute();
        // A batch keeps only its file sealed to the station's key: the platform cannot read it back.
        await db.schema
          .createTable('manufacturing_batches')
          .addColumn('id', 'text', (c) => c.primaryKey())
          .addColumn('vendor_id', 'text', (c) => c.notNull())
          .addColumn('product_id', 'text', (c) => c.notNull())
          .addColumn('station_id', 'text', (c) => c.notNull())
          .addColumn('device_count', 'integer', (c) => c.notNull())
          .addColumn('sealed_file', t.binary, (c) => c.notNull())
          .addColumn('created_by', 'text', (c) => c.notNull())
          .addColumn('created_at', 'bigint', (c) => c.notNull())
          .addColumn('first_fetched_at', 'bigint')
          .addColumn('fetch_count', 'integer', (c) => c.notNull().defaultTo(0))
          .execute();
        await db.schema
          .createIndex('manufacturing_batches_product_idx')
          .on('manufacturing_batches')
          .columns(['product_id'])
          .execute();
        // One row per batch device: the digest of the image it must be burned with, its receipt, and
        // when it first connected (activation). A device without a row was not made by a batch.
        await db.schema
          .createTable('manufacturing_devices')
          .addColumn('device_id', 'text', (c) => c.primaryKey())
          .addColumn('batch_id', 'text', (c) => c.notNull())
          .addColumn('vendor_id', 'text', (c) => c.notNull())
          .addColumn('image_digest', t.binary, (c) => c.notNull())
          .addColumn('receipt', 'text')
          .addColumn('receipt_signature', t.binary)
          .addColumn('burned_at', 'bigint')
          .addColumn('receipt_recorded_at', 'bigint')
          .addColumn('activated_at', 'bigint')
          .execute();
        await db.schema
          .createIndex('manufacturing_devices_batch_idx')
          .on('manufacturing_devices')
          .columns(['batch_id', 'device_id'])
          .execute();
      },
    },
    '0012_bindings': {
      // Binding tokens, bindings, shares (BIND-1, BIND-3, BIND-5).
      async up(db: AnyDb) {
        // One-time binding tokens: only the SHA-256 of the token is kept; used_at set once (single use).
        await db.schema
          .createTable('binding_tokens')
          .addColumn('id', 'text', (c) => c.primaryKey())
          .addColumn('token_hash', t.binary, (c) => c.notNull().unique())
          .addColumn('user_id', 'text', (c) => c.notNull())
          .addColumn('created_at', 'bigint', (c) => c.notNull())
          .addColumn('expires_at', 'bigint', (c) => c.notNull())
          .addColumn('used_at', 'bigint')
          .addColumn('device_id', 'text')
          .execute();
        await db.schema
          .createIndex('binding_tokens_user_idx')
          .on('binding_tokens')
          .columns(['user_id', 'expires_at'])
          .execute();
        await db.schema.createIndex('binding_tokens_device_idx').on('binding_tokens').columns(['device_id']).execute();
        // One owner per device: the primary key is what refuses a second binding (BIND-5).
        await db.schema
          .createTable('device_bindings')
          .addColumn('device_id', 'text', (c) => c.primaryKey())
          .addColumn('user_id', 'text', (c) => c.notNull())
          .addColumn('vendor_id', 'text', (c) => c.notNull())
          .addColumn('bound_at', 'bigint', (c) => c.notNull())
          .addColumn('token_id', 'text')
          .execute();
        await db.schema.createIndex('device_bindings_user_idx').on('device_bindings').columns(['user_id']).execute();
        // At most one share per person and device; revocation deletes the row.
        await db.schema
          .createTable('device_shares')
          .addColumn('id', 'text', (c) => c.primaryKey())
          .addColumn('device_id', 'text', (c) => c.notNull())
          .addColumn('user_id', 'text', (c) => c.notNull())
          .addColumn('role', 'text', (c) => c.notNull())
          .addColumn('created_by', 'text', (c) => c.notNull())
          .addColumn('created_at', 'bigint', (c) => c.notNull())
          .addColumn('expires_at', 'bigint')
          .addUniqueConstraint('device_shares_device_user_uq', ['device_id', 'user_id'])
          .execute();
        await db.schema.createIndex('device_shares_user_idx').on('device_shares').columns(['user_id']).execute();
      },
    },
    '0013_shadow_commands': {
      async up(db: AnyDb) {
        // devices: the shadow (CHAN-7), one row per device with desired and reported state as JSON text.
        // `version` grows on every change (optimistic concurrency for apps); `desired_version` is the
        // version of the last desired change, against which a device's report is judged stale.
        await db.schema
          .createTable('device_shadows')
          .addColumn('device_id', 'text', (c) => c.primaryKey())
          .addColumn('vendor_id', 'text', (c) => c.notNull())
          .addColumn('version', 'bigint', (c) => c.notNull())
          .addColumn('desired_version', 'bigint', (c) => c.notNull())
          .addColumn('desired', 'text', (c) => c.notNull())
          .addColumn('reported', 'text', (c) => c.notNull())
          .addColumn('metadata', 'text', (c) => c.notNull())
          .addColumn('desired_updated_at', 'bigint')
          .addColumn('reported_updated_at', 'bigint')
          .addColumn('stale_reports', 'bigint', (c) => c.notNull().defaultTo(0))
          .execute();
        // devices: commands (CHAN-7, DEV-9) and their outcome. The deadline is stored, so a restart
        // still times out what was open.
        await db.schema
          .createTable('device_commands')
          .addColumn('id', 'text', (c) => c.primaryKey())
          .addColumn('device_id', 'text', (c) => c.notNull())
          .addColumn('vendor_id', 'text', (c) => c.notNull())
          .addColumn('name', 'text', (c) => c.notNull())
          .addColumn('params', 'text', (c) => c.notNull())
          .addColumn('status', 'text', (c) => c.notNull())
          .addColumn('result', 'text')
          .addColumn('error', 'text')
          .addColumn('issued_by_type', 'text', (c) => c.notNull())
          .addColumn('issued_by_id', 'text', (c) => c.notNull())
          .addColumn('issued_at', 'bigint', (c) => c.notNull())
          .addColumn('expires_at', 'bigint', (c) => c.notNull())
          .addColumn('delivered_at', 'bigint')
          .addColumn('completed_at', 'bigint')
          .execute();
        await db.schema
          .createIndex('device_commands_device_idx')
          .on('device_commands')
          .columns(['device_id', 'issued_at', 'id'])
          .execute();
        // The timeout sweep: open commands past their deadline, one indexed range.
        await db.schema
          .createIndex('device_commands_open_idx')
          .on('device_commands')
          .columns(['status', 'expires_at'])
          .execute();
      },
    },
    '0014_telemetry_history': {
      // Telemetry history: time-range queries per device and per data point (docs: telemetry and push).
      async up(db: AnyDb) {
        // Range queries and paging run on (device_id, received_at, seq); SQLite appends the rowid (seq)
        // to every index by itself.
        await db.schema
          .createIndex('telemetry_device_time_idx')
          .on('telemetry')
          .columns(dialect === 'sqlite' ? ['device_id', 'received_at'] : ['device_id', 'received_at', 'seq'])
          .execute();
        // A series is one data point of one device; its integer ID keeps the aggregate rows compact (a
        // third smaller and faster to write than text keys, measured). Series are never deleted, so an ID
        // cached by any process stays valid; their rows carry no readings.
        await db.schema
          .createTable('telemetry_series')
          .addColumn('id', t.serial, (c) => (dialect === 'sqlite' ? c.primaryKey().autoIncrement() : c.primaryKey()))
          .addColumn('device_id', 'text', (c) => c.notNull())
          .addColumn('point', 'text', (c) => c.notNull())
          .addUniqueConstraint('telemetry_series_device_point_unique', ['device_id', 'point'])
          .execute();
        // One row per series and minute: count, sum, min, max and the last value of the minute's numeric
        // readings, kept by the telemetry writer in the same transaction as the rows. Every bucket the API
        // offers (1m, 5m, 1h, 1d) is a whole number of minutes, so downsampling reads these instead of
        // parsing JSON payloads (measured: docs/telemetry-and-push.md).
        await db.schema
          .createTable('telemetry_point_minutes')
          .addColumn('series_id', 'bigint', (c) => c.notNull())
          .addColumn('minute', 'bigint', (c) => c.notNull())
          .addColumn('n', 'integer', (c) => c.notNull())
          .addColumn('total', 'double precision', (c) => c.notNull())
          .addColumn('min_value', 'double precision', (c) => c.notNull())
          .addColumn('max_value', 'double precision', (c) => c.notNull())
          .addColumn('last_at', 'bigint', (c) => c.notNull())
          .addColumn('last_value', 'double precision', (c) => c.notNull())
          .addPrimaryKeyConstraint('telemetry_point_minutes_pk', ['series_id', 'minute'])
          // SQLite: the table is its primary-key B-tree (no rowid, no second copy of the key).
          .$call((b) => (dialect === 'sqlite' ? b.modifyEnd(sql`without rowid`) : b))
          .execute();
      },
    },
    '0015_webhooks_posture': {
      // Webhooks (endpoints, the delivery outbox) and device posture (golden values, latest report).
      async up(db: AnyDb) {
        await db.schema
          .createTable('webhook_endpoints')
          .addColumn('id', 'text', (c) => c.primaryKey())
          .addColumn('vendor_id', 'text', (c) => c.notNull())
          .addColumn('url', 'text', (c) => c.notNull())
          .addColumn('events', 'text', (c) => c.notNull())
          .addColumn('description', 'text')
          .addColumn('secret_ciphertext', t.binary, (c) => c.notNull())
          .addColumn('previous_secret_ciphertext', t.binary)
          .addColumn('previous_secret_expires_at', 'bigint')
          .addColumn('created_at', 'bigint', (c) => c.notNull())
          .addColumn('secret_rotated_at', 'bigint', (c) => c.notNull())
          .execute();
        await db.schema
          .createIndex('webhook_endpoints_vendor_idx')
          .on('webhook_endpoints')
          .columns(['vendor_id'])
          .execute();
        // The outbox: written before any attempt, so a restart loses nothing; the worker finds due rows
        // by (state, next_attempt_at), the API pages by seq.
        await db.schema
          .createTable('webhook_deliveries')
          .addColumn('seq', t.serial, (c) => (dialect === 'sqlite' ? c.primaryKey().autoIncrement() : c.primaryKey()))
          .addColumn('id', 'text', (c) => c.notNull().unique())
          .addColumn('endpoint_id', 'text', (c) => c.notNull())
          .addColumn('vendor_id', 'text', (c) => c.notNull())
          .addColumn('event_type', 'text', (c) => c.notNull())
          .addColumn('device_id', 'text', (c) => c.notNull())
          .addColumn('body', 'text', (c) => c.notNull())
          .addColumn('state', 'text', (c) => c.notNull())
          .addColumn('attempts', 'integer', (c) => c.notNull())
          .addColumn('created_at', 'bigint', (c) => c.notNull())
          .addColumn('next_attempt_at', 'bigint')
          .addColumn('last_attempt_at', 'bigint')
          .addColumn('last_status', 'integer')
          .addColumn('last_error', 'text')
          .addColumn('delivered_at', 'bigint')
          .addColumn('dead_at', 'bigint')
          .execute();
        await db.schema
          .createIndex('webhook_deliveries_due_idx')
          .on('webhook_deliveries')
          .columns(['state', 'next_attempt_at'])
          .execute();
        await db.schema
          .createIndex('webhook_deliveries_endpoint_idx')
          .on('webhook_deliveries')
          .columns(['endpoint_id', 'seq'])
          .execute();
        await db.schema
          .createIndex('webhook_deliveries_vendor_idx')
          .on('webhook_deliveries')
          .columns(['vendor_id', 'state', 'seq'])
          .execute();
        await db.schema
          .createTable('product_firmware_golden')
          .addColumn('product_id', 'text', (c) => c.notNull())
          .addColumn('firmware_version', 'text', (c) => c.notNull())
          .addColumn('vendor_id', 'text', (c) => c.notNull())
          .addColumn('security_level', 'text', (c) => c.notNull())
          .addColumn('digests', 'text', (c) => c.notNull())
          .addColumn('updated_at', 'bigint', (c) => c.notNull())
          .addPrimaryKeyConstraint('product_firmware_golden_pk', ['product_id', 'firmware_version'])
          .execute();
        await db.schema
          .createTable('device_posture')
          .addColumn('device_id', 'text', (c) => c.primaryKey())
          .addColumn('vendor_id', 'text', (c) => c.notNull())
          .addColumn('product_id', 'text', (c) => c.notNull())
          .addColumn('firmware_version', 'text', (c) => c.notNull())
          .addColumn('security_level', 'text', (c) => c.notNull())
          .addColumn('digests', 'text', (c) => c.notNull())
          .addColumn('reported_at', 'bigint', (c) => c.notNull())
          .addColumn('checked_at', 'bigint', (c) => c.notNull())
          .addColumn('deviations', 'text', (c) => c.notNull())
          .addColumn('compliant', 'integer', (c) => c.notNull())
          .execute();
      },
    },
    '0016_lock_passcodes': {
      // Smart-lock offline passcodes (LOCK-1): what was issued, never the code itself (the lock verifies
      // it offline). One row per code; (device, kind, window, counter) names a code uniquely, so two
      // issuers racing for a counter cannot both get it. On unbind (BIND-5) the person-linked columns are
      // cleared; rows stay as the lock's revocation list until their window ends, then are purged.
      async up(db: AnyDb) {
        await db.schema
          .createTable('lock_passcodes')
          .addColumn('id', 'text', (c) => c.primaryKey())
          .addColumn('device_id', 'text', (c) => c.notNull())
          .addColumn('kind', 'text', (c) => c.notNull())
          .addColumn('counter', 'integer', (c) => c.notNull())
          .addColumn('valid_from', 'bigint', (c) => c.notNull())
          .addColumn('valid_until', 'bigint', (c) => c.notNull())
          .addColumn('label', 'text')
          .addColumn('issued_by', 'text')
          .addColumn('created_at', 'bigint', (c) => c.notNull())
          .addColumn('revoked_at', 'bigint')
          .addColumn('use_count', 'integer', (c) => c.notNull().defaultTo(0))
          .addColumn('last_used_at', 'bigint')
          .addUniqueConstraint('lock_passcodes_code_unique', [
            'device_id',
            'kind',
            'valid_from',
            'valid_until',
            'counter',
          ])
          .execute();
        await db.schema
          .createIndex('lock_passcodes_device_until_idx')
          .on('lock_passcodes')
          .columns(['device_id', 'valid_until'])
          .execute();
      },
    },
    '0017_secure_channel_sessions': {
      // Secure-channel sessions over HTTP (CHAN-3, CHAN-4): consecutive frames of a session reach
      // different processes, so its state lives here. The session keys are sealed under the vendor's
      // tenant key; `state` is the epoch/sequence/replay-window state; every frame updates the row with a
      // compare-and-set on `version`, so a frame replayed to two processes at once is accepted once.
      async up(db: AnyDb) {
        await db.schema
          .createTable('secure_channel_sessions')
          .addColumn('id', 'text', (c) => c.primaryKey())
          .addColumn('device_id', 'text', (c) => c.notNull())
          .addColumn('vendor_id', 'text', (c) => c.notNull())
          .addColumn('suite', 'text', (c) => c.notNull())
          .addColumn('keys_ciphertext', t.binary, (c) => c.notNull())
          .addColumn('state', 'text', (c) => c.notNull())
          .addColumn('version', 'integer', (c) => c.notNull())
          .addColumn('created_at', 'bigint', (c) => c.notNull())
          .addColumn('expires_at', 'bigint', (c) => c.notNull())
          .execute();
        await db.schema
          .createIndex('secure_channel_sessions_device_idx')
          .on('secure_channel_sessions')
          .columns(['device_id'])
          .execute();
        await db.schema
          .createIndex('secure_channel_sessions_expiry_idx')
          .on('secure_channel_sessions')
          .columns(['expires_at'])
          .execute();
      },
    },
    '0018_cluster_nodes': {
      // Scale mode (RES-2): the processes serving this database announce themselves with a heartbeat, and
      // a device's presence names the process holding its connection, so a process starting (or one
      // taking a device over) sets offline only what a stopped process left behind.
      async up(db: AnyDb) {
        await db.schema
          .createTable('cluster_nodes')
          .addColumn('node_id', 'text', (c) => c.primaryKey())
          .addColumn('started_at', 'bigint', (c) => c.notNull())
          .addColumn('heartbeat_at', 'bigint', (c) => c.notNull())
          .execute();
        await db.schema.alterTable('device_presence').addColumn('node_id', 'text').execute();
      },
    },
    '0019_posture_tls': {
      // The TLS parameters a device reports in its posture (CHAN-8): Node cannot tell a server which
      // key-exchange group a connection negotiated, so the device says. Null for postures without them.
      // The index serves a product's posture list, filtered by group.
      async up(db: AnyDb) {
        for (const column of ['tls_group', 'tls_version', 'tls_cipher']) {
          await db.schema.alterTable('device_posture').addColumn(column, 'text').execute();
        }
        await db.schema
          .createIndex('device_posture_product_idx')
          .on('device_posture')
          .columns(['product_id', 'device_id'])
          .execute();
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
