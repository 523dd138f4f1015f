// Runner side of bench/server-process.ts: forks it (lib/bench-child.ts), waits for it to be ready, asks it
// for samples and stops it. Every wait is bounded, and a process that does not stop in time is killed, so
// a broken platform fails the bench instead of hanging it. Its temporary data directory and PostgreSQL
// schema are removed by the runner as well, in case the process died before it could do so itself.
import { BenchChild } from './bench-child.ts';
import type { RunnerMessage, ServerMessage, ServerSample, ServerStartOptions } from './ipc-messages.ts';

const SERVER_SCRIPT = new URL('../server-process.ts', import.meta.url);
const START_TIMEOUT_MS = 60_000;
const SAMPLE_TIMEOUT_MS = 30_000;

export interface PlatformProcessOptions {
  /** Short label for log prefixes, e.g. "sqlite". */
  label: string;
  /** postgres://… or '' for SQLite. */
  databaseUrl: string;
  devices: number;
  /** See ServerStartOptions: a measure's own configuration on top of the bench's. */
  configOverrides?: ServerStartOptions['configOverrides'];
  reportLimits?: ServerStartOptions['reportLimits'];
}

type ReadyMessage = Extract<ServerMessage, { type: 'ready' }>;

export class PlatformProcess {
  readonly #child: BenchChild<RunnerMessage, ServerMessage>;
  #ready: ReadyMessage | undefined;

  private constructor(options: PlatformProcessOptions) {
    this.#child = new BenchChild({
      script: SERVER_SCRIPT,
      name: 'platform',
      prefix: `[server ${options.label}] `,
      databaseUrl: options.databaseUrl,
      // BENCH_CPU_PROF_DIR=<dir>: every platform process writes a V8 CPU profile there when it exits.
      ...(process.env.BENCH_CPU_PROF_DIR
        ? { execArgv: ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_CPU_PROF_DIR}`] }
        : {}),
    });
  }

  /** Forks the platform process and resolves once its devices are provisioned; rejects with its reason. */
  static async start(options: PlatformProcessOptions): Promise<PlatformProcess> {
    const proc = new PlatformProcess(options);
    const child = proc.#child;
    try {
      const ready = child.next('ready', START_TIMEOUT_MS, 'the platform did not start');
      child.send({
        type: 'start',
        options: {
          dataDir: child.dataDir,
          databaseUrl: child.databaseUrl,
          schema: child.schema,
          devices: options.devices,
          ...(options.configOverrides ? { configOverrides: options.configOverrides } : {}),
          ...(options.reportLimits ? { reportLimits: options.reportLimits } : {}),
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
    const answer = this.#child.next('sample', SAMPLE_TIMEOUT_MS, 'the platform did not answer a sample request');
    this.#child.send({ type: 'sample', countRows });
    return (await answer).sample;
  }

  /** Changes the bench product's report limits (the per-device limits of the guard) while running. */
  async setReportLimits(perSecond: number, perDay: number): Promise<void> {
    const answer = this.#child.next('report-limits-set', SAMPLE_TIMEOUT_MS, 'the platform did not set the limits');
    this.#child.send({ type: 'set-report-limits', perSecond, perDay });
    await answer;
  }

  /** Stops the platform (it closes, drops its schema and exits), killing it if it takes too long. */
  stop(): Promise<void> {
    return this.#child.stop();
  }
}
