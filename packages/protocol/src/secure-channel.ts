// Secure channel for devices that cannot do TLS (CHAN-3, CHAN-4; Gizwits 2.2.1.6, S 6.3.3e-f): an
// authenticated key exchange, then AEAD frames with the device ID, key epoch, sequence number and
// timestamp in the associated data. The byte formats are in docs/protocol.md ("Secure channel");
// vectors/secure-channel.json holds known-answer vectors, reproduced independently by
// scripts/check-protocol-vectors.py for the intl suite.
//
//   suite  curve (ECDH)               hash / HMAC / HKDF   frame AEAD
//   intl   P-256 (SEC 1, prime256v1)  SHA-256              AES-128-GCM
//   sm     SM2 curve (GB/T 32918.5)   SM3                  SM4-GCM (GB/T 32907)
//
// The `sm` suite runs plain ECDH on the SM2 curve, not the SM2 key-exchange protocol of GB/T 32918.3
// (which needs static key pairs on both sides; our devices hold a secret, not a key pair).
//
// Handshake (one round trip, 120-byte messages):
//   psk     = HKDF-H(ikm = UTF-8 device secret, salt = "castellan", info = "castellan secure channel psk v1", 32)
//   hello   = 01 01 suite deviceId(12) ts(8) Ed(65) ‖ HMAC-H(psk, those 88 bytes)          device → platform
//   reply   = 01 02 suite deviceId(12) ts(8) Ep(65) ‖ HMAC-H(confirmKey, th)               platform → device
//   Z1 = ECDH(ed, Ps) (device ephemeral × platform static), Z2 = ECDH(ed, Ep) (ephemeral × ephemeral)
//   th = H(hello ‖ first 88 bytes of reply)
//   okm = HKDF-H(ikm = Z1 ‖ Z2, salt = psk, info = "castellan secure channel v1" ‖ th, 64)
//       = device→platform key (16) ‖ platform→device key (16) ‖ confirmKey (32)
// The psk authenticates the device (hello MAC, key schedule), Z1 the platform (only the holder of the
// pinned static key computes it), Z2 gives forward secrecy; a replayed hello yields a session whose keys
// the replayer cannot compute, so the platform keeps no hello state.
//
// Frames: header (35 bytes, the AEAD's associated data) ‖ ciphertext ‖ tag (16); nonce = epoch(4) ‖ seq(8).
// Keys rotate (dynamic keys): the sender moves to epoch e+1 with k' = HKDF-H(k, "", "castellan secure
// channel ratchet v1", 16) after rotateAfterFrames frames or rotateAfterMs; the receiver follows on the
// first authentic frame of e+1 and accepts frames of e only for graceMs afterwards.
import {
  createECDH,
  createCipheriv,
  createDecipheriv,
  createHash,
  createHmac,
  hkdfSync,
  timingSafeEqual,
} from 'node:crypto';
import type { CipherGCMTypes } from 'node:crypto';
import { sm2 } from 'sm-crypto-v2';
import type { SuiteName } from './crypto-suites.ts';
import { isDeviceId } from './device-id.ts';

export const SECURE_CHANNEL_VERSION = 1;
export const SECURE_CHANNEL_HELLO_BYTES = 120;
export const SECURE_CHANNEL_HEADER_BYTES = 35;
export const SECURE_CHANNEL_TAG_BYTES = 16;
/** Largest plaintext of one frame. */
export const SECURE_CHANNEL_MAX_PLAINTEXT = 65_536;
/** Frames behind the highest sequence number seen that are still accepted once (RFC 4303 §3.4.3 style). */
export const SECURE_CHANNEL_REPLAY_WINDOW = 64;

export const SECURE_CHANNEL_MESSAGE = { hello: 0x01, reply: 0x02, deviceFrame: 0x03, platformFrame: 0x04 } as const;
export const SECURE_CHANNEL_SUITE_IDS: Readonly<Record<SuiteName, number>> = { intl: 0x01, sm: 0x02 };

const PSK_SALT = 'castellan';
const PSK_INFO = 'castellan secure channel psk v1';
const SESSION_INFO = 'castellan secure channel v1';
const RATCHET_INFO = 'castellan secure channel ratchet v1';
const MAX_EPOCH = 0xffff_ffff;
const MAX_SEQ = 0xffff_ffff_ffff_ffffn;
const WINDOW_MASK = (1n << BigInt(SECURE_CHANNEL_REPLAY_WINDOW)) - 1n;

export type SecureChannelRefusal =
  | 'malformed' // not a message of this protocol (length, type, version, bad public key)
  | 'unsupported-suite' // a suite other than the session's or not offered
  | 'wrong-device' // the device ID in the authenticated data is not the session's device (CHAN-4)
  | 'unknown-epoch' // an epoch more than one ahead of the receiver's
  | 'expired-epoch' // an older epoch, or the previous one after its grace window
  | 'key-expired' // the sender kept a key past its frame or time budget instead of rotating
  | 'replayed' // a sequence number already accepted
  | 'too-old' // a sequence number behind the replay window (reordered beyond the window)
  | 'forged' // the tag or MAC does not verify
  | 'stale'; // the timestamp is outside the tolerance

export class SecureChannelError extends Error {
  readonly code = 'ERR_SECURE_CHANNEL';
  readonly reason: SecureChannelRefusal;
  constructor(reason: SecureChannelRefusal, message: string = reason) {
    super(message);
    this.reason = reason;
  }
}

export interface ChannelKeyPair {
  /** 32-byte private scalar. */
  privateKey: Buffer;
  /** 65-byte uncompressed point 04 ‖ X ‖ Y. */
  publicKey: Buffer;
}

interface SuiteOps {
  id: number;
  hash: 'sha256' | 'sm3';
  cipher: CipherGCMTypes;
}

const OPS: Readonly<Record<SuiteName, SuiteOps>> = {
  intl: { id: 0x01, hash: 'sha256', cipher: 'aes-128-gcm' },
  // @types/node lists only AES names as GCM ciphers; sm4-gcm is one too under OpenSSL 3.
  sm: { id: 0x02, hash: 'sm3', cipher: 'sm4-gcm' as CipherGCMTypes },
};

function suiteOf(id: number): SuiteName | null {
  if (id === 0x01) return 'intl';
  if (id === 0x02) return 'sm';
  return null;
}

const h = (suite: SuiteName, ...parts: Uint8Array[]): Buffer => {
  const hash = createHash(OPS[suite].hash);
  for (const part of parts) hash.update(part);
  return hash.digest();
};
const hmac = (suite: SuiteName, key: Uint8Array, data: Uint8Array): Buffer =>
  createHmac(OPS[suite].hash, key).update(data).digest();
const hkdf = (suite: SuiteName, ikm: Uint8Array, salt: Uint8Array | string, info: Uint8Array | string, n: number) =>
  Buffer.from(hkdfSync(OPS[suite].hash, ikm, salt, info, n));
const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

function checkPrivateKey(privateKey: Uint8Array): void {
  if (privateKey.length !== 32) throw new SecureChannelError('malformed', 'a private key is 32 bytes');
}

function checkPublicKey(publicKey: Uint8Array): void {
  if (publicKey.length !== 65 || publicKey[0] !== 0x04) {
    throw new SecureChannelError('malformed', 'a public key is 65 bytes, 04 ‖ X ‖ Y');
  }
}

/** The public key of a private scalar on the suite's curve. */
export function channelPublicKey(suite: SuiteName, privateKey: Uint8Array): Buffer {
  checkPrivateKey(privateKey);
  try {
    if (suite === 'intl') {
      const ecdh = createECDH('prime256v1');
      ecdh.setPrivateKey(privateKey);
      return ecdh.getPublicKey();
    }
    return Buffer.from(sm2.getPublicKeyFromPrivateKey(hex(privateKey)), 'hex');
  } catch {
    throw new SecureChannelError('malformed', 'not a private key on the curve');
  }
}

export function generateChannelKeyPair(suite: SuiteName): ChannelKeyPair {
  if (suite === 'intl') {
    const ecdh = createECDH('prime256v1');
    ecdh.generateKeys();
    // getPrivateKey() drops leading zero bytes (about 1 key in 256): a private key is always 32 bytes.
    const privateKey = ecdh.getPrivateKey();
    return {
      privateKey: Buffer.concat([Buffer.alloc(32 - privateKey.length), privateKey]),
      publicKey: ecdh.getPublicKey(),
    };
  }
  // Never seeded: sm-crypto-v2's seeded generation is broken (see crypto-suites.ts).
  const pair = sm2.generateKeyPairHex();
  return {
    privateKey: Buffer.from(pair.privateKey.padStart(64, '0'), 'hex'),
    publicKey: Buffer.from(pair.publicKey, 'hex'),
  };
}

/** ECDH: the 32-byte X coordinate of privateKey × publicKey; refuses points not on the curve. */
export function channelEcdh(suite: SuiteName, privateKey: Uint8Array, publicKey: Uint8Array): Buffer {
  checkPrivateKey(privateKey);
  checkPublicKey(publicKey);
  try {
    if (suite === 'intl') {
      const ecdh = createECDH('prime256v1');
      ecdh.setPrivateKey(privateKey);
      return ecdh.computeSecret(publicKey);
    }
    const point = sm2.ecdh(hex(privateKey), hex(publicKey), false);
    return Buffer.from(point.subarray(1, 33));
  } catch {
    throw new SecureChannelError('malformed', 'the public key is not a point on the curve');
  }
}

/** The 32-byte pre-shared key both sides derive from the device secret. */
export function channelPsk(suite: SuiteName, secret: string | Uint8Array): Buffer {
  return hkdf(suite, typeof secret === 'string' ? Buffer.from(secret, 'utf8') : secret, PSK_SALT, PSK_INFO, 32);
}

/** The next epoch's key: HKDF-H(ikm = key, salt = empty, info = "castellan secure channel ratchet v1", 16). */
export function ratchetChannelKey(suite: SuiteName, key: Uint8Array): Buffer {
  return hkdf(suite, key, Buffer.alloc(0), RATCHET_INFO, 16);
}

function deviceIdBytes(deviceId: string): Buffer {
  if (!isDeviceId(deviceId)) throw new SecureChannelError('malformed', 'deviceId is not a device ID');
  return Buffer.from(deviceId, 'hex');
}

function u64(value: number | bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(value));
  return b;
}

function checkTimestamp(ts: number): void {
  if (!Number.isSafeInteger(ts) || ts < 0)
    throw new SecureChannelError('malformed', 'a timestamp is ms since the epoch');
}

export interface ParsedHandshakeMessage {
  type: 'hello' | 'reply';
  suite: SuiteName;
  deviceId: string;
  /** Milliseconds since the epoch. */
  ts: number;
  ephemeralPublicKey: Buffer;
  /** The hello's MAC or the reply's confirmation. */
  mac: Buffer;
  /** The 88 bytes the MAC covers. */
  body: Buffer;
  raw: Buffer;
}

/** Parses a hello or a reply; throws SecureChannelError('malformed' | 'unsupported-suite'), nothing else. */
export function parseHandshakeMessage(bytes: Uint8Array): ParsedHandshakeMessage {
  if (!(bytes instanceof Uint8Array) || bytes.length !== SECURE_CHANNEL_HELLO_BYTES) {
    throw new SecureChannelError('malformed', 'a handshake message is 120 bytes');
  }
  const raw = Buffer.from(bytes);
  if (raw[0] !== SECURE_CHANNEL_VERSION) throw new SecureChannelError('malformed', 'unknown version');
  const type = raw[1] === 0x01 ? 'hello' : raw[1] === 0x02 ? 'reply' : null;
  if (type === null) throw new SecureChannelError('malformed', 'not a handshake message');
  const suite = suiteOf(raw[2]!);
  if (suite === null) throw new SecureChannelError('unsupported-suite', 'unknown suite');
  const ts = raw.readBigUInt64BE(15);
  if (ts > BigInt(Number.MAX_SAFE_INTEGER)) throw new SecureChannelError('malformed', 'timestamp out of range');
  const ephemeralPublicKey = raw.subarray(23, 88);
  checkPublicKey(ephemeralPublicKey);
  return {
    type,
    suite,
    deviceId: raw.subarray(3, 15).toString('hex'),
    ts: Number(ts),
    ephemeralPublicKey,
    mac: raw.subarray(88),
    body: raw.subarray(0, 88),
    raw,
  };
}

function handshakeBody(type: number, suite: SuiteName, deviceId: string, ts: number, publicKey: Uint8Array): Buffer {
  checkTimestamp(ts);
  checkPublicKey(publicKey);
  return Buffer.concat([
    Buffer.from([SECURE_CHANNEL_VERSION, type, OPS[suite].id]),
    deviceIdBytes(deviceId),
    u64(ts),
    publicKey,
  ]);
}

export interface SessionOptions {
  /** Sender rotates after this many frames in one epoch; the receiver refuses more (default 1,000). */
  rotateAfterFrames?: number;
  /** Sender rotates when an epoch is this old; the receiver refuses it after this plus graceMs (default 10 min). */
  rotateAfterMs?: number;
  /** How long frames of the previous epoch stay acceptable after the next one (default 30 s). */
  graceMs?: number;
  /** Frames and handshakes whose timestamp is further than this from now are stale (default 300 s). */
  toleranceMs?: number;
}

const DEFAULTS: Required<SessionOptions> = {
  rotateAfterFrames: 1_000,
  rotateAfterMs: 600_000,
  graceMs: 30_000,
  toleranceMs: 300_000,
};

interface SessionKeys {
  deviceToPlatform: Buffer;
  platformToDevice: Buffer;
  confirmKey: Buffer;
  transcriptHash: Buffer;
}

function deriveSessionKeys(suite: SuiteName, psk: Buffer, z1: Buffer, z2: Buffer, hello: Buffer, replyBody: Buffer) {
  const transcriptHash = h(suite, hello, replyBody);
  const okm = hkdf(suite, Buffer.concat([z1, z2]), psk, Buffer.concat([Buffer.from(SESSION_INFO), transcriptHash]), 64);
  return {
    deviceToPlatform: okm.subarray(0, 16),
    platformToDevice: okm.subarray(16, 32),
    confirmKey: okm.subarray(32, 64),
    transcriptHash,
  } satisfies SessionKeys;
}

function macEqual(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

export interface CreateHelloInput {
  suite: SuiteName;
  deviceId: string;
  secret: string | Uint8Array;
  now?: number;
  /** Fixed ephemeral key (known-answer tests only); a fresh one by default. */
  ephemeral?: ChannelKeyPair;
}

/** Device side, step 1: the hello and the ephemeral key to keep until the reply. */
export function createHello(input: CreateHelloInput): { hello: Buffer; ephemeral: ChannelKeyPair } {
  const ephemeral = input.ephemeral ?? generateChannelKeyPair(input.suite);
  const body = handshakeBody(
    0x01,
    input.suite,
    input.deviceId,
    Math.floor(input.now ?? Date.now()),
    ephemeral.publicKey,
  );
  return { hello: Buffer.concat([body, hmac(input.suite, channelPsk(input.suite, input.secret), body)]), ephemeral };
}

export interface AcceptHelloInput {
  /** The parsed hello (parse first to learn the device ID, then look its secret up). */
  hello: ParsedHandshakeMessage;
  /** The device secret; or `psk` instead, already derived (the platform keeps secrets in one service). */
  secret?: string | Uint8Array;
  /** channelPsk(suite, secret) of the hello's suite, when the caller derived it. */
  psk?: Uint8Array;
  /** The platform's static key pair for the hello's suite (its public key is pinned in devices). */
  platformKey: ChannelKeyPair;
  now?: number;
  /** Fixed ephemeral key (known-answer tests only). */
  ephemeral?: ChannelKeyPair;
  options?: SessionOptions;
}

/** Platform side: verifies a hello and answers it; the session is ready for frames at once. */
export function acceptHello(input: AcceptHelloInput): { reply: Buffer; session: SecureChannelSession } {
  const { hello } = input;
  if (hello.type !== 'hello') throw new SecureChannelError('malformed', 'not a hello');
  const suite = hello.suite;
  const options = { ...DEFAULTS, ...input.options };
  const now = Math.floor(input.now ?? Date.now());
  let psk: Buffer;
  if (input.psk !== undefined) psk = Buffer.from(input.psk);
  else if (input.secret !== undefined) psk = channelPsk(suite, input.secret);
  else throw new TypeError('acceptHello needs secret or psk');
  if (psk.length !== 32) throw new TypeError('a psk is 32 bytes');
  if (!macEqual(hmac(suite, psk, hello.body), hello.mac)) throw new SecureChannelError('forged', 'hello MAC');
  if (Math.abs(hello.ts - now) > options.toleranceMs) throw new SecureChannelError('stale', 'hello timestamp');
  const ephemeral = input.ephemeral ?? generateChannelKeyPair(suite);
  const z1 = channelEcdh(suite, input.platformKey.privateKey, hello.ephemeralPublicKey);
  const z2 = channelEcdh(suite, ephemeral.privateKey, hello.ephemeralPublicKey);
  const body = handshakeBody(0x02, suite, hello.deviceId, now, ephemeral.publicKey);
  const keys = deriveSessionKeys(suite, psk, z1, z2, hello.raw, body);
  const reply = Buffer.concat([body, hmac(suite, keys.confirmKey, keys.transcriptHash)]);
  const session = new SecureChannelSession({
    role: 'platform',
    suite,
    deviceId: hello.deviceId,
    sendKey: keys.platformToDevice,
    receiveKey: keys.deviceToPlatform,
    now,
    options,
  });
  return { reply, session };
}

export interface CompleteHandshakeInput {
  suite: SuiteName;
  deviceId: string;
  secret: string | Uint8Array;
  hello: Buffer;
  ephemeral: ChannelKeyPair;
  reply: Uint8Array;
  /** The platform's pinned static public key for this suite. */
  platformPublicKey: Uint8Array;
  now?: number;
  options?: SessionOptions;
}

/** Device side, step 2: checks the platform's reply (it proves the static key) and opens the session. */
export function completeHandshake(input: CompleteHandshakeInput): SecureChannelSession {
  const reply = parseHandshakeMessage(input.reply);
  if (reply.type !== 'reply') throw new SecureChannelError('malformed', 'not a reply');
  if (reply.suite !== input.suite) throw new SecureChannelError('unsupported-suite', 'reply suite');
  if (reply.deviceId !== input.deviceId) throw new SecureChannelError('wrong-device', 'reply device');
  const options = { ...DEFAULTS, ...input.options };
  const now = Math.floor(input.now ?? Date.now());
  const psk = channelPsk(input.suite, input.secret);
  const z1 = channelEcdh(input.suite, input.ephemeral.privateKey, input.platformPublicKey);
  const z2 = channelEcdh(input.suite, input.ephemeral.privateKey, reply.ephemeralPublicKey);
  const keys = deriveSessionKeys(input.suite, psk, z1, z2, input.hello, reply.body);
  if (!macEqual(hmac(input.suite, keys.confirmKey, keys.transcriptHash), reply.mac)) {
    throw new SecureChannelError('forged', 'reply confirmation');
  }
  if (Math.abs(reply.ts - now) > options.toleranceMs) throw new SecureChannelError('stale', 'reply timestamp');
  return new SecureChannelSession({
    role: 'device',
    suite: input.suite,
    deviceId: input.deviceId,
    sendKey: keys.deviceToPlatform,
    receiveKey: keys.platformToDevice,
    now,
    options,
  });
}

export interface FrameHeader {
  direction: 'device-to-platform' | 'platform-to-device';
  suite: SuiteName;
  deviceId: string;
  epoch: number;
  seq: bigint;
  /** Milliseconds since the epoch. */
  ts: number;
}

/** The 35-byte header (the AEAD's associated data). */
export function encodeFrameHeader(header: FrameHeader): Buffer {
  checkTimestamp(header.ts);
  if (!Number.isInteger(header.epoch) || header.epoch < 0 || header.epoch > MAX_EPOCH) {
    throw new SecureChannelError('malformed', 'epoch out of range');
  }
  if (header.seq < 0n || header.seq > MAX_SEQ) throw new SecureChannelError('malformed', 'seq out of range');
  const b = Buffer.alloc(SECURE_CHANNEL_HEADER_BYTES);
  b[0] = SECURE_CHANNEL_VERSION;
  b[1] = header.direction === 'device-to-platform' ? 0x03 : 0x04;
  b[2] = OPS[header.suite].id;
  deviceIdBytes(header.deviceId).copy(b, 3);
  b.writeUInt32BE(header.epoch, 15);
  b.writeBigUInt64BE(header.seq, 19);
  b.writeBigUInt64BE(BigInt(header.ts), 27);
  return b;
}

/** Parses a frame's header; throws SecureChannelError('malformed' | 'unsupported-suite'), nothing else. */
export function parseFrameHeader(frame: Uint8Array): FrameHeader {
  if (!(frame instanceof Uint8Array)) throw new SecureChannelError('malformed', 'a frame is bytes');
  if (frame.length < SECURE_CHANNEL_HEADER_BYTES + SECURE_CHANNEL_TAG_BYTES) {
    throw new SecureChannelError('malformed', 'frame too short');
  }
  if (frame.length > SECURE_CHANNEL_HEADER_BYTES + SECURE_CHANNEL_MAX_PLAINTEXT + SECURE_CHANNEL_TAG_BYTES) {
    throw new SecureChannelError('malformed', 'frame too long');
  }
  const b = Buffer.from(frame.buffer, frame.byteOffset, frame.byteLength);
  if (b[0] !== SECURE_CHANNEL_VERSION) throw new SecureChannelError('malformed', 'unknown version');
  const direction = b[1] === 0x03 ? 'device-to-platform' : b[1] === 0x04 ? 'platform-to-device' : null;
  if (direction === null) throw new SecureChannelError('malformed', 'not a frame');
  const suite = suiteOf(b[2]!);
  if (suite === null) throw new SecureChannelError('unsupported-suite', 'unknown suite');
  const ts = b.readBigUInt64BE(27);
  if (ts > BigInt(Number.MAX_SAFE_INTEGER)) throw new SecureChannelError('malformed', 'timestamp out of range');
  return {
    direction,
    suite,
    deviceId: b.subarray(3, 15).toString('hex'),
    epoch: b.readUInt32BE(15),
    seq: b.readBigUInt64BE(19),
    ts: Number(ts),
  };
}

function frameNonce(epoch: number, seq: bigint): Buffer {
  const n = Buffer.alloc(12);
  n.writeUInt32BE(epoch, 0);
  n.writeBigUInt64BE(seq, 4);
  return n;
}

/**
 * Everything a session holds, as plain JSON-serialisable values (keys and the window as hex, big
 * integers as decimal strings), so a session can live in a database between frames and move between
 * processes. exportState() after each frame, SecureChannelSession.fromState() before the next; the
 * caller keeps the keys secret (e.g. sealed at rest) and stores each new state with a compare-and-set
 * so two processes never both accept the same frame.
 */
export interface SecureChannelSessionState {
  v: 1;
  role: 'device' | 'platform';
  suite: SuiteName;
  deviceId: string;
  options: Required<SessionOptions>;
  sendKey: string;
  sendEpoch: number;
  sendSeq: string;
  sendEpochFrames: number;
  sendEpochStart: number;
  receiveKey: string;
  receiveEpoch: number;
  receiveEpochFrames: number;
  receiveEpochStart: number;
  previousKey: string | null;
  previousUntil: number;
  /** Highest accepted sequence number, decimal; "-1" before the first frame. */
  top: string;
  /** Replay-window bitmap (bit i = top − i accepted), lower-case hex. */
  seen: string;
}

interface SessionInit {
  role: 'device' | 'platform';
  suite: SuiteName;
  deviceId: string;
  sendKey: Buffer;
  receiveKey: Buffer;
  now: number;
  options: Required<SessionOptions>;
}

/** One direction pair of an established channel. Not thread-shared: one per device connection. */
export class SecureChannelSession {
  readonly role: 'device' | 'platform';
  readonly suite: SuiteName;
  readonly deviceId: string;
  readonly options: Readonly<Required<SessionOptions>>;
  #sendKey: Buffer;
  #sendEpoch = 0;
  #sendSeq = 0n;
  #sendEpochFrames = 0;
  #sendEpochStart: number;
  #receiveKey: Buffer;
  #receiveEpoch = 0;
  #receiveEpochFrames = 0;
  #receiveEpochStart: number;
  #previousKey: Buffer | null = null;
  #previousUntil = 0;
  #top = -1n;
  #seen = 0n;

  constructor(init: SessionInit) {
    this.role = init.role;
    this.suite = init.suite;
    this.deviceId = init.deviceId;
    this.options = init.options;
    this.#sendKey = init.sendKey;
    this.#receiveKey = init.receiveKey;
    this.#sendEpochStart = init.now;
    this.#receiveEpochStart = init.now;
  }

  get sendEpoch(): number {
    return this.#sendEpoch;
  }

  get receiveEpoch(): number {
    return this.#receiveEpoch;
  }

  /** The whole state as plain values (see SecureChannelSessionState); the session stays usable. */
  exportState(): SecureChannelSessionState {
    return {
      v: 1,
      role: this.role,
      suite: this.suite,
      deviceId: this.deviceId,
      options: { ...this.options },
      sendKey: hex(this.#sendKey),
      sendEpoch: this.#sendEpoch,
      sendSeq: this.#sendSeq.toString(),
      sendEpochFrames: this.#sendEpochFrames,
      sendEpochStart: this.#sendEpochStart,
      receiveKey: hex(this.#receiveKey),
      receiveEpoch: this.#receiveEpoch,
      receiveEpochFrames: this.#receiveEpochFrames,
      receiveEpochStart: this.#receiveEpochStart,
      previousKey: this.#previousKey === null ? null : hex(this.#previousKey),
      previousUntil: this.#previousUntil,
      top: this.#top.toString(),
      seen: this.#seen.toString(16),
    };
  }

  /** A session continuing exactly where exportState() left it; throws SecureChannelError('malformed') on a bad state. */
  static fromState(state: SecureChannelSessionState): SecureChannelSession {
    const bad = (what: string): never => {
      throw new SecureChannelError('malformed', `session state: ${what}`);
    };
    if (typeof state !== 'object' || state === null || state.v !== 1) bad('version');
    if (state.role !== 'device' && state.role !== 'platform') bad('role');
    if (state.suite !== 'intl' && state.suite !== 'sm') bad('suite');
    if (!isDeviceId(state.deviceId)) bad('deviceId');
    const key = (value: unknown, what: string): Buffer =>
      typeof value === 'string' && /^[0-9a-f]{32}$/.test(value) ? Buffer.from(value, 'hex') : bad(what);
    const int = (value: unknown, what: string, max = Number.MAX_SAFE_INTEGER): number =>
      Number.isSafeInteger(value) && (value as number) >= 0 && (value as number) <= max ? (value as number) : bad(what);
    const big = (value: unknown, what: string, min: bigint): bigint =>
      typeof value === 'string' &&
      /^-?[0-9]{1,20}$/.test(value) &&
      BigInt(value) >= min &&
      BigInt(value) <= MAX_SEQ + 1n
        ? BigInt(value)
        : bad(what);
    const o = state.options;
    if (typeof o !== 'object' || o === null) bad('options');
    const options: Required<SessionOptions> = {
      rotateAfterFrames: int(o.rotateAfterFrames, 'options.rotateAfterFrames'),
      rotateAfterMs: int(o.rotateAfterMs, 'options.rotateAfterMs'),
      graceMs: int(o.graceMs, 'options.graceMs'),
      toleranceMs: int(o.toleranceMs, 'options.toleranceMs'),
    };
    const session = new SecureChannelSession({
      role: state.role,
      suite: state.suite,
      deviceId: state.deviceId,
      sendKey: key(state.sendKey, 'sendKey'),
      receiveKey: key(state.receiveKey, 'receiveKey'),
      now: 0,
      options,
    });
    session.#sendEpoch = int(state.sendEpoch, 'sendEpoch', MAX_EPOCH);
    session.#sendSeq = big(state.sendSeq, 'sendSeq', 0n);
    session.#sendEpochFrames = int(state.sendEpochFrames, 'sendEpochFrames');
    session.#sendEpochStart = int(state.sendEpochStart, 'sendEpochStart');
    session.#receiveEpoch = int(state.receiveEpoch, 'receiveEpoch', MAX_EPOCH);
    session.#receiveEpochFrames = int(state.receiveEpochFrames, 'receiveEpochFrames');
    session.#receiveEpochStart = int(state.receiveEpochStart, 'receiveEpochStart');
    session.#previousKey = state.previousKey === null ? null : key(state.previousKey, 'previousKey');
    session.#previousUntil = int(state.previousUntil, 'previousUntil');
    session.#top = big(state.top, 'top', -1n);
    if (typeof state.seen !== 'string' || !/^[0-9a-f]{1,16}$/.test(state.seen)) bad('seen');
    session.#seen = BigInt(`0x${state.seen}`);
    return session;
  }

  /** Seals one frame, rotating the sending key first when its frame or time budget is spent. */
  seal(plaintext: Uint8Array, now: number = Date.now()): Buffer {
    if (plaintext.length > SECURE_CHANNEL_MAX_PLAINTEXT)
      throw new SecureChannelError('malformed', 'plaintext too long');
    const ts = Math.floor(now);
    if (
      this.#sendEpochFrames >= this.options.rotateAfterFrames ||
      ts - this.#sendEpochStart >= this.options.rotateAfterMs
    ) {
      if (this.#sendEpoch === MAX_EPOCH)
        throw new SecureChannelError('key-expired', 'session exhausted: handshake again');
      this.#sendKey = ratchetChannelKey(this.suite, this.#sendKey);
      this.#sendEpoch += 1;
      this.#sendEpochFrames = 0;
      this.#sendEpochStart = ts;
    }
    if (this.#sendSeq > MAX_SEQ) throw new SecureChannelError('key-expired', 'session exhausted: handshake again');
    const header = encodeFrameHeader({
      direction: this.role === 'device' ? 'device-to-platform' : 'platform-to-device',
      suite: this.suite,
      deviceId: this.deviceId,
      epoch: this.#sendEpoch,
      seq: this.#sendSeq,
      ts,
    });
    const cipher = createCipheriv(OPS[this.suite].cipher, this.#sendKey, frameNonce(this.#sendEpoch, this.#sendSeq), {
      authTagLength: 16,
    });
    cipher.setAAD(header);
    const sealed = Buffer.concat([header, cipher.update(plaintext), cipher.final(), cipher.getAuthTag()]);
    this.#sendSeq += 1n;
    this.#sendEpochFrames += 1;
    return sealed;
  }

  /**
   * Opens one frame from the peer. Throws SecureChannelError with a reason for every refusal and
   * never anything else; the replay window and epoch move only for authentic, fresh frames.
   */
  open(frame: Uint8Array, now: number = Date.now()): Buffer {
    try {
      return this.#open(frame, Math.floor(now));
    } catch (error) {
      if (error instanceof SecureChannelError) throw error;
      throw new SecureChannelError('malformed', 'unreadable frame');
    }
  }

  #open(frame: Uint8Array, now: number): Buffer {
    const header = parseFrameHeader(frame);
    const expected = this.role === 'device' ? 'platform-to-device' : 'device-to-platform';
    if (header.direction !== expected) throw new SecureChannelError('malformed', 'frame of the wrong direction');
    if (header.suite !== this.suite) throw new SecureChannelError('unsupported-suite', 'not the session suite');
    if (header.deviceId !== this.deviceId) throw new SecureChannelError('wrong-device', 'device ID mismatch');
    let key: Buffer;
    let advance = false;
    if (header.epoch === this.#receiveEpoch) {
      if (
        this.#receiveEpochFrames >= this.options.rotateAfterFrames ||
        now - this.#receiveEpochStart > this.options.rotateAfterMs + this.options.graceMs
      ) {
        throw new SecureChannelError('key-expired', 'the sender did not rotate its key');
      }
      key = this.#receiveKey;
    } else if (header.epoch === this.#receiveEpoch + 1) {
      key = ratchetChannelKey(this.suite, this.#receiveKey);
      advance = true;
    } else if (header.epoch === this.#receiveEpoch - 1 && this.#previousKey !== null && now <= this.#previousUntil) {
      key = this.#previousKey;
    } else if (header.epoch < this.#receiveEpoch) {
      throw new SecureChannelError('expired-epoch', 'epoch no longer accepted');
    } else {
      throw new SecureChannelError('unknown-epoch', 'epoch too far ahead');
    }
    this.#checkWindow(header.seq);
    const bytes = Buffer.from(frame.buffer, frame.byteOffset, frame.byteLength);
    const aad = bytes.subarray(0, SECURE_CHANNEL_HEADER_BYTES);
    const decipher = createDecipheriv(OPS[this.suite].cipher, key, frameNonce(header.epoch, header.seq), {
      authTagLength: 16,
    });
    decipher.setAAD(aad);
    decipher.setAuthTag(bytes.subarray(bytes.length - SECURE_CHANNEL_TAG_BYTES));
    let plaintext: Buffer;
    try {
      plaintext = Buffer.concat([
        decipher.update(bytes.subarray(SECURE_CHANNEL_HEADER_BYTES, bytes.length - SECURE_CHANNEL_TAG_BYTES)),
        decipher.final(),
      ]);
    } catch {
      throw new SecureChannelError('forged', 'frame does not authenticate');
    }
    if (Math.abs(header.ts - now) > this.options.toleranceMs) throw new SecureChannelError('stale', 'frame timestamp');
    if (advance) {
      this.#previousKey = this.#receiveKey;
      this.#previousUntil = now + this.options.graceMs;
      this.#receiveKey = key;
      this.#receiveEpoch += 1;
      this.#receiveEpochFrames = 0;
      this.#receiveEpochStart = now;
    }
    if (header.epoch === this.#receiveEpoch) this.#receiveEpochFrames += 1;
    this.#commitWindow(header.seq);
    return plaintext;
  }

  #checkWindow(seq: bigint): void {
    if (seq > this.#top) return;
    const behind = this.#top - seq;
    if (behind >= BigInt(SECURE_CHANNEL_REPLAY_WINDOW))
      throw new SecureChannelError('too-old', 'behind the replay window');
    if ((this.#seen >> behind) & 1n) throw new SecureChannelError('replayed', 'sequence number already seen');
  }

  #commitWindow(seq: bigint): void {
    if (seq > this.#top) {
      const shift = seq - this.#top;
      this.#seen = shift >= BigInt(SECURE_CHANNEL_REPLAY_WINDOW) ? 1n : ((this.#seen << shift) | 1n) & WINDOW_MASK;
      this.#top = seq;
    } else {
      this.#seen |= 1n << (this.#top - seq);
    }
  }
}
