// Presence changes as in-process events: the push channel to people and vendors subscribes here, so
// the devices subsystem never needs to know who listens. Events carry no source IP (personal data:
// it stays in the audit log, encrypted).
import { EventEmitter } from 'node:events';

/** Why a device's connection ended; `platform-restart`: the process holding it stopped without saying. */
export type DisconnectReason =
  'client' | 'takeover' | 'keep-alive' | 'protocol-error' | 'server' | 'network' | 'platform-restart';

/** A device's presence as stored (and shown by `GET /v1/devices/:deviceId`). */
export interface DevicePresence {
  readonly online: boolean;
  /** The last time the device sent something the platform tracks: CONNECT, PUBLISH, DISCONNECT. */
  readonly lastSeenAt: number | null;
  readonly lastConnectedAt: number | null;
  readonly lastDisconnectedAt: number | null;
  readonly lastDisconnectReason: DisconnectReason | null;
}

interface PresenceChangeBase {
  readonly deviceId: string;
  readonly vendorId: string;
  /** When it happened (ms since the epoch). */
  readonly at: number;
  /** The device's presence after this change (a taken-over connection leaves the device online). */
  readonly online: boolean;
  readonly protocolVersion: 4 | 5 | null;
}

export interface DeviceConnected extends PresenceChangeBase {
  readonly type: 'connected';
  readonly sessionPresent: boolean;
}

export interface DeviceDisconnected extends PresenceChangeBase {
  readonly type: 'disconnected';
  readonly reason: DisconnectReason;
  /** The MQTT 5 reason code sent or received, when there was one. */
  readonly reasonCode: number | null;
  readonly connectedForMs: number;
}

export type PresenceChange = DeviceConnected | DeviceDisconnected;

/** Event map: `change` is emitted once the change is stored (or its write has failed and been logged). */
export interface PresenceEventMap {
  change: [PresenceChange];
}

/** Listeners are called synchronously; one that throws is logged and does not stop the others' presence. */
export class PresenceEvents extends EventEmitter<PresenceEventMap> {}
