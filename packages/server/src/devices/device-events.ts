// What happens to devices, as in-process events: the push channel (BIND-4), webhooks and anything else
// that reacts subscribe here, so the services that produce events never need to know who listens.
// Emitted after the change is stored. Events carry no source IP and no secrets.
import { EventEmitter } from 'node:events';

/** A message a device published that the platform accepted (after authorisation, limits and checks). */
export interface DeviceMessage {
  readonly deviceId: string;
  readonly vendorId: string;
  readonly productId: string;
  readonly channel: 'telemetry' | 'state' | 'events' | 'acks';
  /** Topic levels below the channel (`devices/{id}/acks/{commandId}` → [commandId]). */
  readonly rest: readonly string[];
  readonly payload: Buffer;
  readonly receivedAt: number;
}

/**
 * A change to a device made by the platform: `kind` names it (`shadow.reported`, `shadow.desired`,
 * `command.status`, `binding.bound`, `binding.unbound`, `share.created`, `share.revoked`,
 * `credential.revoked`, `status.changed`, `posture.deviation`, …); `data` holds only fields safe to show
 * to anyone who may read the device.
 */
export interface DeviceChange {
  readonly deviceId: string;
  readonly vendorId: string;
  readonly kind: string;
  readonly at: number;
  readonly data: Readonly<Record<string, unknown>>;
}

export interface DeviceEventMap {
  message: [DeviceMessage];
  change: [DeviceChange];
}

/** Listeners are called synchronously and must not throw (wrap async work and log its failures). */
export class DeviceEvents extends EventEmitter<DeviceEventMap> {
  constructor() {
    super({ captureRejections: false });
    // Push connections each subscribe: many listeners are expected.
    this.setMaxListeners(0);
  }
}
