// The broker core on a plain TCP socket on loopback, in this process, with hooks and store the test
// chooses: for tests of MQTT features that need the broker object itself (stats, publishSystem, a
// recording store, presence hooks). Also a recording BrokerStore that keeps real state, so a
// "restart" (a new MqttBroker over the same store) can restore from it.
import { once } from 'node:events';
import net, { type AddressInfo } from 'node:net';
import type { IClientOptions, MqttClient } from 'mqtt';
import type mqttPacket from 'mqtt-packet';
import { defaultMqttConfig } from '../../src/config/index.ts';
import {
  type BrokerHooks,
  type BrokerLimits,
  type BrokerStore,
  MqttBroker,
  type PendingState,
  type StoredMessage,
  type StoredPending,
  type StoredSession,
  type StoredSessionMeta,
  type StoredSubscription,
} from '../../src/gateway/mqtt/index.ts';
import { createLogger } from '../../src/logging/index.ts';
import { openMqttClient } from './mqtt-clients.ts';

// The raw packet client (RawClient.open(port), RawClient.connect(port, fields)) and endClient are
// mqtt-clients.ts's, under the names these tests know.
export { endClient, RawMqtt as RawClient } from './mqtt-clients.ts';

export const defaultLimits: BrokerLimits = defaultMqttConfig();

/**
 * Open hooks for tests (NOT the branded conformance hooks): every client is accepted and every topic
 * allowed; the principal is the username when given (to test session ownership), else the client ID.
 */
export function openHooks(extra: Partial<BrokerHooks> = {}): BrokerHooks {
  return {
    async authenticate(request) {
      const clientId = request.clientId === '' ? `auto-${Math.random().toString(36).slice(2)}` : request.clientId;
      return {
        ok: true,
        identity: { principalId: request.username ?? clientId, kind: 'service', clientId, attributes: {} },
      };
    },
    authorizePublish: () => true,
    authorizeSubscribe: () => true,
    onPublish: () => {},
    ...extra,
  };
}

export interface CoreBroker {
  readonly broker: MqttBroker;
  readonly port: number;
  readonly url: string;
  /** Closes the broker (as a shutdown would: store flushed) and the listener. */
  close(): Promise<void>;
}

export async function startCoreBroker(
  options: { hooks?: BrokerHooks; store?: BrokerStore; limits?: Partial<BrokerLimits>; restore?: boolean } = {},
): Promise<CoreBroker> {
  const broker = new MqttBroker({
    hooks: options.hooks ?? openHooks(),
    limits: { ...defaultLimits, ...options.limits },
    log: createLogger({ level: 'silent' }),
    ...(options.store ? { store: options.store } : {}),
  });
  if (options.restore !== false) await broker.restore();
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    socket.setNoDelay(true);
    broker.handle(socket, socket.remoteAddress ?? 'unknown');
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as AddressInfo).port;
  return {
    broker,
    port,
    url: `mqtt://127.0.0.1:${port}`,
    async close() {
      await broker.close();
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** An mqtt.js client (no reconnects); resolves once connected, rejects on a refusal. */
export async function connectClient(url: string, options: Partial<IClientOptions> = {}): Promise<MqttClient> {
  return (await openMqttClient(url, options)).client;
}

export interface Received {
  topic: string;
  payload: Buffer;
  packet: mqttPacket.IPublishPacket;
}

/** Collects the next `count` messages of a client (rejects after `ms`). */
export function nextMessages(client: MqttClient, count: number, ms = 5000): Promise<Received[]> {
  return new Promise((resolve, reject) => {
    const got: Received[] = [];
    const timer = setTimeout(() => {
      client.off('message', onMessage);
      reject(new Error(`only ${got.length} of ${count} messages arrived`));
    }, ms);
    const onMessage = (topic: string, payload: Buffer, packet: mqttPacket.IPublishPacket) => {
      got.push({ topic, payload, packet });
      if (got.length === count) {
        clearTimeout(timer);
        client.off('message', onMessage);
        resolve(got);
      }
    };
    client.on('message', onMessage);
  });
}

export type StoreCall = { op: string; clientId?: string; args: unknown[] };

/**
 * A BrokerStore that records every call and applies it to in-memory state, so a new broker can
 * restore from it. `flush()` resolves when `gate` allows it (hold it to prove an acknowledgement waits),
 * or rejects while `failFlush` is set.
 */
export class RecordingStore implements BrokerStore {
  readonly calls: StoreCall[] = [];
  readonly retained = new Map<string, StoredMessage>();
  readonly sessions = new Map<
    string,
    {
      meta: StoredSessionMeta;
      subscriptions: Map<string, StoredSubscription>;
      pending: Map<number, StoredPending>;
      inboundQos2: Set<number>;
    }
  >();
  flushes = 0;
  failFlush = false;
  #held: Array<() => void> | null = null;

  /** Holds every flush until release() is called. */
  hold(): void {
    this.#held ??= [];
  }

  release(): void {
    const held = this.#held ?? [];
    this.#held = null;
    for (const resume of held) resume();
  }

  ops(name?: string): StoreCall[] {
    return name ? this.calls.filter((c) => c.op === name) : this.calls;
  }

  async loadRetained(): Promise<StoredMessage[]> {
    return [...this.retained.values()];
  }

  async loadSessions(now: number): Promise<StoredSession[]> {
    const out: StoredSession[] = [];
    for (const clientId of this.sessions.keys()) {
      const s = await this.loadSession(clientId, now);
      if (s) out.push(s);
    }
    return out;
  }

  async loadSession(clientId: string, now: number): Promise<StoredSession | undefined> {
    const s = this.sessions.get(clientId);
    if (!s) return undefined;
    const { disconnectedAt, expiryIntervalSeconds } = s.meta;
    if (disconnectedAt !== null && disconnectedAt + expiryIntervalSeconds * 1000 <= now) return undefined;
    return {
      ...s.meta,
      subscriptions: [...s.subscriptions.values()],
      pending: [...s.pending.values()].sort((a, b) => a.seq - b.seq),
      inboundQos2: [...s.inboundQos2],
    };
  }

  #session(clientId: string) {
    const s = this.sessions.get(clientId);
    if (!s) throw new Error(`store: no session ${clientId} (a mutation before saveSession)`);
    return s;
  }

  setRetained(topic: string, message: StoredMessage | null): void {
    this.calls.push({ op: 'setRetained', args: [topic, message] });
    if (message) this.retained.set(topic, message);
    else this.retained.delete(topic);
  }

  saveSession(meta: StoredSessionMeta): void {
    this.calls.push({ op: 'saveSession', clientId: meta.clientId, args: [meta] });
    const s = this.sessions.get(meta.clientId);
    if (s) s.meta = meta;
    else {
      this.sessions.set(meta.clientId, {
        meta,
        subscriptions: new Map(),
        pending: new Map(),
        inboundQos2: new Set(),
      });
    }
  }

  deleteSession(clientId: string): void {
    this.calls.push({ op: 'deleteSession', clientId, args: [] });
    this.sessions.delete(clientId);
  }

  addSubscription(clientId: string, subscription: StoredSubscription): void {
    this.calls.push({ op: 'addSubscription', clientId, args: [subscription] });
    this.#session(clientId).subscriptions.set(subscription.filter, subscription);
  }

  removeSubscription(clientId: string, filter: string): void {
    this.calls.push({ op: 'removeSubscription', clientId, args: [filter] });
    this.#session(clientId).subscriptions.delete(filter);
  }

  addPending(clientId: string, pending: StoredPending): void {
    this.calls.push({ op: 'addPending', clientId, args: [pending] });
    this.#session(clientId).pending.set(pending.seq, pending);
  }

  updatePending(clientId: string, seq: number, state: PendingState, packetId: number | null): void {
    this.calls.push({ op: 'updatePending', clientId, args: [seq, state, packetId] });
    const s = this.#session(clientId);
    const p = s.pending.get(seq);
    if (!p) throw new Error(`store: updatePending of unknown seq ${seq}`);
    s.pending.set(seq, { ...p, state, packetId });
  }

  removePending(clientId: string, seq: number): void {
    this.calls.push({ op: 'removePending', clientId, args: [seq] });
    this.#session(clientId).pending.delete(seq);
  }

  setInboundQos2(clientId: string, packetId: number, present: boolean): void {
    this.calls.push({ op: 'setInboundQos2', clientId, args: [packetId, present] });
    const s = this.#session(clientId);
    if (present) s.inboundQos2.add(packetId);
    else s.inboundQos2.delete(packetId);
  }

  async flush(): Promise<void> {
    this.flushes++;
    if (this.#held) await new Promise<void>((resolve) => this.#held!.push(resolve));
    if (this.failFlush) throw new Error('store: flush failed (test)');
  }

  async purgeExpired(): Promise<number> {
    return 0;
  }

  async close(): Promise<void> {}
}
