// What the push channel sends (BIND-4), built once per event and shared by every stream it reaches: an
// SSE frame with a resumable id. Only what anyone allowed to read the device may see: no source IPs, no
// protocol internals, no secrets (DeviceChange.data is already safe by contract).
import type { DeviceChange, DeviceMessage } from '../device-events.ts';
import { payloadJson } from '../payload-json.ts';
import type { PresenceChange } from '../presence-events.ts';

export const PUSH_EVENT_TYPES = ['presence', 'state', 'event', 'change', 'telemetry'] as const;
export type PushEventType = (typeof PUSH_EVENT_TYPES)[number];
/** Telemetry is opt-in (`types=…,telemetry`): it is the busiest channel and apps rarely need every message. */
export const DEFAULT_PUSH_TYPES: readonly PushEventType[] = ['presence', 'state', 'event', 'change'];

/** Device payloads larger than this are announced (size) but not inlined. */
export const MAX_INLINE_PAYLOAD_BYTES = 16 * 1024;

export interface PushEvent {
  /** Position in this process's event sequence (resume). */
  readonly seq: number;
  readonly type: PushEventType;
  readonly deviceId: string;
  readonly vendorId: string;
  /** The complete SSE frame (`id:`, `event:`, `data:`). */
  readonly frame: string;
}

export interface PushEventBody {
  readonly type: PushEventType;
  readonly deviceId: string;
  readonly vendorId: string;
  readonly data: Record<string, unknown>;
}

/** JSON payloads inline; anything else base64; large ones only by size. */
function payloadOf(payload: Buffer): Record<string, unknown> {
  if (payload.length > MAX_INLINE_PAYLOAD_BYTES) return { payloadTooLarge: true, payloadBytes: payload.length };
  const json = payloadJson(payload);
  return json.ok ? { payload: json.value } : { payloadBase64: payload.toString('base64') };
}

/** Accepted device messages: state, events and (opt-in) telemetry. Acks are pushed as `command.status` changes. */
export function fromMessage(message: DeviceMessage): PushEventBody | null {
  const type: PushEventType | null =
    message.channel === 'state'
      ? 'state'
      : message.channel === 'events'
        ? 'event'
        : message.channel === 'telemetry'
          ? 'telemetry'
          : null;
  if (type === null) return null;
  return {
    type,
    deviceId: message.deviceId,
    vendorId: message.vendorId,
    data: {
      deviceId: message.deviceId,
      at: message.receivedAt,
      ...(type === 'telemetry' ? {} : { path: message.rest.join('/') }),
      ...payloadOf(message.payload),
    },
  };
}

/** Platform-made changes: shadow, command status, binding and share changes, status… */
export function fromChange(change: DeviceChange): PushEventBody {
  return {
    type: 'change',
    deviceId: change.deviceId,
    vendorId: change.vendorId,
    data: { deviceId: change.deviceId, at: change.at, kind: change.kind, data: change.data },
  };
}

/** Online/offline (a takeover leaves the device online). */
export function fromPresence(change: PresenceChange): PushEventBody {
  return {
    type: 'presence',
    deviceId: change.deviceId,
    vendorId: change.vendorId,
    data: {
      deviceId: change.deviceId,
      at: change.at,
      online: change.online,
      ...(change.type === 'disconnected' ? { reason: change.reason } : {}),
    },
  };
}

export function sseFrame(event: string, data: unknown, id?: string): string {
  // JSON.stringify never emits a raw CR or LF, so `data` is always one line.
  return `${id === undefined ? '' : `id: ${id}\n`}event: ${event}\ndata: ${JSON.stringify(data)}\n\n`;
}
