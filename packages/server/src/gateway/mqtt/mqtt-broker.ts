// Castellan's MQTT broker core: connections, sessions, subscriptions and routing for MQTT 3.1.1 and 5.0
// over any duplex stream (the TLS listener hands it sockets). Security and storage decisions are hooks
// (broker-hooks.ts) that fail closed. Routing is local to this process; scale mode adds a cross-process
// fan-out behind `route`.
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { type BrokerHooks, type ClientIdentity, denyAllHooks, type InboundMessage } from './broker-hooks.ts';
import { isConformanceHooks } from './conformance-hooks.ts';
import { MqttConnection } from './mqtt-connection.ts';
import { ReasonCode } from './reason-codes.ts';
import { type OutboundMessage, Session } from './session.ts';
import { SubscriptionIndex } from './subscription-index.ts';

export interface BrokerLimits {
  maxPacketBytes: number;
  connectTimeoutMs: number;
  maxKeepAliveSeconds: number;
  maxInflight: number;
  maxQueuedMessages: number;
  maxSubscriptionsPerClient: number;
  maxTopicLevels: number;
  maxSessionExpirySeconds: number;
}

export interface BrokerStats {
  connectionsOpened: number;
  connectsAccepted: number;
  connectsRefused: number;
  authFailures: number;
  messagesIn: number;
  messagesOut: number;
  messagesDropped: number;
  publishDenied: number;
  publishRefused: number;
  subscribeDenied: number;
  protocolErrors: number;
  packetsTooLarge: number;
  keepAliveTimeouts: number;
}

export interface MqttBrokerOptions {
  hooks?: BrokerHooks;
  limits: BrokerLimits;
  log: Logger;
}

export class MqttBroker {
  readonly hooks: BrokerHooks;
  /**
   * Built with the anonymous conformance hooks (conformance-hooks.ts)? Fixed at construction: the
   * production TLS listener refuses such a broker, the conformance listener requires one.
   */
  readonly conformance: boolean;
  readonly limits: BrokerLimits;
  readonly log: Logger;
  readonly subscriptions = new SubscriptionIndex();
  readonly stats: BrokerStats = {
    connectionsOpened: 0,
    connectsAccepted: 0,
    connectsRefused: 0,
    authFailures: 0,
    messagesIn: 0,
    messagesOut: 0,
    messagesDropped: 0,
    publishDenied: 0,
    publishRefused: 0,
    subscribeDenied: 0,
    protocolErrors: 0,
    packetsTooLarge: 0,
    keepAliveTimeouts: 0,
  };
  readonly #connections = new Set<MqttConnection>();
  /** clientId → the connection currently holding it. */
  readonly #clients = new Map<string, MqttConnection>();
  readonly #sessions = new Map<string, Session>();
  readonly #pendingWills = new Map<string, { timer: NodeJS.Timeout; publish: () => void }>();
  #closing = false;

  constructor(options: MqttBrokerOptions) {
    this.hooks = options.hooks ?? denyAllHooks;
    this.conformance = isConformanceHooks(this.hooks);
    this.limits = Object.freeze({ ...options.limits });
    this.log = options.log;
  }

  /** Serves one client connection. */
  handle(socket: Duplex, remoteAddress: string): void {
    if (this.#closing) {
      socket.destroy();
      return;
    }
    this.stats.connectionsOpened++;
    this.#connections.add(new MqttConnection(this, socket, remoteAddress));
  }

  get connectionCount(): number {
    return this.#connections.size;
  }

  /**
   * Ends a client's live connection in this process (e.g. revoked or quarantined); false when absent.
   * Messages it already sent are acknowledged (or refused) first, in order, so it knows their fate.
   */
  disconnectClient(clientId: string, reasonCode: number): boolean {
    const conn = this.#clients.get(clientId);
    if (!conn) return false;
    conn.publishTail = conn.publishTail.then(() => conn.disconnect(reasonCode));
    return true;
  }

  /** Is a client with this ID connected to this process? */
  isConnected(clientId: string): boolean {
    return this.#clients.has(clientId);
  }

  /**
   * Attaches a connection to its session: takes over a live connection with the same client ID
   * [MQTT-3.1.4-3], resumes a stored session unless a clean start was asked for [MQTT-3.1.2-4].
   */
  openSession(
    conn: MqttConnection,
    clientId: string,
    identity: ClientIdentity,
    cleanStart: boolean,
  ): { session: Session; present: boolean } {
    const previous = this.#clients.get(clientId);
    if (previous && previous !== conn) {
      this.hooks.onTakeover?.(identity, { previous: previous.remoteAddress, next: conn.remoteAddress });
      previous.takenOver = true;
      previous.disconnect(ReasonCode.SessionTakenOver);
    }
    this.#clients.set(clientId, conn);
    const pendingWill = this.#pendingWills.get(clientId);
    if (pendingWill) {
      clearTimeout(pendingWill.timer);
      this.#pendingWills.delete(clientId);
      // [MQTT-3.1.3-9 (v5)] resuming the session before the will delay elapsed cancels the will; a clean
      // start ends the old session, and with it the wait: the will goes out now.
      if (cleanStart) pendingWill.publish();
    }
    let session = this.#sessions.get(clientId);
    if (session) clearTimeout(session.expiryTimer);
    if (session && cleanStart) {
      this.#endSession(session);
      session = undefined;
    }
    if (session) {
      session.identity = identity;
      return { session, present: true };
    }
    const created = new Session(clientId, identity, this.limits.maxQueuedMessages);
    this.#sessions.set(clientId, created);
    return { session: created, present: false };
  }

  /** Called once per connection when it closes. */
  connectionClosed(conn: MqttConnection, wasConnected: boolean): void {
    this.#connections.delete(conn);
    if (!wasConnected) return;
    if (conn.takenOver) {
      // The session lives on with the new connection; the old connection's will is published
      // (or, with a delay, cancelled by the resumption) as for any connection that ended without
      // DISCONNECT [MQTT-3.1.3-9 (v5)].
      if (conn.will && !conn.gracefulDisconnect) this.#scheduleWill(conn, conn.session);
      return;
    }
    if (this.#clients.get(conn.clientId) === conn) this.#clients.delete(conn.clientId);
    const session = conn.session;
    if (conn.will && !conn.gracefulDisconnect) this.#scheduleWill(conn, session);
    if (!session) return;
    session.sink = null;
    this.stats.messagesDropped += session.droppedMessages;
    session.droppedMessages = 0;
    if (session.expiryInterval === 0 || this.#closing) {
      this.#endSession(session);
    } else {
      session.expiryTimer = setTimeout(() => this.#endSession(session), session.expiryInterval * 1000);
      session.expiryTimer.unref();
    }
  }

  #endSession(session: Session): void {
    clearTimeout(session.expiryTimer);
    if (this.#sessions.get(session.clientId) === session) this.#sessions.delete(session.clientId);
    this.subscriptions.removeClient(session.clientId);
    this.stats.messagesDropped += session.queue.length + session.inflight.size;
  }

  #scheduleWill(conn: MqttConnection, session: Session | undefined): void {
    const will = conn.will!;
    const identity = conn.identity!;
    const publish = () => {
      this.#pendingWills.delete(conn.clientId);
      this.publishAs(identity, conn.clientId, {
        topic: will.topic,
        payload: will.payload,
        qos: will.qos,
        receivedAt: Date.now(),
      });
    };
    // The will waits for the smaller of its delay and the session's expiry [MQTT-3.1.3-9 (v5)].
    const delay = Math.min(will.delaySeconds, session?.expiryInterval ?? 0);
    if (delay <= 0 || this.#closing) {
      publish();
      return;
    }
    const timer = setTimeout(publish, delay * 1000);
    timer.unref();
    this.#pendingWills.set(conn.clientId, { timer, publish });
  }

  /** Publishes on behalf of a client (wills), through the same durable hook as its own messages. */
  publishAs(identity: ClientIdentity, clientId: string, message: InboundMessage): void {
    Promise.resolve()
      .then(() => this.hooks.onPublish(identity, message))
      .then(
        () => this.route({ topic: message.topic, payload: message.payload, qos: message.qos, retain: false }, clientId),
        (error: unknown) => this.log.warn({ err: error, clientId }, 'mqtt: will message refused'),
      );
  }

  /** Delivers a message to every matching subscriber in this process. */
  route(message: OutboundMessage, senderClientId: string | undefined): number {
    const matches = this.subscriptions.match(message.topic);
    let delivered = 0;
    for (const [clientId, sub] of matches) {
      if (sub.noLocal && clientId === senderClientId) continue;
      const session = this.#sessions.get(clientId);
      if (!session) continue;
      const qos = Math.min(message.qos, sub.qos) as 0 | 1;
      session.deliver(qos === message.qos ? message : { ...message, qos });
      delivered++;
    }
    return delivered;
  }

  /** Stops accepting, tells MQTT 5 clients the server is shutting down, closes every connection. */
  async close(): Promise<void> {
    this.#closing = true;
    for (const { timer } of this.#pendingWills.values()) clearTimeout(timer);
    this.#pendingWills.clear();
    for (const conn of [...this.#connections]) {
      // A shutdown is not the client's failure: its will is not published [MQTT-3.1.2-8 leaves this to us].
      conn.gracefulDisconnect = true;
      conn.disconnect(ReasonCode.ServerShuttingDown);
    }
    for (const session of [...this.#sessions.values()]) this.#endSession(session);
  }
}
