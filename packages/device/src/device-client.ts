// The device SDK's MQTT client: connects over TLS with the device's own ID and secret, pins the
// platform's CA, reports telemetry (QoS 1: resolves once the platform has stored it).
import { isIP } from 'node:net';
import type { ConnectionOptions } from 'node:tls';
import { deviceTopic, isDeviceId } from '@castellan/protocol';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';

export interface DeviceClientOptions {
  /** mqtts://host:port */
  url: string;
  deviceId: string;
  secret: string;
  /** PEM CA certificate of the platform (pinned: no system trust store). */
  ca: string | Buffer;
  protocolVersion?: 4 | 5;
  keepaliveSeconds?: number;
  connectTimeoutMs?: number;
  /** SNI / certificate name to check; defaults to the URL's host. */
  servername?: string;
}

export class DeviceConnectError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = 'DeviceConnectError';
    this.code = code;
  }
}

export class DeviceClient {
  readonly deviceId: string;
  readonly mqtt: MqttClient;

  private constructor(deviceId: string, client: MqttClient) {
    this.deviceId = deviceId;
    this.mqtt = client;
  }

  static connect(options: DeviceClientOptions): Promise<DeviceClient> {
    if (!isDeviceId(options.deviceId)) {
      return Promise.reject(
        new DeviceConnectError('ERR_DEVICE_ID_INVALID', 'device ID must be 24 lower-case hex digits'),
      );
    }
    const url = new URL(options.url);
    if (url.protocol !== 'mqtts:') {
      return Promise.reject(
        new DeviceConnectError('ERR_DEVICE_INSECURE_URL', 'only mqtts:// (MQTT over TLS) is allowed'),
      );
    }
    const tlsOptions: ConnectionOptions = {
      ca: options.ca,
      rejectUnauthorized: true,
      minVersion: 'TLSv1.2',
      ...(options.servername
        ? { servername: options.servername }
        : isIP(url.hostname)
          ? {}
          : { servername: url.hostname }),
    };
    const clientOptions: IClientOptions = {
      ...(tlsOptions as IClientOptions),
      clientId: options.deviceId,
      username: options.deviceId,
      password: options.secret,
      protocolVersion: options.protocolVersion ?? 5,
      keepalive: options.keepaliveSeconds ?? 60,
      clean: true,
      reconnectPeriod: 0,
      connectTimeout: options.connectTimeoutMs ?? 10_000,
    };
    return new Promise((resolve, reject) => {
      const client = mqtt.connect(options.url, clientOptions);
      const fail = (error: Error) => {
        client.end(true);
        const code = (error as { code?: number | string }).code;
        reject(
          new DeviceConnectError(
            typeof code === 'number' ? `MQTT_CONNACK_${code}` : 'ERR_DEVICE_CONNECT',
            error.message,
          ),
        );
      };
      client.once('error', fail);
      client.once('close', () => fail(new Error('connection closed before CONNACK')));
      client.once('connect', () => {
        client.removeAllListeners('error');
        client.removeAllListeners('close');
        client.on('error', () => {});
        resolve(new DeviceClient(options.deviceId, client));
      });
    });
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

  close(): Promise<void> {
    return new Promise((resolve) => this.mqtt.end(false, {}, () => resolve()));
  }
}
