// Data classification (PRIV-1): every stored column has a sensitivity level, and the level drives its
// handling. A test compares this registry with the real schema on both databases, so a column cannot
// be added without being classified.
//
//   public        may be shown to anyone allowed to see the row
//   internal      identifiers and operational values; never personal, never secret
//   confidential  tenant business data (telemetry, device data, audit details)
//   personal      personal data: encrypted or pseudonymised, shredded with the person's key (PRIV-4/5)
//   secret        credentials and key material: encrypted or hashed, never returned, never logged

export type Sensitivity = 'public' | 'internal' | 'confidential' | 'personal' | 'secret';

export interface ColumnClass {
  level: Sensitivity;
  /** How the column is protected at rest. */
  protection: 'none' | 'hashed' | 'encrypted' | 'wrapped-by-root-key' | 'masked' | 'merkle-covered';
  /** Days it is kept, when a retention rule applies. */
  retention?: string;
}

const c = (level: Sensitivity, protection: ColumnClass['protection'] = 'none', retention?: string): ColumnClass => ({
  level,
  protection,
  ...(retention ? { retention } : {}),
});

export const DATA_CLASSIFICATION: Readonly<Record<string, Readonly<Record<string, ColumnClass>>>> = {
  admins: {
    id: c('internal'),
    name: c('personal', 'encrypted'),
    created_at: c('internal'),
    username_index: c('personal', 'hashed'),
    password_hash: c('secret', 'hashed'),
    roles: c('internal'),
    disabled_at: c('internal'),
  },
  setup_tokens: {
    id: c('internal'),
    token_hash: c('secret', 'hashed'),
    created_at: c('internal'),
    used_at: c('internal'),
  },
  api_credentials: {
    id: c('internal'),
    kind: c('internal'),
    principal_id: c('internal'),
    token_hash: c('secret', 'hashed'),
    label: c('internal'),
    created_at: c('internal'),
    revoked_at: c('internal'),
    expires_at: c('internal'),
  },
  vendors: { id: c('internal'), code: c('public'), name: c('public'), created_at: c('internal'), kind: c('internal') },
  users: {
    id: c('internal'),
    kind: c('internal'),
    email_index: c('personal', 'hashed'),
    phone_index: c('personal', 'hashed'),
    email_ciphertext: c('personal', 'encrypted'),
    phone_ciphertext: c('personal', 'encrypted'),
    password_hash: c('secret', 'hashed'),
    status: c('internal'),
    created_at: c('internal'),
    activated_at: c('internal'),
    password_changed_at: c('internal'),
  },
  verification_codes: {
    id: c('internal'),
    user_id: c('internal'),
    purpose: c('internal'),
    code_hash: c('secret', 'hashed'),
    attempts: c('internal'),
    created_at: c('internal'),
    expires_at: c('internal'),
    used_at: c('internal', 'none', 'purged after expiry'),
  },
  sessions: {
    id: c('internal'),
    principal_kind: c('internal'),
    principal_id: c('internal'),
    token_hash: c('secret', 'hashed'),
    family_id: c('internal'),
    level: c('internal'),
    persistent: c('internal'),
    ip_hash: c('personal', 'hashed'),
    created_at: c('internal'),
    last_seen_at: c('internal'),
    authenticated_at: c('internal'),
    absolute_expires_at: c('internal', 'none', 'purged after expiry'),
    revoked_at: c('internal'),
  },
  refresh_tokens: {
    token_hash: c('secret', 'hashed'),
    family_id: c('internal'),
    principal_id: c('internal'),
    created_at: c('internal'),
    expires_at: c('internal', 'none', 'purged after expiry'),
    used_at: c('internal'),
  },
  mfa_totp: {
    principal_id: c('internal'),
    secret_ciphertext: c('secret', 'encrypted'),
    confirmed_at: c('internal'),
    last_step: c('internal'),
    created_at: c('internal'),
  },
  webauthn_credentials: {
    id: c('internal'),
    principal_id: c('internal'),
    public_key: c('internal'),
    counter: c('internal'),
    transports: c('internal'),
    label: c('internal'),
    created_at: c('internal'),
    last_used_at: c('internal'),
  },
  recovery_codes: {
    id: c('internal'),
    principal_id: c('internal'),
    code_hash: c('secret', 'hashed'),
    created_at: c('internal'),
    used_at: c('internal'),
  },
  auth_challenges: {
    id: c('internal'),
    principal_id: c('internal'),
    purpose: c('internal'),
    // Challenges, OIDC state and PKCE verifiers: single use, minutes long, useless without the other half.
    payload: c('confidential', 'none', 'minutes (expires_at), then purged'),
    created_at: c('internal'),
    expires_at: c('internal'),
  },
  known_sign_ins: {
    id: c('internal'),
    principal_id: c('internal'),
    device_hash: c('personal', 'hashed'),
    network_hash: c('personal', 'hashed'),
    first_seen_at: c('internal'),
    last_seen_at: c('internal'),
  },
  oidc_identities: {
    provider: c('internal'),
    subject_index: c('personal', 'hashed'),
    user_id: c('internal'),
    created_at: c('internal'),
  },
  organisation_members: {
    vendor_id: c('internal'),
    user_id: c('internal'),
    role: c('internal'),
    created_at: c('internal'),
  },
  organisation_invitations: {
    id: c('internal'),
    vendor_id: c('internal'),
    email_index: c('personal', 'hashed'),
    role: c('internal'),
    token_hash: c('secret', 'hashed'),
    invited_by: c('internal'),
    created_at: c('internal'),
    expires_at: c('internal'),
    accepted_at: c('internal'),
  },
  operator_keys: {
    id: c('public'),
    vendor_id: c('internal'),
    secret_ciphertext: c('secret', 'encrypted'),
    scopes: c('internal'),
    allowed_cidrs: c('internal'),
    label: c('internal'),
    created_by: c('internal'),
    created_at: c('internal'),
    last_used_at: c('internal'),
    revoked_at: c('internal'),
  },
  request_nonces: { key_id: c('internal'), nonce: c('internal'), expires_at: c('internal', 'none', 'replay window') },
  products: {
    id: c('internal'),
    vendor_id: c('internal'),
    code: c('public'),
    name: c('public'),
    category: c('public'),
    created_at: c('internal'),
    messages_per_second: c('internal'),
    messages_per_day: c('internal'),
    crypto_suite: c('internal'),
    security_level: c('internal'),
    auth_modes: c('internal'),
    data_points: c('internal'),
    telemetry_retention_days: c('internal'),
    // The product secret of hardware-ID registration (DEV-4): shown once, stored encrypted.
    secret_ciphertext: c('secret', 'encrypted'),
    secret_issued_at: c('internal'),
  },
  devices: {
    id: c('internal'),
    vendor_id: c('internal'),
    product_id: c('internal'),
    secret_ciphertext: c('secret', 'encrypted'),
    status: c('internal'),
    created_at: c('internal'),
  },
  // When a device was online is tenant business data (it can hint at a household's habits); no IPs.
  device_presence: {
    device_id: c('internal'),
    online: c('confidential'),
    last_seen_at: c('confidential'),
    last_connected_at: c('confidential'),
    last_disconnected_at: c('confidential'),
    last_disconnect_reason: c('confidential'),
    // A random per-process ID (scale mode), not a host name or address.
    node_id: c('internal'),
  },
  // Scale mode (RES-2): which processes serve this database; random IDs and times only.
  cluster_nodes: {
    node_id: c('internal'),
    started_at: c('internal'),
    heartbeat_at: c('internal'),
  },
  telemetry: {
    seq: c('internal'),
    device_id: c('internal'),
    received_at: c('internal'),
    payload: c('confidential', 'none', 'telemetry.retentionDays or the product override; wiped on unbind'),
  },
  audit_entries: {
    seq: c('internal', 'merkle-covered'),
    time: c('internal', 'merkle-covered', 'audit.retentionDays'),
    actor_type: c('internal', 'merkle-covered'),
    actor_id: c('internal', 'merkle-covered'),
    tenant: c('internal', 'merkle-covered'),
    event_type: c('internal', 'merkle-covered'),
    target: c('internal', 'merkle-covered'),
    result: c('internal', 'merkle-covered'),
    ip_epoch: c('internal', 'merkle-covered'),
    source_ip: c('personal', 'encrypted', 'audit.ipRetentionDays (day key destroyed)'),
    details: c('confidential', 'masked'),
    leaf_hash: c('internal'),
  },
  audit_nodes: { height: c('internal'), idx: c('internal'), hash: c('internal') },
  audit_checkpoints: { tree_size: c('internal'), time: c('internal'), body: c('public') },
  audit_ip_keys: {
    epoch: c('internal'),
    sealed_key: c('secret', 'wrapped-by-root-key', 'audit.ipRetentionDays'),
    created_at: c('internal'),
    destroyed_at: c('internal'),
  },
  guard_alerts: {
    id: c('internal'),
    time: c('internal'),
    kind: c('internal'),
    source_ip: c('personal', 'none', 'audit.ipRetentionDays (set to NULL)'),
    target: c('internal'),
    tenant: c('internal'),
    response: c('internal'),
    details: c('confidential'),
  },
  // MQTT broker state (0006_broker). Client IDs, principals and topics are device identifiers
  // (internal, like devices.id); payloads and message properties are device data (confidential, like
  // telemetry.payload). Rows live only as long as the MQTT session or message expiry allows.
  broker_sessions: {
    client_id: c('internal'),
    principal_id: c('internal'),
    expiry_interval_s: c('internal'),
    disconnected_at: c('internal'),
    expires_at: c('internal', 'none', 'session expiry interval, then purged with its rows'),
  },
  broker_subscriptions: {
    client_id: c('internal'),
    filter: c('internal'),
    qos: c('internal'),
    no_local: c('internal'),
    retain_as_published: c('internal'),
    retain_handling: c('internal'),
    subscription_identifier: c('internal'),
  },
  broker_pending: {
    client_id: c('internal'),
    seq: c('internal'),
    state: c('internal'),
    packet_id: c('internal'),
    topic: c('internal'),
    payload: c('confidential', 'none', 'until delivered or the session expires'),
    qos: c('internal'),
    retain: c('internal'),
    properties: c('confidential', 'none', 'until delivered or the session expires'),
    expires_at: c('internal'),
  },
  broker_inbound_qos2: { client_id: c('internal'), packet_id: c('internal') },
  broker_retained: {
    topic: c('internal'),
    payload: c('confidential', 'none', 'until replaced, cleared or its message expiry'),
    qos: c('internal'),
    properties: c('confidential', 'none', 'until replaced, cleared or its message expiry'),
    expires_at: c('internal', 'none', 'message expiry interval, then purged'),
    updated_at: c('internal'),
  },
  castellan_migrations: { name: c('internal'), applied_at: c('internal') },
  // Binding tokens: the token is a bearer secret (hashed); used and expired rows purged after a day.
  binding_tokens: {
    id: c('internal'),
    token_hash: c('secret', 'hashed', '1 day after expiry'),
    user_id: c('internal'),
    created_at: c('internal'),
    expires_at: c('internal'),
    used_at: c('internal'),
    device_id: c('internal'),
  },
  // Who owns which device links a person to a household's devices: kept until unbind (BIND-5).
  device_bindings: {
    device_id: c('internal'),
    user_id: c('confidential', 'none', 'until unbind or factory reset'),
    vendor_id: c('internal'),
    bound_at: c('confidential', 'none', 'until unbind or factory reset'),
    token_id: c('internal'),
  },
  // Shares: deleted on revocation, expiry (purged) and unbind.
  device_shares: {
    id: c('internal'),
    device_id: c('internal'),
    user_id: c('confidential', 'none', 'until revoked, expired or unbound'),
    role: c('internal'),
    created_by: c('confidential', 'none', 'until revoked, expired or unbound'),
    created_at: c('internal'),
    expires_at: c('internal'),
  },
  // Device shadow (CHAN-7): device data, deleted on unbind (BIND-5) and on a factory reset (DEV-9).
  device_shadows: {
    device_id: c('internal'),
    vendor_id: c('internal'),
    version: c('internal'),
    desired_version: c('internal'),
    desired: c('confidential', 'none', 'until unbind or factory reset'),
    reported: c('confidential', 'none', 'until unbind or factory reset'),
    metadata: c('confidential', 'none', 'until unbind or factory reset'),
    desired_updated_at: c('confidential'),
    reported_updated_at: c('confidential'),
    stale_reports: c('internal'),
  },
  // Commands to devices (CHAN-7, DEV-9): parameters and results are device data; the issuer links a
  // person to the household's device (like device_bindings.user_id). Deleted on unbind, otherwise
  // after 90 days.
  device_commands: {
    id: c('internal'),
    device_id: c('internal'),
    vendor_id: c('internal'),
    name: c('internal'),
    params: c('confidential', 'none', '90 days, or until unbind'),
    status: c('internal'),
    result: c('confidential', 'none', '90 days, or until unbind'),
    error: c('confidential', 'none', '90 days, or until unbind'),
    issued_by_type: c('internal'),
    issued_by_id: c('confidential', 'none', '90 days, or until unbind'),
    issued_at: c('internal'),
    expires_at: c('internal'),
    delivered_at: c('internal'),
    completed_at: c('internal'),
  },
  // Secure-channel sessions over HTTP (CHAN-3): keys sealed under the tenant key, purged after expiry.
  secure_channel_sessions: {
    id: c('internal'),
    device_id: c('internal'),
    vendor_id: c('internal'),
    suite: c('internal'),
    keys_ciphertext: c('secret', 'encrypted', 'purged after expiry'),
    state: c('internal', 'none', 'purged after expiry'),
    version: c('internal'),
    created_at: c('internal'),
    expires_at: c('internal'),
  },
  // Device HTTPS authentication (DEV-6): replay memory, open challenges (hash only), device tokens (hash only).
  device_request_nonces: {
    subject: c('internal'),
    nonce: c('internal'),
    expires_at: c('internal', 'none', 'replay window'),
  },
  device_challenges: {
    challenge_hash: c('secret', 'hashed'),
    device_id: c('internal'),
    client_nonce: c('internal'),
    expires_at: c('internal', 'none', '60 seconds'),
  },
  device_tokens: {
    token_hash: c('secret', 'hashed'),
    device_id: c('internal'),
    method: c('internal'),
    created_at: c('internal'),
    expires_at: c('internal', 'none', '15 minutes'),
  },
  // Registered MAC/IMEI values (DEV-4): a keyed blind index only, never the value itself.
  product_hardware_ids: {
    product_id: c('internal'),
    hardware_index: c('confidential', 'hashed'),
    kind: c('internal'),
    created_at: c('internal'),
    device_id: c('internal'),
    used_at: c('internal'),
  },
  // Device CAs (DEV-5): certificates are public; the platform CA's private key is sealed under the
  // vendor's key. Kept while the vendor exists (a revoked CA stays, so its certificates stay refused).
  device_cas: {
    id: c('internal'),
    vendor_id: c('internal'),
    kind: c('internal'),
    slot: c('internal'),
    fingerprint: c('public'),
    subject: c('public'),
    certificate_pem: c('public'),
    key_ciphertext: c('secret', 'encrypted'),
    not_before: c('public'),
    not_after: c('public'),
    created_at: c('internal'),
    revoked_at: c('internal'),
  },
  // Registration codes of the uploaded-CA proof of possession: SHA-256 only, one hour, single use.
  device_ca_registration_codes: {
    code_hash: c('secret', 'hashed', '1 hour'),
    vendor_id: c('internal'),
    expires_at: c('internal'),
    used_at: c('internal'),
  },
  // Device certificates and SM2 public keys (DEV-5): public material; no private key ever reaches the
  // platform. Revoked rows stay so that a revoked certificate stays refused.
  device_certificates: {
    id: c('internal'),
    device_id: c('internal'),
    vendor_id: c('internal'),
    ca_id: c('internal'),
    kind: c('internal'),
    algorithm: c('internal'),
    serial: c('public'),
    fingerprint: c('public'),
    public_key: c('public'),
    certificate_pem: c('public'),
    not_before: c('public'),
    not_after: c('public'),
    created_at: c('internal'),
    revoked_at: c('internal'),
    revoke_reason: c('internal'),
  },
  // Credential lifecycle (DEV-8): times only.
  device_credential_state: {
    device_id: c('internal'),
    secret_changed_at: c('internal'),
    tokens_revoked_at: c('internal'),
  },
  // Webhooks (0015_webhooks_posture). The URL is the tenant's own business endpoint (confidential: it may
  // carry a token in its query); the signing secret is encrypted under the tenant key, shown once.
  webhook_endpoints: {
    id: c('internal'),
    vendor_id: c('internal'),
    url: c('confidential'),
    events: c('internal'),
    description: c('confidential'),
    secret_ciphertext: c('secret', 'encrypted'),
    previous_secret_ciphertext: c('secret', 'encrypted', 'until previous_secret_expires_at, then set to NULL'),
    previous_secret_expires_at: c('internal'),
    created_at: c('internal'),
    secret_rotated_at: c('internal'),
  },
  // The webhook outbox: bodies are device data (like telemetry.payload); no IPs. Delivered rows are
  // purged after 7 days, dead letters after 30.
  webhook_deliveries: {
    seq: c('internal'),
    id: c('internal'),
    endpoint_id: c('internal'),
    vendor_id: c('internal'),
    event_type: c('internal'),
    device_id: c('internal'),
    body: c('confidential', 'none', '7 days after delivery, 30 days after dead-lettering'),
    state: c('internal'),
    attempts: c('internal'),
    created_at: c('internal'),
    next_attempt_at: c('internal'),
    last_attempt_at: c('internal'),
    last_status: c('internal'),
    last_error: c('internal'),
    delivered_at: c('internal'),
    dead_at: c('internal'),
  },
  // Posture (DEV-10): firmware versions, security levels and file digests are the vendor's product
  // data, and a device's deviations are security findings (confidential, like guard_alerts.details).
  product_firmware_golden: {
    product_id: c('internal'),
    firmware_version: c('internal'),
    vendor_id: c('internal'),
    security_level: c('internal'),
    digests: c('confidential'),
    updated_at: c('internal'),
  },
  device_posture: {
    device_id: c('internal'),
    vendor_id: c('internal'),
    product_id: c('internal'),
    firmware_version: c('internal'),
    security_level: c('internal'),
    digests: c('confidential'),
    reported_at: c('internal'),
    checked_at: c('internal'),
    deviations: c('confidential'),
    compliant: c('internal'),
    // What the device's TLS connection negotiated (0019_posture_tls, CHAN-8): protocol parameters.
    tls_group: c('internal'),
    tls_version: c('internal'),
    tls_cipher: c('internal'),
  },
  // Telemetry history (0014_telemetry_history). Series name a device's data points (identifiers, no
  // readings; kept so IDs cached by any process stay valid). The per-minute aggregates are device data like
  // telemetry.payload: purged with the rows (per-product retention) and wiped on unbind (BIND-5).
  telemetry_series: { id: c('internal'), device_id: c('internal'), point: c('internal') },
  telemetry_point_minutes: {
    series_id: c('internal'),
    minute: c('internal'),
    n: c('confidential'),
    total: c('confidential', 'none', 'telemetry.retentionDays or the product override; wiped on unbind'),
    min_value: c('confidential'),
    max_value: c('confidential'),
    last_at: c('internal'),
    last_value: c('confidential'),
  },
  // Manufacturing (0011_manufacturing, DEV-7). Restored by H6 after an accidental deletion: reconstructed
  // from the migration; the manufacturing helper should confirm these levels. Station tokens are kept
  // only as SHA-256; a batch file is sealed to the station's public key (the platform cannot read it).
  factory_stations: {
    id: c('internal'),
    vendor_id: c('internal'),
    product_id: c('internal'),
    name: c('confidential'),
    token_hash: c('secret', 'hashed'),
    encryption_curve: c('internal'),
    encryption_public_key: c('public'),
    signing_public_key: c('public'),
    created_by: c('internal'),
    created_at: c('internal'),
    expires_at: c('internal'),
    revoked_at: c('internal'),
    last_used_at: c('internal'),
  },
  manufacturing_batches: {
    id: c('internal'),
    vendor_id: c('internal'),
    product_id: c('internal'),
    station_id: c('internal'),
    device_count: c('internal'),
    sealed_file: c('secret', 'encrypted'),
    created_by: c('internal'),
    created_at: c('internal'),
    first_fetched_at: c('internal'),
    fetch_count: c('internal'),
  },
  manufacturing_devices: {
    device_id: c('internal'),
    batch_id: c('internal'),
    vendor_id: c('internal'),
    image_digest: c('internal'),
    receipt: c('confidential'),
    receipt_signature: c('internal'),
    burned_at: c('internal'),
    receipt_recorded_at: c('internal'),
    activated_at: c('internal'),
  },
  // Lock passcodes (LOCK-1): never the code. Who issued it, its label and its use are household data,
  // cleared on unbind (BIND-5); the rest is the lock's revocation list, purged 30 days after the window.
  lock_passcodes: {
    id: c('internal'),
    device_id: c('internal'),
    kind: c('internal'),
    counter: c('internal'),
    valid_from: c('confidential'),
    valid_until: c('confidential', 'none', '30 days after the window ends'),
    label: c('confidential', 'none', 'until unbind'),
    issued_by: c('confidential', 'none', 'until unbind'),
    created_at: c('internal'),
    revoked_at: c('internal'),
    use_count: c('confidential', 'none', 'until unbind'),
    last_used_at: c('confidential', 'none', 'until unbind'),
  },
};

/** The key store's tables (a separate database). */
export const KEY_STORE_CLASSIFICATION: Readonly<Record<string, Readonly<Record<string, ColumnClass>>>> = {
  key_versions: {
    id: c('internal'),
    key_name: c('internal'),
    tenant: c('internal'),
    version: c('internal'),
    suite: c('internal'),
    state: c('internal'),
    wrapped_material: c('secret', 'wrapped-by-root-key'),
    created_at: c('internal'),
    state_changed_at: c('internal'),
  },
  backup_keys: {
    id: c('internal'),
    state: c('internal'),
    wrapped_material: c('secret', 'wrapped-by-root-key'),
    created_at: c('internal'),
    state_changed_at: c('internal'),
  },
  castellan_migrations: { name: c('internal'), applied_at: c('internal') },
};

export function classify(table: string, column: string, store: 'data' | 'keys' = 'data'): ColumnClass | undefined {
  const registry = store === 'keys' ? KEY_STORE_CLASSIFICATION : DATA_CLASSIFICATION;
  return registry[table]?.[column];
}
