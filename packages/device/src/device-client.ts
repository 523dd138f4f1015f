// The device SDK's MQTT client: connects over TLS with the device's own ID and secret (or a client
// certificate, or a device token), pins the platform's CA, reports telemetry (QoS 1: resolves once
// the platform has stored it). With `reconnect`,
// it retries a refused or failed connect and re-establishes a lost connection, waiting out the
// platform's `retry-after` and otherwise backing off exponentially with full jitter, so a fleet cut
// off at once does not come back at once (docs/protocol.md, Admission control).
import { isIP, type Socket } from 'node:net';
import type { ConnectionOptions, TLSSocket } from 'node:tls';
import { deviceTopic, isDeviceId } from '@castellan/protocol';
import mqtt, { type IClientOptions, type MqttClient, type Packet } from 'mqtt';
import {
  type BuiltinCommandHooks,
  type CommandHandler,
  DeviceCommands,
  useBuiltinCommands,
} from './device-commands.ts';
import { type DesiredHandler, DeviceShadow, type ShadowState, type ShadowSyncResult } from './device-shadow.ts';
import { type PostureInput, type PostureReportMessage, reportPosture } from './device-posture.ts';

export interface DeviceReconnectOptions {
  /** Backoff ceiling after the first failure, ms; doubles with each failure in a row (default 1000). */
  initialDelayMs?: number;
  /** Largest backoff ceiling, ms (default 120000). A server's `retry-after` may ask for longer. */
  maxDelayMs?: number;
  /** Connection attempts in a row that may fail before the client gives up (default: unlimited). */
  maxAttempts?: number;
  /** Called once when reconnecting a lost connection stops: a permanent refusal, or maxAttempts. */
  onGiveUp?: (error: DeviceConnectError) => void;
}

export interface DeviceClientOptions {
  /** mqtts://host:port */
  url: string;
  deviceId: string;
  /**
   * How the device proves who it is, exactly one of: `secret` (DEV-3); `cert` + `key` (PEM, mutual TLS
   * with a certificate of the vendor's device CA, P-256 or RSA: DEV-5); `token` (a device token,
   * `cas_dvt_…`, from the HTTPS challenge-response, e.g. signed with an SM2 key: DEV-5/DEV-6).
   */
  secret?: string;
  /** Client certificate (PEM) for mutual TLS; with `key`. */
  cert?: string | Buffer;
  /** The certificate's private key (PEM); never sent anywhere. */
  key?: string | Buffer;
  /** A device token presented as the MQTT password. */
  token?: string;
  /**
   * PEM CA certificate of the platform (pinned: no system trust store). Several pins (the current CA
   * and its successor, shipped ahead of a rollover) are accepted as an array: any of them may anchor.
   */
  ca: string | Buffer | ReadonlyArray<string | Buffer>;
  protocolVersion?: 4 | 5;
  keepaliveSeconds?: number;
  connectTimeoutMs?: number;
  /** SNI / certificate name to check; defaults to the URL's host. */
  servername?: string;
  /**
   * Retry a connect that failed for a transient reason and re-establish a lost connection (default:
   * off, connect() rejects on the first failure and a lost connection stays closed).
   */
  reconnect?: boolean | DeviceReconnectOptions;
}

/** CONNACK codes that say "later": MQTT 5 0x88, 0x89, 0x9F; MQTT 3.1.1 0x03 Server unavailable. */
const RETRYABLE_CONNACK: Readonly<Record<4 | 5, ReadonlySet<number>>> = {
  4: new Set([0x03]),
  5: new Set([0x88, 0x89, 0x9f]),
};

export class DeviceConnectError extends Error {
  readonly code: string;
  /** The platform's `retry-after` (MQTT 5 CONNACK User Property) in ms, when it gave one. */
  readonly retryAfterMs: number | null;
  /**
   * Worth trying again later: a network or TLS failure, or a CONNACK saying the server is busy,
   * unavailable or rate-limiting. Refused credentials, bans and the like are not.
   */
  readonly retryable: boolean;
  constructor(code: string, message: string, details: { retryAfterMs?: number | null; retryable?: boolean } = {}) {
    super(message);
    this.name = 'DeviceConnectError';
    this.code = code;
    this.retryAfterMs = details.retryAfterMs ?? null;
    this.retryable = details.retryable ?? false;
  }
}

/** The `retry-after` User Property of a CONNACK, in ms (decimal seconds; absent or malformed: null). */
function retryAfterOf(connack: Packet | undefined): number | null {
  if (connack?.cmd !== 'connack') return null;
  const value = connack.properties?.userProperties?.['retry-after'];
  const text = Array.isArray(value) ? value[0] : value;
  if (text === undefined || !/^\d{1,6}$/.test(text)) return null;
  return Number(text) * 1000;
}

/**
 * How long to wait before attempt `failures + 1`, after `failures` (≥ 1) failures in a row:
 * exponential backoff with full jitter (uniform in [0, min(max, initial·2^(failures-1))]), and never
 * less than the server's `retry-after`.
 */
export function reconnectDelayMs(
  failures: number,
  retryAfterMs: number | null,
  options: Pick<DeviceReconnectOptions, 'initialDelayMs' | 'maxDelayMs'> = {},
  random: () => number = Math.random,
): number {
  const initial = options.initialDelayMs ?? 1000;
  const max = options.maxDelayMs ?? 120_000;
  const ceiling = Math.min(max, initial * 2 ** Math.min(Math.max(failures - 1, 0), 30));
  return Math.max(Math.floor(random() * ceiling), retryAfterMs ?? 0);
}

/**
 * OpenSSL's names of the groups (lower-cased: a resumed TLS 1.2 session reports e.g. 'x25519') → their
 * TLS names.
 */
const OPENSSL_CURVE_TO_TLS_GROUP: Readonly<Record<string, string>> = {
  prime256v1: 'P-256',
  secp256r1: 'P-256',
  'p-256': 'P-256',
  secp384r1: 'P-384',
  'p-384': 'P-384',
  secp521r1: 'P-521',
  'p-521': 'P-521',
  x25519: 'X25519',
  x448: 'X448',
  x25519mlkem768: 'X25519MLKEM768',
  secp256r1mlkem768: 'SecP256r1MLKEM768',
  secp384r1mlkem1024: 'SecP384r1MLKEM1024',
};

/** Errors after the connect are reported through 'close' (and publish callbacks); never thrown. */
function ignoreError(): void {}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Turns what mqtt.js reported into a DeviceConnectError, with the CONNACK's advice if there was one. */
function connectError(error: Error, protocolVersion: 4 | 5, connack: Packet | undefined): DeviceConnectError {
  const code = (error as { code?: number | string }).code;
  if (typeof code === 'number') {
    return new DeviceConnectError(`MQTT_CONNACK_${code}`, error.message, {
      retryAfterMs: retryAfterOf(connack),
      retryable: RETRYABLE_CONNACK[protocolVersion].has(code),
    });
  }
  return new DeviceConnectError('ERR_DEVICE_CONNECT', error.message, { retryable: true });
}

export class DeviceClient {
  readonly deviceId: string;
  readonly mqtt: MqttClient;
  #closing = false;
  #reconnectTimer: NodeJS.Timeout | undefined;

  private constructor(deviceId: string, client: MqttClient, reconnect: DeviceReconnectOptions | null) {
    this.deviceId = deviceId;
    this.mqtt = client;
    if (reconnect) this.#keepConnected(reconnect, (client.options.protocolVersion ?? 5) === 4 ? 4 : 5);
  }

  static async connect(options: DeviceClientOptions): Promise<DeviceClient> {
    if (!isDeviceId(options.deviceId)) {
      throw new DeviceConnectError('ERR_DEVICE_ID_INVALID', 'device ID must be 24 lower-case hex digits');
    }
    const credentials = [options.secret, options.cert ?? options.key, options.token].filter((c) => c !== undefined);
    if (credentials.length !== 1 || (options.cert === undefined) !== (options.key === undefined)) {
      throw new DeviceConnectError('ERR_DEVICE_CREDENTIALS', 'give exactly one of: secret, cert with key, token');
    }
    const url = new URL(options.url);
    if (url.protocol !== 'mqtts:') {
      throw new DeviceConnectError('ERR_DEVICE_INSECURE_URL', 'only mqtts:// (MQTT over TLS) is allowed');
    }
    const reconnect = options.reconnect === true ? {} : options.reconnect || null;
    for (let failures = 0; ;) {
      try {
        return new DeviceClient(options.deviceId, await DeviceClient.#attempt(options, url), reconnect);
      } catch (error) {
        const failure = error as DeviceConnectError;
        failures++;
        if (!reconnect || !failure.retryable || failures >= (reconnect.maxAttempts ?? Infinity)) throw failure;
        await sleep(reconnectDelayMs(failures, failure.retryAfterMs, reconnect));
      }
    }
  }

  /** One connection attempt; resolves with the connected client, rejects with a DeviceConnectError. */
  static #attempt(options: DeviceClientOptions, url: URL): Promise<MqttClient> {
    const tlsOptions: ConnectionOptions = {
      ca: typeof options.ca === 'string' || Buffer.isBuffer(options.ca) ? options.ca : [...options.ca],
      ...(options.cert !== undefined && options.key !== undefined ? { cert: options.cert, key: options.key } : {}),
      rejectUnauthorized: true,
      minVersion: 'TLSv1.2',
      ...(options.servername
        ? { servername: options.servername }
        : isIP(url.hostname)
          ? {}
          : { servername: url.hostname }),
    };
    const protocolVersion = options.protocolVersion ?? 5;
    const clientOptions: IClientOptions = {
      ...(tlsOptions as IClientOptions),
      clientId: options.deviceId,
      username: options.deviceId,
      // Mutual TLS: the certificate is the credential, no password is sent.
      ...(options.secret !== undefined || options.token !== undefined
        ? { password: options.secret ?? options.token }
        : {}),
      protocolVersion,
      keepalive: options.keepaliveSeconds ?? 60,
      clean: true,
      // mqtt.js's own reconnect waits a fixed period; ours backs off (#keepConnected).
      reconnectPeriod: 0,
      connectTimeout: options.connectTimeoutMs ?? 10_000,
    };
    return new Promise((resolve, reject) => {
      const client = mqtt.connect(options.url, clientOptions);
      let connack: Packet | undefined;
      const onPacket = (packet: Packet) => {
        if (packet.cmd === 'connack') connack = packet;
      };
      client.on('packetreceive', onPacket);
      const fail = (error: Error) => {
        client.end(true);
        reject(connectError(error, protocolVersion, connack));
      };
      const onClose = () => fail(new Error('connection closed before CONNACK'));
      client.once('error', fail);
      client.once('close', onClose);
      // Every connection of this client (reconnects too) writes without Nagle's delay: a command's PUBACK
      // and its acknowledgement PUBLISH go out back to back, and with Nagle the second waited for the
      // broker's delayed ACK (~40 ms on Linux; bench command-rtt p50 was 49 ms at 100 commands/s).
      client.on('connect', () => (client.stream as Partial<Socket> | undefined)?.setNoDelay?.(true));
      client.once('connect', () => {
        // Only our own listeners: mqtt.js keeps its state (`connected`) with a 'close' listener of its own.
        client.off('error', fail);
        client.off('close', onClose);
        client.off('packetreceive', onPacket);
        client.on('error', ignoreError);
        resolve(client);
      });
    });
  }

  /**
   * Re-establishes a lost connection on the same MqttClient (so `mqtt` stays valid), each attempt
   * after reconnectDelayMs; stops on a refusal that is not retryable, after maxAttempts, or close().
   */
  #keepConnected(options: DeviceReconnectOptions, protocolVersion: 4 | 5): void {
    const client = this.mqtt;
    let failures = 0;
    let lastError: Error | undefined;
    let connack: Packet | undefined;
    client.off('error', ignoreError);
    client.on('error', (error: Error) => {
      lastError = error;
    });
    client.on('packetreceive', (packet: Packet) => {
      if (packet.cmd === 'connack') connack = packet;
    });
    client.on('connect', () => {
      failures = 0;
    });
    client.on('close', () => {
      // Ended on purpose (close(), or mqtt.end() called directly): nothing to re-establish.
      if (this.#closing || client.disconnecting || this.#reconnectTimer) return;
      const failure = connectError(lastError ?? new Error('connection lost'), protocolVersion, connack);
      lastError = undefined;
      connack = undefined;
      failures++;
      if (!failure.retryable || failures >= (options.maxAttempts ?? Infinity) + 1) {
        this.#closing = true;
        client.end(true);
        options.onGiveUp?.(failure);
        return;
      }
      this.#reconnectTimer = setTimeout(
        () => {
          this.#reconnectTimer = undefined;
          if (!this.#closing) client.reconnect();
        },
        reconnectDelayMs(failures, failure.retryAfterMs, options),
      );
    });
  }

  /**
   * The key-exchange group the current TLS connection negotiated (CHAN-8), as TLS names it
   * ('X25519MLKEM768', 'X25519', 'P-256', …; after a TLS 1.2 resumption, the group of the resumed
   * session); null when not connected. Only the client can tell: Node gives a server no way to read it.
   */
  get negotiatedGroup(): string | null {
    const stream = this.mqtt.stream as Partial<TLSSocket> | undefined;
    if (!this.mqtt.connected || typeof stream?.getEphemeralKeyInfo !== 'function') return null;
    const info = stream.getEphemeralKeyInfo() as { type?: string; name?: string } | null;
    if (!info?.name) return null;
    return OPENSSL_CURVE_TO_TLS_GROUP[info.name.toLowerCase()] ?? info.name;
  }

  /** Publishes a telemetry object at QoS 1; resolves when the platform acknowledged (stored) it. */
  publishTelemetry(values: Record<string, unknown>): Promise<void> {
    return this.publish(deviceTopic.telemetry(this.deviceId), JSON.stringify(values), 1);
  }

  publish(topic: string, payload: string | Buffer, qos: 0 | 1): Promise<void> {
    return new Promise((resolve, reject) => {
      this.mqtt.publish(topic, payload, { qos }, (error, packet) => {
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

  #commands: DeviceCommands | undefined;
  #shadow: DeviceShadow | undefined;

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

  /** Reports firmware version, security level and core-file digests (DEV-10); resolves once checked. */
  reportPosture(input: PostureInput): Promise<PostureReportMessage> {
    return reportPosture(this, input);
  }

  /**
   * Drops the connection and connects again (a simulated reboot). Resolves once connected again and
   * the command and shadow subscriptions are confirmed (nothing sent meanwhile is missed after that).
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
    this.#closing = true;
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = undefined;
    return new Promise((resolve) => this.mqtt.end(false, {}, () => resolve()));
  }
}
