// A swarm of idle device connections spread over several processes (lib/connection-swarm-process.ts),
// for the connections-held measure. One process may open at most 20,000 files here, so each holds at most
// MAX_PER_PROCESS sockets; and one source address has ~28,000 ephemeral ports (32768–60999), so
// connection i binds 127.0.0.(2 + ⌊i / PER_ADDRESS⌋). The runner splits each batch of devices over the
// processes, shows their combined progress and waits with a stall timeout (bounded as long as it moves).
import { availableParallelism } from 'node:os';
import { BenchChild } from './bench-child.ts';

const SWARM_SCRIPT = new URL('./connection-swarm-process.ts', import.meta.url);
/** Sockets one generator process holds at most (its file limit is 20,000). */
export const MAX_PER_PROCESS = 15_000;
/** Connections per loopback source address (its ephemeral port range is ~28,000). */
export const PER_ADDRESS = 20_000;
const CHECK_TIMEOUT_MS = 15_000;
const PROGRESS_EVERY_MS = 5_000;

/** A batch of devices as one swarm process gets it. */
export interface SwarmBatch {
  host: string;
  port: number;
  /** CA that verifies the server; '' skips verification (never used by the bench). */
  ca: string;
  servername: string;
  protocolVersion: 4 | 5;
  keepAliveSeconds: number;
  /** [device ID, secret] */
  devices: Array<[string, string]>;
  /** Source address of each device's connection. */
  localAddresses: string[];
  /** Connects in progress at once in this process. */
  concurrency: number;
  /** Resume the process's latest TLS session ticket. */
  resume: boolean;
  /** Attempts per device (a refused or failed connect is retried after retryDelayMs ± 50 %). */
  attempts: number;
  retryDelayMs: number;
  connectTimeoutMs: number;
}

export interface SwarmBatchResult {
  connected: number;
  /** Devices that could not connect within their attempts. */
  failed: number;
  /** Connections whose TLS handshake resumed a session. */
  resumed: number;
  retries: number;
  /** Failure reasons with their counts (attempts, not devices). */
  reasons: Record<string, number>;
  /** Mean time of a successful connection's TCP + TLS handshake, and of its CONNECT → CONNACK (ms). */
  meanTlsMs: number;
  meanConnackMs: number;
  seconds: number;
}

export type SwarmRunnerMessage = { type: 'connect'; batch: SwarmBatch } | { type: 'check' } | { type: 'stop' };

export type SwarmChildMessage =
  | { type: 'progress'; connected: number; failed: number; attempted: number }
  | { type: 'connected'; result: SwarmBatchResult }
  | { type: 'held'; open: number; dropped: number; firstDrop: string | null; memoryRssBytes: number }
  | { type: 'failed'; message: string }
  | { type: 'stopped' };

export interface SwarmTarget {
  host: string;
  port: number;
  ca: string;
  servername: string;
  protocolVersion?: 4 | 5;
  keepAliveSeconds?: number;
}

export interface ConnectOptions {
  /** Connects in progress at once over all processes (keep it under the server's handshake cap). */
  concurrency: number;
  resume?: boolean;
  attempts?: number;
  retryDelayMs?: number;
  connectTimeoutMs?: number;
  /** A batch fails when no device connected or failed for this long. */
  stallTimeoutMs?: number;
  progress?: (line: string) => void;
  label?: string;
}

export interface SwarmResult extends SwarmBatchResult {
  devices: number;
  /** Connected per second of the batch's wall-clock time. */
  perSecond: number;
}

export interface HeldSample {
  open: number;
  dropped: number;
  firstDrop: string | null;
  /** Sum of the generator processes' resident sets (MiB). */
  generatorRssMiB: number;
}

/** Source address of the i-th connection of the swarm: 127.0.0.2, then .3 after PER_ADDRESS, … */
export function sourceAddress(index: number): string {
  const host = 2 + Math.floor(index / PER_ADDRESS);
  if (host > 254) throw new Error(`connection ${index} is beyond the loopback addresses 127.0.0.2–254`);
  return `127.0.0.${host}`;
}

/** Processes needed for `connections` (at least one per core, so the generator is not one core's worth). */
export function swarmProcessesFor(connections: number): number {
  return Math.max(Math.ceil(connections / MAX_PER_PROCESS), Math.min(availableParallelism(), 2));
}

export class ConnectionSwarm {
  readonly #children: Array<BenchChild<SwarmRunnerMessage, SwarmChildMessage>>;
  /** Connections handed out so far, over all batches (source addresses continue from here). */
  #assigned = 0;
  /** Connections held per process (all batches), to keep each under MAX_PER_PROCESS. */
  readonly #load: number[];

  private constructor(processes: number, label: string) {
    this.#children = Array.from(
      { length: processes },
      (_, i) =>
        new BenchChild<SwarmRunnerMessage, SwarmChildMessage>({
          script: SWARM_SCRIPT,
          name: 'connection swarm',
          prefix: `[swarm ${label} ${i + 1}] `,
          databaseUrl: '',
        }),
    );
    this.#load = new Array<number>(processes).fill(0);
  }

  static start(processes: number, label = ''): ConnectionSwarm {
    return new ConnectionSwarm(Math.max(1, processes), label);
  }

  get processes(): number {
    return this.#children.length;
  }

  /** Connects every device (split over the processes) and holds them; resolves once each is up or gave up. */
  async connect(
    target: SwarmTarget,
    devices: ReadonlyArray<{ id: string; secret: string }>,
    options: ConnectOptions,
  ): Promise<SwarmResult> {
    const n = this.#children.length;
    if (this.#assigned + devices.length > n * MAX_PER_PROCESS)
      throw new Error(`${this.#assigned + devices.length} connections need more than ${n} swarm processes`);
    const slices: Array<{ devices: Array<[string, string]>; localAddresses: string[] }> = this.#children.map(() => ({
      devices: [],
      localAddresses: [],
    }));
    // Round robin over the processes that still have room.
    let p = 0;
    for (const device of devices) {
      while (this.#load[p]! >= MAX_PER_PROCESS) p = (p + 1) % n;
      slices[p]!.devices.push([device.id, device.secret]);
      slices[p]!.localAddresses.push(sourceAddress(this.#assigned++));
      this.#load[p]!++;
      p = (p + 1) % n;
    }
    const started = performance.now();
    const counts = this.#children.map(() => ({ connected: 0, failed: 0 }));
    let lastShown = 0;
    const show = (force = false) => {
      const now = performance.now();
      if (!options.progress || (!force && now - lastShown < PROGRESS_EVERY_MS)) return;
      lastShown = now;
      const connected = counts.reduce((sum, c) => sum + c.connected, 0);
      const failed = counts.reduce((sum, c) => sum + c.failed, 0);
      const seconds = (now - started) / 1000;
      options.progress(
        `${options.label ?? 'swarm'}: ${connected}/${devices.length} connected, ${failed} failed, ${seconds.toFixed(0)} s (${(connected / Math.max(seconds, 0.001)).toFixed(0)}/s)`,
      );
    };
    const perChild = Math.max(1, Math.ceil(options.concurrency / n));
    const results = await Promise.all(
      this.#children.map(async (child, i) => {
        const slice = slices[i]!;
        if (slice.devices.length === 0) return null;
        const done = child.next('connected', options.stallTimeoutMs ?? 30_000, 'the connection swarm stalled', {
          onProgress: (message) => {
            if (message.type !== 'progress') return;
            counts[i] = { connected: message.connected, failed: message.failed };
            show();
          },
        });
        child.send({
          type: 'connect',
          batch: {
            host: target.host,
            port: target.port,
            ca: target.ca,
            servername: target.servername,
            protocolVersion: target.protocolVersion ?? 5,
            keepAliveSeconds: target.keepAliveSeconds ?? 600,
            devices: slice.devices,
            localAddresses: slice.localAddresses,
            concurrency: perChild,
            resume: options.resume ?? true,
            attempts: options.attempts ?? 3,
            retryDelayMs: options.retryDelayMs ?? 1_000,
            connectTimeoutMs: options.connectTimeoutMs ?? 20_000,
          },
        });
        const { result } = await done;
        counts[i] = { connected: result.connected, failed: result.failed };
        return result;
      }),
    );
    const seconds = (performance.now() - started) / 1000;
    show(true);
    const total: SwarmResult = {
      devices: devices.length,
      connected: 0,
      failed: 0,
      resumed: 0,
      retries: 0,
      reasons: {},
      meanTlsMs: 0,
      meanConnackMs: 0,
      seconds,
      perSecond: 0,
    };
    for (const r of results) {
      if (!r) continue;
      total.meanTlsMs += r.meanTlsMs * r.connected;
      total.meanConnackMs += r.meanConnackMs * r.connected;
      total.connected += r.connected;
      total.failed += r.failed;
      total.resumed += r.resumed;
      total.retries += r.retries;
      for (const [reason, count] of Object.entries(r.reasons))
        total.reasons[reason] = (total.reasons[reason] ?? 0) + count;
    }
    total.perSecond = total.connected / Math.max(seconds, 0.001);
    total.meanTlsMs /= Math.max(1, total.connected);
    total.meanConnackMs /= Math.max(1, total.connected);
    return total;
  }

  /** How many connections are still open over all processes, and how many were dropped by the server. */
  async check(): Promise<HeldSample> {
    const answers = await Promise.all(
      this.#children.map((child) => {
        const answer = child.next('held', CHECK_TIMEOUT_MS, 'the connection swarm did not answer');
        child.send({ type: 'check' });
        return answer;
      }),
    );
    return {
      open: answers.reduce((sum, a) => sum + a.open, 0),
      dropped: answers.reduce((sum, a) => sum + a.dropped, 0),
      firstDrop: answers.find((a) => a.firstDrop)?.firstDrop ?? null,
      generatorRssMiB: Math.round(answers.reduce((sum, a) => sum + a.memoryRssBytes, 0) / 2 ** 20),
    };
  }

  /** Closes every connection and stops the processes (killed if they do not stop in time). */
  async stop(): Promise<void> {
    await Promise.all(this.#children.map((child) => child.stop()));
  }
}
