// One network connection speaking MQTT 3.1.1 or 5.0. It frames bytes into packets with mqtt-packet,
// enforces the size limit and the packet order, and dispatches each packet to its handler. Nothing here
// decides security: the handlers ask the broker's hooks.
import type { Duplex } from 'node:stream';
import mqttPacket, { type Packet } from 'mqtt-packet';
import type { ClientIdentity, DisconnectionInfo, ProtocolVersion } from './broker-hooks.ts';
import type { MessageProperties } from './broker-store.ts';
import { packetHandlers } from './handlers/index.ts';
import type { ListenerProfile, PayloadCodec } from './listener-profile.ts';
import type { MqttBroker } from './mqtt-broker.ts';
import { LENGTH_MALFORMED, LENGTH_UNKNOWN, PacketFramer } from './packet-framer.ts';
import { readConnectProtocol, validatePacket } from './packet-validator.ts';
import { ReasonCode } from './reason-codes.ts';
import {
  encodePublish,
  readPublishUserProperties,
  rememberUserPropertyOrder,
  userPropertiesNeedOrder,
} from './publish-codec.ts';
import type { DeliverySink, OutboundMessage, SendResult, Session } from './session.ts';

/** Bytes buffered for a slow reader beyond which QoS 0 messages to it are dropped. */
const QOS0_HIGH_WATER_BYTES = 1 << 20;
/** The last PUBLISH encoded without a packet identifier: routing sends one message to many clients in a row. */
const lastEncoded: { message: OutboundMessage | null; version: ProtocolVersion; bytes: Buffer } = {
  message: null,
  version: 4,
  bytes: Buffer.alloc(0),
};

/** First byte of the acknowledgements (PUBREL has the reserved flags 0010 [MQTT-3.6.1-1]). */
const ACK_HEADERS = { puback: 0x40, pubrec: 0x50, pubrel: 0x62, pubcomp: 0x70 } as const;

/** Packets a client may pipeline behind CONNECT before its CONNACK is sent. */
const MAX_PIPELINED_BEFORE_CONNACK = 64;

export type ConnectionState = 'new' | 'authenticating' | 'connected' | 'closed';

export interface PendingWill {
  topic: string;
  payload: Buffer;
  qos: 0 | 1 | 2;
  retain: boolean;
  properties: MessageProperties | undefined;
  /** Message Expiry Interval of the will (seconds), counted from when it is published; null = none. */
  expirySeconds: number | null;
  delaySeconds: number;
}

export type CloseReason = DisconnectionInfo['reason'];

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
  /** Inbound QoS 1 and 2 messages whose PUBACK / PUBREC has not been sent yet. */
  inboundInflight = 0;
  /** Of those, QoS 2 ones (also counted in the session's inboundQos2). */
  inboundQos2InPipeline = 0;
  /** Inbound PUBLISH packets still waiting (hook, store flush) for their turn to be acknowledged. */
  pendingPublishes = 0;
  /** Settles in arrival order so acknowledgements and routing keep the client's order [MQTT-4.6.0-2]. */
  publishTail: Promise<unknown> = Promise.resolve();
  /** Inbound topic aliases (MQTT 5 3.3.2.3.4): alias → topic name, for this connection only. */
  topicAliases: Map<number, string> | undefined;
  /** Why the connection ended, for the presence hook; the first reason given wins. */
  closeReason: CloseReason | undefined;
  closeReasonCode: number | undefined;
  connectedAt = 0;
  /** Set when a newer connection took over this client ID: its close must not end the session. */
  takenOver = false;
  /** Set by a DISCONNECT that suppresses the will. */
  gracefulDisconnect = false;
  /** The listener's profile (the secure-channel listener's); undefined on the TLS listener. */
  readonly profile: ListenerProfile | undefined;
  /** The Authentication Method of a CONNECT accepted with enhanced authentication (MQTT 5 4.12). */
  authenticationMethod: string | undefined;
  /** Opens inbound and seals outbound PUBLISH payloads (the profile's, set at CONNACK). */
  payloadCodec: PayloadCodec | undefined;

  /** Decodes packets the validator accepted; it switches itself to MQTT 5 when it decodes a v5 CONNECT. */
  readonly #parser = mqttPacket.parser({ protocolVersion: 4 });
  /** Splits the byte stream into whole packets so each is validated before it is decoded. */
  readonly #framer = new PacketFramer();
  /** The protocol level the client's CONNECT declared; undefined until a CONNECT passed validation. */
  #declaredVersion: 4 | 5 | undefined;
  readonly #pipelined: Packet[] = [];
  /** Reading stopped while CONNECT is being decided and MAX_PIPELINED_BEFORE_CONNACK packets wait. */
  #inputHeld = false;
  #packetBytes: Buffer | undefined;
  #corked = false;
  readonly #uncork = (): void => {
    this.#corked = false;
    this.socket.uncork();
  };
  #connectTimer: NodeJS.Timeout | undefined;
  #keepAliveTimer: NodeJS.Timeout | undefined;

  constructor(broker: MqttBroker, socket: Duplex, remoteAddress: string, profile?: ListenerProfile) {
    this.broker = broker;
    this.socket = socket;
    this.remoteAddress = remoteAddress;
    this.profile = profile;
    // Keep the bytes of the packet being decoded (the parser gets one whole packet per call and emits
    // synchronously): MQTT 5 User Properties are re-read from them when their order matters.
    const parse = this.#parser.parse.bind(this.#parser);
    this.#parser.parse = (bytes: Buffer) => {
      this.#packetBytes = bytes;
      try {
        return parse(bytes);
      } finally {
        this.#packetBytes = undefined;
      }
    };
    this.#parser.on('packet', (packet) => this.#onPacket(packet));
    this.#parser.on('error', (error: Error) => this.protocolViolation(ReasonCode.MalformedPacket, error.message));
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('error', () => this.destroy('network'));
    socket.on('close', () => this.#onClose());
    // A connection that never sends CONNECT is closed after the configured time.
    this.#connectTimer = setTimeout(() => this.destroy(), broker.limits.connectTimeoutMs);
    this.#connectTimer.unref();
  }

  #onData(chunk: Buffer): void {
    if (this.state === 'closed') return;
    this.#keepAliveTimer?.refresh();
    this.#framer.push(chunk);
    this.#drainFramed();
  }

  #drainFramed(): void {
    const framer = this.#framer;
    // A handler may close the connection: then the rest of the bytes are not looked at. While input
    // is held (too many packets pipelined behind CONNECT), they wait in the framer.
    while (this.state !== 'closed' && !this.#inputHeld) {
      // Refuse an oversized packet as soon as its fixed header arrives, before buffering its body.
      // The size is the whole packet's, as the CONNACK's Maximum Packet Size counts it (v5 3.2.2.3.6).
      const length = framer.peekLength();
      if (length === LENGTH_UNKNOWN) return;
      if (length === LENGTH_MALFORMED) {
        framer.clear();
        this.protocolViolation(ReasonCode.MalformedPacket, '§2.1.4: Remaining Length uses more than four bytes');
        return;
      }
      if (length > this.broker.limits.maxPacketBytes) {
        framer.clear();
        this.broker.stats.packetsTooLarge++;
        this.protocolViolation(ReasonCode.PacketTooLarge, 'packet exceeds the maximum packet size');
        return;
      }
      const packet = framer.take();
      if (packet === null) return;
      // Strict checks mqtt-packet does not make (UTF-8, reserved bits, properties, trailing bytes...).
      const verdict = validatePacket(packet, this.#declaredVersion, this.authenticationMethod !== undefined);
      if (verdict !== null) {
        framer.clear();
        this.protocolViolation(verdict.reasonCode, `${verdict.rule}: ${verdict.detail}`);
        return;
      }
      if (this.#declaredVersion === undefined) {
        // The validator passes only a CONNECT here. mqtt-packet refuses protocol levels it does not
        // know as a parse error, so an unsupported level goes to the CONNECT handler directly, which
        // answers CONNACK 0x01 and closes [MQTT-3.1.2-2].
        const protocol = readConnectProtocol(packet)!;
        if (protocol.protocolId !== 'MQTT' || (protocol.level !== 4 && protocol.level !== 5)) {
          // Another protocol name (e.g. MQTT 3.1's "MQIsdp") is another protocol, whatever its level
          // [MQTT-3.1.2-1]: answered as an unsupported level, never processed as MQTT.
          const level = protocol.protocolId === 'MQTT' ? protocol.level : 3;
          this.#onPacket({ cmd: 'connect', protocolVersion: level, clientId: '' } as unknown as Packet);
          return;
        }
        this.#declaredVersion = protocol.level;
      }
      try {
        // Emits 'packet' (handled synchronously) or 'error' for this one packet.
        this.#parser.parse(packet);
      } catch (error) {
        this.protocolViolation(ReasonCode.MalformedPacket, (error as Error).message);
        return;
      }
    }
  }

  #onPacket(packet: Packet): void {
    if (this.state === 'closed') return;
    if (packet.cmd === 'publish' && this.#packetBytes !== undefined) {
      const userProperties = packet.properties?.userProperties;
      if (userProperties !== undefined && userPropertiesNeedOrder(userProperties)) {
        const list = readPublishUserProperties(this.#packetBytes);
        if (list) rememberUserPropertyOrder(packet, list);
      }
    }
    if (this.state === 'authenticating') {
      // [MQTT-3.1.4-5 (v5)] nothing after CONNECT is processed before a successful CONNACK.
      this.#pipelined.push(packet);
      if (this.#pipelined.length >= MAX_PIPELINED_BEFORE_CONNACK) {
        // Backpressure, not a refusal: stop reading until the CONNACK is decided (connected()).
        this.#inputHeld = true;
        this.socket.pause();
      }
      return;
    }
    if (this.state === 'new' && packet.cmd !== 'connect') {
      // [MQTT-3.1.0-1] the first packet must be CONNECT.
      this.destroy();
      return;
    }
    const handler = packetHandlers[packet.cmd];
    try {
      handler(this, packet as never);
    } catch (error) {
      // A bug in a handler or a hook costs this connection, never the process.
      this.internalError(error);
    }
  }

  /** Called by the CONNECT handler once the CONNACK has been sent. */
  connected(keepAliveSeconds: number): void {
    clearTimeout(this.#connectTimer);
    this.state = 'connected';
    this.connectedAt = Date.now();
    if (keepAliveSeconds > 0) {
      // [MQTT-3.1.2-24] close after one and a half keep-alive periods without a packet.
      this.#keepAliveTimer = setTimeout(() => {
        // While reading is paused for backpressure the silence is ours, not the client's.
        if (this.socket.isPaused()) {
          this.#keepAliveTimer?.refresh();
          return;
        }
        this.broker.stats.keepAliveTimeouts++;
        this.disconnect(ReasonCode.KeepAliveTimeout, undefined, 'keep-alive');
      }, keepAliveSeconds * 1500);
      this.#keepAliveTimer.unref();
    }
    const queued = this.#pipelined.splice(0);
    for (const packet of queued) this.#onPacket(packet);
    if (this.#inputHeld) {
      this.#inputHeld = false;
      this.socket.resume();
      this.#drainFramed();
    }
  }

  /**
   * Writes are corked until the end of the current tick: the acknowledgements and messages one read
   * produces leave in one system call (writev), not one each.
   */
  #output(bytes: Buffer): void {
    if (!this.#corked) {
      this.#corked = true;
      this.socket.cork();
      process.nextTick(this.#uncork);
    }
    this.socket.write(bytes);
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
    this.#output(bytes);
    return true;
  }

  /**
   * PUBACK, PUBREC, PUBREL or PUBCOMP without properties, encoded directly (one per QoS 1/2 message).
   * MQTT 5 omits a Success reason code (3.4.2.1, 3.5.2.1, 3.6.2.1, 3.7.2.1); 3.1.1 has none.
   */
  writeAck(cmd: 'puback' | 'pubrec' | 'pubrel' | 'pubcomp', packetId: number, reasonCode = 0): boolean {
    if (this.state === 'closed' || this.socket.destroyed) return false;
    const withCode = reasonCode !== 0 && this.protocolVersion === 5;
    const bytes = Buffer.allocUnsafe(withCode ? 5 : 4);
    bytes[0] = ACK_HEADERS[cmd];
    bytes[1] = withCode ? 3 : 2;
    bytes.writeUInt16BE(packetId, 2);
    if (withCode) bytes[4] = reasonCode;
    this.#output(bytes);
    return true;
  }

  sendPublish(message: OutboundMessage, packetId: number | undefined, dup: boolean): SendResult {
    if (this.state !== 'connected' || this.socket.destroyed) return 'busy';
    if (message.qos === 0 && this.socket.writableLength > QOS0_HIGH_WATER_BYTES) return 'busy';
    if (this.payloadCodec !== undefined) return this.#sendSealed(this.payloadCodec, message, packetId, dup);
    let bytes: Buffer;
    // The same QoS 0 message fanned out to many clients of one protocol version is encoded once.
    const shareable = packetId === undefined && message.expiresAt === null;
    if (shareable && lastEncoded.message === message && lastEncoded.version === this.protocolVersion) {
      bytes = lastEncoded.bytes;
    } else {
      const encoded = encodePublish(message, packetId, dup, this.protocolVersion, Date.now());
      if (encoded === null) {
        this.broker.log.error({ topic: message.topic }, 'mqtt: PUBLISH too large to encode');
        return 'discarded';
      }
      bytes = encoded;
      if (shareable) {
        lastEncoded.message = message;
        lastEncoded.version = this.protocolVersion;
        lastEncoded.bytes = bytes;
      }
    }
    if (bytes.length > this.clientMaximumPacketSize) return 'discarded';
    this.#output(bytes);
    this.broker.stats.messagesOut++;
    return 'sent';
  }

  /**
   * A PUBLISH to a secure-channel client: its payload sealed now, at delivery, so every frame gets this
   * connection's next sequence number (queued, resent and retained messages too). Never shared.
   */
  #sendSealed(codec: PayloadCodec, message: OutboundMessage, packetId: number | undefined, dup: boolean): SendResult {
    const sealed = codec.seal(message.payload);
    if (sealed === null) return 'discarded';
    // A frame is binary, whatever the plaintext was: a Payload Format Indicator of 1 would be false.
    const properties =
      message.properties?.payloadFormatIndicator === undefined
        ? message.properties
        : { ...message.properties, payloadFormatIndicator: undefined };
    const bytes = encodePublish({ ...message, payload: sealed, properties }, packetId, dup, 5, Date.now());
    if (bytes === null || bytes.length > this.clientMaximumPacketSize) return 'discarded';
    this.#output(bytes);
    this.broker.stats.messagesOut++;
    return 'sent';
  }

  sendPubrel(packetId: number): void {
    this.writeAck('pubrel', packetId);
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
  disconnect(reasonCode: number, reasonString?: string, why: CloseReason = 'server'): void {
    if (this.state === 'closed') return;
    this.#setCloseReason(why, reasonCode);
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
    this.broker.reportViolation({
      remoteAddress: this.remoteAddress,
      identity: this.identity,
      what: 'protocol-error',
    });
    this.broker.log.debug({ clientId: this.clientId || undefined, reasonCode, detail }, 'mqtt: protocol violation');
    this.disconnect(reasonCode, undefined, 'protocol-error');
  }

  /** An unexpected failure while serving this client: logged, and the connection ends (0x83). */
  internalError(error: unknown): void {
    this.broker.log.error({ err: error, clientId: this.clientId || undefined }, 'mqtt: internal error');
    this.disconnect(ReasonCode.ImplementationSpecificError);
  }

  #setCloseReason(why: CloseReason, reasonCode: number | undefined): void {
    if (this.closeReason !== undefined) return;
    this.closeReason = why;
    this.closeReasonCode = reasonCode;
  }

  /** Closes without a DISCONNECT; `why` is recorded for the presence hook unless a reason was already. */
  destroy(why: CloseReason = 'server', reasonCode?: number): void {
    if (this.state !== 'closed') this.#setCloseReason(why, reasonCode);
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
    if (this.state !== 'closed') this.destroy('network');
  }
}
