// Messages between the processes of a scale deployment (RES-2), over Redis pub/sub: platform-to-device
// publishes, disconnect orders and session takeovers for the broker, and device events for the push
// streams held elsewhere. Pub/sub is at-most-once: what a process must not miss (command state, shadow
// versions, presence) lives in PostgreSQL; the bus only carries what is live. Every message is MACed
// (HMAC-SHA-256 under a key derived from the root key, which all nodes share): write access to Redis
// alone cannot make a node send a command to a device or drop its connection.
import { createHmac, timingSafeEqual } from 'node:crypto';
import type { Redis } from 'ioredis';

export type BusChannel = 'broker' | 'events';

/** A message on the bus: `t` names it; `o` is the node that sent it (a node ignores its own). */
export interface BusMessage {
  readonly t: string;
  readonly o?: string;
  readonly [field: string]: unknown;
}

export interface ClusterBusOptions {
  redis: Redis;
  keyPrefix: string;
  nodeId: string;
  /** 32 bytes derived from the root key: authenticates every message. */
  key: Buffer;
  log: { warn(object: object, message: string): void; error(object: object, message: string): void };
}

/** How long a channel's count of subscribers in other processes is trusted before asking Redis again. */
const LISTENER_COUNT_MS = 1_000;

export class ClusterBus {
  readonly nodeId: string;
  readonly #o: ClusterBusOptions;
  #sub: Redis | undefined;
  readonly #handlers = new Map<BusChannel, (message: BusMessage) => void>();
  readonly #remote = new Map<BusChannel, { count: number; checkedAt: number; checking: boolean }>();
  readonly stats = { published: 0, received: 0, malformed: 0, forged: 0 };

  constructor(options: ClusterBusOptions) {
    this.#o = options;
    this.nodeId = options.nodeId;
  }

  #channel(channel: BusChannel): string {
    return `${this.#o.keyPrefix}cluster:${channel}`;
  }

  /** Opens the subscriber connection (pub/sub needs a connection of its own). */
  async start(): Promise<void> {
    const sub = this.#o.redis.duplicate({ lazyConnect: true });
    await sub.connect();
    sub.on('message', (channel: string, text: string) => this.#receive(channel, text));
    sub.on('error', (error: Error) => this.#o.log.warn({ err: error }, 'cluster: bus subscriber error'));
    this.#sub = sub;
  }

  #receive(channel: string, text: string): void {
    const name = channel.slice(`${this.#o.keyPrefix}cluster:`.length) as BusChannel;
    const handler = this.#handlers.get(name);
    if (!handler) return;
    const dot = text.indexOf('.');
    const mac = Buffer.from(text.slice(0, Math.max(dot, 0)), 'base64url');
    const body = text.slice(dot + 1);
    const expected = this.#mac(channel, body);
    if (dot < 0 || mac.length !== expected.length || !timingSafeEqual(mac, expected)) {
      this.stats.forged++;
      this.#o.log.warn({ channel: name }, 'cluster: bus message with a bad MAC dropped');
      return;
    }
    let message: BusMessage;
    try {
      message = JSON.parse(body) as BusMessage;
      if (typeof message !== 'object' || message === null || typeof message.t !== 'string') throw new Error('shape');
    } catch {
      this.stats.malformed++;
      return;
    }
    if (message.o === this.nodeId) return;
    this.stats.received++;
    try {
      handler(message);
    } catch (error) {
      this.#o.log.error({ err: error, type: message.t }, 'cluster: bus handler failed');
    }
  }

  /** The MAC binds the channel name too: a message cannot be moved to another channel. */
  #mac(channel: string, body: string): Buffer {
    return createHmac('sha256', this.#o.key).update(channel).update('\u0000').update(body).digest();
  }

  /** Receives a channel's messages from the other processes (one handler per channel). */
  async subscribe(channel: BusChannel, handler: (message: BusMessage) => void): Promise<void> {
    if (!this.#sub) throw new Error('cluster bus not started');
    this.#handlers.set(channel, handler);
    await this.#sub.subscribe(this.#channel(channel));
  }

  async unsubscribe(channel: BusChannel): Promise<void> {
    this.#handlers.delete(channel);
    await this.#sub?.unsubscribe(this.#channel(channel));
  }

  /** Sends to the other processes; fire and forget (a failure is logged). */
  publish(channel: BusChannel, message: BusMessage): void {
    this.stats.published++;
    const name = this.#channel(channel);
    const body = JSON.stringify({ ...message, o: this.nodeId });
    this.#o.redis.publish(name, `${this.#mac(name, body).toString('base64url')}.${body}`).catch((error: unknown) => {
      this.#o.log.warn({ err: error, type: message.t }, 'cluster: bus message not sent');
    });
  }

  /**
   * Whether another process listens on the channel, from a count refreshed at most once a second (so a
   * chatty publisher asks Redis once a second, not per message). Optimistic until the first answer.
   */
  hasRemoteListeners(channel: BusChannel): boolean {
    let entry = this.#remote.get(channel);
    if (!entry) {
      entry = { count: 1, checkedAt: 0, checking: false };
      this.#remote.set(channel, entry);
    }
    if (!entry.checking && Date.now() - entry.checkedAt > LISTENER_COUNT_MS) this.refreshListeners(channel);
    return entry.count > 0;
  }

  /** Asks Redis how many other processes listen on the channel now. */
  refreshListeners(channel: BusChannel): void {
    const entry = this.#remote.get(channel) ?? { count: 1, checkedAt: 0, checking: false };
    this.#remote.set(channel, entry);
    entry.checking = true;
    (this.#o.redis.pubsub('NUMSUB', this.#channel(channel)) as Promise<[string, number]>)
      .then(([, count]) => {
        entry.count = Number(count) - (this.#handlers.has(channel) ? 1 : 0);
        entry.checkedAt = Date.now();
      })
      .catch((error: unknown) => this.#o.log.warn({ err: error }, 'cluster: listener count unavailable'))
      .finally(() => {
        entry.checking = false;
      });
  }

  async close(): Promise<void> {
    const sub = this.#sub;
    this.#sub = undefined;
    this.#handlers.clear();
    if (sub) await sub.quit().catch(() => sub.disconnect());
  }
}
