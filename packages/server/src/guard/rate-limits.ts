// Rate limits in every dimension (RATE-1), on rate-limiter-flexible: in memory in embedded mode, in
// Redis when redis.url is set so that limits hold across processes. A limiter is identified by its
// dimension and its (points, window) pair, so products with their own report rates get their own.
import type { Redis } from 'ioredis';
import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes } from 'rate-limiter-flexible';

export interface LimitOutcome {
  allowed: boolean;
  /** When refused: milliseconds until the window frees up. */
  retryAfterMs: number;
  /** Points consumed in the current window, including this one. */
  consumed: number;
}

type Limiter = RateLimiterMemory | RateLimiterRedis;

export class RateLimits {
  readonly #redis: Redis | undefined;
  readonly #prefix: string;
  readonly #limiters = new Map<string, Limiter>();
  /** Refusals per dimension, for metrics. */
  readonly refusals = new Map<string, number>();

  constructor(options: { redis?: Redis; keyPrefix: string }) {
    this.#redis = options.redis;
    this.#prefix = options.keyPrefix;
  }

  #limiter(dimension: string, points: number, windowSeconds: number): Limiter {
    const id = `${dimension}:${points}:${windowSeconds}`;
    let limiter = this.#limiters.get(id);
    if (!limiter) {
      const keyPrefix = `${this.#prefix}rl:${id}`;
      limiter = this.#redis
        ? new RateLimiterRedis({
            storeClient: this.#redis,
            keyPrefix,
            points,
            duration: windowSeconds,
            useRedisPackage: false,
          })
        : new RateLimiterMemory({ keyPrefix, points, duration: windowSeconds });
      this.#limiters.set(id, limiter);
    }
    return limiter;
  }

  /** Consumes `cost` points of `key` in `dimension`; never throws for an exhausted limit. */
  async consume(
    dimension: string,
    key: string,
    points: number,
    windowSeconds: number,
    cost = 1,
  ): Promise<LimitOutcome> {
    try {
      const res = await this.#limiter(dimension, points, windowSeconds).consume(key, cost);
      return { allowed: true, retryAfterMs: 0, consumed: res.consumedPoints };
    } catch (error) {
      if (error instanceof RateLimiterRes) {
        this.refusals.set(dimension, (this.refusals.get(dimension) ?? 0) + 1);
        return { allowed: false, retryAfterMs: error.msBeforeNext, consumed: error.consumedPoints };
      }
      throw error; // the store itself failed (e.g. Redis down): callers decide, fail closed
    }
  }

  /**
   * Reads a key's consumption without consuming (e.g. "is this account locked?" before any password
   * hash is computed). `allowed` is false once `points` are used up in the window.
   */
  async peek(dimension: string, key: string, points: number, windowSeconds: number): Promise<LimitOutcome> {
    const res = await this.#limiter(dimension, points, windowSeconds).get(key);
    if (!res) return { allowed: true, retryAfterMs: 0, consumed: 0 };
    return { allowed: res.consumedPoints < points, retryAfterMs: res.msBeforeNext, consumed: res.consumedPoints };
  }

  /** Gives back points consumed for an attempt that turned out to be legitimate (a success). */
  async refund(dimension: string, key: string, points: number, windowSeconds: number, cost = 1): Promise<void> {
    await this.#limiter(dimension, points, windowSeconds).reward(key, cost);
  }

  /** Forgets a key's consumption (e.g. after an administrator lifted a block). */
  async reset(dimension: string, key: string, points: number, windowSeconds: number): Promise<void> {
    await this.#limiter(dimension, points, windowSeconds).delete(key);
  }
}
