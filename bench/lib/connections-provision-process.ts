// Provisions the devices of the connections measure's scale-mode case, then waits. Started with
// BenchChild (fresh data directory and PostgreSQL schema); it runs the platform just long enough to
// migrate the schema, generate the development root key and PKI in the data directory, and create the
// devices, then closes it. `castellan up` (scale mode, several workers) is then pointed at the same data
// directory and schema. On 'stop' it drops the schema and the key-store schema, and exits.
//   runner → 'start' {dataDir, databaseUrl, schema, devices} → 'ready' {devices, caPem, seconds}
//   runner → 'stop' (or disconnect) → schemas dropped → 'stopped', exit.
import { loadConfig, startPlatform } from '@castellan/server';
import pg from 'pg';
import type { ProvisionedDevice } from './ipc-messages.ts';
import { dropBenchSchema } from './pg-schema.ts';

export interface ProvisionOptions {
  dataDir: string;
  databaseUrl: string;
  schema: string;
  devices: number;
}

export type ProvisionRunnerMessage = { type: 'start'; options: ProvisionOptions } | { type: 'stop' };

export type ProvisionChildMessage =
  | { type: 'ready'; devices: ProvisionedDevice[]; caPem: string; seconds: number }
  | { type: 'failed'; message: string }
  | { type: 'stopped' };

/** Devices per createDevices call: one transaction each, so the platform's other work still gets a pooled connection. */
const BATCH = 10_000;
const EXPECTED_WARNING = 'DEVELOPMENT DEFAULTS ACTIVE';

let options: ProvisionOptions | undefined;
let stopping = false;

function send(message: ProvisionChildMessage): Promise<void> {
  if (!process.connected) return Promise.resolve();
  return new Promise((resolve) => process.send!(message, undefined, undefined, () => resolve()));
}

async function provision(opts: ProvisionOptions): Promise<void> {
  options = opts;
  const started = performance.now();
  const config = loadConfig({
    env: {},
    cwd: opts.dataDir,
    overrides: {
      dataDir: opts.dataDir,
      log: { level: 'warn' },
      database: { url: opts.databaseUrl, schema: opts.schema, poolMax: 4 },
      http: { host: '127.0.0.1', port: 0 },
      mqtt: { host: '127.0.0.1', port: 0 },
      devices: { maxBatch: BATCH },
      admin: { enabled: false },
    },
  });
  const platform = await startPlatform(config, {
    logDestination: { write: (line: string) => void (line.includes(EXPECTED_WARNING) || process.stderr.write(line)) },
    notice: () => {},
  });
  try {
    const vendor = await platform.accounts.createVendor('Bench Vendor');
    const product = await platform.devices.createProduct(vendor.id, { name: 'Bench Sensor', category: 'sensor' });
    const devices: ProvisionedDevice[] = [];
    for (let left = opts.devices; left > 0; left -= BATCH) {
      const issued = await platform.devices.createDevices(product.id, Math.min(BATCH, left));
      for (const d of issued) devices.push({ id: d.id, secret: d.secret });
    }
    const caPem = platform.caPem;
    await platform.close();
    await send({ type: 'ready', devices, caPem, seconds: (performance.now() - started) / 1000 });
  } catch (error) {
    await platform.close().catch(() => {});
    throw error;
  }
}

/** The key store's schema next to the data schema (platform.ts: `${schema}_keys`). */
async function dropKeySchema(databaseUrl: string, schema: string): Promise<void> {
  if (!/^bench_[a-f0-9]{8,32}$/.test(schema)) throw new Error(`refusing to drop ${JSON.stringify(schema)}_keys`);
  const client = new pg.Client({ connectionString: databaseUrl, connectionTimeoutMillis: 5000 });
  await client.connect();
  try {
    await client.query(`drop schema if exists "${schema}_keys" cascade`);
  } finally {
    await client.end();
  }
}

function stop(code: number): void {
  if (stopping) return;
  stopping = true;
  void (async () => {
    try {
      if (options?.schema) {
        await dropBenchSchema(options.databaseUrl, options.schema);
        await dropKeySchema(options.databaseUrl, options.schema);
      }
      await send({ type: 'stopped' });
    } catch (error) {
      process.stderr.write(`connections-provision: cleanup failed: ${(error as Error).message}\n`);
      code = 1;
    }
    process.exit(code);
  })();
}

process.on('message', (message: ProvisionRunnerMessage) => {
  if (message.type === 'start') {
    provision(message.options).catch(async (error: unknown) => {
      await send({ type: 'failed', message: (error as Error).message ?? String(error) });
    });
  } else if (message.type === 'stop') stop(0);
});
process.on('disconnect', () => stop(1));
process.on('SIGINT', () => stop(130));
process.on('SIGTERM', () => stop(143));
