// The MQTT load generator of the broker-throughput and overload measures, the same for every broker:
// plain mqtt.js clients (one per device) over TLS, QoS 1, ~110-byte JSON telemetry carrying its publish
// time, spread over several processes (bench/mqtt-load-process.ts, forked through lib/bench-child.ts)
// so that the generator is not what limits the number. Two ways to load:
//   - closed loop ('window'): every device keeps `window` publishes in flight;
//   - open loop ('rate'): every device publishes on a fixed schedule, `perDeviceRate` per second,
//     whatever comes back; a publish due while `maxInflight` are unacknowledged is not sent (counted
//     as skipped), so the schedule never waits for the broker.
// Every time is wall-clock milliseconds (lib/latency-histogram.ts epochNow), so that the runner can
// give the processes one window and one origin for the per-second buckets.
import { BenchChild } from './bench-child.ts';
import { type HistogramData, LatencyHistogram } from './latency-histogram.ts';
import type { PeerAccount } from './peer-broker.ts';

const LOAD_SCRIPT = new URL('../mqtt-load-process.ts', import.meta.url);
const CONNECT_TIMEOUT_MS = 60_000;

export interface LoadStartOptions {
  /** mqtts://127.0.0.1:port */
  url: string;
  caPem: string;
  protocolVersion: 4 | 5;
  devices: PeerAccount[];
  /** One per device: where it publishes. */
  topics: string[];
}

export type LoadMode =
  { kind: 'window'; window: number } | { kind: 'rate'; perDeviceRate: number; maxInflight: number };

export interface LoadRunSpec {
  mode: LoadMode;
  /** Acks completing in [windowStartAt, windowEndAt) count for rate and latency (epoch ms). */
  windowStartAt: number;
  windowEndAt: number;
  /** Publishing stops here; what is in flight is then waited for, at most drainMs. */
  stopAt: number;
  drainMs: number;
  /** Successful acks are also counted per bucket of bucketMs from originAt. */
  originAt: number;
  bucketMs: number;
}

export interface LoadRunResult {
  sent: number;
  /** Acknowledged with success (PUBACK 0x00, or any PUBACK on MQTT 3.1.1). */
  acked: number;
  /** Refused by PUBACK reason code (MQTT 5), e.g. { '151': 1234 } for 0x97 Quota exceeded. */
  refusedByCode: Record<string, number>;
  /** Open loop: publishes due while the device had maxInflight unacknowledged. */
  skipped: number;
  /** Publishes that failed otherwise (connection lost) and connections that closed during the run. */
  failed: number;
  disconnects: number;
  firstError: string | null;
  /** Still unacknowledged when the drain gave up. */
  unacked: number;
  /** Successful acks inside the window, and their publish → PUBACK latency. */
  windowAcks: number;
  windowRefused: number;
  latency: { buckets: HistogramData; max: number };
  /** Successful / refused acks per bucket from originAt. */
  ackBuckets: number[];
  refusedBuckets: number[];
  /** CPU of the generator processes over the window (user + system, µs, summed). */
  windowCpuMicros: number;
  payloadBytes: number;
}

export type LoadRunnerMessage =
  { type: 'start'; options: LoadStartOptions } | { type: 'run'; spec: LoadRunSpec } | { type: 'stop' };

export type LoadChildMessage =
  | { type: 'connected' }
  | { type: 'result'; result: LoadRunResult }
  | { type: 'failed'; message: string }
  | { type: 'stopped' };

function addBuckets(into: number[], from: readonly number[]): void {
  for (let i = 0; i < from.length; i++) into[i] = (into[i] ?? 0) + from[i]!;
}

/** Sums the processes' results (latency histograms merged). */
export function mergeLoadResults(results: readonly LoadRunResult[]): LoadRunResult & { histogram: LatencyHistogram } {
  const histogram = new LatencyHistogram();
  const merged: LoadRunResult = {
    sent: 0, acked: 0, refusedByCode: {}, skipped: 0, failed: 0, disconnects: 0, firstError: null, unacked: 0,
    windowAcks: 0, windowRefused: 0, latency: { buckets: [], max: 0 }, ackBuckets: [], refusedBuckets: [],
    windowCpuMicros: 0, payloadBytes: 0,
  }; // prettier-ignore
  for (const r of results) {
    merged.sent += r.sent;
    merged.acked += r.acked;
    for (const [code, n] of Object.entries(r.refusedByCode))
      merged.refusedByCode[code] = (merged.refusedByCode[code] ?? 0) + n;
    merged.skipped += r.skipped;
    merged.failed += r.failed;
    merged.disconnects += r.disconnects;
    merged.firstError ??= r.firstError;
    merged.unacked += r.unacked;
    merged.windowAcks += r.windowAcks;
    merged.windowRefused += r.windowRefused;
    histogram.add(r.latency);
    addBuckets(merged.ackBuckets, r.ackBuckets);
    addBuckets(merged.refusedBuckets, r.refusedBuckets);
    merged.windowCpuMicros += r.windowCpuMicros;
    merged.payloadBytes = Math.max(merged.payloadBytes, r.payloadBytes);
  }
  merged.latency = histogram.toData();
  return { ...merged, histogram };
}

/** Several generator processes sharing the devices round-robin; all connect, run and stop together. */
export class MqttLoad {
  readonly #children: BenchChild<LoadRunnerMessage, LoadChildMessage>[];

  private constructor(children: BenchChild<LoadRunnerMessage, LoadChildMessage>[]) {
    this.#children = children;
  }

  /** Forks `processes` generators and resolves once every device is connected; all or nothing. */
  static async start(options: LoadStartOptions & { processes: number; label: string }): Promise<MqttLoad> {
    const count = Math.max(1, Math.min(options.processes, options.devices.length));
    const children = Array.from(
      { length: count },
      (_, i) =>
        new BenchChild<LoadRunnerMessage, LoadChildMessage>({
          script: LOAD_SCRIPT,
          name: 'load generator',
          prefix: `[load ${options.label} ${i + 1}] `,
          databaseUrl: '',
        }),
    );
    const load = new MqttLoad(children);
    try {
      await Promise.all(
        children.map((child, i) => {
          const pick = <T>(all: readonly T[]) => all.filter((_, j) => j % count === i);
          const connected = child.next('connected', CONNECT_TIMEOUT_MS, 'the load generator did not connect');
          child.send({
            type: 'start',
            options: { ...options, devices: pick(options.devices), topics: pick(options.topics) },
          });
          return connected;
        }),
      );
      return load;
    } catch (error) {
      await load.stop();
      throw error;
    }
  }

  /** One load run in every process; resolves with the merged result after the drain. */
  async run(spec: LoadRunSpec): Promise<ReturnType<typeof mergeLoadResults>> {
    const timeout = Math.max(0, spec.stopAt - Date.now()) + spec.drainMs + 30_000;
    const results = await Promise.all(
      this.#children.map((child) => {
        const answer = child.next('result', timeout, 'the load generator did not report');
        child.send({ type: 'run', spec });
        return answer;
      }),
    );
    return mergeLoadResults(results.map((r) => r.result));
  }

  stop(): Promise<void> {
    return Promise.all(this.#children.map((c) => c.stop())).then(() => undefined);
  }
}
