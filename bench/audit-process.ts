// The audit log under test, in its own process (see bench/README.md, "audit", for why). Started by the
// runner with fork(); everything it needs arrives over IPC (see lib/ipc-messages.ts):
//   runner → 'start' → opens the store (fresh SQLite file or PostgreSQL schema), migrates, opens AuditLog,
//                      appends N entries through record(), writes a checkpoint, closes the log, verifies
//                      it with verifyAuditLog → 'progress' lines along the way, then 'result'
//   runner → 'stop' (or disconnect, SIGINT, SIGTERM) → closes the log and the store, drops the schema, exits.
// record() is called in this process on purpose: the platform calls it in-process too (API handlers,
// broker hooks), so the cost of building the events is the caller's cost there as well.
import { randomBytes } from 'node:crypto';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { sql } from 'kysely';
import { pino } from 'pino';
import {
  type AuditEvent,
  AuditLog,
  maskDetails,
  readFileCheckpoints,
  verifyAuditLog,
} from '../packages/server/src/audit/index.ts';
import { migrateToLatest, openStore, type Store } from '../packages/server/src/store/index.ts';
import type { AuditChildMessage, AuditRunnerMessage, AuditRunOptions, AuditRunResult } from './lib/ipc-messages.ts';
import { machineCpuTimes } from './lib/machine-info.ts';
import { dropBenchSchema } from './lib/pg-schema.ts';

let options: AuditRunOptions | undefined;
let store: Store | undefined;
let audit: AuditLog | undefined;
/** Set by stop(): no new record() calls. */
let aborted = false;
let stopping: Promise<void> | undefined;

/** Resolves once the message is handed to the channel, so that exiting right after cannot lose it. */
function send(message: AuditChildMessage): Promise<void> {
  if (!process.connected) return Promise.resolve();
  return new Promise((resolve) => process.send!(message, undefined, undefined, () => resolve()));
}

function progress(line: string): void {
  void send({ type: 'progress', line });
}

const fmt = (n: number) => Math.round(n).toLocaleString('en-US');

// ---- Realistic events: the platform's own event types, actors and detail shapes ----

const VENDORS = 50;
const DEVICES = 5_000;

function hex(bytes: number): string {
  return randomBytes(bytes).toString('hex');
}

function makeEventSource(): (i: number) => AuditEvent {
  const vendors = Array.from({ length: VENDORS }, () => ({
    id: `vnd_${randomBytes(16).toString('base64url')}`,
    code: hex(3),
    product: hex(3),
    credentialId: `key_${randomBytes(16).toString('base64url')}`,
  }));
  // Device IDs as the protocol defines them: 01 | vendor code | product code | random | extension.
  const devices = Array.from({ length: DEVICES }, (_, d) => {
    const v = vendors[d % VENDORS]!;
    return { id: `01${v.code}${v.product}${hex(4)}00`, vendor: v };
  });
  const ips = Array.from({ length: 512 }, (_, k) =>
    k % 8 === 7
      ? `2001:db8:${(k * 7919) % 65536}::${(k % 250) + 1}`
      : `${k % 2 ? '198.51.100' : '203.0.113'}.${(k % 254) + 1}`,
  );
  const adminId = `adm_${randomBytes(16).toString('base64url')}`;

  return (i) => {
    // A cheap deterministic spread over devices, IPs and event kinds (Knuth's multiplicative hash).
    const r = Math.imul(i + 1, 2654435761) >>> 0;
    const device = devices[r % DEVICES]!;
    const vendor = device.vendor;
    const ip = ips[(r >>> 13) % ips.length]!;
    const requestId = `req-${(i * 31).toString(36)}`;
    switch (i % 20) {
      case 10:
        return {
          actor: { type: 'device', id: 'unknown' },
          type: 'device.connect',
          sourceIp: ip,
          result: 'failure',
          details: { reason: 'bad-credentials' },
        };
      case 11:
        return {
          actor: { type: 'device', id: device.id },
          tenant: vendor.id,
          type: 'device.connect',
          target: device.id,
          sourceIp: ip,
          result: 'denied',
          details: { reason: 'quarantined' },
        };
      case 12:
      case 13:
        return {
          actor: { type: 'system', id: 'guard' },
          tenant: vendor.id,
          type: 'guard.rate-limited',
          target: device.id,
          result: 'denied',
          details: { limit: 'deviceMessagesPerSecond', max: 100, windowMs: 1000 },
        };
      case 14:
      case 15:
        return {
          actor: { type: 'operator', id: vendor.id },
          tenant: vendor.id,
          type: 'device.issue',
          target: device.id,
          sourceIp: ip,
          result: 'success',
          details: { count: 1, requestId, credentialId: vendor.credentialId },
        };
      case 16:
        return {
          actor: { type: 'operator', id: vendor.id },
          tenant: vendor.id,
          type: 'device.release',
          target: device.id,
          sourceIp: ip,
          result: 'success',
          details: { requestId, credentialId: vendor.credentialId },
        };
      case 17:
        return {
          actor: { type: 'system', id: 'anonymous' },
          type: 'api.auth-failure',
          sourceIp: ip,
          result: 'failure',
          details: { reason: 'invalid-token', requestId, token: 'cst_never-stored' },
        };
      case 18:
        return {
          actor: { type: 'operator', id: vendor.id },
          tenant: vendor.id,
          type: 'product.create',
          target: `prd_${vendor.product}`,
          sourceIp: ip,
          result: 'success',
          details: { name: 'Bench Sensor', category: 'sensor', requestId, credentialId: vendor.credentialId },
        };
      case 19:
        return {
          actor: { type: 'admin', id: adminId },
          type: 'guard.unblock',
          target: ip,
          sourceIp: '192.0.2.10',
          result: 'success',
          details: { requestId, reason: 'false positive' },
        };
      default:
        return {
          actor: { type: 'device', id: device.id },
          tenant: vendor.id,
          type: 'device.connect',
          target: device.id,
          sourceIp: ip,
          result: 'success',
          details: { protocolVersion: 5 },
        };
    }
  };
}

// ---- The run ----

interface AppendOutcome {
  appended: number;
  failures: number;
  firstError: string | null;
  seconds: number;
}

/**
 * Keeps `window` record() promises outstanding until `entries` were issued. New records are issued from
 * a macrotask (setImmediate), the way the platform's callers arrive (network events), not from the
 * resolution callbacks themselves.
 */
function appendAll(log: AuditLog, o: AuditRunOptions, eventOf: (i: number) => AuditEvent): Promise<AppendOutcome> {
  return new Promise((resolve) => {
    const started = performance.now();
    const progressStep = Math.max(1, Math.ceil(o.entries / 10));
    let issued = 0;
    let outstanding = 0;
    let appended = 0;
    let failures = 0;
    let firstError: string | null = null;
    let refillScheduled = false;
    const finishIfDone = () => {
      if (outstanding === 0 && (issued >= o.entries || aborted || failures > 0)) {
        resolve({ appended, failures, firstError, seconds: (performance.now() - started) / 1000 });
      }
    };
    const refill = () => {
      refillScheduled = false;
      // One failure is enough to fail the case; stop issuing and let what is in flight settle.
      while (outstanding < o.window && issued < o.entries && !aborted && failures === 0) {
        const event = eventOf(issued++);
        outstanding++;
        log.record(event).then(onCommitted, onFailed);
      }
      finishIfDone();
    };
    const settled = () => {
      outstanding--;
      if (!refillScheduled) {
        refillScheduled = true;
        setImmediate(refill);
      }
    };
    const onCommitted = () => {
      appended++;
      if (appended % progressStep === 0) {
        const seconds = (performance.now() - started) / 1000;
        progress(`${fmt(appended)} / ${fmt(o.entries)} appended, ${fmt(appended / seconds)} entries/s so far`);
      }
      settled();
    };
    const onFailed = (error: unknown) => {
      failures++;
      firstError ??= (error as Error).message ?? String(error);
      settled();
    };
    refill();
  });
}

async function databaseInfo(s: Store): Promise<{ version: string; bytes: number | null }> {
  if (s.dialect === 'postgres') {
    const row = await sql<{ v: string; n: number }>`select version() as v,
      pg_total_relation_size('audit_entries') + pg_total_relation_size('audit_nodes')
        + pg_total_relation_size('audit_checkpoints') + pg_total_relation_size('audit_ip_keys') as n`.execute(s.db);
    return { version: row.rows[0]?.v ?? 'unknown', bytes: Number(row.rows[0]?.n ?? Number.NaN) };
  }
  const version = await sql<{ v: string }>`select 'SQLite ' || sqlite_version() as v`.execute(s.db);
  const count = await sql<{ page_count: number }>`pragma page_count`.execute(s.db);
  const size = await sql<{ page_size: number }>`pragma page_size`.execute(s.db);
  return {
    version: version.rows[0]?.v ?? 'unknown',
    bytes: Number(count.rows[0]?.page_count) * Number(size.rows[0]?.page_size),
  };
}

async function run(o: AuditRunOptions): Promise<AuditRunResult> {
  options = o;
  store = await openStore({
    url: o.databaseUrl,
    dataDir: o.dataDir,
    sqliteFile: 'castellan.db',
    poolMax: 10,
    ...(o.schema ? { schema: o.schema } : {}),
  });
  await migrateToLatest(store.db, store.dialect);
  const { version } = await databaseInfo(store);
  audit = await AuditLog.open({
    db: store.db,
    dialect: store.dialect,
    rootKey: randomBytes(32),
    dataDir: o.dataDir,
    log: pino({ level: 'silent' }),
    batchMaxRows: o.batchMaxRows,
    queueMaxRows: o.queueMaxRows,
    checkpointIntervalMs: 0,
    retentionDays: 400,
    ipRetentionDays: 30,
    witnessUrl: '',
  });
  // The verifier gets the public key the way an auditor would: from outside the log, not from the store.
  const publicKey = audit.signer.publicKey;
  progress(`${version.split(' on ')[0]} ready; appending ${fmt(o.entries)} entries, ${fmt(o.window)} in flight`);

  // What the stored form looks like for this mix (details are masked and serialised by the log itself).
  const eventOf = makeEventSource();
  let withSourceIp = 0;
  let detailsBytes = 0;
  for (let i = 0; i < 20; i++) {
    const e = eventOf(i);
    if (e.sourceIp) withSourceIp++;
    detailsBytes += Buffer.byteLength(JSON.stringify(maskDetails(e.details ?? {})));
  }

  // 1. Appends.
  const loopDelay = monitorEventLoopDelay({ resolution: 10 });
  const stats0 = { ...audit.stats };
  const cpu0 = process.cpuUsage();
  const machine0 = machineCpuTimes();
  loopDelay.enable();
  const appended = await appendAll(audit, o, eventOf);
  loopDelay.disable();
  const machine1 = machineCpuTimes();
  const cpu1 = process.cpuUsage(cpu0);
  const stats1 = { ...audit.stats };
  progress(
    `${fmt(appended.appended)} appended in ${appended.seconds.toFixed(1)} s (${fmt(appended.appended / appended.seconds)} entries/s); checkpoint, close, verify`,
  );

  // 2. A signed checkpoint over everything, then the log is closed (as before `castellan audit verify`).
  let t = performance.now();
  await audit.checkpoint('on-demand');
  const checkpointSeconds = (performance.now() - t) / 1000;
  t = performance.now();
  await audit.close();
  const closeSeconds = (performance.now() - t) / 1000;

  // 3. Verification of the whole log, as the CLI runs it.
  const rssBeforeVerify = process.memoryUsage.rss();
  const vcpu0 = process.cpuUsage();
  t = performance.now();
  const verified = await verifyAuditLog({
    db: store.db,
    publicKey,
    fileCheckpoints: readFileCheckpoints(o.dataDir),
  });
  const verifySeconds = (performance.now() - t) / 1000;
  const vcpu1 = process.cpuUsage(vcpu0);
  const rssAfterVerify = process.memoryUsage.rss();
  const { bytes } = await databaseInfo(store);

  return {
    dialect: store.dialect,
    databaseVersion: version,
    appended: appended.appended,
    recordFailures: appended.failures,
    firstRecordError: appended.firstError,
    appendSeconds: appended.seconds,
    batches: stats1.batches - stats0.batches,
    failedBatches: stats1.failedBatches - stats0.failedBatches,
    refused: stats1.refused - stats0.refused,
    withSourceIp: Math.round((withSourceIp / 20) * o.entries),
    detailsBytes: detailsBytes / 20,
    appendCpuMicros: cpu1.user + cpu1.system,
    appendMachineBusyMs: machine1.busyMs - machine0.busyMs,
    loopDelayP99Ms: loopDelay.percentile(99) / 1e6,
    loopDelayMaxMs: loopDelay.max / 1e6,
    checkpointSeconds,
    closeSeconds,
    verifySeconds,
    verifyCpuMicros: vcpu1.user + vcpu1.system,
    verifyOk: verified.ok,
    verifyEntries: verified.entries,
    verifyTreeSize: verified.treeSize,
    checkpointsVerified: verified.checkpointsVerified,
    unattested: verified.unattested,
    problems: verified.problems.slice(0, 5).map((p) => `${p.kind} at ${p.position ?? '?'}: ${p.detail}`),
    databaseBytes: bytes,
    rssBeforeVerifyMiB: rssBeforeVerify / 2 ** 20,
    rssAfterVerifyMiB: rssAfterVerify / 2 ** 20,
    maxRssMiB: process.resourceUsage().maxRSS / 1024,
  };
}

/** Closes the log and the store and drops the schema; idempotent, exits the process when done. */
function stop(exitCode: number): Promise<void> {
  stopping ??= (async () => {
    aborted = true;
    try {
      // Bounded: at most `window` entries are queued, and close() writes them and a checkpoint.
      await audit?.close();
      await store?.close();
      if (options?.schema) await dropBenchSchema(options.databaseUrl, options.schema);
      await send({ type: 'stopped' });
    } catch (error) {
      // Without a store (e.g. PostgreSQL unreachable) the start failure already said why.
      if (store) process.stderr.write(`audit-process: cleanup failed: ${(error as Error).message}\n`);
      exitCode = 1;
    }
    process.exit(exitCode);
  })();
  return stopping;
}

process.on('message', (message: AuditRunnerMessage) => {
  switch (message.type) {
    case 'start':
      run(message.options).then(
        (result) => send({ type: 'result', result }),
        async (error: unknown) => {
          await send({ type: 'failed', message: (error as Error).message ?? String(error) });
          await stop(1);
        },
      );
      break;
    case 'stop':
      void stop(0);
      break;
  }
});
// A runner that went away (crash, Ctrl-C) must not leave a schema behind.
process.on('disconnect', () => void stop(1));
process.on('SIGINT', () => void stop(130));
process.on('SIGTERM', () => void stop(143));
