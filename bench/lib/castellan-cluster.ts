// Castellan in scale mode for the bench: `castellan up` with cluster.enabled and cluster.workers worker
// processes over one PostgreSQL schema and one Redis (a unique key prefix), the way an operator runs it
// (packages/server/test/scale-mode.test.ts does the same). The data directory and schema are the
// caller's (already migrated and provisioned, with the development root key and PKI in the directory).
// Ready once the primary wrote runtime.json (all workers serve); stopped with SIGTERM, SIGKILL after 30 s.
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { processTree, totalRssBytes } from './process-tree.ts';

const BIN = resolve(import.meta.dirname, '../../packages/server/bin/castellan.js');
const START_TIMEOUT_MS = 120_000;
const STOP_TIMEOUT_MS = 30_000;
const REDIS_CLEANUP_TIMEOUT_MS = 10_000;

export interface ClusterOptions {
  dataDir: string;
  databaseUrl: string;
  schema: string;
  redisUrl: string;
  /** Unique per run: rate limits, blocks and ticket keys of this deployment only. */
  redisKeyPrefix: string;
  workers: number;
  /** mqtt.maxConnections of each worker. */
  maxConnectionsPerWorker: number;
  /** Prefix of the deployment's log lines on stderr. */
  prefix: string;
}

/** Deployments not yet stopped: killed if the runner exits first. */
const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

export class CastellanCluster {
  readonly mqttPort: number;
  readonly #child: ChildProcess;
  readonly #exited: Promise<void>;
  readonly #redisUrl: string;
  readonly #redisKeyPrefix: string;
  #stopping: Promise<void> | undefined;

  private constructor(child: ChildProcess, exited: Promise<void>, mqttPort: number, options: ClusterOptions) {
    this.#child = child;
    this.#exited = exited;
    this.mqttPort = mqttPort;
    this.#redisUrl = options.redisUrl;
    this.#redisKeyPrefix = options.redisKeyPrefix;
  }

  static async start(options: ClusterOptions): Promise<CastellanCluster> {
    const config = {
      dataDir: options.dataDir,
      log: { level: 'warn' },
      http: { host: '127.0.0.1', port: 0 },
      mqtt: {
        host: '127.0.0.1',
        port: 0,
        maxConnections: options.maxConnectionsPerWorker,
        // The swarm connects whole fleets from a few loopback addresses: admission limits opened wide.
        connectsPerIpPerSecond: 1_000_000,
        connectBurstPerIp: 1_000_000,
        maxPendingHandshakes: 10_000,
        // Devices ask for 600 s; the default cap (300 s) would have them ping twice as often.
        maxKeepAliveSeconds: 1_200,
      },
      admin: { enabled: false },
      // The workers share PostgreSQL's 100 connections (max_connections), each with its key store's pool
      // of 4 besides this one; ~80 in all leaves room for the rest. Too small a pool starves the connect
      // path (presence, audit, heartbeat: "timeout exceeded when trying to connect").
      database: {
        url: options.databaseUrl,
        schema: options.schema,
        poolMax: Math.max(3, Math.min(10, Math.floor(80 / options.workers) - 4)),
      },
      redis: { url: options.redisUrl, keyPrefix: options.redisKeyPrefix },
      cluster: { enabled: true, workers: options.workers },
      guard: {
        mqttConnectsPerIpPerMinute: 10_000_000,
        authFailuresPerIp: 100_000,
        authFailuresPerDevice: 100_000,
      },
    };
    const file = join(options.dataDir, 'castellan.bench.json');
    writeFileSync(file, JSON.stringify(config, null, 2), { mode: 0o600 });
    const env = Object.fromEntries(
      Object.entries(process.env).filter(
        ([k]) => !k.startsWith('CASTELLAN_') && k !== 'DATABASE_URL' && k !== 'REDIS_URL',
      ),
    );
    const child = spawn(process.execPath, [BIN, 'up', '--config', file], {
      cwd: options.dataDir,
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    live.add(child);
    const exited = new Promise<void>((done) => {
      child.once('exit', () => {
        live.delete(child);
        done();
      });
      child.once('error', () => {
        live.delete(child);
        done();
      });
    });
    let output = '';
    for (const stream of [child.stdout, child.stderr]) {
      stream?.setEncoding('utf8');
      stream?.on('data', (chunk: string) => {
        output = (output + chunk).slice(-8_000);
        for (const line of chunk.split('\n')) {
          // The development PKI and root key are expected here; everything else is shown.
          if (
            line.trim() &&
            !/DEVELOPMENT DEFAULTS|Production supplies|development outbox|Castellan is up|HTTPS API|MQTT over TLS/.test(
              line,
            )
          )
            process.stderr.write(`${options.prefix}${line}\n`);
        }
      });
    }
    const runtimeFile = join(options.dataDir, 'runtime.json');
    const deadline = performance.now() + START_TIMEOUT_MS;
    while (!existsSync(runtimeFile) && child.exitCode === null && performance.now() < deadline) await sleep(100);
    const cluster = (port: number) => new CastellanCluster(child, exited, port, options);
    if (!existsSync(runtimeFile)) {
      await cluster(0).stop();
      throw new Error(
        `castellan up (${options.workers} workers) did not start within ${START_TIMEOUT_MS / 1000} s: ${output.trim().slice(-2_000)}`,
      );
    }
    await sleep(100);
    const runtime = JSON.parse(readFileSync(runtimeFile, 'utf8')) as { mqttUrl: string };
    return cluster(Number(new URL(runtime.mqttUrl).port));
  }

  /** The primary and every worker. */
  pids(): number[] {
    return this.#child.pid === undefined || this.#child.exitCode !== null ? [] : processTree(this.#child.pid);
  }

  /** Sum of VmRSS over the primary and the workers, bytes. */
  rssBytes(): number {
    return totalRssBytes(this.pids());
  }

  /** SIGTERM to the primary (it stops its workers), SIGKILL to all after 30 s; then its Redis keys go. */
  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      const pids = this.pids();
      if (this.#child.exitCode === null) {
        this.#child.kill('SIGTERM');
        const stopped = await Promise.race([
          this.#exited.then(() => true),
          sleep(STOP_TIMEOUT_MS, false, { ref: false }),
        ]);
        if (!stopped) {
          process.stderr.write(`bench: castellan up did not stop within ${STOP_TIMEOUT_MS / 1000} s; killing it\n`);
          for (const pid of pids) {
            try {
              process.kill(pid, 'SIGKILL');
            } catch {
              // Already gone.
            }
          }
          await this.#exited;
        }
      }
      await deleteRedisKeys(this.#redisUrl, this.#redisKeyPrefix).catch((error: unknown) =>
        process.stderr.write(
          `bench: could not remove the Redis keys ${this.#redisKeyPrefix}*: ${(error as Error).message}\n`,
        ),
      );
    })();
    return this.#stopping;
  }
}

/** Best effort, bounded: SCAN + UNLINK the deployment's keys (they would expire, but not all of them). */
async function deleteRedisKeys(url: string, prefix: string): Promise<void> {
  if (!/^castellan-bench-[a-f0-9]{8,}:$/.test(prefix)) throw new Error(`refusing to delete keys under ${prefix}`);
  const { Redis } = await import('ioredis');
  const redis = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1, connectTimeout: 3_000 });
  const work = (async () => {
    await redis.connect();
    let cursor = '0';
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
      cursor = next;
      if (keys.length) await redis.unlink(...keys);
    } while (cursor !== '0');
  })();
  try {
    await Promise.race([
      work,
      sleep(REDIS_CLEANUP_TIMEOUT_MS, undefined, { ref: false }).then(() => {
        throw new Error('timed out');
      }),
    ]);
  } finally {
    redis.disconnect();
  }
}
