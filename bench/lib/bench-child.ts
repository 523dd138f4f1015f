// A bench child process as the runner sees it: forks a script under bench/ with a fresh temporary data
// directory and, for PostgreSQL, a fresh schema name (`bench_<hex>`), waits for its messages with bounded
// waits, and stops it. A child that does not stop in time is killed. Its directory and schema are removed
// here as well, in case it died before it could do so itself. Used for bench/server-process.ts (through
// PlatformProcess) and bench/audit-process.ts.
import { type ChildProcess, fork } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { dropBenchSchema } from './pg-schema.ts';

const STOP_TIMEOUT_MS = 15_000;

/** What every child can send besides its own messages (see lib/ipc-messages.ts). */
interface BaseMessage {
  type: string;
}

/** Children not yet stopped; killed and cleaned up on exit whatever way the runner ends. */
const live = new Set<BenchChild<BaseMessage, BaseMessage>>();
process.on('exit', () => {
  for (const child of live) child.kill();
});

/** Stops every child still running (Ctrl-C, watchdog), waiting at most `ms`. */
export async function stopAllBenchChildren(ms: number): Promise<void> {
  await Promise.race([Promise.all([...live].map((child) => child.stop())), delay(ms)]);
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

export interface BenchChildOptions {
  script: URL;
  /** What the child is, for messages: "platform", "audit". */
  name: string;
  /** Prefix of the child's stderr/stdout lines, e.g. "[server sqlite] ". */
  prefix: string;
  /** postgres://… (a schema name is generated) or '' for SQLite. */
  databaseUrl: string;
  /** Node options for the child (default: the runner's own), e.g. ['--cpu-prof', '--cpu-prof-dir=…']. */
  execArgv?: string[];
}

export interface NextOptions<In> {
  /** Messages of type 'progress' go here, and each one restarts the timeout (a stall timeout, then). */
  onProgress?: (message: In) => void;
}

/**
 * `Out`: what the runner sends (its 'stop' is sent by stop()). `In`: what the child sends; a
 * `{ type: 'failed', message }` rejects any wait, a `{ type: 'stopped' }` says it cleaned up itself.
 */
export class BenchChild<Out extends BaseMessage, In extends BaseMessage> {
  /** Fresh temporary directory owned by the runner (removed by it too). */
  readonly dataDir: string;
  readonly databaseUrl: string;
  /** PostgreSQL schema for the child to create and drop ('' for SQLite). */
  readonly schema: string;
  readonly #name: string;
  readonly #child: ChildProcess;
  readonly #exited: Promise<void>;
  /** How the process ended, for error messages ("code 1", "signal SIGKILL"). */
  #exitStatus = '';
  /** Set when the child reported that it dropped its schema itself. */
  #cleanedUp = false;
  #stopping: Promise<void> | undefined;

  constructor(options: BenchChildOptions) {
    this.#name = options.name;
    this.dataDir = mkdtempSync(join(tmpdir(), 'castellan-bench-'));
    this.databaseUrl = options.databaseUrl;
    this.schema = options.databaseUrl ? `bench_${randomBytes(6).toString('hex')}` : '';
    const child = fork(options.script, [], {
      execPath: process.execPath,
      ...(options.execArgv ? { execArgv: [...process.execArgv, ...options.execArgv] } : {}),
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
    child.on('message', (message: BaseMessage) => {
      if (message.type === 'stopped') this.#cleanedUp = true;
    });
    forwardLines(child.stdout, options.prefix);
    forwardLines(child.stderr, options.prefix);
  }

  send(message: Out): void {
    this.#sendRaw(message);
  }

  /** The next message of a type; rejects on a 'failed' report, on exit and on timeout, each saying `what`. */
  next<K extends In['type']>(
    type: K,
    timeoutMs: number,
    what: string,
    options: NextOptions<In> = {},
  ): Promise<Extract<In, { type: K }>> {
    return new Promise((resolve, reject) => {
      const child = this.#child;
      let timer: NodeJS.Timeout | undefined;
      const arm = () => {
        clearTimeout(timer);
        timer = setTimeout(() => settle(new Error(`${what}: no answer within ${timeoutMs / 1000} s`)), timeoutMs);
      };
      const onMessage = (message: In) => {
        if (message.type === type) settle(null, message as Extract<In, { type: K }>);
        else if (message.type === 'failed') settle(new Error(`${what}: ${(message as { message?: string }).message}`));
        else if (message.type === 'progress' && options.onProgress) {
          options.onProgress(message);
          arm();
        }
      };
      const onExit = () => settle(new Error(`${what}: the ${this.#name} process exited (${this.#exitStatus})`));
      let settled = false;
      const settle = (error: Error | null, message?: Extract<In, { type: K }>) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        child.removeListener('message', onMessage);
        if (error) reject(error);
        else resolve(message!);
      };
      arm();
      child.on('message', onMessage);
      // A 'failed' message sent just before exiting arrives first; the exit then changes nothing.
      void this.#exited.then(() => setImmediate(onExit));
    });
  }

  /** Stops the child (it cleans up and exits), killing it if it takes too long; then removes what is left. */
  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      this.#sendRaw({ type: 'stop' });
      const timedOut = await Promise.race([this.#exited.then(() => false), delay(STOP_TIMEOUT_MS).then(() => true)]);
      if (timedOut) {
        process.stderr.write(
          `bench: the ${this.#name} process did not stop within ${STOP_TIMEOUT_MS / 1000} s; killing it\n`,
        );
        this.#child.kill('SIGKILL');
        await this.#exited;
      }
      rmSync(this.dataDir, { recursive: true, force: true });
      if (this.schema && !this.#cleanedUp) {
        // Best effort: when PostgreSQL is unreachable there is nothing to drop, and the start error said why.
        await dropBenchSchema(this.databaseUrl, this.schema).catch(() => {});
      }
      live.delete(this);
    })();
    return this.#stopping;
  }

  /** Synchronous last resort for process exit: no graceful close, no schema drop. */
  kill(): void {
    this.#child.kill('SIGKILL');
    rmSync(this.dataDir, { recursive: true, force: true });
  }

  #sendRaw(message: BaseMessage): void {
    // A send to a process that just died fails with EPIPE; its exit is what gets reported.
    if (this.#child.connected) this.#child.send(message, (error) => void error);
  }
}
