// A smart lock's keypad logic (LOCK-1), as a lock's firmware would run it: the passcode key is derived
// from the device's own secret (never received), typed codes are verified offline against the lock's
// clock (packages/protocol/src/lock-passcodes.ts), one-time codes are remembered as used, revocations
// arrive over MQTT as a retained list, uses are reported on devices/{id}/events when a connection is
// there (queued while offline), and 5 wrong codes in a row lock the keypad out for a while, each
// further lockout twice as long up to a ceiling (the brute-force bound in docs/device-lifecycle.md).
import {
  deriveLockPasscodeKey,
  deviceTopic,
  encodePasscodeUsed,
  LockPasscodeState,
  PASSCODE_REVOKE_COMMAND,
  type PasscodeRef,
  parsePasscodeRevocations,
  verifyPasscode,
} from '@castellan/protocol';
import { type DeviceClient, DeviceConnectError } from './device-client.ts';

export interface LockoutPolicy {
  /** Wrong codes in a row that lock the keypad (default 5). */
  maxWrong: number;
  /** First lockout, ms (default 5 minutes); each further one doubles. */
  durationMs: number;
  /** Longest lockout, ms (default 1 hour). */
  maxDurationMs: number;
}

export interface LockSimulatorOptions {
  deviceId: string;
  /** The device secret, exactly as presented to the platform. */
  secret: string;
  /** The lock's clock (ms); Date.now by default. Tests move it. */
  now?: () => number;
  lockout?: Partial<LockoutPolicy>;
}

export type LockEntryResult =
  | ({ readonly opened: true } & PasscodeRef)
  | {
      readonly opened: false;
      /** `locked-out`: the keypad refuses input until `retryAt`. */
      readonly reason: 'malformed' | 'invalid' | 'revoked' | 'used' | 'locked-out';
      readonly retryAt?: number;
    };

/** A PUBACK with a failure reason code (mqtt.js reports its number as `code`), not a lost connection. */
function isRefusal(error: unknown): boolean {
  if (error instanceof DeviceConnectError) return error.code.startsWith('MQTT_PUBACK_');
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'number' && code >= 0x80;
}

const DEFAULT_LOCKOUT: LockoutPolicy = { maxWrong: 5, durationMs: 5 * 60_000, maxDurationMs: 3_600_000 };

export class LockSimulator {
  readonly deviceId: string;
  readonly state = new LockPasscodeState();
  readonly #key: Buffer;
  readonly #now: () => number;
  readonly #lockout: LockoutPolicy;
  #wrong = 0;
  #lockouts = 0;
  #lockedUntil = 0;
  #client: DeviceClient | undefined;
  #onMessage: ((topic: string, payload: Buffer) => void) | undefined;
  #onConnect: (() => void) | undefined;
  /** Use reports not yet acknowledged by the platform, oldest first. */
  readonly #pending: Buffer[] = [];
  #flushing: Promise<void> | undefined;
  /** Revocation lists applied (the retained one counts when the lock subscribes). */
  revocationUpdates = 0;
  readonly #revocationWaiters: Array<() => void> = [];

  constructor(options: LockSimulatorOptions) {
    this.deviceId = options.deviceId;
    this.#key = deriveLockPasscodeKey(options.secret, options.deviceId);
    this.#now = options.now ?? Date.now;
    this.#lockout = { ...DEFAULT_LOCKOUT, ...options.lockout };
  }

  /**
   * Connects the lock to the platform through its SDK client: subscribes to revocation lists (the
   * retained one arrives at once) and reports uses, including those typed while offline.
   */
  async attach(client: DeviceClient): Promise<void> {
    if (client.deviceId !== this.deviceId) throw new Error('the client belongs to another device');
    this.detach();
    this.#client = client;
    const topic = deviceTopic.command(this.deviceId, PASSCODE_REVOKE_COMMAND);
    this.#onMessage = (received, payload) => {
      if (received === topic) this.applyRevocations(payload);
    };
    // After a reconnect (clean session) the subscription is made again, and unsent reports go out.
    this.#onConnect = () => {
      client.mqtt.subscribe(topic, { qos: 1 }, () => {});
      void this.#flush();
    };
    client.mqtt.on('message', this.#onMessage);
    client.mqtt.on('connect', this.#onConnect);
    await client.mqtt.subscribeAsync(topic, { qos: 1 });
    await this.#flush();
  }

  /** Stops listening to the client (the lock keeps working offline). */
  detach(): void {
    if (!this.#client) return;
    if (this.#onMessage) this.#client.mqtt.off('message', this.#onMessage);
    if (this.#onConnect) this.#client.mqtt.off('connect', this.#onConnect);
    this.#client = undefined;
  }

  /**
   * Applies the platform's revocation list (the full list of revoked codes whose window has not ended).
   * A malformed list is ignored (the lock keeps what it had). Returns whether it was applied.
   */
  applyRevocations(payload: Uint8Array | string): boolean {
    const refs = parsePasscodeRevocations(payload);
    if (refs === null) return false;
    // Added, never lifted: an entry the platform no longer lists has ended (purged here anyway).
    for (const ref of refs) this.state.revoke(ref);
    this.state.purge(this.#now());
    this.revocationUpdates++;
    for (const wake of this.#revocationWaiters.splice(0)) wake();
    return true;
  }

  /** Resolves once at least `count` revocation lists have been applied. */
  async revocationsApplied(count: number, timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.revocationUpdates < count) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no revocation list #${count} arrived within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#revocationWaiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /** The keypad is locked until this time (ms), or 0. */
  get lockedUntil(): number {
    return this.#lockedUntil > this.#now() ? this.#lockedUntil : 0;
  }

  /** Use reports waiting for a connection. */
  get pendingReports(): number {
    return this.#pending.length;
  }

  /**
   * A code typed on the keypad. Opens or not, offline; a use is reported to the platform (the returned
   * promise settles after the report was acknowledged, or at once when offline: it stays queued).
   */
  async enter(code: string): Promise<LockEntryResult> {
    const now = this.#now();
    if (this.#lockedUntil > now) return { opened: false, reason: 'locked-out', retryAt: this.#lockedUntil };
    this.state.purge(now);
    const verdict = verifyPasscode(this.#key, code, now, this.state);
    if (!verdict.ok) {
      this.#wrong++;
      if (this.#wrong >= this.#lockout.maxWrong) {
        const duration = Math.min(this.#lockout.durationMs * 2 ** this.#lockouts, this.#lockout.maxDurationMs);
        this.#lockouts++;
        this.#wrong = 0;
        this.#lockedUntil = now + duration;
      }
      return { opened: false, reason: verdict.reason };
    }
    this.#wrong = 0;
    this.#lockouts = 0;
    const ref: PasscodeRef = {
      kind: verdict.kind,
      counter: verdict.counter,
      validFrom: verdict.validFrom,
      validUntil: verdict.validUntil,
    };
    this.#pending.push(encodePasscodeUsed(ref, now));
    await this.#flush();
    return { opened: true, ...ref };
  }

  /** Sends queued use reports in order while connected; keeps whatever fails for the next connection. */
  #flush(): Promise<void> {
    if (this.#flushing) return this.#flushing;
    const run = async () => {
      while (this.#pending.length > 0) {
        const client = this.#client;
        if (!client?.mqtt.connected) return;
        try {
          await client.publish(deviceTopic.events(this.deviceId), this.#pending[0]!, 1);
        } catch (error) {
          // Refused by the platform (a PUBACK reason code): sending it again would be refused again.
          if (!isRefusal(error)) return;
        }
        this.#pending.shift();
      }
    };
    // Cleared after it is stored: a run that finishes at once must not leave a settled promise behind.
    const flushing = run().finally(() => {
      if (this.#flushing === flushing) this.#flushing = undefined;
    });
    this.#flushing = flushing;
    return flushing;
  }
}
