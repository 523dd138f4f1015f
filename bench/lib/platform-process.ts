// Runner side of bench/server-process.ts: forks it, waits for it to be ready, asks it for samples and
// stops it. Every wait is bounded, and a process that does not stop in time is killed, so a broken
// platform fails the bench instead of hanging it. Its temporary data directory and PostgreSQL schema
// are removed here as well, in case the process died before it could do so itself.
import { type ChildProcess, fork } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import type { RunnerMessage, ServerMessage, ServerSample } from './ipc-messages.ts';
import { dropBenchSchema } from './pg-schema.ts';

const SERVER_SCRIPT = new URL('../server-process.ts', import.meta.url);
const START_TIMEOUT_MS = 60_000;
const SAMPLE_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 15_000;

/** Platform processes not yet stopped; killed and cleaned up on exit whatever way the runner ends. */
const live = new Set<PlatformProcess>();
process.on('exit', () => {
  for (const proc of live) proc.kill();
});

/** Stops every platform process still running (Ctrl-C, watchdog), waiting at most `ms`. */
export async function stopAllPlatformProcesses(ms: number): Promise<void> {
  await Promise.race([Promise.all([...live].map((proc) => proc.stop())), delay(ms)]);
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

/** Shows the child's output on our stderr, line by line with a prefix, keeping stdout for results. */
function forwardLines(stream: Readable | null, prefix: string): void {
  let partial = '';
  stream?.setEncoding('utf8');
  stream?.on('data', (chunk: string) => {
    const lines = (partial + chunk).split('\n');
    partial = lines.pop() ?? '';
    for (const line of lines) if (line) process.stderr.write(`${prefix}${line}\n`);
  });
  stream?.on('end', () => {
    if (partial) process.stderr.write(`${prefix}${partial}\n`);
  });
}

export interface PlatformProcessOptions {
  /** Short label for log prefixes, e.g. "sqlite". */
  label: string;
  /** postgres://… or '' for SQLite. */
  databaseUrl: string;
  devices: number;
}

type ReadyMessage = Extract<ServerMessage, { type: 'ready' }>;

export class PlatformProcess {
  readonly #child: ChildProcess;
  readonly #exited: Promise<void>;
  /** How the process ended, for error messages ("code 1", "signal SIGKILL"). */
  #exitStatus = '';
  readonly #dataDir: string;
  readonly #databaseUrl: string;
  readonly #schema: string;
  /** Set when the process reported that it dropped its schema itself. */
  #cleanedUp = false;
  #ready: ReadyMessage | undefined;
  #stopping: Promise<void> | undefined;

  private constructor(options: PlatformProcessOptions) {
    this.#dataDir = mkdtempSync(join(tmpdir(), 'castellan-bench-'));
    this.#databaseUrl = options.databaseUrl;
    this.#schema = options.databaseUrl ? `bench_${randomBytes(6).toString('hex')}` : '';
    const child = fork(SERVER_SCRIPT, [], {
      execPath: process.execPath,
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
    });
    this.#child = child;
    live.add(this);
    this.#exited = new Promise<void>((resolve) => {
      const done = (status: string) => {
        this.#exitStatus = status;
        resolve();
      };
      child.once('exit', (code, signal) => done(signal ? `signal ${signal}` : `code ${code}`));
      // A fork that could not spawn reports 'error' and may never report 'exit'; later 'error's are
      // failed sends to a process already gone, which its exit reports.
      child.on('error', (error) => {
        if (child.exitCode === null && child.signalCode === null && child.pid === undefined) done(error.message);
      });
    });
    child.on('message', (message: ServerMessage) => {
      if (message.type === 'stopped') this.#cleanedUp = true;
    });
    forwardLines(child.stdout, `[server ${options.label}] `);
    forwardLines(child.stderr, `[server ${options.label}] `);
  }

  /** Forks the platform process and resolves once its devices are provisioned; rejects with its reason. */
  static async start(options: PlatformProcessOptions): Promise<PlatformProcess> {
    const proc = new PlatformProcess(options);
    try {
      const ready = proc.#next('ready', START_TIMEOUT_MS, 'the platform did not start');
      proc.#send({
        type: 'start',
        options: {
          dataDir: proc.#dataDir,
          databaseUrl: options.databaseUrl,
          schema: proc.#schema,
          devices: options.devices,
        },
      });
      proc.#ready = await ready;
      return proc;
    } catch (error) {
      await proc.stop();
      throw error;
    }
  }

  /** What the platform reported once ready: its addresses, CA and provisioned devices. */
  get ready(): ReadyMessage {
    if (!this.#ready) throw new Error('the platform process is not ready');
    return this.#ready;
  }

  /** Cumulative counters of the platform process (see ServerSample). */
  async sample(countRows: boolean): Promise<ServerSample> {
    const answer = this.#next('sample', SAMPLE_TIMEOUT_MS, 'the platform did not answer a sample request');
    this.#send({ type: 'sample', countRows });
    return (await answer).sample;
  }

  /** Stops the platform (it closes, drops its schema and exits), killing it if it takes too long. */
  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      this.#send({ type: 'stop' });
      const timedOut = await Promise.race([this.#exited.then(() => false), delay(STOP_TIMEOUT_MS).then(() => true)]);
      if (timedOut) {
        process.stderr.write(
          `bench: the platform process did not stop within ${STOP_TIMEOUT_MS / 1000} s; killing it\n`,
        );
        this.#child.kill('SIGKILL');
        await this.#exited;
      }
      rmSync(this.#dataDir, { recursive: true, force: true });
      if (this.#schema && !this.#cleanedUp) {
        // Best effort: when PostgreSQL is unreachable there is nothing to drop, and the start error said why.
        await dropBenchSchema(this.#databaseUrl, this.#schema).catch(() => {});
      }
      live.delete(this);
    })();
    return this.#stopping;
  }

  /** Synchronous last resort for process exit: no graceful close, no schema drop. */
  kill(): void {
    this.#child.kill('SIGKILL');
    rmSync(this.#dataDir, { recursive: true, force: true });
  }

  #send(message: RunnerMessage): void {
    // A send to a process that just died fails with EPIPE; its exit is what gets reported.
    if (this.#child.connected) this.#child.send(message, (error) => void error);
  }

  /** The next message of a type; rejects on a 'failed' report, on exit and on timeout, each saying `what`. */
  #next<K extends ServerMessage['type']>(
    type: K,
    timeoutMs: number,
    what: string,
  ): Promise<Extract<ServerMessage, { type: K }>> {
    return new Promise((resolve, reject) => {
      const child = this.#child;
      const onMessage = (message: ServerMessage) => {
        if (message.type === type) settle(null, message as Extract<ServerMessage, { type: K }>);
        else if (message.type === 'failed') settle(new Error(`${what}: ${message.message}`));
      };
      const onExit = () => settle(new Error(`${what}: the platform process exited (${this.#exitStatus})`));
      const timer = setTimeout(() => settle(new Error(`${what}: no answer within ${timeoutMs / 1000} s`)), timeoutMs);
      const settle = (error: Error | null, message?: Extract<ServerMessage, { type: K }>) => {
        clearTimeout(timer);
        child.removeListener('message', onMessage);
        if (error) reject(error);
        else resolve(message!);
      };
      child.on('message', onMessage);
      // A 'failed' message sent just before exiting arrives first; the exit then changes nothing.
      void this.#exited.then(() => setImmediate(onExit));
    });
  }
}
