// Session state that outlives a network connection (MQTT 5 3.1.2.4 / 3.1.1 3.1.2.4): QoS 1 and 2
// messages in flight and queued, and the QoS 2 packet identifiers received from the client awaiting
// PUBREL. A persistent session (expiry > 0) mirrors every change to the broker store (write-behind).
import type { ClientIdentity } from './broker-hooks.ts';
import type { BrokerStore, PendingState, StoredMessage } from './broker-store.ts';
import type { UserPropertyList } from './publish-codec.ts';

/** A message on its way to one client; shared between recipients whenever nothing differs. */
export interface OutboundMessage extends StoredMessage {
  /** Identifiers of the subscriptions it matched (MQTT 5) [MQTT-3.3.4-3]. */
  readonly subscriptionIds?: readonly number[] | undefined;
  /**
   * The User Properties in wire order, when `properties.userProperties` cannot say it (repeated
   * names) [MQTT-3.3.2-18]. Held in memory only: the store keeps the object form.
   */
  readonly userPropertyList?: UserPropertyList | undefined;
}

/**
 * 'sent': written. 'busy': the connection cannot take it now (closed or too slow), try later.
 * 'discarded': it can never be delivered to this client (larger than the client's Maximum Packet
 * Size), so it is dropped as if delivered [MQTT-3.1.2-25 (v5)].
 */
export type SendResult = 'sent' | 'busy' | 'discarded';

export interface DeliverySink {
  sendPublish(message: OutboundMessage, packetId: number | undefined, dup: boolean): SendResult;
  /** Resends PUBREL for an outgoing QoS 2 message whose PUBREC arrived [MQTT-4.4.0-1]. */
  sendPubrel(packetId: number): void;
}

interface InflightEntry {
  readonly message: OutboundMessage;
  readonly seq: number;
  state: 'sent' | 'released';
}

interface QueuedEntry {
  readonly message: OutboundMessage;
  readonly seq: number;
}

/**
 * Result of an acknowledgement from the client: 'ok'; 'unknown' identifier (a late duplicate, ignored);
 * 'mismatch' = an acknowledgement of the wrong kind for the message in flight (PUBACK for QoS 2, PUBREC
 * for QoS 1, PUBCOMP before PUBREL), a Protocol Error. PUBREC adds 'release' (send PUBREL).
 */
export type AckOutcome = 'ok' | 'unknown' | 'mismatch';
export type PubrecOutcome = 'release' | 'done' | 'unknown' | 'mismatch';

export function isExpired(message: StoredMessage, now: number): boolean {
  return message.expiresAt !== null && message.expiresAt <= now;
}

export class Session {
  readonly clientId: string;
  identity: ClientIdentity;
  /** Seconds the session survives its connection; 0 = ends with the connection. */
  expiryInterval = 0;
  expiryTimer: NodeJS.Timeout | undefined;
  sink: DeliverySink | null = null;
  /** How many QoS 1 and 2 messages the client accepts unacknowledged (its Receive Maximum). */
  receiveMaximum = 65535;
  readonly inflight = new Map<number, InflightEntry>();
  readonly queue: QueuedEntry[] = [];
  /** QoS 2 packet identifiers received from the client whose PUBREL has not arrived [MQTT-4.3.3-10]. */
  readonly inboundQos2 = new Set<number>();
  /** The store this session is mirrored to; null while it is not persistent (expiry 0). */
  store: BrokerStore | null = null;
  #nextPacketId = 1;
  #nextSeq = 1;
  readonly #maxQueued: number;
  droppedMessages = 0;

  constructor(clientId: string, identity: ClientIdentity, maxQueued: number) {
    this.clientId = clientId;
    this.identity = identity;
    this.#maxQueued = maxQueued;
  }

  #allocatePacketId(): number {
    // [MQTT-2.2.1-3] a new, unused non-zero identifier.
    for (let i = 0; i < 65535; i++) {
      const id = this.#nextPacketId;
      this.#nextPacketId = id === 65535 ? 1 : id + 1;
      if (!this.inflight.has(id)) return id;
    }
    return 0;
  }

  /**
   * Hands a message to the client now or queues it. Returns true when the store was written (a
   * persistent session got a QoS 1/2 message), so the publisher's acknowledgement waits for a flush.
   */
  deliver(message: OutboundMessage): boolean {
    if (message.qos === 0) {
      if (this.sink?.sendPublish(message, undefined, false) !== 'sent') this.droppedMessages++;
      return false;
    }
    const seq = this.#nextSeq++;
    if (this.sink && this.inflight.size < this.receiveMaximum && this.queue.length === 0) {
      return this.#send(message, seq, true);
    }
    if (this.queue.length >= this.#maxQueued) {
      this.droppedMessages++;
      return false;
    }
    this.queue.push({ message, seq });
    if (this.store) {
      this.store.addPending(this.clientId, { seq, state: 'queued', packetId: null, message });
      return true;
    }
    return false;
  }

  /** Sends a QoS 1/2 message with a fresh packet identifier; `fresh` = not yet in the store. */
  #send(message: OutboundMessage, seq: number, fresh: boolean): boolean {
    const id = this.#allocatePacketId();
    if (id === 0) {
      this.queue.unshift({ message, seq });
      if (fresh && this.store) {
        this.store.addPending(this.clientId, { seq, state: 'queued', packetId: null, message });
        return true;
      }
      return false;
    }
    const result = this.sink!.sendPublish(message, id, false);
    if (result === 'discarded') {
      this.droppedMessages++;
      if (!fresh) this.store?.removePending(this.clientId, seq);
      return false;
    }
    this.inflight.set(id, { message, seq, state: 'sent' });
    if (!this.store) return false;
    if (fresh) this.store.addPending(this.clientId, { seq, state: 'sent', packetId: id, message });
    else this.store.updatePending(this.clientId, seq, 'sent', id);
    return true;
  }

  /** PUBACK from the client for a QoS 1 message. */
  acknowledge(packetId: number): AckOutcome {
    const entry = this.inflight.get(packetId);
    if (!entry) return 'unknown';
    if (entry.message.qos !== 1) return 'mismatch';
    this.#finish(packetId, entry);
    return 'ok';
  }

  /** PUBREC from the client for an outgoing QoS 2 message [MQTT-4.3.3-4]. */
  received(packetId: number, reasonCode: number): PubrecOutcome {
    const entry = this.inflight.get(packetId);
    if (!entry) return 'unknown';
    if (entry.message.qos !== 2) return 'mismatch';
    if (reasonCode >= 0x80) {
      // A refusal ends the exchange: no PUBREL, the identifier is free again (MQTT 5 4.3.3).
      this.#finish(packetId, entry);
      return 'done';
    }
    if (entry.state === 'sent') {
      entry.state = 'released';
      this.store?.updatePending(this.clientId, entry.seq, 'released', packetId);
    }
    return 'release';
  }

  /** PUBCOMP from the client, for a QoS 2 message whose PUBREL was sent. */
  complete(packetId: number): AckOutcome {
    const entry = this.inflight.get(packetId);
    if (!entry) return 'unknown';
    if (entry.state !== 'released') return 'mismatch';
    this.#finish(packetId, entry);
    return 'ok';
  }

  #finish(packetId: number, entry: InflightEntry): void {
    this.inflight.delete(packetId);
    this.store?.removePending(this.clientId, entry.seq);
    this.drain();
  }

  drain(): void {
    while (this.sink && this.queue.length > 0 && this.inflight.size < this.receiveMaximum) {
      const next = this.queue.shift()!;
      if (next.message.expiresAt !== null && isExpired(next.message, Date.now())) {
        // [MQTT-3.3.2-5] an expired message is not delivered.
        this.store?.removePending(this.clientId, next.seq);
        continue;
      }
      this.#send(next.message, next.seq, false);
    }
  }

  /**
   * On resumption, PUBLISH packets still unacknowledged are sent again with DUP set and PUBREL packets
   * still uncompleted are sent again [MQTT-4.4.0-1]; then the queue drains.
   */
  resume(sink: DeliverySink): void {
    this.sink = sink;
    for (const [id, entry] of this.inflight) {
      if (entry.state === 'released') {
        sink.sendPubrel(id);
        continue;
      }
      if (sink.sendPublish(entry.message, id, true) === 'discarded') {
        this.inflight.delete(id);
        this.store?.removePending(this.clientId, entry.seq);
        this.droppedMessages++;
      }
    }
    this.drain();
  }

  /** Records a QoS 2 identifier from the client; true when the store was written. */
  addInboundQos2(packetId: number): boolean {
    this.inboundQos2.add(packetId);
    if (!this.store) return false;
    this.store.setInboundQos2(this.clientId, packetId, true);
    return true;
  }

  /** PUBREL from the client; false when the identifier was unknown. */
  releaseInboundQos2(packetId: number): boolean {
    if (!this.inboundQos2.delete(packetId)) return false;
    this.store?.setInboundQos2(this.clientId, packetId, false);
    return true;
  }

  /** Forgets a QoS 2 identifier whose PUBLISH was refused (PUBREC ≥ 0x80 frees it). */
  dropInboundQos2(packetId: number): void {
    if (this.inboundQos2.delete(packetId)) this.store?.setInboundQos2(this.clientId, packetId, false);
  }

  /** Restores a pending message loaded from the store (before any connection). */
  restorePending(seq: number, state: PendingState, packetId: number | null, message: StoredMessage): void {
    if (seq >= this.#nextSeq) this.#nextSeq = seq + 1;
    if (state === 'queued' || packetId === null || this.inflight.has(packetId)) {
      this.queue.push({ message, seq });
      return;
    }
    this.inflight.set(packetId, { message, seq, state: state === 'released' ? 'released' : 'sent' });
  }

  /** Writes the whole session to the store (a session that became persistent). */
  writeAllPending(store: BrokerStore): void {
    for (const [id, entry] of this.inflight) {
      store.addPending(this.clientId, { seq: entry.seq, state: entry.state, packetId: id, message: entry.message });
    }
    for (const entry of this.queue) {
      store.addPending(this.clientId, { seq: entry.seq, state: 'queued', packetId: null, message: entry.message });
    }
    for (const id of this.inboundQos2) store.setInboundQos2(this.clientId, id, true);
  }

  /** Messages lost with this session (ended or expired). */
  get pendingCount(): number {
    return this.queue.length + this.inflight.size;
  }
}
