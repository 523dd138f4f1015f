// The one configuration schema. Every key is documented in docs/configuration.md (a test checks).
// Numeric limits are explicit; `additionalProperties: false` everywhere so a typo is an error.
import { type Static, Type } from 'typebox';

const strict = { additionalProperties: false } as const;

export const ConfigSchema = Type.Object(
  {
    environment: Type.Union([Type.Literal('development'), Type.Literal('production')], {
      default: 'development',
      description:
        'production refuses development-only defaults (generated PKI and root key); development allows them with a loud warning',
    }),
    dataDir: Type.String({
      minLength: 1,
      default: './data',
      description: 'Directory for the embedded database, development PKI, root key and setup token',
    }),
    log: Type.Object(
      {
        level: Type.Union(
          [
            Type.Literal('fatal'),
            Type.Literal('error'),
            Type.Literal('warn'),
            Type.Literal('info'),
            Type.Literal('debug'),
            Type.Literal('trace'),
            Type.Literal('silent'),
          ],
          { default: 'info', description: 'pino log level' },
        ),
      },
      strict,
    ),
    database: Type.Object(
      {
        url: Type.String({
          default: '',
          description:
            'postgres://… selects PostgreSQL; empty selects the embedded SQLite file in dataDir (env DATABASE_URL)',
        }),
        sqliteFile: Type.String({
          minLength: 1,
          default: 'castellan.db',
          description: 'SQLite file name inside dataDir',
        }),
        poolMax: Type.Integer({ minimum: 1, maximum: 200, default: 10, description: 'PostgreSQL pool size' }),
        schema: Type.String({
          default: '',
          pattern: '^([a-z_][a-z0-9_]{0,62})?$',
          description: 'PostgreSQL schema to use (created if missing); empty uses the server default search_path',
        }),
      },
      strict,
    ),
    telemetry: Type.Object(
      {
        batchMaxRows: Type.Integer({
          minimum: 1,
          maximum: 10000,
          default: 500,
          description: 'Most telemetry rows written in one transaction',
        }),
        flushIntervalMs: Type.Integer({
          minimum: 0,
          maximum: 1000,
          default: 0,
          description:
            'Extra wait for more rows before an idle writer commits a partial batch; 0 commits on the next event-loop turn (group commit)',
        }),
        queueMaxRows: Type.Integer({
          minimum: 100,
          maximum: 1000000,
          default: 50000,
          description: 'Rows waiting to be written before publishers are refused',
        }),
        retentionDays: Type.Integer({
          minimum: 1,
          maximum: 36500,
          default: 365,
          description: 'Days telemetry (rows and per-minute aggregates) is kept unless its product sets its own',
        }),
        purgeIntervalMinutes: Type.Integer({
          minimum: 1,
          maximum: 1440,
          default: 10,
          description: 'How often telemetry older than its retention is deleted (in small batches)',
        }),
      },
      strict,
    ),
    tls: Type.Object(
      {
        certFile: Type.String({
          default: '',
          description: 'PEM server certificate chain; empty uses the development PKI',
        }),
        keyFile: Type.String({ default: '', description: 'PEM private key for certFile' }),
        caFile: Type.String({
          default: '',
          description:
            'PEM CA certificate that devices and clients pin, recorded in runtime.json for the CLI; with the development PKI its own CA is used',
        }),
        minVersion: Type.Union([Type.Literal('TLSv1.2'), Type.Literal('TLSv1.3')], {
          default: 'TLSv1.2',
          description: 'Lowest TLS version accepted by every listener',
        }),
        groups: Type.String({
          maxLength: 200,
          default: 'X25519MLKEM768:X25519:P-256:P-384',
          description:
            'Key-exchange groups every listener offers, colon-separated, most preferred first (CHAN-8: hybrid post-quantum first, classical kept)',
        }),
      },
      strict,
    ),
    rootKey: Type.Object(
      {
        file: Type.String({
          default: '',
          description:
            'File holding the 32-byte root key as base64 text; required in production (or rootKey.base64); in development empty uses dataDir/root.key, generated if missing',
        }),
        pkcs11Module: Type.String({
          default: '',
          description:
            'PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so): the root key is sealed by a key inside this token',
        }),
        pkcs11Token: Type.String({ default: 'castellan', description: 'Label of the PKCS#11 token' }),
        pkcs11Pin: Type.String({ default: '', description: 'User PIN of the token; secret, never printed' }),
        pkcs11KeyLabel: Type.String({
          default: 'castellan-root-kek',
          description: 'Label of the AES key in the token (generated there, non-extractable, on first start)',
        }),
        pkcs11SealedFile: Type.String({
          default: '',
          description: 'File holding the root key sealed by the token; empty: dataDir/root.key.hsm',
        }),
        base64: Type.String({
          default: '',
          description: 'The root key itself, base64 (env CASTELLAN_ROOT_KEY_BASE64); secret, never printed',
        }),
      },
      strict,
    ),
    http: Type.Object(
      {
        host: Type.String({ default: '0.0.0.0', description: 'HTTPS listen address' }),
        allow: Type.Array(Type.String({ pattern: '^[0-9a-fA-F:.]+(/[0-9]{1,3})?$' }), {
          default: [],
          maxItems: 1000,
          description:
            'CIDR ranges allowed to connect to the HTTPS listener; empty allows all (comma-separated in the environment)',
        }),
        deny: Type.Array(Type.String({ pattern: '^[0-9a-fA-F:.]+(/[0-9]{1,3})?$' }), {
          default: [],
          maxItems: 1000,
          description: 'CIDR ranges refused by the HTTPS listener (checked before allow)',
        }),
        port: Type.Integer({
          minimum: 0,
          maximum: 65535,
          default: 8443,
          description: 'HTTPS port (0 picks a free port)',
        }),
        bodyLimitBytes: Type.Integer({
          minimum: 1024,
          maximum: 16777216,
          default: 1048576,
          description: 'Largest accepted request body',
        }),
        requestTimeoutMs: Type.Integer({
          minimum: 1000,
          maximum: 600000,
          default: 30000,
          description: 'Time allowed to receive a whole request',
        }),
        trustProxy: Type.Boolean({
          default: false,
          description: 'Trust X-Forwarded-* headers (only behind your own proxy)',
        }),
      },
      strict,
    ),
    mqtt: Type.Object(
      {
        host: Type.String({ default: '0.0.0.0', description: 'MQTT over TLS listen address' }),
        allow: Type.Array(Type.String({ pattern: '^[0-9a-fA-F:.]+(/[0-9]{1,3})?$' }), {
          default: [],
          maxItems: 1000,
          description: 'CIDR ranges allowed to connect to the MQTT listener; empty allows all',
        }),
        deny: Type.Array(Type.String({ pattern: '^[0-9a-fA-F:.]+(/[0-9]{1,3})?$' }), {
          default: [],
          maxItems: 1000,
          description: 'CIDR ranges refused by the MQTT listener (checked before allow)',
        }),
        port: Type.Integer({
          minimum: 0,
          maximum: 65535,
          default: 8883,
          description: 'MQTT over TLS port (0 picks a free port)',
        }),
        maxPacketBytes: Type.Integer({
          minimum: 256,
          maximum: 268435455,
          default: 65536,
          description: 'Largest MQTT packet accepted',
        }),
        connectTimeoutMs: Type.Integer({
          minimum: 100,
          maximum: 120000,
          default: 10000,
          description: 'Time a new connection has to send CONNECT',
        }),
        maxKeepAliveSeconds: Type.Integer({
          minimum: 1,
          maximum: 65535,
          default: 300,
          description: 'Upper bound on a client keep-alive (MQTT 5 server keep-alive)',
        }),
        maxConnections: Type.Integer({
          minimum: 1,
          maximum: 10000000,
          default: 100000,
          description: 'Connections accepted by this process',
        }),
        connectsPerIpPerSecond: Type.Integer({
          minimum: 1,
          maximum: 1000000,
          default: 10,
          description:
            'Connection attempts per second one client network (IPv4 address, IPv6 /64) may make before TLS; beyond it and its burst allowance the socket is closed',
        }),
        connectBurstPerIp: Type.Integer({
          minimum: 0,
          maximum: 1000000,
          default: 100,
          description:
            'Connection attempts a client network may make above connectsPerIpPerSecond in a burst (renewed every connectBurstPerIp / connectsPerIpPerSecond seconds)',
        }),
        maxPendingHandshakes: Type.Integer({
          minimum: 1,
          maximum: 1000000,
          default: 256,
          description: 'TLS handshakes in progress at once on the MQTT listener; beyond it new sockets are closed',
        }),
        retryAfterMinSeconds: Type.Integer({
          minimum: 1,
          maximum: 3600,
          default: 5,
          description: 'Least retry-after (s) an MQTT 5 CONNACK 0x9F, 0x89 or 0x88 tells the client',
        }),
        retryAfterMaxSeconds: Type.Integer({
          minimum: 1,
          maximum: 86400,
          default: 30,
          description: 'Most retry-after (s) an MQTT 5 CONNACK 0x9F, 0x89 or 0x88 tells the client',
        }),
        maxInflight: Type.Integer({
          minimum: 1,
          maximum: 65535,
          default: 64,
          description: 'Unacknowledged inbound QoS 1/2 messages per connection (MQTT 5 receive maximum)',
        }),
        maxQueuedMessages: Type.Integer({
          minimum: 0,
          maximum: 100000,
          default: 1000,
          description: 'QoS 1/2 messages queued per session beyond the in-flight window',
        }),
        maxSubscriptionsPerClient: Type.Integer({
          minimum: 1,
          maximum: 10000,
          default: 100,
          description: 'Subscriptions one client may hold',
        }),
        maxSessionExpirySeconds: Type.Integer({
          minimum: 0,
          maximum: 4294967295,
          default: 86400,
          description: 'Longest a disconnected session (subscriptions, queued QoS 1 messages) is kept',
        }),
        maxTopicAliases: Type.Integer({
          minimum: 0,
          maximum: 65535,
          default: 10,
          description: 'MQTT 5 Topic Alias Maximum offered to clients (0 = no aliases)',
        }),
        maxRetainedMessages: Type.Integer({
          minimum: 0,
          maximum: 10000000,
          default: 100000,
          description:
            'Retained messages the broker keeps in all; beyond it a new retained topic is delivered but not retained',
        }),
        maxTopicLevels: Type.Integer({
          minimum: 1,
          maximum: 256,
          default: 16,
          description: 'Most levels in a topic name or filter',
        }),
        tlsProfile: Type.Union([Type.Literal('standard'), Type.Literal('lite')], {
          default: 'standard',
          description:
            'standard: every AEAD suite; lite (CHAN-2): ECDHE-ECDSA-AES128-GCM-SHA256 and TLS_AES_128_GCM_SHA256 only, an ECDSA P-256 certificate, rotated session-ticket keys',
        }),
        ticketKeyRotationMinutes: Type.Integer({
          minimum: 1,
          maximum: 10080,
          default: 720,
          description: 'lite profile: minutes between session-ticket key rotations (also the ticket lifetime)',
        }),
        secureChannelEnabled: Type.Boolean({
          default: false,
          description:
            'Serve the secure channel (CHAN-3) on a plain-TCP MQTT 5 listener for devices without TLS (that channel only)',
        }),
        secureChannelHost: Type.String({
          default: '127.0.0.1',
          description: 'Plain-TCP secure-channel MQTT listen address (loopback unless deliberately opened)',
        }),
        secureChannelPort: Type.Integer({
          minimum: 0,
          maximum: 65535,
          default: 1884,
          description: 'Plain-TCP secure-channel MQTT port (0 picks a free port)',
        }),
        secureChannelMaxRefusals: Type.Integer({
          minimum: 1,
          maximum: 10000,
          default: 10,
          description: 'Refused secure-channel frames on one MQTT connection before it is ended (DISCONNECT 0x99)',
        }),
      },
      strict,
    ),
    audit: Type.Object(
      {
        retentionDays: Type.Integer({
          minimum: 183,
          maximum: 36500,
          default: 400,
          description: 'Days audit entries are kept; never below 183 (six months of log retention)',
        }),
        ipRetentionDays: Type.Integer({
          minimum: 1,
          maximum: 183,
          default: 30,
          description: 'Days a source IP in the audit log stays readable; then its day key is destroyed',
        }),
        checkpointIntervalSeconds: Type.Integer({
          minimum: 0,
          maximum: 86400,
          default: 300,
          description: 'Seconds between periodic signed checkpoints (0: only on demand and at shutdown)',
        }),
        batchMaxRows: Type.Integer({
          minimum: 1,
          maximum: 10000,
          default: 250,
          description: 'Most audit entries written in one transaction',
        }),
        queueMaxRows: Type.Integer({
          minimum: 100,
          maximum: 1000000,
          default: 100000,
          description: 'Audit entries waiting to be written before recording is refused',
        }),
        witnessUrl: Type.String({
          default: '',
          pattern: '^(https?://.+)?$',
          description: 'URL every signed checkpoint is POSTed to (an outside witness); empty for none',
        }),
      },
      strict,
    ),
    redis: Type.Object(
      {
        url: Type.String({
          default: '',
          pattern: '^(rediss?://.*)?$',
          description:
            'redis:// URL (env REDIS_URL): rate limits and blocks then hold across processes; empty keeps them in memory',
        }),
        keyPrefix: Type.String({
          default: 'castellan:',
          maxLength: 100,
          description: 'Prefix of every Redis key this platform uses',
        }),
      },
      strict,
    ),
    cluster: Type.Object(
      {
        enabled: Type.Boolean({
          default: false,
          description:
            'Scale mode (RES-2): this process is one of several over one PostgreSQL database and one Redis (both required)',
        }),
        workers: Type.Integer({
          minimum: 1,
          maximum: 64,
          default: 1,
          description:
            '`castellan up` forks this many worker processes sharing the listeners (more than 1 needs cluster.enabled)',
        }),
        heartbeatSeconds: Type.Integer({
          minimum: 1,
          maximum: 60,
          default: 5,
          description: 'Seconds between a process heartbeats; one silent for three is taken as gone',
        }),
      },
      strict,
    ),
    guard: Type.Object(
      {
        httpPerIpPerMinute: Type.Integer({
          minimum: 1,
          maximum: 10000000,
          default: 600,
          description: 'HTTPS requests per client IP per minute',
        }),
        httpPerCredentialPerMinute: Type.Integer({
          minimum: 1,
          maximum: 10000000,
          default: 1200,
          description: 'Authenticated requests per API credential per minute',
        }),
        httpWritesPerCredentialPerMinute: Type.Integer({
          minimum: 1,
          maximum: 10000000,
          default: 120,
          description: 'Write requests (POST, PUT, PATCH, DELETE) per API credential per minute',
        }),
        mqttConnectsPerIpPerMinute: Type.Integer({
          minimum: 1,
          maximum: 10000000,
          default: 120,
          description: 'MQTT connection attempts per client IP per minute',
        }),
        deviceMessagesPerSecond: Type.Integer({
          minimum: 1,
          maximum: 100000,
          default: 20,
          description: 'Default messages per second a device may publish (a product can set its own)',
        }),
        deviceMessagesPerDay: Type.Integer({
          minimum: 1,
          maximum: 100000000,
          default: 200000,
          description: 'Default messages per day a device may publish (a product can set its own)',
        }),
        productMessagesPerSecond: Type.Integer({
          minimum: 1,
          maximum: 10000000,
          default: 20000,
          description: 'Messages per second all devices of one product may publish together',
        }),
        excessBeforeDisconnect: Type.Integer({
          minimum: 1,
          maximum: 100000,
          default: 50,
          description: 'Refused messages in a minute after which a device is disconnected',
        }),
        authFailuresPerIp: Type.Integer({
          minimum: 1,
          maximum: 100000,
          default: 10,
          description: 'Failed authentications from one IP within authFailureWindowSeconds that trigger a detection',
        }),
        authFailuresPerDevice: Type.Integer({
          minimum: 1,
          maximum: 100000,
          default: 20,
          description:
            'Failed authentications for one device ID within authFailureWindowSeconds that trigger a detection',
        }),
        authFailureWindowSeconds: Type.Integer({
          minimum: 1,
          maximum: 86400,
          default: 300,
          description: 'Window for counting failed authentications',
        }),
        invalidRequestsPerIp: Type.Integer({
          minimum: 1,
          maximum: 1000000,
          default: 200,
          description: 'Malformed or refused requests from one IP per minute that trigger a detection',
        }),
        deviceStateChangesPerMinute: Type.Integer({
          minimum: 1,
          maximum: 1000000,
          default: 120,
          description: 'State messages per minute from one device that count as abnormal',
        }),
        resourceThresholdPercent: Type.Integer({
          minimum: 1,
          maximum: 100,
          default: 95,
          description: 'A device resource report (CPU, memory, storage) at or above this percentage raises an alert',
        }),
        takeoversPerHour: Type.Integer({
          minimum: 1,
          maximum: 100000,
          default: 6,
          description: 'Session takeovers of one device per hour that suggest a shared or cloned credential',
        }),
        reconnectsPerHour: Type.Integer({
          minimum: 1,
          maximum: 1000000,
          default: 120,
          description: 'Disconnections of one device per hour beyond which a connection-flapping alert is raised',
        }),
        ipBlockSeconds: Type.Integer({
          minimum: 1,
          maximum: 604800,
          default: 900,
          description: 'How long a detected IP stays blocked',
        }),
        ipResponse: Type.Union([Type.Literal('block'), Type.Literal('alert')], {
          default: 'block',
          description: 'What a detection from an IP does: block it for ipBlockSeconds, or only raise an alert',
        }),
        deviceResponse: Type.Union([Type.Literal('quarantine'), Type.Literal('alert')], {
          default: 'quarantine',
          description:
            'What a detection about a device does: quarantine it (connect refused until released), or only raise an alert',
        }),
        alertWebhookUrl: Type.String({
          default: '',
          pattern: '^(https?://.+)?$',
          description: 'URL every alert is POSTed to; empty for none',
        }),
      },
      strict,
    ),
    admin: Type.Object(
      {
        enabled: Type.Boolean({ default: true, description: 'Serve /metrics and /healthz on the admin listener' }),
        host: Type.String({
          default: '127.0.0.1',
          description:
            'Admin listener address; plain HTTP is allowed on loopback only, anything else needs tls certificates',
        }),
        port: Type.Integer({
          minimum: 0,
          maximum: 65535,
          default: 9464,
          description: 'Admin listener port (0 picks a free port)',
        }),
      },
      strict,
    ),
    keys: Type.Object(
      {
        storeUrl: Type.String({
          default: '',
          description:
            'Key store database, kept apart from the data so data backups carry no key material; empty follows database.url (SQLite: its own file; PostgreSQL: its own schema)',
        }),
        defaultSuite: Type.Union([Type.Literal('intl'), Type.Literal('sm')], {
          default: 'intl',
          description:
            "Crypto suite of a tenant's first key: intl (AES-256-GCM, SHA-256, Ed25519) or sm (SM4-GCM, SM3, SM2); a rotation can change it per tenant",
        }),
        storeSqliteFile: Type.String({
          minLength: 1,
          default: 'keystore.db',
          description: 'SQLite key store file inside dataDir',
        }),
        storeSchema: Type.String({
          default: '',
          pattern: '^([a-z_][a-z0-9_]{0,62})?$',
          description: 'PostgreSQL schema of the key store; empty: <database.schema>_keys, or castellan_keys',
        }),
      },
      strict,
    ),
    accounts: Type.Object(
      {
        publicUrl: Type.String({
          default: '',
          description:
            'Public HTTPS origin of the API (https://host[:port]) for WebAuthn, OIDC redirects and links in messages; empty: the HTTPS listener URL',
        }),
        sessionIdleMinutes: Type.Integer({
          minimum: 1,
          maximum: 1440,
          default: 30,
          description: 'A session unused this long expires (SESS-4)',
        }),
        sessionAbsoluteHours: Type.Integer({
          minimum: 1,
          maximum: 168,
          default: 12,
          description: 'A session expires this long after sign-in, used or not (SESS-4)',
        }),
        refreshTokenDays: Type.Integer({
          minimum: 1,
          maximum: 365,
          default: 30,
          description: '"Keep me signed in": lifetime of a refresh token family (rotated on every use)',
        }),
        bindSessionToIp: Type.Boolean({
          default: false,
          description:
            'Refuse a session token presented from another client IP address than the one that signed in (SESS-2)',
        }),
        stepUpMinutes: Type.Integer({
          minimum: 1,
          maximum: 60,
          default: 5,
          description: 'Sensitive operations demand an authentication at most this old (ACC-6 step-up)',
        }),
        passwordMinLength: Type.Integer({
          minimum: 8,
          maximum: 128,
          default: 10,
          description: 'Shortest accepted password (ACC-3); no composition rules',
        }),
        passwordMinScore: Type.Integer({
          minimum: 0,
          maximum: 4,
          default: 3,
          description: 'Lowest accepted zxcvbn strength score, 0 (weakest) to 4 (ACC-3)',
        }),
        loginFailuresPerAccount: Type.Integer({
          minimum: 1,
          maximum: 1000,
          default: 5,
          description:
            'Wrong passwords per account in loginFailureWindowMinutes before the account is temporarily locked (no hash is computed while locked)',
        }),
        loginFailuresPerIp: Type.Integer({
          minimum: 1,
          maximum: 100000,
          default: 50,
          description: 'Failed sign-ins, resets and codes per client IP in loginFailureWindowMinutes',
        }),
        loginFailureWindowMinutes: Type.Integer({
          minimum: 1,
          maximum: 1440,
          default: 15,
          description: 'Window and lock duration of the sign-in failure limits (ACC-4)',
        }),
        registrationsPerIpPerHour: Type.Integer({
          minimum: 1,
          maximum: 100000,
          default: 20,
          description: 'Registrations and code requests per client IP per hour (ACC-2)',
        }),
        codeTtlMinutes: Type.Integer({
          minimum: 1,
          maximum: 1440,
          default: 15,
          description: 'Lifetime of one-time codes sent by e-mail or SMS',
        }),
        codeMaxAttempts: Type.Integer({
          minimum: 1,
          maximum: 20,
          default: 5,
          description: 'Wrong guesses that void a one-time code',
        }),
        powDifficulty: Type.Integer({
          minimum: 1000,
          maximum: 10000000,
          default: 50000,
          description: 'Proof-of-work difficulty of the registration challenge (ALTCHA maximum number, ACC-2)',
        }),
        mailer: Type.Union([Type.Literal('outbox'), Type.Literal('smtp')], {
          default: 'outbox',
          description: 'Delivery of e-mail and SMS codes: outbox (files in dataDir/outbox; development only) or smtp',
        }),
        smtpUrl: Type.String({
          default: '',
          description: 'SMTP server (smtps://user:pass@host:465 or smtp://host:587 with STARTTLS) when mailer is smtp',
        }),
        mailFrom: Type.String({
          default: 'Castellan <no-reply@castellan.invalid>',
          description: 'Sender address of e-mail messages',
        }),
        smsWebhookUrl: Type.String({
          default: '',
          description: 'HTTPS endpoint that delivers SMS (JSON {to, text}); empty: SMS go to the outbox',
        }),
        oidcProviders: Type.Array(
          Type.Object(
            {
              id: Type.String({ pattern: '^[a-z][a-z0-9-]{0,31}$', description: 'Name in the routes' }),
              issuer: Type.String({
                minLength: 1,
                maxLength: 2048,
                description: 'Issuer identifier (https only; discovery at <issuer>/.well-known/openid-configuration)',
              }),
              clientId: Type.String({ minLength: 1, maxLength: 512 }),
              clientSecret: Type.String({ default: '', maxLength: 4096, description: 'Secret, never printed' }),
              scopes: Type.String({ default: 'openid email', maxLength: 1024 }),
              caFile: Type.String({
                default: '',
                description: 'PEM CA certificate(s) trusted for this issuer instead of the system store',
              }),
            },
            strict,
          ),
          {
            default: [],
            maxItems: 16,
            description:
              'Outside OpenID Connect providers people may sign in with (ACC-7); a JSON array in the environment',
          },
        ),
        signatureWindowSeconds: Type.Integer({
          minimum: 30,
          maximum: 900,
          default: 300,
          description: 'Signed operator requests are accepted this far from the server clock (ORG-2)',
        }),
      },
      strict,
    ),
    webhooks: Type.Object(
      {
        maxAttempts: Type.Integer({
          minimum: 1,
          maximum: 100,
          default: 12,
          description: 'Attempts per webhook delivery before it is dead-lettered',
        }),
        initialBackoffMs: Type.Integer({
          minimum: 1,
          maximum: 3600000,
          default: 10000,
          description: 'Wait before the second attempt; doubles with each failure (with jitter)',
        }),
        maxBackoffMs: Type.Integer({
          minimum: 1,
          maximum: 86400000,
          default: 3600000,
          description: 'Longest wait between two attempts',
        }),
        timeoutMs: Type.Integer({
          minimum: 100,
          maximum: 60000,
          default: 10000,
          description: 'Time one attempt may take (connect, TLS, request and response)',
        }),
        concurrency: Type.Integer({
          minimum: 1,
          maximum: 1000,
          default: 16,
          description: 'Webhook requests in flight at once in this process',
        }),
        allowTargets: Type.Array(Type.String({ pattern: '^[0-9a-fA-F:.]+(/[0-9]{1,3})?$' }), {
          default: [],
          maxItems: 64,
          description:
            'Development and tests only: CIDR ranges webhooks may reach although not public (http allowed there); refused in production',
        }),
      },
      strict,
    ),
    devices: Type.Object(
      {
        maxBatch: Type.Integer({
          minimum: 1,
          maximum: 100000,
          default: 1000,
          description: 'Most devices created by one request',
        }),
        certificateDays: Type.Integer({
          minimum: 1,
          maximum: 3650,
          default: 365,
          description: 'Validity of a device certificate the platform issues from a CSR (DEV-5)',
        }),
        credentialSweepSeconds: Type.Integer({
          minimum: 1,
          maximum: 3600,
          default: 5,
          description: 'How often connected devices are re-checked and dropped once revoked or disabled (DEV-8)',
        }),
        bindingTokenTtlSeconds: Type.Integer({
          minimum: 1,
          maximum: 3600,
          default: 600,
          description: 'Lifetime of a one-time binding token (BIND-1; Tuya: 10 minutes)',
        }),
        bindingTokensPerUser: Type.Integer({
          minimum: 1,
          maximum: 100,
          default: 5,
          description: 'Unused, unexpired binding tokens one person may hold at once',
        }),
        pushStreamsPerPrincipal: Type.Integer({
          minimum: 1,
          maximum: 100,
          default: 5,
          description: 'Event streams (push, BIND-4) one person or access key may hold open at once',
        }),
        pushMaxStreams: Type.Integer({
          minimum: 1,
          maximum: 1000000,
          default: 10000,
          description: 'Event streams this process holds open at once',
        }),
        pushBufferBytes: Type.Integer({
          minimum: 4096,
          maximum: 67108864,
          default: 1048576,
          description: 'Unsent bytes an event stream may hold before its slow client is disconnected',
        }),
        pushHeartbeatSeconds: Type.Integer({
          minimum: 1,
          maximum: 300,
          default: 20,
          description: 'Interval of the heartbeat comment on an idle event stream (also re-checks the session)',
        }),
        pushMaxStreamMinutes: Type.Integer({
          minimum: 1,
          maximum: 1440,
          default: 60,
          description: 'Lifetime of one event stream; the client reconnects (and is authenticated again)',
        }),
        pushResumeEvents: Type.Integer({
          minimum: 0,
          maximum: 100000,
          default: 1000,
          description: 'Recent events kept for Last-Event-ID resume after a reconnect',
        }),
      },
      strict,
    ),
    secureChannel: Type.Object(
      {
        httpEnabled: Type.Boolean({
          default: false,
          description:
            'Serve the secure channel (CHAN-3) on a plain-HTTP listener for devices without TLS (only its three paths)',
        }),
        httpHost: Type.String({
          default: '127.0.0.1',
          description: 'Plain-HTTP secure-channel listen address (loopback unless deliberately opened)',
        }),
        httpPort: Type.Integer({
          minimum: 0,
          maximum: 65535,
          default: 8080,
          description: 'Plain-HTTP secure-channel port (0 picks a free port)',
        }),
        httpAllow: Type.Array(Type.String({ pattern: '^[0-9a-fA-F:.]+(/[0-9]{1,3})?$' }), {
          default: [],
          maxItems: 1000,
          description: 'CIDR ranges allowed to connect to the plain-HTTP secure-channel listener; empty allows all',
        }),
        httpDeny: Type.Array(Type.String({ pattern: '^[0-9a-fA-F:.]+(/[0-9]{1,3})?$' }), {
          default: [],
          maxItems: 1000,
          description: 'CIDR ranges refused by the plain-HTTP secure-channel listener (checked before httpAllow)',
        }),
        rotateAfterFrames: Type.Integer({
          minimum: 1,
          maximum: 1000000,
          default: 1000,
          description: 'Frames per key epoch and direction before the session keys rotate (dynamic keys)',
        }),
        rotateAfterMinutes: Type.Integer({
          minimum: 1,
          maximum: 1440,
          default: 10,
          description: 'Age of a key epoch after which the session keys rotate',
        }),
        sessionLifetimeMinutes: Type.Integer({
          minimum: 1,
          maximum: 10080,
          default: 60,
          description: 'Lifetime of a secure-channel session over HTTP; the device then handshakes again',
        }),
      },
      strict,
    ),
  },
  strict,
);

export type CastellanConfig = Static<typeof ConfigSchema>;

/** Keys whose values are secrets: never printed, never logged. */
export const SECRET_CONFIG_KEYS: ReadonlySet<string> = new Set([
  'rootKey.base64',
  'rootKey.pkcs11Pin',
  'database.url',
  'redis.url',
  'keys.storeUrl',
  'accounts.smtpUrl',
  'accounts.smsWebhookUrl',
  // `[]`: the key of every element of an array (redactConfig walks them all).
  'accounts.oidcProviders[].clientSecret',
]);

/** Environment variables that are not CASTELLAN_-prefixed but conventional. */
export const ENV_ALIASES: Readonly<Record<string, string>> = {
  DATABASE_URL: 'database.url',
  REDIS_URL: 'redis.url',
};

/** Format rules of secret keys, stated without echoing the value. */
export const SECRET_KEY_RULES: Readonly<Record<string, { pattern: RegExp; rule: string }>> = {
  'database.url': {
    pattern: /^$|^sqlite:|^postgres(ql)?:\/\//,
    rule: 'must be empty (embedded SQLite), sqlite:<file>, or start with postgres:// or postgresql://',
  },
  'keys.storeUrl': {
    pattern: /^$|^sqlite:|^postgres(ql)?:\/\//,
    rule: 'must be empty (follow database.url), sqlite:<file>, or start with postgres:// or postgresql://',
  },
  'redis.url': { pattern: /^$|^rediss?:\/\//, rule: 'must be empty or start with redis:// or rediss://' },
  'rootKey.base64': { pattern: /^$|^[A-Za-z0-9+/]{43}=$/, rule: 'must be 32 bytes, base64-encoded (44 characters)' },
};
