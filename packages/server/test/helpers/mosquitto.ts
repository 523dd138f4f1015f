// A private Eclipse Mosquitto (Debian's /usr/sbin/mosquitto, 2.0.x) for differential tests: its own
// generated config in a temp dir, loopback only, on a free port (never the machine's own on 1883).
// Killed on close; its log is kept for debugging a scenario that went wrong.
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net, { type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const MOSQUITTO_BIN = process.env.MOSQUITTO_BIN ?? '/usr/sbin/mosquitto';

/**
 * Why Mosquitto cannot be used here, or undefined when it can. On CI (CI=true) a missing broker is an
 * error, never a skip: the differential suite would otherwise pass without comparing anything.
 */
export function mosquittoUnavailable(): string | undefined {
  if (existsSync(MOSQUITTO_BIN)) return undefined;
  const reason = `${MOSQUITTO_BIN} not found (Debian package 'mosquitto')`;
  if (process.env.CI === 'true') throw new Error(`${reason}: required on CI (CI=true) for the differential tests`);
  return reason;
}

export interface MosquittoBroker {
  readonly port: number;
  /** mqtt://127.0.0.1:port */
  readonly url: string;
  /** The broker's own log (stdout and stderr, log_type all), for a failure message. */
  log(lastLines?: number): string;
  close(): Promise<void>;
}

const MAX_LOG_LINES = 5000;

/** A free loopback port: bind port 0, read it, close. Another process may take it meanwhile: callers retry. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/**
 * Starts Mosquitto with `listener <port> 127.0.0.1`, anonymous access, no persistence and `extraConfig`
 * lines (e.g. `max_keepalive 1`). Resolves once it accepts TCP connections.
 */
export async function startMosquitto(extraConfig: readonly string[] = []): Promise<MosquittoBroker> {
  const reason = mosquittoUnavailable();
  if (reason) throw new Error(reason);
  const dir = await mkdtemp(join(tmpdir(), 'castellan-mosquitto-'));
  let lastError: Error | undefined;
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort();
    try {
      return await launch(dir, port, extraConfig);
    } catch (error) {
      lastError = error as Error;
      // Only a lost race for the port is worth another try.
      if (!(error as { addressInUse?: boolean }).addressInUse) break;
    }
  }
  await rm(dir, { recursive: true, force: true });
  throw lastError ?? new Error('mosquitto did not start');
}

async function launch(dir: string, port: number, extraConfig: readonly string[]): Promise<MosquittoBroker> {
  const configPath = join(dir, `mosquitto-${port}.conf`);
  const config = [
    `listener ${port} 127.0.0.1`,
    'allow_anonymous true',
    'persistence false',
    'log_dest stderr',
    'log_type all',
    'log_timestamp_format %H:%M:%S',
    ...extraConfig,
    '',
  ].join('\n');
  await writeFile(configPath, config, { mode: 0o644 });

  const lines: string[] = [];
  const child: ChildProcess = spawn(MOSQUITTO_BIN, ['-c', configPath], { stdio: ['ignore', 'pipe', 'pipe'] });
  const record = (chunk: Buffer) => {
    for (const line of chunk.toString('utf8').split('\n')) {
      if (!line) continue;
      lines.push(line);
      if (lines.length > MAX_LOG_LINES) lines.splice(0, lines.length - MAX_LOG_LINES);
    }
  };
  child.stdout!.on('data', record);
  child.stderr!.on('data', record);
  let exited: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  const exit = new Promise<void>((resolve) => {
    child.once('exit', (code, signal) => {
      exited = { code, signal };
      resolve();
    });
  });
  child.once('error', (error) => lines.push(`spawn error: ${error.message}`));
  // Never leave a broker behind if the test process ends without closing it.
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);
  const log = (lastLines = 200) => lines.slice(-lastLines).join('\n');

  const deadline = Date.now() + 5000;
  while (!(await canConnect(port))) {
    if (exited || Date.now() > deadline) {
      if (!exited) child.kill('SIGKILL');
      await exit;
      process.off('exit', killOnExit);
      const text = log();
      const error = new Error(
        `mosquitto on port ${port} did not start (exit ${exited?.code ?? exited?.signal}):\n${text}`,
      ) as Error & { addressInUse?: boolean };
      error.addressInUse = /address already in use/i.test(text);
      throw error;
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }

  let closing: Promise<void> | undefined;
  return {
    port,
    url: `mqtt://127.0.0.1:${port}`,
    log,
    close() {
      closing ??= (async () => {
        if (!exited) {
          child.kill('SIGTERM');
          const timer = setTimeout(() => child.kill('SIGKILL'), 2000);
          await exit;
          clearTimeout(timer);
        }
        process.off('exit', killOnExit);
        await rm(dir, { recursive: true, force: true });
      })();
      return closing;
    },
  };
}
