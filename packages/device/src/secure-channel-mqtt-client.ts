// The device SDK's MQTT client for devices without TLS (CHAN-3, CHAN-4; docs/protocol.md "Secure
// channel", "Over MQTT"): plain TCP to the platform's secure-channel listener, MQTT 5 only. The CONNECT
// carries Authentication Method `castellan-sc-v1` with a fresh 120-byte hello as Authentication Data;
// the CONNACK's reply is checked against the pinned platform public key (completeHandshake), and from
// then on every PUBLISH payload is a sealed frame both ways. The same API as DeviceClient for telemetry,
// commands and the shadow.
//
// mqtt.js speaks MQTT; a per-connection stream between it and the socket (SecureChannelStream, built
// with mqtt-packet) adds the hello to each CONNECT, completes the handshake on the CONNACK, seals
// outgoing PUBLISH payloads and opens incoming ones. A reconnect is a new socket, a new stream and a
// new handshake; a message mqtt.js resends is sealed again with the new session.
import net from 'node:net';
import { Duplex } from 'node:stream';
import {
  completeHandshake,
  createHello,
  deviceTopic,
  isDeviceId,
  SECURE_CHANNEL_MAX_PLAINTEXT,
  SecureChannelError,
  type SecureChannelSession,
  type SessionOptions,
  type SuiteName,
} from '@castellan/protocol';
import { type IClientOptions, MqttClient, type Packet } from 'mqtt';
import mqttPacket from 'mqtt-packet';
import { DeviceConnectError } from './device-client.ts';
import {
  type BuiltinCommandHooks,
  type CommandHandler,
  DeviceCommands,
  useBuiltinCommands,
} from './device-commands.ts';
import { type DesiredHandler, DeviceShadow, type ShadowState, type ShadowSyncResult } from './device-shadow.ts';

/** The MQTT 5 Authentication Method of the secure channel. */
export const SECURE_CHANNEL_MQTT_METHOD = 'castellan-sc-v1';

const PAYLOAD_FORMAT_INVALID = 0x99;

export interface SecureChannelMqttClientOptions {
  /** mqtt://host:port of the platform's secure-channel listener (plain TCP). */
  url: string;
  deviceId: string;
  /** The device secret: both sides derive the channel's psk from it; it never travels. */
  secret: string;
  /**
   * The platform's static public key for `suite` (65-byte uncompressed point, hex or bytes), pinned:
   * a reply that does not prove it is refused (GET /v1/device-api/secure-channel/keys publishes it).
   */
  platformPublicKey: string | Uint8Array;
  /** 'intl' (P-256, AES-128-GCM; default) or 'sm' (SM2 curve, SM4-GCM). */
  suite?: SuiteName;
  /**
   * Key rotation and tolerances; rotateAfterFrames / rotateAfterMs must not exceed the platform's
   * (secureChannel.rotateAfterFrames / rotateAfterMinutes), whose receiver refuses longer epochs.
   */
  sessionOptions?: SessionOptions;
  keepaliveSeconds?: number;
  connectTimeoutMs?: number;
}

interface Handshake {
  suite: SuiteName;
  deviceId: string;
  secret: string;
  platformPublicKey: Buffer;
  sessionOptions: SessionOptions | undefined;
  /** A frame from the platform was refused (counted by reason). */
  refused(reason: string): void;
  /** The stream's session, once the CONNACK was checked. */
  established(session: SecureChannelSession): void;
}

/**
 * Between mqtt.js (its writable side takes what mqtt.js sends, its readable side gives what mqtt.js
 * reads) and the socket; one per connection.
 */
class SecureChannelStream extends Duplex {
  readonly #socket: net.Socket;
  readonly #h: Handshake;
  readonly #outbound = mqttPacket.parser({ protocolVersion: 5 });
  readonly #inbound = mqttPacket.parser({ protocolVersion: 5 });
  #hello: ReturnType<typeof createHello> | undefined;
  #session: SecureChannelSession | undefined;

  constructor(socket: net.Socket, handshake: Handshake) {
    super();
    this.#socket = socket;
    this.#h = handshake;
    this.#outbound.on('packet', (packet: Packet) => this.#send(packet));
    this.#outbound.on('error', (error: Error) => this.destroy(error));
    this.#inbound.on('packet', (packet: Packet) => this.#receive(packet));
    this.#inbound.on('error', (error: Error) => this.destroy(error));
    socket.on('data', (chunk: Buffer) => {
      if (!this.destroyed) this.#inbound.parse(chunk);
    });
    socket.on('end', () => this.push(null));
    socket.on('error', (error) => this.destroy(error));
    socket.on('close', () => this.destroy());
  }

  #write(packet: Packet): void {
    this.#socket.write(mqttPacket.generate(packet, { protocolVersion: 5 }));
  }

  /** A packet from mqtt.js to the platform. */
  #send(packet: Packet): void {
    if (packet.cmd === 'connect') {
      // A fresh hello on every connection: the platform accepts each one once.
      const hello = createHello({ suite: this.#h.suite, deviceId: this.#h.deviceId, secret: this.#h.secret });
      this.#hello = hello;
      packet.properties = {
        ...packet.properties,
        authenticationMethod: SECURE_CHANNEL_MQTT_METHOD,
        authenticationData: hello.hello,
      };
    } else if (packet.cmd === 'publish') {
      if (this.#session === undefined) {
        this.destroy(new DeviceConnectError('ERR_SECURE_CHANNEL', 'PUBLISH before the secure channel was set up'));
        return;
      }
      const payload = typeof packet.payload === 'string' ? Buffer.from(packet.payload) : packet.payload;
      packet.payload = this.#session.seal(payload);
    }
    this.#write(packet);
  }

  /** A packet from the platform to mqtt.js. */
  #receive(packet: Packet): void {
    if (packet.cmd === 'connack' && packet.reasonCode === 0) {
      const data = packet.properties?.authenticationData;
      if (packet.properties?.authenticationMethod !== SECURE_CHANNEL_MQTT_METHOD || !data || !this.#hello) {
        this.destroy(
          new DeviceConnectError('ERR_SECURE_CHANNEL_HANDSHAKE', 'the CONNACK carries no secure-channel reply'),
        );
        return;
      }
      try {
        this.#session = completeHandshake({
          suite: this.#h.suite,
          deviceId: this.#h.deviceId,
          secret: this.#h.secret,
          hello: this.#hello.hello,
          ephemeral: this.#hello.ephemeral,
          reply: data,
          platformPublicKey: this.#h.platformPublicKey,
          ...(this.#h.sessionOptions ? { options: this.#h.sessionOptions } : {}),
        });
      } catch (error) {
        const reason = error instanceof SecureChannelError ? error.reason : 'malformed';
        // Not the pinned platform (or not this device's secret): nothing more is said to it.
        this.destroy(
          new DeviceConnectError('ERR_SECURE_CHANNEL_HANDSHAKE', `the platform's reply was refused: ${reason}`),
        );
        return;
      }
      this.#hello = undefined;
      this.#h.established(this.#session);
    } else if (packet.cmd === 'publish') {
      const frame = typeof packet.payload === 'string' ? Buffer.from(packet.payload) : packet.payload;
      let plaintext: Buffer;
      try {
        if (this.#session === undefined) throw new SecureChannelError('malformed', 'no session');
        plaintext = this.#session.open(frame);
      } catch (error) {
        // Refused frames never reach mqtt.js; QoS 1/2 are answered 0x99 here, as the platform does.
        this.#h.refused(error instanceof SecureChannelError ? error.reason : 'malformed');
        if (packet.qos === 1)
          this.#write({ cmd: 'puback', messageId: packet.messageId!, reasonCode: PAYLOAD_FORMAT_INVALID });
        else if (packet.qos === 2) {
          this.#write({ cmd: 'pubrec', messageId: packet.messageId!, reasonCode: PAYLOAD_FORMAT_INVALID });
        }
        return;
      }
      packet.payload = plaintext;
    }
    if (!this.push(mqttPacket.generate(packet, { protocolVersion: 5 }))) this.#socket.pause();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    try {
      this.#outbound.parse(chunk);
      callback();
    } catch (error) {
      callback(error as Error);
    }
  }

  override _read(): void {
    this.#socket.resume();
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.#socket.end();
    callback();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.#socket.destroy();
    callback(error);
  }
}

function publicKeyBytes(key: string | Uint8Array): Buffer {
  const bytes = typeof key === 'string' ? Buffer.from(key, 'hex') : Buffer.from(key);
  if (bytes.length !== 65 || bytes[0] !== 0x04) {
    throw new DeviceConnectError('ERR_SECURE_CHANNEL_KEY', 'platformPublicKey is a 65-byte point 04 ‖ X ‖ Y');
  }
  return bytes;
}

/** Errors after the connect are reported through 'close' (and publish callbacks); never thrown. */
function ignoreError(): void {}

export class SecureChannelMqttClient {
  readonly deviceId: string;
  readonly mqtt: MqttClient;
  /** Frames from the platform this client refused, by reason (replayed, forged, stale…). */
  readonly refusals: Map<string, number>;
  readonly #link: { session: SecureChannelSession | undefined };
  #commands: DeviceCommands | undefined;
  #shadow: DeviceShadow | undefined;

  private constructor(
    deviceId: string,
    client: MqttClient,
    refusals: Map<string, number>,
    link: { session: SecureChannelSession | undefined },
  ) {
    this.deviceId = deviceId;
    this.mqtt = client;
    this.refusals = refusals;
    this.#link = link;
  }

  /** The current connection's session (its epochs show the key rotation); undefined before CONNACK. */
  get session(): SecureChannelSession | undefined {
    return this.#link.session;
  }

  static async connect(options: SecureChannelMqttClientOptions): Promise<SecureChannelMqttClient> {
    if (!isDeviceId(options.deviceId)) {
      throw new DeviceConnectError('ERR_DEVICE_ID_INVALID', 'device ID must be 24 lower-case hex digits');
    }
    const url = new URL(options.url);
    if (url.protocol !== 'mqtt:') {
      // The channel protects the payloads; TLS devices use DeviceClient (mqtts://).
      throw new DeviceConnectError('ERR_SECURE_CHANNEL_URL', 'the secure channel runs over mqtt:// (plain TCP)');
    }
    const platformPublicKey = publicKeyBytes(options.platformPublicKey);
    const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
    const port = Number(url.port || 1884);
    // Shared with every connection's stream: a reconnect's new session replaces the old one.
    const link: { session: SecureChannelSession | undefined } = { session: undefined };
    const refusals = new Map<string, number>();
    const handshake: Handshake = {
      suite: options.suite ?? 'intl',
      deviceId: options.deviceId,
      secret: options.secret,
      platformPublicKey,
      sessionOptions: options.sessionOptions,
      refused: (reason) => refusals.set(reason, (refusals.get(reason) ?? 0) + 1),
      established: (session) => {
        link.session = session;
      },
    };
    let streamError: Error | undefined;
    const clientOptions: IClientOptions = {
      protocolVersion: 5,
      clientId: options.deviceId,
      username: options.deviceId,
      keepalive: options.keepaliveSeconds ?? 60,
      clean: true,
      reconnectPeriod: 0,
      connectTimeout: options.connectTimeoutMs ?? 10_000,
    };
    const client = new MqttClient(() => {
      const stream = new SecureChannelStream(net.connect({ host, port }), handshake);
      stream.once('error', (error) => {
        streamError = error;
      });
      return stream;
    }, clientOptions);
    await new Promise<void>((resolve, reject) => {
      let connack: Packet | undefined;
      const onPacket = (packet: Packet) => {
        if (packet.cmd === 'connack') connack = packet;
      };
      const fail = (error: Error) => {
        client.off('packetreceive', onPacket);
        client.end(true);
        if (streamError instanceof DeviceConnectError) return reject(streamError);
        const code = (error as { code?: number | string }).code;
        const reasonCode = connack?.cmd === 'connack' ? connack.reasonCode : undefined;
        reject(
          typeof code === 'number' || reasonCode !== undefined
            ? new DeviceConnectError(`MQTT_CONNACK_${typeof code === 'number' ? code : reasonCode}`, error.message)
            : new DeviceConnectError('ERR_DEVICE_CONNECT', error.message, { retryable: true }),
        );
      };
      const onClose = () => fail(streamError ?? new Error('connection closed before CONNACK'));
      client.on('packetreceive', onPacket);
      client.once('error', fail);
      client.once('close', onClose);
      client.once('connect', () => {
        client.off('error', fail);
        client.off('close', onClose);
        client.off('packetreceive', onPacket);
        client.on('error', ignoreError);
        resolve();
      });
    });
    return new SecureChannelMqttClient(options.deviceId, client, refusals, link);
  }

  /** Publishes a telemetry object at QoS 1; resolves when the platform acknowledged (stored) it. */
  publishTelemetry(values: Record<string, unknown>): Promise<void> {
    return this.publish(deviceTopic.telemetry(this.deviceId), JSON.stringify(values), 1);
  }

  /** Publishes `payload` sealed in a frame; rejects with the PUBACK's reason code when refused. */
  publish(topic: string, payload: string | Buffer, qos: 0 | 1): Promise<void> {
    const bytes = typeof payload === 'string' ? Buffer.from(payload, 'utf8') : payload;
    if (bytes.length > SECURE_CHANNEL_MAX_PLAINTEXT) {
      return Promise.reject(
        new DeviceConnectError(
          'ERR_SECURE_CHANNEL_TOO_LARGE',
          `a frame holds at most ${SECURE_CHANNEL_MAX_PLAINTEXT} bytes`,
        ),
      );
    }
    return new Promise((resolve, reject) => {
      this.mqtt.publish(topic, bytes, { qos }, (error, packet) => {
        if (error) return reject(error);
        const reasonCode = (packet as { reasonCode?: number } | undefined)?.reasonCode;
        if (reasonCode !== undefined && reasonCode >= 0x80) {
          return reject(
            new DeviceConnectError(
              `MQTT_PUBACK_${reasonCode}`,
              `publish refused with reason code 0x${reasonCode.toString(16)}`,
            ),
          );
        }
        resolve();
      });
    });
  }

  /** Commands from the platform (CHAN-7): created on first use. */
  get commands(): DeviceCommands {
    this.#commands ??= new DeviceCommands(this);
    return this.#commands;
  }

  /** The device's shadow (CHAN-7): created on first use. */
  get shadow(): DeviceShadow {
    this.#shadow ??= new DeviceShadow(this);
    return this.#shadow;
  }

  /** Handles commands named `name` ('*': any other name); the SDK acknowledges with the result. */
  onCommand(name: string, handler: CommandHandler): Promise<void> {
    return this.commands.on(name, handler);
  }

  /** reboot, factory-reset and wipe (DEV-9) as a simulator handles them. */
  useBuiltinCommands(hooks: BuiltinCommandHooks = {}): Promise<void> {
    return useBuiltinCommands(this, hooks);
  }

  /** Reports state (the shadow's `reported`); resolves once the platform has taken it. */
  reportState(state: ShadowState): Promise<void> {
    return this.shadow.report(state);
  }

  /** Applies desired state as it changes (then reports it back). */
  onDesired(handler: DesiredHandler): Promise<void> {
    return this.shadow.onDesired(handler);
  }

  /** Fetches the latest desired state (retained), applies what differs and reports it back. */
  syncShadow(options: { settleMs?: number } = {}): Promise<ShadowSyncResult> {
    return this.shadow.sync(options);
  }

  /**
   * Drops the connection and connects again with a new handshake (a simulated reboot). Resolves once
   * connected and the command and shadow subscriptions are confirmed.
   */
  async restart(): Promise<void> {
    const client = this.mqtt;
    await new Promise<void>((resolve, reject) => {
      client.end(true, {}, () => {
        const onConnect = () => {
          client.off('error', onError);
          resolve();
        };
        const onError = (error: Error) => {
          client.off('connect', onConnect);
          reject(error);
        };
        client.once('connect', onConnect);
        client.once('error', onError);
        client.reconnect();
      });
    });
    await this.#commands?.renew();
    await this.#shadow?.renew();
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.mqtt.end(false, {}, () => resolve()));
  }
}
