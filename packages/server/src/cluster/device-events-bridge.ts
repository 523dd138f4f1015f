// Device events across processes (RES-2): a person's push stream (BIND-4) may be held by one process
// while the device is connected to another. The bridge gives the push hub one DeviceEvents and one
// PresenceEvents that carry this process's events and the other processes' alike. Only the push hub
// listens to the bridged ones: webhooks, activation and the other reactions stay on the local events, so
// each event is acted on once, by the process where it happened. Events go on the bus only while some
// other process has a push stream open (its bridge subscribes while the hub listens).
import type { EventEmitter } from 'node:events';
import type { DeviceChange, DeviceEvents, DeviceMessage, PresenceChange, PresenceEvents } from '../devices/index.ts';
import type { BusMessage, ClusterBus } from './cluster-bus.ts';

export interface BridgedEvents {
  /** Local and remote device messages and changes (for the push hub). */
  readonly deviceEvents: DeviceEvents;
  /** Local and remote presence changes (for the push hub). */
  readonly presence: PresenceEvents;
  close(): Promise<void>;
}

export function bridgeDeviceEvents(
  bus: ClusterBus,
  local: { deviceEvents: DeviceEvents; presence: PresenceEvents },
  make: { deviceEvents: () => DeviceEvents; presence: () => PresenceEvents },
  log: { warn(object: object, message: string): void },
): BridgedEvents {
  const deviceEvents = make.deviceEvents();
  const presence = make.presence();
  const listening = () =>
    deviceEvents.listenerCount('message') + deviceEvents.listenerCount('change') + presence.listenerCount('change');

  const onMessage = (message: DeviceMessage) => {
    deviceEvents.emit('message', message);
    if (bus.hasRemoteListeners('events')) {
      bus.publish('events', { t: 'message', m: { ...message, payload: message.payload.toString('base64') } });
    }
  };
  const onChange = (change: DeviceChange) => {
    deviceEvents.emit('change', change);
    if (bus.hasRemoteListeners('events')) bus.publish('events', { t: 'change', c: change });
  };
  const onPresence = (change: PresenceChange) => {
    presence.emit('change', change);
    if (bus.hasRemoteListeners('events')) bus.publish('events', { t: 'presence', p: change });
  };
  local.deviceEvents.on('message', onMessage);
  local.deviceEvents.on('change', onChange);
  local.presence.on('change', onPresence);

  const receive = (message: BusMessage) => {
    if (message.t === 'message' && isRecord(message.m) && typeof message.m.payload === 'string') {
      deviceEvents.emit('message', {
        ...(message.m as object),
        payload: Buffer.from(message.m.payload, 'base64'),
      } as DeviceMessage);
    } else if (message.t === 'change' && isRecord(message.c)) {
      deviceEvents.emit('change', message.c as unknown as DeviceChange);
    } else if (message.t === 'presence' && isRecord(message.p)) {
      presence.emit('change', message.p as unknown as PresenceChange);
    }
  };
  // Subscribed while the hub listens; the other processes learn of it at once (they re-count).
  let subscribed = false;
  let pending: Promise<void> = Promise.resolve();
  const follow = () => {
    pending = pending.then(async () => {
      const want = listening() > 0;
      if (want === subscribed) return;
      subscribed = want;
      try {
        if (want) await bus.subscribe('events', receive);
        else await bus.unsubscribe('events');
        bus.publish('broker', { t: 'listeners-changed' });
      } catch (error) {
        log.warn({ err: error }, 'cluster: events subscription not changed');
      }
    });
  };
  for (const emitter of [deviceEvents, presence] as EventEmitter[]) {
    emitter.on('newListener', () => setImmediate(follow));
    emitter.on('removeListener', () => setImmediate(follow));
  }
  return {
    deviceEvents,
    presence,
    async close() {
      local.deviceEvents.off('message', onMessage);
      local.deviceEvents.off('change', onChange);
      local.presence.off('change', onPresence);
      await pending;
    },
  };
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
