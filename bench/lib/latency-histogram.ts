// Latency percentiles for runs too long to keep every sample, and mergeable across processes: a
// log-scale histogram with 1 % wide buckets from 1 µs up (so a percentile is within 1 % of the truth).
// It travels over IPC as [bucket, count] pairs.

const MIN_MS = 0.001;
const LOG_GROWTH = Math.log(1.01);

export type HistogramData = Array<[number, number]>;

export class LatencyHistogram {
  readonly #counts = new Map<number, number>();
  count = 0;
  max = 0;

  record(ms: number): void {
    const bucket = ms <= MIN_MS ? 0 : Math.ceil(Math.log(ms / MIN_MS) / LOG_GROWTH);
    this.#counts.set(bucket, (this.#counts.get(bucket) ?? 0) + 1);
    this.count++;
    if (ms > this.max) this.max = ms;
  }

  /** Nearest-rank percentile (the upper edge of its bucket), NaN when empty. */
  percentile(p: number): number {
    if (this.count === 0) return Number.NaN;
    const rank = Math.max(1, Math.ceil((p / 100) * this.count));
    let seen = 0;
    for (const bucket of [...this.#counts.keys()].sort((a, b) => a - b)) {
      seen += this.#counts.get(bucket)!;
      if (seen >= rank) return Math.min(this.max, MIN_MS * Math.exp(bucket * LOG_GROWTH));
    }
    return this.max;
  }

  toData(): { buckets: HistogramData; max: number } {
    return { buckets: [...this.#counts], max: this.max };
  }

  add(data: { buckets: HistogramData; max: number }): this {
    for (const [bucket, n] of data.buckets) {
      this.#counts.set(bucket, (this.#counts.get(bucket) ?? 0) + n);
      this.count += n;
    }
    if (data.max > this.max) this.max = data.max;
    return this;
  }
}

/** Wall-clock time in milliseconds with sub-millisecond resolution, comparable across processes. */
export function epochNow(): number {
  return performance.timeOrigin + performance.now();
}
