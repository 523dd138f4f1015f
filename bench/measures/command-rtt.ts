// Command round trip (CHAN-7) as an app sees it: POST /v1/devices/:id/commands?wait=true with the vendor
// owner's session → the platform stores the command, audits it and publishes it at QoS 1 → the device (the
// SDK's DeviceClient with onCommand) runs its handler and acknowledges → the same request answers with the
// outcome (until 2026-11-22 the bench used POST, then GET …/commands/:id?wait=true: two requests). The app is the load generator here, open loop: commands are issued at
// fixed times (rate × duration, round robin over the devices) whether or not earlier ones have ended, and
// each round trip is timed from its scheduled time, so a generator or server that falls behind shows in
// the latency instead of hiding in a lower offered rate. The platform runs in a child process
// (bench/server-process.ts); the app (node:https, keep-alive) and the devices run in this one.
//
// Why the long poll and not the push stream's command.status change: the long poll is the call made for
// exactly this (one request answers one command's outcome), works for every credential an app holds,
// and needs no stream per device; the push streams are per device for a vendor
// (/v1/devices/:id/events/stream) or cover only devices bound to a person (/v1/me/events), and are
// limited per principal. It costs a second authenticated request per command, which is part of what is
// measured.
import { Agent, request as httpsRequest } from 'node:https';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { DeviceClient } from '@castellan/device';
import type { ProvisionedDevice, ServerSample } from '../lib/ipc-messages.ts';
import { summarize } from '../lib/latency-stats.ts';
import { type MachineCpuTimes, machineCpuTimes } from '../lib/machine-info.ts';
import type { CaseResult, Column, Measure, MeasureContext } from '../lib/measure.ts';
import { PlatformProcess } from '../lib/platform-process.ts';

type Backend = 'sqlite' | 'postgres';

interface Plan {
  backends: readonly Backend[];
  /** Devices connected, commands spread round robin (the platform allows 16 open commands per device). */
  devices: number;
  /** Offered commands/s, one case each on the same platform. */
  rates: readonly number[];
  /** Commands at the rate before the measured ones (TLS sessions to the API, JIT, database caches). */
  warmupMs: number;
  /** Commands scheduled inside this window are the measured ones. */
  measureMs: number;
}

// A smoke run: a few hundred commands per rate, so that a platform slower than the rate drains in seconds.
const QUICK: Plan = {
  backends: ['sqlite', 'postgres'],
  devices: 50,
  rates: [100, 1_000],
  warmupMs: 100,
  measureMs: 200,
};
// 200 devices: 5 commands/s each at 1,000/s, far below the 16 a device may have open at once.
const FULL: Plan = {
  backends: ['sqlite', 'postgres'],
  devices: 200,
  rates: [100, 1_000],
  warmupMs: 2_000,
  measureMs: 12_000,
};

/** The command's deadline: far above any round trip here, so a timeout means something broke. */
const COMMAND_TIMEOUT_SECONDS = 30;
/** One HTTP request (the long poll included) gets this long before it counts as an error. */
const REQUEST_TIMEOUT_MS = 20_000;
/** After the last command is issued, what is still running gets this long. */
const DRAIN_TIMEOUT_MS = 25_000;
const CONNECT_CONCURRENCY = 16;
const CLOSE_TIMEOUT_MS = 2_000;
/** Sockets the app may open to the API: each long poll holds one until its command ends. */
const MAX_SOCKETS = 256;
const COMMAND_NAME = 'bench-ping';
/**
 * Commands the app keeps open at most; a command due beyond that is not sent and counts as an error.
 * It bounds the run when the platform is far slower than the rate: the backlog drains in seconds.
 */
const MAX_OUTSTANDING = 1_000;

const BACKEND_NAMES: Record<Backend, string> = { sqlite: 'SQLite', postgres: 'PostgreSQL' };

const COLUMNS: readonly Column[] = [
  { key: 'rate', label: 'offered cmd/s' },
  { key: 'devices', label: 'devices' },
  { key: 'achievedPerSec', label: 'achieved cmd/s' },
  { key: 'p50Ms', label: 'p50 ms', digits: 1 },
  { key: 'p99Ms', label: 'p99 ms', digits: 1 },
  { key: 'maxMs', label: 'max ms', digits: 1 },
  { key: 'deviceP50Ms', label: 'to device p50 ms', digits: 1 },
  { key: 'deviceP99Ms', label: 'to device p99 ms', digits: 1 },
  { key: 'commands', label: 'commands' },
  { key: 'errors', label: 'errors' },
  { key: 'serverCpuPct', label: 'server CPU %' },
  { key: 'generatorCpuPct', label: 'app + devices CPU %' },
  { key: 'machineCpuPct', label: 'machine CPU %' },
];

const round2 = (x: number | null): number | null =>
  x === null || !Number.isFinite(x) ? null : Math.round(x * 100) / 100;

interface HttpAnswer {
  status: number;
  body: Record<string, unknown> | null;
}

/** The app's HTTP client: node:https over keep-alive sockets pinned to the platform's CA. */
class ApiClient {
  readonly #agent: Agent;
  readonly #url: URL;
  readonly #token: string;

  constructor(httpUrl: string, caPem: string, token: string) {
    this.#agent = new Agent({ keepAlive: true, maxSockets: MAX_SOCKETS, ca: caPem });
    this.#url = new URL(httpUrl);
    this.#token = token;
  }

  request(method: 'GET' | 'POST', path: string, body?: unknown): Promise<HttpAnswer> {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    return new Promise((resolve, reject) => {
      const req = httpsRequest(
        {
          agent: this.#agent,
          host: this.#url.hostname,
          port: this.#url.port,
          servername: 'localhost',
          method,
          path,
          headers: {
            authorization: `Bearer ${this.#token}`,
            ...(payload === undefined
              ? {}
              : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) }),
          },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (chunk: Buffer) => chunks.push(chunk));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            let parsed: Record<string, unknown> | null;
            try {
              parsed = text ? (JSON.parse(text) as Record<string, unknown>) : null;
            } catch {
              parsed = null;
            }
            resolve({ status: res.statusCode ?? 0, body: parsed });
          });
          res.on('error', reject);
        },
      );
      req.setTimeout(REQUEST_TIMEOUT_MS, () =>
        req.destroy(new Error(`no answer within ${REQUEST_TIMEOUT_MS / 1000} s`)),
      );
      req.on('error', reject);
      req.end(payload);
    });
  }

  close(): void {
    this.#agent.destroy();
  }
}

/** The platform's error code ({ error: { code } }), or what came instead. */
function errorCode(answer: HttpAnswer): string {
  const error = answer.body?.error as { code?: unknown } | undefined;
  return typeof error?.code === 'string' ? error.code : 'no error code';
}

/** A command as the generator tracks it; times are performance.now() in this process. */
interface Sent {
  scheduledAt: number;
  measured: boolean;
}

/** Issues commands open loop at a fixed rate and times each one from its scheduled time to its outcome. */
class CommandLoad {
  readonly latencies: number[] = [];
  readonly toDevice: number[] = [];
  /** End times of every successful round trip (for the rate achieved inside the window). */
  readonly completedAt: number[] = [];
  readonly errors = new Map<string, number>();
  readonly warmupErrors = new Map<string, number>();
  /** Measured commands issued and ended (either way). */
  measuredIssued = 0;
  measuredEnded = 0;
  /** How late the generator issued commands relative to their schedule (its own lag). */
  readonly sendLag: number[] = [];
  readonly #api: ApiClient;
  readonly #devices: readonly ProvisionedDevice[];
  /** Device receive times by command ID, set by the devices' handlers. */
  readonly #received: Map<string, number>;
  readonly #inflight = new Set<Promise<void>>();
  #next = 0;
  /** performance.now() when run() began: the schedule's origin. */
  scheduleStart = 0;

  constructor(api: ApiClient, devices: readonly ProvisionedDevice[], received: Map<string, number>) {
    this.#api = api;
    this.#devices = devices;
    this.#received = received;
  }

  /** Errors of measured commands are the case's; the warm-up's are kept apart (details). */
  #error(kind: string, measured: boolean): void {
    const map = measured ? this.errors : this.warmupErrors;
    map.set(kind, (map.get(kind) ?? 0) + 1);
  }

  get errorCount(): number {
    let n = 0;
    for (const count of this.errors.values()) n += count;
    return n;
  }

  async #roundTrip(sent: Sent, seq: number): Promise<void> {
    const device = this.#devices[seq % this.#devices.length]!;
    this.sendLag.push(performance.now() - sent.scheduledAt);
    let commandId: string | undefined;
    try {
      // One request: the command is issued and the answer is its outcome (POST …/commands?wait=true).
      const done = await this.#api.request('POST', `/v1/devices/${device.id}/commands?wait=true`, {
        name: COMMAND_NAME,
        params: { seq },
        timeoutSeconds: COMMAND_TIMEOUT_SECONDS,
      });
      const ended = performance.now();
      if (typeof done.body?.id === 'string') commandId = done.body.id;
      const result = done.body?.result as { seq?: unknown } | null | undefined;
      if (done.status !== 200 || commandId === undefined) {
        this.#error(`POST ${done.status} ${errorCode(done)}`, sent.measured);
      } else if (done.body?.status !== 'succeeded' || result?.seq !== seq) {
        this.#error(`outcome ${String(done.body?.status)}`, sent.measured);
      } else {
        this.completedAt.push(ended);
        if (sent.measured) {
          this.latencies.push(ended - sent.scheduledAt);
          const receivedAt = this.#received.get(commandId);
          if (receivedAt !== undefined) this.toDevice.push(receivedAt - sent.scheduledAt);
        }
      }
    } catch (error) {
      this.#error((error as Error).message, sent.measured);
    } finally {
      if (commandId) this.#received.delete(commandId);
      if (sent.measured) this.measuredEnded++;
    }
  }

  /**
   * Issues `rate` commands/s for `totalMs`; those scheduled from `measureFromMs` on are measured.
   * Returns when the last one is issued (not ended).
   */
  async run(rate: number, totalMs: number, measureFromMs: number): Promise<void> {
    const interval = 1000 / rate;
    const total = Math.round((rate * totalMs) / 1000);
    const start = performance.now();
    this.scheduleStart = start;
    let i = 0;
    while (i < total) {
      const now = performance.now();
      while (i < total && start + i * interval <= now) {
        const scheduledAt = start + i * interval;
        const measured = i * interval >= measureFromMs;
        i++;
        if (measured) this.measuredIssued++;
        if (this.#inflight.size >= MAX_OUTSTANDING) {
          this.#error(`not sent: ${MAX_OUTSTANDING} commands already open`, measured);
          if (measured) this.measuredEnded++;
          continue;
        }
        const p = this.#roundTrip({ scheduledAt, measured }, this.#next++);
        this.#inflight.add(p);
        void p.finally(() => this.#inflight.delete(p));
      }
      // A timer tick is ~1 ms: commands due meanwhile go out together on the next one, still timed from
      // their own schedule.
      await sleep(Math.max(0, Math.min(1, start + i * interval - performance.now())));
    }
  }

  /** Waits for every command still running; false when some did not end in time. */
  async drain(timeoutMs: number): Promise<boolean> {
    const timeout = sleep(timeoutMs, false, { ref: false });
    return Promise.race([Promise.all([...this.#inflight]).then(() => true), timeout]);
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

/** Connects every device with the SDK and its command handler, a few at a time; all or nothing. */
async function connectDevices(
  url: string,
  ca: string,
  devices: readonly ProvisionedDevice[],
  received: Map<string, number>,
): Promise<DeviceClient[]> {
  const clients: DeviceClient[] = [];
  let nextIndex = 0;
  let failure: Error | undefined;
  const lane = async () => {
    while (nextIndex < devices.length && !failure) {
      const device = devices[nextIndex++]!;
      try {
        const client = await DeviceClient.connect({
          url,
          ca,
          deviceId: device.id,
          secret: device.secret,
          protocolVersion: 5,
        });
        clients.push(client);
        // The device's work: note when the command arrived, answer with what it was sent.
        await client.onCommand(COMMAND_NAME, (command) => {
          received.set(command.id, performance.now());
          return { seq: command.params.seq };
        });
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

/**
 * CPU counters of the platform, this process and the machine, read together once the platform answered:
 * a platform busy with a backlog answers late, and the CPU window must be the one its counter covers.
 */
async function takeWindowSample(platform: PlatformProcess): Promise<WindowSample> {
  const server = await platform.sample(false);
  return { server, generatorCpu: process.cpuUsage(), machine: machineCpuTimes() };
}

async function runRate(
  context: MeasureContext,
  plan: Plan,
  label: string,
  rate: number,
  platform: PlatformProcess,
  api: ApiClient,
  received: Map<string, number>,
): Promise<CaseResult> {
  const base = { measure: 'command-rtt', case: `${label}, ${rate.toLocaleString('en-US')} cmd/s` };
  const fixed = { rate, devices: plan.devices };
  context.progress(
    `command-rtt: ${label}, ${rate} cmd/s for ${(plan.warmupMs + plan.measureMs) / 1000} s (${plan.warmupMs / 1000} s warm-up)`,
  );
  const load = new CommandLoad(api, platform.ready.devices, received);
  const running = load.run(rate, plan.warmupMs + plan.measureMs, plan.warmupMs);
  await sleep(plan.warmupMs);
  const before = await takeWindowSample(platform);
  await running;
  const after = await takeWindowSample(platform);
  const drained = await load.drain(DRAIN_TIMEOUT_MS);

  // The measured window is the schedule's (commands due in it); the CPU window is the samples'.
  const windowStart = load.scheduleStart + plan.warmupMs;
  const windowEnd = load.scheduleStart + plan.warmupMs + plan.measureMs;
  const seconds = (windowEnd - windowStart) / 1000;
  const windowMicros = (after.machine.atMs - before.machine.atMs) * 1000;
  const latency = summarize(load.latencies);
  const toDevice = summarize(load.toDevice);
  const lag = summarize(load.sendLag);
  const completedInWindow = load.completedAt.filter((t) => t >= windowStart && t <= windowEnd).length;
  const generatorMicros =
    after.generatorCpu.user + after.generatorCpu.system - before.generatorCpu.user - before.generatorCpu.system;
  const errors = load.errorCount;
  // Errors are reported, not failures: an overloaded platform refuses (ERR_COMMAND_LIMIT) or is late, and
  // a benchmark never fails for being slow. A run where nothing came back is broken, though.
  const problems = [
    latency.count === 0 ? `no command completed (${[...load.errors].map(([k, n]) => `${n}× ${k}`).join(', ')})` : null,
    !drained
      ? `${load.measuredIssued - load.measuredEnded} commands had not ended ${DRAIN_TIMEOUT_MS / 1000} s after the last was issued`
      : null,
  ].filter((p): p is string => p !== null);
  context.progress(
    `command-rtt: ${label}, ${rate} cmd/s: p50 ${latency.p50.toFixed(1)} ms, p99 ${latency.p99.toFixed(1)} ms, ${errors} errors`,
  );
  return {
    ...base,
    ok: problems.length === 0,
    ...(problems.length ? { error: problems.join('; ') } : {}),
    metrics: {
      ...fixed,
      achievedPerSec: round2(completedInWindow / seconds),
      p50Ms: round2(latency.p50),
      p99Ms: round2(latency.p99),
      maxMs: round2(latency.max),
      deviceP50Ms: round2(toDevice.p50),
      deviceP99Ms: round2(toDevice.p99),
      commands: load.measuredIssued,
      errors,
      serverCpuPct: round2((100 * (after.server.cpuMicros - before.server.cpuMicros)) / windowMicros),
      generatorCpuPct: round2((100 * generatorMicros) / windowMicros),
      machineCpuPct: round2((100 * (after.machine.busyMs - before.machine.busyMs)) / (windowMicros / 1000)),
    },
    details: {
      backend: label,
      cpuWindowSeconds: round2(windowMicros / 1e6),
      databaseVersion: platform.ready.databaseVersion,
      windowSeconds: round2(seconds),
      succeeded: latency.count,
      errorsByKind: Object.fromEntries(load.errors),
      warmupErrorsByKind: Object.fromEntries(load.warmupErrors),
      sendLagP50Ms: round2(lag.p50),
      sendLagP99Ms: round2(lag.p99),
      sendLagMaxMs: round2(lag.max),
      commandTimeoutSeconds: COMMAND_TIMEOUT_SECONDS,
    },
  };
}

async function runBackend(context: MeasureContext, plan: Plan, backend: Backend): Promise<CaseResult[]> {
  const label = BACKEND_NAMES[backend];
  let platform: PlatformProcess | undefined;
  let clients: DeviceClient[] = [];
  let api: ApiClient | undefined;
  const received = new Map<string, number>();
  try {
    context.progress(`command-rtt: ${label}: starting the platform with ${plan.devices} devices`);
    platform = await PlatformProcess.start({
      label: backend,
      databaseUrl: backend === 'postgres' ? context.postgresUrl : '',
      devices: plan.devices,
    });
    const { mqttUrl, httpUrl, caPem, devices, sessionToken } = platform.ready;
    clients = await connectDevices(mqttUrl, caPem, devices, received);
    api = new ApiClient(httpUrl, caPem, sessionToken);
    const results: CaseResult[] = [];
    for (const rate of plan.rates) results.push(await runRate(context, plan, label, rate, platform, api, received));
    return results;
  } catch (error) {
    return plan.rates.map((rate) => ({
      measure: 'command-rtt',
      case: `${label}, ${rate.toLocaleString('en-US')} cmd/s`,
      ok: false,
      error: (error as Error).message,
      metrics: { rate, devices: plan.devices },
    }));
  } finally {
    api?.close();
    await closeClients(clients);
    await platform?.stop();
  }
}

export const commandRttMeasure: Measure = {
  name: 'command-rtt',
  description:
    'Command round trip, open loop at a fixed rate: POST /v1/devices/:id/commands?wait=true (session) → device (SDK onCommand) → ack → the same request answers; timed from each command’s scheduled time',
  columns: COLUMNS,
  async run(context) {
    const plan = context.quick ? QUICK : FULL;
    const results: CaseResult[] = [];
    for (const backend of plan.backends) results.push(...(await runBackend(context, plan, backend)));
    return results;
  },
};
