// Durable telemetry intake, batched. Publishers get a promise that settles when their row is committed,
// so QoS 1 is acknowledged only after the write; many messages share one transaction (one fsync), which
// keeps node:sqlite's synchronous writes off the per-message path. A bounded queue refuses new messages
// instead of growing without limit when storage falls behind.
import type { Kysely } from 'kysely';
import type { Logger } from 'pino';
import type { Database } from '../store/index.ts';

export interface TelemetryRecord {
  deviceId: string;
  receivedAt: number;
  payload: Buffer;
}

interface Pending extends TelemetryRecord {
  resolve(): void;
  reject(error: unknown): void;
}

export interface TelemetryWriterOptions {
  db: Kysely<Database>;
  log: Logger;
  batchMaxRows: number;
  flushIntervalMs: number;
  queueMaxRows: number;
  /**
   * Rows derived from a batch (the telemetry history's per-minute data-point aggregates): prepared before
   * the batch's transaction (it may look up or create IDs), the returned write runs inside it, after the
   * rows, so the rows and what is derived from them commit or fail together.
   */
  derive?: (batch: readonly TelemetryRecord[]) => Promise<((trx: Kysely<Database>) => Promise<void>) | null>;
}

export class TelemetryQueueFullError extends Error {
  constructor() {
    super('telemetry queue is full');
    this.name = 'TelemetryQueueFullError';
  }
}

export class TelemetryWriter {
  readonly #options: TelemetryWriterOptions;
  #queue: Pending[] = [];
  #scheduled: { cancel(): void } | undefined;
  #flushing: Promise<void> | undefined;
  #closed = false;
  readonly stats = { rowsWritten: 0, batchesWritten: 0, rowsRefused: 0, batchesFailed: 0 };

  constructor(options: TelemetryWriterOptions) {
    this.#options = options;
  }

  get queued(): number {
    return this.#queue.length;
  }

  append(record: TelemetryRecord): Promise<void> {
    if (this.#closed) return Promise.reject(new Error('telemetry writer is closed'));
    if (this.#queue.length >= this.#options.queueMaxRows) {
      this.stats.rowsRefused++;
      return Promise.reject(new TelemetryQueueFullError());
    }
    return new Promise<void>((resolve, reject) => {
      this.#queue.push({ ...record, resolve, reject });
      if (this.#queue.length >= this.#options.batchMaxRows) this.#kick();
      else if (!this.#scheduled && !this.#flushing) {
        // Group commit: everything that arrives before the next turn of the event loop (or within
        // flushIntervalMs, if set) shares one transaction; whatever arrives during a write is picked
        // up by the running drain loop. An idle writer never makes a lone message wait for a timer.
        if (this.#options.flushIntervalMs === 0) {
          const immediate = setImmediate(() => this.#kick());
          this.#scheduled = { cancel: () => clearImmediate(immediate) };
        } else {
          const timer = setTimeout(() => this.#kick(), this.#options.flushIntervalMs);
          this.#scheduled = { cancel: () => clearTimeout(timer) };
        }
      }
    });
  }

  #kick(): void {
    this.#scheduled?.cancel();
    this.#scheduled = undefined;
    if (this.#flushing) return; // the running flush loops until the queue is empty
    this.#flushing = this.#drain().finally(() => {
      this.#flushing = undefined;
    });
  }

  async #drain(): Promise<void> {
    let first = true;
    while (this.#queue.length > 0) {
      // Yield between batches: node:sqlite writes synchronously, and the broker must keep reading.
      if (!first) await new Promise<void>((resolve) => setImmediate(resolve));
      first = false;
      const batch = this.#queue.splice(0, this.#options.batchMaxRows);
      try {
        const rows = batch.map((r) => ({ device_id: r.deviceId, received_at: r.receivedAt, payload: r.payload }));
        const derived = this.#options.derive ? await this.#options.derive(batch) : null;
        if (derived) {
          await this.#options.db.transaction().execute(async (trx) => {
            await trx.insertInto('telemetry').values(rows).execute();
            await derived(trx);
          });
        } else {
          await this.#options.db.insertInto('telemetry').values(rows).execute();
        }
        this.stats.rowsWritten += batch.length;
        this.stats.batchesWritten++;
        for (const r of batch) r.resolve();
      } catch (error) {
        // The whole batch failed atomically: no row of it was written, every publisher is told.
        this.stats.batchesFailed++;
        this.#options.log.error({ err: error, rows: batch.length }, 'telemetry: batch write failed');
        for (const r of batch) r.reject(error);
      }
    }
  }

  /** Resolves once everything queued before the call is committed (or has failed). */
  async flush(): Promise<void> {
    if (this.#queue.length > 0) this.#kick();
    while (this.#flushing) await this.#flushing;
  }

  /** Writes what is queued, then refuses further appends. */
  async close(): Promise<void> {
    this.#closed = true;
    this.#kick();
    while (this.#flushing) await this.#flushing;
  }
}
