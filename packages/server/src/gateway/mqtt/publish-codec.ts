// The outgoing PUBLISH encoder (the broker's hottest write) and the reader of User Properties in wire
// order. mqtt-packet decodes User Properties into an object, which loses the order of repeated names
// (a=1, b=2, a=3 becomes {a: [1, 3], b: 2}) and puts integer-like names first, but the server MUST
// forward them in their order [MQTT-3.3.2-18]: when the object cannot say the order, the broker reads
// the pairs from the packet's bytes and writes them back itself.
import type { Packet } from 'mqtt-packet';
import type { OutboundMessage } from './session.ts';

export type UserPropertyList = ReadonlyArray<readonly [string, string]>;

/** User Properties in wire order of PUBLISH packets whose decoded object lost it [MQTT-3.3.2-18]. */
const userPropertyLists = new WeakMap<Packet, UserPropertyList>();

export function rememberUserPropertyOrder(packet: Packet, list: UserPropertyList): void {
  userPropertyLists.set(packet, list);
}

export function orderedUserProperties(packet: Packet): UserPropertyList | undefined {
  return userPropertyLists.get(packet);
}

const INTEGER_LIKE = /^(0|[1-9][0-9]*)$/;

/** Does the decoded object lose the wire order (repeated names, or names JS orders numerically)? */
export function userPropertiesNeedOrder(userProperties: Readonly<Record<string, string | string[]>>): boolean {
  for (const key in userProperties) {
    if (Array.isArray(userProperties[key]) || INTEGER_LIKE.test(key)) return true;
  }
  return false;
}

function readVarint(buf: Buffer, at: number): [value: number, next: number] {
  let value = 0;
  let multiplier = 1;
  let i = at;
  for (;;) {
    const byte = buf[i++]!;
    value += (byte & 0x7f) * multiplier;
    if ((byte & 0x80) === 0) return [value, i];
    multiplier *= 128;
  }
}

/**
 * The User Properties of a (validated) MQTT 5 PUBLISH, in wire order; null if the bytes do not hold
 * what a PUBLISH should (then the caller keeps the decoded object).
 */
export function readPublishUserProperties(bytes: Buffer): UserPropertyList | null {
  try {
    const qos = (bytes[0]! >> 1) & 0x03;
    let [, at] = readVarint(bytes, 1); // remaining length
    at += 2 + bytes.readUInt16BE(at); // topic
    if (qos > 0) at += 2; // packet identifier
    const [length, start] = readVarint(bytes, at);
    const end = start + length;
    const out: Array<readonly [string, string]> = [];
    at = start;
    while (at < end) {
      const id = bytes[at++]!;
      switch (id) {
        case 0x01: // Payload Format Indicator
          at += 1;
          break;
        case 0x02: // Message Expiry Interval
          at += 4;
          break;
        case 0x23: // Topic Alias
          at += 2;
          break;
        case 0x03: // Content Type
        case 0x08: // Response Topic
        case 0x09: // Correlation Data
          at += 2 + bytes.readUInt16BE(at);
          break;
        case 0x0b: // Subscription Identifier
          at = readVarint(bytes, at)[1];
          break;
        case 0x26: {
          const keyLength = bytes.readUInt16BE(at);
          const key = bytes.toString('utf8', at + 2, at + 2 + keyLength);
          at += 2 + keyLength;
          const valueLength = bytes.readUInt16BE(at);
          const value = bytes.toString('utf8', at + 2, at + 2 + valueLength);
          at += 2 + valueLength;
          out.push([key, value]);
          break;
        }
        default:
          return null;
      }
    }
    return at === end ? out : null;
  } catch {
    return null;
  }
}

function varintSize(value: number): number {
  return value < 0x80 ? 1 : value < 0x4000 ? 2 : value < 0x200000 ? 3 : 4;
}

function writeVarint(buf: Buffer, at: number, value: number): number {
  let v = value;
  do {
    let byte = v % 128;
    v = Math.floor(v / 128);
    if (v > 0) byte |= 0x80;
    buf[at++] = byte;
  } while (v > 0);
  return at;
}

function writeString(buf: Buffer, at: number, value: string, length: number): number {
  buf.writeUInt16BE(length, at);
  buf.write(value, at + 2, length, 'utf8');
  return at + 2 + length;
}

/** Largest Remaining Length a packet can have (MQTT 2.1.4). */
const MAX_REMAINING_LENGTH = 268_435_455;

/**
 * A PUBLISH packet for this client: MQTT 5 with the message's properties (the publisher's, in order;
 * the remaining expiry [MQTT-3.3.2-6]; the matching subscription identifiers [MQTT-3.3.4-3]), MQTT
 * 3.1.1 without. Null when it cannot be encoded (too large for any packet).
 */
export function encodePublish(
  message: OutboundMessage,
  packetId: number | undefined,
  dup: boolean,
  protocolVersion: 4 | 5,
  now: number,
): Buffer | null {
  const topicLength = Buffer.byteLength(message.topic, 'utf8');
  let length = 2 + topicLength + (message.qos > 0 ? 2 : 0) + message.payload.length;
  // Properties (MQTT 5 only), measured first.
  let propertiesLength = 0;
  const source = protocolVersion === 5 ? message.properties : undefined;
  let contentTypeLength = 0;
  let responseTopicLength = 0;
  let expiry = 0;
  let pairs: UserPropertyList | undefined;
  let pairLengths: number[] | undefined;
  if (protocolVersion === 5) {
    if (source) {
      if (source.payloadFormatIndicator !== undefined) propertiesLength += 2;
      if (source.contentType !== undefined) {
        contentTypeLength = Buffer.byteLength(source.contentType, 'utf8');
        propertiesLength += 3 + contentTypeLength;
      }
      if (source.responseTopic !== undefined) {
        responseTopicLength = Buffer.byteLength(source.responseTopic, 'utf8');
        propertiesLength += 3 + responseTopicLength;
      }
      if (source.correlationData !== undefined) propertiesLength += 3 + source.correlationData.length;
      if (message.userPropertyList) pairs = message.userPropertyList;
      else if (source.userProperties !== undefined) {
        const list: Array<readonly [string, string]> = [];
        for (const [key, value] of Object.entries(source.userProperties)) {
          if (Array.isArray(value)) for (const v of value) list.push([key, v]);
          else list.push([key, value]);
        }
        pairs = list;
      }
      if (pairs) {
        pairLengths = [];
        for (const [key, value] of pairs) {
          const k = Buffer.byteLength(key, 'utf8');
          const v = Buffer.byteLength(value, 'utf8');
          pairLengths.push(k, v);
          propertiesLength += 5 + k + v;
        }
      }
    }
    if (message.expiresAt !== null) {
      expiry = Math.max(1, Math.ceil((message.expiresAt - now) / 1000));
      propertiesLength += 5;
    }
    const ids = message.subscriptionIds;
    if (ids) for (const id of ids) propertiesLength += 1 + varintSize(id);
    length += varintSize(propertiesLength) + propertiesLength;
  }
  if (length > MAX_REMAINING_LENGTH) return null;
  const buf = Buffer.allocUnsafe(1 + varintSize(length) + length);
  buf[0] = 0x30 | (dup ? 0x08 : 0) | (message.qos << 1) | (message.retain ? 0x01 : 0);
  let at = writeVarint(buf, 1, length);
  at = writeString(buf, at, message.topic, topicLength);
  if (message.qos > 0) {
    buf.writeUInt16BE(packetId!, at);
    at += 2;
  }
  if (protocolVersion === 5) {
    at = writeVarint(buf, at, propertiesLength);
    if (source) {
      if (source.payloadFormatIndicator !== undefined) {
        buf[at++] = 0x01;
        buf[at++] = source.payloadFormatIndicator ? 1 : 0;
      }
    }
    if (message.expiresAt !== null) {
      buf[at++] = 0x02;
      buf.writeUInt32BE(expiry, at);
      at += 4;
    }
    if (source) {
      if (source.contentType !== undefined) {
        buf[at++] = 0x03;
        at = writeString(buf, at, source.contentType, contentTypeLength);
      }
      if (source.responseTopic !== undefined) {
        buf[at++] = 0x08;
        at = writeString(buf, at, source.responseTopic, responseTopicLength);
      }
      if (source.correlationData !== undefined) {
        buf[at++] = 0x09;
        buf.writeUInt16BE(source.correlationData.length, at);
        at += 2 + source.correlationData.copy(buf, at + 2);
      }
    }
    const ids = message.subscriptionIds;
    if (ids) {
      for (const id of ids) {
        buf[at++] = 0x0b;
        at = writeVarint(buf, at, id);
      }
    }
    if (pairs && pairLengths) {
      for (let i = 0; i < pairs.length; i++) {
        buf[at++] = 0x26;
        at = writeString(buf, at, pairs[i]![0], pairLengths[2 * i]!);
        at = writeString(buf, at, pairs[i]![1], pairLengths[2 * i + 1]!);
      }
    }
  }
  message.payload.copy(buf, at);
  return buf;
}
