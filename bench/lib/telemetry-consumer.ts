// The business system's side of the broker-throughput measure: something that receives every device's
// telemetry as it arrives and measures publish → receipt (the payload's `ts`, see bench/mqtt-load-process.ts).
//   - on Mosquitto and aedes: one MQTT client subscribed to devices/+/telemetry at QoS 1;
//   - on Castellan, whose ACL lets a device read only its own topics and offers no wildcard telemetry
//     subscription to anyone: what the platform gives a vendor's system, its push stream
//     (`GET /v1/devices/:id/events/stream?types=telemetry`, Server-Sent Events), one per device, with the
//     session of a person who owns the vendor. An event is pushed after the message is stored.
import https from 'node:https';
import mqtt, { type MqttClient } from 'mqtt';
import { epochNow, LatencyHistogram } from './latency-histogram.ts';

const CONNECT_TIMEOUT_MS = 20_000;

export interface TelemetryConsumer {
  /** Messages received in all, and inside [windowStartAt, windowEndAt) with their latency. */
  readonly received: number;
  readonly windowReceived: number;
  readonly histogram: LatencyHistogram;
  /** Streams or connections lost while running, with the first reason. */
  readonly lost: number;
  readonly firstError: string | null;
  setWindow(startAt: number, endAt: number): void;
  close(): Promise<void>;
}

class Counter {
  received = 0;
  windowReceived = 0;
  histogram = new LatencyHistogram();
  lost = 0;
  firstError: string | null = null;
  #start = Number.POSITIVE_INFINITY;
  #end = Number.NEGATIVE_INFINITY;

  setWindow(startAt: number, endAt: number): void {
    this.#start = startAt;
    this.#end = endAt;
  }

  message(ts: unknown): void {
    const now = epochNow();
    this.received++;
    if (now >= this.#start && now < this.#end) {
      this.windowReceived++;
      if (typeof ts === 'number') this.histogram.record(Math.max(0, now - ts));
    }
  }
}

/** Subscribes to devices/+/telemetry (QoS 1) with the given account. */
export async function mqttConsumer(options: {
  url: string;
  caPem: string;
  protocolVersion: 4 | 5;
  username: string;
  password: string;
}): Promise<TelemetryConsumer> {
  const counter = new Counter();
  const client: MqttClient = await new Promise((resolve, reject) => {
    const c = mqtt.connect(options.url, {
      ca: options.caPem,
      username: options.username,
      password: options.password,
      clientId: `${options.username}-${process.pid}`,
      protocolVersion: options.protocolVersion,
      clean: true,
      reconnectPeriod: 0,
      connectTimeout: CONNECT_TIMEOUT_MS,
    });
    c.once('connect', () => resolve(c));
    c.once('error', (error) => {
      c.end(true);
      reject(new Error(`the consumer could not connect: ${error.message}`));
    });
  });
  let closing = false;
  client.on('error', (error) => (counter.firstError ??= error.message));
  client.on('close', () => {
    if (closing) return;
    counter.lost++;
    counter.firstError ??= 'the consumer lost its connection';
  });
  client.on('message', (_topic, payload) => {
    let ts: unknown;
    try {
      ts = (JSON.parse(payload.toString()) as { ts?: unknown }).ts;
    } catch {
      ts = undefined;
    }
    counter.message(ts);
  });
  const granted = await client.subscribeAsync('devices/+/telemetry', { qos: 1 });
  if (!granted.every((g) => g.qos === 1)) {
    client.end(true);
    throw new Error(`the consumer's subscription was refused (${JSON.stringify(granted)})`);
  }
  return Object.assign(counter, {
    close: async () => {
      closing = true;
      await Promise.race([client.endAsync(), new Promise((resolve) => setTimeout(resolve, 2_000))]);
      client.end(true);
    },
  });
}

/** Opens one telemetry push stream per device on Castellan's HTTPS API; resolves once all said `ready`. */
export async function castellanPushConsumer(options: {
  httpUrl: string;
  caPem: string;
  sessionToken: string;
  deviceIds: readonly string[];
}): Promise<TelemetryConsumer> {
  const counter = new Counter();
  const agent = new https.Agent({ keepAlive: true, maxSockets: options.deviceIds.length + 1, ca: options.caPem });
  const requests: ReturnType<typeof https.get>[] = [];
  let closing = false;
  const open = (deviceId: string) =>
    new Promise<void>((resolve, reject) => {
      const url = new URL(`/v1/devices/${encodeURIComponent(deviceId)}/events/stream?types=telemetry`, options.httpUrl);
      const request = https.get(url, {
        agent,
        headers: { authorization: `Bearer ${options.sessionToken}`, accept: 'text/event-stream' },
      });
      requests.push(request);
      const timer = setTimeout(
        () => reject(new Error(`push stream of ${deviceId}: no ready event in time`)),
        CONNECT_TIMEOUT_MS,
      );
      request.once('error', (error) => {
        clearTimeout(timer);
        if (!closing) {
          counter.lost++;
          counter.firstError ??= `push stream of ${deviceId}: ${error.message}`;
        }
        reject(error);
      });
      request.once('response', (response) => {
        if (response.statusCode !== 200) {
          clearTimeout(timer);
          response.resume();
          reject(new Error(`push stream of ${deviceId}: HTTP ${response.statusCode}`));
          return;
        }
        response.setEncoding('utf8');
        let buffer = '';
        response.on('data', (chunk: string) => {
          buffer += chunk;
          let end: number;
          while ((end = buffer.indexOf('\n\n')) >= 0) {
            const frame = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            let event = 'message';
            let data = '';
            for (const line of frame.split('\n')) {
              if (line.startsWith('event: ')) event = line.slice(7);
              else if (line.startsWith('data: ')) data += line.slice(6);
            }
            if (event === 'ready') {
              clearTimeout(timer);
              resolve();
            } else if (event === 'telemetry') {
              let ts: unknown;
              try {
                ts = (JSON.parse(data) as { payload?: { ts?: unknown } }).payload?.ts;
              } catch {
                ts = undefined;
              }
              counter.message(ts);
            } else if (event === 'end' || event === 'reset') {
              counter.firstError ??= `push stream of ${deviceId}: ${event} ${data}`;
            }
          }
        });
        response.on('close', () => {
          if (closing) return;
          counter.lost++;
          counter.firstError ??= `push stream of ${deviceId} closed by the server`;
        });
      });
    });
  const close = async () => {
    closing = true;
    for (const request of requests) request.destroy();
    agent.destroy();
  };
  try {
    await Promise.all(options.deviceIds.map(open));
  } catch (error) {
    await close();
    throw error;
  }
  return Object.assign(counter, { close });
}
