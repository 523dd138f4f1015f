// Secure telemetry throughput against Mosquitto and aedes (issue 9, measure 1): N devices over TLS each
// keep a window of ~110-byte QoS 1 JSON publishes in flight on their own telemetry topic, from the same
// load generator (lib/mqtt-load.ts, several processes) for every broker, while a consumer receives
// everything (lib/telemetry-consumer.ts). One run, three peers (lib/bench-peers.ts), ratios to Mosquitto.
import { setTimeout as sleep } from 'node:timers/promises';
import { type PeerName, type PeerUnderTest, startPeer } from '../lib/bench-peers.ts';
import { epochNow } from '../lib/latency-histogram.ts';
import { machineCpuTimes } from '../lib/machine-info.ts';
import type { CaseResult, Column, Measure, MeasureContext } from '../lib/measure.ts';
import { MqttLoad } from '../lib/mqtt-load.ts';
import type { TelemetryConsumer } from '../lib/telemetry-consumer.ts';

interface Plan {
  devices: readonly number[];
  /** Publishes each device keeps in flight (below Castellan's receive maximum of 64). */
  window: number;
  warmupMs: number;
  measureMs: number;
  /** Load generator processes. */
  generators: number;
}

const QUICK: Plan = { devices: [10], window: 32, warmupMs: 500, measureMs: 2_000, generators: 2 };
const FULL: Plan = { devices: [10, 100], window: 32, warmupMs: 2_000, measureMs: 10_000, generators: 2 };

const PEERS: readonly PeerName[] = ['Castellan', 'Mosquitto', 'aedes'];
const DRAIN_MS = 15_000;
/** After the load stops, how long the consumer may take to receive what was acknowledged. */
const CONSUMER_GRACE_MS = 3_000;
/** Time for every generator to receive its 'run' before the schedule starts. */
const START_MARGIN_MS = 300;

const COLUMNS: readonly Column[] = [
  { key: 'devices', label: 'devices' },
  { key: 'msgsPerSec', label: 'msgs/s (PUBACK)' },
  { key: 'vsMosquitto', label: '× Mosquitto', digits: 2 },
  { key: 'p50AckMs', label: 'p50 ack ms', digits: 1 },
  { key: 'p99AckMs', label: 'p99 ack ms', digits: 1 },
  { key: 'consumerPerSec', label: 'consumer msgs/s' },
  { key: 'p50E2eMs', label: 'p50 e2e ms', digits: 1 },
  { key: 'p99E2eMs', label: 'p99 e2e ms', digits: 1 },
  { key: 'serverCpuPct', label: 'server CPU %' },
  { key: 'generatorCpuPct', label: 'generator CPU %' },
  { key: 'machineCpuPct', label: 'machine CPU %' },
];

const round2 = (x: number | null): number | null =>
  x === null || !Number.isFinite(x) ? null : Math.round(x * 100) / 100;

async function runPeer(context: MeasureContext, plan: Plan, name: PeerName, devices: number): Promise<CaseResult> {
  const base = { measure: 'broker-throughput', case: `${name}, ${devices} devices` };
  let peer: PeerUnderTest | undefined;
  let load: MqttLoad | undefined;
  let consumer: TelemetryConsumer | undefined;
  try {
    context.progress(`broker-throughput: ${name}, ${devices} devices: starting`);
    peer = await startPeer(name, {
      devices,
      // Report limits set high (the guard still checks them per message); one push stream per device.
      castellanReportLimits: { perSecond: 100_000, perDay: 100_000_000 },
      castellanConfig: { devices: { pushStreamsPerPrincipal: 100, pushBufferBytes: 64 * 1024 * 1024 } },
    });
    load = await MqttLoad.start({
      label: name,
      processes: plan.generators,
      url: peer.url,
      caPem: peer.caPem,
      protocolVersion: peer.protocolVersion,
      devices: peer.devices,
      topics: peer.topics,
    });
    consumer = await peer.consumer();
    context.progress(`broker-throughput: ${name}: connected, ${(plan.warmupMs + plan.measureMs) / 1000} s of load`);
    const now = epochNow();
    const windowStartAt = now + START_MARGIN_MS + plan.warmupMs;
    const windowEndAt = windowStartAt + plan.measureMs;
    consumer.setWindow(windowStartAt, windowEndAt);
    const p = peer;
    const sampleAt = async (at: number) => {
      await sleep(Math.max(0, at - epochNow()));
      return { server: await p.cpuMicros(), machine: machineCpuTimes(), at: epochNow() };
    };
    const [result, before, after] = await Promise.all([
      load.run({
        mode: { kind: 'window', window: plan.window },
        windowStartAt,
        windowEndAt,
        stopAt: windowEndAt,
        drainMs: DRAIN_MS,
        originAt: now,
        bucketMs: 1_000,
      }),
      sampleAt(windowStartAt),
      sampleAt(windowEndAt),
    ]);
    // The consumer may still be receiving what was acknowledged last.
    const graceEnd = performance.now() + CONSUMER_GRACE_MS;
    while (consumer.received < result.acked && performance.now() < graceEnd) await sleep(50);

    const seconds = (windowEndAt - windowStartAt) / 1000;
    const wallMicros = (after.at - before.at) * 1000;
    const refused = Object.values(result.refusedByCode).reduce((a, b) => a + b, 0);
    const problems = [
      result.windowAcks === 0 ? 'no message was acknowledged' : null,
      result.failed || result.disconnects
        ? `${result.failed} publishes failed, ${result.disconnects} disconnects: ${result.firstError}`
        : null,
      result.unacked ? `${result.unacked} publishes were not acknowledged within ${DRAIN_MS / 1000} s` : null,
      refused ? `${refused} publishes refused (${JSON.stringify(result.refusedByCode)}): ${result.firstError}` : null,
      consumer.lost ? `the consumer lost ${consumer.lost} stream(s): ${consumer.firstError}` : null,
      consumer.received < result.acked
        ? `the consumer received ${consumer.received} of ${result.acked} acknowledged messages`
        : null,
    ].filter((x): x is string => x !== null);
    return {
      ...base,
      ok: problems.length === 0,
      ...(problems.length ? { error: problems.join('; ') } : {}),
      metrics: {
        devices,
        msgsPerSec: round2(result.windowAcks / seconds),
        vsMosquitto: null,
        p50AckMs: round2(result.histogram.percentile(50)),
        p99AckMs: round2(result.histogram.percentile(99)),
        consumerPerSec: round2(consumer.windowReceived / seconds),
        p50E2eMs: round2(consumer.histogram.percentile(50)),
        p99E2eMs: round2(consumer.histogram.percentile(99)),
        serverCpuPct: round2((100 * (after.server - before.server)) / wallMicros),
        generatorCpuPct: round2((100 * result.windowCpuMicros) / wallMicros),
        machineCpuPct: round2(
          (100 * (after.machine.busyMs - before.machine.busyMs)) / (after.machine.atMs - before.machine.atMs),
        ),
      },
      details: {
        peer: name,
        version: peer.version,
        protocolVersion: peer.protocolVersion,
        window: plan.window,
        generators: plan.generators,
        payloadBytes: result.payloadBytes,
        windowSeconds: seconds,
        sent: result.sent,
        acked: result.acked,
        consumerReceived: consumer.received,
        maxAckMs: round2(result.histogram.max),
        maxE2eMs: round2(consumer.histogram.max),
      },
    };
  } catch (error) {
    return { ...base, ok: false, error: (error as Error).message, metrics: { devices } };
  } finally {
    await consumer?.close();
    await load?.stop();
    await peer?.stop();
  }
}

export const brokerThroughputMeasure: Measure = {
  name: 'broker-throughput',
  description:
    'QoS 1 telemetry over TLS from N devices with a consumer: Castellan (auth, ACL, guard, durable SQLite, push stream) vs Mosquitto (TLS, password and ACL files) vs aedes (TLS, no hooks), same load generator',
  columns: COLUMNS,
  async run(context) {
    const plan = context.quick ? QUICK : FULL;
    const results: CaseResult[] = [];
    for (const devices of plan.devices) {
      const group: CaseResult[] = [];
      for (const name of PEERS) group.push(await runPeer(context, plan, name, devices));
      const mosquitto = group.find((r) => r.case.startsWith('Mosquitto'))?.metrics.msgsPerSec;
      for (const r of group) {
        const rate = r.metrics.msgsPerSec;
        r.metrics.vsMosquitto =
          typeof rate === 'number' && typeof mosquitto === 'number' && mosquitto > 0 ? round2(rate / mosquitto) : null;
      }
      results.push(...group);
    }
    return results;
  },
};
