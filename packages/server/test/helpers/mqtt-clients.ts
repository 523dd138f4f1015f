// MQTT clients for tests: mqtt.js for well-formed sessions, a raw TLS socket for hostile bytes.
import type tls from 'node:tls';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import mqttPacket, { type Packet } from 'mqtt-packet';
import type { Platform } from '../../src/platform.ts';
import { openTls } from './test-platform.ts';

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
  return new Promise((resolve) => {
    const client = mqtt.connect(url, clientOptions);
    client.once('connect', () => {
      client.removeAllListeners('error');
      client.on('error', () => {});
      resolve({ client });
    });
    client.once('error', (error: Error & { code?: number }) => {
      client.end(true);
      resolve(typeof error.code === 'number' ? { refusedWith: error.code, error } : { error });
    });
    client.once('close', () => {
      resolve({ error: new Error('closed before CONNACK') });
    });
  });
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

/** A raw TLS connection to the MQTT listener, with a packet reader for MQTT 3.1.1 or 5. */
export class RawMqtt {
  readonly socket: tls.TLSSocket;
  readonly packets: Packet[] = [];
  closed = false;
  readonly #parser;
  #waiters: Array<() => void> = [];

  private constructor(socket: tls.TLSSocket, protocolVersion: 4 | 5) {
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

  #notify() {
    for (const w of this.#waiters.splice(0)) w();
  }

  static async open(platform: Platform, protocolVersion: 4 | 5 = 5): Promise<RawMqtt> {
    return new RawMqtt(await openTls(platform, platform.mqttPort), protocolVersion);
  }

  send(bytes: Buffer | Packet, protocolVersion: 4 | 5 = 5): void {
    this.socket.write(Buffer.isBuffer(bytes) ? bytes : mqttPacket.generate(bytes, { protocolVersion }));
  }

  /** Waits until a packet of `cmd` arrives or the socket closes (then resolves undefined). */
  async next(cmd: string, timeoutMs = 5000): Promise<Packet | undefined> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const index = this.packets.findIndex((p) => p.cmd === cmd);
      if (index >= 0) return this.packets.splice(index, 1)[0];
      if (this.closed) return undefined;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${cmd}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.#waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  async waitClosed(timeoutMs = 5000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed && Date.now() < deadline) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, deadline - Date.now());
        this.#waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    return this.closed;
  }

  close(): void {
    this.socket.destroy();
  }
}
