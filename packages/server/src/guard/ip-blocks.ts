// Temporary IP blocks. Checked synchronously from memory on every new connection; with Redis the block
// is also stored there (with its expiry) so that every process refuses the address.
import type { Redis } from 'ioredis';

export class IpBlocks {
  readonly #local = new Map<string, number>();
  readonly #redis: Redis | undefined;
  readonly #prefix: string;
  readonly #now: () => number;

  constructor(options: { redis?: Redis; keyPrefix: string; now?: () => number }) {
    this.#redis = options.redis;
    this.#prefix = `${options.keyPrefix}block:`;
    this.#now = options.now ?? Date.now;
  }

  async block(ip: string, seconds: number): Promise<number> {
    const until = this.#now() + seconds * 1000;
    this.#local.set(ip, until);
    if (this.#redis) await this.#redis.set(this.#prefix + ip, String(until), 'PX', seconds * 1000);
    return until;
  }

  async unblock(ip: string): Promise<boolean> {
    const had = this.#local.delete(ip);
    const removed = this.#redis ? await this.#redis.del(this.#prefix + ip) : 0;
    return had || removed > 0;
  }

  /** Synchronous, local knowledge only (used before a TLS handshake). */
  isBlockedLocally(ip: string): boolean {
    const until = this.#local.get(ip);
    if (until === undefined) return false;
    if (until > this.#now()) return true;
    this.#local.delete(ip);
    return false;
  }

  /** Local, then cluster-wide knowledge. */
  async isBlocked(ip: string): Promise<boolean> {
    if (this.isBlockedLocally(ip)) return true;
    if (!this.#redis) return false;
    const until = Number(await this.#redis.get(this.#prefix + ip));
    if (until > this.#now()) {
      this.#local.set(ip, until);
      return true;
    }
    return false;
  }

  list(): { ip: string; until: number }[] {
    const now = this.#now();
    return [...this.#local].filter(([, until]) => until > now).map(([ip, until]) => ({ ip, until }));
  }
}
