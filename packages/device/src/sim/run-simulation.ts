// Runs N simulated devices against a platform (castellan-sim, the demo and the benchmarks): each device
// connects with the SDK's DeviceClient (pinned CA, reconnect with backoff and jitter), publishes
// telemetry at QoS 1 at its rate (the count moves when the platform acknowledged), answers commands
// when the SDK handles them, and stops after its messages or when the run's time is up. Connects are
// spread over a small pool so a fleet does not arrive in one burst.
import { setTimeout as sleep } from 'node:timers/promises';
import { DeviceClient, DeviceConnectError } from '../device-client.ts';
import { DEFAULT_TELEMETRY_SCHEMA, TelemetryGenerator, type TelemetrySchema } from './telemetry-generator.ts';

export interface SimDevice {
  readonly id: string;
  readonly secret: string;
}

export interface SimulationOptions {
  /** mqtts://host:port */
  url: string;
  /** The platform's CA certificate (PEM), pinned. */
  ca: string | Buffer;
  devices: readonly SimDevice[];
  /** Telemetry messages per second per device (default 1). */
  ratePerSecond?: number;
  /** Stop after this long (ms). */
  durationMs?: number;
  /** Each device stops after this many messages (acknowledged or failed). */
  messagesPerDevice?: number;
  /** Properties to report (a product's data points); default: temperature, humidity, switch. */
  schema?: TelemetrySchema;
  /** Stops the run early (Ctrl-C). Without it, durationMs or messagesPerDevice must end the run. */
  signal?: AbortSignal;
  /** Called about once a second, and once at the end. */
  onProgress?: (progress: SimulationProgress) => void;
  /** Connects in flight at once (default 20). */
  connectConcurrency?: number;
  /** Connection attempts in a row before a device gives up (default 8). */
  maxConnectAttempts?: number;
  protocolVersion?: 4 | 5;
}

export interface SimulationResult {
  /** Devices that connected (at least once). */
  connected: number;
  /** Telemetry messages the platform acknowledged. */
  messages: number;
  /** Failed connects and give-ups, refused or failed publishes. */
  errors: number;
  /** Commands answered. */
  commands: number;
  devices: number;
  elapsedMs: number;
}

export interface SimulationProgress extends SimulationResult {
  /** Devices connected right now. */
  online: number;
  /** The last error's message, if any (for the progress line). */
  lastError: string | null;
  done: boolean;
}

export class SimulationOptionsError extends Error {}

/** Rate ceiling per device: beyond this a device is a load generator, not a device. */
export const MAX_RATE_PER_SECOND = 1000;

function checkOptions(o: SimulationOptions): void {
  if (o.devices.length === 0) throw new SimulationOptionsError('no devices to simulate');
  const rate = o.ratePerSecond ?? 1;
  if (!(rate > 0 && rate <= MAX_RATE_PER_SECOND)) {
    throw new SimulationOptionsError(`the rate must be above 0 and at most ${MAX_RATE_PER_SECOND} messages/s`);
  }
  if (o.durationMs !== undefined && !(o.durationMs > 0)) throw new SimulationOptionsError('the duration must be > 0');
  if (o.messagesPerDevice !== undefined && !(Number.isInteger(o.messagesPerDevice) && o.messagesPerDevice > 0)) {
    throw new SimulationOptionsError('messages must be a positive integer');
  }
  if (o.durationMs === undefined && o.messagesPerDevice === undefined && !o.signal) {
    throw new SimulationOptionsError('give a duration, a message count or an abort signal: the run must end');
  }
  const ids = new Set(o.devices.map((d) => d.id));
  if (ids.size !== o.devices.length) throw new SimulationOptionsError('a device appears twice');
}

/** Closes a client, forcing it after a moment (a connection that is down cannot end politely). */
async function closeClient(client: DeviceClient): Promise<void> {
  const timer = sleep(2000).then(() => client.mqtt.end(true));
  await Promise.race([client.close(), timer]);
}

export async function runSimulation(options: SimulationOptions): Promise<SimulationResult> {
  checkOptions(options);
  const started = Date.now();
  const intervalMs = 1000 / (options.ratePerSecond ?? 1);
  const schema = options.schema ?? DEFAULT_TELEMETRY_SCHEMA;
  const stats = { connected: 0, messages: 0, errors: 0, commands: 0, online: 0 };
  let lastError: string | null = null;
  const fail = (error: unknown) => {
    stats.errors++;
    lastError = error instanceof Error ? error.message : String(error);
  };

  // The run's end: the signal, the duration, or every device done.
  const stop = new AbortController();
  const onAbort = () => stop.abort();
  options.signal?.addEventListener('abort', onAbort, { once: true });
  if (options.signal?.aborted) stop.abort();
  const deadline = options.durationMs !== undefined ? setTimeout(() => stop.abort(), options.durationMs) : undefined;
  const stopped = new Promise<void>((resolve) =>
    stop.signal.addEventListener('abort', () => resolve(), { once: true }),
  );

  const snapshot = (done: boolean): SimulationProgress => ({
    connected: stats.connected,
    messages: stats.messages,
    errors: stats.errors,
    commands: stats.commands,
    devices: options.devices.length,
    elapsedMs: Date.now() - started,
    online: stats.online,
    lastError,
    done,
  });
  const ticker = options.onProgress ? setInterval(() => options.onProgress!(snapshot(false)), 1000) : undefined;

  const clients: DeviceClient[] = [];
  let slots = options.connectConcurrency ?? 20;
  const waiting: Array<() => void> = [];
  const acquire = async () => {
    while (slots === 0) await new Promise<void>((resolve) => waiting.push(resolve));
    slots--;
  };
  const release = () => {
    slots++;
    waiting.shift()?.();
  };

  const runDevice = async (device: SimDevice, index: number) => {
    await acquire();
    let client: DeviceClient;
    try {
      if (stop.signal.aborted) return;
      client = await DeviceClient.connect({
        url: options.url,
        ca: options.ca,
        deviceId: device.id,
        secret: device.secret,
        ...(options.protocolVersion ? { protocolVersion: options.protocolVersion } : {}),
        reconnect: {
          initialDelayMs: 500,
          maxDelayMs: 10_000,
          maxAttempts: options.maxConnectAttempts ?? 8,
          onGiveUp: (error) => fail(new Error(`${device.id}: gave up reconnecting: ${error.message}`)),
        },
      });
    } catch (error) {
      fail(new Error(`${device.id}: ${error instanceof DeviceConnectError ? error.message : String(error)}`));
      return;
    } finally {
      release();
    }
    if (stop.signal.aborted) {
      // Connected after the run ended: nothing to do, and the final close has already run.
      await closeClient(client);
      return;
    }
    clients.push(client);
    stats.connected++;
    stats.online++;
    let online = true;
    client.mqtt.on('connect', () => {
      if (!online) stats.online++;
      online = true;
    });
    client.mqtt.on('close', () => {
      if (online) stats.online--;
      online = false;
    });
    // Answer commands when this SDK handles them (acknowledged as succeeded).
    if (typeof (client as Partial<Pick<DeviceClient, 'onCommand'>>).onCommand === 'function') {
      try {
        await client.onCommand('*', (command) => {
          stats.commands++;
          return { simulated: true, name: command.name };
        });
      } catch (error) {
        fail(error);
      }
    }
    const telemetry = new TelemetryGenerator(schema);
    // Devices start spread over one interval, not all on the same tick.
    let next = Date.now() + (intervalMs * index) / options.devices.length;
    for (let sent = 0; options.messagesPerDevice === undefined || sent < options.messagesPerDevice;) {
      const wait = next - Date.now();
      if (wait > 0) await Promise.race([sleep(wait), stopped]);
      if (stop.signal.aborted) return;
      next = Math.max(next + intervalMs, Date.now());
      // While reconnecting, a message would only queue up: skip this tick.
      if (!client.mqtt.connected) continue;
      sent++;
      try {
        await client.publishTelemetry(telemetry.next());
        stats.messages++;
      } catch (error) {
        fail(new Error(`${device.id}: ${error instanceof Error ? error.message : String(error)}`));
      }
    }
  };

  try {
    const all = Promise.all(options.devices.map((device, i) => runDevice(device, i)));
    await Promise.race([all, stopped]);
    stop.abort();
    // Devices stop at their next tick; connects still in progress are not waited for.
    await Promise.race([all, sleep(3000)]);
  } finally {
    clearTimeout(deadline);
    clearInterval(ticker);
    options.signal?.removeEventListener('abort', onAbort);
    await Promise.all(clients.map(closeClient));
  }
  const result = snapshot(true);
  options.onProgress?.(result);
  return {
    connected: result.connected,
    messages: result.messages,
    errors: result.errors,
    commands: result.commands,
    devices: result.devices,
    elapsedMs: result.elapsedMs,
  };
}
