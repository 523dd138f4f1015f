// The one registry of every error code Castellan emits. docs/errors.md lists the same codes; a test
// keeps the two in step. Codes are stable API: never rename one, add a new one instead.
//
// `expose: false` errors leave the process as a generic 500 (ERR_INTERNAL); their message is for logs.
// Security failures carry fixed messages that reveal nothing about which check failed.

export interface ErrorCodeSpec {
  readonly status: number;
  readonly expose: boolean;
  readonly message: string;
}

export const ERROR_CODES = {
  ERR_INTERNAL: { status: 500, expose: true, message: 'Internal server error' },
  ERR_CONFIG_INVALID: { status: 500, expose: false, message: 'Configuration is invalid' },
  ERR_STORE_UNAVAILABLE: { status: 503, expose: true, message: 'Storage is unavailable' },
  ERR_NOT_READY: { status: 503, expose: true, message: 'Not ready to serve' },
  ERR_LISTEN_FAILED: { status: 500, expose: false, message: 'A listener could not be started' },
  ERR_BROKER_CONFORMANCE_NOT_LOOPBACK: {
    status: 500,
    expose: false,
    message: 'The MQTT conformance listener only listens on a loopback address',
  },
  ERR_BROKER_CONFORMANCE_HOOKS_REFUSED: {
    status: 500,
    expose: false,
    message: 'The anonymous conformance hooks are refused here',
  },
  ERR_KEY_ROOT_INVALID: { status: 500, expose: false, message: 'Root key is invalid' },
  ERR_KEY_DECRYPT_FAILED: { status: 500, expose: false, message: 'Decryption failed' },
  ERR_KEY_NOT_FOUND: { status: 404, expose: true, message: 'Key not found' },
  ERR_KEY_TRANSITION_INVALID: {
    status: 409,
    expose: true,
    message: 'This key operation is not allowed in the key’s state',
  },
  ERR_KEY_NOT_USABLE: { status: 409, expose: true, message: 'The key is not usable in its current state' },
  ERR_KEY_DESTROYED: {
    status: 410,
    expose: true,
    message: 'The key protecting this data was destroyed; the data is unreadable',
  },

  ERR_HTTP_NOT_FOUND: { status: 404, expose: true, message: 'Route not found' },
  ERR_HTTP_MALFORMED_JSON: { status: 400, expose: true, message: 'Request body is not valid JSON' },
  ERR_HTTP_BODY_TOO_LARGE: { status: 413, expose: true, message: 'Request body is too large' },
  ERR_HTTP_UNSUPPORTED_MEDIA_TYPE: {
    status: 415,
    expose: true,
    message: 'Content-Type is not supported; send application/json',
  },
  ERR_HTTP_BAD_REQUEST: { status: 400, expose: true, message: 'Request is malformed' },
  ERR_HTTP_HEADERS_TOO_LARGE: { status: 431, expose: true, message: 'Request headers are too large' },
  ERR_HTTP_REQUEST_TIMEOUT: { status: 408, expose: true, message: 'Request was not received in time' },
  ERR_HTTP_EMPTY_BODY: { status: 400, expose: true, message: 'Request body is empty' },
  ERR_HTTP_SHUTTING_DOWN: { status: 503, expose: true, message: 'Server is shutting down' },
  ERR_VALIDATION_FAILED: { status: 400, expose: true, message: 'Request validation failed' },
  ERR_VALIDATION_UNKNOWN_FIELD: { status: 400, expose: true, message: 'Request contains an unknown field' },

  ERR_AUTH_REQUIRED: { status: 401, expose: true, message: 'Authentication required' },
  ERR_AUTH_INVALID: { status: 401, expose: true, message: 'Invalid credentials' },
  ERR_AUTH_FORBIDDEN: { status: 403, expose: true, message: 'Not allowed' },
  ERR_RATE_LIMITED: { status: 429, expose: true, message: 'Too many requests; retry later' },
  ERR_GUARD_IP_BLOCKED: { status: 403, expose: true, message: 'Requests from this address are blocked' },
  ERR_GUARD_BLOCK_NOT_FOUND: { status: 404, expose: true, message: 'No block for this address' },
  ERR_DEVICE_NOT_QUARANTINED: { status: 409, expose: true, message: 'Device is not quarantined' },
  ERR_AUTH_STEP_UP_REQUIRED: {
    status: 401,
    expose: true,
    message: 'This operation needs a recent sign-in; authenticate again (POST /v1/auth/reauthenticate)',
  },
  ERR_AUTH_LOCKED: { status: 429, expose: true, message: 'Too many failed attempts; retry later' },
  ERR_PASSWORD_WEAK: { status: 400, expose: true, message: 'Password does not meet the policy' },
  ERR_MFA_CODE_INVALID: { status: 401, expose: true, message: 'The code is invalid or expired' },
  ERR_MFA_ALREADY_ENROLLED: {
    status: 409,
    expose: true,
    message: 'This second factor is already enrolled; remove it first',
  },
  ERR_MFA_NOT_ENROLLED: { status: 409, expose: true, message: 'No second factor is enrolled' },
  ERR_MFA_FACTOR_NOT_FOUND: { status: 404, expose: true, message: 'Second factor not found' },
  ERR_MFA_WEBAUTHN_REJECTED: {
    status: 400,
    expose: true,
    message: 'The passkey response could not be verified; start the registration again',
  },
  ERR_MFA_TOO_MANY_PASSKEYS: {
    status: 409,
    expose: true,
    message: 'Too many passkeys are registered; remove one first',
  },
  ERR_ACCOUNT_IDENTIFIER_INVALID: {
    status: 400,
    expose: true,
    message: 'Give an e-mail address or a phone number in E.164 form (+ country code, digits only)',
  },
  ERR_ACCOUNT_EXISTS: { status: 409, expose: false, message: 'Account already exists' },
  ERR_ACCOUNT_CODE_INVALID: { status: 400, expose: true, message: 'The code is invalid or expired' },
  ERR_AUTH_CHALLENGE_REQUIRED: {
    status: 400,
    expose: true,
    message: 'Solve the proof-of-work challenge (POST /v1/auth/challenge) and send it as altcha',
  },
  ERR_AUTH_CHALLENGE_INVALID: {
    status: 400,
    expose: true,
    message: 'The proof-of-work solution is invalid, expired or already used; solve a new challenge',
  },
  ERR_STAFF_USERNAME_TAKEN: { status: 409, expose: true, message: 'This staff username is taken' },
  ERR_STAFF_NOT_FOUND: { status: 404, expose: true, message: 'Staff member not found' },
  ERR_STAFF_LAST_SUPERADMIN: {
    status: 409,
    expose: true,
    message: 'The last superadmin cannot lose the role or be disabled',
  },
  ERR_OIDC_PROVIDER_UNKNOWN: { status: 404, expose: true, message: 'No such sign-in provider' },
  ERR_OIDC_FAILED: { status: 401, expose: true, message: 'Sign-in with the provider failed; start again' },
  ERR_OIDC_EMAIL_REQUIRED: {
    status: 400,
    expose: true,
    message: 'The provider did not share a verified e-mail address, which a new account needs',
  },
  ERR_OIDC_ACCOUNT_EXISTS: {
    status: 409,
    expose: true,
    message:
      'An account with this e-mail address already exists; sign in with your password and link the provider in your settings',
  },
  ERR_SETUP_TOKEN_INVALID: { status: 401, expose: true, message: 'Setup token is invalid or already used' },

  ERR_VENDOR_NOT_FOUND: { status: 404, expose: true, message: 'Vendor not found' },
  ERR_VENDOR_CODE_EXHAUSTED: {
    status: 409,
    expose: true,
    message: 'Could not allocate a unique vendor code',
  },
  ERR_ORG_NOT_FOUND: { status: 404, expose: true, message: 'Organisation not found' },
  ERR_ORG_MEMBER_NOT_FOUND: { status: 404, expose: true, message: 'Member not found' },
  ERR_ORG_LAST_OWNER: { status: 409, expose: true, message: 'An organisation must keep at least one owner' },
  ERR_ORG_PERSONAL: {
    status: 409,
    expose: true,
    message: 'A personal organisation has no other members; create an enterprise organisation',
  },
  ERR_ORG_ALREADY_MEMBER: { status: 409, expose: true, message: 'Already a member of this organisation' },
  ERR_ORG_INVITATION_INVALID: {
    status: 400,
    expose: true,
    message: 'The invitation is invalid, expired or already used',
  },
  ERR_ACCESS_KEY_NOT_FOUND: { status: 404, expose: true, message: 'Access key not found' },
  ERR_ACCESS_KEY_CIDR_INVALID: {
    status: 400,
    expose: true,
    message: 'allowedCidrs must hold IPv4 or IPv6 CIDR blocks, e.g. 203.0.113.0/24',
  },
  ERR_PRODUCT_NOT_FOUND: { status: 404, expose: true, message: 'Product not found' },
  ERR_PRODUCT_CODE_EXHAUSTED: {
    status: 409,
    expose: true,
    message: 'Could not allocate a unique product code',
  },
  ERR_DEVICE_ID_INVALID: { status: 400, expose: true, message: 'Device ID is malformed' },
  ERR_DEVICE_NOT_FOUND: { status: 404, expose: true, message: 'Device not found' },
  ERR_DEVICE_ID_EXHAUSTED: { status: 409, expose: true, message: 'Could not allocate a unique device ID' },
  ERR_AUDIT_NO_CHECKPOINT: { status: 404, expose: true, message: 'No audit checkpoint has been written yet' },
  ERR_AUDIT_PROOF_UNAVAILABLE: { status: 400, expose: true, message: 'No such proof in this log' },
  ERR_AUDIT_ENTRY_NOT_FOUND: { status: 404, expose: true, message: 'Audit entry not found' },
  ERR_AUDIT_UNAVAILABLE: { status: 503, expose: true, message: 'The audit log cannot record right now' },
  ERR_TELEMETRY_NOT_FOUND: { status: 404, expose: true, message: 'No telemetry stored for this device' },
  // Bindings and sharing (BIND-1, BIND-3, BIND-5).
  ERR_BINDING_TOKEN_INVALID: {
    status: 400,
    expose: true,
    message: 'The binding token is invalid, expired or already used',
  },
  ERR_BINDING_TOKEN_NOT_FOUND: { status: 404, expose: true, message: 'Binding token not found' },
  ERR_BINDING_TOKEN_LIMIT: {
    status: 429,
    expose: true,
    message: 'Too many binding tokens outstanding; use one or wait for it to expire',
  },
  ERR_DEVICE_ALREADY_BOUND: {
    status: 409,
    expose: true,
    message: 'The device is bound to another user; it must be unbound or reset first',
  },
  ERR_DEVICE_UNBIND_FAILED: {
    status: 503,
    expose: true,
    message: 'The device could not be unbound completely; nothing was unbound, retry',
  },
  ERR_SHARE_INVITEE_NOT_FOUND: { status: 404, expose: true, message: 'No active account can receive this share' },
  ERR_SHARE_ROLE_FORBIDDEN: { status: 403, expose: true, message: 'Your role on this device cannot grant this role' },
  ERR_SHARE_NOT_FOUND: { status: 404, expose: true, message: 'Share not found' },
  ERR_DEVICE_CSR_INVALID: {
    status: 400,
    expose: true,
    message: 'The certificate signing request is malformed or its signature does not verify',
  },
  ERR_DEVICE_KEY_UNSUPPORTED: {
    status: 400,
    expose: true,
    message: 'Device keys must be ECDSA P-256, RSA of 2048 to 8192 bits, or SM2',
  },
  ERR_DEVICE_CERT_INVALID: {
    status: 400,
    expose: true,
    message:
      'The certificate is malformed, not valid now, not for this device or not issued by a registered CA of the vendor',
  },
  ERR_DEVICE_CREDENTIAL_DUPLICATE: {
    status: 409,
    expose: true,
    message: 'This certificate or key is already registered',
  },
  ERR_DEVICE_CERT_NOT_FOUND: { status: 404, expose: true, message: 'Certificate not found' },
  ERR_DEVICE_CA_INVALID: {
    status: 400,
    expose: true,
    message: 'The CA certificate is malformed, not a CA, not valid now or uses an unsupported key',
  },
  ERR_DEVICE_CA_POP_FAILED: {
    status: 400,
    expose: true,
    message:
      'Proof of possession failed: the verification certificate must name a valid registration code and be signed by the CA key',
  },
  ERR_DEVICE_CA_DUPLICATE: { status: 409, expose: true, message: 'This CA certificate is already registered' },
  ERR_DEVICE_CA_NOT_FOUND: { status: 404, expose: true, message: 'Device CA not found' },
  ERR_DEVICE_DECOMMISSIONED: {
    status: 409,
    expose: true,
    message: 'The device is decommissioned; its credentials and ID can never be used again',
  },
  ERR_DEVICE_NOT_DISABLED: { status: 409, expose: true, message: 'Device is not disabled' },
  ERR_DEVICE_AUTH_FAILED: { status: 401, expose: true, message: 'Device authentication failed' },
  ERR_DEVICE_REGISTRATION_FAILED: { status: 401, expose: true, message: 'Device registration failed' },
  ERR_DEVICE_PAYLOAD_INVALID: {
    status: 400,
    expose: true,
    message: "The payload does not match the product's data-point schema",
  },
  ERR_PRODUCT_AUTH_MODE_NOT_ALLOWED: {
    status: 400,
    expose: true,
    message: 'Products of security level L2 or L3 accept only the certificate authentication mode',
  },
  ERR_PRODUCT_SCHEMA_INVALID: { status: 400, expose: true, message: 'The data-point schema is invalid' },
  ERR_PRODUCT_HARDWARE_IDS_DISABLED: {
    status: 409,
    expose: true,
    message: "The product's authentication modes do not include hardware-id",
  },
  ERR_HARDWARE_ID_INVALID: {
    status: 400,
    expose: true,
    message: 'A hardware ID is not a MAC-48 address or a 15-digit IMEI',
  },
  ERR_WEBHOOK_NOT_FOUND: { status: 404, expose: true, message: 'Webhook not found' },
  ERR_WEBHOOK_URL_INVALID: { status: 400, expose: true, message: 'The webhook URL is not allowed' },
  ERR_WEBHOOK_URL_REFUSED: { status: 400, expose: true, message: 'The URL does not resolve to a public address' },
  ERR_WEBHOOK_LIMIT: { status: 409, expose: true, message: 'This organisation already has the most webhooks allowed' },
  ERR_WEBHOOK_DEAD_LETTER_NOT_FOUND: { status: 404, expose: true, message: 'Dead letter not found' },
  ERR_POSTURE_NOT_FOUND: { status: 404, expose: true, message: 'This device has not reported its posture yet' },
  ERR_FIRMWARE_GOLDEN_NOT_FOUND: { status: 404, expose: true, message: 'No golden values for this firmware version' },
  ERR_TELEMETRY_CURSOR_INVALID: {
    status: 400,
    expose: true,
    message: 'The paging cursor is malformed or belongs to another ordering',
  },
  ERR_TELEMETRY_RANGE_INVALID: {
    status: 400,
    expose: true,
    message: 'The time range is empty: from must be before to',
  },
  ERR_TELEMETRY_TOO_MANY_BUCKETS: {
    status: 400,
    expose: true,
    message: 'The time range holds too many buckets: narrow it or choose a larger bucket',
  },
  ERR_PUSH_TOO_MANY_STREAMS: { status: 429, expose: true, message: 'Too many open event streams for this account' },
  ERR_PUSH_UNAVAILABLE: { status: 503, expose: true, message: 'No more event streams can be opened right now' },
  ERR_FACTORY_KEY_INVALID: { status: 400, expose: true, message: 'The public key is not a supported key' },
  ERR_FACTORY_STATION_NOT_FOUND: { status: 404, expose: true, message: 'Factory station not found' },
  ERR_FACTORY_STATION_INACTIVE: { status: 409, expose: true, message: 'The factory station is revoked or expired' },
  ERR_FACTORY_BATCH_NOT_FOUND: { status: 404, expose: true, message: 'Batch not found' },
  ERR_FACTORY_RECEIPT_INVALID: { status: 400, expose: true, message: 'A burn receipt failed verification' },
  ERR_FACTORY_RECEIPT_CONFLICT: {
    status: 409,
    expose: true,
    message: 'A different burn receipt is already recorded for this device',
  },
  ERR_SHADOW_STATE_INVALID: { status: 400, expose: true, message: 'Shadow state is invalid' },
  ERR_SHADOW_VERSION_CONFLICT: {
    status: 409,
    expose: true,
    message: 'The shadow changed since the version you read',
  },
  ERR_SHADOW_BUSY: { status: 409, expose: true, message: 'The shadow is changing too fast; try again' },
  ERR_DEVICE_OFFLINE: { status: 409, expose: true, message: 'The device is not connected' },
  ERR_COMMAND_INVALID: { status: 400, expose: true, message: 'The command is invalid' },
  ERR_COMMAND_LIMIT: {
    status: 429,
    expose: true,
    message: 'Too many commands are waiting for this device to acknowledge them',
  },
  ERR_COMMAND_NOT_FOUND: { status: 404, expose: true, message: 'Command not found' },
  ERR_LOCK_NOT_A_LOCK: { status: 409, expose: true, message: 'Passcodes are only for devices of a lock product' },
  ERR_LOCK_PASSCODE_INVALID: { status: 400, expose: true, message: 'The passcode window is invalid' },
  ERR_LOCK_PASSCODE_EXHAUSTED: {
    status: 409,
    expose: true,
    message: 'Every passcode counter of this window is taken; choose another window',
  },
  ERR_LOCK_PASSCODE_NOT_FOUND: { status: 404, expose: true, message: 'Passcode not found' },
  ERR_LOCK_KEY_UNAVAILABLE: { status: 409, expose: true, message: 'This lock has no usable device secret' },
  ERR_TIME_SIGNING_UNAVAILABLE: {
    status: 503,
    expose: true,
    message: 'Signed time is not available: the TLS server key is not ECDSA P-256',
  },
  ERR_SECURE_CHANNEL_REFUSED: { status: 401, expose: true, message: 'Secure channel refused' },
  ERR_SECURE_CHANNEL_MALFORMED: { status: 400, expose: true, message: 'Not a secure-channel message' },
  ERR_SECURE_CHANNEL_NOT_FOUND: {
    status: 404,
    expose: true,
    message: 'This listener serves only the secure-channel paths',
  },
  ERR_SECURE_CHANNEL_ENVELOPE_INVALID: {
    status: 400,
    expose: true,
    message: 'The frame does not hold a request envelope',
  },
  ERR_SECURE_CHANNEL_PATH_NOT_ALLOWED: {
    status: 404,
    expose: true,
    message: 'The envelope may only name a device-API path',
  },
} as const satisfies Record<string, ErrorCodeSpec>;

export type ErrorCode = keyof typeof ERROR_CODES;
