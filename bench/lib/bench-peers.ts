// The three brokers the broker-throughput and overload measures load alike, behind one interface:
//   - Castellan: the platform in its child process (lib/platform-process.ts) on SQLite, with device
//     authentication, the per-message ACL, the guard, durable storage and PUBACK after commit; MQTT 5;
//   - Mosquitto (lib/mosquitto-broker.ts): TLS, password file, ACL file, no storage; MQTT 5;
//   - aedes (lib/aedes-broker.ts): TLS, no hooks, in memory; MQTT 3.1.1 (aedes has no MQTT 5).
import { deviceTopic } from '@castellan/protocol';
import { startAedes } from './aedes-broker.ts';
import { mosquittoVersion, startMosquitto } from './mosquitto-broker.ts';
import { type PeerAccount, peerDevices } from './peer-broker.ts';
import { PlatformProcess, type PlatformProcessOptions } from './platform-process.ts';
import { castellanPushConsumer, mqttConsumer, type TelemetryConsumer } from './telemetry-consumer.ts';

export type PeerName = 'Castellan' | 'Mosquitto' | 'aedes';

export interface PeerUnderTest {
  name: PeerName;
  url: string;
  caPem: string;
  protocolVersion: 4 | 5;
  devices: PeerAccount[];
  topics: string[];
  /** The broker process's CPU since it started (user + system, µs). */
  cpuMicros(): Promise<number>;
  /** Something receiving every device's telemetry (see lib/telemetry-consumer.ts). */
  consumer(): Promise<TelemetryConsumer>;
  /** Castellan only: sets the product's per-device report limit (messages per second). */
  setPerDeviceLimit?(perSecond: number): Promise<void>;
  version: string;
  stop(): Promise<void>;
}

export interface PeerOptions {
  devices: number;
  /** Castellan: configuration on top of the bench's (see ServerStartOptions.configOverrides). */
  castellanConfig?: PlatformProcessOptions['configOverrides'];
  castellanReportLimits?: PlatformProcessOptions['reportLimits'];
}

export async function startPeer(name: PeerName, options: PeerOptions): Promise<PeerUnderTest> {
  if (name === 'Castellan') {
    const platform = await PlatformProcess.start({
      label: 'castellan',
      databaseUrl: '',
      devices: options.devices,
      ...(options.castellanConfig ? { configOverrides: options.castellanConfig } : {}),
      ...(options.castellanReportLimits ? { reportLimits: options.castellanReportLimits } : {}),
    });
    const ready = platform.ready;
    return {
      name,
      url: ready.mqttUrl,
      caPem: ready.caPem,
      protocolVersion: 5,
      devices: ready.devices.map((d) => ({ username: d.id, password: d.secret })),
      topics: ready.devices.map((d) => deviceTopic.telemetry(d.id)),
      cpuMicros: async () => (await platform.sample(false)).cpuMicros,
      consumer: () =>
        castellanPushConsumer({
          httpUrl: ready.httpUrl,
          caPem: ready.caPem,
          sessionToken: ready.sessionToken,
          deviceIds: ready.devices.map((d) => d.id),
        }),
      setPerDeviceLimit: (perSecond) => platform.setReportLimits(perSecond, 100_000_000),
      version: ready.databaseVersion,
      stop: () => platform.stop(),
    };
  }
  const devices = peerDevices(options.devices);
  const consumerAccount = { username: 'bench-consumer', password: peerDevices(1)[0]!.password };
  const broker =
    name === 'Mosquitto' ? await startMosquitto({ devices, consumer: consumerAccount }) : await startAedes();
  const url = `mqtts://127.0.0.1:${broker.port}`;
  const protocolVersion = name === 'Mosquitto' ? 5 : 4;
  return {
    name,
    url,
    caPem: broker.caPem,
    protocolVersion,
    devices,
    topics: devices.map((d) => deviceTopic.telemetry(d.username)),
    cpuMicros: () => Promise.resolve(broker.cpuMicros()),
    consumer: () => mqttConsumer({ url, caPem: broker.caPem, protocolVersion, ...consumerAccount }),
    version:
      name === 'Mosquitto' ? `mosquitto ${mosquittoVersion()}` : `aedes ${(broker as { version?: string }).version}`,
    stop: () => broker.stop(),
  };
}
