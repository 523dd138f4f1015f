// Connections held: idle MQTT over TLS device connections one machine holds, and the server's memory per
// connection (resident set after − before, over the connections opened in between). Each connection is
// a real device: TLS (resuming one session ticket per generator process where the server allows it),
// MQTT 5 CONNECT with the device's own credentials, CONNACK, then idle with a 600 s keep-alive. The
// load generator (lib/connection-swarm.ts) spreads over several processes (≤ 15,000 sockets each: a
// process may open 20,000 files here) and loopback source addresses 127.0.0.2, 127.0.0.3, … (20,000
// each, under one address's ~28,000 ephemeral ports).
//
// Cases: Mosquitto (one process, password file, ACL file) and Castellan in one process at an equal count
// Mosquitto can hold under the file limit, with their ratio of memory per connection; then Castellan in
// scale mode (`castellan up`, cluster.workers processes over PostgreSQL and Redis) at the fleet size the
// goal names (100,000 idle TLS devices at ≤ 30 KiB each), or what CASTELLAN_BENCH_CONNECTIONS asks for.
//
// Before the baseline is read, a few warm-up devices connect and stay connected: the first connections
// pay for one-time costs (code compiled, caches and pools filled) that are not per connection.
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { CastellanCluster } from '../lib/castellan-cluster.ts';
import { BenchChild } from '../lib/bench-child.ts';
import { ConnectionSwarm, MAX_PER_PROCESS, type SwarmResult, swarmProcessesFor } from '../lib/connection-swarm.ts';
import type { ProvisionChildMessage, ProvisionRunnerMessage } from '../lib/connections-provision-process.ts';
import type { CaseResult, Column, Measure, MeasureContext, MetricValue } from '../lib/measure.ts';
import { mosquittoVersion, startMosquitto } from '../lib/mosquitto-broker.ts';
import { peerDevices, procCpuMicros } from '../lib/peer-broker.ts';
import { PlatformProcess } from '../lib/platform-process.ts';
import { childPids, totalRssBytes } from '../lib/process-tree.ts';

interface Plan {
  /** Connections in the Mosquitto and Castellan single-process cases (the equal count). */
  equal: number;
  /** Scale-mode case, or null to leave it out. */
  scale: { connections: number; workers: number } | null;
  /** Connections opened and kept before the baseline (not counted in the per-connection figure). */
  warmup: number;
  /** Connects in progress at once over the whole swarm. */
  concurrency: number;
  /** Pause after the last connect before the resident set is read (audit batches, presence writes). */
  settleMs: number;
  /** How long the connections are then held, checked for drops at the end. */
  holdMs: number;
}

const SCALE_TARGET = 100_000;
// FULL's defaults fit the ~4 minutes a measure gets on the 2-core machine (~3.5 min): Castellan connects
// ~250 devices/s there in one process and ~120/s in scale mode, Mosquitto ~340/s (see bench/README.md).
// The goal's run (15,000 against Mosquitto, 100,000 in scale mode) takes ~15–20 minutes:
//   CASTELLAN_BENCH_EQUAL_CONNECTIONS=15000 CASTELLAN_BENCH_CONNECTIONS=100000 CASTELLAN_BENCH_WORKERS=7
//   CASTELLAN_BENCH_WATCHDOG_SECONDS=3600 npm run bench -- --only connections
const FULL_EQUAL_DEFAULT = 5_000;
const FULL_SCALE_DEFAULT = 10_000;
const FULL_WORKERS_DEFAULT = 4;
const DEFAULT_REDIS_URL = 'redis://127.0.0.1:6379';
/** A worker holds at most this many (it may open 20,000 files, PostgreSQL and the rest included). */
const MAX_PER_WORKER = 16_000;

function envInt(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 1) throw new Error(`${name} must be a positive integer (got ${raw})`);
  return value;
}

const QUICK: Plan = { equal: 150, scale: null, warmup: 10, concurrency: 32, settleMs: 500, holdMs: 500 };

function fullPlan(): Plan {
  const connections = envInt('CASTELLAN_BENCH_CONNECTIONS', FULL_SCALE_DEFAULT);
  const workers = Math.max(
    envInt('CASTELLAN_BENCH_WORKERS', FULL_WORKERS_DEFAULT),
    Math.ceil(connections / MAX_PER_WORKER),
  );
  return {
    equal: envInt('CASTELLAN_BENCH_EQUAL_CONNECTIONS', FULL_EQUAL_DEFAULT),
    scale: { connections, workers },
    warmup: 200,
    concurrency: 64,
    settleMs: 3_000,
    holdMs: 5_000,
  };
}

const COLUMNS: readonly Column[] = [
  { key: 'target', label: 'target' },
  { key: 'held', label: 'held' },
  { key: 'failed', label: 'failed' },
  { key: 'connectsPerSec', label: 'connects/s' },
  { key: 'tlsMs', label: 'TLS ms', digits: 1 },
  { key: 'connackMs', label: 'CONNACK ms', digits: 1 },
  { key: 'resumedPct', label: 'TLS resumed %' },
  { key: 'processes', label: 'server processes' },
  { key: 'rssBeforeMiB', label: 'RSS before MiB', digits: 1 },
  { key: 'rssAfterMiB', label: 'RSS after MiB', digits: 1 },
  { key: 'kibPerConnection', label: 'KiB / connection', digits: 1 },
  { key: 'ratio', label: '× Mosquitto KiB/conn', digits: 2 },
  { key: 'serverCpuPct', label: 'server CPU % (connecting)' },
  { key: 'generatorRssMiB', label: 'generator RSS MiB' },
];

const MiB = 2 ** 20;
const round1 = (x: number): number => Math.round(x * 10) / 10;
const round2 = (x: number | null): number | null =>
  x === null || !Number.isFinite(x) ? null : Math.round(x * 100) / 100;

/** The server under test as the case sees it. */
interface Server {
  host: string;
  port: number;
  caPem: string;
  servername: string;
  rssBytes(): number;
  cpuMicros(): number;
  processes(): number;
}

interface Held {
  main: SwarmResult;
  warm: SwarmResult;
  rssBefore: number;
  rssAfter: number;
  open: number;
  dropped: number;
  firstDrop: string | null;
  generatorRssMiB: number;
  serverCpuPct: number;
  processes: number;
}

/** Warm-up connections, baseline, the counted connections, settle, resident set, hold, drop check. */
async function holdConnections(
  context: MeasureContext,
  plan: Plan,
  label: string,
  server: Server,
  devices: ReadonlyArray<{ id: string; secret: string }>,
): Promise<Held> {
  const swarm = ConnectionSwarm.start(swarmProcessesFor(devices.length), label);
  try {
    const target = { host: server.host, port: server.port, ca: server.caPem, servername: server.servername };
    const common = {
      concurrency: plan.concurrency,
      progress: (line: string) => context.progress(line),
      label: `connections: ${label}`,
    };
    const warm = await swarm.connect(target, devices.slice(0, plan.warmup), common);
    await sleep(plan.settleMs);
    const rssBefore = server.rssBytes();
    const cpuBefore = server.cpuMicros();
    const main = await swarm.connect(target, devices.slice(plan.warmup), common);
    const serverCpuPct = (100 * (server.cpuMicros() - cpuBefore)) / 1e6 / Math.max(main.seconds, 0.001);
    await sleep(plan.settleMs);
    const rssAfter = server.rssBytes();
    const processes = server.processes();
    await sleep(plan.holdMs);
    const check = await swarm.check();
    return {
      main,
      warm,
      rssBefore,
      rssAfter,
      open: check.open,
      dropped: check.dropped,
      firstDrop: check.firstDrop,
      generatorRssMiB: check.generatorRssMiB,
      serverCpuPct,
      processes,
    };
  } finally {
    await swarm.stop();
  }
}

function caseResult(name: string, target: number, held: Held, details: Record<string, unknown>): CaseResult {
  const counted = held.main.connected;
  const kib = counted > 0 ? (held.rssAfter - held.rssBefore) / 1024 / counted : null;
  const attempted = held.main.devices + held.warm.devices;
  const problems = [
    held.main.failed + held.warm.failed > 0
      ? `${held.main.failed + held.warm.failed} of ${attempted} devices could not connect (${JSON.stringify({ ...held.warm.reasons, ...held.main.reasons })})`
      : null,
    held.dropped > 0 ? `${held.dropped} connections were dropped while held: ${held.firstDrop}` : null,
    counted === 0 ? 'no connection was counted' : null,
  ].filter((p): p is string => p !== null);
  const metrics: Record<string, MetricValue> = {
    target,
    // Over the counted connections (the warm-up ones are held too, but counted apart).
    held: held.open - held.warm.connected,
    failed: held.main.failed + held.warm.failed,
    connectsPerSec: Math.round(held.main.perSecond),
    tlsMs: round1(held.main.meanTlsMs),
    connackMs: round1(held.main.meanConnackMs),
    resumedPct: round1((100 * held.main.resumed) / Math.max(1, counted)),
    processes: held.processes,
    rssBeforeMiB: round1(held.rssBefore / MiB),
    rssAfterMiB: round1(held.rssAfter / MiB),
    kibPerConnection: kib === null ? null : round2(kib),
    ratio: null,
    serverCpuPct: Math.round(held.serverCpuPct),
    generatorRssMiB: held.generatorRssMiB,
  };
  return {
    measure: 'connections',
    case: name,
    ok: problems.length === 0,
    ...(problems.length ? { error: problems.join('; ') } : {}),
    metrics,
    details: {
      ...details,
      warmupConnections: held.warm.connected,
      countedConnections: counted,
      connectSeconds: round2(held.main.seconds),
      retries: held.main.retries + held.warm.retries,
      failureReasons: { ...held.warm.reasons, ...held.main.reasons },
      rssDeltaMiB: round1((held.rssAfter - held.rssBefore) / MiB),
    },
  };
}

function failed(name: string, target: number, error: unknown): CaseResult {
  return {
    measure: 'connections',
    case: name,
    ok: false,
    error: (error as Error).message ?? String(error),
    metrics: { target },
  };
}

async function mosquittoCase(context: MeasureContext, plan: Plan): Promise<CaseResult> {
  const version = mosquittoVersion();
  const name = `Mosquitto ${version} (1 process)`;
  const total = plan.warmup + plan.equal;
  let broker: Awaited<ReturnType<typeof startMosquitto>> | undefined;
  try {
    context.progress(`connections: Mosquitto: starting with ${total} device accounts`);
    const accounts = peerDevices(total);
    broker = await startMosquitto({
      devices: accounts,
      consumer: { username: 'bench-consumer', password: randomBytes(18).toString('base64url') },
      prefix: '[mosquitto connections] ',
    });
    const b = broker;
    const server: Server = {
      host: '127.0.0.1',
      port: b.port,
      caPem: b.caPem,
      servername: 'localhost',
      rssBytes: () => b.rssBytes(),
      cpuMicros: () => b.cpuMicros(),
      processes: () => 1,
    };
    const devices = accounts.map((a) => ({ id: a.username, secret: a.password }));
    const held = await holdConnections(context, plan, 'Mosquitto', server, devices);
    return caseResult(name, plan.equal, held, { broker: 'mosquitto', version });
  } catch (error) {
    return failed(name, plan.equal, error);
  } finally {
    await broker?.stop();
  }
}

async function castellanSingleCase(context: MeasureContext, plan: Plan): Promise<CaseResult> {
  const name = 'Castellan (1 process, SQLite)';
  const total = plan.warmup + plan.equal;
  let platform: PlatformProcess | undefined;
  try {
    context.progress(`connections: Castellan: starting one process with ${total} devices`);
    const started = performance.now();
    platform = await PlatformProcess.start({ label: 'connections', databaseUrl: '', devices: total });
    const provisionSeconds = (performance.now() - started) / 1000;
    // The platform process is this process's child running bench/server-process.ts (one at a time here).
    const [pid] = childPids(process.pid, 'server-process.ts');
    if (pid === undefined) throw new Error('the platform process was not found in /proc');
    const { mqttUrl, caPem, devices } = platform.ready;
    const server: Server = {
      host: '127.0.0.1',
      port: Number(new URL(mqttUrl).port),
      caPem,
      servername: 'localhost',
      rssBytes: () => totalRssBytes([pid]),
      cpuMicros: () => procCpuMicros(pid),
      processes: () => 1,
    };
    const held = await holdConnections(context, plan, 'Castellan', server, devices);
    return caseResult(name, plan.equal, held, { startAndProvisionSeconds: round2(provisionSeconds) });
  } catch (error) {
    return failed(name, plan.equal, error);
  } finally {
    await platform?.stop();
  }
}

async function castellanScaleCase(
  context: MeasureContext,
  plan: Plan,
  scale: { connections: number; workers: number },
): Promise<CaseResult> {
  const name = `Castellan scale mode (${scale.workers} workers, PostgreSQL + Redis)`;
  const total = plan.warmup + scale.connections;
  const provisioner = new BenchChild<ProvisionRunnerMessage, ProvisionChildMessage>({
    script: new URL('../lib/connections-provision-process.ts', import.meta.url),
    name: 'provisioning',
    prefix: '[provision connections] ',
    databaseUrl: context.postgresUrl,
  });
  let cluster: CastellanCluster | undefined;
  try {
    context.progress(`connections: scale mode: provisioning ${total} devices in PostgreSQL`);
    const ready = provisioner.next('ready', 600_000, 'provisioning did not finish');
    provisioner.send({
      type: 'start',
      options: {
        dataDir: provisioner.dataDir,
        databaseUrl: provisioner.databaseUrl,
        schema: provisioner.schema,
        devices: total,
      },
    });
    const { devices, caPem, seconds: provisionSeconds } = await ready;
    context.progress(
      `connections: scale mode: ${devices.length} devices provisioned in ${provisionSeconds.toFixed(1)} s; starting ${scale.workers} workers`,
    );
    const startedAt = performance.now();
    cluster = await CastellanCluster.start({
      dataDir: provisioner.dataDir,
      databaseUrl: provisioner.databaseUrl,
      schema: provisioner.schema,
      redisUrl: process.env.CASTELLAN_BENCH_REDIS_URL || DEFAULT_REDIS_URL,
      redisKeyPrefix: `castellan-bench-${randomBytes(6).toString('hex')}:`,
      workers: scale.workers,
      maxConnectionsPerWorker: MAX_PER_WORKER + 2_000,
      prefix: '[castellan scale] ',
    });
    const clusterStartSeconds = (performance.now() - startedAt) / 1000;
    const c = cluster;
    const server: Server = {
      host: '127.0.0.1',
      port: c.mqttPort,
      caPem,
      servername: 'localhost',
      rssBytes: () => c.rssBytes(),
      cpuMicros: () => c.pids().reduce((sum, pid) => sum + procCpuMicros(pid), 0),
      processes: () => c.pids().length,
    };
    const held = await holdConnections(context, plan, `Castellan ×${scale.workers}`, server, devices);
    return caseResult(name, scale.connections, held, {
      workers: scale.workers,
      provisionSeconds: round2(provisionSeconds),
      clusterStartSeconds: round2(clusterStartSeconds),
      goal: `${SCALE_TARGET} idle TLS devices at <= 30 KiB each`,
    });
  } catch (error) {
    return failed(name, scale.connections, error);
  } finally {
    await cluster?.stop();
    await provisioner.stop();
  }
}

export const connectionsMeasure: Measure = {
  name: 'connections',
  description:
    'Idle MQTT/TLS device connections held (TLS + CONNECT with credentials, then idle) and server RSS per connection',
  columns: COLUMNS,
  async run(context) {
    const plan = context.quick ? QUICK : fullPlan();
    if (plan.equal > MAX_PER_PROCESS)
      context.progress(`connections: ${plan.equal} is above what one Mosquitto process can open here`);
    const started = performance.now();
    const mosquitto = await mosquittoCase(context, plan);
    const single = await castellanSingleCase(context, plan);
    const mosquittoKib = mosquitto.ok ? mosquitto.metrics.kibPerConnection : null;
    const singleKib = single.ok ? single.metrics.kibPerConnection : null;
    if (typeof mosquittoKib === 'number' && typeof singleKib === 'number' && mosquittoKib > 0)
      single.metrics.ratio = round2(singleKib / mosquittoKib);
    const results = [mosquitto, single];
    if (plan.scale) results.push(await castellanScaleCase(context, plan, plan.scale));
    context.progress(`connections: done in ${((performance.now() - started) / 1000).toFixed(0)} s`);
    return results;
  },
};
