// The broker core on a plain TCP socket on loopback, in this process, with hooks and store the test
// chooses: for tests of MQTT features that need the broker object itself (stats, publishSystem, a
// recording store, presence hooks). Also a raw packet client (mqtt-packet) and a recording BrokerStore
// that keeps real state, so a "restart" (a new MqttBroker over the same store) can restore from it.
import { once } from 'node:events';
import net, { type AddressInfo } from 'node:net';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import mqttPacket, { type Packet } from 'mqtt-packet';
import { Value } from 'typebox/value';
import { ConfigSchema } from '../../src/config/index.ts';
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

export const defaultLimits = Value.Default(ConfigSchema.properties.mqtt, {}) as BrokerLimits;

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
export function connectClient(url: string, options: Partial<IClientOptions> = {}): Promise<MqttClient> {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect(url, {
      protocolVersion: 5,
      clean: true,
      keepalive: 30,
      reconnectPeriod: 0,
      connectTimeout: 5000,
      ...options,
    } as IClientOptions);
    client.once('connect', () => {
      client.removeAllListeners('error');
      client.on('error', () => {});
      resolve(client);
    });
    client.once('error', (error) => {
      client.end(true);
      reject(error);
    });
  });
}

export const endClient = (client: MqttClient): Promise<void> =>
  new Promise((resolve) => client.end(false, {}, () => resolve()));

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

/** A raw MQTT client on plain TCP: sends packets or bytes, reads decoded packets. */
export class RawClient {
  readonly socket: net.Socket;
  readonly packets: Packet[] = [];
  closed = false;
  readonly #parser;
  #waiters: Array<() => void> = [];

  private constructor(socket: net.Socket, protocolVersion: 4 | 5) {
    this.socket = socket;
    this.#parser = mqttPacket.parser({ protocolVersion });
    this.#parser.on('packet', (p: Packet) => {
      this.packets.push(p);
      this.#notify();
    });
    this.#parser.on('error', () => {});
    socket.on('data', (chunk: Buffer) => this.#parser.parse(chunk));
    socket.on('error', () => {});
    socket.on('close', () => {
      this.closed = true;
      this.#notify();
    });
  }

  #notify(): void {
    for (const w of this.#waiters.splice(0)) w();
  }

  static async open(port: number, protocolVersion: 4 | 5 = 5): Promise<RawClient> {
    const socket = net.connect({ host: '127.0.0.1', port });
    await once(socket, 'connect');
    return new RawClient(socket, protocolVersion);
  }

  /** Opens, sends CONNECT and waits for a successful CONNACK. */
  static async connect(
    port: number,
    fields: Partial<mqttPacket.IConnectPacket> & { clientId: string },
    protocolVersion: 4 | 5 = 5,
  ): Promise<{ raw: RawClient; connack: mqttPacket.IConnackPacket }> {
    const raw = await RawClient.open(port, protocolVersion);
    raw.send(
      { cmd: 'connect', protocolId: 'MQTT', protocolVersion, clean: true, keepalive: 30, ...fields },
      protocolVersion,
    );
    const connack = (await raw.next('connack')) as mqttPacket.IConnackPacket | undefined;
    if (!connack) throw new Error('closed before CONNACK');
    const code = connack.reasonCode ?? connack.returnCode ?? 0;
    if (code !== 0) throw new Error(`CONNACK refused: ${code}`);
    return { raw, connack };
  }

  send(packet: Buffer | Packet, protocolVersion: 4 | 5 = 5): void {
    this.socket.write(Buffer.isBuffer(packet) ? packet : mqttPacket.generate(packet, { protocolVersion }));
  }

  /** The next packet of `cmd` (earlier ones of other types stay queued); undefined if the socket closed. */
  async next(cmd: string, timeoutMs = 5000): Promise<Packet | undefined> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const index = this.packets.findIndex((p) => p.cmd === cmd);
      if (index >= 0) return this.packets.splice(index, 1)[0];
      if (this.closed) return undefined;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${cmd}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.#waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  /** Round trip that proves every earlier packet was processed (or the connection closed). */
  async barrier(protocolVersion: 4 | 5 = 5): Promise<boolean> {
    if (this.closed) return false;
    this.send({ cmd: 'pingreq' }, protocolVersion);
    return (await this.next('pingresp')) !== undefined;
  }

  async waitClosed(timeoutMs = 5000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed && Date.now() < deadline) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, deadline - Date.now());
        this.#waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    return this.closed;
  }

  close(): void {
    this.socket.destroy();
  }
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
