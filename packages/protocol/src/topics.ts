// The MQTT topic scheme between devices and the platform (docs/protocol.md).
//
//   devices/{deviceId}/telemetry          device → cloud, stored durably (QoS 0 or 1)
//   devices/{deviceId}/state              device → cloud
//   devices/{deviceId}/events             device → cloud
//   devices/{deviceId}/acks/{commandId}   device → cloud, a command's result (QoS 1)
//   devices/{deviceId}/commands/{name}    cloud → device, a command (QoS 1)
//   devices/{deviceId}/shadow/desired     cloud → device, desired state with its version (retained)
//
// A device may publish and subscribe only under its own `devices/{deviceId}/` prefix (CHAN-6).
import { isDeviceId } from './device-id.ts';

export const TOPIC_ROOT = 'devices';

export const deviceTopic = {
  prefix: (deviceId: string) => `${TOPIC_ROOT}/${deviceId}/`,
  telemetry: (deviceId: string) => `${TOPIC_ROOT}/${deviceId}/telemetry`,
  state: (deviceId: string) => `${TOPIC_ROOT}/${deviceId}/state`,
  events: (deviceId: string) => `${TOPIC_ROOT}/${deviceId}/events`,
  commands: (deviceId: string) => `${TOPIC_ROOT}/${deviceId}/commands/#`,
  command: (deviceId: string, name: string) => `${TOPIC_ROOT}/${deviceId}/commands/${name}`,
  ack: (deviceId: string, commandId: string) => `${TOPIC_ROOT}/${deviceId}/acks/${commandId}`,
  shadowDesired: (deviceId: string) => `${TOPIC_ROOT}/${deviceId}/shadow/desired`,
  shadow: (deviceId: string) => `${TOPIC_ROOT}/${deviceId}/shadow/#`,
};

export type DeviceChannel = 'telemetry' | 'state' | 'events' | 'acks' | 'commands' | 'shadow';

export interface ParsedDeviceTopic {
  readonly deviceId: string;
  readonly channel: DeviceChannel;
  readonly rest: readonly string[];
}

const CHANNELS = new Set<string>(['telemetry', 'state', 'events', 'acks', 'commands', 'shadow']);

/** Parses a concrete (wildcard-free) device topic; null when it is not one. */
export function parseDeviceTopic(topic: string): ParsedDeviceTopic | null {
  const levels = topic.split('/');
  if (levels.length < 3 || levels[0] !== TOPIC_ROOT) return null;
  const deviceId = levels[1];
  const channel = levels[2];
  if (!isDeviceId(deviceId) || channel === undefined || !CHANNELS.has(channel)) return null;
  return { deviceId, channel: channel as DeviceChannel, rest: levels.slice(3) };
}

/**
 * True when `filterOrTopic` lies entirely inside the device's own namespace: the first two levels are
 * literally `devices/{deviceId}` (no wildcard there could reach another device) and it has at least one
 * level below. Wildcards further down stay inside the namespace.
 */
export function isWithinDeviceNamespace(deviceId: string, filterOrTopic: string): boolean {
  const prefix = deviceTopic.prefix(deviceId);
  return filterOrTopic.startsWith(prefix) && filterOrTopic.length > prefix.length;
}
