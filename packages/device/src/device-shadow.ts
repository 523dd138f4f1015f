// The device side of the shadow (CHAN-7). The device reports its state on devices/{id}/state as
// `{"state": {...}, "version": n}`, where n is the version of the desired document it last saw, and
// receives desired state on devices/{id}/shadow/desired (retained, QoS 1: the latest is there as soon
// as it subscribes). Applying desired state means: hand the keys that differ from what the device
// reported to the application's handlers, then report them back with that version. The platform
// ignores a report based on an older desired version (it crossed a newer change); the newer desired
// state arrives and is applied in turn.
import { deviceTopic } from '@castellan/protocol';
import type { MqttClient } from 'mqtt';
import { DeviceSubscription } from './device-subscription.ts';

export type ShadowState = Record<string, unknown>;

/** The desired document as published by the platform. */
export interface DesiredDocument {
  readonly state: ShadowState;
  /** 0 when the platform has no shadow for the device (never set, or cleared). */
  readonly version: number;
  readonly timestamp: number | null;
}

/**
 * Applies desired keys (the delta against what the device reported). Throwing leaves them unapplied
 * and unreported: they are offered again with the next desired document or syncShadow().
 */
export type DesiredHandler = (delta: ShadowState, desired: DesiredDocument) => void | Promise<void>;

export interface ShadowSyncResult {
  readonly version: number;
  readonly desired: ShadowState;
  /** The keys applied and reported by this sync (empty when the device was already in step). */
  readonly applied: ShadowState;
}

/** What DeviceShadow needs from the client. */
export interface ShadowTransport {
  readonly deviceId: string;
  readonly mqtt: MqttClient;
  publish(topic: string, payload: string | Buffer, qos: 0 | 1): Promise<void>;
}

const isObject = (v: unknown): v is ShadowState => typeof v === 'object' && v !== null && !Array.isArray(v);

/** `base` updated by `update`: objects merge, null deletes a key, anything else replaces. */
export function mergeState(base: ShadowState, update: ShadowState): ShadowState {
  const out: ShadowState = { ...base };
  for (const [key, value] of Object.entries(update)) {
    if (key === '__proto__') continue;
    const current = out[key];
    if (value === null) delete out[key];
    else if (isObject(value)) out[key] = mergeState(isObject(current) ? current : {}, value);
    else out[key] = value;
  }
  return out;
}

/** Keys of `desired` whose value `reported` does not show. */
export function stateDelta(desired: ShadowState, reported: ShadowState): ShadowState {
  const out: ShadowState = {};
  for (const [key, want] of Object.entries(desired)) {
    const have = reported[key];
    if (isObject(want) && isObject(have)) {
      const nested = stateDelta(want, have);
      if (Object.keys(nested).length > 0) out[key] = nested;
    } else if (JSON.stringify(want) !== JSON.stringify(have)) {
      out[key] = want;
    }
  }
  return out;
}

function parseDesired(payload: Buffer): DesiredDocument | null {
  // An empty retained message: the platform cleared the shadow (unbind, factory reset).
  if (payload.length === 0) return { state: {}, version: 0, timestamp: null };
  try {
    const value = JSON.parse(payload.toString('utf8')) as unknown;
    if (!isObject(value) || !isObject(value.state) || !Number.isSafeInteger(value.version)) return null;
    return {
      state: value.state,
      version: value.version as number,
      timestamp: typeof value.timestamp === 'number' ? value.timestamp : null,
    };
  } catch {
    return null;
  }
}

export class DeviceShadow {
  readonly #t: ShadowTransport;
  readonly #handlers: DesiredHandler[] = [];
  #reported: ShadowState = {};
  #desired: DesiredDocument | null = null;
  readonly #subscription: DeviceSubscription;
  /** Desired documents are applied one at a time, in arrival order. */
  #applying: Promise<unknown> = Promise.resolve();
  #arrived: Array<() => void> = [];
  /** Called when a handler fails or the report is refused while applying a desired change on arrival. */
  onApplyError: ((error: unknown) => void) | undefined;

  constructor(transport: ShadowTransport) {
    this.#t = transport;
    const topic = deviceTopic.shadowDesired(transport.deviceId);
    this.#subscription = new DeviceSubscription(transport.mqtt, topic, 'desired state');
    transport.mqtt.on('message', (received: string, payload: Buffer) => {
      if (received !== topic) return;
      const desired = parseDesired(payload);
      if (!desired) return;
      this.#desired = desired;
      for (const resolve of this.#arrived.splice(0)) resolve();
      // Without handlers, desired state waits for syncShadow().
      if (this.#handlers.length > 0) this.#enqueueApply().catch((error: unknown) => this.onApplyError?.(error));
    });
  }

  /** What this device has reported (merged), as far as it knows. */
  get reported(): ShadowState {
    return this.#reported;
  }

  /** The last desired document received; null before the first. */
  get desired(): DesiredDocument | null {
    return this.#desired;
  }

  /** The desired version reports are based on (0 before any desired document arrived). */
  get version(): number {
    return this.#desired?.version ?? 0;
  }

  /** Reports state (merged into reported; null deletes a key); resolves once the platform took it (QoS 1). */
  report(state: ShadowState): Promise<void> {
    return this.#report(state, this.version);
  }

  async #report(state: ShadowState, version: number): Promise<void> {
    const message = version > 0 ? { state, version } : { state };
    await this.#t.publish(deviceTopic.state(this.#t.deviceId), JSON.stringify(message), 1);
    this.#reported = mergeState(this.#reported, state);
  }

  /** Calls `handler` with each desired change the device has not applied yet; subscribes on first use. */
  async onDesired(handler: DesiredHandler): Promise<void> {
    this.#handlers.push(handler);
    await this.#subscription.ensure();
    if (this.#desired) await this.#enqueueApply();
  }

  /**
   * Brings the device in step: subscribes (the retained desired document arrives at once if there is
   * one; `settleMs` is how long to wait for it), applies what differs through the handlers (none
   * registered: taken as applied) and reports it back with the desired version.
   */
  async sync(options: { settleMs?: number } = {}): Promise<ShadowSyncResult> {
    const first = !this.#subscription.requested;
    await this.#subscription.ensure();
    if (first && !this.#desired) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, options.settleMs ?? 500);
        this.#arrived.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    const applied = await this.#enqueueApply();
    return { version: this.version, desired: this.#desired?.state ?? {}, applied };
  }

  /** Forgets local shadow state (a factory reset or wipe of the device). */
  reset(): void {
    this.#reported = {};
  }

  /** Subscribes again after a new connection (clean start); the retained desired document follows. */
  renew(): Promise<void> {
    return this.#subscription.renew();
  }

  #enqueueApply(): Promise<ShadowState> {
    const run = this.#applying.then(() => this.#apply());
    this.#applying = run.catch(() => undefined);
    return run;
  }

  async #apply(): Promise<ShadowState> {
    const desired = this.#desired;
    if (!desired) return {};
    const delta = stateDelta(desired.state, this.#reported);
    if (Object.keys(delta).length === 0) return {};
    for (const handler of this.#handlers) await handler(delta, desired);
    // Based on the document just applied, even if a newer one has arrived meanwhile (applied next).
    await this.#report(delta, desired.version);
    return delta;
  }
}
