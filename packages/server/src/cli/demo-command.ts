// `castellan demo`: the end-to-end path against a running platform, each step printed: a consumer
// registers (proof of work, activation code read from the development outbox) and signs in → staff
// setup (setup token, password, TOTP) → vendor → operator access key → product → devices → each device
// connects over MQTT/TLS with its own secret and reports telemetry → the vendor reads it back. Then the
// device lifecycle (docs/device-lifecycle.md, "The demo story"): a factory station and a batch (DEV-7)
// → the factory burns it and uploads signed receipts (a burned device without its receipt is refused)
// → the consumer's one-time binding token reaches the device in a sealed SoftAP payload, the device's
// first connection activates it and it binds (BIND-1) → the owner controls it (shadow and a command,
// CHAN-7), shares it and revokes the share (BIND-3) → unbinding wipes what was kept for the owner
// (BIND-5) and the device can be bound again → the consumer signs out → the audit log is verified.
// A device that presents only its ID is refused. Exits non-zero on any failure.
import { randomBytes, randomInt } from 'node:crypto';
import { chmodSync, existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { type Challenge, solveChallenge } from 'altcha-lib';
import { deriveKey } from 'altcha-lib/algorithms/sha';
import { OUTBOX_DIR, totpCode } from '../accounts/index.ts';
import { join, resolve } from 'node:path';
import {
  burnDevices,
  DeviceClient,
  DeviceConnectError,
  DeviceProvisioningSimulator,
  deviceApiActivator,
  fetchBatch,
  generateStationKeys,
  loadDeviceCredentials,
  openBatch,
  type PlatformConnection,
  sealProvisioningPayload,
  spkiPem,
  uploadReceipts,
} from '@castellan/device';
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
kept in <data-dir>/demo-admin.token (0600) so the demo can run again. The factory station writes
its burned device files to <data-dir>/demo-factory/<batch-id>/ (0600).

Options:
  --data-dir <dir>       data directory of the running platform (default ./data)
  --url <https-url>      API address (default from runtime.json)
  --mqtt-url <mqtts-url> MQTT address (default from runtime.json)
  --ca <file>            CA certificate to pin (default from runtime.json)
  --setup-token <token>  setup token (default <data-dir>/setup-token)
  --admin-token <token>  use this administrator credential instead of running setup
  --devices <n>          devices to create and connect, and in the factory batch (1-100, default 3)
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

    // 0. A consumer registers, activates with the code from the development outbox and signs in; the
    // session is kept for the device story (it signs out at the end).
    const owner = await registerConsumer(api, dataDir, log, 'demo-consumer');

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

    // 7. The device lifecycle: manufacturing line, binding, control, sharing, unbinding.
    const lifecycleDevice = await deviceStory({
      api,
      dataDir,
      httpUrl,
      mqttUrl,
      ca,
      vendorApi,
      productId: product.id,
      deviceCount,
      owner,
      log,
      clients,
    });

    // 8. The owner signs out: the old session token is refused from then on.
    await owner.api.request('POST', '/v1/auth/logout');
    try {
      await owner.api.request('GET', '/v1/me');
      throw new Error('the session still worked after logout');
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 401) throw error;
      log('consumer signed out; the old session token is refused', error.code);
    }

    // 9. The audit log, checked the way an outside auditor would: the device's lifecycle is on record
    // (some entries are written just after the answer: waited for); signatures with the published key,
    // append-only since the baseline (consistency proof), the vendor's creation and the unbind included
    // (inclusion proofs); then every entry recomputed against every checkpoint from the local data directory.
    type Entry = { seq: number; type: string; result: string };
    const lifecycle = [
      'device.connect:denied',
      'device.activate:success',
      'device.bind:success',
      'device.shadow.desired:success',
      'device.command.issue:success',
      'device.share:success',
      'device.share.revoke:success',
      'device.unbind:success',
    ];
    const onRecord = await until(
      () => api.request<{ items: Entry[] }>('GET', `/v1/audit/entries?target=${lifecycleDevice}&limit=1000`),
      (r) => lifecycle.every((t) => r.items.some((e) => `${e.type}:${e.result}` === t)),
      `the audit entries of device ${lifecycleDevice}`,
    );
    log(
      "the device's lifecycle is in the audit log",
      `${onRecord.items.length} entries for ${lifecycleDevice}: ${lifecycle.map((t) => t.replace(':success', '').replace(':denied', ' (refused)')).join(', ')}`,
    );
    const unbindSeq = onRecord.items.find((e) => e.type === 'device.unbind' && e.result === 'success')!.seq;
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
    const unbindProof = await api.request<{ leafHash: string; proof: string[] }>(
      'GET',
      `/v1/audit/proofs/inclusion?seq=${unbindSeq}&treeSize=${final.treeSize}`,
    );
    if (
      !verifyInclusion(
        unbindSeq,
        final.treeSize,
        hex(unbindProof.leafHash),
        unbindProof.proof.map(hex),
        hex(final.rootHash),
      )
    ) {
      throw new Error('the inclusion proof of the unbind does not verify');
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

interface SignedInConsumer {
  api: ApiClient;
  id: string;
  email: string;
}

type Log = (step: string, detail: string) => void;

/**
 * Registers a consumer (proof of work, activation code from the development outbox) and signs in. With
 * `log`, each step is printed; without, the caller prints one line.
 */
async function registerConsumer(api: ApiClient, dataDir: string, log: Log | null, label: string) {
  const email = `${label}-${randomInt(1_000_000_000)}@example.com`;
  const password = randomBytes(18).toString('base64url');
  const challenge = await api.request<Challenge>('POST', '/v1/auth/challenge');
  const solution = await solveChallenge({ challenge, deriveKey, timeout: 60_000 });
  if (!solution) throw new Error('the registration challenge could not be solved');
  log?.('proof-of-work challenge solved', `${solution.counter} hashes`);
  await api.request('POST', '/v1/auth/register', {
    identifier: email,
    password,
    altcha: Buffer.from(JSON.stringify({ challenge, solution })).toString('base64'),
  });
  log?.('consumer registered', `${email} (pending until the code is confirmed)`);
  const code = await outboxCode(dataDir, email, 'activation');
  await api.request('POST', '/v1/auth/activate', { identifier: email, code, password });
  log?.('activation code read from the development outbox and confirmed', 'account active');
  const session = await api.request<{ token: string; sessionId: string }>('POST', '/v1/auth/login', {
    identifier: email,
    password,
  });
  const consumer = new ApiClient(api.baseUrl, api.ca, session.token);
  const me = await consumer.request<{ id: string; contact: string }>('GET', '/v1/me');
  log?.('consumer signed in', `${me.id}, session ${session.sessionId} (token not printed)`);
  return { api: consumer, id: me.id, email } satisfies SignedInConsumer;
}

/** Reads until `check` holds (work the platform finishes just after answering), at most `timeoutMs`. */
async function until<T>(read: () => Promise<T>, check: (value: T) => boolean, what: string, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await read();
    if (check(value)) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

/** The platform's refusal of `call`: its status must be `status`; returns the error code. */
async function refusal(call: Promise<unknown>, status: number, what: string): Promise<string> {
  try {
    await call;
  } catch (error) {
    if (error instanceof ApiError && error.status === status) return error.code;
    throw error;
  }
  throw new Error(`${what} was allowed`);
}

interface DeviceStoryContext {
  api: ApiClient;
  dataDir: string;
  httpUrl: string;
  mqttUrl: string;
  ca: string;
  vendorApi: ApiClient;
  productId: string;
  deviceCount: number;
  owner: SignedInConsumer;
  log: Log;
  /** Device connections, closed by the caller. */
  clients: DeviceClient[];
}

interface BatchCounts {
  issued: number;
  burned: number;
  activated: number;
}

/**
 * The device lifecycle of docs/device-lifecycle.md ("The demo story"): manufacturing line (DEV-7),
 * binding with a one-time token in a sealed provisioning payload (BIND-1), control through the shadow
 * and a command (CHAN-7), a share and its revocation (BIND-3), unbinding that wipes (BIND-5).
 */
async function deviceStory(ctx: DeviceStoryContext): Promise<string> {
  const { vendorApi, productId, owner, log, ca } = ctx;

  // A factory station: its keys are made at the station (here in memory); the platform gets the
  // public halves and answers with the station's token, shown once.
  const stationKeys = generateStationKeys('X25519');
  const station = await vendorApi.request<{ id: string; token: string }>(
    'POST',
    `/v1/products/${productId}/factory-stations`,
    {
      name: 'Demo factory line 1',
      encryptionPublicKey: spkiPem(stationKeys.encryption.publicKey),
      signingPublicKey: spkiPem(stationKeys.signing.publicKey),
      expiresInDays: 1,
    },
  );
  log(
    'factory station registered',
    `${station.id} (X25519 + Ed25519 keys made at the station; token shown once, not printed)`,
  );
  const factory: PlatformConnection = { url: ctx.httpUrl, ca, token: station.token };

  // A batch for the station: the vendor gets device IDs only; the secrets exist only sealed to the station.
  const batch = await vendorApi.request<{ id: string; deviceIds: string[] } & Record<string, unknown>>(
    'POST',
    `/v1/products/${productId}/batches`,
    { count: ctx.deviceCount, stationId: station.id },
  );
  const issuedText = JSON.stringify(batch);
  if (Object.keys(batch).some((k) => /secret|key|image/i.test(k))) {
    throw new Error(`the batch response carries more than IDs: ${Object.keys(batch).join(', ')}`);
  }
  log('batch issued to the station', `${batch.id}, ${batch.deviceIds.length} device IDs, no secrets in the response`);
  const batchCounts = () =>
    vendorApi
      .request<{ counts: BatchCounts }>('GET', `/v1/products/${productId}/batches/${batch.id}`)
      .then((b) => b.counts);

  // The factory fetches the sealed batch, opens it with the station's key and burns one file per
  // device (read back and hashed), signing a receipt for each.
  const sealed = await fetchBatch(factory, batch.id);
  const opened = openBatch(sealed, stationKeys.encryption.privateKey);
  const outDir = join(ctx.dataDir, 'demo-factory', batch.id);
  const burned = burnDevices(opened, { signingKey: stationKeys.signing.privateKey }, outDir);
  const credentials = burned.files.map((file) => loadDeviceCredentials(file));
  for (const file of burned.files) {
    if ((statSync(file).mode & 0o777) !== 0o600) throw new Error(`${file} is readable by others`);
  }
  if (credentials.some((c) => issuedText.includes(c.secret))) {
    throw new Error("a device secret appeared in the vendor's batch response");
  }
  log(
    'factory opened the sealed batch and burned the device files',
    `${burned.files.length} files (0600) in ${outDir}, ${burned.receipts.length} signed receipts`,
  );

  // A burned device whose receipt has not reached the platform cannot connect.
  const device = credentials[0]!;
  const deviceMqttUrl = device.mqttUrl ?? ctx.mqttUrl;
  try {
    const early = await DeviceClient.connect({
      url: deviceMqttUrl,
      deviceId: device.deviceId,
      secret: device.secret,
      ca: device.ca,
    });
    await early.close();
    throw new Error('a batch device connected before its burn receipt was recorded');
  } catch (error) {
    if (!(error instanceof DeviceConnectError)) throw error;
    log('a burned device without a recorded burn receipt is refused', error.code);
  }

  // The receipts go up; the platform verifies each against the station's signing key and the
  // digest of the file it issued.
  const upload = await uploadReceipts(factory, batch.id, burned.receipts);
  if (upload.accepted !== batch.deviceIds.length) {
    throw new Error(`${upload.accepted} of ${batch.deviceIds.length} burn receipts accepted`);
  }
  const afterBurn = await batchCounts();
  log(
    'burn receipts uploaded and accepted',
    `${upload.accepted} accepted (${upload.recorded} new); batch counts: issued ${afterBurn.issued}, burned ${afterBurn.burned}, activated ${afterBurn.activated}`,
  );

  // Pairing: the signed-in consumer's app gets a one-time binding token and hands it to the device
  // in pairing mode, sealed to the device's fresh provisioning key (SoftAP here; BLE works alike).
  const bindingToken = await owner.api.request<{ id: string; token: string; expiresAt: number }>(
    'POST',
    '/v1/binding-tokens',
  );
  log(
    'consumer requested a one-time binding token',
    `${bindingToken.id}, valid until ${new Date(bindingToken.expiresAt).toISOString()} (token not printed)`,
  );
  const simulator = new DeviceProvisioningSimulator({
    deviceId: device.deviceId,
    activator: deviceApiActivator({ deviceId: device.deviceId, secret: device.secret, ca: device.ca }),
  });
  const advertised = simulator.enterPairingMode('softap');
  const envelope = sealProvisioningPayload(device.deviceId, advertised.publicKey, {
    ssid: 'demo-home',
    wifiPassword: randomBytes(12).toString('base64url'),
    bindingToken: bindingToken.token,
    region: 'eu',
    platformUrl: ctx.httpUrl,
  });
  if (envelope.includes(Buffer.from(bindingToken.token)))
    throw new Error('the binding token is in clear in the payload');
  const payload = simulator.receive(envelope);
  log(
    "app sealed the SoftAP payload to the device's pairing key; the device opened it",
    `${advertised.name}: ${envelope.length} bytes, ECDH P-256 + AES-256-GCM; joined '${payload.ssid}'`,
  );

  // The device connects with its burned credentials: the first connection activates it.
  const client = await DeviceClient.connect({
    url: deviceMqttUrl,
    deviceId: device.deviceId,
    secret: device.secret,
    ca: device.ca,
  });
  ctx.clients.push(client);
  const activated = await until(batchCounts, (c) => c.activated >= 1, 'the activation to be recorded');
  log(
    'device connected over MQTT/TLS with its burned credentials: first connection activated it',
    `${device.deviceId}; batch counts: burned ${activated.burned}, activated ${activated.activated}`,
  );

  // The device presents the token over the device API (a device-signed request); the platform binds.
  const bound = await simulator.activate();
  const tokenStatus = await owner.api.request<{ status: string; deviceId: string | null }>(
    'GET',
    `/v1/binding-tokens/${bindingToken.id}`,
  );
  if (tokenStatus.status !== 'bound' || tokenStatus.deviceId !== device.deviceId) {
    throw new Error(`the binding token is ${tokenStatus.status}, not bound to ${device.deviceId}`);
  }
  log(
    'device presented the binding token over the device API and was bound',
    `at ${new Date(bound.boundAt).toISOString()}; the token is spent`,
  );
  type MyDevices = { items: { id: string; role: string }[] };
  const mine = await owner.api.request<MyDevices>('GET', '/v1/me/devices');
  const listed = mine.items.find((d) => d.id === device.deviceId);
  if (listed?.role !== 'owner') throw new Error("the bound device is not in the consumer's device list");
  log('the consumer sees the device in GET /v1/me/devices', `${device.deviceId}, role owner`);

  // Control: desired state through the shadow, a command, telemetry.
  const received: Record<string, unknown>[] = [];
  await client.onDesired((delta) => {
    received.push(delta);
  });
  await client.onCommand('blink', (command) => ({ blinked: command.params.times ?? 1 }));
  const desired = { power: 'on', brightness: 80 };
  const put = await owner.api.request<{ version: number }>('PUT', `/v1/devices/${device.deviceId}/shadow/desired`, {
    state: desired,
  });
  type ShadowView = { version: number; reported: Record<string, unknown>; delta: Record<string, unknown> };
  const shadow = await until(
    () => owner.api.request<ShadowView>('GET', `/v1/devices/${device.deviceId}/shadow`),
    (s) => Object.keys(s.delta).length === 0 && s.reported.power === 'on' && s.reported.brightness === 80,
    'the device to report the desired state',
  );
  log(
    'consumer set desired state; the device received it and reported back',
    `desired ${JSON.stringify(desired)} (version ${put.version}); device got ${JSON.stringify(received.at(-1) ?? {})}; shadow version ${shadow.version}, delta empty`,
  );
  type CommandView = { id: string; status: string; result: unknown };
  const sent = await owner.api.request<CommandView>('POST', `/v1/devices/${device.deviceId}/commands`, {
    name: 'blink',
    params: { times: 3 },
    timeoutSeconds: 10,
  });
  const outcome = await owner.api.request<CommandView>(
    'GET',
    `/v1/devices/${device.deviceId}/commands/${sent.id}?wait=true`,
  );
  if (outcome.status !== 'succeeded') throw new Error(`the command ended ${outcome.status}`);
  log(
    'consumer sent a command; the device answered',
    `${sent.id} blink → ${outcome.status}, result ${JSON.stringify(outcome.result)}`,
  );
  const reading = { power_w: 42, voltage_v: 230 };
  await client.publishTelemetry(reading);
  const latest = await owner.api.request<{ payload: Record<string, number> }>(
    'GET',
    `/v1/devices/${device.deviceId}/telemetry/latest`,
  );
  if (JSON.stringify(latest.payload) !== JSON.stringify(reading)) throw new Error('the owner read other telemetry');
  log('the device reported telemetry; the owner reads it', JSON.stringify(latest.payload));

  // Sharing: a second consumer gets guest access (view only) for a day; revoked, it is gone at once.
  const guest = await registerConsumer(ctx.api, ctx.dataDir, null, 'demo-guest');
  log('second consumer registered (proof of work, activation code) and signed in', `${guest.id}, ${guest.email}`);
  const share = await owner.api.request<{ id: string; role: string; expiresAt: number | null }>(
    'POST',
    `/v1/devices/${device.deviceId}/shares`,
    { email: guest.email, role: 'guest', expiresAt: Date.now() + 24 * 3600_000 },
  );
  log(
    'owner shared the device with the second consumer as guest',
    `${share.id}, until ${new Date(share.expiresAt!).toISOString()}`,
  );
  const seen = await guest.api.request<{ id: string; status: string }>('GET', `/v1/devices/${device.deviceId}`);
  const guestShadow = await guest.api.request<ShadowView>('GET', `/v1/devices/${device.deviceId}/shadow`);
  const guestControl = await refusal(
    guest.api.request('PUT', `/v1/devices/${device.deviceId}/shadow/desired`, { state: { power: 'off' } }),
    404,
    "a guest's change of desired state",
  );
  log(
    'the second consumer reads the device and its shadow; as guest it cannot control it',
    `${seen.id} ${seen.status}, reported power ${String(guestShadow.reported.power)}; desired change refused: ${guestControl}`,
  );
  await owner.api.request('DELETE', `/v1/devices/${device.deviceId}/shares/${share.id}`);
  const afterRevoke = await refusal(
    guest.api.request('GET', `/v1/devices/${device.deviceId}`),
    404,
    'reading the device after the share was revoked',
  );
  log('owner revoked the share; the second consumer now gets 404', afterRevoke);

  // Unbinding wipes what the platform kept for the owner: shadow, commands, telemetry, shares.
  const unbound = await owner.api.request<{ unbound: boolean }>('DELETE', `/v1/devices/${device.deviceId}/binding`);
  if (!unbound.unbound) throw new Error('the device was not unbound');
  const ownerShadow = await refusal(
    owner.api.request('GET', `/v1/devices/${device.deviceId}/shadow`),
    404,
    "the former owner's read of the shadow",
  );
  const stillMine = await owner.api.request<MyDevices>('GET', '/v1/me/devices');
  if (stillMine.items.some((d) => d.id === device.deviceId)) throw new Error('the unbound device is still listed');
  const vendorShadow = await vendorApi.request<ShadowView>('GET', `/v1/devices/${device.deviceId}/shadow`);
  const vendorCommands = await vendorApi.request<{ items: unknown[] }>(
    'GET',
    `/v1/devices/${device.deviceId}/commands`,
  );
  const vendorTelemetry = await refusal(
    vendorApi.request('GET', `/v1/devices/${device.deviceId}/telemetry/latest`),
    404,
    'reading telemetry after the unbind',
  );
  if (vendorShadow.version !== 0 || vendorCommands.items.length !== 0) {
    throw new Error(
      `the unbind left a shadow (version ${vendorShadow.version}) or ${vendorCommands.items.length} commands`,
    );
  }
  log(
    "owner unbound the device: the owner's data is wiped",
    `former owner: shadow ${ownerShadow}, not in /v1/me/devices; vendor sees shadow version 0, 0 commands, telemetry ${vendorTelemetry}`,
  );

  // Free again: the second consumer pairs it (BLE this time) with a token of their own.
  const second = await guest.api.request<{ id: string; token: string }>('POST', '/v1/binding-tokens');
  const ble = simulator.enterPairingMode('ble');
  await simulator.provision(
    sealProvisioningPayload(device.deviceId, ble.publicKey, {
      ssid: 'guest-home',
      wifiPassword: randomBytes(12).toString('base64url'),
      bindingToken: second.token,
      region: 'eu',
      platformUrl: ctx.httpUrl,
    }),
  );
  const guestDevices = await guest.api.request<MyDevices>('GET', '/v1/me/devices');
  if (guestDevices.items.find((d) => d.id === device.deviceId)?.role !== 'owner') {
    throw new Error('the device was not bound to the second consumer');
  }
  log('the unbound device can be bound again', `the second consumer paired it over BLE and owns it now`);
  return device.deviceId;
}
