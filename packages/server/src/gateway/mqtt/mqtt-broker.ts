// Castellan's MQTT broker core: connections, sessions, subscriptions, retained messages and routing for
// MQTT 3.1.1 and 5.0 over any duplex stream (the TLS listener hands it sockets). Security and storage
// decisions are hooks (broker-hooks.ts) that fail closed. Live state is in memory (the hot path never
// waits on a query); persistent sessions and retained messages are mirrored to a BrokerStore
// (write-behind) and loaded back by restore(). Routing is local to this process; in scale mode
// (cluster/cluster-routing.ts) platform-to-device publishes reach the other processes' brokers through
// publishSystem with persist: false, and takeovers and disconnect orders through disconnectClient.
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import {
  type BrokerHooks,
  type ClientIdentity,
  denyAllHooks,
  type InboundMessage,
  type Violation,
} from './broker-hooks.ts';
import { type BrokerStore, memoryOnlyBrokerStore, type StoredMessage, type StoredSession } from './broker-store.ts';
import { isConformanceHooks } from './conformance-hooks.ts';
import type { ListenerProfile } from './listener-profile.ts';
import { MqttConnection } from './mqtt-connection.ts';
import { RetainedIndex } from './retained-index.ts';
import { ReasonCode } from './reason-codes.ts';
import { isExpired, type OutboundMessage, Session } from './session.ts';
import { type SubscriptionEntry, SubscriptionIndex, subscriptionEntry } from './subscription-index.ts';
import { parseSharedSubscription } from './topic-rules.ts';

export interface BrokerLimits {
  maxPacketBytes: number;
  connectTimeoutMs: number;
  maxKeepAliveSeconds: number;
  maxInflight: number;
  maxQueuedMessages: number;
  maxSubscriptionsPerClient: number;
  maxTopicLevels: number;
  maxSessionExpirySeconds: number;
  /** Topic Alias Maximum announced to MQTT 5 clients (inbound aliases per connection); default 10. */
  maxTopicAliases?: number;
  /** Retained messages held (distinct topics); a new topic beyond it is routed but not retained. */
  maxRetainedMessages?: number;
}

export const DEFAULT_TOPIC_ALIAS_MAXIMUM = 10;
export const DEFAULT_MAX_RETAINED_MESSAGES = 100_000;

export interface BrokerStats {
  connectionsOpened: number;
  connectsAccepted: number;
  connectsRefused: number;
  /** Refused before TLS by the per-client-network connect limiter (also in connectsRefused). */
  connectsThrottled: number;
  /** Refused before TLS because mqtt.maxPendingHandshakes were in progress (also in connectsRefused). */
  handshakesShed: number;
  /** Connections admitted to the TLS handshake. */
  tlsHandshakesStarted: number;
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
  /** Retained messages not kept because maxRetainedMessages was reached. */
  retainedRefused: number;
  /** Store flushes that failed (the acknowledgements waiting for them were refusals). */
  storeFlushFailures: number;
}

export interface MqttBrokerOptions {
  hooks?: BrokerHooks;
  limits: BrokerLimits;
  log: Logger;
  /** Durable sessions and retained messages; default: none (memory only). */
  store?: BrokerStore;
}

/** setTimeout caps delays at 2^31-1 ms (~24.8 days); session expiry may be far longer. */
const MAX_TIMER_MS = 2_147_483_647;

export class MqttBroker {
  readonly hooks: BrokerHooks;
  /**
   * Built with the anonymous conformance hooks (conformance-hooks.ts)? Fixed at construction: the
   * production TLS listener refuses such a broker, the conformance listener requires one.
   */
  readonly conformance: boolean;
  readonly limits: BrokerLimits;
  readonly log: Logger;
  readonly store: BrokerStore;
  /** False with the memory-only store: nothing is ever waited for. */
  readonly durable: boolean;
  readonly topicAliasMaximum: number;
  readonly subscriptions = new SubscriptionIndex();
  readonly stats: BrokerStats = {
    connectionsOpened: 0,
    connectsAccepted: 0,
    connectsRefused: 0,
    connectsThrottled: 0,
    handshakesShed: 0,
    tlsHandshakesStarted: 0,
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
    retainedRefused: 0,
    storeFlushFailures: 0,
  };
  readonly #connections = new Set<MqttConnection>();
  /** clientId → the connection currently holding it. */
  readonly #clients = new Map<string, MqttConnection>();
  readonly #sessions = new Map<string, Session>();
  readonly #pendingWills = new Map<string, { timer: NodeJS.Timeout; publish: () => void }>();
  /** topic → its retained message (MQTT 5 3.3.1.3). */
  readonly #retained = new RetainedIndex();
  readonly #maxRetained: number;
  #flushBatch: Promise<void> | undefined;
  #closing = false;

  constructor(options: MqttBrokerOptions) {
    this.hooks = options.hooks ?? denyAllHooks;
    this.conformance = isConformanceHooks(this.hooks);
    this.limits = Object.freeze({ ...options.limits });
    this.log = options.log;
    this.store = options.store ?? memoryOnlyBrokerStore;
    this.durable = this.store !== memoryOnlyBrokerStore;
    this.topicAliasMaximum = Math.min(options.limits.maxTopicAliases ?? DEFAULT_TOPIC_ALIAS_MAXIMUM, 65535);
    this.#maxRetained = options.limits.maxRetainedMessages ?? DEFAULT_MAX_RETAINED_MESSAGES;
  }

  /**
   * Loads retained messages and persistent sessions from the store; call once after construction and
   * before the listener accepts clients. Restored sessions are offline: their expiry counts from when
   * their last connection ended.
   */
  async restore(): Promise<void> {
    const now = Date.now();
    const [retained, sessions] = await Promise.all([this.store.loadRetained(), this.store.loadSessions(now)]);
    for (const message of retained) {
      if (!isExpired(message, now) && message.payload.length > 0) this.#retained.set(message.topic, message);
    }
    for (const stored of sessions) {
      if (this.#sessions.has(stored.clientId)) continue; // connected meanwhile: the live one wins
      this.#restoreSession(stored, now);
    }
    this.log.info({ retained: this.#retained.size, sessions: sessions.length }, 'mqtt: broker state restored');
  }

  #restoreSession(stored: StoredSession, now: number): void {
    // A placeholder identity: only principalId matters until the owner connects and replaces it.
    const identity: ClientIdentity = {
      principalId: stored.principalId,
      kind: 'device',
      clientId: stored.clientId,
      attributes: {},
    };
    const session = new Session(stored.clientId, identity, this.limits.maxQueuedMessages);
    session.expiryInterval = stored.expiryIntervalSeconds;
    session.store = this.store;
    for (const sub of stored.subscriptions) {
      const shared = sub.filter.startsWith('$share/') ? parseSharedSubscription(sub.filter) : null;
      this.subscriptions.add(
        subscriptionEntry({
          clientId: stored.clientId,
          filter: sub.filter,
          topicFilter: shared ? shared.filter : sub.filter,
          group: shared?.group,
          qos: sub.qos,
          noLocal: sub.noLocal,
          retainAsPublished: sub.retainAsPublished,
          retainHandling: sub.retainHandling,
          subscriptionIdentifier: sub.subscriptionIdentifier,
        }),
      );
    }
    for (const pending of stored.pending) {
      session.restorePending(pending.seq, pending.state, pending.packetId, pending.message);
    }
    for (const id of stored.inboundQos2) session.inboundQos2.add(id);
    this.#sessions.set(stored.clientId, session);
    // A process that stopped while the client was connected: the connection ended now.
    const disconnectedAt = stored.disconnectedAt ?? now;
    if (stored.disconnectedAt === null) this.#saveSessionMeta(session, disconnectedAt);
    this.#armExpiry(session, disconnectedAt + stored.expiryIntervalSeconds * 1000 - now);
  }

  /** Serves one client connection; `profile`: the listener's (the secure-channel listener's). */
  handle(socket: Duplex, remoteAddress: string, profile?: ListenerProfile): void {
    if (this.#closing) {
      socket.destroy();
      return;
    }
    this.stats.connectionsOpened++;
    this.#connections.add(new MqttConnection(this, socket, remoteAddress, profile));
  }

  get connectionCount(): number {
    return this.#connections.size;
  }

  get retainedCount(): number {
    return this.#retained.size;
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

  /** Identities of the clients connected to this process (e.g. to re-check their credentials, DEV-8). */
  connectedIdentities(): ClientIdentity[] {
    const identities: ClientIdentity[] = [];
    for (const conn of this.#clients.values()) if (conn.identity) identities.push(conn.identity);
    return identities;
  }

  /** Is a client with this ID connected to this process? */
  isConnected(clientId: string): boolean {
    return this.#clients.has(clientId);
  }

  readonly #isOnline = (clientId: string): boolean => (this.#sessions.get(clientId)?.sink ?? null) !== null;

  /**
   * Attaches a connection to its session: takes over a live connection with the same client ID
   * [MQTT-3.1.4-3], resumes a stored session unless a clean start was asked for [MQTT-3.1.2-4] or it
   * belongs to another principal (then it is discarded and a new one begins).
   */
  openSession(
    conn: MqttConnection,
    clientId: string,
    identity: ClientIdentity,
    cleanStart: boolean,
    expiryInterval: number,
  ): { session: Session; present: boolean } {
    const previous = this.#clients.get(clientId);
    if (previous && previous !== conn) {
      try {
        this.hooks.onTakeover?.(identity, { previous: previous.remoteAddress, next: conn.remoteAddress });
      } catch (error) {
        this.log.error({ err: error }, 'mqtt: onTakeover hook failed');
      }
      previous.takenOver = true;
      previous.disconnect(ReasonCode.SessionTakenOver, undefined, 'takeover');
    }
    this.#clients.set(clientId, conn);
    let session = this.#sessions.get(clientId);
    const foreign = session !== undefined && session.identity.principalId !== identity.principalId;
    const pendingWill = this.#pendingWills.get(clientId);
    if (pendingWill) {
      clearTimeout(pendingWill.timer);
      this.#pendingWills.delete(clientId);
      // [MQTT-3.1.3-9 (v5)] resuming the session before the will delay elapsed cancels the will; a clean
      // start ends the old session, and with it the wait: the will goes out now.
      if (cleanStart || foreign) pendingWill.publish();
    }
    if (session) clearTimeout(session.expiryTimer);
    if (session && (cleanStart || foreign)) {
      this.#endSession(session);
      session = undefined;
    }
    let present = true;
    if (session) {
      session.identity = identity;
    } else {
      present = false;
      session = new Session(clientId, identity, this.limits.maxQueuedMessages);
      this.#sessions.set(clientId, session);
    }
    session.expiryInterval = expiryInterval;
    if (expiryInterval > 0) {
      const fresh = session.store === null;
      session.store = this.store;
      this.#saveSessionMeta(session, null);
      if (fresh && present) this.#writeWholeSession(session);
    } else if (session.store) {
      // It now ends with this connection, so a crash must not leave it behind.
      this.store.deleteSession(clientId);
      session.store = null;
    }
    return { session, present };
  }

  /** A session that just became persistent: its subscriptions and messages go to the store. */
  #writeWholeSession(session: Session): void {
    for (const entry of this.subscriptions.entriesFor(session.clientId)) {
      this.store.addSubscription(session.clientId, storedSubscription(entry));
    }
    session.writeAllPending(this.store);
  }

  #saveSessionMeta(session: Session, disconnectedAt: number | null): void {
    session.store?.saveSession({
      clientId: session.clientId,
      principalId: session.identity.principalId,
      expiryIntervalSeconds: session.expiryInterval,
      disconnectedAt,
    });
  }

  /** DISCONNECT changed the session expiry (MQTT 5 3.14.2.2.2). */
  changeSessionExpiry(session: Session, expiryInterval: number): void {
    session.expiryInterval = expiryInterval;
    if (expiryInterval === 0) {
      if (session.store) this.store.deleteSession(session.clientId);
      session.store = null;
    } else {
      this.#saveSessionMeta(session, null);
    }
  }

  /** Records a subscription (index and store) and returns whether one existed for that filter. */
  addSubscription(session: Session, entry: SubscriptionEntry): boolean {
    const previous = this.subscriptions.add(entry);
    session.store?.addSubscription(session.clientId, storedSubscription(entry));
    return previous !== undefined;
  }

  removeSubscription(session: Session, filter: string): boolean {
    if (!this.subscriptions.remove(session.clientId, filter)) return false;
    session.store?.removeSubscription(session.clientId, filter);
    return true;
  }

  /** Feeds a refusal to the onViolation hook; the hook's own failure is logged, never thrown. */
  reportViolation(violation: Violation): void {
    if (!this.hooks.onViolation) return;
    try {
      this.hooks.onViolation(violation);
    } catch (error) {
      this.log.error({ err: error }, 'mqtt: onViolation hook failed');
    }
  }

  /** Called by the CONNECT handler right after a successful CONNACK (presence). */
  notifyConnected(conn: MqttConnection, sessionPresent: boolean, keepAliveSeconds: number): void {
    if (!this.hooks.onConnected) return;
    try {
      this.hooks.onConnected(conn.identity!, {
        clientId: conn.clientId,
        remoteAddress: conn.remoteAddress,
        protocolVersion: conn.protocolVersion,
        sessionPresent,
        keepAliveSeconds,
      });
    } catch (error) {
      this.log.error({ err: error }, 'mqtt: onConnected hook failed');
    }
  }

  #notifyDisconnected(conn: MqttConnection): void {
    if (!this.hooks.onDisconnected || !conn.identity) return;
    try {
      this.hooks.onDisconnected(conn.identity, {
        clientId: conn.clientId,
        remoteAddress: conn.remoteAddress,
        reason: conn.closeReason ?? 'network',
        ...(conn.closeReasonCode === undefined ? {} : { reasonCode: conn.closeReasonCode }),
        connectedForMs: Date.now() - conn.connectedAt,
      });
    } catch (error) {
      this.log.error({ err: error }, 'mqtt: onDisconnected hook failed');
    }
  }

  /** Called once per connection when it closes. */
  connectionClosed(conn: MqttConnection, wasConnected: boolean): void {
    this.#connections.delete(conn);
    if (!wasConnected) return;
    this.#notifyDisconnected(conn);
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
    if (!session || this.#sessions.get(session.clientId) !== session) return;
    session.sink = null;
    this.stats.messagesDropped += session.droppedMessages;
    session.droppedMessages = 0;
    if (session.expiryInterval === 0) {
      this.#endSession(session);
      return;
    }
    this.#saveSessionMeta(session, Date.now());
    // While shutting down the session stays in the store for the next start; close() forgets it here.
    if (!this.#closing) this.#armExpiry(session, session.expiryInterval * 1000);
  }

  #armExpiry(session: Session, ms: number): void {
    clearTimeout(session.expiryTimer);
    if (ms <= 0) {
      this.#endSession(session);
      return;
    }
    const deadline = Date.now() + ms;
    const arm = (left: number) => {
      session.expiryTimer = setTimeout(
        () => {
          const rest = deadline - Date.now();
          if (rest > 0) arm(rest);
          else this.#endSession(session);
        },
        Math.min(left, MAX_TIMER_MS),
      );
      session.expiryTimer.unref();
    };
    arm(ms);
  }

  #endSession(session: Session): void {
    clearTimeout(session.expiryTimer);
    if (this.#sessions.get(session.clientId) === session) this.#sessions.delete(session.clientId);
    this.subscriptions.removeClient(session.clientId);
    this.stats.messagesDropped += session.pendingCount;
    if (session.store) {
      session.store.deleteSession(session.clientId);
      session.store = null;
    }
  }

  #scheduleWill(conn: MqttConnection, session: Session | undefined): void {
    const will = conn.will!;
    const identity = conn.identity!;
    const clientId = conn.clientId;
    conn.will = undefined;
    const publish = () => {
      if (this.#pendingWills.get(clientId)?.publish === publish) this.#pendingWills.delete(clientId);
      this.publishAs(identity, clientId, {
        topic: will.topic,
        payload: will.payload,
        qos: will.qos,
        retain: will.retain,
        ...(will.properties ? { properties: will.properties } : {}),
        receivedAt: Date.now(),
        // The will's expiry counts from when it is published (MQTT 5 3.1.3.2.4).
        ...(will.expirySeconds === null ? {} : { expiresAt: Date.now() + will.expirySeconds * 1000 }),
      });
    };
    // The will waits for the smaller of its delay and the session's expiry [MQTT-3.1.3-9 (v5)].
    const delay = Math.min(will.delaySeconds, session?.expiryInterval ?? 0);
    if (delay <= 0 || this.#closing) {
      publish();
      return;
    }
    const timer = setTimeout(publish, Math.min(delay * 1000, MAX_TIMER_MS));
    timer.unref();
    this.#pendingWills.set(clientId, { timer, publish });
  }

  /** Publishes on behalf of a client (wills), through the same durable hook as its own messages. */
  publishAs(identity: ClientIdentity, clientId: string, message: InboundMessage & { expiresAt?: number }): void {
    Promise.resolve()
      .then(() => this.hooks.onPublish(identity, message))
      .then(
        () => {
          const stored = this.publish(
            {
              topic: message.topic,
              payload: message.payload,
              qos: message.qos,
              retain: message.retain === true,
              properties: message.properties,
              expiresAt: message.expiresAt ?? null,
            },
            clientId,
          );
          if (stored && this.durable) this.#flushInBackground();
        },
        (error: unknown) => this.log.warn({ err: error, clientId }, 'mqtt: will message refused'),
      )
      .catch((error: unknown) => this.log.error({ err: error, clientId }, 'mqtt: will message failed'));
  }

  /**
   * Publishes a broker-originated message (e.g. `$SYS/...`): routed and retained like a client's,
   * without the ACL or the durable hook. Clients can never publish to `$` topics themselves.
   */
  publishSystem(topic: string, payload: Buffer, options: { retain: boolean; qos?: 0 | 1; persist?: boolean }): void {
    const message = {
      topic,
      payload,
      qos: options.qos ?? 0,
      retain: options.retain,
      properties: undefined,
      expiresAt: null,
    };
    if (options.persist === false) {
      // Scale mode (RES-2): another process published and stored it; this one updates its memory and
      // routes to its own subscribers, never writing the shared store (an older copy could win there).
      // Only connected sessions: an offline persistent session would write its queue to the shared store.
      if (message.retain) this.#retain(message, false);
      this.route(message, undefined, true);
      return;
    }
    const stored = this.publish(message, undefined);
    if (stored && this.durable) this.#flushInBackground();
  }

  #flushInBackground(): void {
    this.flushStore().catch((error: unknown) => this.log.error({ err: error }, 'mqtt: store flush failed'));
  }

  /**
   * An accepted message: retained when asked [MQTT-3.3.1-5], then routed. Returns true when the store
   * was written (a QoS 1/2 acknowledgement must then wait for flushStore()).
   */
  publish(message: OutboundMessage, senderClientId: string | undefined): boolean {
    const retained = message.retain ? this.#retain(message) : false;
    const routed = this.route(message, senderClientId);
    return retained || routed;
  }

  #retain(message: OutboundMessage, persist = true): boolean {
    const topic = message.topic;
    if (message.payload.length === 0) {
      // [MQTT-3.3.1-6] [MQTT-3.3.1-7] an empty retained message clears the topic and is not stored.
      if (!this.#retained.delete(topic)) return false;
      if (persist) this.store.setRetained(topic, null);
      return persist;
    }
    if (this.#retained.size >= this.#maxRetained && !this.#retained.has(topic)) {
      this.stats.retainedRefused++;
      return false;
    }
    const stored: StoredMessage = {
      topic,
      payload: message.payload,
      qos: message.qos,
      retain: true,
      ...(message.properties ? { properties: message.properties } : {}),
      expiresAt: message.expiresAt,
    };
    this.#retained.set(topic, stored);
    if (!persist) return false;
    this.store.setRetained(topic, stored);
    return true;
  }

  /**
   * Delivers to every matching subscriber in this process with the granted QoS, the RETAIN flag per
   * Retain As Published (else 0 [MQTT-3.3.1-12]) and the matching subscription identifiers. Returns
   * true when a persistent session's store was written. A synchronous loop: no promise per message.
   */
  route(message: OutboundMessage, senderClientId: string | undefined, connectedOnly = false): boolean {
    const matches = this.subscriptions.match(message.topic, this.#isOnline);
    let stored = false;
    for (const sub of matches) {
      if (sub.noLocal && sub.clientId === senderClientId) continue; // [MQTT-3.8.3-3]
      const session = this.#sessions.get(sub.clientId);
      if (!session || (connectedOnly && session.sink === null)) continue;
      const qos = sub.qos < message.qos ? sub.qos : message.qos; // [MQTT-3.8.4-8]
      const retain = message.retain && sub.retainAsPublished;
      const ids = sub.identifiers;
      const out =
        qos === message.qos && retain === message.retain && ids === undefined
          ? message
          : { ...message, qos, retain, subscriptionIds: ids };
      if (session.deliver(out)) stored = true;
    }
    return stored;
  }

  /**
   * Sends the retained messages matching a new subscription, RETAIN=1 [MQTT-3.3.1-9], at the lower of
   * their QoS and the granted one. Expired ones are dropped instead [MQTT-3.3.2-5].
   */
  deliverRetained(session: Session, entry: SubscriptionEntry): boolean {
    if (this.#retained.size === 0) return false;
    const now = Date.now();
    let stored = false;
    for (const message of this.#retained.match(entry.topicFilter)) {
      if (isExpired(message, now)) {
        this.#retained.delete(message.topic);
        this.store.setRetained(message.topic, null);
        continue;
      }
      const qos = message.qos < entry.qos ? message.qos : entry.qos;
      if (session.deliver({ ...message, qos, retain: true, subscriptionIds: entry.identifiers })) stored = true;
    }
    return stored;
  }

  /**
   * Resolves once everything written to the store so far is durable. Calls in the same turn of the
   * event loop share one flush, so concurrent publishes wait together.
   */
  flushStore(): Promise<void> {
    if (this.#flushBatch) return this.#flushBatch;
    const batch = new Promise<void>((resolve, reject) => {
      setImmediate(() => {
        if (this.#flushBatch === batch) this.#flushBatch = undefined;
        this.store.flush().then(resolve, (error: unknown) => {
          this.stats.storeFlushFailures++;
          reject(error instanceof Error ? error : new Error(String(error)));
        });
      });
    });
    this.#flushBatch = batch;
    return batch;
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
    for (const session of [...this.#sessions.values()]) {
      if (session.store) {
        // Persistent: it stays in the store for the next start.
        clearTimeout(session.expiryTimer);
        this.#sessions.delete(session.clientId);
        this.subscriptions.removeClient(session.clientId);
      } else {
        this.#endSession(session);
      }
    }
    try {
      await this.store.flush();
    } catch (error) {
      this.stats.storeFlushFailures++;
      this.log.error({ err: error }, 'mqtt: store flush at close failed');
    }
  }
}

function storedSubscription(entry: SubscriptionEntry) {
  return {
    filter: entry.filter,
    qos: entry.qos,
    noLocal: entry.noLocal,
    retainAsPublished: entry.retainAsPublished,
    retainHandling: entry.retainHandling,
    ...(entry.subscriptionIdentifier === undefined ? {} : { subscriptionIdentifier: entry.subscriptionIdentifier }),
  };
}
