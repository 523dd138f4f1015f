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
  /** 'L1' | 'L2' | 'L3' (DEV-2, S 8.1.1). */
  security_level: string;
  /** JSON array of 'secret' | 'hardware-id' | 'certificate'. */
  auth_modes: string;
  /** The data-point schema (JSON); null: none declared. */
  data_points: string | null;
  telemetry_retention_days: number | null;
  /** The product secret of hardware-ID registration (DEV-4), encrypted; null until issued. */
  secret_ciphertext: Uint8Array | null;
  secret_issued_at: number | null;
}

/** devices: device identities and their encrypted secrets. */
export interface DeviceTable {
  id: string;
  vendor_id: string;
  product_id: string;
  secret_ciphertext: Uint8Array;
  status: 'active' | 'disabled' | 'quarantined' | 'decommissioned';
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
  /** The process (cluster node) that wrote the last connect (0018); null before scale mode existed. */
  node_id: string | null;
}

/** 0018: the processes serving this database (scale mode, RES-2), owned by cluster/. */
export interface ClusterNodeTable {
  node_id: string;
  started_at: number;
  heartbeat_at: number;
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

/** devices (bindings): one-time binding tokens; only the token's SHA-256 is stored (BIND-1). */
export interface BindingTokenTable {
  id: string;
  token_hash: Uint8Array;
  user_id: string;
  created_at: number;
  expires_at: number;
  used_at: number | null;
  /** The device the token bound, once used. */
  device_id: string | null;
}

/** devices (bindings): the owner of a bound device (one row per device). */
export interface DeviceBindingTable {
  device_id: string;
  user_id: string;
  vendor_id: string;
  bound_at: number;
  token_id: string | null;
}

/** devices (bindings): a device shared with another person, with a role and an optional expiry (BIND-3). */
export interface DeviceShareTable {
  id: string;
  device_id: string;
  user_id: string;
  role: 'admin' | 'member' | 'guest';
  created_by: string;
  created_at: number;
  expires_at: number | null;
}

/** devices (certificates, DEV-5): the platform's CA of a vendor, or a CA the vendor uploaded. */
export interface DeviceCaTable {
  id: string;
  vendor_id: string;
  kind: 'platform' | 'uploaded';
  /** 'platform' (one per vendor) or the uploaded CA's fingerprint. */
  slot: string;
  /** SHA-256 of the DER certificate, lower-case hex. */
  fingerprint: string;
  subject: string;
  certificate_pem: string;
  /** The platform CA's PKCS#8 private key sealed under the vendor's key; null for uploaded CAs. */
  key_ciphertext: Uint8Array | null;
  not_before: number;
  not_after: number;
  created_at: number;
  revoked_at: number | null;
}

/** devices (certificates, DEV-5): one-time codes of the uploaded-CA proof of possession (SHA-256). */
export interface DeviceCaRegistrationCodeTable {
  code_hash: Uint8Array;
  vendor_id: string;
  expires_at: number;
  used_at: number | null;
}

/** devices (certificates, DEV-5): device certificates and raw SM2 device keys. */
export interface DeviceCertificateTable {
  id: string;
  device_id: string;
  vendor_id: string;
  /** The CA that issued the certificate; null for a raw SM2 key. */
  ca_id: string | null;
  kind: 'issued' | 'vendor-ca' | 'sm2-key';
  algorithm: 'p256' | 'rsa' | 'sm2';
  /** Lower-case hex. */
  serial: string;
  /** SHA-256 of the DER certificate (of the SubjectPublicKeyInfo for a raw key), lower-case hex. */
  fingerprint: string;
  /** SubjectPublicKeyInfo, DER. */
  public_key: Uint8Array;
  certificate_pem: string | null;
  not_before: number;
  not_after: number;
  created_at: number;
  revoked_at: number | null;
  revoke_reason: string | null;
}

/** devices (credential lifecycle, DEV-8): when a device's secret and device tokens last stopped working. */
export interface DeviceCredentialStateTable {
  device_id: string;
  secret_changed_at: number | null;
  tokens_revoked_at: number | null;
}

/** devices: the shadow (CHAN-7), desired and reported state as JSON text. */
export interface DeviceShadowTable {
  device_id: string;
  vendor_id: string;
  /** Grows on every change of either document. */
  version: number;
  /** `version` as of the last desired change: reports based on an older one are stale. */
  desired_version: number;
  desired: string;
  reported: string;
  /** JSON: per top-level key, when it last changed (`{desired: {key: ms}, reported: {key: ms}}`). */
  metadata: string;
  desired_updated_at: number | null;
  reported_updated_at: number | null;
  /** Reports ignored because they were based on an older desired version. */
  stale_reports: number;
}

/** devices: commands sent to devices (CHAN-7, DEV-9) and their outcome. */
export interface DeviceCommandTable {
  id: string;
  device_id: string;
  vendor_id: string;
  name: string;
  /** JSON object. */
  params: string;
  /** pending, delivered, succeeded, failed, rejected, timed-out or expired. */
  status: string;
  /** JSON value the device returned, if any. */
  result: string | null;
  error: string | null;
  issued_by_type: string;
  issued_by_id: string;
  issued_at: number;
  expires_at: number;
  delivered_at: number | null;
  completed_at: number | null;
}

/** devices (DEV-6): nonces of signed device requests and registrations within the replay window. */
export interface DeviceRequestNonceTable {
  /** A device ID, or `product:<id>` for a hardware-ID registration. */
  subject: string;
  nonce: string;
  expires_at: number;
}

/** devices (DEV-6): open challenges of challenge-response mode (single use). */
export interface DeviceChallengeTable {
  challenge_hash: Uint8Array;
  device_id: string;
  client_nonce: string;
  expires_at: number;
}

/**
 * devices (CHAN-3, CHAN-4): a secure-channel session over HTTP. `keys_ciphertext` holds the session keys
 * sealed under the vendor's tenant key; `state` the rest of the session (epochs, sequence numbers, the
 * replay window) as JSON; `version` grows with every accepted frame (compare-and-set).
 */
export interface SecureChannelSessionTable {
  id: string;
  device_id: string;
  vendor_id: string;
  suite: string;
  keys_ciphertext: Uint8Array;
  state: string;
  version: number;
  created_at: number;
  expires_at: number;
}

/** devices (DEV-6): short-lived device tokens, SHA-256 only. */
export interface DeviceTokenTable {
  token_hash: Uint8Array;
  device_id: string;
  /** How the device proved itself to obtain it: 'secret' or 'certificate'. */
  method: string;
  created_at: number;
  expires_at: number;
}

/** devices (DEV-4): registered hardware IDs of a product, as a keyed blind index. */
export interface ProductHardwareIdTable {
  product_id: string;
  hardware_index: Uint8Array;
  /** 'mac' | 'imei' */
  kind: string;
  created_at: number;
  device_id: string | null;
  used_at: number | null;
}

/** devices/webhooks: a tenant's webhook endpoints; the signing secret is encrypted under the tenant key. */
export interface WebhookEndpointTable {
  id: string;
  vendor_id: string;
  url: string;
  /** JSON array of event types. */
  events: string;
  description: string | null;
  secret_ciphertext: Uint8Array;
  /** The secret before the last rotation, still signing until previous_secret_expires_at. */
  previous_secret_ciphertext: Uint8Array | null;
  previous_secret_expires_at: number | null;
  created_at: number;
  secret_rotated_at: number;
}

/** devices/webhooks: the outbox, one row per event and endpoint (pending, delivered or dead). */
export interface WebhookDeliveryTable {
  seq: Generated<number>;
  id: string;
  endpoint_id: string;
  vendor_id: string;
  event_type: string;
  device_id: string;
  /** The exact JSON body sent on every attempt. */
  body: string;
  state: string;
  attempts: number;
  created_at: number;
  /** When a pending delivery is next due (also pushed forward while an attempt holds it). */
  next_attempt_at: number | null;
  last_attempt_at: number | null;
  last_status: number | null;
  last_error: string | null;
  delivered_at: number | null;
  dead_at: number | null;
}

/** devices/posture: golden values per product and firmware version (DEV-10). */
export interface ProductFirmwareGoldenTable {
  product_id: string;
  firmware_version: string;
  vendor_id: string;
  security_level: string;
  /** JSON object: core file path → SHA-256 hex. */
  digests: string;
  updated_at: number;
}

/** devices/posture: the latest posture each device reported, and how it compared (DEV-10). */
export interface DevicePostureTable {
  device_id: string;
  vendor_id: string;
  product_id: string;
  firmware_version: string;
  security_level: string;
  digests: string;
  reported_at: number;
  checked_at: number;
  /** JSON array of deviations; empty when compliant. */
  deviations: string;
  compliant: number;
  /** 0019_posture_tls: the TLS group, version and cipher the device reported (CHAN-8); null when not. */
  tls_group: string | null;
  tls_version: string | null;
  tls_cipher: string | null;
}

/** devices (telemetry history): a series is one data point of one device (never deleted; no readings). */
export interface TelemetrySeriesTable {
  id: Generated<number>;
  device_id: string;
  /** A top-level key of the telemetry JSON object. */
  point: string;
}

/** devices (telemetry history): per series and minute, aggregates of the numeric readings. */
export interface TelemetryPointMinuteTable {
  series_id: number;
  /** Start of the minute, ms since the epoch (a multiple of 60000). */
  minute: number;
  n: number;
  total: number;
  min_value: number;
  max_value: number;
  /** received_at of the minute's last reading, and its value. */
  last_at: number;
  last_value: number;
}

/**
 * devices (lock passcodes, LOCK-1): an offline passcode issued for a lock; the code is not stored.
 * `issued_by` and `label` are cleared on unbind (BIND-5), the row kept as a revocation until its window ends.
 */
export interface LockPasscodeTable {
  id: string;
  device_id: string;
  kind: 'one-time' | 'time-window';
  counter: number;
  valid_from: number;
  valid_until: number;
  label: string | null;
  issued_by: string | null;
  created_at: number;
  revoked_at: number | null;
  use_count: number;
  last_used_at: number | null;
}

/** devices/manufacturing (DEV-7): factory stations, one product each (token kept only as its SHA-256). */
export interface FactoryStationTable {
  id: string;
  vendor_id: string;
  product_id: string;
  name: string;
  token_hash: Uint8Array;
  /** X25519 or P-256. */
  encryption_curve: 'X25519' | 'P-256';
  encryption_public_key: string;
  signing_public_key: string;
  created_by: string;
  created_at: number;
  expires_at: number;
  revoked_at: number | null;
  last_used_at: number | null;
}

/** devices/manufacturing: a batch keeps only its file sealed to the station's key. */
export interface ManufacturingBatchTable {
  id: string;
  vendor_id: string;
  product_id: string;
  station_id: string;
  device_count: number;
  sealed_file: Uint8Array;
  created_by: string;
  created_at: number;
  first_fetched_at: number | null;
  fetch_count: Generated<number>;
}

/** devices/manufacturing: one row per batch device: image digest, burn receipt, activation. */
export interface ManufacturingDeviceTable {
  device_id: string;
  batch_id: string;
  vendor_id: string;
  image_digest: Uint8Array;
  receipt: string | null;
  receipt_signature: Uint8Array | null;
  burned_at: number | null;
  receipt_recorded_at: number | null;
  activated_at: number | null;
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
  cluster_nodes: ClusterNodeTable;
  telemetry: TelemetryTable;
  broker_sessions: BrokerSessionTable;
  broker_subscriptions: BrokerSubscriptionTable;
  broker_pending: BrokerPendingTable;
  broker_inbound_qos2: BrokerInboundQos2Table;
  broker_retained: BrokerRetainedTable;
  // 0008_device_requests
  device_request_nonces: DeviceRequestNonceTable;
  device_challenges: DeviceChallengeTable;
  device_tokens: DeviceTokenTable;
  // 0009_device_identity
  product_hardware_ids: ProductHardwareIdTable;
  // 0010_device_certificates
  device_cas: DeviceCaTable;
  device_ca_registration_codes: DeviceCaRegistrationCodeTable;
  device_certificates: DeviceCertificateTable;
  device_credential_state: DeviceCredentialStateTable;
  // 0011_manufacturing
  factory_stations: FactoryStationTable;
  manufacturing_batches: ManufacturingBatchTable;
  manufacturing_devices: ManufacturingDeviceTable;
  // 0012_bindings
  binding_tokens: BindingTokenTable;
  device_bindings: DeviceBindingTable;
  device_shares: DeviceShareTable;
  // 0013_shadow_commands
  device_shadows: DeviceShadowTable;
  device_commands: DeviceCommandTable;
  // 0014_telemetry_history
  telemetry_series: TelemetrySeriesTable;
  telemetry_point_minutes: TelemetryPointMinuteTable;
  // 0015_webhooks_posture
  webhook_endpoints: WebhookEndpointTable;
  webhook_deliveries: WebhookDeliveryTable;
  product_firmware_golden: ProductFirmwareGoldenTable;
  device_posture: DevicePostureTable;
  // 0016_lock_passcodes
  lock_passcodes: LockPasscodeTable;
  // 0017_secure_channel_sessions
  secure_channel_sessions: SecureChannelSessionTable;
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
