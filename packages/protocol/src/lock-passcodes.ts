// Smart-lock offline passcodes (LOCK-1; Tuya's "dynamic password", Populife seed 002). The platform and
// the lock share a per-lock passcode key, derived on both sides from the device secret; the platform
// issues codes, the lock verifies them with nothing but that key, its clock and a little state (used
// one-time codes, revoked codes). Nothing about a code is ever sent to the lock in advance.
//
// A code is 12 decimal digits, V = mac · PAYLOAD_SPACE + payload (docs/protocol.md, Lock passcodes):
//
//   payload = classOffset + counter · ℓ + (start mod ℓ)     < PAYLOAD_SPACE = 11 760
//   mac     = HMAC-SHA-256(key, "CLP1" ‖ kind ‖ ℓ ‖ counter ‖ start)[0..8] mod MAC_SPACE
//
// where `start` is the window's first hour counted from LOCK_PASSCODE_EPOCH_MS and ℓ its length in hours
// (the class: one-time codes last 6 h; time-window codes 1–24 h or 2–7 days). The lock recovers the
// full start from its clock: the one hour s in (now − ℓ, now] with s ≡ start (mod ℓ). A code outside its
// window therefore yields another s, whose MAC does not match: expired, not yet valid, another lock's
// and made-up codes all fail the same way. The counter tells apart codes of the same window (and names
// one in revocations and use reports).
//
// MAC_SPACE = ⌊10¹² / 11 760⌋ = 85 034 013 ≈ 2^26.34: a guessed code opens the lock with probability
// 1/MAC_SPACE ≈ 1.2·10⁻⁸ whatever its payload. With the lock's lockout (5 wrong codes, then a pause that
// doubles up to an hour) a guesser gets at most ~5 tries an hour: ~43 800 a year, P ≈ 5·10⁻⁴.
import { createHmac, hkdfSync } from 'node:crypto';

/** HKDF info of the per-lock passcode key. */
export const LOCK_PASSCODE_KEY_INFO = 'castellan lock passcode v1';
/** Hour 0 of passcode windows: 2024-01-01T00:00:00Z. */
export const LOCK_PASSCODE_EPOCH_MS = Date.UTC(2024, 0, 1);
export const HOUR_MS = 3_600_000;
export const PASSCODE_DIGITS = 12;
/** Command (devices/{id}/commands/passcode-revoke) carrying the lock's revocation list. */
export const PASSCODE_REVOKE_COMMAND = 'passcode-revoke';
/** Event type a lock publishes on devices/{id}/events when a code opened it. */
export const PASSCODE_USED_EVENT = 'passcode-used';

export type PasscodeKind = 'one-time' | 'time-window';
export const PASSCODE_KINDS: readonly PasscodeKind[] = ['one-time', 'time-window'];

/** A one-time code is valid once within the 6 hours that start at its window's first hour. */
export const ONE_TIME_HOURS = 6;
/** Window lengths a time-window code may have, in hours: 1–24 hours, or 2–7 whole days. */
export const TIME_WINDOW_HOURS: readonly number[] = [
  ...Array.from({ length: 24 }, (_, i) => i + 1),
  48,
  72,
  96,
  120,
  144,
  168,
];
/** Codes of one kind and one window that can exist side by side (their counters). */
export const ONE_TIME_COUNTERS = 64;
export const TIME_WINDOW_COUNTERS = 12;

interface PasscodeClass {
  readonly kind: PasscodeKind;
  readonly hours: number;
  readonly counters: number;
  readonly offset: number;
}

const KIND_BYTE: Readonly<Record<PasscodeKind, number>> = { 'one-time': 1, 'time-window': 2 };

const CLASSES: readonly PasscodeClass[] = (() => {
  const classes: PasscodeClass[] = [];
  let offset = 0;
  const add = (kind: PasscodeKind, hours: number, counters: number) => {
    classes.push({ kind, hours, counters, offset });
    offset += hours * counters;
  };
  add('one-time', ONE_TIME_HOURS, ONE_TIME_COUNTERS);
  for (const hours of TIME_WINDOW_HOURS) add('time-window', hours, TIME_WINDOW_COUNTERS);
  return classes;
})();

/** Number of distinct payloads (kind, length, counter, start mod length). */
export const PAYLOAD_SPACE: number = CLASSES.reduce((sum, c) => sum + c.hours * c.counters, 0);
/** Number of distinct MAC values: a guess is right with probability 1 / MAC_SPACE. */
export const MAC_SPACE: number = Math.floor(10 ** PASSCODE_DIGITS / PAYLOAD_SPACE);
/** log2(MAC_SPACE): the MAC's strength in bits (≥ 26 by design, checked by the tests). */
export const MAC_BITS: number = Math.log2(MAC_SPACE);

const CODE_PATTERN = /^[0-9]{12}$/;
const MAC_LABEL = Buffer.from('CLP1', 'ascii');
const KEY_BYTES = 32;

export class PasscodeError extends Error {
  readonly code = 'ERR_LOCK_PASSCODE_INVALID';
}

/** What identifies an issued code: the lock reports and revokes codes by it. Times in ms. */
export interface PasscodeRef {
  readonly kind: PasscodeKind;
  readonly counter: number;
  readonly validFrom: number;
  readonly validUntil: number;
}

export interface PasscodeSpec {
  readonly kind: PasscodeKind;
  /** First instant of the window: a whole hour (ms since the Unix epoch) at or after the epoch. */
  readonly validFrom: number;
  /** End of the window (exclusive), a whole hour; one-time codes: omitted or validFrom + 6 h. */
  readonly validUntil?: number;
  /** 0 ≤ counter < countersFor(kind): the code's number among codes of the same kind and window. */
  readonly counter: number;
}

export interface IssuedPasscode extends PasscodeRef {
  /** 12 digits, shown once to the person who issued it. */
  readonly code: string;
}

/**
 * The per-lock passcode key: HKDF-SHA-256 of the device secret (the exact string the device presents
 * as its MQTT password), salted with the device ID. The platform and the lock compute it apart; it is
 * never sent anywhere.
 */
export function deriveLockPasscodeKey(secret: string | Uint8Array, deviceId: string): Buffer {
  const ikm = typeof secret === 'string' ? Buffer.from(secret, 'utf8') : secret;
  if (ikm.length === 0) throw new PasscodeError('the device secret is empty');
  return Buffer.from(hkdfSync('sha256', ikm, Buffer.from(deviceId, 'utf8'), LOCK_PASSCODE_KEY_INFO, KEY_BYTES));
}

/** How many codes of one kind may share a window. */
export function countersFor(kind: PasscodeKind): number {
  return kind === 'one-time' ? ONE_TIME_COUNTERS : TIME_WINDOW_COUNTERS;
}

/** True when a time-window code may last `hours`. */
export function isTimeWindowLength(hours: number): boolean {
  return TIME_WINDOW_HOURS.includes(hours);
}

function classOf(kind: PasscodeKind, hours: number): PasscodeClass | undefined {
  return CLASSES.find((c) => c.kind === kind && c.hours === hours);
}

function checkKey(key: Uint8Array): void {
  if (!(key instanceof Uint8Array) || key.length !== KEY_BYTES) {
    throw new PasscodeError(`the passcode key must be ${KEY_BYTES} bytes`);
  }
}

/** The MAC of a window, reduced into [0, MAC_SPACE) (bias ≤ MAC_SPACE / 2^64 ≈ 2^-37.7). */
function macOf(key: Uint8Array, kind: PasscodeKind, hours: number, counter: number, startHour: number): number {
  const message = Buffer.alloc(MAC_LABEL.length + 9);
  MAC_LABEL.copy(message, 0);
  message.writeUInt8(KIND_BYTE[kind], 4);
  message.writeUInt16BE(hours, 5);
  message.writeUInt16BE(counter, 7);
  message.writeUInt32BE(startHour, 9);
  const digest = createHmac('sha256', key).update(message).digest();
  return Number(digest.readBigUInt64BE(0) % BigInt(MAC_SPACE));
}

/** A passcode reference as one string (maps and sets of used or revoked codes). */
export function passcodeRefKey(ref: PasscodeRef): string {
  return `${ref.kind}/${ref.counter}/${ref.validFrom}/${ref.validUntil}`;
}

/** The whole-hour window a spec asks for; throws PasscodeError naming what is wrong. */
export function passcodeWindow(spec: Pick<PasscodeSpec, 'kind' | 'validFrom' | 'validUntil'>): {
  validFrom: number;
  validUntil: number;
} {
  if (!PASSCODE_KINDS.includes(spec.kind)) throw new PasscodeError('kind must be one-time or time-window');
  const { validFrom } = spec;
  if (!Number.isSafeInteger(validFrom) || validFrom % HOUR_MS !== 0 || validFrom < LOCK_PASSCODE_EPOCH_MS) {
    throw new PasscodeError('validFrom must be a whole hour (ms) at or after 2024-01-01T00:00Z');
  }
  const startHour = (validFrom - LOCK_PASSCODE_EPOCH_MS) / HOUR_MS;
  if (startHour > 0xffff_ffff - 168) throw new PasscodeError('validFrom is too far in the future');
  if (spec.kind === 'one-time') {
    const validUntil = validFrom + ONE_TIME_HOURS * HOUR_MS;
    if (spec.validUntil !== undefined && spec.validUntil !== validUntil) {
      throw new PasscodeError(`a one-time code is valid for ${ONE_TIME_HOURS} hours from validFrom: omit validUntil`);
    }
    return { validFrom, validUntil };
  }
  const validUntil = spec.validUntil;
  if (validUntil === undefined || !Number.isSafeInteger(validUntil) || validUntil % HOUR_MS !== 0) {
    throw new PasscodeError('validUntil must be a whole hour (ms)');
  }
  if (!isTimeWindowLength((validUntil - validFrom) / HOUR_MS)) {
    throw new PasscodeError('a time window must last 1 to 24 hours or 2 to 7 whole days');
  }
  return { validFrom, validUntil };
}

/** Issues the code of a spec (deterministic: the same key and spec give the same code). */
export function issuePasscode(key: Uint8Array, spec: PasscodeSpec): IssuedPasscode {
  checkKey(key);
  const { validFrom, validUntil } = passcodeWindow(spec);
  const limit = countersFor(spec.kind);
  if (!Number.isInteger(spec.counter) || spec.counter < 0 || spec.counter >= limit) {
    throw new PasscodeError(`counter must be an integer from 0 to ${limit - 1}`);
  }
  const hours = (validUntil - validFrom) / HOUR_MS;
  const cls = classOf(spec.kind, hours)!;
  const startHour = (validFrom - LOCK_PASSCODE_EPOCH_MS) / HOUR_MS;
  const payload = cls.offset + spec.counter * hours + (startHour % hours);
  const value = macOf(key, spec.kind, hours, spec.counter, startHour) * PAYLOAD_SPACE + payload;
  return {
    code: String(value).padStart(PASSCODE_DIGITS, '0'),
    kind: spec.kind,
    counter: spec.counter,
    validFrom,
    validUntil,
  };
}

/** What the lock remembers about codes: revoked ones, and one-time codes already used. */
export interface PasscodeState {
  isRevoked(ref: PasscodeRef): boolean;
  isUsed(ref: PasscodeRef): boolean;
  /** Called by verifyPasscode when a one-time code opens the lock. */
  markUsed(ref: PasscodeRef): void;
}

export type PasscodeVerdict =
  | ({ readonly ok: true } & PasscodeRef)
  /**
   * `malformed`: not 12 digits; `invalid`: no code of this lock valid now (wrong, expired, not yet
   * valid, another lock's: the lock cannot tell these apart); `revoked`; `used` (a one-time code again).
   */
  | { readonly ok: false; readonly reason: 'malformed' | 'invalid' | 'revoked' | 'used' };

/**
 * The lock's check of a typed code at time `now` (ms): one HMAC, no search. Never throws on any input
 * code; a one-time code that opens the lock is marked used in `state`.
 */
export function verifyPasscode(key: Uint8Array, code: unknown, now: number, state: PasscodeState): PasscodeVerdict {
  checkKey(key);
  if (typeof code !== 'string' || !CODE_PATTERN.test(code)) return { ok: false, reason: 'malformed' };
  const value = Number(code);
  const payload = value % PAYLOAD_SPACE;
  const mac = Math.floor(value / PAYLOAD_SPACE);
  if (mac >= MAC_SPACE || !Number.isFinite(now)) return { ok: false, reason: 'invalid' };
  const cls = CLASSES.find((c) => payload >= c.offset && payload < c.offset + c.hours * c.counters)!;
  const index = payload - cls.offset;
  const counter = Math.floor(index / cls.hours);
  const residue = index % cls.hours;
  const nowHour = Math.floor((now - LOCK_PASSCODE_EPOCH_MS) / HOUR_MS);
  // The one start hour in (now − ℓ, now] with this residue.
  const startHour = nowHour - ((((nowHour - residue) % cls.hours) + cls.hours) % cls.hours);
  if (startHour < 0 || startHour > 0xffff_ffff) return { ok: false, reason: 'invalid' };
  if (macOf(key, cls.kind, cls.hours, counter, startHour) !== mac) return { ok: false, reason: 'invalid' };
  const validFrom = LOCK_PASSCODE_EPOCH_MS + startHour * HOUR_MS;
  const ref: PasscodeRef = { kind: cls.kind, counter, validFrom, validUntil: validFrom + cls.hours * HOUR_MS };
  if (state.isRevoked(ref)) return { ok: false, reason: 'revoked' };
  if (cls.kind === 'one-time') {
    if (state.isUsed(ref)) return { ok: false, reason: 'used' };
    state.markUsed(ref);
  }
  return { ok: true, ...ref };
}

/**
 * A lock's passcode memory: entries are kept until their window ends (a code past its window fails
 * anyway), so the state stays small.
 */
export class LockPasscodeState implements PasscodeState {
  readonly #revoked = new Map<string, number>();
  readonly #used = new Map<string, number>();

  isRevoked(ref: PasscodeRef): boolean {
    return this.#revoked.has(passcodeRefKey(ref));
  }

  isUsed(ref: PasscodeRef): boolean {
    return this.#used.has(passcodeRefKey(ref));
  }

  markUsed(ref: PasscodeRef): void {
    this.#used.set(passcodeRefKey(ref), ref.validUntil);
  }

  revoke(ref: PasscodeRef): void {
    this.#revoked.set(passcodeRefKey(ref), ref.validUntil);
  }

  /** Forgets entries whose window has ended. */
  purge(now: number): void {
    for (const map of [this.#revoked, this.#used]) {
      for (const [key, until] of map) if (until <= now) map.delete(key);
    }
  }

  get size(): { revoked: number; used: number } {
    return { revoked: this.#revoked.size, used: this.#used.size };
  }
}

function parseRef(value: unknown): PasscodeRef | null {
  if (typeof value !== 'object' || value === null) return null;
  const { kind, counter, validFrom, validUntil } = value as Record<string, unknown>;
  if (typeof kind !== 'string' || !PASSCODE_KINDS.includes(kind as PasscodeKind)) return null;
  if (typeof counter !== 'number' || typeof validFrom !== 'number' || typeof validUntil !== 'number') return null;
  try {
    const window = passcodeWindow({ kind: kind as PasscodeKind, validFrom, validUntil });
    if (!Number.isInteger(counter) || counter < 0 || counter >= countersFor(kind as PasscodeKind)) return null;
    return { kind: kind as PasscodeKind, counter, ...window };
  } catch {
    return null;
  }
}

/** Most revoked codes one list may carry (revocations end with their windows, at most 7 days). */
export const MAX_REVOCATIONS = 4096;

/**
 * The payload of devices/{id}/commands/passcode-revoke: every revoked code whose window has not ended
 * (`{"revoked":[{kind,counter,validFrom,validUntil}]}`), published retained so a lock that was offline
 * receives it when it subscribes.
 */
export function encodePasscodeRevocations(revoked: readonly PasscodeRef[]): Buffer {
  return Buffer.from(
    JSON.stringify({
      revoked: revoked.map((r) => ({
        kind: r.kind,
        counter: r.counter,
        validFrom: r.validFrom,
        validUntil: r.validUntil,
      })),
    }),
  );
}

/** Parses a revocation list; null when it is malformed (then the lock keeps what it has). */
export function parsePasscodeRevocations(payload: Uint8Array | string): PasscodeRef[] | null {
  const text = typeof payload === 'string' ? payload : Buffer.from(payload).toString('utf8');
  if (text.length > MAX_REVOCATIONS * 160) return null;
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return null;
  }
  const list = (value as { revoked?: unknown } | null)?.revoked;
  if (!Array.isArray(list) || list.length > MAX_REVOCATIONS) return null;
  const refs: PasscodeRef[] = [];
  for (const item of list) {
    const ref = parseRef(item);
    if (!ref) return null;
    refs.push(ref);
  }
  return refs;
}

/** What a lock reports on devices/{id}/events when a code opened it (`at`: the lock's clock, ms). */
export interface PasscodeUsedEvent extends PasscodeRef {
  readonly type: typeof PASSCODE_USED_EVENT;
  readonly at: number;
}

export function encodePasscodeUsed(ref: PasscodeRef, at: number): Buffer {
  const event: PasscodeUsedEvent = {
    type: PASSCODE_USED_EVENT,
    kind: ref.kind,
    counter: ref.counter,
    validFrom: ref.validFrom,
    validUntil: ref.validUntil,
    at,
  };
  return Buffer.from(JSON.stringify(event));
}

/**
 * Parses a use report: the event when well-formed, `null` when the value is no passcode-used event at
 * all (another event type), or a string saying what is wrong with a malformed one.
 */
export function parsePasscodeUsed(value: unknown): PasscodeUsedEvent | string | null {
  if (typeof value !== 'object' || value === null || (value as { type?: unknown }).type !== PASSCODE_USED_EVENT) {
    return null;
  }
  const ref = parseRef(value);
  if (!ref) return 'passcode-used needs kind, counter, validFrom and validUntil of an issuable code';
  const at = (value as { at?: unknown }).at;
  if (typeof at !== 'number' || !Number.isSafeInteger(at) || at < LOCK_PASSCODE_EPOCH_MS) {
    return 'passcode-used needs at: the time of use in ms';
  }
  if (at < ref.validFrom || at >= ref.validUntil) return 'passcode-used: at lies outside the code window';
  return { type: PASSCODE_USED_EVENT, ...ref, at };
}
