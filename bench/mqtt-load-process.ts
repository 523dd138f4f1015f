// One process of the MQTT load generator (lib/mqtt-load.ts): connects its share of the devices with
// plain mqtt.js clients over TLS, then runs what the runner asks for, closed loop or open loop, and
// reports counts, per-bucket acks and a latency histogram. Started with fork(); see LoadRunnerMessage.
import { performance } from 'node:perf_hooks';
import mqtt, { type MqttClient } from 'mqtt';
import { LatencyHistogram } from './lib/latency-histogram.ts';
import type {
  LoadChildMessage,
  LoadRunnerMessage,
  LoadRunResult,
  LoadRunSpec,
  LoadStartOptions,
} from './lib/mqtt-load.ts';

const CONNECT_CONCURRENCY = 16;
const CONNECT_TIMEOUT_MS = 20_000;
/** Open loop: how often the schedule is looked at. */
const TICK_MS = 2;

let clients: MqttClient[] = [];
let topics: string[] = [];
let stopping = false;

function send(message: LoadChildMessage): Promise<void> {
  if (!process.connected) return Promise.resolve();
  return new Promise((resolve) => process.send!(message, undefined, undefined, () => resolve()));
}

function connectOne(options: LoadStartOptions, device: { username: string; password: string }): Promise<MqttClient> {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect(options.url, {
      ca: options.caPem,
      rejectUnauthorized: true,
      username: device.username,
      password: device.password,
      clientId: device.username,
      protocolVersion: options.protocolVersion,
      clean: true,
      keepalive: 60,
      reconnectPeriod: 0,
      connectTimeout: CONNECT_TIMEOUT_MS,
    });
    const fail = (error: Error) => {
      client.end(true);
      reject(new Error(`${device.username}: ${error.message}`));
    };
    client.once('connect', () => {
      client.removeListener('error', fail);
      client.on('error', () => {}); // counted through 'close' during a run
      resolve(client);
    });
    client.once('error', fail);
    client.once('close', () => fail(new Error('connection closed before CONNACK')));
  });
}

async function start(options: LoadStartOptions): Promise<void> {
  topics = options.topics;
  let next = 0;
  let failure: Error | undefined;
  const connected: MqttClient[] = new Array(options.devices.length);
  const lane = async () => {
    while (next < options.devices.length && !failure) {
      const i = next++;
      try {
        connected[i] = await connectOne(options, options.devices[i]!);
      } catch (error) {
        failure ??= error as Error;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(CONNECT_CONCURRENCY, options.devices.length) }, lane));
  clients = connected.filter(Boolean);
  if (failure) throw new Error(`a device could not connect: ${failure.message}`);
  await send({ type: 'connected' });
}

/** ~110 bytes of JSON like a sensor's; `ts` is the publish time (epoch ms) for end-to-end latency. */
function body(seq: number, ts: number): string {
  return JSON.stringify({
    seq,
    ts: Math.round(ts * 1000) / 1000,
    temperature: (2000 + (seq % 500)) / 100,
    humidity: (4000 + (seq % 900)) / 100,
    battery: 87,
    door: 'closed',
  });
}

function run(spec: LoadRunSpec): Promise<LoadRunResult> {
  const toLocal = (epochMs: number) => epochMs - performance.timeOrigin;
  const windowStart = toLocal(spec.windowStartAt);
  const windowEnd = toLocal(spec.windowEndAt);
  const stopAt = toLocal(spec.stopAt);
  const origin = toLocal(spec.originAt);
  const histogram = new LatencyHistogram();
  const r: LoadRunResult = {
    sent: 0, acked: 0, refusedByCode: {}, skipped: 0, failed: 0, disconnects: 0, firstError: null, unacked: 0,
    windowAcks: 0, windowRefused: 0, latency: { buckets: [], max: 0 }, ackBuckets: [], refusedBuckets: [],
    windowCpuMicros: 0, payloadBytes: 0,
  }; // prettier-ignore
  let publishing = true;
  let inflightTotal = 0;
  const inflight = new Array<number>(clients.length).fill(0);
  const seqs = new Array<number>(clients.length).fill(0);
  let cpuAtStart: NodeJS.CpuUsage | undefined;
  const bucketOf = (t: number) => Math.floor((t - origin) / spec.bucketMs);
  const onClose = (client: MqttClient) => () => {
    if (!publishing && inflightTotal === 0) return;
    r.disconnects++;
    r.firstError ??= `${String(client.options.username)} lost its connection during the run`;
  };
  const closeHandlers = clients.map((client) => {
    const handler = onClose(client);
    client.on('close', handler);
    return handler;
  });

  let drained: () => void = () => {};
  const allDone = new Promise<void>((resolve) => (drained = resolve));
  const maybeDone = () => {
    if (!publishing && inflightTotal === 0) drained();
  };

  /** Publishes one message of device i; `then` runs after its acknowledgement (closed loop). */
  const publish = (i: number, then: (() => void) | null) => {
    const client = clients[i]!;
    const started = performance.now();
    const payload = body(seqs[i]!++, performance.timeOrigin + started);
    r.sent++;
    r.payloadBytes = payload.length;
    inflight[i]!++;
    inflightTotal++;
    client.publish(topics[i]!, payload, { qos: 1 }, (error) => {
      const ended = performance.now();
      inflight[i]!--;
      inflightTotal--;
      const inWindow = ended >= windowStart && ended < windowEnd;
      const code = (error as { code?: unknown } | undefined)?.code;
      if (!error) {
        r.acked++;
        const b = bucketOf(ended);
        if (b >= 0) r.ackBuckets[b] = (r.ackBuckets[b] ?? 0) + 1;
        if (inWindow) {
          r.windowAcks++;
          histogram.record(ended - started);
        }
      } else if (typeof code === 'number') {
        r.refusedByCode[code] = (r.refusedByCode[code] ?? 0) + 1;
        const b = bucketOf(ended);
        if (b >= 0) r.refusedBuckets[b] = (r.refusedBuckets[b] ?? 0) + 1;
        if (inWindow) r.windowRefused++;
        r.firstError ??= error.message;
      } else {
        r.failed++;
        r.firstError ??= error.message;
        maybeDone();
        return; // this device's loop ends: its connection is gone
      }
      if (then && publishing && performance.now() < stopAt) then();
      maybeDone();
    });
  };

  const timers: NodeJS.Timeout[] = [];
  const at = (t: number, fn: () => void) => timers.push(setTimeout(fn, Math.max(0, t - performance.now())));
  at(windowStart, () => (cpuAtStart = process.cpuUsage()));
  at(windowEnd, () => {
    const cpu = process.cpuUsage(cpuAtStart);
    r.windowCpuMicros = cpuAtStart ? cpu.user + cpu.system : 0;
  });
  const stopPublishing = () => {
    publishing = false;
    maybeDone();
  };
  at(stopAt, stopPublishing);

  if (spec.mode.kind === 'window') {
    const window = spec.mode.window;
    for (let i = 0; i < clients.length; i++) {
      const loop = () => publish(i, loop);
      for (let k = 0; k < window; k++) loop();
    }
  } else {
    const { perDeviceRate, maxInflight } = spec.mode;
    // The schedule starts with the window, so that every process starts it at the same moment.
    const begun = windowStart;
    const due = new Array<number>(clients.length).fill(0);
    const tick = setInterval(() => {
      const now = performance.now();
      if (now >= stopAt || !publishing) {
        clearInterval(tick);
        return;
      }
      if (now < begun) return;
      const target = Math.floor(((now - begun) * perDeviceRate) / 1000);
      for (let i = 0; i < clients.length; i++) {
        while (due[i]! < target) {
          due[i]!++;
          if (inflight[i]! >= maxInflight) r.skipped++;
          else publish(i, null);
        }
      }
    }, TICK_MS);
    timers.push(tick);
  }

  const finish = async (): Promise<LoadRunResult> => {
    await new Promise<void>((resolve) => setTimeout(resolve, Math.max(0, stopAt - performance.now())));
    const timedOut = await Promise.race([
      allDone.then(() => false),
      new Promise<boolean>((resolve) => setTimeout(() => resolve(true), spec.drainMs)),
    ]);
    for (const t of timers) clearTimeout(t);
    clients.forEach((client, i) => client.removeListener('close', closeHandlers[i]!));
    r.unacked = timedOut ? inflightTotal : 0;
    r.latency = histogram.toData();
    return r;
  };
  return finish();
}

async function stop(code: number): Promise<void> {
  if (stopping) return;
  stopping = true;
  await Promise.race([
    Promise.all(clients.map((c) => new Promise<void>((resolve) => c.end(false, {}, () => resolve())))),
    new Promise((resolve) => setTimeout(resolve, 2_000)),
  ]);
  for (const c of clients) c.end(true);
  await send({ type: 'stopped' });
  process.exit(code);
}

process.on('message', (message: LoadRunnerMessage) => {
  switch (message.type) {
    case 'start':
      start(message.options).catch(async (error: unknown) => {
        await send({ type: 'failed', message: (error as Error).message });
        await stop(1);
      });
      break;
    case 'run':
      run(message.spec).then(
        (result) => send({ type: 'result', result }),
        (error: unknown) => send({ type: 'failed', message: `run failed: ${(error as Error).message}` }),
      );
      break;
    case 'stop':
      void stop(0);
      break;
  }
});
process.on('disconnect', () => void stop(1));
process.on('SIGINT', () => void stop(130));
process.on('SIGTERM', () => void stop(143));
