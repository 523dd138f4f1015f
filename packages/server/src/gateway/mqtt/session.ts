// Session state that outlives a network connection (MQTT 5 3.1.2.4 / 3.1.1 3.1.2.4): subscriptions,
// QoS 1 messages in flight and queued. Held in memory in this process; the broker issue adds a durable
// store behind the same shape.
import type { ClientIdentity } from './broker-hooks.ts';

export interface OutboundMessage {
  topic: string;
  payload: Buffer;
  qos: 0 | 1;
  retain: boolean;
}

/**
 * 'sent': written. 'busy': the connection cannot take it now (closed or too slow), try later.
 * 'discarded': it can never be delivered to this client (larger than the client's Maximum Packet
 * Size), so it is dropped as if delivered [MQTT-3.1.2-25 (v5)].
 */
export type SendResult = 'sent' | 'busy' | 'discarded';

export interface DeliverySink {
  sendPublish(message: OutboundMessage, packetId: number | undefined, dup: boolean): SendResult;
}

export class Session {
  readonly clientId: string;
  identity: ClientIdentity;
  /** Seconds the session survives its connection; 0 = ends with the connection. */
  expiryInterval = 0;
  expiryTimer: NodeJS.Timeout | undefined;
  sink: DeliverySink | null = null;
  /** How many QoS 1 messages the client accepts unacknowledged (its Receive Maximum). */
  receiveMaximum = 65535;
  readonly inflight = new Map<number, OutboundMessage>();
  readonly queue: OutboundMessage[] = [];
  #nextPacketId = 1;
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

  deliver(message: OutboundMessage): void {
    if (message.qos === 0) {
      if (this.sink?.sendPublish(message, undefined, false) !== 'sent') this.droppedMessages++;
      return;
    }
    if (this.sink && this.inflight.size < this.receiveMaximum && this.queue.length === 0) {
      this.#sendQos1(message);
      return;
    }
    if (this.queue.length >= this.#maxQueued) {
      this.droppedMessages++;
      return;
    }
    this.queue.push(message);
  }

  #sendQos1(message: OutboundMessage): void {
    const id = this.#allocatePacketId();
    if (id === 0) {
      this.queue.unshift(message);
      return;
    }
    this.inflight.set(id, message);
    if (this.sink?.sendPublish(message, id, false) === 'discarded') {
      this.inflight.delete(id);
      this.droppedMessages++;
    }
  }

  /** PUBACK from the client; false when the identifier was not in flight. */
  acknowledge(packetId: number): boolean {
    if (!this.inflight.delete(packetId)) return false;
    this.drain();
    return true;
  }

  drain(): void {
    while (this.sink && this.queue.length > 0 && this.inflight.size < this.receiveMaximum) {
      this.#sendQos1(this.queue.shift()!);
    }
  }

  /** On resumption, messages still in flight are sent again with DUP set [MQTT-4.4.0-1]. */
  resume(sink: DeliverySink): void {
    this.sink = sink;
    for (const [id, message] of this.inflight) {
      if (sink.sendPublish(message, id, true) === 'discarded') {
        this.inflight.delete(id);
        this.droppedMessages++;
      }
    }
    this.drain();
  }
}
