// Composition root: builds every subsystem from the configuration and starts the listeners. The
// embedded default is this one process (SQLite, in-memory broker state); scale mode (docs/architecture.md)
// runs several over PostgreSQL and Redis.
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { FastifyInstance } from 'fastify';
import type { DestinationStream } from 'pino';
import { AccountsService, accountsRoutes } from './accounts/index.ts';
import type { CastellanConfig } from './config/index.ts';
import { DevicesService, devicesRoutes, TelemetryWriter } from './devices/index.ts';
import { CastellanError } from './errors/index.ts';
import {
  deviceBrokerHooks,
  formatHostPort,
  MqttBroker,
  type MqttListener,
  startMqttListener,
} from './gateway/index.ts';
import { createAuthenticateHook, createHttpServer } from './http/index.ts';
import { loadRootKey, loadTlsMaterial, SecretBox } from './keys/index.ts';
import { createLogger, type Logger } from './logging/index.ts';
import { migrateToLatest, openStore, type Store } from './store/index.ts';

export const VERSION: string = (
  JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }
).version;

export const RUNTIME_FILE = 'runtime.json';

export interface PlatformOptions {
  /** Log destination (tests capture it); stdout by default. */
  logDestination?: DestinationStream;
  /** Console notices for the operator (setup token, development warnings); stderr by default. */
  notice?: (message: string) => void;
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
  readonly devices: DevicesService;
  readonly broker: MqttBroker;
  readonly telemetry: TelemetryWriter;
  readonly http: FastifyInstance;
  readonly httpUrl: string;
  readonly mqttUrl: string;
  readonly httpPort: number;
  readonly mqttPort: number;
  /** The CA certificate devices and clients pin. */
  readonly caPem: string;
  /** The setup token issued by this start, if one was (shown once). */
  readonly setupToken: string | null;
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

    const accounts = new AccountsService({ db: store.db, dataDir });
    const telemetry = new TelemetryWriter({
      db: store.db,
      log: log.child({ component: 'telemetry' }),
      batchMaxRows: config.telemetry.batchMaxRows,
      flushIntervalMs: config.telemetry.flushIntervalMs,
      queueMaxRows: config.telemetry.queueMaxRows,
    });
    cleanups.push(() => telemetry.close());
    const devices = new DevicesService({
      db: store.db,
      secrets: new SecretBox(rootKey.key, 'device-secret'),
      vendors: accounts,
      telemetry,
      maxBatch: config.devices.maxBatch,
    });

    const brokerLog = log.child({ component: 'mqtt' });
    const broker = new MqttBroker({
      hooks: deviceBrokerHooks(devices, brokerLog),
      limits: config.mqtt,
      log: brokerLog,
    });
    const listener: MqttListener = await startMqttListener(
      broker,
      {
        cert: tls.cert,
        key: tls.key,
        minVersion: config.tls.minVersion,
        host: config.mqtt.host,
        port: config.mqtt.port,
        maxConnections: config.mqtt.maxConnections,
      },
      brokerLog,
    );
    cleanups.push(async () => {
      const closing = listener.close();
      await broker.close();
      await closing;
    });

    const authenticate = createAuthenticateHook((token) => accounts.authenticate(token));
    const http = await createHttpServer({
      tls: { cert: tls.cert, key: tls.key, minVersion: config.tls.minVersion },
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
      routes: [
        (app) => app.register(accountsRoutes, { accounts, authenticate }),
        (app) => app.register(devicesRoutes, { devices, authenticate }),
      ],
    });
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

    const httpPort = (http.server.address() as { port: number }).port;
    const mqttPort = listener.address().port;
    const httpUrl = `https://${formatHostPort(urlHost(config.http.host), httpPort)}`;
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
    writeFileSync(runtimeFile, `${JSON.stringify(runtime, null, 2)}\n`, { mode: 0o600 });
    cleanups.push(() => rmSync(runtimeFile, { force: true }));
    log.info({ httpUrl, mqttUrl, version: VERSION }, 'castellan is up');

    let closed: Promise<void> | undefined;
    return {
      config,
      log,
      store,
      accounts,
      devices,
      broker,
      telemetry,
      http,
      httpUrl,
      mqttUrl,
      httpPort,
      mqttPort,
      caPem: tls.ca,
      setupToken,
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
