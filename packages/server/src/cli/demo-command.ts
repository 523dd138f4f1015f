// `castellan demo`: the end-to-end path against a running platform, each step printed: a consumer
// registers (proof of work, activation code read from the development outbox), signs in and out →
// staff setup (setup token, password, TOTP) → vendor → operator access key → product → devices →
// each device connects over MQTT/TLS with its own secret and reports telemetry → the vendor reads it
// back over HTTPS → the audit log is verified. A device that presents only its ID is refused. Exits
// non-zero on any failure.
import { randomBytes, randomInt } from 'node:crypto';
import { chmodSync, existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { type Challenge, solveChallenge } from 'altcha-lib';
import { deriveKey } from 'altcha-lib/algorithms/sha';
import { OUTBOX_DIR, totpCode } from '../accounts/index.ts';
import { join, resolve } from 'node:path';
import { DeviceClient, DeviceConnectError } from '@castellan/device';
import type { KeyObject } from 'node:crypto';
import {
  type Checkpoint,
  publicKeyFromRaw,
  readFileCheckpoints,
  type VerifyResult,
  verifyAuditLog,
  verifyCheckpoint,
  verifyConsistency,
  verifyInclusion,
} from '../audit/index.ts';
import { loadConfig } from '../config/index.ts';
import { RUNTIME_FILE, type RuntimeInfo } from '../platform.ts';
import { openStore } from '../store/index.ts';
import { ApiClient, ApiError } from './api-client.ts';

export const demoHelp = `Usage: castellan demo [options]

Runs the demo story against a platform started from the same folder (npm start), finding what it
needs in the data directory: the platform's addresses (runtime.json), its CA (pki/ca.crt) and the
one-time setup token (setup-token). After the first run the administrator credential it created is
kept in <data-dir>/demo-admin.token (0600) so the demo can run again.

Options:
  --data-dir <dir>       data directory of the running platform (default ./data)
  --url <https-url>      API address (default from runtime.json)
  --mqtt-url <mqtts-url> MQTT address (default from runtime.json)
  --ca <file>            CA certificate to pin (default from runtime.json)
  --setup-token <token>  setup token (default <data-dir>/setup-token)
  --admin-token <token>  use this administrator credential instead of running setup
  --devices <n>          devices to create and connect (1-100, default 3)
  --json                 print a JSON summary instead of the step log
  -h, --help             show this help`;

export interface DemoOptions {
  'data-dir'?: string;
  url?: string;
  'mqtt-url'?: string;
  ca?: string;
  'setup-token'?: string;
  'admin-token'?: string;
  devices?: string;
  json?: boolean;
}

interface Step {
  step: string;
  ok: boolean;
  detail: string;
}

export const DEMO_ADMIN_TOKEN_FILE = 'demo-admin.token';

function readTrimmed(file: string): string {
  return readFileSync(file, 'utf8').trim();
}

export async function demoCommand(
  options: DemoOptions,
  out: (line: string) => void = (l) => process.stdout.write(`${l}\n`),
): Promise<number> {
  const steps: Step[] = [];
  const log = (step: string, detail: string) => {
    steps.push({ step, ok: true, detail });
    if (!options.json) out(`  ✔ ${step}${detail ? `: ${detail}` : ''}`);
  };
  const dataDir = resolve(options['data-dir'] ?? 'data');
  const clients: DeviceClient[] = [];
  try {
    const deviceCount = Number(options.devices ?? '3');
    if (!Number.isInteger(deviceCount) || deviceCount < 1 || deviceCount > 100) {
      throw new Error('--devices must be an integer from 1 to 100');
    }
    const runtimePath = join(dataDir, RUNTIME_FILE);
    const runtime: Partial<RuntimeInfo> = existsSync(runtimePath)
      ? (JSON.parse(readFileSync(runtimePath, 'utf8')) as Partial<RuntimeInfo>)
      : {};
    const httpUrl = options.url ?? runtime.httpUrl;
    const mqttUrl = options['mqtt-url'] ?? runtime.mqttUrl;
    const caFile = options.ca ?? runtime.caFile ?? join(dataDir, 'pki', 'ca.crt');
    if (!httpUrl || !mqttUrl) {
      throw new Error(
        `no running platform found: ${runtimePath} is missing (start one with \`npm start\` in this folder, or pass --url and --mqtt-url)`,
      );
    }
    if (!existsSync(caFile)) throw new Error(`CA certificate ${caFile} not found (pass --ca)`);
    const ca = readFileSync(caFile, 'utf8');
    const api = new ApiClient(httpUrl, ca);
    if (!options.json) out(`Castellan demo against ${httpUrl} and ${mqttUrl}`);

    const ready = await api.request<{ status: string }>('GET', '/readyz');
    log('platform is ready', ready.status);

    // 0. A consumer registers, activates with the code from the development outbox, signs in and out.
    await consumerStory(api, dataDir, log);

    // 1. Administrator: from a flag, a previous demo run, or the one-time setup token.
    const adminTokenFile = join(dataDir, DEMO_ADMIN_TOKEN_FILE);
    let adminToken = options['admin-token'] ?? (existsSync(adminTokenFile) ? readTrimmed(adminTokenFile) : undefined);
    if (!adminToken) {
      const setupFile = join(dataDir, 'setup-token');
      const setupToken = options['setup-token'] ?? (existsSync(setupFile) ? readTrimmed(setupFile) : undefined);
      if (!setupToken) throw new Error(`no setup token: ${setupFile} is missing and no --admin-token was given`);
      // The staff password is random and not kept: the demo works with the API credential, which
      // can act only once the TOTP factor is confirmed (OPS-2).
      const setup = await api.request<{
        adminId: string;
        credential: { token: string };
        totp: { secret: string };
      }>('POST', '/v1/setup', {
        setupToken,
        adminName: 'demo administrator',
        username: 'demo-admin',
        password: randomBytes(18).toString('base64url'),
      });
      adminToken = setup.credential.token;
      const staffApi = new ApiClient(httpUrl, ca, adminToken);
      await staffApi.request('POST', '/v1/staff/mfa/totp/confirm', { code: totpCode(setup.totp.secret) });
      writeFileSync(adminTokenFile, `${adminToken}\n`, { mode: 0o600 });
      chmodSync(adminTokenFile, 0o600);
      log(
        'setup token used: first administrator created, TOTP factor confirmed',
        `${setup.adminId} (credential kept in ${adminTokenFile})`,
      );
    } else {
      log('administrator credential found', options['admin-token'] ? '--admin-token' : adminTokenFile);
    }
    api.token = adminToken;
    // A signed checkpoint before the story: at the end the log must prove it only grew since.
    const baseline = await api.request<Checkpoint>('POST', '/v1/audit/checkpoints');

    // 2. Vendor and an operator access key for its business system (ORG-2: signed requests).
    const suffix = randomInt(1_000_000).toString().padStart(6, '0');
    const vendor = await api.request<{ id: string; code: string }>('POST', '/v1/vendors', {
      name: `Demo Devices ${suffix}`,
    });
    log('vendor created', `${vendor.id}, vendor code ${vendor.code}`);
    const accessKey = await api.request<{ id: string; secret: string }>(
      'POST',
      `/v1/vendors/${vendor.id}/access-keys`,
      { label: 'demo' },
    );
    log('operator access key issued', `${accessKey.id} (secret shown once, not printed; requests are signed)`);
    const vendorApi = new ApiClient(httpUrl, ca, { id: accessKey.id, secret: accessKey.secret });

    // 3. Product and devices.
    const product = await vendorApi.request<{ id: string; code: string }>('POST', '/v1/products', {
      name: 'Demo smart plug',
      category: 'plug',
    });
    log('product created', `${product.id}, product code ${product.code}`);
    const issued = await vendorApi.request<{ devices: { id: string; secret: string }[] }>(
      'POST',
      `/v1/products/${product.id}/devices`,
      { count: deviceCount },
    );
    log(`${issued.devices.length} devices issued`, issued.devices.map((d) => d.id).join(', '));

    // 4. The device ID alone is not a credential.
    const first = issued.devices[0]!;
    try {
      const rogue = await DeviceClient.connect({ url: mqttUrl, deviceId: first.id, secret: '', ca });
      await rogue.close();
      throw new Error('a device connected without its secret: the platform accepted an ID alone');
    } catch (error) {
      if (!(error instanceof DeviceConnectError)) throw error;
      log('connection with the device ID alone refused', error.code);
    }

    // 5. Each device connects over MQTT/TLS with its own secret and reports telemetry (QoS 1 = stored).
    const sent = new Map<string, Record<string, number>>();
    for (const [i, device] of issued.devices.entries()) {
      const client = await DeviceClient.connect({
        url: mqttUrl,
        deviceId: device.id,
        secret: device.secret,
        ca,
      });
      clients.push(client);
      const reading = { power_w: 5 + i, voltage_v: 230, uptime_s: 60 * (i + 1) };
      await client.publishTelemetry(reading);
      sent.set(device.id, reading);
    }
    log('devices connected over MQTT/TLS and reported telemetry', `${clients.length} acknowledged (QoS 1, stored)`);

    // 6. The vendor reads it back.
    for (const [deviceId, reading] of sent) {
      const latest = await vendorApi.request<{ payload: Record<string, number> }>(
        'GET',
        `/v1/devices/${deviceId}/telemetry/latest`,
      );
      if (JSON.stringify(latest.payload) !== JSON.stringify(reading)) {
        throw new Error(
          `telemetry of ${deviceId} read back as ${JSON.stringify(latest.payload)}, sent ${JSON.stringify(reading)}`,
        );
      }
    }
    log("vendor read every device's latest telemetry over HTTPS", 'matches what was sent');

    // 7. The audit log, checked the way an outside auditor would: signatures with the published key,
    // append-only since the baseline (consistency proof), the vendor's creation included (inclusion
    // proof); then every entry recomputed against every checkpoint from the local data directory.
    const key = await api.request<{ publicKey: string }>('GET', '/v1/audit/public-key');
    const publicKey = publicKeyFromRaw(Buffer.from(key.publicKey, 'base64'));
    const final = await api.request<Checkpoint>('POST', '/v1/audit/checkpoints');
    if (!verifyCheckpoint(baseline, publicKey) || !verifyCheckpoint(final, publicKey)) {
      throw new Error('an audit checkpoint does not carry a valid signature');
    }
    const consistency = await api.request<{ proof: string[] }>(
      'GET',
      `/v1/audit/proofs/consistency?first=${baseline.treeSize}&second=${final.treeSize}`,
    );
    const hex = (h: string) => Buffer.from(h, 'hex');
    if (
      !verifyConsistency(
        baseline.treeSize,
        final.treeSize,
        hex(baseline.rootHash),
        hex(final.rootHash),
        consistency.proof.map(hex),
      )
    ) {
      throw new Error('the audit log is not an extension of its earlier checkpoint');
    }
    const created = await api.request<{ items: { seq: number }[] }>(
      'GET',
      `/v1/audit/entries?type=vendor.create&target=${vendor.id}&limit=1`,
    );
    const seq = created.items[0]?.seq;
    if (seq === undefined) throw new Error('the vendor creation is missing from the audit log');
    const inclusion = await api.request<{ leafHash: string; proof: string[] }>(
      'GET',
      `/v1/audit/proofs/inclusion?seq=${seq}&treeSize=${final.treeSize}`,
    );
    if (!verifyInclusion(seq, final.treeSize, hex(inclusion.leafHash), inclusion.proof.map(hex), hex(final.rootHash))) {
      throw new Error('the inclusion proof of the vendor creation does not verify');
    }
    log(
      'audit checkpoints verified with the published key',
      `${final.treeSize - baseline.treeSize} entries appended during the demo; consistency and inclusion proofs hold`,
    );
    const local = await verifyLocally(dataDir, publicKey);
    if (local === null) log('full audit verification skipped', 'no local database for this platform');
    else if (!local.ok)
      throw new Error(`audit verification found ${local.problems.length} problem(s): ${local.problems[0]?.detail}`);
    else
      log(
        'audit log verified entry by entry',
        `${local.entries} entries, ${local.checkpointsVerified} checkpoints, no tampering`,
      );

    if (options.json) out(JSON.stringify({ ok: true, steps }, null, 2));
    else out('Demo completed.');
    return 0;
  } catch (error) {
    const message = error instanceof ApiError || error instanceof Error ? error.message : String(error);
    steps.push({ step: 'failure', ok: false, detail: message });
    if (options.json) out(JSON.stringify({ ok: false, steps }, null, 2));
    else out(`  ✘ demo failed: ${message}`);
    return 1;
  } finally {
    await Promise.all(clients.map((c) => c.close()));
  }
}

/** Full verification against the platform's own store, when this folder's configuration reaches it. */
async function verifyLocally(dataDir: string, publicKey: KeyObject): Promise<VerifyResult | null> {
  const config = loadConfig({ overrides: { dataDir } });
  if (!config.database.url && !existsSync(join(dataDir, config.database.sqliteFile))) return null;
  const store = await openStore({
    url: config.database.url,
    dataDir,
    sqliteFile: config.database.sqliteFile,
    poolMax: 1,
    ...(config.database.schema ? { schema: config.database.schema } : {}),
  });
  try {
    return await verifyAuditLog({
      db: store.db,
      publicKey,
      fileCheckpoints: readFileCheckpoints(dataDir),
      requireFile: true,
    });
  } finally {
    await store.close();
  }
}

interface OutboxMessage {
  to: string;
  purpose: string;
  text: string;
}

/** Waits for the newest outbox message to `to` with `purpose` (delivery is asynchronous). */
async function outboxCode(dataDir: string, to: string, purpose: string): Promise<string> {
  const dir = join(dataDir, OUTBOX_DIR);
  for (let attempt = 0; attempt < 100; attempt++) {
    const files = existsSync(dir) ? readdirSync(dir).sort().reverse() : [];
    for (const file of files) {
      const message = JSON.parse(readFileSync(join(dir, file), 'utf8')) as OutboxMessage;
      const code = message.to === to && message.purpose === purpose ? /\b(\d{8})\b/.exec(message.text) : null;
      if (code) return code[1]!;
    }
    await sleep(50);
  }
  throw new Error(
    `no ${purpose} message to the demo consumer in ${dir}: the demo reads codes from the development outbox (accounts.mailer = outbox)`,
  );
}

async function consumerStory(api: ApiClient, dataDir: string, log: (step: string, detail: string) => void) {
  const email = `demo-consumer-${randomInt(1_000_000_000)}@example.com`;
  const password = randomBytes(18).toString('base64url');
  const challenge = await api.request<Challenge>('POST', '/v1/auth/challenge');
  const solution = await solveChallenge({ challenge, deriveKey, timeout: 60_000 });
  if (!solution) throw new Error('the registration challenge could not be solved');
  log('proof-of-work challenge solved', `${solution.counter} hashes`);
  await api.request('POST', '/v1/auth/register', {
    identifier: email,
    password,
    altcha: Buffer.from(JSON.stringify({ challenge, solution })).toString('base64'),
  });
  log('consumer registered', `${email} (pending until the code is confirmed)`);
  const code = await outboxCode(dataDir, email, 'activation');
  await api.request('POST', '/v1/auth/activate', { identifier: email, code, password });
  log('activation code read from the development outbox and confirmed', 'account active');
  const session = await api.request<{ token: string; sessionId: string }>('POST', '/v1/auth/login', {
    identifier: email,
    password,
  });
  const consumer = new ApiClient(api.baseUrl, api.ca, session.token);
  const me = await consumer.request<{ id: string; contact: string }>('GET', '/v1/me');
  log('consumer signed in', `${me.id}, session ${session.sessionId} (token not printed)`);
  await consumer.request('POST', '/v1/auth/logout');
  try {
    await consumer.request('GET', '/v1/me');
    throw new Error('the session still worked after logout');
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 401) throw error;
    log('consumer signed out; the old session token is refused', error.code);
  }
}
