// Table types for Kysely. Each table belongs to exactly one subsystem (noted per table); only that
// subsystem's store reads or writes it. Times are milliseconds since the epoch (bigint columns).
import type { Generated } from 'kysely';

/** accounts: platform administrators. */
export interface AdminTable {
  id: string;
  name: string;
  created_at: number;
  /** Blind index of the sign-in name. */
  username_index: Uint8Array | null;
  password_hash: string | null;
  /** JSON array of staff roles. */
  roles: string;
  disabled_at: number | null;
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
  /** Null only for credentials issued before expiry existed. */
  expires_at: number | null;
}

/** accounts: vendor (device maker) organisations. */
export interface VendorTable {
  id: string;
  code: string;
  name: string;
  created_at: number;
  kind: 'personal' | 'enterprise';
}

/** accounts: people (consumers and developers). */
export interface UserTable {
  id: string;
  kind: 'consumer' | 'developer';
  email_index: Uint8Array | null;
  phone_index: Uint8Array | null;
  email_ciphertext: Uint8Array | null;
  phone_ciphertext: Uint8Array | null;
  password_hash: string | null;
  status: 'pending' | 'active' | 'disabled';
  created_at: number;
  activated_at: number | null;
  password_changed_at: number | null;
}

/** accounts: one-time codes sent by e-mail or SMS (hashed). */
export interface VerificationCodeTable {
  id: string;
  user_id: string;
  purpose: string;
  code_hash: Uint8Array;
  attempts: number;
  created_at: number;
  expires_at: number;
  used_at: number | null;
}

/** accounts: sessions of people; only the token's hash is stored. */
export interface SessionTable {
  id: string;
  principal_kind: 'user' | 'staff';
  principal_id: string;
  token_hash: Uint8Array;
  family_id: string;
  /** 'full' after every required factor; 'mfa-pending' between password and second factor. */
  level: string;
  persistent: number;
  ip_hash: Uint8Array | null;
  created_at: number;
  last_seen_at: number;
  authenticated_at: number;
  absolute_expires_at: number;
  revoked_at: number | null;
}

/** accounts: refresh tokens of persistent sessions (hashed). */
export interface RefreshTokenTable {
  token_hash: Uint8Array;
  family_id: string;
  principal_id: string;
  created_at: number;
  expires_at: number;
  used_at: number | null;
}

/** accounts: TOTP second factor (secret encrypted). */
export interface MfaTotpTable {
  principal_id: string;
  secret_ciphertext: Uint8Array;
  confirmed_at: number | null;
  /** Last accepted time step: a code is accepted once (RFC 6238 section 5.2). */
  last_step: number;
  created_at: number;
}

/** accounts: WebAuthn passkeys. */
export interface WebauthnCredentialTable {
  id: string;
  principal_id: string;
  public_key: Uint8Array;
  counter: number;
  transports: string;
  label: string;
  created_at: number;
  last_used_at: number | null;
}

/** accounts: single-use recovery codes (hashed). */
export interface RecoveryCodeTable {
  id: string;
  principal_id: string;
  code_hash: Uint8Array;
  created_at: number;
  used_at: number | null;
}

/** accounts: pending ceremonies (WebAuthn challenges, OIDC state). */
export interface AuthChallengeTable {
  id: string;
  principal_id: string | null;
  purpose: string;
  payload: string;
  created_at: number;
  expires_at: number;
}

/** accounts: devices and networks a person has signed in from (keyed hashes only). */
export interface KnownSignInTable {
  id: string;
  principal_id: string;
  device_hash: Uint8Array;
  network_hash: Uint8Array;
  first_seen_at: number;
  last_seen_at: number;
}

/** accounts: links to outside OpenID Connect identities. */
export interface OidcIdentityTable {
  provider: string;
  subject_index: Uint8Array;
  user_id: string;
  created_at: number;
}

/** accounts: members of vendor organisations. */
export interface OrganisationMemberTable {
  vendor_id: string;
  user_id: string;
  role: 'owner' | 'admin' | 'viewer';
  created_at: number;
}

/** accounts: invitations to join an organisation (token hashed). */
export interface OrganisationInvitationTable {
  id: string;
  vendor_id: string;
  email_index: Uint8Array;
  role: 'owner' | 'admin' | 'viewer';
  token_hash: Uint8Array;
  invited_by: string;
  created_at: number;
  expires_at: number;
  accepted_at: number | null;
}

/** accounts: operator access keys for business systems (HMAC secret encrypted). */
export interface OperatorKeyTable {
  id: string;
  vendor_id: string;
  secret_ciphertext: Uint8Array;
  /** JSON array of scopes. */
  scopes: string;
  /** JSON array of CIDR blocks; empty: any address. */
  allowed_cidrs: string;
  label: string;
  created_by: string;
  created_at: number;
  last_used_at: number | null;
  revoked_at: number | null;
}

/** accounts: nonces of signed requests within the replay window. */
export interface RequestNonceTable {
  key_id: string;
  nonce: string;
  expires_at: number;
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

/** devices: presence of a device (online/offline, last seen); one row per device that ever connected. */
export interface DevicePresenceTable {
  device_id: string;
  /** 1 while connected, 0 otherwise. */
  online: number;
  last_seen_at: number | null;
  last_connected_at: number | null;
  last_disconnected_at: number | null;
  /** client, takeover, keep-alive, protocol-error, server, network or platform-restart. */
  last_disconnect_reason: string | null;
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

/** gateway: persistent MQTT sessions (broker write-behind store). */
export interface BrokerSessionTable {
  client_id: string;
  principal_id: string;
  expiry_interval_s: number;
  /** NULL while connected. */
  disconnected_at: number | null;
  /** disconnected_at + the expiry interval; NULL while connected or when the session never expires. */
  expires_at: number | null;
}

/** gateway: subscriptions of persistent MQTT sessions. */
export interface BrokerSubscriptionTable {
  client_id: string;
  filter: string;
  qos: number;
  no_local: number;
  retain_as_published: number;
  retain_handling: number;
  subscription_identifier: number | null;
}

/** gateway: messages a persistent MQTT session has not finished delivering. */
export interface BrokerPendingTable {
  client_id: string;
  seq: number;
  state: 'queued' | 'sent' | 'released';
  packet_id: number | null;
  topic: string;
  payload: Uint8Array;
  qos: number;
  retain: number;
  /** JSON of the MQTT 5 message properties (binary values base64); NULL when none. */
  properties: string | null;
  expires_at: number | null;
}

/** gateway: inbound QoS 2 packet IDs awaiting PUBREL. */
export interface BrokerInboundQos2Table {
  client_id: string;
  packet_id: number;
}

/** gateway: retained MQTT messages, one per topic. */
export interface BrokerRetainedTable {
  topic: string;
  payload: Uint8Array;
  qos: number;
  properties: string | null;
  expires_at: number | null;
  updated_at: number;
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
  users: UserTable;
  verification_codes: VerificationCodeTable;
  sessions: SessionTable;
  refresh_tokens: RefreshTokenTable;
  mfa_totp: MfaTotpTable;
  webauthn_credentials: WebauthnCredentialTable;
  recovery_codes: RecoveryCodeTable;
  auth_challenges: AuthChallengeTable;
  known_sign_ins: KnownSignInTable;
  oidc_identities: OidcIdentityTable;
  organisation_members: OrganisationMemberTable;
  organisation_invitations: OrganisationInvitationTable;
  operator_keys: OperatorKeyTable;
  request_nonces: RequestNonceTable;
  products: ProductTable;
  devices: DeviceTable;
  device_presence: DevicePresenceTable;
  telemetry: TelemetryTable;
  broker_sessions: BrokerSessionTable;
  broker_subscriptions: BrokerSubscriptionTable;
  broker_pending: BrokerPendingTable;
  broker_inbound_qos2: BrokerInboundQos2Table;
  broker_retained: BrokerRetainedTable;
  // 0008_device_requests
  // 0009_device_identity
  // 0010_device_certificates
  // 0011_manufacturing
  // 0012_bindings
  // 0013_shadow_commands
  // 0014_telemetry_history
  // 0015_webhooks_posture
  // 0016_lock_passcodes
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
