// Strict validation of one client-to-server MQTT packet's raw bytes (MQTT 3.1.1 and 5.0), before
// mqtt-packet decodes it. mqtt-packet accepts sequences the specification says must end the
// connection: ill-formed UTF-8 (it decodes it to U+FFFD), U+0000, wildcards in topic names, packet
// identifier 0, bytes after a packet's content, repeated or misplaced MQTT 5 properties and
// out-of-range property values. Each refusal names the rule it enforces and the MQTT 5 reason code
// the spec gives it: 0x81 (Malformed Packet) when the bytes cannot be parsed as the packet they claim
// to be, 0x82 (Protocol Error) for parsed data the protocol does not allow (MQTT 5.0 4.13). A
// malformation anywhere in the packet takes precedence over a protocol error found before it.
//
// Hot path: one pass over the bytes, no decoding to strings, PUBLISH payloads are never inspected
// (a Payload Format Indicator of 1 is checked by the publish handler). Normative IDs follow the
// numbering of the packet's own version (v3.1.1 or v5.0); rules without one cite their section, in
// MQTT 5.0 numbering unless the rule exists in 3.1.1 only.

import { ReasonCode } from './reason-codes.ts';

export interface PacketVerdict {
  /** MQTT 5 reason code: 0x81 Malformed Packet or 0x82 Protocol Error. */
  reasonCode: number;
  /** The rule broken, e.g. 'MQTT-1.5.4-1', or '§3.8.3.1' where the spec has no normative ID. */
  rule: string;
  detail: string;
}

const CONNECT = 1;
const CONNACK = 2;
const PUBLISH = 3;
const PUBACK = 4;
const PUBREC = 5;
const PUBREL = 6;
const PUBCOMP = 7;
const SUBSCRIBE = 8;
const SUBACK = 9;
const UNSUBSCRIBE = 10;
const UNSUBACK = 11;
const PINGREQ = 12;
const PINGRESP = 13;
const DISCONNECT = 14;
const AUTH = 15;

const PACKET_NAMES = [
  'Reserved',
  'CONNECT',
  'CONNACK',
  'PUBLISH',
  'PUBACK',
  'PUBREC',
  'PUBREL',
  'PUBCOMP',
  'SUBSCRIBE',
  'SUBACK',
  'UNSUBSCRIBE',
  'UNSUBACK',
  'PINGREQ',
  'PINGRESP',
  'DISCONNECT',
  'AUTH',
];

// ---- UTF-8 Encoded Strings (MQTT 5.0 1.5.4, 3.1.1 1.5.3) ----

const UTF8_OK = 0;
const UTF8_ILL_FORMED = 1;
const UTF8_SURROGATE = 2;
const UTF8_NULL = 3;
const UTF8_CONTROL = 4;
const UTF8_NONCHARACTER = 5;
const UTF8_WILDCARD = 6;

/**
 * Scans buf[start, end) as an MQTT UTF-8 string: well-formed UTF-8 (RFC 3629: no overlong forms,
 * no surrogates, nothing above U+10FFFF), no U+0000, and none of the code points the spec lets a
 * receiver treat as malformed (controls U+0001–U+001F and U+007F–U+009F, non-characters). With
 * `wildcards`, '+' and '#' are reported too, but only when the string has no other problem.
 */
function scanUtf8(buf: Buffer, start: number, end: number, wildcards: boolean): number {
  let sawWildcard = false;
  let i = start;
  while (i < end) {
    const b = buf[i]!;
    if (b < 0x80) {
      if (b >= 0x20 && b !== 0x7f) {
        if (wildcards && (b === 0x2b || b === 0x23)) sawWildcard = true;
        i++;
        continue;
      }
      return b === 0 ? UTF8_NULL : UTF8_CONTROL;
    }
    if (b < 0xc2) return UTF8_ILL_FORMED; // a stray continuation byte, or an overlong C0/C1 lead
    if (b < 0xe0) {
      if (i + 1 >= end) return UTF8_ILL_FORMED;
      const c1 = buf[i + 1]!;
      if ((c1 & 0xc0) !== 0x80) return UTF8_ILL_FORMED;
      if (b === 0xc2 && c1 < 0xa0) return UTF8_CONTROL; // U+0080–U+009F
      i += 2;
      continue;
    }
    if (b < 0xf0) {
      if (i + 2 >= end) return UTF8_ILL_FORMED;
      const c1 = buf[i + 1]!;
      const c2 = buf[i + 2]!;
      if ((c1 & 0xc0) !== 0x80 || (c2 & 0xc0) !== 0x80) return UTF8_ILL_FORMED;
      if (b === 0xe0 && c1 < 0xa0) return UTF8_ILL_FORMED; // overlong
      if (b === 0xed && c1 >= 0xa0) return UTF8_SURROGATE; // U+D800–U+DFFF
      if (b === 0xef && ((c1 === 0xb7 && c2 >= 0x90 && c2 <= 0xaf) || (c1 === 0xbf && c2 >= 0xbe))) {
        return UTF8_NONCHARACTER; // U+FDD0–U+FDEF, U+FFFE, U+FFFF
      }
      i += 3;
      continue;
    }
    if (b < 0xf5) {
      if (i + 3 >= end) return UTF8_ILL_FORMED;
      const c1 = buf[i + 1]!;
      const c2 = buf[i + 2]!;
      const c3 = buf[i + 3]!;
      if ((c1 & 0xc0) !== 0x80 || (c2 & 0xc0) !== 0x80 || (c3 & 0xc0) !== 0x80) return UTF8_ILL_FORMED;
      if (b === 0xf0 && c1 < 0x90) return UTF8_ILL_FORMED; // overlong
      if (b === 0xf4 && c1 > 0x8f) return UTF8_ILL_FORMED; // above U+10FFFF
      if ((c1 & 0x0f) === 0x0f && c2 === 0xbf && c3 >= 0xbe) return UTF8_NONCHARACTER; // U+nFFFE, U+nFFFF
      i += 4;
      continue;
    }
    return UTF8_ILL_FORMED; // F5–FF never occur in UTF-8
  }
  return sawWildcard ? UTF8_WILDCARD : UTF8_OK;
}

// How readString treats '+' and '#'.
const WILDCARDS_ALLOWED = 0;
/** A topic name: wildcards make the packet malformed [MQTT-3.3.2-2]. */
const WILDCARDS_MALFORMED = 1;
/** A Response Topic: wildcards are a protocol error [MQTT-3.3.2-14]. */
const WILDCARDS_PROTOCOL_ERROR = 2;

// ---- MQTT 5 properties (MQTT 5.0 2.2.2, Table 2-4) ----

const T_BYTE = 1;
const T_TWO = 2;
const T_FOUR = 3;
const T_VARINT = 4;
const T_STRING = 5;
const T_BINARY = 6;
const T_PAIR = 7;

// Where a property may appear in a client-to-server packet.
const IN_CONNECT = 1;
const IN_WILL = 2;
const IN_PUBLISH = 4;
/** PUBACK, PUBREC, PUBREL, PUBCOMP. */
const IN_ACK = 8;
const IN_SUBSCRIBE = 16;
const IN_UNSUBSCRIBE = 32;
const IN_DISCONNECT = 64;
const IN_AUTH = 128;
const IN_ANY = 255;

const P_PAYLOAD_FORMAT = 0x01;
const P_SUBSCRIPTION_ID = 0x0b;
const P_AUTH_METHOD = 0x15;
const P_AUTH_DATA = 0x16;
const P_REQUEST_PROBLEM = 0x17;
const P_REQUEST_RESPONSE = 0x19;
const P_RESPONSE_TOPIC = 0x08;
const P_RECEIVE_MAXIMUM = 0x21;
const P_TOPIC_ALIAS = 0x23;
const P_USER_PROPERTY = 0x26;
const P_MAXIMUM_PACKET_SIZE = 0x27;

const PROPERTY_TYPE = new Uint8Array(0x2b);
const PROPERTY_WHERE = new Uint8Array(0x2b);
const PROPERTY_NAME: string[] = [];

function defineProperty(id: number, name: string, type: number, where: number): void {
  PROPERTY_TYPE[id] = type;
  PROPERTY_WHERE[id] = where;
  PROPERTY_NAME[id] = name;
}
defineProperty(0x01, 'Payload Format Indicator', T_BYTE, IN_PUBLISH | IN_WILL);
defineProperty(0x02, 'Message Expiry Interval', T_FOUR, IN_PUBLISH | IN_WILL);
defineProperty(0x03, 'Content Type', T_STRING, IN_PUBLISH | IN_WILL);
defineProperty(0x08, 'Response Topic', T_STRING, IN_PUBLISH | IN_WILL);
defineProperty(0x09, 'Correlation Data', T_BINARY, IN_PUBLISH | IN_WILL);
defineProperty(0x0b, 'Subscription Identifier', T_VARINT, IN_PUBLISH | IN_SUBSCRIBE);
defineProperty(0x11, 'Session Expiry Interval', T_FOUR, IN_CONNECT | IN_DISCONNECT);
defineProperty(0x12, 'Assigned Client Identifier', T_STRING, 0);
defineProperty(0x13, 'Server Keep Alive', T_TWO, 0);
defineProperty(0x15, 'Authentication Method', T_STRING, IN_CONNECT | IN_AUTH);
defineProperty(0x16, 'Authentication Data', T_BINARY, IN_CONNECT | IN_AUTH);
defineProperty(0x17, 'Request Problem Information', T_BYTE, IN_CONNECT);
defineProperty(0x18, 'Will Delay Interval', T_FOUR, IN_WILL);
defineProperty(0x19, 'Request Response Information', T_BYTE, IN_CONNECT);
defineProperty(0x1a, 'Response Information', T_STRING, 0);
defineProperty(0x1c, 'Server Reference', T_STRING, IN_DISCONNECT);
defineProperty(0x1f, 'Reason String', T_STRING, IN_ACK | IN_DISCONNECT | IN_AUTH);
defineProperty(0x21, 'Receive Maximum', T_TWO, IN_CONNECT);
defineProperty(0x22, 'Topic Alias Maximum', T_TWO, IN_CONNECT);
defineProperty(0x23, 'Topic Alias', T_TWO, IN_PUBLISH);
defineProperty(0x24, 'Maximum QoS', T_BYTE, 0);
defineProperty(0x25, 'Retain Available', T_BYTE, 0);
defineProperty(0x26, 'User Property', T_PAIR, IN_ANY);
defineProperty(0x27, 'Maximum Packet Size', T_FOUR, IN_CONNECT);
defineProperty(0x28, 'Wildcard Subscription Available', T_BYTE, 0);
defineProperty(0x29, 'Subscription Identifier Available', T_BYTE, 0);
defineProperty(0x2a, 'Shared Subscription Available', T_BYTE, 0);

function codeTable(codes: number[]): Uint8Array {
  const table = new Uint8Array(256);
  for (const code of codes) table[code] = 1;
  return table;
}
// Reason codes a client may send (MQTT 5.0 3.4.2.1, 3.5.2.1, 3.6.2.1, 3.7.2.1, 3.14.2.1).
const PUBACK_CODES = codeTable([0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99]);
const PUBREL_CODES = codeTable([0x00, 0x92]);
const DISCONNECT_CODES = codeTable([
  0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x90, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99,
]);

const hex = (n: number): string => `0x${n.toString(16).padStart(2, '0')}`;

/** A cursor over one packet that records the first malformation (which stops parsing) and the first protocol error (which does not). */
class Reader {
  readonly buf: Buffer;
  readonly v5: boolean;
  readonly end: number;
  pos: number;
  /** Bound for reads: the packet's end, or the end of the property block being read. */
  limit: number;
  malformed: PacketVerdict | null = null;
  protocolError: PacketVerdict | null = null;
  /** Property identifiers seen in the last property block: bit n of lo is id n, bit n of hi is id 32 + n. */
  seenLo = 0;
  seenHi = 0;

  constructor(buf: Buffer, pos: number, v5: boolean) {
    this.buf = buf;
    this.pos = pos;
    this.end = buf.length;
    this.limit = buf.length;
    this.v5 = v5;
  }

  /** Records a malformation; returns -1 so readers can `return this.fail(...)`. */
  fail(rule: string, detail: string): -1 {
    this.malformed ??= { reasonCode: ReasonCode.MalformedPacket, rule, detail };
    return -1;
  }

  protocol(rule: string, detail: string): void {
    this.protocolError ??= { reasonCode: ReasonCode.ProtocolError, rule, detail };
  }

  get verdict(): PacketVerdict | null {
    return this.malformed ?? this.protocolError;
  }

  /** Fails when fewer than n bytes are left before the limit. */
  need(n: number, what: string): boolean {
    if (this.limit - this.pos >= n) return true;
    this.fail(this.v5 ? '§2.1.4' : '§2.2.3', `packet ends inside ${what}`);
    return false;
  }

  u8(what: string): number {
    if (!this.need(1, what)) return -1;
    return this.buf[this.pos++]!;
  }

  u16(what: string): number {
    if (!this.need(2, what)) return -1;
    const value = this.buf.readUInt16BE(this.pos);
    this.pos += 2;
    return value;
  }

  u32(what: string): number {
    if (!this.need(4, what)) return -1;
    const value = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return value;
  }

  /** A Variable Byte Integer: at most four bytes, in its shortest form [MQTT-1.5.5-1]. */
  varint(what: string): number {
    let value = 0;
    let multiplier = 1;
    for (let n = 0; n < 4; n++) {
      if (!this.need(1, what)) return -1;
      const b = this.buf[this.pos++]!;
      value += (b & 0x7f) * multiplier;
      if ((b & 0x80) === 0) {
        if (n > 0 && b === 0) return this.fail('MQTT-1.5.5-1', `${what} is not in its shortest encoding`);
        return value;
      }
      multiplier *= 128;
    }
    return this.fail('§1.5.5', `${what} uses more than four bytes`);
  }

  /** A UTF-8 Encoded String; returns its byte length, or -1 when malformed. */
  string(what: string, wildcards = WILDCARDS_ALLOWED): number {
    const length = this.u16(`the length of ${what}`);
    if (length < 0) return -1;
    if (!this.need(length, what)) return -1;
    const start = this.pos;
    this.pos += length;
    const status = scanUtf8(this.buf, start, this.pos, wildcards !== WILDCARDS_ALLOWED);
    switch (status) {
      case UTF8_OK:
        return length;
      case UTF8_WILDCARD:
        if (wildcards === WILDCARDS_MALFORMED) return this.fail('MQTT-3.3.2-2', `${what} contains a wildcard`);
        this.protocol('MQTT-3.3.2-14', `${what} contains a wildcard`);
        return length;
      case UTF8_NULL:
        return this.fail(this.v5 ? 'MQTT-1.5.4-2' : 'MQTT-1.5.3-2', `${what} contains U+0000`);
      case UTF8_SURROGATE:
        return this.fail(this.v5 ? 'MQTT-1.5.4-1' : 'MQTT-1.5.3-1', `${what} encodes a surrogate (U+D800–U+DFFF)`);
      case UTF8_ILL_FORMED:
        return this.fail(this.v5 ? 'MQTT-1.5.4-1' : 'MQTT-1.5.3-1', `${what} is not well-formed UTF-8`);
      case UTF8_CONTROL:
        // The spec lets a receiver treat these as malformed (v5 1.5.4) or close (v3.1.1 1.5.3);
        // Castellan does, so that no control character reaches topics, logs or the audit trail.
        return this.fail(this.v5 ? '§1.5.4' : '§1.5.3', `${what} contains a control character`);
      default:
        return this.fail(this.v5 ? '§1.5.4' : '§1.5.3', `${what} contains a Unicode non-character`);
    }
  }

  /** Binary Data: a two-byte length and that many bytes. */
  binary(what: string): number {
    const length = this.u16(`the length of ${what}`);
    if (length < 0) return -1;
    if (!this.need(length, what)) return -1;
    this.pos += length;
    return length;
  }

  seen(id: number): boolean {
    return id < 32 ? (this.seenLo & (1 << id)) !== 0 : (this.seenHi & (1 << (id - 32))) !== 0;
  }

  /**
   * One property block (Property Length, then properties) valid in `where` [MQTT 5.0 2.2.2]. A
   * property not defined, or not defined for this packet, is malformed (2.2.2.2); repeating one
   * that may appear once is a protocol error, as are out-of-range values the spec names.
   */
  properties(where: number, packetName: string, publishFromClient = false): boolean {
    const length = this.varint(`the ${packetName} Property Length`);
    if (length < 0) return false;
    if (!this.need(length, `the ${packetName} properties`)) return false;
    const blockEnd = this.pos + length;
    const outerLimit = this.limit;
    this.limit = blockEnd;
    this.seenLo = 0;
    this.seenHi = 0;
    while (this.pos < blockEnd) {
      const id = this.buf[this.pos++]!;
      // Identifiers are Variable Byte Integers; every defined one fits in one byte.
      const type = id < PROPERTY_TYPE.length ? PROPERTY_TYPE[id]! : 0;
      if (type === 0) {
        this.fail('§2.2.2.2', `unknown property identifier ${hex(id)} in ${packetName}`);
        return false;
      }
      const name = PROPERTY_NAME[id]!;
      if ((PROPERTY_WHERE[id]! & where) === 0) {
        this.fail('§2.2.2.2', `${name} is not a ${packetName} property`);
        return false;
      }
      if (id !== P_USER_PROPERTY) {
        if (this.seen(id)) this.protocol('§2.2.2.2', `${name} appears more than once in ${packetName}`);
        if (id < 32) this.seenLo |= 1 << id;
        else this.seenHi |= 1 << (id - 32);
      }
      let value: number;
      switch (type) {
        case T_BYTE:
          value = this.u8(name);
          break;
        case T_TWO:
          value = this.u16(name);
          break;
        case T_FOUR:
          value = this.u32(name);
          break;
        case T_VARINT:
          value = this.varint(name);
          break;
        case T_STRING:
          value = this.string(name, id === P_RESPONSE_TOPIC ? WILDCARDS_PROTOCOL_ERROR : WILDCARDS_ALLOWED);
          break;
        case T_BINARY:
          value = this.binary(name);
          break;
        default:
          value = this.string(`${name} name`);
          if (value >= 0) value = this.string(`${name} value`);
      }
      if (value < 0) return false;
      switch (id) {
        case P_PAYLOAD_FORMAT:
          // Only 0 (unspecified bytes) and 1 (UTF-8) are defined (3.3.2.3.2, 3.1.3.2.3).
          if (value > 1) this.protocol('§3.3.2.3.2', `${name} is ${value}, not 0 or 1`);
          break;
        case P_REQUEST_PROBLEM:
          if (value > 1) this.protocol('§3.1.2.11.7', `${name} is ${value}, not 0 or 1`);
          break;
        case P_REQUEST_RESPONSE:
          if (value > 1) this.protocol('§3.1.2.11.6', `${name} is ${value}, not 0 or 1`);
          break;
        case P_RECEIVE_MAXIMUM:
          if (value === 0) this.protocol('§3.1.2.11.3', 'Receive Maximum is 0');
          break;
        case P_MAXIMUM_PACKET_SIZE:
          if (value === 0) this.protocol('§3.1.2.11.4', 'Maximum Packet Size is 0');
          break;
        case P_SUBSCRIPTION_ID:
          if (publishFromClient) this.protocol('MQTT-3.3.4-6', 'a client PUBLISH carries a Subscription Identifier');
          else if (value === 0) this.protocol('§3.8.2.1.2', 'Subscription Identifier is 0');
          break;
      }
    }
    this.limit = outerLimit;
    return true;
  }
}

/**
 * Validates one whole packet (fixed header included) received from a client. `protocolVersion` is
 * the version the connection's CONNECT declared, or undefined before CONNECT; a CONNECT is checked
 * against the version it declares itself. Returns null when the packet may be decoded and handled,
 * else why the connection must be closed. A CONNECT for MQTT 3.1 or an unknown protocol level is
 * checked only as far as its fixed header: the CONNECT handler answers it with CONNACK 0x01
 * [MQTT-3.1.2-2]. `enhancedAuth`: the connection's CONNECT carried an Authentication Method that was
 * accepted (MQTT 5 4.12), so the client may send AUTH.
 */
export function validatePacket(
  packet: Buffer,
  protocolVersion: 3 | 4 | 5 | undefined,
  enhancedAuth = false,
): PacketVerdict | null {
  if (packet.length < 2) return malformed('§2.1.1', 'packet shorter than a fixed header');
  const first = packet[0]!;
  const type = first >> 4;
  const flags = first & 0x0f;

  // Remaining Length (v5 2.1.4, v3.1.1 2.2.3): at most four bytes, and exactly the bytes that follow.
  let remaining = 0;
  let headerLength = 0;
  for (let i = 1, multiplier = 1; i <= 4; i++, multiplier *= 128) {
    if (i >= packet.length) return malformed('§2.1.4', 'packet ends inside the Remaining Length');
    const b = packet[i]!;
    remaining += (b & 0x7f) * multiplier;
    if ((b & 0x80) === 0) {
      headerLength = i + 1;
      break;
    }
  }
  if (headerLength === 0) return malformed('§2.1.4', 'Remaining Length uses more than four bytes');
  if (headerLength + remaining !== packet.length) {
    return malformed(
      '§2.1.4',
      `Remaining Length ${remaining} does not match the ${packet.length - headerLength} bytes that follow the fixed header`,
    );
  }
  // Only MQTT 5 requires the shortest encoding [MQTT-1.5.5-1]; some 3.1.1 clients pad it.
  const paddedLength = headerLength > 2 && packet[headerLength - 1] === 0;

  if (protocolVersion === undefined) {
    if (type !== CONNECT)
      return protocolError('MQTT-3.1.0-1', `the first packet is ${PACKET_NAMES[type]!}, not CONNECT`);
    return validateConnect(packet, flags, headerLength, paddedLength);
  }
  const v5 = protocolVersion === 5;
  if (paddedLength && v5) return malformed('MQTT-1.5.5-1', 'Remaining Length is not in its shortest encoding');
  // Packets a client never sends here are refused by type alone, whatever their flags and content.
  switch (type) {
    case 0:
      return protocolError('§2.1.2', 'reserved packet type 0');
    case CONNECT:
      return protocolError('MQTT-3.1.0-2', 'a second CONNECT');
    case CONNACK:
    case SUBACK:
    case UNSUBACK:
    case PINGRESP:
      // Wrong reserved flags make any packet malformed [MQTT-2.1.3-1]; the spec orders neither check
      // first. Mosquitto (whose test corpus we replay) checks SUBACK's and UNSUBACK's flags first and
      // the others' type first; we answer as it does where the spec leaves the choice open.
      if (flags !== 0 && (type === SUBACK || type === UNSUBACK)) {
        return malformed(
          v5 ? 'MQTT-2.1.3-1' : 'MQTT-2.2.2-2',
          `${PACKET_NAMES[type]!} fixed header flags are ${hex(flags)}, not 0x0`,
        );
      }
      return protocolError('§2.1.2', `${PACKET_NAMES[type]!} is sent only by a server`);
    case AUTH:
      // v3.1.1: a reserved type. v5: a client whose CONNECT carried no (accepted) Authentication
      // Method must not send AUTH [MQTT-4.12.0-7]; on a connection with one, it is checked below and
      // the AUTH handler decides.
      if (!v5 || !enhancedAuth) {
        return protocolError(
          v5 ? '§4.12' : '§2.2.1',
          v5 ? 'AUTH without an Authentication Method in CONNECT' : 'reserved packet type 15',
        );
      }
  }

  // Fixed header flags [MQTT-2.2.2-1, MQTT-2.2.2-2] (v5 [MQTT-2.1.3-1]): malformed when wrong.
  if (type === PUBLISH) {
    if ((flags & 0x06) === 0x06) return malformed('MQTT-3.3.1-4', 'PUBLISH with both QoS bits set');
    if ((flags & 0x08) !== 0 && (flags & 0x06) === 0) return malformed('MQTT-3.3.1-2', 'DUP set on a QoS 0 PUBLISH');
  } else {
    const required = type === PUBREL || type === SUBSCRIBE || type === UNSUBSCRIBE ? 0x02 : 0x00;
    if (flags !== required) {
      return malformed(
        v5 ? 'MQTT-2.1.3-1' : 'MQTT-2.2.2-2',
        `${PACKET_NAMES[type]!} fixed header flags are ${hex(flags)}, not ${hex(required)}`,
      );
    }
  }

  const r = new Reader(packet, headerLength, v5);
  switch (type) {
    case PUBLISH:
      validatePublish(r, (flags >> 1) & 0x03);
      break;
    case PUBACK:
    case PUBREC:
    case PUBREL:
    case PUBCOMP:
      validateAcknowledgement(r, type);
      break;
    case SUBSCRIBE:
      validateSubscribe(r);
      break;
    case UNSUBSCRIBE:
      validateUnsubscribe(r);
      break;
    case PINGREQ:
      break; // no variable header or payload: anything left is refused below
    case DISCONNECT:
      validateDisconnect(r);
      break;
    case AUTH:
      validateAuth(r);
      break;
  }
  if (r.malformed === null && r.pos !== r.end) {
    r.fail(v5 ? '§2.1.4' : '§2.2.3', `${r.end - r.pos} bytes after the end of the ${PACKET_NAMES[type]!} content`);
  }
  return r.verdict;
}

/** The protocol name and level a CONNECT declares, or null when they cannot be read. */
export function readConnectProtocol(packet: Buffer): { protocolId: string; level: number } | null {
  let i = 1;
  while (i < packet.length && i < 5 && (packet[i]! & 0x80) !== 0) i++;
  i++;
  if (i + 2 > packet.length) return null;
  const nameLength = packet.readUInt16BE(i);
  i += 2;
  if (i + nameLength + 1 > packet.length) return null;
  return { protocolId: packet.toString('latin1', i, i + nameLength), level: packet[i + nameLength]! };
}

function malformed(rule: string, detail: string): PacketVerdict {
  return { reasonCode: ReasonCode.MalformedPacket, rule, detail };
}

function protocolError(rule: string, detail: string): PacketVerdict {
  return { reasonCode: ReasonCode.ProtocolError, rule, detail };
}

/** 'MQTT' (4 bytes) or 'MQIsdp' (6 bytes) at pos with the given length. */
function protocolName(buf: Buffer, pos: number, length: number): 'MQTT' | 'MQIsdp' | null {
  if (length === 4 && buf[pos] === 0x4d && buf[pos + 1] === 0x51 && buf[pos + 2] === 0x54 && buf[pos + 3] === 0x54) {
    return 'MQTT';
  }
  if (length === 6 && buf.toString('latin1', pos, pos + 6) === 'MQIsdp') return 'MQIsdp';
  return null;
}

function validateConnect(
  packet: Buffer,
  flags: number,
  headerLength: number,
  paddedLength: boolean,
): PacketVerdict | null {
  // [MQTT-2.2.2-1/2] (v5 [MQTT-2.1.3-1]): the CONNECT flags nibble is reserved, 0.
  if (flags !== 0) return malformed('MQTT-2.2.2-2', `CONNECT fixed header flags are ${hex(flags)}, not 0x00`);
  const probe = new Reader(packet, headerLength, false);
  const nameLength = probe.u16('the Protocol Name length');
  if (nameLength < 0 || !probe.need(nameLength + 1, 'the Protocol Name and Level')) return probe.verdict;
  const name = protocolName(packet, probe.pos, nameLength);
  const level = packet[probe.pos + nameLength]!;
  if (name === null) return malformed('MQTT-3.1.2-1', 'the Protocol Name is not "MQTT"');
  // MQTT 3.1 and unknown levels: the CONNECT handler answers CONNACK 0x01 [MQTT-3.1.2-2].
  if (name !== 'MQTT' || (level !== 4 && level !== 5)) return null;
  const v5 = level === 5;
  if (paddedLength && v5) return malformed('MQTT-1.5.5-1', 'Remaining Length is not in its shortest encoding');
  const r = new Reader(packet, probe.pos + nameLength + 1, v5);

  const connectFlags = r.u8('the Connect Flags');
  if (connectFlags < 0) return r.verdict;
  if ((connectFlags & 0x01) !== 0) return malformed('MQTT-3.1.2-3', 'the reserved Connect Flag is 1');
  const will = (connectFlags & 0x04) !== 0;
  const willQos = (connectFlags >> 3) & 0x03;
  const willRetain = (connectFlags & 0x20) !== 0;
  const password = (connectFlags & 0x40) !== 0;
  const username = (connectFlags & 0x80) !== 0;
  if (!will && willQos !== 0)
    return malformed(v5 ? 'MQTT-3.1.2-11' : 'MQTT-3.1.2-13', 'Will QoS set without the Will Flag');
  if (!will && willRetain)
    return malformed(v5 ? 'MQTT-3.1.2-13' : 'MQTT-3.1.2-15', 'Will Retain set without the Will Flag');
  if (will && willQos === 3) return malformed(v5 ? 'MQTT-3.1.2-12' : 'MQTT-3.1.2-14', 'Will QoS is 3');
  if (!v5 && password && !username) return malformed('MQTT-3.1.2-22', 'Password Flag set without the User Name Flag');

  if (r.u16('the Keep Alive') < 0) return r.verdict;
  if (v5) {
    if (!r.properties(IN_CONNECT, 'CONNECT')) return r.verdict;
    if (r.seen(P_AUTH_DATA) && !r.seen(P_AUTH_METHOD)) {
      r.protocol('§3.1.2.11.10', 'Authentication Data without an Authentication Method');
    }
  }
  if (r.string('the Client Identifier') < 0) return r.verdict; // [MQTT-3.1.3-4]
  if (will) {
    if (v5 && !r.properties(IN_WILL, 'Will')) return r.verdict;
    // Wildcards and other topic rules are the CONNECT handler's: it refuses with a CONNACK.
    if (r.string('the Will Topic') < 0) return r.verdict;
    if (r.binary('the Will Payload') < 0) return r.verdict;
  }
  if (username && r.string('the User Name') < 0) return r.verdict;
  if (password && r.binary('the Password') < 0) return r.verdict;
  if (r.pos !== r.end) {
    // e.g. [MQTT-3.1.2-18]/[MQTT-3.1.2-20] (v3.1.1): a field present whose flag is 0.
    return malformed('§3.1.3', `${r.end - r.pos} bytes after the end of the CONNECT payload`);
  }
  return r.verdict;
}

/** A Packet Identifier, which must not be 0 [MQTT-2.2.1-3] (v3.1.1 [MQTT-2.3.1-1]); false when malformed. */
function packetIdentifier(r: Reader, packetName: string): boolean {
  const id = r.u16('the Packet Identifier');
  if (id < 0) return false;
  if (id === 0) r.protocol(r.v5 ? 'MQTT-2.2.1-3' : 'MQTT-2.3.1-1', `${packetName} with Packet Identifier 0`);
  return true;
}

function validatePublish(r: Reader, qos: number): void {
  const topicLength = r.string('the Topic Name', WILDCARDS_MALFORMED);
  if (topicLength < 0) return;
  if (qos > 0 && !packetIdentifier(r, 'PUBLISH')) return;
  if (r.v5) {
    if (!r.properties(IN_PUBLISH, 'PUBLISH', true)) return;
    // An empty Topic Name needs a Topic Alias (3.3.2.1); alias values are the publish handler's.
    if (topicLength === 0 && !r.seen(P_TOPIC_ALIAS)) r.protocol('§3.3.2.1', 'empty Topic Name without a Topic Alias');
  } else if (topicLength === 0) {
    r.fail('MQTT-4.7.3-1', 'empty Topic Name');
    return;
  }
  r.pos = r.end; // the payload is application data
}

function validateAcknowledgement(r: Reader, type: number): void {
  const name = PACKET_NAMES[type]!;
  if (!packetIdentifier(r, name)) return;
  if (!r.v5 || r.pos === r.end) return; // v5: the Reason Code and properties may be omitted
  const code = r.u8('the Reason Code');
  const valid = type === PUBACK || type === PUBREC ? PUBACK_CODES : PUBREL_CODES;
  if (valid[code] !== 1) r.protocol('§2.4', `${hex(code)} is not a ${name} Reason Code`);
  if (r.pos === r.end) return;
  r.properties(IN_ACK, name);
}

/** Whether buf[start, end) starts with '$share/' (24 73 68 61 72 65 2F). */
function isSharedFilter(buf: Buffer, start: number, end: number): boolean {
  return (
    end - start >= 7 &&
    buf[start] === 0x24 &&
    buf[start + 1] === 0x73 &&
    buf[start + 2] === 0x68 &&
    buf[start + 3] === 0x61 &&
    buf[start + 4] === 0x72 &&
    buf[start + 5] === 0x65 &&
    buf[start + 6] === 0x2f
  );
}

/** What is wrong with a '$share/{ShareName}/{filter}' filter [MQTT-4.8.2-1, MQTT-4.8.2-2], or null. */
function sharedFilterProblem(buf: Buffer, start: number, end: number): [rule: string, detail: string] | null {
  let i = start + 7;
  while (i < end && buf[i] !== 0x2f) {
    if (buf[i] === 0x2b || buf[i] === 0x23) return ['MQTT-4.8.2-2', 'the ShareName contains a wildcard'];
    i++;
  }
  if (i === start + 7) return ['MQTT-4.8.2-1', 'the ShareName is empty'];
  if (i >= end - 1) return ['MQTT-4.8.2-2', 'no Topic Filter follows the ShareName'];
  return null;
}

/**
 * What SUBSCRIBE and UNSUBSCRIBE start with: a Packet Identifier, v5 properties valid `where`, and a
 * payload that is not empty (v5: a Protocol Error [emptyRuleV5]; v3.1.1: malformed [emptyRuleV4]).
 * False when there is nothing more to read.
 */
function subscriptionHeader(
  r: Reader,
  where: number,
  packetName: string,
  emptyRuleV5: string,
  emptyRuleV4: string,
): boolean {
  if (!packetIdentifier(r, packetName)) return false;
  if (r.v5 && !r.properties(where, packetName)) return false;
  if (r.pos !== r.end) return true;
  if (r.v5) r.protocol(emptyRuleV5, `${packetName} without a Topic Filter`);
  else r.fail(emptyRuleV4, `${packetName} without a Topic Filter`);
  return false;
}

/** A Topic Filter: its byte length, or -1 when malformed (empty: [MQTT-4.7.3-1]). */
function topicFilter(r: Reader): number {
  const length = r.string('a Topic Filter');
  return length === 0 ? r.fail('MQTT-4.7.3-1', 'empty Topic Filter') : length;
}

function validateSubscribe(r: Reader): void {
  // v5: "A SUBSCRIBE packet with no Payload is a Protocol Error" (3.8.3).
  if (!subscriptionHeader(r, IN_SUBSCRIBE, 'SUBSCRIBE', 'MQTT-3.8.3-2', 'MQTT-3.8.3-3')) return;
  while (r.pos < r.end) {
    const length = topicFilter(r);
    if (length < 0) return;
    const filterStart = r.pos - length;
    const options = r.u8('the Subscription Options');
    if (options < 0) return;
    if (!r.v5) {
      if ((options & 0xfc) !== 0 || (options & 0x03) === 0x03) {
        r.fail('MQTT-3-8.3-4', `Requested QoS byte ${hex(options)}`);
        return;
      }
      continue;
    }
    if ((options & 0xc0) !== 0) {
      r.fail('MQTT-3.8.3-5', `reserved Subscription Options bits set (${hex(options)})`);
      return;
    }
    if ((options & 0x03) === 0x03) r.protocol('§3.8.3.1', 'Maximum QoS 3');
    if ((options & 0x30) === 0x30) r.protocol('§3.8.3.1', 'Retain Handling 3');
    const filterEnd = filterStart + length;
    if (isSharedFilter(r.buf, filterStart, filterEnd)) {
      const problem = sharedFilterProblem(r.buf, filterStart, filterEnd);
      if (problem !== null) r.protocol(problem[0], problem[1]);
      else if ((options & 0x04) !== 0) r.protocol('MQTT-3.8.3-4', 'No Local on a Shared Subscription');
    }
  }
}

function validateUnsubscribe(r: Reader): void {
  // v5: "An UNSUBSCRIBE packet with no Payload is a Protocol Error" (3.10.3).
  if (!subscriptionHeader(r, IN_UNSUBSCRIBE, 'UNSUBSCRIBE', 'MQTT-3.10.3-2', 'MQTT-3.10.3-2')) return;
  while (r.pos < r.end) if (topicFilter(r) < 0) return;
}

/**
 * AUTH from a client (MQTT 5 3.15): Reason Code 0x18 (Continue authentication) or 0x19 (Re-authenticate)
 * [MQTT-3.15.2-1]; a Remaining Length of 0 means 0x00 Success, which only a server sends (3.15.2.1).
 * Properties: Authentication Method (exactly once: omitting or repeating it is a Protocol Error,
 * 3.15.2.2.2), Authentication Data, Reason String, User Property.
 */
function validateAuth(r: Reader): void {
  if (r.pos === r.end) {
    r.protocol('MQTT-3.15.2-1', 'AUTH with Reason Code 0x00 (Success) from a client');
    return;
  }
  const code = r.u8('the Reason Code');
  if (code !== 0x18 && code !== 0x19)
    r.protocol('MQTT-3.15.2-1', `${hex(code)} is not an AUTH Reason Code a client sends`);
  if (r.pos === r.end) {
    r.protocol('§3.15.2.2.2', 'AUTH without an Authentication Method');
    return;
  }
  if (!r.properties(IN_AUTH, 'AUTH')) return;
  if (!r.seen(P_AUTH_METHOD)) r.protocol('§3.15.2.2.2', 'AUTH without an Authentication Method');
}

function validateDisconnect(r: Reader): void {
  if (!r.v5 || r.pos === r.end) return; // v5: Reason Code 0x00 and no properties may be omitted
  const code = r.u8('the Reason Code');
  if (DISCONNECT_CODES[code] !== 1)
    r.protocol('MQTT-3.14.2-1', `${hex(code)} is not a Reason Code a client may send in DISCONNECT`);
  if (r.pos === r.end) return;
  r.properties(IN_DISCONNECT, 'DISCONNECT');
}
