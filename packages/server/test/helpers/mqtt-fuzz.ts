// Robustness fuzzing of the MQTT packet path: byte streams derived from the corpus (../shared/mqtt-corpus)
// by mutation, written to Castellan's broker core over raw TCP, each judged by one rule: a malformed
// stream closes that connection only, never crashes, hangs, leaks a connection or reaches an internal
// error, and the clients beside it (a witness and observers) keep working. Shared by
// test/mqtt-fuzz.test.ts (a fixed seed within the test budget) and scripts/mqtt-fuzz.ts (longer
// campaigns that minimise what they find).
//
// "Still connected" is proved by a PINGREQ/PINGRESP round trip after the stream has been completed to a
// packet boundary (a truncated packet is padded with zero bytes, as a slow client would finish it), and
// "disconnected" by the socket closing, so a case costs milliseconds unless the broker misbehaves.
import { once } from 'node:events';
import net from 'node:net';
import fc from 'fast-check';
import mqttPacket from 'mqtt-packet';
import { defaultMqttConfig } from '../../src/config/index.ts';
import {
  type BrokerLimits,
  type ConformanceListener,
  conformanceHooks,
  MqttBroker,
  startConformanceListener,
} from '../../src/gateway/mqtt/index.ts';
import { LENGTH_MALFORMED, PacketFramer } from '../../src/gateway/mqtt/packet-framer.ts';
import { readConnectProtocol, validatePacket } from '../../src/gateway/mqtt/packet-validator.ts';
import { createLogger } from '../../src/logging/index.ts';
import { connectPacket as corpusConnectPacket, corpusAvailable, hex, loadCorpus } from './mqtt-corpus.ts';

/** The production broker's default limits (config-schema.ts, mqtt.*). */
export const DEFAULT_LIMITS: BrokerLimits = defaultMqttConfig();

export const FUZZ_CLIENT_ID = 'castellan-fuzz';
export const WITNESS_TOPIC = 'castellan-fuzz/witness';

// ---------------------------------------------------------------------------------------------------
// Seeds

export interface FuzzSeed {
  bytes: Buffer;
  /** Protocol level the packets were written for (3, 4 or 5). */
  ver: 3 | 4 | 5;
  /** The corpus case sends a default CONNECT first: these packets follow a CONNACK. */
  afterConnect: boolean;
  /** The case expects the connection to stay up: well-formed packets, the best start for mutations. */
  valid: boolean;
  source: string;
}

/** The corpus replay's CONNECT, as the fuzzer's client unless another is named. */
export function connectPacket(ver: 3 | 4 | 5, clientId = FUZZ_CLIENT_ID): Buffer {
  return corpusConnectPacket(ver, clientId);
}

/** A few packets of every type for both versions, so the fuzzer also runs where the corpus is absent. */
function builtinSeeds(): FuzzSeed[] {
  const v5 = { protocolVersion: 5 } as const;
  const seed = (packet: mqttPacket.Packet, ver: 4 | 5, afterConnect = true): FuzzSeed => ({
    bytes: mqttPacket.generate(packet, ver === 5 ? v5 : undefined),
    ver,
    afterConnect,
    valid: true,
    source: `builtin ${packet.cmd} v${ver}`,
  });
  return [
    seed(
      {
        cmd: 'connect',
        protocolId: 'MQTT',
        protocolVersion: 5,
        clientId: FUZZ_CLIENT_ID,
        keepalive: 30,
        clean: true,
        properties: { sessionExpiryInterval: 10, receiveMaximum: 5, maximumPacketSize: 1000 },
        will: {
          topic: 'fz/will',
          payload: Buffer.from('w'),
          qos: 1,
          retain: false,
          properties: { willDelayInterval: 1 },
        },
      },
      5,
      false,
    ),
    seed({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clientId: '', keepalive: 0, clean: true }, 4, false),
    seed({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'fz/#', qos: 1 }] }, 4),
    seed(
      {
        cmd: 'subscribe',
        messageId: 2,
        subscriptions: [{ topic: 'fz/+/x', qos: 1, nl: true, rap: true, rh: 1 }],
        properties: { userProperties: { a: 'b' } },
      },
      5,
    ),
    seed(
      { cmd: 'publish', topic: 'fz/a', payload: Buffer.from('hello'), qos: 1, messageId: 3, retain: false, dup: false },
      4,
    ),
    seed(
      {
        cmd: 'publish',
        topic: 'fz/b',
        payload: Buffer.from('hi'),
        qos: 1,
        messageId: 4,
        retain: false,
        dup: false,
        properties: {
          payloadFormatIndicator: true,
          messageExpiryInterval: 60,
          contentType: 'text/plain',
          responseTopic: 'fz/r',
          correlationData: Buffer.from('c'),
          userProperties: { k: 'v' },
        },
      },
      5,
    ),
    seed({ cmd: 'unsubscribe', messageId: 5, unsubscriptions: ['fz/#'] }, 4),
    seed({ cmd: 'puback', messageId: 1, reasonCode: 0x10, properties: { reasonString: 'r' } }, 5),
    seed({ cmd: 'pingreq' }, 4),
    seed({ cmd: 'disconnect', reasonCode: 4, properties: { sessionExpiryInterval: 0 } }, 5),
    seed({ cmd: 'auth', reasonCode: 0x18, properties: { authenticationMethod: 'm' } }, 5),
  ];
}

/** Every distinct `send` payload of the corpus (when it is present) plus the built-in seeds. */
export function loadSeeds(): FuzzSeed[] {
  const seeds = builtinSeeds();
  if (!corpusAvailable()) return seeds;
  const seen = new Set(seeds.map((s) => `${s.ver}:${s.afterConnect}:${s.bytes.toString('hex')}`));
  for (const c of loadCorpus()) {
    for (const msg of c.msgs) {
      if (msg.type !== 'send' || !msg.payload) continue;
      const bytes = hex(msg.payload);
      const key = `${c.ver}:${c.connect}:${bytes.toString('hex')}`;
      if (bytes.length === 0 || seen.has(key)) continue;
      seen.add(key);
      seeds.push({
        bytes,
        ver: c.ver,
        afterConnect: c.connect,
        valid: !c.expectDisconnect,
        source: `${c.file} / ${c.group} / ${c.name}`,
      });
    }
  }
  return seeds;
}

// ---------------------------------------------------------------------------------------------------
// Framing (lenient: it never throws and describes what it could not frame)

export function encodeVarint(value: number): number[] {
  const out: number[] = [];
  let v = Math.max(0, Math.min(value, 268_435_455));
  do {
    let b = v % 128;
    v = Math.floor(v / 128);
    if (v > 0) b |= 0x80;
    out.push(b);
  } while (v > 0);
  return out;
}

/** A variable byte integer at `at`: its value and size, or null when it is truncated or longer than 4 bytes. */
function readVarint(b: Uint8Array, at: number): { value: number; size: number } | null {
  let value = 0;
  for (let k = 0, mul = 1; k < 4; k++, mul *= 128) {
    const c = b[at + k];
    if (c === undefined) return null;
    value += (c & 0x7f) * mul;
    if ((c & 0x80) === 0) return { value, size: k + 1 };
  }
  return null;
}

interface Frame {
  start: number;
  /** First byte after the remaining length (= end when that length could not be read). */
  bodyStart: number;
  end: number;
  complete: boolean;
}

function frames(b: Buffer): Frame[] {
  const out: Frame[] = [];
  let i = 0;
  while (i < b.length) {
    const length = readVarint(b, i + 1);
    if (!length) {
      out.push({ start: i, bodyStart: b.length, end: b.length, complete: false });
      break;
    }
    const bodyStart = i + 1 + length.size;
    const end = bodyStart + length.value;
    out.push({ start: i, bodyStart, end: Math.min(end, b.length), complete: end <= b.length });
    i = Math.min(end, b.length);
  }
  return out;
}

/** What the broker must make of the end of a stream, and how to bring it to a packet boundary. */
export type StreamEnd =
  | { kind: 'boundary'; pingreqs: number; pad: Buffer }
  /** A remaining length longer than four bytes (v5 1.5.5, 2.1.4): malformed, the connection must close. */
  | { kind: 'invalid-length' }
  /** A packet over the maximum packet size the broker announces: the connection must close (v5 3.2.2.3.6). */
  | { kind: 'too-large' }
  /** Within a few bytes of the limit, where counting the fixed header or not decides. */
  | { kind: 'ambiguous'; pingreqs: number; pad: Buffer };

export function streamEnd(b: Buffer, maxPacketBytes: number): StreamEnd {
  let i = 0;
  let pingreqs = 0;
  while (i < b.length) {
    if (b[i] === 0xc0) pingreqs++;
    let value = 0;
    let j = i + 1;
    let terminated = false;
    for (let k = 0, mul = 1; k < 4 && j < b.length; k++, mul *= 128) {
      const c = b[j++]!;
      value += (c & 0x7f) * mul;
      if ((c & 0x80) === 0) {
        terminated = true;
        break;
      }
    }
    const varintBytes = j - i - 1;
    if (!terminated && varintBytes === 4) return { kind: 'invalid-length' };
    if (value > maxPacketBytes) return { kind: 'too-large' };
    const kind = value + 1 + Math.max(varintBytes, 1) > maxPacketBytes - 8 ? 'ambiguous' : 'boundary';
    if (!terminated) {
      // The stream ends inside the remaining length: a zero byte ends it, then the body follows.
      return { kind, pingreqs, pad: Buffer.concat([Buffer.from([0]), Buffer.alloc(value)]) };
    }
    if (j + value > b.length) return { kind, pingreqs, pad: Buffer.alloc(j + value - b.length) };
    if (kind === 'ambiguous') return { kind, pingreqs, pad: Buffer.alloc(0) };
    i = j + value;
  }
  return { kind: 'boundary', pingreqs, pad: Buffer.alloc(0) };
}

// ---------------------------------------------------------------------------------------------------
// Mutations

export type LengthEdit =
  | { mode: 'abs'; value: number }
  | { mode: 'delta'; delta: number }
  /** Five bytes with the continuation bit: never valid. */
  | { mode: 'invalid' }
  /** The same value in a longer, non-minimal encoding. */
  | { mode: 'overlong' };

export type Mutation =
  | { kind: 'flip'; at: number; bit: number }
  | { kind: 'set'; at: number; byte: number }
  | { kind: 'insert'; at: number; bytes: number[] }
  | { kind: 'delete'; at: number; count: number }
  | { kind: 'truncate'; at: number }
  | { kind: 'header'; packet: number; byte: number }
  | { kind: 'remaining-length'; packet: number; edit: LengthEdit }
  | {
      kind: 'string-length';
      packet: number;
      offset: number;
      edit: { mode: 'abs'; value: number } | { mode: 'delta'; delta: number };
    }
  | { kind: 'duplicate'; packet: number; times: number }
  | { kind: 'drop'; packet: number }
  | { kind: 'swap'; a: number; b: number }
  | { kind: 'splice'; seed: number; packet: number }
  | { kind: 'property'; packet: number; id: number; value: PropertyValue };

export interface PropertyValue {
  typed: boolean;
  num: number;
  text: number[];
  text2: number[];
  raw: number[];
}

const BYTE_PROPS = new Set([0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2a]);
const INT16_PROPS = new Set([0x13, 0x21, 0x22, 0x23]);
const INT32_PROPS = new Set([0x02, 0x11, 0x18, 0x27]);
const VAR_PROPS = new Set([0x0b]);
const STRING_PROPS = new Set([0x03, 0x08, 0x12, 0x15, 0x1a, 0x1c, 0x1f]);
const BINARY_PROPS = new Set([0x09, 0x16]);
const PAIR_PROPS = new Set([0x26]);
/** Every property identifier of MQTT 5 (table 2-4). */
export const PROPERTY_IDS = [
  ...BYTE_PROPS,
  ...INT16_PROPS,
  ...INT32_PROPS,
  ...VAR_PROPS,
  ...STRING_PROPS,
  ...BINARY_PROPS,
  ...PAIR_PROPS,
].sort((a, b) => a - b);

const u16 = (n: number) => [(n >> 8) & 0xff, n & 0xff];
const lengthPrefixed = (bytes: number[]) => [...u16(bytes.length), ...bytes];

function encodeProperty(id: number, v: PropertyValue): number[] {
  if (!v.typed) return [id, ...v.raw];
  const n = v.num >>> 0;
  if (BYTE_PROPS.has(id)) return [id, n & 0xff];
  if (INT16_PROPS.has(id)) return [id, ...u16(n & 0xffff)];
  if (INT32_PROPS.has(id)) return [id, (n >>> 24) & 0xff, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff];
  if (VAR_PROPS.has(id)) return [id, ...encodeVarint(n & 0x0fffffff)];
  if (STRING_PROPS.has(id) || BINARY_PROPS.has(id)) return [id, ...lengthPrefixed(v.text)];
  if (PAIR_PROPS.has(id)) return [id, ...lengthPrefixed(v.text), ...lengthPrefixed(v.text2)];
  return [id, ...v.raw];
}

/**
 * Where an MQTT 5 packet's property length is (an offset into the packet), or where one would go with
 * the bytes that must precede it (an omitted reason code); null when the packet is too short to tell.
 */
function propertySlot(p: Buffer, f: Frame): { at: number; prefix: number[] } | null {
  const type = p[f.start]! >> 4;
  const b = f.bodyStart;
  const bodyLength = f.end - f.bodyStart;
  switch (type) {
    case 1: {
      // CONNECT: protocol name, level, flags, keep-alive [MQTT 5 3.1.2].
      if (bodyLength < 2) return null;
      const name = p.readUInt16BE(b);
      const at = b + 2 + name + 4;
      return at <= f.end ? { at, prefix: [] } : null;
    }
    case 2:
      return bodyLength >= 2 ? { at: b + 2, prefix: [] } : null;
    case 3: {
      if (bodyLength < 2) return null;
      const at = b + 2 + p.readUInt16BE(b) + (((p[f.start]! >> 1) & 3) > 0 ? 2 : 0);
      return at <= f.end ? { at, prefix: [] } : null;
    }
    case 4:
    case 5:
    case 6:
    case 7:
      if (bodyLength < 2) return null;
      return bodyLength === 2 ? { at: f.end, prefix: [0] } : { at: b + 3, prefix: [] };
    case 8:
    case 9:
    case 10:
    case 11:
      return bodyLength >= 2 ? { at: b + 2, prefix: [] } : null;
    case 14:
    case 15:
      return bodyLength === 0 ? { at: f.end, prefix: [0] } : { at: b + 1, prefix: [] };
    default:
      return null;
  }
}

/** Rewrites a packet's remaining length to fit a new body (the packet must be complete). */
function reframe(p: Buffer, f: Frame, body: Buffer): Buffer {
  return Buffer.concat([
    p.subarray(0, f.start),
    Buffer.from([p[f.start]!, ...encodeVarint(body.length)]),
    body,
    p.subarray(f.end),
  ]);
}

function insertProperty(p: Buffer, f: Frame, id: number, value: PropertyValue): Buffer {
  const property = encodeProperty(id, value);
  const slot = f.complete ? propertySlot(p, f) : null;
  if (!slot) {
    // No property block to find: the bytes go in raw at the end of the packet.
    return Buffer.concat([p.subarray(0, f.end), Buffer.from(property), p.subarray(f.end)]);
  }
  const existing = slot.at < f.end ? readVarint(p, slot.at) : null;
  let body: Buffer;
  if (existing && slot.prefix.length === 0) {
    body = Buffer.concat([
      p.subarray(f.bodyStart, slot.at),
      Buffer.from([...encodeVarint(existing.value + property.length), ...property]),
      p.subarray(slot.at + existing.size, f.end),
    ]);
  } else {
    body = Buffer.concat([
      p.subarray(f.bodyStart, slot.at),
      Buffer.from([...slot.prefix, ...encodeVarint(property.length), ...property]),
      p.subarray(slot.at, f.end),
    ]);
  }
  return reframe(p, f, body);
}

function editRemainingLength(p: Buffer, f: Frame, edit: LengthEdit): Buffer {
  const current = readVarint(p, f.start + 1);
  const oldSize = current?.size ?? f.bodyStart - f.start - 1;
  let encoded: number[];
  if (edit.mode === 'invalid') encoded = [0xff, 0xff, 0xff, 0xff, 0x7f];
  else if (edit.mode === 'overlong') {
    const minimal = encodeVarint(current?.value ?? 0);
    encoded = minimal.length >= 4 ? minimal : [...minimal.map((b) => b | 0x80), 0x00];
  } else {
    const value = edit.mode === 'abs' ? edit.value : Math.max(0, (current?.value ?? 0) + edit.delta);
    encoded = encodeVarint(value);
  }
  return Buffer.concat([p.subarray(0, f.start + 1), Buffer.from(encoded), p.subarray(f.start + 1 + oldSize)]);
}

export function applyMutation(p: Buffer, m: Mutation, seeds: readonly FuzzSeed[]): Buffer {
  const pos = (at: number, extra = 0) => (p.length + extra === 0 ? 0 : at % (p.length + extra));
  const fs = frames(p);
  const frame = (k: number) => (fs.length === 0 ? undefined : fs[k % fs.length]);
  switch (m.kind) {
    case 'flip': {
      if (p.length === 0) return p;
      const out = Buffer.from(p);
      out[pos(m.at)]! ^= 1 << (m.bit & 7);
      return out;
    }
    case 'set': {
      if (p.length === 0) return p;
      const out = Buffer.from(p);
      out[pos(m.at)] = m.byte & 0xff;
      return out;
    }
    case 'insert': {
      const at = pos(m.at, 1);
      return Buffer.concat([p.subarray(0, at), Buffer.from(m.bytes), p.subarray(at)]);
    }
    case 'delete': {
      if (p.length === 0) return p;
      const at = pos(m.at);
      return Buffer.concat([p.subarray(0, at), p.subarray(at + m.count)]);
    }
    case 'truncate':
      return p.subarray(0, pos(m.at, 1));
    case 'header': {
      const f = frame(m.packet);
      if (!f) return p;
      const out = Buffer.from(p);
      out[f.start] = m.byte & 0xff;
      return out;
    }
    case 'remaining-length': {
      const f = frame(m.packet);
      return f ? editRemainingLength(p, f, m.edit) : p;
    }
    case 'string-length': {
      const f = frame(m.packet);
      if (!f || f.end - f.bodyStart < 2) return p;
      const at = f.bodyStart + (m.offset % (f.end - f.bodyStart - 1));
      const current = p.readUInt16BE(at);
      const value = m.edit.mode === 'abs' ? m.edit.value : current + m.edit.delta;
      const out = Buffer.from(p);
      out.writeUInt16BE(((value % 0x10000) + 0x10000) % 0x10000, at);
      return out;
    }
    case 'duplicate': {
      const f = frame(m.packet);
      if (!f) return p;
      const copies = Array.from({ length: m.times }, () => p.subarray(f.start, f.end));
      return Buffer.concat([p.subarray(0, f.end), ...copies, p.subarray(f.end)]);
    }
    case 'drop': {
      const f = frame(m.packet);
      return f ? Buffer.concat([p.subarray(0, f.start), p.subarray(f.end)]) : p;
    }
    case 'swap': {
      const a = frame(m.a);
      const b = frame(m.b);
      if (!a || !b || a.start === b.start) return p;
      const [x, y] = a.start < b.start ? [a, b] : [b, a];
      return Buffer.concat([
        p.subarray(0, x.start),
        p.subarray(y.start, y.end),
        p.subarray(x.end, y.start),
        p.subarray(x.start, x.end),
        p.subarray(y.end),
      ]);
    }
    case 'splice': {
      const seed = seeds[m.seed % seeds.length]!.bytes;
      const f = frame(m.packet);
      const at = f ? f.start : p.length;
      return Buffer.concat([p.subarray(0, at), seed, p.subarray(at)]);
    }
    case 'property': {
      const f = frame(m.packet);
      return f ? insertProperty(p, f, m.id, m.value) : p;
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Arbitraries

/** One generated stream: the bytes, how they are cut into writes, and how they were made. */
export interface FuzzInput {
  bytes: Buffer;
  /** Sizes of successive writes, used in turn; empty = one write. */
  chunks: number[];
  recipe: string;
}

export function describeInput(input: Pick<FuzzInput, 'bytes' | 'chunks'>): string {
  return `bytes=${input.bytes.toString('hex') || '(none)'} chunks=[${input.chunks.join(',')}]`;
}

function makeInput(bytes: Buffer, chunks: number[], recipe: string): FuzzInput {
  return {
    bytes,
    chunks,
    recipe,
    [fc.toStringMethod]: () => `${describeInput({ bytes, chunks })} (${recipe})`,
  } as FuzzInput;
}

const interestingBytes = fc.constantFrom(0x00, 0x01, 0x02, 0x7f, 0x80, 0xc0, 0xe0, 0xfe, 0xff);
const byteArb = fc.oneof(fc.integer({ min: 0, max: 255 }), interestingBytes);
const position = fc.nat({ max: 4096 });
const packetIndex = fc.nat({ max: 16 });
const interestingNumbers = fc.constantFrom(
  0,
  1,
  2,
  3,
  4,
  127,
  128,
  255,
  0xffff,
  16_383,
  16_384,
  65_536,
  0x7fffffff,
  0xffffffff,
  268_435_455,
);
const textArb = fc.oneof(
  fc.uint8Array({ maxLength: 12 }).map((a) => [...a]),
  fc
    .constantFrom(
      '',
      'a',
      '#',
      '+',
      'a/#',
      '$SYS/x',
      '__proto__',
      'constructor',
      'toString',
      '\u0000',
      '\uFFFF',
      'a/+/b',
    )
    .map((s) => [...Buffer.from(s, 'utf8')]),
  // Invalid UTF-8: a lone continuation byte, a surrogate half, an overlong NUL.
  fc.constantFrom<number[]>([0x80], [0xed, 0xa0, 0x80], [0xc0, 0x80], [0xff, 0xfe]),
);
const propertyValue: fc.Arbitrary<PropertyValue> = fc.record({
  typed: fc.boolean(),
  num: fc.oneof(interestingNumbers, fc.nat()),
  text: textArb,
  text2: textArb,
  raw: fc.uint8Array({ maxLength: 8 }).map((a) => [...a]),
});

export function mutationArb(seedCount: number): fc.Arbitrary<Mutation> {
  return fc.oneof(
    fc.record({ kind: fc.constant('flip' as const), at: position, bit: fc.integer({ min: 0, max: 7 }) }),
    fc.record({ kind: fc.constant('set' as const), at: position, byte: byteArb }),
    fc.record({
      kind: fc.constant('insert' as const),
      at: position,
      bytes: fc.array(byteArb, { minLength: 1, maxLength: 6 }),
    }),
    fc.record({ kind: fc.constant('delete' as const), at: position, count: fc.integer({ min: 1, max: 6 }) }),
    fc.record({ kind: fc.constant('truncate' as const), at: position }),
    fc.record({ kind: fc.constant('header' as const), packet: packetIndex, byte: byteArb }),
    fc.record({
      kind: fc.constant('remaining-length' as const),
      packet: packetIndex,
      edit: fc.oneof(
        fc.record({ mode: fc.constant('abs' as const), value: fc.oneof(fc.nat({ max: 300 }), interestingNumbers) }),
        fc.record({ mode: fc.constant('delta' as const), delta: fc.integer({ min: -4, max: 4 }) }),
        fc.record({ mode: fc.constant('invalid' as const) }),
        fc.record({ mode: fc.constant('overlong' as const) }),
      ),
    }),
    fc.record({
      kind: fc.constant('string-length' as const),
      packet: packetIndex,
      offset: fc.oneof(fc.constantFrom(0, 2), fc.nat({ max: 64 })),
      edit: fc.oneof(
        fc.record({
          mode: fc.constant('abs' as const),
          value: fc.oneof(fc.constantFrom(0, 1, 0xffff, 0x8000), fc.nat({ max: 0xffff })),
        }),
        fc.record({ mode: fc.constant('delta' as const), delta: fc.integer({ min: -4, max: 4 }) }),
      ),
    }),
    fc.record({ kind: fc.constant('duplicate' as const), packet: packetIndex, times: fc.integer({ min: 1, max: 3 }) }),
    fc.record({ kind: fc.constant('drop' as const), packet: packetIndex }),
    fc.record({ kind: fc.constant('swap' as const), a: packetIndex, b: packetIndex }),
    fc.record({
      kind: fc.constant('splice' as const),
      seed: fc.nat({ max: Math.max(0, seedCount - 1) }),
      packet: packetIndex,
    }),
    fc.record({
      kind: fc.constant('property' as const),
      packet: packetIndex,
      id: fc.oneof(
        { weight: 3, arbitrary: fc.constantFrom(...PROPERTY_IDS) },
        { weight: 1, arbitrary: fc.integer({ min: 0, max: 255 }) },
      ),
      value: propertyValue,
    }),
  );
}

/** Write sizes: mostly one write, often many tiny ones (a byte at a time is the framer's hardest case). */
const chunksArb = fc.oneof(
  { weight: 3, arbitrary: fc.constant<number[]>([]) },
  { weight: 1, arbitrary: fc.constant<number[]>([1]) },
  { weight: 2, arbitrary: fc.array(fc.integer({ min: 1, max: 12 }), { minLength: 1, maxLength: 8 }) },
);

/**
 * Streams of four shapes: (a) corpus packets, with the CONNECT their case assumes, mutated as a whole;
 * (b) a valid CONNECT (3.1.1 or 5) followed by mutated corpus packets; (c) a valid CONNECT followed by
 * well-formed packets of its version changed only in ways that keep them framed (properties added,
 * packets repeated or reordered, string lengths off by one or two), which reach the handlers; (d)
 * random bytes, alone or after a valid CONNECT.
 */
export function fuzzInputArb(seeds: readonly FuzzSeed[]): fc.Arbitrary<FuzzInput> {
  const valid = seeds.flatMap((s, i) => (s.valid ? [i] : []));
  // Half the time a well-formed packet, so that mutations reach past the decoder into the handlers.
  const seedIndex = fc.oneof(fc.nat({ max: seeds.length - 1 }), fc.constantFrom(...valid));
  const mutations = fc.array(mutationArb(seeds.length), { minLength: 1, maxLength: 4 });
  const pick = (indices: number[]) => indices.map((i) => seeds[i]!);
  const mutate = (bytes: Buffer, ms: Mutation[]) => ms.reduce((b, m) => applyMutation(b, m, seeds), bytes);

  const corpusShape = fc
    .record({
      seeds: fc.array(seedIndex, { minLength: 1, maxLength: 3 }),
      withConnect: fc.boolean(),
      mutations,
      chunks: chunksArb,
    })
    .map(({ seeds: indices, withConnect, mutations: ms, chunks }) => {
      const chosen = pick(indices);
      const first = chosen[0]!;
      const prefix = withConnect || first.afterConnect ? [connectPacket(first.ver)] : [];
      const bytes = mutate(Buffer.concat([...prefix, ...chosen.map((s) => s.bytes)]), ms);
      return makeInput(bytes, chunks, `corpus [${chosen.map((s) => s.source).join(' + ')}] ${JSON.stringify(ms)}`);
    });

  const connectedShape = fc
    .record({
      ver: fc.constantFrom<4 | 5>(4, 5),
      seeds: fc.array(seedIndex, { minLength: 1, maxLength: 4 }),
      mutations,
      chunks: chunksArb,
    })
    .map(({ ver, seeds: indices, mutations: ms, chunks }) => {
      const chosen = pick(indices);
      const body = mutate(Buffer.concat(chosen.map((s) => s.bytes)), ms);
      return makeInput(
        Buffer.concat([connectPacket(ver), body]),
        chunks,
        `v${ver} CONNECT + [${chosen.map((s) => s.source).join(' + ')}] ${JSON.stringify(ms)}`,
      );
    });

  // Well-formed packets of the CONNECT's own version, changed only in ways that keep them framed.
  const validFor = (ver: 4 | 5) => seeds.flatMap((s, i) => (s.valid && s.afterConnect && s.ver === ver ? [i] : []));
  const gentle = fc.array(
    fc.oneof(
      fc.record({
        kind: fc.constant('property' as const),
        packet: packetIndex,
        id: fc.constantFrom(...PROPERTY_IDS),
        value: propertyValue.map((v) => ({ ...v, typed: true })),
      }),
      fc.record({
        kind: fc.constant('duplicate' as const),
        packet: packetIndex,
        times: fc.integer({ min: 1, max: 3 }),
      }),
      fc.record({ kind: fc.constant('swap' as const), a: packetIndex, b: packetIndex }),
      fc.record({
        kind: fc.constant('string-length' as const),
        packet: packetIndex,
        offset: fc.constantFrom(0, 2),
        edit: fc.record({ mode: fc.constant('delta' as const), delta: fc.integer({ min: -2, max: 2 }) }),
      }),
    ),
    { maxLength: 3 },
  );
  // MQTT 5 CONNECT properties the connection lives with (Maximum Packet Size, Receive Maximum...).
  const connectProperties = fc.array(
    fc.record({
      kind: fc.constant('property' as const),
      packet: fc.constant(0),
      id: fc.constantFrom(0x11, 0x21, 0x22, 0x27, 0x17, 0x19, 0x26, 0x15, 0x16),
      value: propertyValue.map((v) => ({ ...v, typed: true })),
    }),
    { maxLength: 2 },
  );
  const gentleShape = fc
    .record({
      ver: fc.constantFrom<4 | 5>(4, 5),
      connectProperties,
      subscribeAll: fc.boolean(),
      picks: fc.array(fc.nat(), { minLength: 1, maxLength: 5 }),
      mutations: gentle,
      chunks: chunksArb,
    })
    .map(({ ver, connectProperties: cps, subscribeAll, picks, mutations: ms, chunks }) => {
      const pool = validFor(ver);
      const chosen = pool.length ? picks.map((k) => seeds[pool[k % pool.length]!]!) : [];
      // Subscribed to everything, the client also receives what it publishes, through its own limits.
      const connect = Buffer.concat([
        ver === 5 ? mutate(connectPacket(5), cps) : connectPacket(4),
        subscribeAll
          ? mqttPacket.generate(
              { cmd: 'subscribe', messageId: 9, subscriptions: [{ topic: '#', qos: 1 }] },
              { protocolVersion: ver },
            )
          : Buffer.alloc(0),
      ]);
      const body = mutate(Buffer.concat(chosen.map((s) => s.bytes)), ms);
      return makeInput(
        Buffer.concat([connect, body]),
        chunks,
        `gentle v${ver} CONNECT ${ver === 5 ? JSON.stringify(cps) : ''}${subscribeAll ? ' SUBSCRIBE #' : ''} + [${chosen.map((s) => s.source).join(' + ')}] ${JSON.stringify(ms)}`,
      );
    });

  const randomShape = fc
    .record({
      ver: fc.constantFrom<0 | 4 | 5>(0, 4, 5),
      random: fc.uint8Array({ minLength: 1, maxLength: 64 }),
      chunks: chunksArb,
    })
    .map(({ ver, random, chunks }) =>
      makeInput(
        Buffer.concat([ver ? connectPacket(ver) : Buffer.alloc(0), Buffer.from(random)]),
        chunks,
        ver ? `v${ver} CONNECT + random bytes` : 'random bytes',
      ),
    );

  return fc.oneof(
    { weight: 4, arbitrary: corpusShape },
    { weight: 3, arbitrary: connectedShape },
    { weight: 2, arbitrary: gentleShape },
    { weight: 1, arbitrary: randomShape },
  );
}

// ---------------------------------------------------------------------------------------------------
// Talking to the broker

const V4_SUBACK_CODES = new Set([0x00, 0x01, 0x02, 0x80]);
const V5_SUBACK_CODES = new Set([0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8f, 0x91, 0x97, 0x9e, 0xa1, 0xa2]);

/**
 * What is wrong with a packet the broker sent (MQTT 5 2.1-2.2 and 3.x, 3.1.1 2.2-2.3 and 3.x); null
 * when nothing is. `version` is the connection's, as its CONNACK showed (3.1.1 CONNACKs have exactly
 * two bytes of body), or undefined before it.
 */
export function outboundProblem(p: Buffer, version: 4 | 5 | undefined): string | null {
  const type = p[0]! >> 4;
  const flags = p[0]! & 0x0f;
  const length = readVarint(p, 1);
  if (!length) return 'unreadable remaining length';
  const body = p.subarray(1 + length.size);
  const id = body.length >= 2 ? body.readUInt16BE(0) : -1;
  switch (type) {
    case 2:
      if (flags !== 0 || body.length < 2) return 'CONNACK with flags or too short';
      if ((body[0]! & 0xfe) !== 0) return 'CONNACK with reserved acknowledge flags set';
      return null;
    case 3: {
      const qos = (flags >> 1) & 3;
      if (qos === 3) return 'PUBLISH with both QoS bits set';
      if (body.length < 2) return 'PUBLISH too short for its topic length';
      const topic = body.readUInt16BE(0);
      if (body.length < 2 + topic + (qos ? 2 : 0)) return 'PUBLISH shorter than its topic (and packet identifier)';
      if (qos && body.readUInt16BE(2 + topic) === 0) return 'PUBLISH with packet identifier 0 [MQTT-2.3.1-1] (3.1.1)';
      return null;
    }
    case 4:
    case 5:
    case 6:
    case 7:
    case 11:
      if (flags !== (type === 6 ? 2 : 0)) return `packet type ${type} with flags ${flags}`;
      if (id <= 0) return `packet type ${type} without a non-zero packet identifier [MQTT-2.3.1-1] (3.1.1)`;
      // 3.1.1 acknowledgements are exactly the packet identifier (3.1.1 3.4.1, 3.5.1, 3.6.1, 3.7.1, 3.11.1).
      if (version === 4 && body.length !== 2) return `3.1.1 packet type ${type} with ${body.length} bytes, not 2`;
      return null;
    case 9: {
      if (flags !== 0) return 'SUBACK with flags';
      if (id <= 0 || body.length < 3) return 'SUBACK without a packet identifier or a return code';
      if (version === 4) {
        const bad = [...body.subarray(2)].find((c) => !V4_SUBACK_CODES.has(c));
        return bad === undefined ? null : `3.1.1 SUBACK return code ${bad} [MQTT-3.9.3-2]`;
      }
      if (version === 5) {
        // After the packet identifier and the properties, one reason code per filter.
        const props = readVarint(body, 2);
        if (!props || 2 + props.size + props.value >= body.length) return 'SUBACK without reason codes';
        const bad = [...body.subarray(2 + props.size + props.value)].find((c) => !V5_SUBACK_CODES.has(c));
        return bad === undefined ? null : `SUBACK reason code ${bad} is not one of MQTT 5 3.9.3`;
      }
      return null;
    }
    case 13:
      return flags === 0 && body.length === 0 ? null : 'malformed PINGRESP';
    case 14:
    case 15:
      if (flags !== 0) return `packet type ${type} with flags ${flags}`;
      // A 3.1.1 server never sends DISCONNECT (3.1.1 3.14) and AUTH does not exist there.
      return version === 4 ? `packet type ${type} sent to a 3.1.1 client` : null;
    default:
      return `packet type ${type} is never sent by a server`;
  }
}

/** Reads the broker's side of a connection: whole packets, and whether it closed. */
class ServerStream {
  #buffer = Buffer.alloc(0);
  /** The first packets received (enough to report; a bystander's stream runs for the whole campaign). */
  readonly packets: Buffer[] = [];
  readonly #counts = new Map<number, number>();
  /** The first packet the broker should not have sent, and why. */
  badOutput: string | undefined;
  /** The connection's protocol version, from the length of its CONNACK. */
  version: 4 | 5 | undefined;
  closed = false;
  #waiters = new Set<() => void>();

  constructor(socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.#buffer = Buffer.concat([this.#buffer, chunk]);
      for (;;) {
        const length = readVarint(this.#buffer, 1);
        if (!length || this.#buffer.length < 1 + length.size + length.value) break;
        const end = 1 + length.size + length.value;
        const packet = this.#buffer.subarray(0, end);
        if (this.packets.length < 64) this.packets.push(Buffer.from(packet));
        this.#counts.set(packet[0]!, (this.#counts.get(packet[0]!) ?? 0) + 1);
        if (packet[0] === 0x20 && this.version === undefined) this.version = end === 4 ? 4 : 5;
        const problem = outboundProblem(packet, this.version);
        if (problem && !this.badOutput) this.badOutput = `${problem}: ${packet.toString('hex')}`;
        this.#buffer = this.#buffer.subarray(end);
      }
      this.#wake();
    });
    const end = () => {
      this.closed = true;
      this.#wake();
    };
    socket.on('end', end);
    socket.on('close', end);
    socket.on('error', end);
  }

  #wake(): void {
    for (const waiter of [...this.#waiters]) waiter();
  }

  /** Packets received whose first byte (type and flags) is this one. */
  count(firstByte: number): number {
    return this.#counts.get(firstByte) ?? 0;
  }

  /** Resolves when the condition holds, the socket closed, or after ms; returns the condition's value. */
  async until(condition: () => boolean, ms: number): Promise<boolean> {
    if (condition()) return true;
    if (this.closed) return false;
    return new Promise<boolean>((resolve) => {
      const done = (value: boolean) => {
        clearTimeout(timer);
        this.#waiters.delete(check);
        resolve(value);
      };
      const check = () => {
        if (condition()) done(true);
        else if (this.closed) done(false);
      };
      const timer = setTimeout(() => done(condition()), ms);
      this.#waiters.add(check);
    });
  }
}

async function openSocket(port: number): Promise<net.Socket> {
  const socket = net.connect({ host: '127.0.0.1', port });
  socket.setNoDelay(true);
  socket.on('error', () => {});
  await once(socket, 'connect');
  return socket;
}

const nextTick = () => new Promise<void>((resolve) => setImmediate(resolve));

export type CaseVerdict = 'closed' | 'alive' | 'ambiguous';

/**
 * Writes one stream to a broker on 127.0.0.1:port (in its chunks), brings it to a packet boundary and
 * judges the connection by the PINGREQ barrier: closed, alive (every PINGREQ answered, its CONNACK
 * first, nothing malformed from the broker), or a failure. Works against any broker, e.g. Mosquitto.
 */
export async function probeStream(
  port: number,
  input: Pick<FuzzInput, 'bytes' | 'chunks'>,
  options: { barrierMs: number; maxPacketBytes: number },
): Promise<{ verdict: CaseVerdict; received: Buffer[] } | { failure: CaseFailure }> {
  const { barrierMs } = options;
  const fail = (kind: CaseFailure['kind'], detail: string) => ({ failure: { kind, detail } });
  const socket = await openSocket(port);
  const server = new ServerStream(socket);
  let verdict: CaseVerdict;
  try {
    const { bytes, chunks } = input;
    if (chunks.length === 0) socket.write(bytes);
    else {
      for (let at = 0, k = 0; at < bytes.length && !server.closed; k++) {
        const size = chunks[k % chunks.length]!;
        socket.write(bytes.subarray(at, at + size));
        at += size;
        await nextTick();
      }
    }
    const end = streamEnd(bytes, options.maxPacketBytes);
    if (end.kind === 'invalid-length' || end.kind === 'too-large') {
      if (!server.closed) socket.write(Buffer.from([0xc0, 0]));
      await server.until(() => false, barrierMs);
      if (!server.closed) {
        return fail(
          'not-closed',
          `the stream ends in ${end.kind === 'invalid-length' ? 'a remaining length over four bytes' : 'a packet over the maximum size'} and the connection stayed open`,
        );
      }
      verdict = 'closed';
    } else if (end.kind === 'ambiguous') {
      // Completed like any other stream, but either outcome is right.
      if (!server.closed) socket.write(Buffer.concat([end.pad, Buffer.from([0xc0, 0])]));
      await server.until(() => server.count(0xd0) > end.pingreqs, barrierMs);
      verdict = server.closed ? 'closed' : 'ambiguous';
    } else {
      if (!server.closed && end.pad.length > 0) socket.write(end.pad);
      if (!server.closed) socket.write(Buffer.from([0xc0, 0]));
      // Every PINGREQ in the stream is answered if the connection lives on, ours last.
      const answered = await server.until(() => server.count(0xd0) >= end.pingreqs + 1, barrierMs);
      if (answered) verdict = 'alive';
      else if (server.closed) verdict = 'closed';
      else {
        return fail(
          'hang',
          `no PINGRESP within ${barrierMs} ms and the connection is still open (padded ${end.pad.length} bytes; ` +
            `received ${server.packets.map((p) => p.toString('hex')).join(' ') || 'nothing'})`,
        );
      }
    }
  } finally {
    socket.destroy();
  }
  if (server.badOutput) return fail('bad-output', `the broker sent a malformed packet: ${server.badOutput}`);
  if (verdict === 'alive' && server.packets[0]?.[0] !== 0x20) {
    // A PINGRESP means the CONNECT was accepted: its CONNACK must have come first [MQTT-3.2.0-1].
    return fail(
      'bad-output',
      `the connection answers PINGREQ but its first packet was ${server.packets[0]?.toString('hex') ?? 'none'}, not CONNACK`,
    );
  }
  return { verdict, received: server.packets };
}

export interface CaseFailure {
  kind: 'hang' | 'not-closed' | 'leak' | 'bad-output' | 'error-log' | 'masked-exception' | 'uncaught' | 'witness';
  detail: string;
}

export interface CaseReport {
  verdict: CaseVerdict | 'failed';
  failure?: CaseFailure;
  ms: number;
}

interface LogEntry {
  level: number;
  msg?: string;
  detail?: string;
  err?: { message?: string; type?: string; stack?: string };
  [key: string]: unknown;
}

/**
 * Messages of JavaScript's own errors: a handler that throws inside the parser's 'packet' event is
 * caught by the connection and reported as a malformed packet, which would hide the bug.
 */
const ENGINE_ERROR =
  /Cannot (read|set) propert|is not a function|is not iterable|is not defined|is not a constructor|Invalid (array|string) length|Maximum call stack|Cannot convert|Cannot destructure|The value of "[^"]*" is out of range|outside buffer bounds|argument must be of|Invalid time value/;

/**
 * A well-behaved client connected for the whole run: subscribed to a filter, it acknowledges what it
 * receives (QoS 1 and 2), keeps its connection alive, and checks every packet the broker sends it.
 */
class Bystander {
  readonly name: string;
  readonly socket: net.Socket;
  readonly stream: ServerStream;
  readonly payloads: string[] = [];
  received = 0;
  /** mqtt-packet could not decode what the broker sent. */
  decodeError: string | undefined;
  readonly #pinger: NodeJS.Timeout;

  private constructor(name: string, socket: net.Socket, version: 4 | 5) {
    this.name = name;
    this.socket = socket;
    const parser = mqttPacket.parser({ protocolVersion: version });
    parser.on('packet', (packet: mqttPacket.Packet) => {
      if (packet.cmd !== 'publish') return;
      this.received++;
      this.payloads.push(String(packet.payload));
      if (this.payloads.length > 100) this.payloads.splice(0, 50);
      if (packet.qos === 1) socket.write(mqttPacket.generate({ cmd: 'puback', messageId: packet.messageId! }));
      if (packet.qos === 2) socket.write(mqttPacket.generate({ cmd: 'pubrec', messageId: packet.messageId! }));
    });
    parser.on('packet', (packet: mqttPacket.Packet) => {
      if (packet.cmd === 'pubrel') socket.write(mqttPacket.generate({ cmd: 'pubcomp', messageId: packet.messageId! }));
    });
    parser.on('error', (error: Error) => (this.decodeError ??= error.message));
    // Decoded before the stream below wakes its waiters, so they see the message.
    socket.on('data', (chunk: Buffer) => parser.parse(chunk));
    this.stream = new ServerStream(socket);
    // Keep-alive 60 s: a packet every 20 s keeps a long campaign's bystanders connected.
    this.#pinger = setInterval(() => socket.write(Buffer.from([0xc0, 0])), 20_000);
    this.#pinger.unref();
  }

  static async connect(
    port: number,
    name: string,
    options: { version: 4 | 5; filter: string; properties?: mqttPacket.IConnectPacket['properties'] },
  ): Promise<Bystander> {
    const socket = await openSocket(port);
    const bystander = new Bystander(name, socket, options.version);
    const settings = { protocolVersion: options.version };
    socket.write(
      Buffer.concat([
        mqttPacket.generate(
          {
            cmd: 'connect',
            protocolId: 'MQTT',
            protocolVersion: options.version,
            clientId: `castellan-fuzz-${name}-${process.pid}`,
            keepalive: 60,
            clean: true,
            ...(options.properties ? { properties: options.properties } : {}),
          },
          settings,
        ),
        mqttPacket.generate(
          { cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: options.filter, qos: 1 }] },
          settings,
        ),
      ]),
    );
    if (!(await bystander.stream.until(() => bystander.stream.count(0x90) === 1, 2_000))) {
      throw new Error(`the ${name} could not connect and subscribe`);
    }
    return bystander;
  }

  /** What is wrong with this bystander's connection, or null: it is open, well fed and answers PINGREQ. */
  async check(ms: number): Promise<string | null> {
    if (this.stream.closed) return `the ${this.name} connection was closed`;
    if (this.stream.badOutput) return `the ${this.name} received a malformed packet: ${this.stream.badOutput}`;
    if (this.decodeError) return `the ${this.name} could not decode what it received: ${this.decodeError}`;
    const pings = this.stream.count(0xd0);
    this.socket.write(Buffer.from([0xc0, 0]));
    if (!(await this.stream.until(() => this.stream.count(0xd0) > pings, ms))) {
      return `the ${this.name} got no PINGRESP (${this.stream.closed ? 'closed' : 'timeout'})`;
    }
    return null;
  }

  close(): void {
    clearInterval(this.#pinger);
    this.socket.destroy();
  }
}

/** One broker on the conformance listener, the witness beside it, and a log that remembers errors. */
export class FuzzHarness {
  readonly broker: MqttBroker;
  readonly listener: ConformanceListener;
  readonly port: number;
  readonly logs: LogEntry[];
  readonly uncaught: string[] = [];
  /** The witness first, then observers subscribed to everything (3.1.1; 5; 5 with tight limits). */
  readonly #bystanders: Bystander[] = [];
  #nonce = 0;
  readonly #onUncaught = (error: unknown) =>
    this.uncaught.push(`uncaught: ${(error as Error)?.stack ?? String(error)}`);
  readonly #onRejection = (error: unknown) =>
    this.uncaught.push(`unhandled rejection: ${(error as Error)?.stack ?? String(error)}`);

  private constructor(broker: MqttBroker, listener: ConformanceListener, logs: LogEntry[]) {
    this.broker = broker;
    this.listener = listener;
    this.port = listener.address().port;
    this.logs = logs;
  }

  static async start(limits: BrokerLimits = DEFAULT_LIMITS): Promise<FuzzHarness> {
    const logs: LogEntry[] = [];
    // Debug level: protocol violations carry the reason, which shows a handler's exception in disguise.
    const log = createLogger({
      level: 'debug',
      destination: {
        write(line: string) {
          for (const text of line.split('\n')) if (text) logs.push(JSON.parse(text) as LogEntry);
        },
      },
    });
    const broker = new MqttBroker({ hooks: conformanceHooks(), limits, log });
    const listener = await startConformanceListener(broker, { host: '127.0.0.1', port: 0 }, log);
    const harness = new FuzzHarness(broker, listener, logs);
    process.on('uncaughtException', harness.#onUncaught);
    process.on('unhandledRejection', harness.#onRejection);
    await harness.#connectBystanders();
    return harness;
  }

  async #connectBystanders(): Promise<void> {
    this.#bystanders.push(await Bystander.connect(this.port, 'witness', { version: 5, filter: WITNESS_TOPIC }));
    // Observers receive every message the fuzzed clients get routed, so the broker's outbound path
    // (properties forwarded or dropped per version, QoS downgrade, a client's Maximum Packet Size and
    // Receive Maximum) runs on fuzzed content too.
    this.#bystanders.push(await Bystander.connect(this.port, 'observer-v4', { version: 4, filter: '#' }));
    this.#bystanders.push(await Bystander.connect(this.port, 'observer-v5', { version: 5, filter: '#' }));
    this.#bystanders.push(
      await Bystander.connect(this.port, 'observer-v5-tight', {
        version: 5,
        filter: '#',
        properties: { maximumPacketSize: 64, receiveMaximum: 1 },
      }),
    );
  }

  /** Connections the harness itself holds for the whole run. */
  get bystanderCount(): number {
    return this.#bystanders.length;
  }

  /** Waits until the broker holds at most `count` connections; false after ms. */
  async connectionsSettle(count: number, ms: number): Promise<boolean> {
    const deadline = Date.now() + ms;
    while (this.broker.connectionCount > count) {
      if (Date.now() > deadline) return false;
      await new Promise((resolve) => setTimeout(resolve, 2));
    }
    return true;
  }

  /**
   * The witness still works: it answers a PINGREQ and receives a message a fresh client publishes; the
   * observers are still connected, answer PINGREQ and received nothing malformed.
   */
  async checkWitness(ms = 1_000): Promise<string | null> {
    for (const bystander of this.#bystanders) {
      const problem = await bystander.check(ms);
      if (problem) return problem;
    }
    const witness = this.#bystanders[0]!;
    const base = this.broker.connectionCount;
    const nonce = `nonce-${++this.#nonce}`;
    const publisher = await openSocket(this.port);
    try {
      publisher.write(
        Buffer.concat([
          connectPacket(4, `castellan-fuzz-publisher-${process.pid}`),
          mqttPacket.generate({
            cmd: 'publish',
            topic: WITNESS_TOPIC,
            payload: Buffer.from(nonce),
            qos: 0,
            retain: false,
            dup: false,
          }),
          Buffer.from([0xe0, 0]),
        ]),
      );
      const received = await witness.stream.until(() => witness.payloads.includes(nonce), ms);
      if (!received) return `the witness did not receive ${nonce} from a fresh client`;
    } finally {
      publisher.destroy();
    }
    if (!(await this.connectionsSettle(base, ms))) {
      return `the publisher's connection was not released (${this.broker.connectionCount} connections, expected ${base})`;
    }
    return null;
  }

  /**
   * Writes one stream and judges the outcome. `barrierMs` bounds the PINGREQ barrier, `settleMs` the wait
   * for the broker to release the connection once the socket is closed.
   */
  async runCase(
    input: Pick<FuzzInput, 'bytes' | 'chunks'>,
    options: { barrierMs?: number; settleMs?: number; concurrent?: boolean } = {},
  ): Promise<CaseReport> {
    const barrierMs = options.barrierMs ?? 1_000;
    // Streams run side by side share the count: their caller checks the release once all are done.
    const settleMs = options.concurrent ? 0 : (options.settleMs ?? 1_000);
    const started = Date.now();
    const base = this.broker.connectionCount;
    const logMark = this.logs.length;
    const uncaughtMark = this.uncaught.length;
    const fail = (kind: CaseFailure['kind'], detail: string): CaseReport => ({
      verdict: 'failed',
      failure: { kind, detail },
      ms: Date.now() - started,
    });
    const probe = await probeStream(this.port, input, { barrierMs, maxPacketBytes: this.broker.limits.maxPacketBytes });
    if ('failure' in probe) return fail(probe.failure.kind, probe.failure.detail);
    const verdict = probe.verdict;
    if (settleMs > 0 && !(await this.connectionsSettle(base, settleMs))) {
      return fail(
        'leak',
        `${this.broker.connectionCount} connections ${settleMs} ms after the socket closed, expected ${base}`,
      );
    }
    const problem = this.problemsSince(logMark, uncaughtMark);
    if (problem) return { verdict: 'failed', failure: problem, ms: Date.now() - started };
    return { verdict, ms: Date.now() - started };
  }

  /** Error-level log lines, engine errors disguised as protocol violations, uncaught errors since the marks. */
  problemsSince(logMark: number, uncaughtMark: number): CaseFailure | null {
    if (this.uncaught.length > uncaughtMark)
      return { kind: 'uncaught', detail: this.uncaught.slice(uncaughtMark).join('\n') };
    for (const entry of this.logs.slice(logMark)) {
      if (entry.level >= 50) {
        return {
          kind: 'error-log',
          detail:
            `${entry.msg}: ${entry.err?.message ?? ''} ${entry.err?.stack?.split('\n').slice(0, 4).join(' | ') ?? ''}`.trim(),
        };
      }
      if (
        entry.msg === 'mqtt: protocol violation' &&
        typeof entry.detail === 'string' &&
        ENGINE_ERROR.test(entry.detail)
      ) {
        return {
          kind: 'masked-exception',
          detail: `a handler threw and it was reported as a protocol violation: ${entry.detail}`,
        };
      }
    }
    return null;
  }

  /** Forgets the log so far (keeps a long campaign's memory flat). */
  trimLogs(): void {
    this.logs.splice(0);
  }

  async close(): Promise<void> {
    process.off('uncaughtException', this.#onUncaught);
    process.off('unhandledRejection', this.#onRejection);
    for (const bystander of this.#bystanders) bystander.close();
    await this.broker.close();
    await this.listener.close();
  }
}

// ---------------------------------------------------------------------------------------------------
// Minimisation

/**
 * Delta debugging over bytes: the shortest stream (one write) the predicate still holds for, found by
 * removing ever smaller spans, then single bytes. `budget` bounds the number of predicate calls.
 */
export async function minimiseBytes(
  bytes: Buffer,
  holds: (candidate: Buffer) => Promise<boolean>,
  budget = 400,
): Promise<Buffer> {
  let best = bytes;
  let calls = 0;
  // Whole packets at the end first: a shorter tail is the commonest simplification.
  for (let cut = best.length >> 1; cut >= 1 && calls < budget;) {
    calls++;
    const candidate = best.subarray(0, best.length - cut);
    if (await holds(candidate)) best = candidate;
    else cut >>= 1;
  }
  for (let span = Math.max(1, best.length >> 1); span >= 1 && calls < budget;) {
    let shrunk = false;
    for (let at = 0; at < best.length && calls < budget;) {
      const candidate = Buffer.concat([best.subarray(0, at), best.subarray(at + span)]);
      calls++;
      if (await holds(candidate)) {
        best = candidate;
        shrunk = true;
      } else at += span;
    }
    if (!shrunk) span >>= 1;
  }
  // Simpler bytes where a byte's value does not matter: zero them.
  for (let at = 0; at < best.length && calls < budget; at++) {
    if (best[at] === 0) continue;
    const candidate = Buffer.from(best);
    candidate[at] = 0;
    calls++;
    if (await holds(candidate)) best = candidate;
  }
  return best;
}

// ---------------------------------------------------------------------------------------------------
// The raw-bytes framer and validator, in this process

/**
 * Feeds a stream through the framer as the connection does (in its chunks) and validates each packet it
 * yields as the connection would (the version from the first accepted CONNECT), then the same packets
 * and an arbitrary slice of the stream under every version. Throws when the framer or the validator
 * throws, or when the framer does not return exactly the bytes it was given, in order.
 */
export function checkFramerAndValidator(
  input: Pick<FuzzInput, 'bytes' | 'chunks'>,
  sliceFrom: number,
  sliceLength: number,
): void {
  const framer = new PacketFramer();
  const taken: Buffer[] = [];
  let version: 3 | 4 | 5 | undefined;
  let stopped = false;
  const chunks = input.chunks.length ? input.chunks : [input.bytes.length || 1];
  for (let at = 0, k = 0; at < input.bytes.length && !stopped; k++) {
    const size = chunks[k % chunks.length]!;
    framer.push(input.bytes.subarray(at, at + size));
    at += size;
    for (;;) {
      const length = framer.peekLength();
      if (length === LENGTH_MALFORMED) {
        stopped = true;
        break;
      }
      const packet = framer.take();
      if (!packet) break;
      if (packet.length !== length)
        throw new Error(`take() returned ${packet.length} bytes, peekLength() announced ${length}`);
      taken.push(Buffer.from(packet));
      if (validatePacket(packet, version)) {
        stopped = true;
        break;
      }
      if (version === undefined) {
        const level = readConnectProtocol(packet)?.level;
        version = level === 3 || level === 5 ? level : 4;
      }
    }
  }
  const framed = Buffer.concat(taken);
  if (!framed.equals(input.bytes.subarray(0, framed.length)))
    throw new Error('the framer did not return the stream in order');
  const from = sliceFrom % (input.bytes.length + 1);
  const slice = input.bytes.subarray(from, from + (sliceLength % 80));
  for (const v of [undefined, 3, 4, 5] as const) {
    for (const packet of taken) validatePacket(packet, v);
    validatePacket(slice, v);
  }
  readConnectProtocol(slice);
}
