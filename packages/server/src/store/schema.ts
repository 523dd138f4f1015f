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
}

/** devices: device identities and their encrypted secrets. */
export interface DeviceTable {
  id: string;
  vendor_id: string;
  product_id: string;
  secret_ciphertext: Uint8Array;
  status: 'active' | 'disabled';
  created_at: number;
}

/** devices: telemetry messages as received. */
export interface TelemetryTable {
  seq: Generated<number>;
  device_id: string;
  received_at: number;
  payload: Uint8Array;
}

export interface Database {
  admins: AdminTable;
  setup_tokens: SetupTokenTable;
  api_credentials: ApiCredentialTable;
  vendors: VendorTable;
  products: ProductTable;
  devices: DeviceTable;
  telemetry: TelemetryTable;
}
