// Telemetry through the whole device path: MQTT over TLS, per-device secret authentication, the per-message
// topic ACL, the JSON payload check, the batched durable write, and the QoS 1 PUBACK sent only after that
// write committed. The platform runs in a child process (bench/server-process.ts); this process only
// generates load, so the two never compete for one event loop (they still share the machine's cores).
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { DeviceClient, DeviceConnectError } from '@castellan/device';
import { deviceTopic } from '@castellan/protocol';
import type { ProvisionedDevice, ServerSample } from '../lib/ipc-messages.ts';
import { summarize } from '../lib/latency-stats.ts';
import { type MachineCpuTimes, machineCpuTimes } from '../lib/machine-info.ts';
import type { CaseResult, Column, Measure, MeasureContext } from '../lib/measure.ts';
import { PlatformProcess } from '../lib/platform-process.ts';

type Backend = 'sqlite' | 'postgres';

interface TelemetryCase {
  backend: Backend;
  devices: number;
  /** QoS 1 messages each device keeps unacknowledged (below the broker's receive maximum of 64). */
  window: number;
}

interface Plan {
  cases: readonly TelemetryCase[];
  /** Load runs this long before the window opens (TLS sessions, JIT, SQLite/PostgreSQL caches). */
  warmupMs: number;
  /** The measurement window: only acknowledgements completed inside it count. */
  measureMs: number;
}

const QUICK: Plan = {
  cases: [
    { backend: 'sqlite', devices: 10, window: 32 },
    { backend: 'postgres', devices: 10, window: 32 },
  ],
  warmupMs: 500,
  measureMs: 2_000,
};

// One device shows the latency floor of a commit cycle; 10 and 100 show how far batching carries.
const FULL: Plan = {
  cases: (['sqlite', 'postgres'] as const).flatMap((backend) =>
    [1, 10, 100].map((devices) => ({ backend, devices, window: 32 })),
  ),
  warmupMs: 2_000,
  measureMs: 10_000,
};

const CONNECT_CONCURRENCY = 16;
const DRAIN_TIMEOUT_MS = 15_000;
const CLOSE_TIMEOUT_MS = 2_000;

const BACKEND_NAMES: Record<Backend, string> = { sqlite: 'SQLite', postgres: 'PostgreSQL' };

const COLUMNS: readonly Column[] = [
  { key: 'devices', label: 'devices' },
  { key: 'window', label: 'in flight / device' },
  { key: 'payloadBytes', label: 'payload B' },
  { key: 'msgsPerSec', label: 'msgs/s' },
  { key: 'rowsPerSec', label: 'rows/s stored' },
  { key: 'p50Ms', label: 'p50 ack ms', digits: 1 },
  { key: 'p99Ms', label: 'p99 ack ms', digits: 1 },
  { key: 'acked', label: 'acked' },
  { key: 'stored', label: 'rows stored' },
  { key: 'refused', label: 'refused' },
  { key: 'rowsPerBatch', label: 'rows / commit' },
  { key: 'commitsPerSec', label: 'commits/s' },
  { key: 'serverCpuPct', label: 'server CPU %' },
  { key: 'generatorCpuPct', label: 'generator CPU %' },
  { key: 'machineCpuPct', label: 'machine CPU %' },
];

/** Two decimals are plenty for the JSON record and keep it readable. */
const round2 = (x: number | null): number | null =>
  x === null || !Number.isFinite(x) ? null : Math.round(x * 100) / 100;

/** A ~100-byte JSON object of data points, varying per message like a real sensor's. */
function telemetryBody(seq: number, now: number): string {
  return JSON.stringify({
    seq,
    ts: now,
    temperature: (2000 + (seq % 500)) / 100,
    humidity: (4000 + (seq % 900)) / 100,
    battery: 87,
    door: 'closed',
    rssi: -61,
  });
}

/** Keeps `window` QoS 1 publishes in flight per device and records what comes back. */
class TelemetryLoad {
  sent = 0;
  sentBytes = 0;
  acked = 0;
  refused = 0;
  /** Publishes that failed other than by a refusal (connection lost): the case fails. */
  failed = 0;
  disconnects = 0;
  firstError: string | undefined;
  readonly windowLatencies: number[] = [];
  windowStart = 0;
  windowEnd = 0;
  #running = true;
  #recording = false;
  readonly #workers: Promise<void>[] = [];

  constructor(clients: readonly DeviceClient[], window: number) {
    for (const client of clients) {
      client.mqtt.on('close', () => {
        if (this.#running) {
          this.disconnects++;
          this.firstError ??= `device ${client.deviceId} lost its connection during the run`;
        }
      });
      const topic = deviceTopic.telemetry(client.deviceId);
      const next = { seq: 0 };
      for (let i = 0; i < window; i++) this.#workers.push(this.#publisher(client, topic, next));
    }
  }

  async #publisher(client: DeviceClient, topic: string, next: { seq: number }): Promise<void> {
    while (this.#running) {
      const body = telemetryBody(next.seq++, Date.now());
      this.sent++;
      this.sentBytes += Buffer.byteLength(body);
      const started = performance.now();
      try {
        await client.publish(topic, body, 1);
      } catch (error) {
        if (error instanceof DeviceConnectError && error.code.startsWith('MQTT_PUBACK_')) {
          // Refused by the platform (e.g. its telemetry queue is full): counted, and the device goes on.
          this.refused++;
          this.firstError ??= error.message;
          continue;
        }
        this.failed++;
        this.firstError ??= (error as Error).message;
        return;
      }
      const ended = performance.now();
      this.acked++;
      if (this.#recording) this.windowLatencies.push(ended - started);
    }
  }

  openWindow(): void {
    this.windowStart = performance.now();
    this.#recording = true;
  }

  closeWindow(): void {
    this.#recording = false;
    this.windowEnd = performance.now();
  }

  /** Stops issuing and waits for what is in flight; false when it did not all come back in time. */
  async stop(timeoutMs: number): Promise<boolean> {
    this.#running = false;
    const timeout = sleep(timeoutMs, false, { ref: false });
    return Promise.race([Promise.all(this.#workers).then(() => true), timeout]);
  }
}

async function closeClients(clients: readonly DeviceClient[]): Promise<void> {
  await Promise.all(
    clients.map(async (client) => {
      const closed = await Promise.race([
        client.close().then(() => true),
        sleep(CLOSE_TIMEOUT_MS, false, { ref: false }),
      ]);
      if (!closed) client.mqtt.end(true);
    }),
  );
}

/** Connects every device with the SDK, a few handshakes at a time; all or nothing. */
async function connectDevices(url: string, ca: string, devices: readonly ProvisionedDevice[]): Promise<DeviceClient[]> {
  const clients: DeviceClient[] = [];
  let nextIndex = 0;
  let failure: Error | undefined;
  const lane = async () => {
    while (nextIndex < devices.length && !failure) {
      const device = devices[nextIndex++]!;
      try {
        clients.push(
          await DeviceClient.connect({
            url,
            ca,
            deviceId: device.id,
            secret: device.secret,
            protocolVersion: 5,
          }),
        );
      } catch (error) {
        failure ??= error as Error;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(CONNECT_CONCURRENCY, devices.length) }, lane));
  if (failure) {
    await closeClients(clients);
    throw new Error(`a device could not connect: ${failure.message}`);
  }
  return clients;
}

interface WindowSample {
  server: ServerSample;
  generatorCpu: NodeJS.CpuUsage;
  machine: MachineCpuTimes;
}

function takeWindowSample(platform: PlatformProcess): Promise<WindowSample> {
  const generatorCpu = process.cpuUsage();
  const machine = machineCpuTimes();
  return platform.sample(false).then((server) => ({ server, generatorCpu, machine }));
}

async function runCase(context: MeasureContext, plan: Plan, c: TelemetryCase): Promise<CaseResult> {
  const label = BACKEND_NAMES[c.backend];
  const base = { measure: 'telemetry', case: label };
  let platform: PlatformProcess | undefined;
  let clients: DeviceClient[] = [];
  try {
    context.progress(`telemetry: ${label}, ${c.devices} device(s): starting the platform`);
    platform = await PlatformProcess.start({
      label: c.backend,
      databaseUrl: c.backend === 'postgres' ? context.postgresUrl : '',
      devices: c.devices,
    });
    const { mqttUrl, caPem, devices, databaseVersion } = platform.ready;
    clients = await connectDevices(mqttUrl, caPem, devices);
    context.progress(
      `telemetry: ${label}, ${c.devices} device(s): connected, ${(plan.warmupMs + plan.measureMs) / 1000} s of load`,
    );

    const load = new TelemetryLoad(clients, c.window);
    await sleep(plan.warmupMs);
    const before = await takeWindowSample(platform);
    load.openWindow();
    await sleep(plan.measureMs);
    load.closeWindow();
    const after = await takeWindowSample(platform);
    const drained = await load.stop(DRAIN_TIMEOUT_MS);
    const final = await platform.sample(true);

    const seconds = (load.windowEnd - load.windowStart) / 1000;
    const latency = summarize(load.windowLatencies);
    const windowMicros = seconds * 1e6;
    const rows = after.server.rowsWritten - before.server.rowsWritten;
    const batches = after.server.batchesWritten - before.server.batchesWritten;
    const generatorMicros =
      after.generatorCpu.user + after.generatorCpu.system - before.generatorCpu.user - before.generatorCpu.system;
    const stored = final.storedRows ?? 0;

    const problems = [
      !drained
        ? `${load.sent - load.acked - load.refused - load.failed} publishes were not acknowledged within ${DRAIN_TIMEOUT_MS / 1000} s`
        : null,
      load.failed > 0 || load.disconnects > 0
        ? `${load.failed} publishes failed, ${load.disconnects} disconnects: ${load.firstError}`
        : null,
      stored < load.acked ? `only ${stored} rows stored for ${load.acked} acknowledged messages` : null,
      final.batchesFailed > 0 ? `${final.batchesFailed} telemetry batches failed to commit` : null,
      load.acked === 0 ? 'no message was acknowledged' : null,
    ].filter((p): p is string => p !== null);

    return {
      ...base,
      ok: problems.length === 0,
      ...(problems.length ? { error: problems.join('; ') } : {}),
      metrics: {
        devices: c.devices,
        window: c.window,
        payloadBytes: load.sent ? Math.round(load.sentBytes / load.sent) : null,
        msgsPerSec: round2(latency.count / seconds),
        // Storage: rows the telemetry writer committed inside the window (its counter, in the platform).
        rowsPerSec: round2(rows / seconds),
        p50Ms: round2(latency.p50),
        p99Ms: round2(latency.p99),
        acked: load.acked,
        stored,
        refused: load.refused,
        rowsPerBatch: round2(batches ? rows / batches : null),
        commitsPerSec: round2(batches / seconds),
        serverCpuPct: round2((100 * (after.server.cpuMicros - before.server.cpuMicros)) / windowMicros),
        generatorCpuPct: round2((100 * generatorMicros) / windowMicros),
        // In cores like the two above (200 % = both cores busy); beyond server + generator it is mostly
        // PostgreSQL and the kernel.
        machineCpuPct: round2(
          (100 * (after.machine.busyMs - before.machine.busyMs)) / (after.machine.atMs - before.machine.atMs),
        ),
      },
      details: {
        backend: c.backend,
        databaseVersion,
        windowSeconds: round2(seconds),
        windowAcks: latency.count,
        maxAckMs: round2(latency.max),
        sent: load.sent,
        commitsInWindow: batches,
        serverRefusedRows: final.rowsRefused,
        firstRefusal: load.refused ? load.firstError : undefined,
      },
    };
  } catch (error) {
    return {
      ...base,
      ok: false,
      error: (error as Error).message,
      metrics: { devices: c.devices, window: c.window },
    };
  } finally {
    await closeClients(clients);
    await platform?.stop();
  }
}

export const telemetryMeasure: Measure = {
  name: 'telemetry',
  description: 'QoS 1 telemetry msgs/s through MQTT/TLS, device auth, ACL, payload check and durable batched write',
  columns: COLUMNS,
  async run(context) {
    const plan = context.quick ? QUICK : FULL;
    const results: CaseResult[] = [];
    for (const c of plan.cases) results.push(await runCase(context, plan, c));
    return results;
  },
};
