// Table types for Kysely. Each table belongs to exactly one subsystem (noted per table); only that
// subsystem's store reads or writes it. Times are milliseconds since the epoch (bigint columns).
import type { Generated } from 'kysely';

/** accounts: platform administrators. */
export interface AdminTable {
  id: string;
  name: string;
  created_at: number;
}

/** accounts: one-time tokens that create the first administrator. */
export interface SetupTokenTable {
  id: string;
  token_hash: Uint8Array;
  created_at: number;
  used_at: number | null;
}

/** accounts: bearer API credentials (admin and vendor), stored only as a SHA-256 hash. */
export interface ApiCredentialTable {
  id: string;
  kind: 'admin' | 'vendor';
  principal_id: string;
  token_hash: Uint8Array;
  label: string;
  created_at: number;
  revoked_at: number | null;
}

/** accounts: vendor (device maker) organisations. */
export interface VendorTable {
  id: string;
  code: string;
  name: string;
  created_at: number;
}

/** devices: products a vendor defines. */
export interface ProductTable {
  id: string;
  vendor_id: string;
  code: string;
  name: string;
  category: string;
  created_at: number;
  messages_per_second: number | null;
  messages_per_day: number | null;
  /** The product's own crypto suite for its device secrets (KEY-4); null follows the vendor's key. */
  crypto_suite: string | null;
}

/** devices: device identities and their encrypted secrets. */
export interface DeviceTable {
  id: string;
  vendor_id: string;
  product_id: string;
  secret_ciphertext: Uint8Array;
  status: 'active' | 'disabled' | 'quarantined';
  created_at: number;
}

/** devices: telemetry messages as received. */
export interface TelemetryTable {
  seq: Generated<number>;
  device_id: string;
  received_at: number;
  payload: Uint8Array;
}

/** audit: the tamper-evident log's entries (Merkle leaves). */
export interface AuditEntryTable {
  seq: number;
  time: number;
  actor_type: string;
  actor_id: string;
  tenant: string | null;
  event_type: string;
  target: string | null;
  result: string;
  ip_epoch: string | null;
  source_ip: Uint8Array | null;
  details: string;
  leaf_hash: Uint8Array;
}

/** audit: interior Merkle nodes of complete subtrees. */
export interface AuditNodeTable {
  height: number;
  idx: number;
  hash: Uint8Array;
}

/** audit: signed checkpoints (JSON body). */
export interface AuditCheckpointTable {
  tree_size: number;
  time: number;
  body: string;
}

/** audit: per-day keys that encrypt source IPs. */
export interface AuditIpKeyTable {
  epoch: string;
  sealed_key: Uint8Array | null;
  created_at: number;
  destroyed_at: number | null;
}

/** guard: detections. */
export interface GuardAlertTable {
  id: string;
  time: number;
  kind: string;
  source_ip: string | null;
  target: string;
  tenant: string | null;
  response: string;
  details: string;
}

export interface Database {
  guard_alerts: GuardAlertTable;
  audit_entries: AuditEntryTable;
  audit_nodes: AuditNodeTable;
  audit_checkpoints: AuditCheckpointTable;
  audit_ip_keys: AuditIpKeyTable;
  admins: AdminTable;
  setup_tokens: SetupTokenTable;
  api_credentials: ApiCredentialTable;
  vendors: VendorTable;
  products: ProductTable;
  devices: DeviceTable;
  telemetry: TelemetryTable;
}

/** keys (key store, kept apart from the data): versions of tenant key-encryption keys. */
export interface KeyVersionTable {
  id: string;
  key_name: string;
  tenant: string;
  version: number;
  suite: string;
  state: string;
  wrapped_material: Uint8Array | null;
  created_at: number;
  state_changed_at: number;
}

/** keys: keys that seal key-store backups (active, retired, destroyed). */
export interface BackupKeyTable {
  id: string;
  state: string;
  wrapped_material: Uint8Array | null;
  created_at: number;
  state_changed_at: number;
}

export interface KeyStoreDatabase {
  key_versions: KeyVersionTable;
  backup_keys: BackupKeyTable;
}
