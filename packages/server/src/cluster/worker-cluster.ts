// `castellan up` with cluster.workers > 1 (scale mode, RES-2): this primary process forks the workers and
// serves nothing itself. Workers share the listening sockets through node:cluster (the primary accepts
// and hands each connection to the next worker in turn), so one machine holds more connections than one
// process's file limit allows. The first worker starts alone (it migrates the database and makes the
// development keys and PKI, if any); the others follow once it is up. A worker that dies is replaced.
import cluster, { type Worker } from 'node:cluster';
import { rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

/** What a worker tells the primary once it serves. */
export interface WorkerReady {
  readonly type: 'castellan-ready';
  readonly httpUrl: string;
  readonly mqttUrl: string;
  readonly caFile: string | null;
  readonly nodeId: string | null;
}

export interface PrimaryOptions {
  workers: number;
  dataDir: string;
  runtimeFileName: string;
  notice: (message: string) => void;
  /** Replacements allowed per minute before the primary gives up (a crash loop). */
  maxRestartsPerMinute?: number;
}

function isReady(message: unknown): message is WorkerReady {
  return typeof message === 'object' && message !== null && (message as { type?: unknown }).type === 'castellan-ready';
}

/** Runs the primary until SIGTERM/SIGINT; resolves with the exit code. */
export async function runPrimary(options: PrimaryOptions): Promise<number> {
  let stopping = false;
  const restarts: number[] = [];
  const maxRestarts = options.maxRestartsPerMinute ?? 5;
  const fork = (index: number): Promise<{ worker: Worker; ready: WorkerReady }> =>
    new Promise((resolvePromise, reject) => {
      const worker = cluster.fork({ CASTELLAN_WORKER_INDEX: String(index) });
      let served = false;
      const onMessage = (message: unknown) => {
        if (!isReady(message)) return;
        served = true;
        worker.off('exit', onEarlyExit);
        resolvePromise({ worker, ready: message });
      };
      const onEarlyExit = (code: number | null, signal: string | null) =>
        reject(new Error(`worker ${index} stopped before it served (${signal ?? `exit code ${code}`})`));
      worker.on('message', onMessage);
      worker.once('exit', onEarlyExit);
      worker.once('exit', (code, signal) => {
        // One that never served is the start's failure (rejected above), not one to replace.
        if (stopping || !served) return;
        const now = Date.now();
        while (restarts.length > 0 && restarts[0]! < now - 60_000) restarts.shift();
        if (restarts.length >= maxRestarts) {
          options.notice(`castellan: worker ${index} keeps stopping (${signal ?? code}); giving up`);
          void stopAll(1);
          return;
        }
        restarts.push(now);
        options.notice(`castellan: worker ${index} stopped (${signal ?? `exit code ${code}`}); starting another`);
        setTimeout(() => {
          if (!stopping)
            fork(index).catch((error: unknown) => options.notice(`castellan: ${(error as Error).message}`));
        }, 1_000).unref();
      });
    });

  let finish: (code: number) => void = () => {};
  const done = new Promise<number>((resolvePromise) => (finish = resolvePromise));
  const runtimeFile = join(resolve(options.dataDir), options.runtimeFileName);
  const stopAll = async (code: number) => {
    if (stopping) return;
    stopping = true;
    const alive = Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined && !w.isDead());
    await Promise.all(
      alive.map(
        (worker) =>
          new Promise<void>((resolvePromise) => {
            const kill = setTimeout(() => worker.process.kill('SIGKILL'), 30_000);
            worker.once('exit', () => {
              clearTimeout(kill);
              resolvePromise();
            });
            worker.process.kill('SIGTERM');
          }),
      ),
    );
    rmSync(runtimeFile, { force: true });
    finish(code);
  };
  let signalled = false;
  const onSignal = () => {
    if (signalled) process.exit(1);
    signalled = true;
    void stopAll(0);
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);

  try {
    const first = await fork(1);
    const rest = await Promise.all(Array.from({ length: options.workers - 1 }, (_, i) => fork(i + 2)));
    const ready = first.ready;
    writeFileSync(
      runtimeFile,
      `${JSON.stringify(
        {
          pid: process.pid,
          httpUrl: ready.httpUrl,
          mqttUrl: ready.mqttUrl,
          caFile: ready.caFile,
          startedAt: new Date().toISOString(),
          workers: [first, ...rest].map(({ worker, ready: r }) => ({ pid: worker.process.pid, nodeId: r.nodeId })),
        },
        null,
        2,
      )}\n`,
      { mode: 0o600 },
    );
    options.notice(
      `\n  Castellan is up (scale mode, ${options.workers} workers).\n    HTTPS API:     ${ready.httpUrl}\n    MQTT over TLS: ${ready.mqttUrl}\n`,
    );
  } catch (error) {
    options.notice(`castellan: ${(error as Error).message}`);
    await stopAll(1);
  }
  return done;
}

/** In a worker: tells the primary this worker serves. */
export function announceReady(ready: Omit<WorkerReady, 'type'>): void {
  process.send?.({ type: 'castellan-ready', ...ready } satisfies WorkerReady);
}

export const isClusterWorker = (): boolean => cluster.isWorker;
