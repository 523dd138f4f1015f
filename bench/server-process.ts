// The platform under test, in its own process so that the load generator never shares its event loop.
// Started by the runner with fork(); everything it needs arrives over IPC (see lib/ipc-messages.ts):
//   runner → 'start' → provisions devices directly through the services → 'ready' {mqttUrl, caPem, devices}
//   runner → 'sample' → cumulative CPU and telemetry-writer counters (and the stored row count)
//   runner → 'stop' (or disconnect, SIGINT, SIGTERM) → closes the platform, drops its schema, exits.
import { loadConfig, type Platform, startPlatform } from '@castellan/server';
import { sql } from 'kysely';
import type { RunnerMessage, ServerMessage, ServerSample, ServerStartOptions } from './lib/ipc-messages.ts';
import { dropBenchSchema } from './lib/pg-schema.ts';

// The bench uses the generated development PKI and root key on purpose; their warning is noise here.
const EXPECTED_WARNING = 'DEVELOPMENT DEFAULTS ACTIVE';

let platform: Platform | undefined;
let options: ServerStartOptions | undefined;
let stopping: Promise<void> | undefined;

/** Resolves once the message is handed to the channel, so that exiting right after cannot lose it. */
function send(message: ServerMessage): Promise<void> {
  if (!process.connected) return Promise.resolve();
  return new Promise((resolve) => process.send!(message, undefined, undefined, () => resolve()));
}

/** pino destination: warnings and errors go to stderr, which the runner shows with a prefix. */
const logDestination = {
  write(line: string): void {
    if (!line.includes(EXPECTED_WARNING)) process.stderr.write(line);
  },
};

let productId: string | undefined;

/** The bench's overrides with a measure's own merged over them, one level deep per section. */
function withExtra(base: Record<string, unknown>, extra: ServerStartOptions['configOverrides']) {
  const merged: Record<string, unknown> = { ...base };
  for (const [section, values] of Object.entries(extra ?? {})) {
    merged[section] = { ...(merged[section] as Record<string, unknown> | undefined), ...values };
  }
  return merged;
}

async function start(opts: ServerStartOptions): Promise<void> {
  options = opts;
  const config = loadConfig({
    env: {},
    cwd: opts.dataDir,
    overrides: withExtra(
      {
        dataDir: opts.dataDir,
        log: { level: 'warn' },
        database: { url: opts.databaseUrl, schema: opts.schema },
        http: { host: '127.0.0.1', port: 0 },
        // The load generator connects every device from one address: the connect limiter is opened wide.
        mqtt: { host: '127.0.0.1', port: 0, connectsPerIpPerSecond: 1_000_000, connectBurstPerIp: 1_000_000 },
        devices: { maxBatch: Math.max(1, opts.devices) },
        admin: { enabled: false },
        // The load generator is one IP with many devices: the telemetry measure is about the device
        // path at full speed, so the guard's limits are set out of its way (its cost is still paid).
        guard: {
          httpPerIpPerMinute: 10_000_000,
          httpPerCredentialPerMinute: 10_000_000,
          // command-rtt sends every command (a POST) with one session.
          httpWritesPerCredentialPerMinute: 10_000_000,
          mqttConnectsPerIpPerMinute: 1_000_000,
          deviceMessagesPerSecond: 100_000,
          deviceMessagesPerDay: 100_000_000,
          productMessagesPerSecond: 10_000_000,
          authFailuresPerIp: 100_000,
        },
      },
      opts.configOverrides,
    ),
  });
  platform = await startPlatform(config, { logDestination, notice: () => {} });
  const vendor = await platform.accounts.createVendor('Bench Vendor');
  const product = await platform.devices.createProduct(vendor.id, {
    name: 'Bench Sensor',
    category: 'sensor',
    ...(opts.reportLimits ? { reportLimits: opts.reportLimits } : {}),
  });
  productId = product.id;
  const devices = await platform.devices.createDevices(product.id, opts.devices);
  // A person who owns the vendor, signed in: the HTTP measure reads a device with this session.
  const ctx = platform.accountsContext;
  const owner = await ctx.users.create({
    identifier: { kind: 'email', value: 'bench-owner@example.com' },
    kind: 'developer',
    status: 'active',
    passwordHash: null,
  });
  await ctx.db
    .insertInto('organisation_members')
    .values({ vendor_id: vendor.id, user_id: owner.id, role: 'owner', created_at: Date.now() })
    .execute();
  const session = await ctx.sessions.create({
    principalKind: 'user',
    principalId: owner.id,
    level: 'full',
    persistent: false,
    ip: '127.0.0.1',
  });
  const version = await sql<{ v: string }>`select ${sql.raw(
    platform.store.dialect === 'postgres' ? 'version()' : `'SQLite ' || sqlite_version()`,
  )} as v`.execute(platform.store.db);
  await send({
    type: 'ready',
    mqttUrl: platform.mqttUrl,
    httpUrl: platform.httpUrl,
    sessionToken: session.token,
    caPem: platform.caPem,
    devices: devices.map((d) => ({ id: d.id, secret: d.secret })),
    dialect: platform.store.dialect,
    databaseVersion: version.rows[0]?.v ?? 'unknown',
  });
}

async function sample(countRows: boolean): Promise<ServerSample> {
  const p = platform!;
  const cpu = process.cpuUsage();
  let storedRows: number | null = null;
  if (countRows) {
    const row = await p.store.db
      .selectFrom('telemetry')
      .select((eb) => eb.fn.countAll().as('n'))
      .executeTakeFirstOrThrow();
    storedRows = Number(row.n);
  }
  return {
    cpuMicros: cpu.user + cpu.system,
    rowsWritten: p.telemetry.stats.rowsWritten,
    batchesWritten: p.telemetry.stats.batchesWritten,
    batchesFailed: p.telemetry.stats.batchesFailed,
    rowsRefused: p.telemetry.stats.rowsRefused,
    publishRefused: p.broker.stats.publishRefused,
    storedRows,
  };
}

/** Closes the platform and drops the schema; idempotent, exits the process when done. */
function stop(exitCode: number): Promise<void> {
  stopping ??= (async () => {
    try {
      await platform?.close();
      if (options?.schema) await dropBenchSchema(options.databaseUrl, options.schema);
      await send({ type: 'stopped' });
    } catch (error) {
      // Without a started platform (e.g. PostgreSQL unreachable) the start failure already said why.
      if (platform) process.stderr.write(`server-process: cleanup failed: ${(error as Error).message}\n`);
      exitCode = 1;
    }
    process.exit(exitCode);
  })();
  return stopping;
}

process.on('message', (message: RunnerMessage) => {
  switch (message.type) {
    case 'start':
      start(message.options).catch(async (error: unknown) => {
        await send({ type: 'failed', message: (error as Error).message ?? String(error) });
        await stop(1);
      });
      break;
    case 'sample':
      sample(message.countRows).then(
        (s) => send({ type: 'sample', sample: s }),
        (error: unknown) => send({ type: 'failed', message: `sample failed: ${(error as Error).message}` }),
      );
      break;
    case 'set-report-limits':
      platform!.devices
        .updateProduct(productId!, { reportLimits: { perSecond: message.perSecond, perDay: message.perDay } })
        .then(
          () => send({ type: 'report-limits-set' }),
          (error: unknown) =>
            send({ type: 'failed', message: `set-report-limits failed: ${(error as Error).message}` }),
        );
      break;
    case 'stop':
      void stop(0);
      break;
  }
});
// A runner that went away (crash, Ctrl-C) must not leave a platform or a schema behind.
process.on('disconnect', () => void stop(1));
process.on('SIGINT', () => void stop(130));
process.on('SIGTERM', () => void stop(143));
