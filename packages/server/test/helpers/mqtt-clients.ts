// MQTT clients for tests: mqtt.js for well-formed sessions, a raw socket (plain TCP to a broker core,
// or TLS to a platform's listener) for hostile bytes. Light on purpose: broker-core tests import it
// without starting a platform.
import { once } from 'node:events';
import net from 'node:net';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import mqttPacket, { type IConnackPacket, type Packet } from 'mqtt-packet';
import type { Platform } from '../../src/platform.ts';

/**
 * An mqtt.js client (MQTT 5, clean start, keep alive 30 and no reconnects unless `options` say
 * otherwise). Resolves with the client and its CONNACK; rejects with mqtt.js's error on a refusal (its
 * numeric `code` is the CONNACK code) or when the connection closes before CONNACK. `onClient` sees
 * the client before any packet arrives, to listen from the first one.
 */
export function openMqttClient(
  url: string,
  options: Partial<IClientOptions> = {},
  onClient?: (client: MqttClient) => void,
): Promise<{ client: MqttClient; connack: IConnackPacket }> {
  return new Promise((resolve, reject) => {
    const client = mqtt.connect(url, {
      protocolVersion: 5,
      clean: true,
      keepalive: 30,
      reconnectPeriod: 0,
      connectTimeout: 5000,
      ...options,
    } as IClientOptions);
    onClient?.(client);
    client.once('connect', (connack: IConnackPacket) => {
      client.removeAllListeners('error');
      client.on('error', () => {});
      resolve({ client, connack });
    });
    client.once('error', (error) => {
      client.end(true);
      reject(error);
    });
    // A server that hangs up before CONNACK, with no error; once connected this settles nothing.
    client.once('close', () => reject(new Error('closed before CONNACK')));
  });
}

export interface MqttConnectOptions {
  username?: string;
  password?: string;
  clientId?: string;
  protocolVersion?: 4 | 5;
  keepalive?: number;
  clean?: boolean;
  properties?: IClientOptions['properties'];
  will?: IClientOptions['will'];
  /** Loopback source address (127.x.y.z) to appear as another client. */
  localAddress?: string;
}

export interface ConnectOutcome {
  client?: MqttClient;
  /** CONNACK return code (3.1.1) or reason code (5) when refused. */
  refusedWith?: number;
  error?: Error;
}

export function mqttConnect(
  platform: Pick<Platform, 'mqttUrl' | 'caPem'>,
  options: MqttConnectOptions,
): Promise<ConnectOutcome> {
  const url = platform.mqttUrl;
  const clientOptions = {
    clientId: options.clientId ?? options.username ?? '',
    username: options.username,
    password: options.password,
    protocolVersion: options.protocolVersion ?? 5,
    keepalive: options.keepalive ?? 30,
    clean: options.clean ?? true,
    reconnectPeriod: 0,
    connectTimeout: 5000,
    ca: platform.caPem,
    rejectUnauthorized: true,
    ...(options.properties ? { properties: options.properties } : {}),
    ...(options.will ? { will: options.will } : {}),
    ...(options.localAddress ? { localAddress: options.localAddress } : {}),
  } as IClientOptions;
  return openMqttClient(url, clientOptions).then(
    ({ client }) => ({ client }),
    (error: Error & { code?: number }) =>
      typeof error.code === 'number' ? { refusedWith: error.code, error } : { error },
  );
}

export async function connectDevice(
  platform: Platform,
  device: { id: string; secret: string },
  protocolVersion: 4 | 5 = 5,
) {
  const outcome = await mqttConnect(platform, {
    username: device.id,
    password: device.secret,
    protocolVersion,
  });
  if (!outcome.client) throw new Error(`device ${device.id} could not connect: ${outcome.error?.message}`);
  return outcome.client;
}

export function endClient(client: MqttClient): Promise<void> {
  return new Promise((resolve) => client.end(false, {}, () => resolve()));
}

/** Publishes and resolves with the PUBACK reason code (0 when acknowledged), or 'closed'. */
export function publishOutcome(
  client: MqttClient,
  topic: string,
  payload: string | Buffer,
  qos: 0 | 1 = 1,
  retain = false,
): Promise<number | 'closed'> {
  return new Promise((resolve) => {
    // A client that is already disconnected would queue the message forever (no reconnects here).
    if (!client.connected) {
      resolve('closed');
      return;
    }
    const onClose = () => resolve('closed');
    client.once('close', onClose);
    client.publish(topic, payload, { qos, retain }, (error, packet) => {
      client.off('close', onClose);
      if (error) {
        const code = (error as { code?: number }).code;
        resolve(typeof code === 'number' ? code : 'closed');
        return;
      }
      resolve((packet as { reasonCode?: number } | undefined)?.reasonCode ?? 0);
    });
  });
}

/** Subscribes and resolves with the SUBACK's return/reason codes as the broker sent them. */
export function subscribeOutcome(client: MqttClient, filters: string[]): Promise<number[]> {
  return new Promise((resolve) => {
    const onPacket = (packet: Packet) => {
      if (packet.cmd !== 'suback') return;
      client.off('packetreceive', onPacket);
      resolve((packet.granted as number[]).slice());
    };
    client.on('packetreceive', onPacket);
    client.subscribe(filters, { qos: 1 }, () => {});
  });
}

/**
 * Where a raw client connects: a loopback TCP port (a broker core's plain listener, mqtt-core.ts) or
 * a platform, whose TLS MQTT listener it opens.
 */
export type RawTarget = number | Platform;

/**
 * A raw MQTT client over any connected socket (plain TCP or TLS): sends packets or bytes as given,
 * reads decoded packets for MQTT 3.1.1 or 5. `send` encodes for MQTT 5 unless told otherwise, so a
 * test can put a packet of the other level on the wire.
 */
export class RawMqtt {
  readonly socket: net.Socket;
  readonly packets: Packet[] = [];
  closed = false;
  readonly #parser;
  #waiters: Array<() => void> = [];

  constructor(socket: net.Socket, protocolVersion: 4 | 5 = 5) {
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

  /** Resolves on the next packet or close, or after `ms`. */
  #wait(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const t = setTimeout(resolve, ms);
      this.#waiters.push(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }

  static async open(target: RawTarget, protocolVersion: 4 | 5 = 5): Promise<RawMqtt> {
    if (typeof target === 'number') {
      const socket = net.connect({ host: '127.0.0.1', port: target });
      await once(socket, 'connect');
      return new RawMqtt(socket, protocolVersion);
    }
    // Loaded here, not at the top: test-platform.ts brings the whole platform (over a second to
    // load), which broker-core tests never start.
    const { openTls } = await import('./test-platform.ts');
    return new RawMqtt(await openTls(target, target.mqttPort), protocolVersion);
  }

  /** Opens, sends CONNECT and waits for a successful CONNACK. */
  static async connect(
    target: RawTarget,
    fields: Partial<mqttPacket.IConnectPacket> & { clientId: string },
    protocolVersion: 4 | 5 = 5,
  ): Promise<{ raw: RawMqtt; connack: mqttPacket.IConnackPacket }> {
    const raw = await RawMqtt.open(target, protocolVersion);
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
      await this.#wait(left);
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
    while (!this.closed && Date.now() < deadline) await this.#wait(deadline - Date.now());
    return this.closed;
  }

  close(): void {
    this.socket.destroy();
  }
}
