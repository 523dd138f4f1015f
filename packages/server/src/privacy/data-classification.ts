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
  },
  telemetry: { seq: c('internal'), device_id: c('internal'), received_at: c('internal'), payload: c('confidential') },
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
