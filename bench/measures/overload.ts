// Overload (issue 9, measure 6): each peer's sustainable QoS 1 rate is the peak of a short closed-loop
// ramp (windows of 4, 16, 64 and 256 publishes in flight per device); then the same devices offer twice that
// rate open loop (a fixed publish schedule per device, lib/mqtt-load.ts 'rate') and the delivered rate
// (successful PUBACKs) is recorded per second: the curve, and its mean as a fraction of the peak.
// Castellan sheds with its guard: the bench product's per-device report limit is set to peak / devices
// before the overload, so every publish beyond it gets PUBACK 0x97 (Quota exceeded), counted by code.
import { setTimeout as sleep } from 'node:timers/promises';
import { type PeerName, type PeerUnderTest, startPeer } from '../lib/bench-peers.ts';
import { epochNow } from '../lib/latency-histogram.ts';
import { machineCpuTimes } from '../lib/machine-info.ts';
import type { CaseResult, Column, Measure, MeasureContext } from '../lib/measure.ts';
import { MqttLoad } from '../lib/mqtt-load.ts';

interface Plan {
  devices: number;
  rampWindows: readonly number[];
  rampStepMs: number;
  overloadMs: number;
  generators: number;
}

const QUICK: Plan = { devices: 10, rampWindows: [4, 16, 64, 256], rampStepMs: 500, overloadMs: 2_000, generators: 2 };
const FULL: Plan = { devices: 10, rampWindows: [4, 16, 64, 256], rampStepMs: 1_500, overloadMs: 10_000, generators: 2 };

const PEERS: readonly PeerName[] = ['Castellan', 'aedes', 'Mosquitto'];
const OVERLOAD_FACTOR = 2;
/** Open loop: a device with this many publishes unacknowledged skips the ones falling due. */
const MAX_INFLIGHT = 1_000;
const DRAIN_MS = 15_000;
const START_MARGIN_MS = 300;
/** The first part of every ramp step is warm-up (connections, JIT, caches). */
const RAMP_WARMUP_SHARE = 0.3;

const COLUMNS: readonly Column[] = [
  { key: 'devices', label: 'devices' },
  { key: 'peak', label: 'peak msgs/s' },
  { key: 'offered', label: 'offered msgs/s' },
  { key: 'sentPerSec', label: 'sent msgs/s' },
  { key: 'delivered', label: 'delivered msgs/s' },
  { key: 'fraction', label: '÷ peak', digits: 2 },
  { key: 'minBucket', label: 'worst second ÷ peak', digits: 2 },
  { key: 'curve', label: 'delivered per second' },
  { key: 'refused', label: 'refused (codes)' },
  { key: 'skipped', label: 'not sent (window full)' },
  { key: 'p99AckMs', label: 'p99 ack ms', digits: 0 },
  { key: 'serverCpuPct', label: 'server CPU %' },
  { key: 'generatorCpuPct', label: 'generator CPU %' },
  { key: 'goal', label: '≥ 90 % of peak' },
];

const round2 = (x: number | null): number | null =>
  x === null || !Number.isFinite(x) ? null : Math.round(x * 100) / 100;
const kilo = (x: number) =>
  x >= 10_000 ? `${Math.round(x / 1000)}k` : x >= 1000 ? `${(x / 1000).toFixed(1)}k` : `${Math.round(x)}`;

async function runPeer(context: MeasureContext, plan: Plan, name: PeerName): Promise<CaseResult> {
  const base = { measure: 'overload', case: name };
  let peer: PeerUnderTest | undefined;
  let load: MqttLoad | undefined;
  try {
    context.progress(`overload: ${name}: starting`);
    peer = await startPeer(name, {
      devices: plan.devices,
      castellanReportLimits: { perSecond: 100_000, perDay: 100_000_000 },
      castellanConfig: {
        // The per-device report limit is what sheds: a device refused this often is neither disconnected
        // nor quarantined within the run, and its receive maximum is above the generator's window.
        guard: { excessBeforeDisconnect: 100_000, deviceResponse: 'alert' },
        mqtt: { maxInflight: 65_535 },
      },
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

    // 1. The ramp: the peak of a few closed-loop steps.
    const ramp: number[] = [];
    for (const window of plan.rampWindows) {
      const now = epochNow();
      const start = now + START_MARGIN_MS;
      const windowStartAt = start + plan.rampStepMs * RAMP_WARMUP_SHARE;
      const stopAt = start + plan.rampStepMs;
      const step = await load.run({
        mode: { kind: 'window', window },
        windowStartAt,
        windowEndAt: stopAt,
        stopAt,
        drainMs: DRAIN_MS,
        originAt: now,
        bucketMs: 1_000,
      });
      ramp.push(step.windowAcks / ((stopAt - windowStartAt) / 1000));
    }
    const peak = Math.max(...ramp);
    const perDevice = Math.ceil(peak / plan.devices);
    await peer.setPerDeviceLimit?.(perDevice);
    const offered = OVERLOAD_FACTOR * perDevice * plan.devices;
    context.progress(
      `overload: ${name}: ramp ${ramp.map(kilo).join(' / ')} msgs/s, peak ${kilo(peak)}; offering ${kilo(offered)} msgs/s for ${plan.overloadMs / 1000} s`,
    );

    // 2. Twice the peak, open loop, delivered per second.
    const originAt = epochNow() + START_MARGIN_MS;
    const endAt = originAt + plan.overloadMs;
    const p = peer;
    const sampleAt = async (at: number) => {
      await sleep(Math.max(0, at - epochNow()));
      return { server: await p.cpuMicros(), machine: machineCpuTimes(), at: epochNow() };
    };
    const [result, before, after] = await Promise.all([
      load.run({
        mode: { kind: 'rate', perDeviceRate: OVERLOAD_FACTOR * perDevice, maxInflight: MAX_INFLIGHT },
        windowStartAt: originAt,
        windowEndAt: endAt,
        stopAt: endAt,
        drainMs: DRAIN_MS,
        originAt,
        bucketMs: 1_000,
      }),
      sampleAt(originAt),
      sampleAt(endAt),
    ]);
    const buckets = Math.floor(plan.overloadMs / 1_000);
    const curve = Array.from({ length: buckets }, (_, i) => result.ackBuckets[i] ?? 0);
    const seconds = plan.overloadMs / 1000;
    const delivered = result.windowAcks / seconds;
    const wallMicros = (after.at - before.at) * 1000;
    const refusedTotal = Object.values(result.refusedByCode).reduce((a, b) => a + b, 0);
    const codes = Object.entries(result.refusedByCode)
      .map(([code, n]) => `0x${Number(code).toString(16)}: ${n}`)
      .join(', ');
    const problems = [
      result.failed || result.disconnects
        ? `${result.failed} publishes failed, ${result.disconnects} disconnects: ${result.firstError}`
        : null,
      result.unacked ? `${result.unacked} publishes were not acknowledged within ${DRAIN_MS / 1000} s` : null,
      result.windowAcks === 0 ? 'nothing was delivered under overload' : null,
    ].filter((x): x is string => x !== null);
    const fraction = delivered / peak;
    return {
      ...base,
      ok: problems.length === 0,
      ...(problems.length ? { error: problems.join('; ') } : {}),
      metrics: {
        devices: plan.devices,
        peak: round2(peak),
        offered,
        sentPerSec: round2(result.sent / seconds),
        delivered: round2(delivered),
        fraction: round2(fraction),
        minBucket: curve.length ? round2(Math.min(...curve) / peak) : null,
        curve: curve.map(kilo).join(' '),
        refused: refusedTotal ? `${refusedTotal} (${codes})` : '0',
        skipped: result.skipped,
        p99AckMs: round2(result.histogram.percentile(99)),
        serverCpuPct: round2((100 * (after.server - before.server)) / wallMicros),
        generatorCpuPct: round2((100 * result.windowCpuMicros) / wallMicros),
        goal: name !== 'Castellan' ? '–' : context.quick ? '–' : fraction >= 0.9 ? 'met' : 'not met',
      },
      details: {
        peer: name,
        version: peer.version,
        protocolVersion: peer.protocolVersion,
        generators: plan.generators,
        rampWindows: plan.rampWindows,
        rampMsgsPerSec: ramp.map((r) => round2(r)),
        perDeviceLimit: name === 'Castellan' ? perDevice : null,
        curve,
        refusedPerSecond: Array.from({ length: buckets }, (_, i) => result.refusedBuckets[i] ?? 0),
        refusedByCode: result.refusedByCode,
        sent: result.sent,
        p50AckMs: round2(result.histogram.percentile(50)),
        maxAckMs: round2(result.histogram.max),
        machineCpuPct: round2(
          (100 * (after.machine.busyMs - before.machine.busyMs)) / (after.machine.atMs - before.machine.atMs),
        ),
      },
    };
  } catch (error) {
    return { ...base, ok: false, error: (error as Error).message, metrics: { devices: plan.devices } };
  } finally {
    await load?.stop();
    await peer?.stop();
  }
}

export const overloadMeasure: Measure = {
  name: 'overload',
  description:
    'Twice the sustainable QoS 1 rate (peak of a closed-loop ramp), offered open loop: delivered msgs/s per second and ÷ peak; Castellan sheds with its per-device report limit (PUBACK 0x97)',
  columns: COLUMNS,
  async run(context) {
    const plan = context.quick ? QUICK : FULL;
    const results: CaseResult[] = [];
    for (const name of PEERS) results.push(await runPeer(context, plan, name));
    return results;
  },
};
