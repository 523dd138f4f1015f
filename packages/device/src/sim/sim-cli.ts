// castellan-sim: runs N simulated devices of a product against a platform, with a live progress line
// on stderr (rewritten in place on a terminal, one line a second otherwise) and the totals as one JSON
// line on stdout. Exit codes: 0 every device connected and nothing failed, 1 the run had failures,
// 2 bad input (the message says what is wrong).
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { parseArgs } from 'node:util';
import { isDeviceId } from '@castellan/protocol';
import {
  MAX_RATE_PER_SECOND,
  runSimulation,
  type SimDevice,
  SimulationOptionsError,
  type SimulationProgress,
  type SimulationResult,
} from './run-simulation.ts';
import { parseTelemetrySchema, SchemaFileError, type TelemetrySchema } from './telemetry-generator.ts';

export const SIM_EXIT = { ok: 0, failures: 1, usage: 2 } as const;

export interface SimIo {
  stdout: { write(text: string): unknown };
  stderr: { write(text: string): unknown; isTTY?: boolean };
  /** Ends the run early (the CLI wires SIGINT and SIGTERM). */
  signal?: AbortSignal;
}

export class SimUsageError extends Error {}

export const SIM_HELP = `Usage: castellan-sim --devices <file|dir> [options]

Runs simulated devices against a Castellan platform: each connects over MQTT/TLS with its own ID and
secret (pinned CA, reconnect with backoff), reports telemetry at QoS 1 and answers commands.

  --devices <path>   {"devices":[{"id","secret"}]} as returned by POST /v1/products/:productId/devices,
                     or a directory of castellan-factory device files <deviceId>.json
  --url <mqtts://>   the platform's MQTT listener (default: mqttUrl of the device files)
  --ca <file>        the platform's CA certificate, PEM (default: caPem of the device files)
  --count <n>        simulate the first n devices (default: all)
  --rate <r>         telemetry messages per second per device, e.g. 0.2 or 5 (default 1)
  --duration <s>     stop after s seconds
  --messages <n>     each device stops after n messages
  --schema <file>    the product's data points ({properties:[...]}, or a product with dataPoints);
                     default: temperature, humidity, switch
  --help             this text

Without --duration and --messages it runs until Ctrl-C. Totals go to stdout as JSON; progress to stderr.
Exit codes: 0 all devices connected and nothing failed, 1 some failures, 2 bad input.
`;

function readText(path: string, what: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (error) {
    throw new SimUsageError(
      `cannot read ${what} ${path}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`,
    );
  }
}

function parseJson(text: string, where: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new SimUsageError(`${where} is not valid JSON`);
  }
}

interface LoadedDevice extends SimDevice {
  readonly mqttUrl?: string;
  readonly caPem?: string;
}

/** {id, secret} or a factory device file {deviceId, secret, mqttUrl, caPem}. */
function deviceFrom(value: unknown, where: string): LoadedDevice {
  const v = value as Record<string, unknown> | null;
  const id = v?.id ?? v?.deviceId;
  if (!isDeviceId(id))
    throw new SimUsageError(`${where}: no valid device ID (id or deviceId: 24 lower-case hex digits)`);
  if (typeof v?.secret !== 'string' || v.secret.length === 0) throw new SimUsageError(`${where}: no secret`);
  return {
    id,
    secret: v.secret,
    ...(typeof v.mqttUrl === 'string' ? { mqttUrl: v.mqttUrl } : {}),
    ...(typeof v.caPem === 'string' ? { caPem: v.caPem } : {}),
  };
}

/** Loads devices from a POST /v1/products/:id/devices response file or a directory of device files. */
export function loadSimDevices(path: string): LoadedDevice[] {
  let isDirectory: boolean;
  try {
    isDirectory = statSync(path).isDirectory();
  } catch (error) {
    throw new SimUsageError(`cannot read --devices ${path}: ${(error as NodeJS.ErrnoException).code ?? 'unreadable'}`);
  }
  if (isDirectory) {
    const files = readdirSync(path)
      .filter((f) => /^[0-9a-f]{24}\.json$/.test(f))
      .sort();
    if (files.length === 0) throw new SimUsageError(`--devices ${path} holds no <deviceId>.json device files`);
    return files.map((file) => {
      const device = deviceFrom(parseJson(readText(join(path, file), 'device file'), file), file);
      if (`${device.id}.json` !== basename(file)) throw new SimUsageError(`${file} holds the device ${device.id}`);
      return device;
    });
  }
  const value = parseJson(readText(path, '--devices'), path);
  const list = Array.isArray(value) ? value : (value as { devices?: unknown } | null)?.devices;
  if (!Array.isArray(list)) {
    // A single factory device file.
    if (value && typeof value === 'object' && ('deviceId' in value || 'id' in value)) return [deviceFrom(value, path)];
    throw new SimUsageError(`${path} has no "devices" list (expected {"devices":[{"id","secret"}]})`);
  }
  if (list.length === 0) throw new SimUsageError(`${path} lists no devices`);
  return list.map((item, i) => deviceFrom(item, `${path}: devices[${i}]`));
}

function positive(name: string, text: string | undefined, integer: boolean, max: number): number | undefined {
  if (text === undefined) return undefined;
  const value = Number(text);
  if (!/^\d+(\.\d+)?$/.test(text) || !(value > 0) || value > max || (integer && !Number.isInteger(value))) {
    throw new SimUsageError(
      `--${name} must be ${integer ? 'a whole number' : 'a number'} above 0 and at most ${max}, got '${text}'`,
    );
  }
  return value;
}

/** Reads the command line into run options; throws SimUsageError naming what is wrong. */
export function parseSimArgs(argv: readonly string[]) {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      args: [...argv],
      strict: true,
      allowPositionals: false,
      options: {
        url: { type: 'string' },
        ca: { type: 'string' },
        devices: { type: 'string' },
        count: { type: 'string' },
        rate: { type: 'string' },
        duration: { type: 'string' },
        messages: { type: 'string' },
        schema: { type: 'string' },
        help: { type: 'boolean' },
      },
    }));
  } catch (error) {
    throw new SimUsageError((error as Error).message);
  }
  if (values.help) return { help: true as const };
  const str = (name: string) => values[name] as string | undefined;
  const devicesPath = str('devices');
  if (!devicesPath) throw new SimUsageError('--devices is required');
  const count = positive('count', str('count'), true, 1_000_000);
  const rate = positive('rate', str('rate'), false, MAX_RATE_PER_SECOND);
  const duration = positive('duration', str('duration'), false, 7 * 86_400);
  const messages = positive('messages', str('messages'), true, 1_000_000_000);
  const loaded = loadSimDevices(devicesPath);
  if (count !== undefined && count > loaded.length) {
    throw new SimUsageError(`--count ${count} asks for more devices than ${devicesPath} holds (${loaded.length})`);
  }
  const devices = loaded.slice(0, count ?? loaded.length);
  const from = (field: 'mqttUrl' | 'caPem', option: string): string => {
    const found = new Set(devices.map((d) => d[field]));
    const only = found.size === 1 ? [...found][0] : undefined;
    if (only === undefined) throw new SimUsageError(`${option} is required (the device files do not name one)`);
    return only;
  };
  const url = str('url') ?? from('mqttUrl', '--url');
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new SimUsageError(`--url is not a URL: '${url}'`);
  }
  if (parsed.protocol !== 'mqtts:') throw new SimUsageError(`--url must be mqtts:// (MQTT over TLS), got '${url}'`);
  const caPath = str('ca');
  const ca = caPath !== undefined ? readText(caPath, '--ca') : from('caPem', '--ca');
  if (!ca.includes('-----BEGIN CERTIFICATE-----')) {
    throw new SimUsageError(
      caPath !== undefined ? `--ca ${caPath} is not a PEM certificate` : 'the caPem of the device files is not PEM',
    );
  }
  let schema: TelemetrySchema | undefined;
  const schemaPath = str('schema');
  if (schemaPath !== undefined) {
    try {
      schema = parseTelemetrySchema(parseJson(readText(schemaPath, '--schema'), schemaPath));
    } catch (error) {
      if (error instanceof SchemaFileError) throw new SimUsageError(`--schema ${schemaPath}: ${error.message}`);
      throw error;
    }
  }
  return {
    help: false as const,
    url,
    ca,
    devices: devices.map((d) => ({ id: d.id, secret: d.secret })),
    ...(rate !== undefined ? { ratePerSecond: rate } : {}),
    ...(duration !== undefined ? { durationMs: duration * 1000 } : {}),
    ...(messages !== undefined ? { messagesPerDevice: messages } : {}),
    ...(schema ? { schema } : {}),
  };
}

export function progressLine(p: SimulationProgress): string {
  const seconds = p.elapsedMs / 1000;
  const rate = seconds > 0 ? p.messages / seconds : 0;
  const parts = [
    `castellan-sim ${seconds.toFixed(1)}s`,
    // Live: connected right now; at the end: how many connected at all.
    `connected ${p.done ? p.connected : p.online}/${p.devices}`,
    `messages ${p.messages} (${rate.toFixed(1)}/s)`,
    `errors ${p.errors}`,
  ];
  if (p.commands > 0) parts.push(`commands ${p.commands}`);
  if (p.errors > 0 && p.lastError) parts.push(`last: ${p.lastError.slice(0, 80)}`);
  return parts.join('  ');
}

export async function simMain(argv: readonly string[], io: SimIo): Promise<number> {
  let options: ReturnType<typeof parseSimArgs>;
  try {
    options = parseSimArgs(argv);
  } catch (error) {
    if (!(error instanceof SimUsageError)) throw error;
    io.stderr.write(`castellan-sim: ${error.message}\nRun castellan-sim --help for usage.\n`);
    return SIM_EXIT.usage;
  }
  if (options.help) {
    io.stdout.write(SIM_HELP);
    return SIM_EXIT.ok;
  }
  const tty = io.stderr.isTTY === true;
  let result: SimulationResult;
  try {
    result = await runSimulation({
      ...options,
      ...(io.signal ? { signal: io.signal } : {}),
      onProgress: (p) => {
        // In place on a terminal (carriage return, clear the line); a line a second in a log.
        if (tty) io.stderr.write(`\r\x1b[2K${progressLine(p)}${p.done ? '\n' : ''}`);
        else io.stderr.write(`${progressLine(p)}\n`);
      },
    });
  } catch (error) {
    io.stderr.write(`castellan-sim: ${(error as Error).message}\n`);
    return error instanceof SimulationOptionsError ? SIM_EXIT.usage : SIM_EXIT.failures;
  }
  io.stdout.write(`${JSON.stringify(result)}\n`);
  if (result.connected < result.devices || result.errors > 0) {
    io.stderr.write(
      `castellan-sim: ${result.devices - result.connected} of ${result.devices} devices never connected, ${result.errors} errors\n`,
    );
    return SIM_EXIT.failures;
  }
  return SIM_EXIT.ok;
}
