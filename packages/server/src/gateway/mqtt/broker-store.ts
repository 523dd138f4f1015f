// Durable broker state: persistent sessions, their subscriptions and undelivered messages, and retained
// messages. The broker keeps the live copy in memory (the hot path never waits on a query) and mirrors
// every change here; writes are batched (write-behind) and `flush()` resolves once everything handed
// over so far is durable, so a QoS 1/2 acknowledgement can wait for it. At start the broker loads the
// retained messages and the persistent sessions; in scale mode a process loads a session when its
// client connects there.

/** MQTT 5 properties that travel with an application message (3.3.2.3). */
export interface MessageProperties {
  readonly payloadFormatIndicator?: boolean;
  readonly contentType?: string;
  readonly responseTopic?: string;
  readonly correlationData?: Buffer;
  readonly userProperties?: Readonly<Record<string, string | string[]>>;
}

export interface StoredMessage {
  readonly topic: string;
  readonly payload: Buffer;
  readonly qos: 0 | 1 | 2;
  readonly retain: boolean;
  readonly properties?: MessageProperties;
  /** Absolute expiry (ms since the epoch) from the Message Expiry Interval; null = never expires. */
  readonly expiresAt: number | null;
}

export interface StoredSubscription {
  readonly filter: string;
  readonly qos: 0 | 1 | 2;
  readonly noLocal: boolean;
  readonly retainAsPublished: boolean;
  readonly retainHandling: 0 | 1 | 2;
  readonly subscriptionIdentifier?: number;
}

/**
 * 'queued': not yet sent. 'sent': PUBLISH sent with `packetId`, awaiting PUBACK / PUBREC.
 * 'released': QoS 2 PUBREC received and PUBREL sent, awaiting PUBCOMP (only the packet ID matters).
 */
export type PendingState = 'queued' | 'sent' | 'released';

export interface StoredPending {
  /** Order of the message within its session (increasing, unique per session). */
  readonly seq: number;
  readonly state: PendingState;
  readonly packetId: number | null;
  readonly message: StoredMessage;
}

export interface StoredSessionMeta {
  readonly clientId: string;
  /** Who owns the session (device ID); a different principal can never resume it. */
  readonly principalId: string;
  readonly expiryIntervalSeconds: number;
  /** When its last connection ended (ms since the epoch); null while connected. */
  readonly disconnectedAt: number | null;
}

export interface StoredSession extends StoredSessionMeta {
  readonly subscriptions: readonly StoredSubscription[];
  /** In `seq` order. */
  readonly pending: readonly StoredPending[];
  /** QoS 2 packet IDs received from the client whose PUBREL has not arrived yet. */
  readonly inboundQos2: readonly number[];
}

export interface BrokerStore {
  /** Retained messages that have not expired. */
  loadRetained(): Promise<StoredMessage[]>;
  /** Persistent sessions that have not expired (at `now`), with their subscriptions and pending messages. */
  loadSessions(now: number): Promise<StoredSession[]>;
  /** One session (scale mode: a client reconnecting to another process); undefined when absent or expired. */
  loadSession(clientId: string, now: number): Promise<StoredSession | undefined>;

  // Write-behind mutations: applied in call order, durable once a later flush() resolves.
  /** Sets (message) or clears (null) the retained message of a topic. */
  setRetained(topic: string, message: StoredMessage | null): void;
  /** Creates or updates a session's meta; its subscriptions and pending messages are kept. */
  saveSession(meta: StoredSessionMeta): void;
  /** Deletes a session with its subscriptions, pending messages and inbound QoS 2 state. */
  deleteSession(clientId: string): void;
  addSubscription(clientId: string, subscription: StoredSubscription): void;
  removeSubscription(clientId: string, filter: string): void;
  addPending(clientId: string, pending: StoredPending): void;
  updatePending(clientId: string, seq: number, state: PendingState, packetId: number | null): void;
  removePending(clientId: string, seq: number): void;
  setInboundQos2(clientId: string, packetId: number, present: boolean): void;

  /** Resolves when every mutation made before the call is durable; rejects if writing failed. */
  flush(): Promise<void>;
  /** Deletes sessions whose expiry has passed and expired retained messages; returns sessions removed. */
  purgeExpired(now: number): Promise<number>;
  /** Flushes and stops the writer. */
  close(): Promise<void>;
}

/** No durability: the conformance listener and unit tests (state lives only in memory). */
export const memoryOnlyBrokerStore: BrokerStore = {
  loadRetained: async () => [],
  loadSessions: async () => [],
  loadSession: async () => undefined,
  setRetained() {},
  saveSession() {},
  deleteSession() {},
  addSubscription() {},
  removeSubscription() {},
  addPending() {},
  updatePending() {},
  removePending() {},
  setInboundQos2() {},
  flush: async () => {},
  purgeExpired: async () => 0,
  close: async () => {},
};
