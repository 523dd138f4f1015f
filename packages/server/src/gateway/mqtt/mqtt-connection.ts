// One network connection speaking MQTT 3.1.1 or 5.0. It frames bytes into packets with mqtt-packet,
// enforces the size limit and the packet order, and dispatches each packet to its handler. Nothing here
// decides security: the handlers ask the broker's hooks.
import type { Duplex } from 'node:stream';
import mqttPacket, { type Packet } from 'mqtt-packet';
import type { ClientIdentity, ProtocolVersion } from './broker-hooks.ts';
import { packetHandlers } from './handlers/index.ts';
import type { MqttBroker } from './mqtt-broker.ts';
import { ReasonCode } from './reason-codes.ts';
import type { DeliverySink, OutboundMessage, SendResult, Session } from './session.ts';

/** Bytes buffered for a slow reader beyond which QoS 0 messages to it are dropped. */
const QOS0_HIGH_WATER_BYTES = 1 << 20;
/** Packets a client may pipeline behind CONNECT before its CONNACK is sent. */
const MAX_PIPELINED_BEFORE_CONNACK = 64;

export type ConnectionState = 'new' | 'authenticating' | 'connected' | 'closed';

export interface PendingWill {
  topic: string;
  payload: Buffer;
  qos: 0 | 1;
  delaySeconds: number;
}

export class MqttConnection implements DeliverySink {
  readonly broker: MqttBroker;
  readonly socket: Duplex;
  readonly remoteAddress: string;
  state: ConnectionState = 'new';
  protocolVersion: ProtocolVersion = 4;
  clientId = '';
  identity: ClientIdentity | undefined;
  session: Session | undefined;
  will: PendingWill | undefined;
  /** Largest packet the client accepts (MQTT 5 Maximum Packet Size). */
  clientMaximumPacketSize = Number.POSITIVE_INFINITY;
  /** Inbound QoS 1 messages not yet acknowledged. */
  inboundInflight = 0;
  /** Settles in arrival order so acknowledgements and routing keep the client's order [MQTT-4.6.0-2]. */
  publishTail: Promise<unknown> = Promise.resolve();
  /** Set when a newer connection took over this client ID: its close must not end the session. */
  takenOver = false;
  /** Set by a DISCONNECT that suppresses the will. */
  gracefulDisconnect = false;

  readonly #parser = mqttPacket.parser({ protocolVersion: 4 });
  readonly #pipelined: Packet[] = [];
  #connectTimer: NodeJS.Timeout | undefined;
  #keepAliveTimer: NodeJS.Timeout | undefined;

  constructor(broker: MqttBroker, socket: Duplex, remoteAddress: string) {
    this.broker = broker;
    this.socket = socket;
    this.remoteAddress = remoteAddress;
    this.#parser.on('packet', (packet) => this.#onPacket(packet));
    this.#parser.on('error', (error: Error) => this.protocolViolation(ReasonCode.MalformedPacket, error.message));
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('error', () => this.destroy());
    socket.on('close', () => this.#onClose());
    // A connection that never sends CONNECT is closed after the configured time.
    this.#connectTimer = setTimeout(() => this.destroy(), broker.limits.connectTimeoutMs);
    this.#connectTimer.unref();
  }

  #onData(chunk: Buffer): void {
    if (this.state === 'closed') return;
    this.#keepAliveTimer?.refresh();
    try {
      this.#parser.parse(chunk);
    } catch (error) {
      this.protocolViolation(ReasonCode.MalformedPacket, (error as Error).message);
      return;
    }
    // Refuse an oversized packet as soon as its length is known, before buffering it.
    const pending = (this.#parser as unknown as { packet: { length: number } }).packet.length;
    if ((this.state as ConnectionState) !== 'closed' && pending > this.broker.limits.maxPacketBytes) {
      this.broker.stats.packetsTooLarge++;
      this.protocolViolation(ReasonCode.PacketTooLarge, 'packet exceeds the maximum packet size');
    }
  }

  #onPacket(packet: Packet): void {
    if (this.state === 'closed') return;
    if (this.state === 'authenticating') {
      // [MQTT-3.1.4-5 (v5)] nothing after CONNECT is processed before a successful CONNACK.
      if (this.#pipelined.length >= MAX_PIPELINED_BEFORE_CONNACK) {
        this.destroy();
        return;
      }
      this.#pipelined.push(packet);
      return;
    }
    if (this.state === 'new' && packet.cmd !== 'connect') {
      // [MQTT-3.1.0-1] the first packet must be CONNECT.
      this.destroy();
      return;
    }
    const handler = packetHandlers[packet.cmd];
    handler(this, packet as never);
  }

  /** Called by the CONNECT handler once the CONNACK has been sent. */
  connected(keepAliveSeconds: number): void {
    clearTimeout(this.#connectTimer);
    this.state = 'connected';
    if (keepAliveSeconds > 0) {
      // [MQTT-3.1.2-24] close after one and a half keep-alive periods without a packet.
      this.#keepAliveTimer = setTimeout(() => {
        // While reading is paused for backpressure the silence is ours, not the client's.
        if (this.socket.isPaused()) {
          this.#keepAliveTimer?.refresh();
          return;
        }
        this.broker.stats.keepAliveTimeouts++;
        this.disconnect(ReasonCode.KeepAliveTimeout);
      }, keepAliveSeconds * 1500);
      this.#keepAliveTimer.unref();
    }
    const queued = this.#pipelined.splice(0);
    for (const packet of queued) this.#onPacket(packet);
  }

  write(packet: Packet): boolean {
    if (this.state === 'closed' || this.socket.destroyed) return false;
    let bytes: Buffer;
    try {
      bytes = mqttPacket.generate(packet, { protocolVersion: this.protocolVersion });
    } catch (error) {
      this.broker.log.error({ err: error, cmd: packet.cmd }, 'mqtt: cannot encode packet');
      return false;
    }
    // [MQTT-3.1.2-25 (v5)] never send a packet larger than the client's Maximum Packet Size.
    if (bytes.length > this.clientMaximumPacketSize) return false;
    this.socket.write(bytes);
    return true;
  }

  sendPublish(message: OutboundMessage, packetId: number | undefined, dup: boolean): SendResult {
    if (this.state !== 'connected' || this.socket.destroyed) return 'busy';
    if (message.qos === 0 && this.socket.writableLength > QOS0_HIGH_WATER_BYTES) return 'busy';
    let bytes: Buffer;
    try {
      bytes = mqttPacket.generate(
        {
          cmd: 'publish',
          topic: message.topic,
          payload: message.payload,
          qos: message.qos,
          retain: message.retain,
          dup,
          ...(packetId === undefined ? {} : { messageId: packetId }),
        },
        { protocolVersion: this.protocolVersion },
      );
    } catch (error) {
      this.broker.log.error({ err: error }, 'mqtt: cannot encode PUBLISH');
      return 'discarded';
    }
    if (bytes.length > this.clientMaximumPacketSize) return 'discarded';
    this.socket.write(bytes);
    this.broker.stats.messagesOut++;
    return 'sent';
  }

  /**
   * Flow control for inbound QoS 1: MQTT 5 clients were told the Receive Maximum and exceeding it is
   * their protocol error; MQTT 3.1.1 clients cannot be told, so reading pauses until acks catch up.
   */
  inboundSettled(): void {
    this.inboundInflight--;
    if (this.socket.isPaused() && this.inboundInflight < this.broker.limits.maxInflight) {
      this.socket.resume();
      this.#keepAliveTimer?.refresh();
    }
  }

  /**
   * Ends the connection for a reason: MQTT 5 clients get a DISCONNECT with the reason code first
   * (only after CONNACK [MQTT-3.14.0-1 (v5)]); MQTT 3.1.1 has no server DISCONNECT, so the
   * connection is simply closed.
   */
  disconnect(reasonCode: number, reasonString?: string): void {
    if (this.state === 'closed') return;
    if (this.protocolVersion === 5 && this.state === 'connected') {
      this.write({
        cmd: 'disconnect',
        reasonCode,
        ...(reasonString ? { properties: { reasonString } } : {}),
      });
    }
    this.#closeSocket();
  }

  /** A packet broke the protocol: refuse it with the reason code and close [MQTT-4.13.1-1]. */
  protocolViolation(reasonCode: number, detail: string): void {
    if (this.state === 'closed') return;
    this.broker.stats.protocolErrors++;
    this.broker.hooks.onViolation?.({
      remoteAddress: this.remoteAddress,
      identity: this.identity,
      what: 'protocol-error',
    });
    this.broker.log.debug({ clientId: this.clientId || undefined, reasonCode, detail }, 'mqtt: protocol violation');
    this.disconnect(reasonCode);
  }

  /** An unexpected failure while serving this client: logged, and the connection ends (0x83). */
  internalError(error: unknown): void {
    this.broker.log.error({ err: error, clientId: this.clientId || undefined }, 'mqtt: internal error');
    this.disconnect(ReasonCode.ImplementationSpecificError);
  }

  destroy(): void {
    this.#closeSocket();
  }

  #closeSocket(): void {
    if (this.state === 'closed') return;
    const wasConnected = this.state === 'connected';
    this.state = 'closed';
    clearTimeout(this.#connectTimer);
    clearTimeout(this.#keepAliveTimer);
    // end() flushes what is written (e.g. a DISCONNECT); destroy after a grace period regardless.
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 1000).unref();
    this.broker.connectionClosed(this, wasConnected);
  }

  #onClose(): void {
    if (this.state !== 'closed') this.#closeSocket();
  }
}
