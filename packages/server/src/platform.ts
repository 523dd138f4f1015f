// Composition root: builds every subsystem from the configuration and starts the listeners. The
// embedded default is this one process (SQLite, in-memory broker state); scale mode (docs/architecture.md)
// runs several over PostgreSQL and Redis.
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Server as TlsServer } from 'node:tls';
import type { FastifyInstance } from 'fastify';
import { Redis } from 'ioredis';
import type { DestinationStream } from 'pino';
import { Counter } from 'prom-client';
import {
  type AccountsContext,
  AccountsService,
  accountFeatureRoutes,
  accountsRoutes,
  createMessageSender,
  purgeExpiredAccountsData,
  OperatorRequestVerifier,
  RequestAuthenticator,
  OperatorKeysService,
  SessionStore,
  staffRoutes,
  TotpService,
  UserDirectory,
  verifySignedBody,
  requireRecentAuthentication,
} from './accounts/index.ts';
import { type AuditEvent, AuditLog, auditRequest, auditRoutes } from './audit/index.ts';
import {
  type BridgedEvents,
  bridgeDeviceEvents,
  ClusterBus,
  ClusterNodes,
  ClusterRouting,
  SharedTicketKeys,
} from './cluster/index.ts';
import type { CastellanConfig } from './config/index.ts';
import {
  BindingsService,
  bindingDeviceRoutes,
  bindingRoutes,
  type DeviceAccess,
  DeviceEvents,
  DevicesService,
  devicesRoutes,
  PresenceEvents,
  TelemetryWriter,
} from './devices/index.ts';
import { ManufacturingService, manufacturingRoutes } from './devices/index.ts';
import { PostureService, postureRoutes, WebhooksService, webhooksRoutes } from './devices/index.ts';
import { LockPasscodesService, lockPasscodeRoutes } from './devices/index.ts';
import { CommandsService, commandsRoutes, productChecks, ShadowService, shadowRoutes } from './devices/index.ts';
import {
  PushHub,
  pushRoutes,
  TelemetryHistory,
  telemetryHistoryRoutes,
  TelemetryPointAggregates,
} from './devices/index.ts';
import {
  CredentialLifecycle,
  credentialLifecycleRoutes,
  DeviceCertificatesService,
  deviceCertificatesRoutes,
  signedChallengeVerifier,
} from './devices/index.ts';
import {
  DeviceHttpAuth,
  deviceApiRoutes,
  HardwareIdsService,
  hardwareIdsRoutes,
  productAuthModeCheck,
  productTelemetryHandler,
  SignedTimeService,
} from './devices/index.ts';
import {
  devicePollRoutes,
  type SecureChannelHttpListener,
  SecureChannelService,
  secureChannelRoutes,
  startSecureChannelHttpListener,
} from './devices/index.ts';
import { CastellanError } from './errors/index.ts';
import { type SecureChannelListener, secureChannelProfile, startSecureChannelListener } from './gateway/index.ts';
import { PlatformChannelKeys } from './devices/index.ts';
import {
  deviceBrokerHooks,
  formatHostPort,
  MqttBroker,
  AEAD_CIPHERS,
  type MqttListener,
  ReasonCode,
  SqlBrokerStore,
  startMqttListener,
  SysTopicsPublisher,
  TicketKeyRotation,
} from './gateway/index.ts';
import {
  createAddressFilter,
  filterConnections,
  GuardService,
  guardHttp,
  guardRoutes,
  IpBlocks,
  RateLimits,
} from './guard/index.ts';
import { createAuthenticateHook, createHttpServer, type RecordAudit } from './http/index.ts';
import { KeyService, keyRoutes, loadRootKey, loadTlsMaterial } from './keys/index.ts';
import { createLogger, type Logger } from './logging/index.ts';
import { type AdminServer, createMetrics, startAdminServer } from './ops/index.ts';
import { type KeyStoreDatabase, migrateToLatest, openStore, type Store } from './store/index.ts';

export const VERSION: string = (
  JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }
).version;

export const RUNTIME_FILE = 'runtime.json';

export interface PlatformOptions {
  /** Log destination (tests capture it); stdout by default. */
  logDestination?: DestinationStream;
  /** Console notices for the operator (setup token, development warnings); stderr by default. */
  notice?: (message: string) => void;
  /** Write dataDir/runtime.json (default true; the workers of `castellan up --workers` leave it to the primary). */
  runtimeFile?: boolean;
}

export interface RuntimeInfo {
  pid: number;
  httpUrl: string;
  mqttUrl: string;
  caFile: string | null;
  startedAt: string;
}

export interface Platform {
  readonly config: Readonly<CastellanConfig>;
  readonly log: Logger;
  readonly store: Store;
  readonly accounts: AccountsService;
  /** Shared by the accounts features (sessions, TOTP, sender…); tests reach into it. */
  readonly accountsContext: AccountsContext;
  readonly devices: DevicesService;
  /** Accepted device messages and platform-made device changes (push and webhooks listen). */
  readonly deviceEvents: DeviceEvents;
  // [issue 7 wiring: Platform fields]
  /** Device certificates, vendor CAs and SM2 keys (DEV-5). */
  readonly deviceCertificates: DeviceCertificatesService;
  /** Rotation, revocation, disable/enable, decommissioning and the live-connection sweep (DEV-8). */
  readonly credentialLifecycle: CredentialLifecycle;
  /** Device HTTPS authentication (DEV-6): timestamp mode, challenge-response, device tokens. */
  readonly deviceHttpAuth: DeviceHttpAuth;
  /** Registered hardware IDs and product secrets (DEV-4). */
  readonly hardwareIds: HardwareIdsService;
  /** Telemetry history: range queries, data-point downsampling, retention purge, the BIND-5 wipe. */
  readonly telemetryHistory: TelemetryHistory;
  /** Push (BIND-4): Server-Sent Events streams of device events to people and vendors. */
  readonly push: PushHub;
  /** Smart-lock offline passcodes (LOCK-1). */
  readonly lockPasscodes: LockPasscodesService;
  /** Device shadows: desired and reported state with versions (CHAN-7). */
  readonly shadows: ShadowService;
  /** Commands to devices with acknowledgement and timeout, and the DEV-9 built-ins. */
  readonly commands: CommandsService;
  /** Signed webhooks to the tenants' business systems: endpoints, the delivery outbox and its worker. */
  readonly webhooks: WebhooksService;
  /** Device posture against golden values per product and firmware version (DEV-10). */
  readonly posture: PostureService;
  /** Factory stations, batches, burn receipts and activation on first connection (DEV-7). */
  readonly manufacturing: ManufacturingService;
  /** Who may do what with a device (BIND-2): the bindings service behind the DeviceAccess interface. */
  readonly deviceAccess: DeviceAccess;
  /** Binding tokens, bindings, shares and unbinding (BIND-1/3/5). */
  readonly bindings: BindingsService;
  readonly broker: MqttBroker;
  /** Per-tenant `$SYS/tenants/{vendorId}/broker/...` topics (read-only for devices). */
  readonly sysTopics: SysTopicsPublisher;
  readonly telemetry: TelemetryWriter;
  readonly audit: AuditLog;
  readonly keys: KeyService;
  readonly guard: GuardService;
  /** Metrics and liveness (`/metrics`, `/healthz`); null when admin.enabled is false. */
  readonly adminUrl: string | null;
  readonly http: FastifyInstance;
  readonly httpUrl: string;
  readonly mqttUrl: string;
  readonly httpPort: number;
  readonly mqttPort: number;
  /** The MQTT over TLS listener (its tls.Server, admission gate and lite-profile ticket keys). */
  readonly mqttListener: MqttListener;
  /** The secure channel over HTTP (CHAN-3, CHAN-4): sessions, hellos, frames. */
  readonly secureChannel: SecureChannelService;
  /** The plain-HTTP secure-channel listener's URL; null unless secureChannel.httpEnabled. */
  readonly secureChannelHttpUrl: string | null;
  /** mqtt://host:port of the plain-TCP secure-channel MQTT listener (CHAN-3); null when disabled. */
  readonly secureChannelMqttUrl: string | null;
  readonly secureChannelMqttListener: SecureChannelListener | null;
  /** The CA certificate devices and clients pin. */
  readonly caPem: string;
  /** The CA file named in runtime.json (the development PKI's, or tls.caFile); null when none. */
  readonly runtimeCaFile: string | null;
  /** The setup token issued by this start, if one was (shown once). */
  readonly setupToken: string | null;
  /** Scale mode (RES-2): this process's node, the bus and the cross-process routing; null in one process. */
  readonly cluster: {
    readonly nodeId: string;
    readonly nodes: ClusterNodes;
    readonly bus: ClusterBus;
    readonly routing: ClusterRouting;
  } | null;
  close(): Promise<void>;
}

function urlHost(host: string): string {
  return host === '0.0.0.0' || host === '::' ? 'localhost' : host;
}

export async function startPlatform(
  config: Readonly<CastellanConfig>,
  options: PlatformOptions = {},
): Promise<Platform> {
  const log = createLogger({
    level: config.log.level,
    ...(options.logDestination ? { destination: options.logDestination } : {}),
  });
  const notice = options.notice ?? ((message: string) => process.stderr.write(`${message}\n`));
  const dataDir = resolve(config.dataDir);
  // The setup token, runtime file and (in development) keys live here, owner-only.
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const cleanups: Array<() => Promise<void> | void> = [];
  const closeAll = async () => {
    for (const cleanup of cleanups.reverse()) await cleanup();
  };
  try {
    const rootKey = loadRootKey({ ...config, dataDir });
    const tls = await loadTlsMaterial({ ...config, dataDir });
    const devDefaults = [
      rootKey.source === 'generated' ? `a root key was generated at ${rootKey.file}` : null,
      rootKey.source === 'file' && !config.rootKey.file ? `the development root key ${rootKey.file} is in use` : null,
      tls.source === 'development' ? `the development PKI in ${tls.dir} is in use` : null,
    ].filter((x): x is string => x !== null);
    if (devDefaults.length > 0) {
      log.warn({ developmentDefaults: devDefaults }, 'DEVELOPMENT DEFAULTS ACTIVE: not for production');
      notice(
        `\n  !!! DEVELOPMENT DEFAULTS ACTIVE: ${devDefaults.join('; ')}.\n` +
          '  !!! Production supplies its own keys and certificates (docs/configuration.md: rootKey.*, tls.*).\n',
      );
    }

    const store = await openStore({
      url: config.database.url,
      dataDir,
      sqliteFile: config.database.sqliteFile,
      poolMax: config.database.poolMax,
      ...(config.database.schema ? { schema: config.database.schema } : {}),
    });
    cleanups.push(() => store.close());
    const applied = await migrateToLatest(store.db, store.dialect);
    log.info({ store: store.location, dialect: store.dialect, migrationsApplied: applied }, 'storage ready');

    const audit = await AuditLog.open({
      db: store.db,
      dialect: store.dialect,
      rootKey: rootKey.key,
      dataDir,
      log: log.child({ component: 'audit' }),
      batchMaxRows: config.audit.batchMaxRows,
      queueMaxRows: config.audit.queueMaxRows,
      checkpointIntervalMs: config.audit.checkpointIntervalSeconds * 1000,
      retentionDays: config.audit.retentionDays,
      ipRetentionDays: config.audit.ipRetentionDays,
      witnessUrl: config.audit.witnessUrl,
    });
    cleanups.push(() => audit.close());
    const recordSoon = (event: AuditEvent) => audit.recordSoon(event);

    // The key store lives apart from the data (its own SQLite file or PostgreSQL schema), so a backup
    // of the data carries no key material (KEY-6).
    // Empty storeUrl follows a PostgreSQL database.url (another schema); with SQLite, a file of its own
    // (dataDir/keys.storeSqliteFile), never the data file behind database.url = sqlite:<path>.
    const keyStoreUrl = config.keys.storeUrl || (/^postgres/.test(config.database.url) ? config.database.url : '');
    const keyStore = await openStore<KeyStoreDatabase>({
      url: keyStoreUrl,
      dataDir,
      sqliteFile: config.keys.storeSqliteFile,
      poolMax: 4,
      ...(/^postgres/.test(keyStoreUrl)
        ? {
            schema:
              config.keys.storeSchema || (config.database.schema ? `${config.database.schema}_keys` : 'castellan_keys'),
          }
        : {}),
    });
    cleanups.push(() => keyStore.close());
    if (keyStore.location === store.location) {
      throw new CastellanError('ERR_CONFIG_INVALID', {
        message:
          'Invalid configuration: keys.storeUrl names the data store; the key store must live apart from the data (KEY-6)',
      });
    }
    await migrateToLatest(keyStore.db, keyStore.dialect, 'keys');
    // Scale mode (RES-2): this process announces itself; what crashed processes left is found by heartbeat.
    const clusterNodes = config.cluster.enabled
      ? new ClusterNodes({
          db: store.db,
          heartbeatMs: config.cluster.heartbeatSeconds * 1000,
          log: log.child({ component: 'cluster' }),
        })
      : null;
    if (clusterNodes) {
      await clusterNodes.start();
      cleanups.push(() => clusterNodes.stop());
      log.info({ nodeId: clusterNodes.nodeId }, 'scale mode: cluster node registered');
    }
    // Objects built later that earlier ones call back into (bound once they exist).
    const late: { broker?: MqttBroker; routing?: ClusterRouting } = {};
    // Values sealed under tenant keys, re-wrapped in the background after a rotation (KEY-2) so the old
    // version can be destroyed; each part that seals values registers itself once it exists.
    const rewrappers: Array<{ what: string; rewrap: (tenant: string) => Promise<number> }> = [];
    const keys = new KeyService({
      db: keyStore.db,
      rootKey: rootKey.key,
      defaultSuite: config.keys.defaultSuite,
      onRotated: (tenant) =>
        setImmediate(() => {
          for (const { what, rewrap } of rewrappers) {
            rewrap(tenant).then(
              (moved) => log.info({ tenant, moved }, `keys: ${what} re-wrapped after rotation`),
              (error: unknown) => log.error({ err: error, tenant }, `keys: ${what} re-wrap failed`),
            );
          }
        }),
      audit: (event) =>
        audit.record({
          // The administrator behind an API call; the platform itself for first-use keys.
          actor: event.actor ? { type: event.actor.type, id: event.actor.id } : { type: 'system', id: 'keys' },
          tenant: 'key' in event && event.key.tenant !== 'platform' ? event.key.tenant : null,
          type: `key.${event.operation}`,
          target: 'key' in event ? event.key.id : event.target,
          ...(event.actor ? { sourceIp: event.actor.sourceIp } : {}),
          result: 'success',
          details: {
            ...('key' in event
              ? {
                  version: event.key.version,
                  state: event.key.state,
                  previousState: event.previousState,
                  suite: event.key.suite,
                  ...(event.key.user ? { user: event.key.user } : {}),
                }
              : event.details),
            ...(event.actor ? { requestId: event.actor.requestId, credentialId: event.actor.credentialId } : {}),
          },
        }),
    });
    const operatorKeys = new OperatorKeysService({ db: store.db, keys, now: Date.now });
    rewrappers.push({ what: 'access-key secrets', rewrap: (tenant) => operatorKeys.rewrapSecrets(tenant) });
    const totp = new TotpService({ db: store.db, cipher: keys });
    const accounts = new AccountsService({
      db: store.db,
      dataDir,
      cipher: keys,
      totp,
      passwordPolicy: { minLength: config.accounts.passwordMinLength, minScore: config.accounts.passwordMinScore },
    });
    const sessions = new SessionStore({
      db: store.db,
      idleMs: config.accounts.sessionIdleMinutes * 60_000,
      absoluteMs: config.accounts.sessionAbsoluteHours * 3_600_000,
      refreshMs: config.accounts.refreshTokenDays * 86_400_000,
      bindToIp: config.accounts.bindSessionToIp,
      ipHashKey: keys.blindIndex('platform', 'session-ip-binding', 'key'),
    });
    const authenticator = new RequestAuthenticator({ db: store.db, sessions });
    authenticator.signatures = new OperatorRequestVerifier({
      db: store.db,
      keys,
      windowSeconds: config.accounts.signatureWindowSeconds,
      record: recordSoon,
      log: log.child({ component: 'accounts' }),
    });
    const messages = createMessageSender(config.accounts, dataDir, log.child({ component: 'accounts' }));
    if (messages.development) {
      log.warn({ outbox: messages.outboxDir }, 'DEVELOPMENT DEFAULTS ACTIVE: e-mail/SMS go to the outbox');
      notice(`  !!! Messages (codes, alerts) go to the development outbox ${messages.outboxDir}.\n`);
    }
    const accountsPurgeTimer = setInterval(() => {
      purgeExpiredAccountsData(store.db, sessions).catch((e: unknown) =>
        log.warn({ err: e }, 'accounts: purge failed'),
      );
    }, 600_000);
    accountsPurgeTimer.unref();
    cleanups.push(() => clearInterval(accountsPurgeTimer));
    const telemetry = new TelemetryWriter({
      db: store.db,
      log: log.child({ component: 'telemetry' }),
      batchMaxRows: config.telemetry.batchMaxRows,
      flushIntervalMs: config.telemetry.flushIntervalMs,
      queueMaxRows: config.telemetry.queueMaxRows,
      // Per-minute data-point aggregates for telemetry history, in the batch's transaction.
      derive: new TelemetryPointAggregates(store.db).derive,
    });
    cleanups.push(() => telemetry.close());
    const devices = new DevicesService({
      db: store.db,
      secrets: keys,
      vendors: accounts,
      telemetry,
      maxBatch: config.devices.maxBatch,
      presence: {
        log: log.child({ component: 'devices' }),
        ...(clusterNodes ? { nodeId: clusterNodes.nodeId, liveNodes: () => clusterNodes.liveNodes() } : {}),
      },
    });
    rewrappers.push({ what: 'device secrets', rewrap: (tenant) => devices.rewrapSecrets(tenant) });
    // Devices a crashed process left online are offline now. Closed after the broker (pushed before
    // it), so the broker's last disconnects are stored.
    await devices.presence.start();
    cleanups.push(() => devices.presence.close());
    if (clusterNodes) {
      // A worker that crashed leaves its devices online: the survivors set them offline once it is
      // seen as gone (three missed heartbeats).
      const staleTimer = setInterval(() => {
        devices.presence
          .releaseStale()
          .catch((error: unknown) => log.warn({ err: error }, 'presence: stale devices not released'));
      }, clusterNodes.staleAfterMs);
      staleTimer.unref();
      cleanups.push(() => clearInterval(staleTimer));
    }

    let redis: Redis | undefined;
    if (config.redis.url) {
      redis = new Redis(config.redis.url, { maxRetriesPerRequest: 2, enableOfflineQueue: true, lazyConnect: true });
      try {
        await redis.connect();
      } catch (error) {
        redis.disconnect();
        throw new CastellanError('ERR_STORE_UNAVAILABLE', {
          message: `Cannot connect to Redis: ${(error as Error).message}`,
        });
      }
      const client = redis;
      cleanups.push(async () => {
        await client.quit().catch(() => client.disconnect());
      });
    }
    const keyPrefix = config.redis.keyPrefix;
    const blocks = new IpBlocks({ ...(redis ? { redis } : {}), keyPrefix });
    const limits = new RateLimits({ ...(redis ? { redis } : {}), keyPrefix });
    const bus =
      clusterNodes && redis
        ? new ClusterBus({
            redis,
            keyPrefix,
            nodeId: clusterNodes.nodeId,
            key: keys.blindIndex('platform', 'cluster-bus', 'v1'),
            log: log.child({ component: 'cluster' }),
          })
        : null;
    if (bus) {
      await bus.start();
      cleanups.push(() => bus.close());
    }
    // Ends a client's connection in whichever process holds it (scale mode) or in this one.
    const disconnectDevice = (clientId: string, reasonCode: number): boolean =>
      late.routing?.disconnect(clientId, reasonCode) ?? late.broker?.disconnectClient(clientId, reasonCode) ?? false;
    const brokerLog = log.child({ component: 'mqtt' });
    // The guard needs the broker (to end a quarantined device's connection) and the broker's hooks
    // need the guard: the broker is bound late through this reference.
    const guard = new GuardService(config.guard, {
      db: store.db,
      log: log.child({ component: 'guard' }),
      limits,
      blocks,
      record: recordSoon,
      tenantOfDevice: async (deviceId) => (await devices.getDevice(deviceId))?.vendorId ?? null,
      async quarantineDevice(deviceId) {
        const device = await devices.setStatus(deviceId, 'quarantined');
        if (!device) return null;
        // 0x98 Administrative action: Banned (0x8A) exists only in CONNACK.
        disconnectDevice(deviceId, ReasonCode.AdministrativeAction);
        return { tenant: device.vendorId };
      },
    });
    const alertIpTimer = setInterval(() => {
      guard
        .purgeAlertIps(Date.now() - config.audit.ipRetentionDays * 86_400_000)
        .catch((e: unknown) => log.warn({ err: e }, 'guard: purge failed'));
    }, 3_600_000);
    alertIpTimer.unref();
    cleanups.push(() => clearInterval(alertIpTimer));

    // Persistent MQTT sessions and retained messages, written behind the broker's memory. Closed after
    // the broker (pushed before it), so the broker's last changes are written; close() logs a failure.
    const brokerStore = new SqlBrokerStore({ db: store.db, log: log.child({ component: 'mqtt-store' }) });
    cleanups.push(() => brokerStore.close().catch(() => {}));
    const brokerPurgeTimer = setInterval(() => {
      brokerStore.purgeExpired(Date.now()).catch((e: unknown) => log.warn({ err: e }, 'mqtt: store purge failed'));
    }, 300_000);
    brokerPurgeTimer.unref();
    cleanups.push(() => clearInterval(brokerPurgeTimer));
    const deviceEvents = new DeviceEvents();
    // [issue 7 wiring: services built before the broker]
    // Trusted time (DEV-6, issue 8): signed with the TLS server key when it is ECDSA P-256.
    const signedTime = new SignedTimeService({ key: tls.key, cert: tls.cert });
    if (signedTime.unavailableReason) {
      log.warn({ reason: signedTime.unavailableReason }, 'signed time unavailable: ERR_TIME_SIGNING_UNAVAILABLE');
    }
    // DEV-6 device HTTPS authentication, DEV-4 hardware IDs, and the product's allowed authentication
    // modes at every admission (DEV-5: an L2/L3 product refuses a device that proves itself by secret).
    const deviceHttpAuth = new DeviceHttpAuth({
      db: store.db,
      devices,
      record: recordSoon,
      authFailure: (ip, subject) => guard.authFailure(ip, subject),
    });
    cleanups.push(() => deviceHttpAuth.close());
    const hardwareIds = new HardwareIdsService({
      db: store.db,
      devices,
      keys,
      auth: deviceHttpAuth,
      record: recordSoon,
      authFailure: (ip) => guard.authFailure(ip, null),
    });
    devices.addAdmissionCheck(productAuthModeCheck(devices, hardwareIds));
    // DEV-5 device certificates (per-vendor platform CA, uploaded vendor CAs, SM2 keys) and DEV-8
    // credential lifecycle. SM2 devices answer the HTTPS challenge with a signature; a connection whose
    // credential or status no longer holds is dropped here at once and by every process's sweep.
    const deviceCertificates = new DeviceCertificatesService({
      db: store.db,
      secrets: keys,
      devices,
      certificateDays: config.devices.certificateDays,
    });
    rewrappers.push({ what: 'device CA keys', rewrap: (tenant) => deviceCertificates.rewrapCaKeys(tenant) });
    deviceHttpAuth.challengeVerifiers.push(signedChallengeVerifier(deviceCertificates));
    const credentialLifecycle = new CredentialLifecycle({
      db: store.db,
      devices,
      certificates: deviceCertificates,
      events: deviceEvents,
      audit: recordSoon,
      log: log.child({ component: 'devices' }),
      // Only this process's connections: the sweep judged each one (a newer connection elsewhere with a
      // new secret must stay); the others are asked to re-check theirs (`elsewhere`).
      disconnect: (deviceId, cause) =>
        late.broker?.disconnectClient(
          deviceId,
          cause === 'status' ? ReasonCode.AdministrativeAction : ReasonCode.NotAuthorized,
        ) ?? false,
      elsewhere: (deviceIds) => late.routing?.recheck(deviceIds),
      connections: () =>
        (late.broker?.connectedIdentities() ?? [])
          .filter((identity) => identity.kind === 'device')
          .map((identity) => ({
            deviceId: identity.principalId,
            vendorId: identity.attributes.vendorId,
            method: identity.attributes.authMethod,
            credential: identity.attributes.credential,
            authenticatedAt: Number(identity.attributes.authenticatedAt ?? 0),
          })),
      revokeTokens: (deviceId) => deviceHttpAuth.revokeTokens(deviceId),
      sweepIntervalMs: config.devices.credentialSweepSeconds * 1000,
    });
    cleanups.push(() => credentialLifecycle.close());
    // CHAN-7 shadow and commands (DEV-9 built-ins). They publish to devices through the broker, built
    // below; desired state and custom commands are checked against the product's data points.
    // In scale mode through the bus too, so the process holding the device delivers it (RES-2).
    const publishToDevice = (topic: string, payload: Buffer, options: { qos: 0 | 1; retain: boolean }) =>
      late.routing
        ? late.routing.publishToDevice(topic, payload, options)
        : late.broker?.publishSystem(topic, payload, options);
    const schemaChecks = productChecks(devices);
    const shadows = new ShadowService({
      db: store.db,
      publish: publishToDevice,
      log: log.child({ component: 'shadow' }),
      events: deviceEvents,
      checkDesired: schemaChecks.checkDesired,
    });
    const commands = new CommandsService({
      db: store.db,
      publish: publishToDevice,
      isOnline: async (deviceId) =>
        (late.broker?.isConnected(deviceId) ?? false) ||
        // Scale mode: connected to another process (presence names the holder; RES-2).
        (bus !== null && (await devices.presence.get(deviceId)).online),
      audit: recordSoon,
      log: log.child({ component: 'commands' }),
      events: deviceEvents,
      checkCommand: schemaChecks.checkCommand,
      // DEV-9: a factory reset forgets the owner: the shadow, then the binding (its wipers run too).
      onFactoryReset: async ({ id }) => {
        const shadowCleared = await shadows.clear(id);
        const device = await devices.getDevice(id);
        const unbound = device ? await bindings.unbind(device, { type: 'device', id }, 'factory-reset') : false;
        return { shadowCleared, unbound };
      },
    });
    commands.start();
    cleanups.push(() => commands.close());
    // Webhooks: device events to the tenants' business systems, signed, from an outbox that survives
    // restarts. allowTargets opens non-public addresses to them: development and tests only.
    if (config.webhooks.allowTargets.length > 0) {
      if (config.environment === 'production') {
        throw new CastellanError('ERR_CONFIG_INVALID', {
          message:
            'Invalid configuration: webhooks.allowTargets must be empty in production (development and tests only)',
        });
      }
      log.warn(
        { allowTargets: config.webhooks.allowTargets },
        'DEVELOPMENT DEFAULTS ACTIVE: webhooks may reach non-public addresses',
      );
      notice(
        `  !!! webhooks.allowTargets lets webhooks reach non-public addresses (${config.webhooks.allowTargets.join(', ')}): development and tests only.\n`,
      );
    }
    const webhooks = new WebhooksService({
      db: store.db,
      cipher: keys,
      config: config.webhooks,
      log: log.child({ component: 'webhooks' }),
      record: recordSoon,
      userAgent: `Castellan-Webhooks/${VERSION}`,
    });
    rewrappers.push({ what: 'webhook secrets', rewrap: (tenant) => webhooks.rewrapSecrets(tenant) });
    webhooks.start({ deviceEvents, presence: devices.presence.events });
    cleanups.push(() => webhooks.close());
    const posture = new PostureService({
      db: store.db,
      guard,
      record: recordSoon,
      events: deviceEvents,
      log: log.child({ component: 'posture' }),
    });
    // DEV-7: a batch device connects only with a recorded burn receipt (admission check); its first
    // connection activates it. Device images name the listeners, known once they listen (set below).
    const manufacturingEndpoints = { mqttUrl: null as string | null, httpUrl: null as string | null, caPem: tls.ca };
    const manufacturing = new ManufacturingService({
      db: store.db,
      devices,
      events: deviceEvents,
      record: recordSoon,
      endpoints: () => manufacturingEndpoints,
      log: log.child({ component: 'manufacturing' }),
    });
    manufacturing.start();
    deviceHttpAuth.onAdmitted.push((device) => manufacturing.recordActivation(device.id, device.vendorId, Date.now()));
    cleanups.push(() => manufacturing.close());
    const bindings = new BindingsService({
      db: store.db,
      devices,
      users: new UserDirectory({ db: store.db, keys }),
      events: deviceEvents,
      record: recordSoon,
      log: log.child({ component: 'bindings' }),
      tokenTtlMs: config.devices.bindingTokenTtlSeconds * 1000,
      tokensPerUser: config.devices.bindingTokensPerUser,
    });
    const bindingsPurgeTimer = setInterval(() => {
      bindings.purgeExpired().catch((e: unknown) => log.warn({ err: e }, 'bindings: purge failed'));
    }, 600_000);
    bindingsPurgeTimer.unref();
    cleanups.push(() => clearInterval(bindingsPurgeTimer));
    const deviceChannels: Required<NonNullable<Parameters<typeof deviceBrokerHooks>[0]['channels']>> = {
      telemetry: [],
      state: [],
      events: [],
      acks: [],
    };
    // [issue 7 wiring: device channel handlers]
    // DEV-2: telemetry must fit the product's data points (products without properties accept any object).
    deviceChannels.telemetry.push(productTelemetryHandler(devices));
    // Telemetry history: retention per product (periodic purge); unbinding wipes the device's telemetry
    // kept for the previous owner (BIND-5).
    const telemetryHistory = new TelemetryHistory({
      db: store.db,
      log: log.child({ component: 'telemetry' }),
      writer: telemetry,
      defaultRetentionDays: config.telemetry.retentionDays,
      purgeIntervalMs: config.telemetry.purgeIntervalMinutes * 60_000,
    });
    telemetryHistory.start();
    cleanups.push(() => telemetryHistory.close());
    bindings.onUnbind(async (deviceId) => {
      await telemetryHistory.wipeDevice(deviceId);
    });
    // Push (BIND-4): device messages, platform changes and presence to the people who may see them; in
    // scale mode also those of devices connected to other processes.
    const bridged: BridgedEvents | null = bus
      ? bridgeDeviceEvents(
          bus,
          { deviceEvents, presence: devices.presence.events },
          { deviceEvents: () => new DeviceEvents(), presence: () => new PresenceEvents() },
          log.child({ component: 'cluster' }),
        )
      : null;
    if (bridged) cleanups.push(() => bridged.close());
    const push = new PushHub({
      deviceEvents: bridged?.deviceEvents ?? deviceEvents,
      presence: bridged?.presence ?? devices.presence.events,
      access: bindings,
      log: log.child({ component: 'push' }),
      streamsPerPrincipal: config.devices.pushStreamsPerPrincipal,
      maxStreams: config.devices.pushMaxStreams,
      bufferBytes: config.devices.pushBufferBytes,
      heartbeatMs: config.devices.pushHeartbeatSeconds * 1000,
      maxStreamMs: config.devices.pushMaxStreamMinutes * 60_000,
      resumeEvents: config.devices.pushResumeEvents,
    });
    cleanups.push(() => push.close());
    // Lock passcodes (LOCK-1): uses reported on the events channel; live codes revoked at unbind (BIND-5).
    const lockPasscodes = new LockPasscodesService({
      db: store.db,
      devices,
      publish: publishToDevice,
      audit: recordSoon,
      log: log.child({ component: 'lock-passcodes' }),
      events: deviceEvents,
    });
    deviceChannels.events.push(lockPasscodes.eventsHandler);
    bindings.onUnbind((deviceId) => lockPasscodes.wipe(deviceId));
    (deviceChannels.state ??= []).push(shadows.handleReport);
    (deviceChannels.acks ??= []).push(commands.handleAck);
    // BIND-5: unbinding deletes the shadow and the command history kept for the previous owner.
    bindings.onUnbind(async (deviceId) => {
      await shadows.clear(deviceId);
      await commands.deleteForDevice(deviceId);
    });
    deviceChannels.events.push(posture.channelHandler);
    // [issue 8 wiring: secure channel (HTTP) services]
    // CHAN-3/CHAN-4 over HTTP: sessions in the database (any process serves any frame), keys sealed under
    // the vendor's tenant key; a tenant key rotation ends the tenant's sessions (devices handshake again).
    const secureChannel = new SecureChannelService({
      db: store.db,
      devices,
      channelKeys: new PlatformChannelKeys(keys),
      cipher: keys,
      useNonce: (subject, nonce, expiresAt) => deviceHttpAuth.useNonce(subject, nonce, expiresAt),
      refusal: (about) => guard.secureChannelRefusal(about),
      record: recordSoon,
      rotateAfterFrames: config.secureChannel.rotateAfterFrames,
      rotateAfterMs: config.secureChannel.rotateAfterMinutes * 60_000,
      sessionLifetimeMs: config.secureChannel.sessionLifetimeMinutes * 60_000,
    });
    cleanups.push(() => secureChannel.close());
    rewrappers.push({ what: 'secure-channel sessions', rewrap: (tenant) => secureChannel.endTenantSessions(tenant) });
    // [issue 8 wiring: secure channel (MQTT) services]
    // The secure channel over MQTT payloads (CHAN-3, CHAN-4): the plain-TCP listener's profile.
    const secureChannelMqtt = secureChannelProfile({
      devices,
      guard,
      channelKeys: new PlatformChannelKeys(keys),
      useNonce: (subject, nonce, expiresAt) => deviceHttpAuth.useNonce(subject, nonce, expiresAt),
      audit: recordSoon,
      log: brokerLog,
      sessionOptions: {
        rotateAfterFrames: config.secureChannel.rotateAfterFrames,
        rotateAfterMs: config.secureChannel.rotateAfterMinutes * 60_000,
      },
      maxRefusals: config.mqtt.secureChannelMaxRefusals,
    });
    const broker = new MqttBroker({
      hooks: deviceBrokerHooks({
        devices,
        guard,
        audit: recordSoon,
        log: brokerLog,
        events: deviceEvents,
        channels: deviceChannels,
        certificates: deviceCertificates,
        deviceTokens: { verify: (deviceId, token) => deviceHttpAuth.deviceForToken(deviceId, token) },
      }),
      limits: config.mqtt,
      log: brokerLog,
      store: brokerStore,
    });
    late.broker = broker;
    if (bus) {
      const routing = new ClusterRouting(bus, broker);
      await routing.start();
      late.routing = routing;
      routing.onCommandSettled = (commandId) => commands.wake(commandId);
      deviceEvents.on('change', (change) => {
        if (change.kind === 'command.status' && typeof change.data.commandId === 'string') {
          routing.commandSettled(change.data.commandId);
        }
      });
      routing.onRecheck = (deviceIds) => {
        credentialLifecycle
          .recheck(deviceIds)
          .catch((error: unknown) => log.warn({ err: error }, 'cluster: credential re-check failed'));
      };
      // [MQTT-3.1.4-3] one connection per client ID across processes: a device connecting here ends its
      // connection held by another process.
      devices.presence.events.on('change', (change) => {
        if (change.type === 'connected') routing.connected(change.deviceId);
      });
    }
    // Scale mode: TLS session-ticket keys shared through Redis, so resumption works on every process.
    const ticketWrapKey = keys.blindIndex('platform', 'tls-ticket-wrap', 'v1');
    const sharedTickets = (listener: 'mqtt' | 'https') =>
      redis && clusterNodes
        ? new SharedTicketKeys({
            redis,
            keyPrefix,
            listener,
            wrapKey: ticketWrapKey,
            rotationMinutes: config.mqtt.ticketKeyRotationMinutes,
          })
        : null;
    // Before the listener accepts clients: a returning client finds its session and retained messages.
    await broker.restore();
    const sysTopics = new SysTopicsPublisher({
      broker,
      connectedByTenant: () => devices.presence.connectedByTenant(),
      version: VERSION,
    });
    sysTopics.start();
    const listener: MqttListener = await startMqttListener(
      broker,
      {
        cert: tls.cert,
        key: tls.key,
        minVersion: config.tls.minVersion,
        groups: config.tls.groups,
        profile: config.mqtt.tlsProfile,
        ticketKeyRotationMinutes: config.mqtt.ticketKeyRotationMinutes,
        ticketKeySource: sharedTickets('mqtt'),
        host: config.mqtt.host,
        port: config.mqtt.port,
        maxConnections: config.mqtt.maxConnections,
        // Judged before TLS (CHAN-5, issue 6): lists, known blocks, connect rate, handshake cap.
        admission: { ...config.mqtt, isBlocked: (ip) => blocks.isBlockedLocally(ip) },
      },
      brokerLog,
    );
    cleanups.push(async () => {
      const closing = listener.close();
      await broker.close();
      await closing;
    });
    cleanups.push(() => sysTopics.stop());

    const authenticate = createAuthenticateHook(authenticator);
    const recordRequest: RecordAudit = (request, event) => auditRequest(audit, request, event);
    let publicUrl = config.accounts.publicUrl;
    const accountsContext: AccountsContext = {
      db: store.db,
      config: config.accounts,
      publicUrl: () => publicUrl,
      dataDir,
      keys,
      sessions,
      totp,
      users: new UserDirectory({ db: store.db, keys }),
      authenticator,
      authenticate,
      limits,
      sender: messages.sender,
      audit: recordRequest,
      record: recordSoon,
      log: log.child({ component: 'accounts' }),
      now: Date.now,
    };
    const http = await createHttpServer({
      tls: { cert: tls.cert, key: tls.key, minVersion: config.tls.minVersion, groups: config.tls.groups },
      bodyLimitBytes: config.http.bodyLimitBytes,
      requestTimeoutMs: config.http.requestTimeoutMs,
      trustProxy: config.http.trustProxy,
      version: VERSION,
      log: log.child({ component: 'http' }),
      readiness: async () => {
        try {
          await store.ping();
        } catch {
          throw new Error('storage does not answer');
        }
        if (!listener.server.listening) throw new Error('MQTT listener is not listening');
        return { storage: 'ok', mqtt: 'ok' };
      },
      beforeRoutes: (app) => {
        guardHttp(app, guard, recordSoon);
        // ORG-2: a signed request's body must be the one whose hash was signed.
        app.addHook('preParsing', verifySignedBody);
        // OPS-2: every staff action is audited, reads included (writes also record their own event).
        app.addHook('onResponse', async (request, reply) => {
          const principal = request.principal;
          if (principal?.kind !== 'admin') return;
          recordSoon({
            actor: { type: 'admin', id: principal.id },
            type: 'staff.request',
            target: request.routeOptions.url ?? null,
            sourceIp: request.ip,
            result: reply.statusCode < 400 ? 'success' : 'failure',
            details: {
              method: request.method,
              status: reply.statusCode,
              requestId: request.id,
              credentialId: principal.credentialId,
            },
          });
        });
        app.addHook('preHandler', async (request) => {
          if (request.method !== 'GET' && request.method !== 'HEAD' && !audit.accepting) {
            throw new CastellanError('ERR_AUDIT_UNAVAILABLE');
          }
        });
      },
      routes: [
        (app) => app.register(accountsRoutes, { accounts, totp, authenticate, audit: recordRequest }),
        (app) => app.register(accountFeatureRoutes, accountsContext),
        (app) => app.register(staffRoutes, { ctx: accountsContext, accounts }),
        (app) => app.register(devicesRoutes, { devices, access: bindings, authenticate, audit: recordRequest }),
        (app) => app.register(auditRoutes, { audit, authenticate }),
        (app) => app.register(guardRoutes, { guard, devices, authenticate, audit: recordRequest }),
        (app) => app.register(keyRoutes, { keys, authenticate }),
        // [issue 7 wiring: routes]
        (app) =>
          app.register(deviceCertificatesRoutes, {
            devices,
            certificates: deviceCertificates,
            authenticate,
            audit: recordRequest,
          }),
        (app) =>
          app.register(credentialLifecycleRoutes, {
            devices,
            lifecycle: credentialLifecycle,
            authenticate,
            audit: recordRequest,
            requireRecentAuthentication: (principal) => requireRecentAuthentication(principal, accountsContext),
          }),
        (app) =>
          app.register(deviceApiRoutes, {
            devices,
            auth: deviceHttpAuth,
            guard,
            channels: deviceChannels,
            events: deviceEvents,
            hardwareIds,
            signedTime,
          }),
        (app) => app.register(hardwareIdsRoutes, { devices, hardwareIds, authenticate, audit: recordRequest }),
        (app) =>
          app.register(telemetryHistoryRoutes, { devices, history: telemetryHistory, access: bindings, authenticate }),
        (app) => app.register(pushRoutes, { hub: push, devices, access: bindings, authenticate }),
        (app) =>
          app.register(lockPasscodeRoutes, {
            passcodes: lockPasscodes,
            access: bindings,
            authenticate,
            audit: recordRequest,
            stepUp: accountsContext,
          }),
        (app) => app.register(shadowRoutes, { shadows, access: bindings, authenticate, audit: recordRequest }),
        (app) => app.register(commandsRoutes, { commands, access: bindings, authenticate, audit: recordRequest }),
        (app) => app.register(webhooksRoutes, { webhooks, authenticate, audit: recordRequest }),
        (app) => app.register(postureRoutes, { posture, devices, authenticate, audit: recordRequest }),
        (app) =>
          app.register(manufacturingRoutes, {
            manufacturing,
            devices,
            authenticate,
            audit: recordRequest,
            record: (event) => audit.record(event),
          }),
        (app) => app.register(bindingRoutes, { bindings, authenticate, audit: recordRequest, stepUp: accountsContext }),
        (app) => app.register(bindingDeviceRoutes, { bindings, auth: deviceHttpAuth }),
        (app) => app.register(secureChannelRoutes, { service: secureChannel, auth: deviceHttpAuth }),
        (app) =>
          app.register(devicePollRoutes, {
            devices,
            auth: deviceHttpAuth,
            guard,
            shadows,
            commands,
            acks: () => deviceChannels.acks,
          }),
      ],
    });
    const httpTicketSource = sharedTickets('https');
    if (httpTicketSource) {
      const httpTickets = new TicketKeyRotation(
        http.server as unknown as TlsServer,
        config.mqtt.ticketKeyRotationMinutes,
        httpTicketSource,
        (error) => log.warn({ err: error }, 'https: shared TLS ticket key unavailable; the previous key stays'),
      );
      await httpTickets.ready;
      cleanups.push(() => httpTickets.stop());
    }
    const httpAdmit = createAddressFilter(config.http);
    const httpLog = log.child({ component: 'http' });
    const httpFiltered = filterConnections(
      http.server,
      (ip) => httpAdmit(ip) && !blocks.isBlockedLocally(ip),
      // No address in the log (PRIV-4); counted on /metrics.
      () => httpLog.debug('https: connection refused before TLS (http.allow, http.deny or an IP block)'),
    );
    try {
      await http.listen({ host: config.http.host, port: config.http.port });
    } catch (error) {
      await http.close();
      throw new CastellanError('ERR_LISTEN_FAILED', {
        message: `Cannot listen for HTTPS on ${formatHostPort(config.http.host, config.http.port)} (http.host, http.port): ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`,
        cause: error,
      });
    }
    cleanups.push(() => http.close());

    let adminUrl: string | null = null;
    if (config.admin.enabled) {
      const registry = createMetrics({
        broker: () => ({ ...broker.stats, connections: broker.connectionCount }),
        telemetry: () => ({ ...telemetry.stats, queued: telemetry.queued }),
        audit: () => ({ ...audit.stats, size: audit.size }),
        limits: () => limits.refusals,
        detections: () => guard.detections,
        secureChannelRefusals: () => guard.secureChannelRefusals,
      });
      new Counter({
        name: 'castellan_https_connections_refused_total',
        help: 'HTTPS connections refused before TLS (http.allow, http.deny, IP blocks)',
        registers: [registry],
        collect() {
          this.reset();
          this.inc(httpFiltered.refused);
        },
      });
      let admin: AdminServer;
      try {
        admin = await startAdminServer(
          {
            host: config.admin.host,
            port: config.admin.port,
            tls: {
              cert: tls.cert,
              key: tls.key,
              minVersion: config.tls.minVersion,
              ciphers: AEAD_CIPHERS,
              groups: config.tls.groups,
            },
          },
          registry,
          log.child({ component: 'admin' }),
        );
      } catch (error) {
        throw new CastellanError('ERR_LISTEN_FAILED', {
          message: `Cannot listen for the admin endpoint on ${formatHostPort(config.admin.host, config.admin.port)} (admin.host, admin.port): ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`,
          cause: error,
        });
      }
      cleanups.push(() => admin.close());
      adminUrl = admin.url;
    }

    const httpPort = (http.server.address() as { port: number }).port;
    const mqttPort = listener.address().port;
    const httpUrl = `https://${formatHostPort(urlHost(config.http.host), httpPort)}`;
    publicUrl ||= httpUrl;
    const mqttUrl = `mqtts://${formatHostPort(urlHost(config.mqtt.host), mqttPort)}`;

    const setupToken = await accounts.ensureSetupToken();
    if (setupToken) {
      log.info({ file: accounts.setupTokenPath }, 'setup token issued (value not logged)');
      // The token goes to the operator's terminal, never into the structured log.
      notice(
        process.stderr.isTTY
          ? `\n  Setup token (one use; creates the first administrator): ${setupToken}\n  Also in ${accounts.setupTokenPath} (0600).\n`
          : `\n  A one-time setup token was written to ${accounts.setupTokenPath} (0600).\n`,
      );
    }

    const runtime: RuntimeInfo = {
      pid: process.pid,
      httpUrl,
      mqttUrl,
      caFile: tls.source === 'development' && tls.dir ? join(tls.dir, 'ca.crt') : config.tls.caFile || null,
      startedAt: new Date().toISOString(),
    };
    const runtimeFile = join(dataDir, RUNTIME_FILE);
    if (options.runtimeFile !== false) {
      writeFileSync(runtimeFile, `${JSON.stringify(runtime, null, 2)}\n`, { mode: 0o600 });
      cleanups.push(() => rmSync(runtimeFile, { force: true }));
    }
    log.info({ httpUrl, mqttUrl, adminUrl, version: VERSION }, 'castellan is up');

    // [issue 7 wiring: after the listeners]
    // [issue 8 wiring: secure channel listeners]
    // Plain HTTP for devices without TLS (CHAN-3): only the secure-channel paths, off by default (CHAN-1).
    let secureChannelHttp: SecureChannelHttpListener | null = null;
    if (config.secureChannel.httpEnabled) {
      try {
        secureChannelHttp = await startSecureChannelHttpListener({
          host: config.secureChannel.httpHost,
          port: config.secureChannel.httpPort,
          allow: config.secureChannel.httpAllow,
          deny: config.secureChannel.httpDeny,
          isBlocked: (ip) => blocks.isBlockedLocally(ip),
          requestTimeoutMs: config.http.requestTimeoutMs,
          app: http,
          log: log.child({ component: 'secure-channel' }),
        });
      } catch (error) {
        throw new CastellanError('ERR_LISTEN_FAILED', {
          message: `Cannot listen for the plain-HTTP secure channel on ${formatHostPort(config.secureChannel.httpHost, config.secureChannel.httpPort)} (secureChannel.httpHost, secureChannel.httpPort): ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`,
          cause: error,
        });
      }
      const closing = secureChannelHttp;
      cleanups.push(() => closing.close());
      log.info({ secureChannelHttpUrl: secureChannelHttp.url }, 'plain-HTTP secure-channel listener up');
    }
    let secureChannelMqttListener: SecureChannelListener | null = null;
    let secureChannelMqttUrl: string | null = null;
    if (config.mqtt.secureChannelEnabled) {
      const scListener = await startSecureChannelListener(
        broker,
        secureChannelMqtt,
        {
          host: config.mqtt.secureChannelHost,
          port: config.mqtt.secureChannelPort,
          maxConnections: config.mqtt.maxConnections,
          // The TLS listener's gate and limits (CHAN-5): lists, known blocks, connect rate, handshake cap.
          admission: { ...config.mqtt, isBlocked: (ip) => blocks.isBlockedLocally(ip) },
        },
        brokerLog,
      );
      // Runs before the broker's cleanup: stops accepting; the broker's close() ends the connections.
      cleanups.push(() => scListener.close());
      secureChannelMqttListener = scListener;
      secureChannelMqttUrl = `mqtt://${formatHostPort(urlHost(config.mqtt.secureChannelHost), scListener.address().port)}`;
      log.info({ secureChannelMqttUrl }, 'secure-channel MQTT listener is up (plain TCP, secure channel only)');
    }
    credentialLifecycle.start();
    manufacturingEndpoints.mqttUrl = mqttUrl;
    manufacturingEndpoints.httpUrl = httpUrl;
    let closed: Promise<void> | undefined;
    return {
      config,
      log,
      store,
      accounts,
      accountsContext,
      devices,
      deviceEvents,
      // [issue 7 wiring: Platform values]
      deviceCertificates,
      credentialLifecycle,
      deviceHttpAuth,
      hardwareIds,
      telemetryHistory,
      push,
      lockPasscodes,
      shadows,
      commands,
      webhooks,
      posture,
      manufacturing,
      deviceAccess: bindings,
      bindings,
      broker,
      sysTopics,
      telemetry,
      audit,
      keys,
      guard,
      adminUrl,
      http,
      httpUrl,
      mqttUrl,
      httpPort,
      mqttPort,
      mqttListener: listener,
      secureChannel,
      secureChannelHttpUrl: secureChannelHttp?.url ?? null,
      secureChannelMqttUrl,
      secureChannelMqttListener,
      caPem: tls.ca,
      runtimeCaFile: runtime.caFile,
      setupToken,
      cluster:
        clusterNodes && bus && late.routing
          ? { nodeId: clusterNodes.nodeId, nodes: clusterNodes, bus, routing: late.routing }
          : null,
      close() {
        closed ??= closeAll().then(() => log.info('castellan stopped'));
        return closed;
      },
    };
  } catch (error) {
    await closeAll().catch(() => {});
    throw error;
  }
}
