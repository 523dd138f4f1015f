// Strict validation of raw MQTT packets before mqtt-packet decodes them (packet-validator.ts), and the
// framer that cuts the byte stream into packets (packet-framer.ts): one test per rule with bytes built
// by hand, property tests against mqtt-packet's own encoder, agreement with the Mosquitto corpus's
// expectations (except where the spec says otherwise, each exception reviewed below), and the broker
// refusing such bytes on a real socket.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import mqttPacket, { type Packet } from 'mqtt-packet';
import { LENGTH_MALFORMED, LENGTH_UNKNOWN, PacketFramer } from '../src/gateway/mqtt/packet-framer.ts';
import { type PacketVerdict, readConnectProtocol, validatePacket } from '../src/gateway/mqtt/packet-validator.ts';
import { startConformanceBroker } from './helpers/conformance-broker.ts';
import { type CorpusCase, corpusAvailable, hex, loadCorpus, replayCase } from './helpers/mqtt-corpus.ts';

/** A packet from its first byte and its body (hex, spaces ignored); the Remaining Length is computed. */
function frame(first: number, body = ''): Buffer {
  const content = hex(body);
  const header = [first];
  let n = content.length;
  do {
    let byte = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) byte |= 0x80;
    header.push(byte);
  } while (n > 0);
  return Buffer.concat([Buffer.from(header), content]);
}

/** A length-prefixed string field (hex) from raw hex bytes. */
function str(bytesHex: string): string {
  const b = hex(bytesHex);
  return b.length.toString(16).padStart(4, '0') + b.toString('hex');
}
const utf8 = (s: string): string => str(Buffer.from(s, 'utf8').toString('hex'));

function expectVerdict(verdict: PacketVerdict | null, reasonCode: number, rule: string): void {
  assert.ok(verdict, `expected a refusal under ${rule}`);
  assert.equal(verdict.rule, rule, verdict.detail);
  assert.equal(verdict.reasonCode, reasonCode, `${verdict.rule}: ${verdict.detail}`);
}

const MALFORMED = 0x81;
const PROTOCOL_ERROR = 0x82;

// v5 PUBLISH QoS 0 with the given topic bytes and property bytes (both hex).
const publish5 = (topicHex: string, props = '00', payload = '7061796c6f6164') =>
  frame(0x30, `${str(topicHex)} ${props} ${payload}`);
const publish4 = (topicHex: string, payload = '7061796c6f6164') => frame(0x30, `${str(topicHex)} ${payload}`);
// v5 PUBLISH QoS 1, packet identifier 0x1234, with property bytes.
const publish5q1 = (props: string) => frame(0x32, `${utf8('t')} 1234 ${props} 70`);
// v5 CONNECT with connect flags, property bytes and payload (hex).
const connect5 = (flags: string, props = '00', payload = utf8('c')) =>
  frame(0x10, `${utf8('MQTT')} 05 ${flags} 003c ${props} ${payload}`);
const connect4 = (flags: string, payload = utf8('c')) => frame(0x10, `${utf8('MQTT')} 04 ${flags} 003c ${payload}`);

describe('MQTT packet validator: UTF-8 strings', () => {
  test('[MQTT-1.5.4-1] a UTF-8 encoded lone surrogate (U+D800–U+DFFF) is malformed', () => {
    for (const surrogate of ['eda080', 'edbfbf', 'edb080']) {
      expectVerdict(validatePacket(publish5(`74${surrogate}`), 5), MALFORMED, 'MQTT-1.5.4-1');
      expectVerdict(validatePacket(publish4(`74${surrogate}`), 4), MALFORMED, 'MQTT-1.5.3-1');
    }
    // Also in a CONNECT field, a property and a topic filter.
    expectVerdict(validatePacket(connect5('02', '00', str('63eda080')), undefined), MALFORMED, 'MQTT-1.5.4-1');
    expectVerdict(validatePacket(publish5q1(`06 03${str('eda080')}`), 5), MALFORMED, 'MQTT-1.5.4-1');
    expectVerdict(validatePacket(frame(0x82, `0001 00 ${str('eda080')} 00`), 5), MALFORMED, 'MQTT-1.5.4-1');
  });

  test('[MQTT-1.5.4-1] ill-formed UTF-8 (overlong, truncated, stray continuation, above U+10FFFF) is malformed', () => {
    const cases = {
      'overlong U+0000': 'c080',
      'overlong 2-byte form': 'c1bf',
      'overlong 3-byte form': 'e08080',
      'overlong 4-byte form': 'f08f8080',
      'stray continuation byte': '80',
      'truncated 2-byte sequence': '74c3',
      'truncated 3-byte sequence': 'e282',
      'truncated 4-byte sequence': 'f09f98',
      'missing continuation': 'c374',
      'above U+10FFFF': 'f4908080',
      'F5 lead byte': 'f5808080',
      'FF byte': 'ff',
    };
    for (const [what, bytes] of Object.entries(cases)) {
      const verdict = validatePacket(publish5(bytes), 5);
      assert.ok(verdict, what);
      assert.equal(verdict.reasonCode, MALFORMED, what);
      assert.equal(verdict.rule, 'MQTT-1.5.4-1', what);
    }
  });

  test('[MQTT-1.5.4-2] U+0000 in a UTF-8 string is malformed', () => {
    expectVerdict(validatePacket(publish5('746f7000'), 5), MALFORMED, 'MQTT-1.5.4-2');
    expectVerdict(validatePacket(publish4('746f7000'), 4), MALFORMED, 'MQTT-1.5.3-2');
    expectVerdict(validatePacket(connect4('02', str('6300')), undefined), MALFORMED, 'MQTT-1.5.3-2');
    expectVerdict(
      validatePacket(connect5('82', '00', `${utf8('c')} ${str('7500')}`), undefined),
      MALFORMED,
      'MQTT-1.5.4-2',
    );
  });

  test('control characters and Unicode non-characters are refused as the spec permits (v5 1.5.4, v3.1.1 1.5.3)', () => {
    for (const bytes of [
      '7401',
      '741f',
      '747f',
      'c280',
      'c29f',
      'efbfbf',
      'efbfbe',
      'efb790',
      'efb7af',
      'f09fbfbe',
      'f48fbfbf',
    ]) {
      expectVerdict(validatePacket(publish5(bytes), 5), MALFORMED, '§1.5.4');
      expectVerdict(validatePacket(publish4(bytes), 4), MALFORMED, '§1.5.3');
    }
  });

  test('well-formed strings pass: supplementary planes, U+FEFF, U+00A0, U+FFFD, U+10FFFD', () => {
    for (const bytes of ['41f0aa9b94', 'efbbbf74', 'c2a0', 'efbfbd', 'f48fbfbd', 'e282ac', 'dfbf', 'ee8080']) {
      assert.equal(validatePacket(publish5(bytes), 5), null, bytes);
      assert.equal(validatePacket(publish4(bytes), 4), null, bytes);
    }
  });
});

describe('MQTT packet validator: fixed header and framing', () => {
  test('[MQTT-2.2.2-2] wrong reserved flag bits in the fixed header are malformed', () => {
    const cases: Array<[Buffer, number]> = [
      [frame(0x41, '0001'), 0x41],
      [frame(0x50 | 0x08, '0001'), 0x58],
      [frame(0x60, '0001'), 0x60], // PUBREL needs 0010
      [frame(0x73, '0001'), 0x73],
      [frame(0x80, `0001 ${utf8('a')} 00`), 0x80], // SUBSCRIBE needs 0010
      [frame(0xa6, `0001 ${utf8('a')}`), 0xa6],
      [frame(0xc1), 0xc1],
      [frame(0xe4), 0xe4],
    ];
    for (const [packet, first] of cases) {
      assert.equal(packet[0], first);
      expectVerdict(validatePacket(packet, 4), MALFORMED, 'MQTT-2.2.2-2');
      expectVerdict(validatePacket(packet, 5), MALFORMED, 'MQTT-2.1.3-1');
    }
    expectVerdict(
      validatePacket(frame(0x12, `${utf8('MQTT')} 04 02 003c ${utf8('c')}`), undefined),
      MALFORMED,
      'MQTT-2.2.2-2',
    );
  });

  test('[MQTT-3.3.1-4] a PUBLISH with QoS 3 is malformed; [MQTT-3.3.1-2] so is DUP on QoS 0', () => {
    expectVerdict(validatePacket(frame(0x36, `${utf8('t')} 1234 70`), 4), MALFORMED, 'MQTT-3.3.1-4');
    expectVerdict(validatePacket(frame(0x36, `${utf8('t')} 1234 00 70`), 5), MALFORMED, 'MQTT-3.3.1-4');
    expectVerdict(validatePacket(frame(0x38, `${utf8('t')} 70`), 4), MALFORMED, 'MQTT-3.3.1-2');
    assert.equal(validatePacket(frame(0x3a, `${utf8('t')} 1234 70`), 4), null, 'DUP on QoS 1 is fine');
    assert.equal(validatePacket(frame(0x3d, `${utf8('t')} 1234 00 70`), 5), null, 'QoS 2, DUP, RETAIN');
  });

  test('a Remaining Length that does not match the bytes, or is longer than four bytes, is malformed', () => {
    expectVerdict(validatePacket(hex('40 03 0001'), 4), MALFORMED, '§2.1.4');
    expectVerdict(validatePacket(hex('40 01 0001'), 4), MALFORMED, '§2.1.4');
    expectVerdict(validatePacket(hex('30 ff ff ff ff 7f'), 5), MALFORMED, '§2.1.4');
    expectVerdict(validatePacket(hex('30'), 5), MALFORMED, '§2.1.1');
    expectVerdict(validatePacket(hex('30 80'), 5), MALFORMED, '§2.1.4');
  });

  test('[MQTT-1.5.5-1] MQTT 5 requires the shortest Remaining Length; a padded one is tolerated in 3.1.1', () => {
    const padded = hex('c0 80 00');
    expectVerdict(validatePacket(padded, 5), MALFORMED, 'MQTT-1.5.5-1');
    assert.equal(validatePacket(padded, 4), null);
    const body = hex(`${utf8('MQTT')} 05 02 003c 00 ${utf8('c')}`);
    const connect = Buffer.concat([Buffer.from([0x10, 0x80 | body.length, 0x00]), body]);
    expectVerdict(validatePacket(connect, undefined), MALFORMED, 'MQTT-1.5.5-1');
  });

  test('bytes after a packet’s declared content are malformed', () => {
    expectVerdict(validatePacket(frame(0x40, '0001 00'), 4), MALFORMED, '§2.2.3');
    expectVerdict(validatePacket(frame(0x40, '0001 00 00 00'), 5), MALFORMED, '§2.1.4');
    expectVerdict(validatePacket(frame(0xc0, '00'), 4), MALFORMED, '§2.2.3');
    expectVerdict(validatePacket(frame(0xe0, '00'), 4), MALFORMED, '§2.2.3');
    expectVerdict(validatePacket(frame(0xa2, `0001 ${utf8('a')} 00`), 4), MALFORMED, '§2.2.3');
    // [MQTT-3.1.2-18] (3.1.1): a User Name present while its flag is 0.
    expectVerdict(validatePacket(connect4('02', `${utf8('c')} ${utf8('u')}`), undefined), MALFORMED, '§3.1.3');
  });

  test('packet types a client never sends here are protocol errors; so is a first packet other than CONNECT', () => {
    expectVerdict(validatePacket(frame(0x20, '00 00'), 4), PROTOCOL_ERROR, '§2.1.2');
    expectVerdict(validatePacket(frame(0x21, '00 00 00'), 5), PROTOCOL_ERROR, '§2.1.2');
    expectVerdict(validatePacket(frame(0x90, '0001 00'), 5), PROTOCOL_ERROR, '§2.1.2');
    expectVerdict(validatePacket(frame(0xb0, '0001'), 4), PROTOCOL_ERROR, '§2.1.2');
    // SUBACK and UNSUBACK with wrong flags: malformed first (as Mosquitto answers; the spec allows either).
    expectVerdict(validatePacket(frame(0x91, '0001 00'), 5), MALFORMED, 'MQTT-2.1.3-1');
    expectVerdict(validatePacket(frame(0xb8, '0001'), 4), MALFORMED, 'MQTT-2.2.2-2');
    expectVerdict(validatePacket(frame(0xd0), 5), PROTOCOL_ERROR, '§2.1.2');
    expectVerdict(validatePacket(frame(0x00), 5), PROTOCOL_ERROR, '§2.1.2');
    expectVerdict(validatePacket(frame(0xf0, '00'), 5), PROTOCOL_ERROR, '§4.12');
    expectVerdict(validatePacket(frame(0xf0), 4), PROTOCOL_ERROR, '§2.2.1');
    expectVerdict(validatePacket(frame(0xc0), undefined), PROTOCOL_ERROR, 'MQTT-3.1.0-1');
    expectVerdict(validatePacket(connect5('02'), 5), PROTOCOL_ERROR, 'MQTT-3.1.0-2');
  });
});

describe('MQTT packet validator: PUBLISH', () => {
  test('[MQTT-3.3.2-2] a topic name with a wildcard is malformed', () => {
    for (const topic of ['+', '#', 'a/+/b', 'a/#', 'a+b']) {
      expectVerdict(validatePacket(publish5(Buffer.from(topic).toString('hex')), 5), MALFORMED, 'MQTT-3.3.2-2');
      expectVerdict(validatePacket(publish4(Buffer.from(topic).toString('hex')), 4), MALFORMED, 'MQTT-3.3.2-2');
    }
  });

  test('[MQTT-2.2.1-3] packet identifier 0 is a protocol error (3.1.1: [MQTT-2.3.1-1])', () => {
    expectVerdict(validatePacket(frame(0x32, `${utf8('t')} 0000 00 70`), 5), PROTOCOL_ERROR, 'MQTT-2.2.1-3');
    expectVerdict(validatePacket(frame(0x34, `${utf8('t')} 0000 70`), 4), PROTOCOL_ERROR, 'MQTT-2.3.1-1');
    expectVerdict(validatePacket(frame(0x40, '0000'), 4), PROTOCOL_ERROR, 'MQTT-2.3.1-1');
    expectVerdict(validatePacket(frame(0x62, '0000 00'), 5), PROTOCOL_ERROR, 'MQTT-2.2.1-3');
    expectVerdict(validatePacket(frame(0x82, `0000 00 ${utf8('a')} 00`), 5), PROTOCOL_ERROR, 'MQTT-2.2.1-3');
    expectVerdict(validatePacket(frame(0xa2, `0000 ${utf8('a')}`), 4), PROTOCOL_ERROR, 'MQTT-2.3.1-1');
  });

  test('an empty topic name: 3.1.1 malformed [MQTT-4.7.3-1]; MQTT 5 a protocol error unless a Topic Alias is present', () => {
    expectVerdict(validatePacket(publish4(''), 4), MALFORMED, 'MQTT-4.7.3-1');
    expectVerdict(validatePacket(publish5(''), 5), PROTOCOL_ERROR, '§3.3.2.1');
    assert.equal(validatePacket(publish5('', '03 230001'), 5), null);
    // Topic Alias values (0, above the maximum, unknown) are the publish handler's to judge.
    assert.equal(validatePacket(publish5('74', '03 230000'), 5), null);
  });

  test('MQTT 5 PUBLISH properties: allowed ones pass, repeats are protocol errors, others are malformed', () => {
    const allowed = `01 01 02 0000003c 03${utf8('text/plain')} 08${utf8('r/t')} 09${str('0102')} 23 0001 26${utf8('k')}${utf8('v')} 26${utf8('k')}${utf8('w')}`;
    const length = hex(allowed.replace(/\s/g, '')).length;
    assert.equal(validatePacket(publish5q1(`${length.toString(16).padStart(2, '0')} ${allowed}`), 5), null);
    expectVerdict(validatePacket(publish5q1(`08 03${utf8('a')} 03${utf8('b')}`), 5), PROTOCOL_ERROR, '§2.2.2.2');
    expectVerdict(validatePacket(publish5q1('04 0101 0101'), 5), PROTOCOL_ERROR, '§2.2.2.2');
    expectVerdict(validatePacket(publish5q1('05 1100000001'), 5), MALFORMED, '§2.2.2.2'); // Session Expiry
    expectVerdict(validatePacket(publish5q1(`04 1f${utf8('x')}`), 5), MALFORMED, '§2.2.2.2'); // Reason String
    expectVerdict(validatePacket(publish5q1('02 0401'), 5), MALFORMED, '§2.2.2.2'); // unknown 0x04
    expectVerdict(validatePacket(publish5q1('03 800001'), 5), MALFORMED, '§2.2.2.2'); // identifier as a 2-byte varint
  });

  test('MQTT 5 property values: Payload Format Indicator not 0/1 and a client Subscription Identifier are protocol errors', () => {
    expectVerdict(validatePacket(publish5q1('02 0102'), 5), PROTOCOL_ERROR, '§3.3.2.3.2');
    expectVerdict(validatePacket(publish5q1('02 0b01'), 5), PROTOCOL_ERROR, 'MQTT-3.3.4-6');
    expectVerdict(validatePacket(publish5q1(`04 08${utf8('#')}`), 5), PROTOCOL_ERROR, 'MQTT-3.3.2-14');
  });

  test('a malformation later in the packet takes precedence over an earlier protocol error (MQTT 5 4.13)', () => {
    // Packet identifier 0 (protocol error), then a property block longer than the packet (malformed).
    expectVerdict(validatePacket(frame(0x32, `${utf8('t')} 0000 09 0101`), 5), MALFORMED, '§2.1.4');
    // Two Content Types (protocol error), the second one not well-formed UTF-8 (malformed).
    expectVerdict(validatePacket(publish5q1(`08 03${utf8('a')} 03${str('ff')}`), 5), MALFORMED, 'MQTT-1.5.4-1');
  });

  test('[MQTT-1.5.5-1] variable byte integers: shortest form, at most four bytes', () => {
    expectVerdict(validatePacket(publish5q1('03 0b8000'), 5), MALFORMED, 'MQTT-1.5.5-1');
    expectVerdict(validatePacket(publish5q1('06 0b8080808001'), 5), MALFORMED, '§1.5.5');
    expectVerdict(validatePacket(publish5('74', '8000'), 5), MALFORMED, 'MQTT-1.5.5-1'); // property length 0, padded
    expectVerdict(validatePacket(frame(0x82, `0001 06 0b8080808001 ${utf8('a')} 00`), 5), MALFORMED, '§1.5.5');
    assert.equal(validatePacket(frame(0x82, `0001 05 0bffffff7f ${utf8('a')} 00`), 5), null, 'the largest identifier');
  });

  test('a truncated field is malformed', () => {
    expectVerdict(validatePacket(frame(0x30, '0005 7468'), 4), MALFORMED, '§2.2.3');
    expectVerdict(validatePacket(frame(0x32, `${utf8('t')} 12`), 4), MALFORMED, '§2.2.3');
    expectVerdict(validatePacket(publish5q1('05 03 0004 61'), 5), MALFORMED, '§2.1.4');
    expectVerdict(validatePacket(publish5q1('01 01'), 5), MALFORMED, '§2.1.4');
  });
});

describe('MQTT packet validator: CONNECT', () => {
  test('[MQTT-3.1.2-3] the reserved Connect Flag must be 0', () => {
    expectVerdict(validatePacket(connect4('03'), undefined), MALFORMED, 'MQTT-3.1.2-3');
    expectVerdict(validatePacket(connect5('01'), undefined), MALFORMED, 'MQTT-3.1.2-3');
  });

  test('[MQTT-3.1.2-11] [MQTT-3.1.2-13] [MQTT-3.1.2-15] Will QoS and Will Retain need the Will Flag; Will QoS 3 is malformed', () => {
    expectVerdict(validatePacket(connect5('0a'), undefined), MALFORMED, 'MQTT-3.1.2-11');
    expectVerdict(validatePacket(connect5('22'), undefined), MALFORMED, 'MQTT-3.1.2-13');
    expectVerdict(validatePacket(connect4('0a'), undefined), MALFORMED, 'MQTT-3.1.2-13');
    expectVerdict(validatePacket(connect4('22'), undefined), MALFORMED, 'MQTT-3.1.2-15');
    const will4 = `${utf8('c')} ${utf8('w/t')} ${str('01')}`;
    expectVerdict(validatePacket(connect4('1e', will4), undefined), MALFORMED, 'MQTT-3.1.2-14');
    assert.equal(validatePacket(connect4('36', will4), undefined), null, 'will, QoS 2, retain');
    const will5 = `${utf8('c')} 05 1800000005 ${utf8('w/t')} ${str('01')}`;
    assert.equal(validatePacket(connect5('0e', '00', will5), undefined), null);
    expectVerdict(validatePacket(connect5('1e', '00', will5), undefined), MALFORMED, 'MQTT-3.1.2-12');
    // Will properties are checked against the Will's own list.
    const badWill = `${utf8('c')} 03 210001 ${utf8('w/t')} ${str('01')}`;
    expectVerdict(validatePacket(connect5('06', '00', badWill), undefined), MALFORMED, '§2.2.2.2');
  });

  test('[MQTT-3.1.2-22] a password without a user name is refused in 3.1.1, allowed in MQTT 5', () => {
    expectVerdict(validatePacket(connect4('42', `${utf8('c')} ${str('70')}`), undefined), MALFORMED, 'MQTT-3.1.2-22');
    assert.equal(validatePacket(connect5('42', '00', `${utf8('c')} ${str('70')}`), undefined), null);
    assert.equal(validatePacket(connect4('c2', `${utf8('c')} ${utf8('u')} ${str('0070ff')}`), undefined), null);
    // [MQTT-3.1.2-21]: the flag promises a password that is not there.
    expectVerdict(validatePacket(connect4('c2', `${utf8('c')} ${utf8('u')}`), undefined), MALFORMED, '§2.2.3');
  });

  test('CONNECT property values: Receive Maximum 0, Maximum Packet Size 0, request flags not 0/1, repeats', () => {
    expectVerdict(validatePacket(connect5('02', '03 210000'), undefined), PROTOCOL_ERROR, '§3.1.2.11.3');
    expectVerdict(validatePacket(connect5('02', '05 2700000000'), undefined), PROTOCOL_ERROR, '§3.1.2.11.4');
    expectVerdict(validatePacket(connect5('02', '02 1702'), undefined), PROTOCOL_ERROR, '§3.1.2.11.7');
    expectVerdict(validatePacket(connect5('02', '02 1902'), undefined), PROTOCOL_ERROR, '§3.1.2.11.6');
    expectVerdict(validatePacket(connect5('02', '06 210001 210002'), undefined), PROTOCOL_ERROR, '§2.2.2.2');
    expectVerdict(validatePacket(connect5('02', `05 16${str('0102')}`), undefined), PROTOCOL_ERROR, '§3.1.2.11.10');
    expectVerdict(validatePacket(connect5('02', '03 230001'), undefined), MALFORMED, '§2.2.2.2'); // Topic Alias
    const all = `11 0000003c 21 0010 27 00010000 22 000a 19 01 17 00 26${utf8('k')}${utf8('v')} 15${utf8('m')} 16${str('01')}`;
    const length = hex(all).length.toString(16).padStart(2, '0');
    assert.equal(validatePacket(connect5('02', `${length} ${all}`), undefined), null);
  });

  test('[MQTT-3.1.2-1] a wrong protocol name is malformed; [MQTT-3.1.2-2] MQTT 3.1 and unknown levels are left to the CONNECT handler', () => {
    expectVerdict(
      validatePacket(frame(0x10, `${utf8('MQTU')} 04 02 003c ${utf8('c')}`), undefined),
      MALFORMED,
      'MQTT-3.1.2-1',
    );
    expectVerdict(validatePacket(frame(0x10, `0000 04 02 003c ${utf8('c')}`), undefined), MALFORMED, 'MQTT-3.1.2-1');
    for (const [name, level] of [
      ['MQIsdp', '03'],
      ['MQTT', '06'],
      ['MQTT', '03'],
      ['MQIsdp', '02'],
      ['MQTT', '84'],
    ] as const) {
      // Whatever follows the level is not looked at: the handler answers CONNACK 0x01.
      const packet = frame(0x10, `${utf8(name)} ${level} ff ff`);
      assert.equal(validatePacket(packet, undefined), null, `${name} ${level}`);
      assert.deepEqual(readConnectProtocol(packet), { protocolId: name, level: parseInt(level, 16) });
    }
    // Only as far as the fixed header and the protocol name.
    expectVerdict(
      validatePacket(frame(0x14, `${utf8('MQIsdp')} 03 02 003c ${utf8('c')}`), undefined),
      MALFORMED,
      'MQTT-2.2.2-2',
    );
    expectVerdict(validatePacket(frame(0x10, `${utf8('MQTT')}`), undefined), MALFORMED, '§2.2.3');
    assert.equal(readConnectProtocol(frame(0x10, '0004 4d51')), null);
  });
});

describe('MQTT packet validator: SUBSCRIBE, UNSUBSCRIBE, acknowledgements, DISCONNECT', () => {
  test('[MQTT-3.8.3-5] reserved Subscription Options bits are malformed; (3.1.1 [MQTT-3-8.3-4]) so is anything above QoS 2', () => {
    expectVerdict(validatePacket(frame(0x82, `0001 00 ${utf8('a')} 40`), 5), MALFORMED, 'MQTT-3.8.3-5');
    expectVerdict(validatePacket(frame(0x82, `0001 00 ${utf8('a')} 80`), 5), MALFORMED, 'MQTT-3.8.3-5');
    for (const options of ['03', '04', '08', '10', '80']) {
      expectVerdict(validatePacket(frame(0x82, `0001 ${utf8('a')} ${options}`), 4), MALFORMED, 'MQTT-3-8.3-4');
    }
    assert.equal(validatePacket(frame(0x82, `0001 00 ${utf8('a')} 2e`), 5), null, 'QoS 2, NL, RAP, RH 2');
  });

  test('MQTT 5 SUBSCRIBE: Maximum QoS 3 and Retain Handling 3 are protocol errors (3.8.3.1)', () => {
    expectVerdict(validatePacket(frame(0x82, `0001 00 ${utf8('a')} 03`), 5), PROTOCOL_ERROR, '§3.8.3.1');
    expectVerdict(validatePacket(frame(0x82, `0001 00 ${utf8('a')} 30`), 5), PROTOCOL_ERROR, '§3.8.3.1');
  });

  test('[MQTT-3.8.3-4] No Local on a shared subscription; [MQTT-4.8.2-1] [MQTT-4.8.2-2] shared filter syntax (MQTT 5 only)', () => {
    const sub = (filter: string, options: string) => frame(0x82, `0001 00 ${utf8(filter)} ${options}`);
    expectVerdict(validatePacket(sub('$share/g/t', '04'), 5), PROTOCOL_ERROR, 'MQTT-3.8.3-4');
    expectVerdict(validatePacket(sub('$share//t', '00'), 5), PROTOCOL_ERROR, 'MQTT-4.8.2-1');
    expectVerdict(validatePacket(sub('$share/g/', '00'), 5), PROTOCOL_ERROR, 'MQTT-4.8.2-2');
    expectVerdict(validatePacket(sub('$share/g', '00'), 5), PROTOCOL_ERROR, 'MQTT-4.8.2-2');
    expectVerdict(validatePacket(sub('$share/g+/t', '00'), 5), PROTOCOL_ERROR, 'MQTT-4.8.2-2');
    assert.equal(validatePacket(sub('$share/g/t/#', '01'), 5), null);
    assert.equal(validatePacket(sub('$sharex/t', '04'), 5), null);
    assert.equal(
      validatePacket(frame(0x82, `0001 ${utf8('$share/g/')} 00`), 4),
      null,
      '3.1.1 has no shared subscriptions',
    );
  });

  test('SUBSCRIBE/UNSUBSCRIBE: an empty topic filter is malformed [MQTT-4.7.3-1]; no filter at all is refused', () => {
    expectVerdict(validatePacket(frame(0x82, `0001 00 ${utf8('a')} 00 0000 00`), 5), MALFORMED, 'MQTT-4.7.3-1');
    expectVerdict(validatePacket(frame(0xa2, `0001 ${utf8('a')} 0000`), 4), MALFORMED, 'MQTT-4.7.3-1');
    expectVerdict(validatePacket(frame(0x82, '0001 00'), 5), PROTOCOL_ERROR, 'MQTT-3.8.3-2');
    expectVerdict(validatePacket(frame(0x82, '0001'), 4), MALFORMED, 'MQTT-3.8.3-3');
    expectVerdict(validatePacket(frame(0xa2, '0001 00'), 5), PROTOCOL_ERROR, 'MQTT-3.10.3-2');
    expectVerdict(validatePacket(frame(0xa2, '0001'), 4), MALFORMED, 'MQTT-3.10.3-2');
    // Filters with misplaced wildcards are well-formed strings: the subscribe handler refuses them per filter.
    assert.equal(validatePacket(frame(0x82, `0001 00 ${utf8('a#')} 00 ${utf8('+x')} 00`), 5), null);
    expectVerdict(validatePacket(frame(0x82, `0001 00 ${utf8('a')}`), 5), MALFORMED, '§2.1.4');
  });

  test('SUBSCRIBE properties: Subscription Identifier 0 and repeats are protocol errors; UNSUBSCRIBE allows only User Property', () => {
    expectVerdict(validatePacket(frame(0x82, `0001 02 0b00 ${utf8('a')} 00`), 5), PROTOCOL_ERROR, '§3.8.2.1.2');
    expectVerdict(validatePacket(frame(0x82, `0001 04 0b01 0b02 ${utf8('a')} 00`), 5), PROTOCOL_ERROR, '§2.2.2.2');
    expectVerdict(validatePacket(frame(0x82, `0001 03 230001 ${utf8('a')} 00`), 5), MALFORMED, '§2.2.2.2');
    expectVerdict(validatePacket(frame(0xa2, `0001 02 0b01 ${utf8('a')}`), 5), MALFORMED, '§2.2.2.2');
    assert.equal(validatePacket(frame(0xa2, `0001 07 26${utf8('k')}${utf8('v')} ${utf8('a')}`), 5), null);
  });

  test('MQTT 5 acknowledgements and DISCONNECT: reason codes a client may send, their own properties only', () => {
    for (const [first, code] of [
      [0x40, '10'],
      [0x50, '97'],
      [0x62, '92'],
      [0x70, '00'],
    ] as const) {
      assert.equal(validatePacket(frame(first, '0001'), 5), null, 'reason code omitted');
      assert.equal(validatePacket(frame(first, `0001 ${code}`), 5), null);
      assert.equal(validatePacket(frame(first, `0001 ${code} 04 1f${utf8('x')}`), 5), null);
      expectVerdict(validatePacket(frame(first, '0001 ff'), 5), PROTOCOL_ERROR, '§2.4');
      expectVerdict(validatePacket(frame(first, `0001 00 04 03${utf8('x')}`), 5), MALFORMED, '§2.2.2.2');
      expectVerdict(
        validatePacket(frame(first, `0001 00 08 1f${utf8('x')} 1f${utf8('y')}`), 5),
        PROTOCOL_ERROR,
        '§2.2.2.2',
      );
    }
    expectVerdict(validatePacket(frame(0x62, '0001 10'), 5), PROTOCOL_ERROR, '§2.4');
    assert.equal(validatePacket(frame(0xe0), 5), null);
    assert.equal(validatePacket(frame(0xe0, `04 09 1100000000 1c${utf8('s')}`), 5), null);
    expectVerdict(validatePacket(frame(0xe0, '8e'), 5), PROTOCOL_ERROR, 'MQTT-3.14.2-1');
    expectVerdict(validatePacket(frame(0xe0, '00 02 0100'), 5), MALFORMED, '§2.2.2.2');
    expectVerdict(validatePacket(frame(0xe0, '00 02 1100'), 5), MALFORMED, '§2.1.4');
  });
});

describe('MQTT packet framer', () => {
  test('reports a packet’s size as soon as its fixed header arrives, before its body', () => {
    const framer = new PacketFramer();
    framer.push(hex('30'));
    assert.equal(framer.peekLength(), LENGTH_UNKNOWN);
    framer.push(hex('88'));
    assert.equal(framer.peekLength(), LENGTH_UNKNOWN);
    framer.push(hex('27'));
    assert.equal(framer.peekLength(), 3 + 5000);
    assert.equal(framer.take(), null);
    assert.equal(framer.bufferedBytes, 3);
  });

  test('refuses a Remaining Length longer than four bytes', () => {
    const framer = new PacketFramer();
    framer.push(hex('10 ff ff ff'));
    assert.equal(framer.peekLength(), LENGTH_UNKNOWN);
    framer.push(hex('ff 7f 00'));
    assert.equal(framer.peekLength(), LENGTH_MALFORMED);
    assert.equal(framer.take(), null);
    framer.clear();
    assert.equal(framer.bufferedBytes, 0);
  });

  test('a chunk holding whole packets yields views of it, without copying; a split packet is joined', () => {
    const framer = new PacketFramer();
    const chunk = hex('c000 40020001 3004 0001 7468 30');
    framer.push(chunk);
    const packets: Buffer[] = [];
    for (let p = framer.take(); p !== null; p = framer.take()) packets.push(p);
    assert.deepEqual(
      packets.map((p) => p.toString('hex')),
      ['c000', '40020001', '300400017468'],
    );
    assert.ok(packets.every((p) => p.buffer === chunk.buffer && p.byteOffset >= chunk.byteOffset));
    assert.equal(framer.bufferedBytes, 1);
    framer.push(Buffer.alloc(0));
    framer.push(hex('03'));
    assert.equal(framer.peekLength(), 5);
    framer.push(hex('0001'));
    assert.equal(framer.take(), null);
    framer.push(hex('74 c0'));
    assert.equal(framer.take()?.toString('hex'), '3003000174', 'joined from four chunks');
    assert.equal(framer.take(), null);
    framer.push(hex('00'));
    assert.equal(framer.take()?.toString('hex'), 'c000');
    assert.equal(framer.bufferedBytes, 0);
  });

  test('property: a stream of valid packets split at random points yields the same packets', () => {
    fc.assert(
      fc.property(
        fc
          .constantFrom(4 as const, 5 as const)
          .chain((v) => fc.tuple(fc.constant(v), fc.array(packetArb(v), { minLength: 1, maxLength: 8 }))),
        fc.array(fc.nat(), { maxLength: 12 }),
        ([version, packets], cuts) => {
          const encoded = packets.map((p) => encode(p, version));
          const stream = Buffer.concat(encoded);
          const points = [...new Set(cuts.map((c) => c % (stream.length + 1)))].sort((a, b) => a - b);
          const framer = new PacketFramer();
          const out: Buffer[] = [];
          let from = 0;
          for (const to of [...points, stream.length]) {
            framer.push(stream.subarray(from, to));
            from = to;
            for (;;) {
              const length = framer.peekLength();
              assert.notEqual(length, LENGTH_MALFORMED);
              const packet = framer.take();
              if (packet === null) break;
              assert.equal(packet.length, length);
              out.push(packet);
            }
          }
          assert.deepEqual(
            out.map((p) => p.toString('hex')),
            encoded.map((p) => p.toString('hex')),
          );
          assert.equal(framer.bufferedBytes, 0);
        },
      ),
      { numRuns: 300 },
    );
  });

  test('property: random bytes in random chunks never throw, and every packet has its announced length', () => {
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 40 }), { maxLength: 10 }), (chunks) => {
        const framer = new PacketFramer();
        for (const chunk of chunks) {
          framer.push(Buffer.from(chunk));
          for (;;) {
            const length = framer.peekLength();
            if (length === LENGTH_MALFORMED) return;
            const packet = framer.take();
            if (packet === null) break;
            assert.equal(packet.length, length);
          }
        }
      }),
      { numRuns: 500 },
    );
  });
});

// ---- Random valid packets, from mqtt-packet's own encoder ----

const allowedCodePoint = (cp: number): boolean =>
  !(
    cp < 0x20 ||
    (cp >= 0x7f && cp <= 0x9f) ||
    (cp >= 0xd800 && cp <= 0xdfff) ||
    (cp >= 0xfdd0 && cp <= 0xfdef) ||
    (cp & 0xfffe) === 0xfffe
  );
const unit = fc
  .oneof(
    { weight: 4, arbitrary: fc.integer({ min: 0x20, max: 0x7e }) },
    { weight: 1, arbitrary: fc.integer({ min: 0xa0, max: 0x10ffff }) },
  )
  .filter(allowedCodePoint)
  .map((cp) => String.fromCodePoint(cp));
const text = (minLength = 0) => fc.string({ unit, minLength, maxLength: 12 });
const topicName = text(1).filter((t) => !t.includes('+') && !t.includes('#'));
const topicFilter = text(1).filter((t) => !t.startsWith('$share/'));
const bytes = fc.uint8Array({ maxLength: 16 }).map((b) => Buffer.from(b));
const packetId = fc.integer({ min: 1, max: 0xffff });
const userProperties = fc.option(
  fc.dictionary(
    text(1).filter((k) => k !== '__proto__'),
    text(),
    // mqtt-packet cannot encode an empty User Property object.
    { minKeys: 1, maxKeys: 3 },
  ),
  { nil: undefined },
);
const u32 = fc.integer({ min: 0, max: 0xffffffff });
const opt = <T>(arb: fc.Arbitrary<T>) => fc.option(arb, { nil: undefined });

/** mqtt-packet's encoding; it returns no bytes for input it cannot encode, which would test nothing. */
function encode(packet: Packet, version: 4 | 5): Buffer {
  const bytes = mqttPacket.generate(packet, { protocolVersion: version });
  assert.ok(bytes.length >= 2, `mqtt-packet could not encode ${JSON.stringify(packet)}`);
  return bytes;
}

/** Drops undefined fields: mqtt-packet writes a property for every key present. */
function defined<T extends object>(o: T): T {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as T;
}

function packetArb(v: 4 | 5): fc.Arbitrary<Packet> {
  const v5 = v === 5;
  const publish = fc
    .record({
      topic: topicName,
      payload: bytes,
      qos: fc.constantFrom(0 as const, 1 as const, 2 as const),
      dup: fc.boolean(),
      retain: fc.boolean(),
      messageId: packetId,
      properties: fc.record({
        payloadFormatIndicator: opt(fc.boolean()),
        messageExpiryInterval: opt(u32),
        contentType: opt(text()),
        responseTopic: opt(topicName),
        correlationData: opt(bytes),
        userProperties,
        topicAlias: opt(fc.integer({ min: 1, max: 0xffff })),
      }),
    })
    .map(({ qos, dup, messageId, properties, ...rest }): Packet => ({
      cmd: 'publish',
      ...rest,
      qos,
      dup: qos > 0 && dup,
      ...(qos > 0 ? { messageId } : {}),
      ...(v5 ? { properties: defined(properties) } : {}),
    }));
  const acknowledgement = fc
    .record({
      cmd: fc.constantFrom('puback' as const, 'pubrec' as const, 'pubrel' as const, 'pubcomp' as const),
      messageId: packetId,
      code: fc.nat(),
      properties: fc.record({ reasonString: opt(text()), userProperties }),
    })
    .map(({ cmd, messageId, code, properties }): Packet => {
      const codes =
        cmd === 'puback' || cmd === 'pubrec' ? [0, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99] : [0, 0x92];
      return v5
        ? { cmd, messageId, reasonCode: codes[code % codes.length]!, properties: defined(properties) }
        : { cmd, messageId };
    });
  const subscribe = fc
    .record({
      messageId: packetId,
      subscriptions: fc.array(
        fc.record({
          topic: topicFilter,
          qos: fc.constantFrom(0 as const, 1 as const, 2 as const),
          nl: fc.boolean(),
          rap: fc.boolean(),
          rh: fc.constantFrom(0, 1, 2),
        }),
        { minLength: 1, maxLength: 4 },
      ),
      properties: fc.record({ subscriptionIdentifier: opt(fc.integer({ min: 1, max: 268_435_455 })), userProperties }),
    })
    .map(({ messageId, subscriptions, properties }): Packet => ({
      cmd: 'subscribe',
      messageId,
      subscriptions: v5 ? subscriptions : subscriptions.map(({ topic, qos }) => ({ topic, qos })),
      ...(v5 ? { properties: defined(properties) } : {}),
    }));
  const unsubscribe = fc
    .record({
      messageId: packetId,
      unsubscriptions: fc.array(topicFilter, { minLength: 1, maxLength: 4 }),
      userProperties,
    })
    .map(({ messageId, unsubscriptions, userProperties }): Packet => ({
      cmd: 'unsubscribe',
      messageId,
      unsubscriptions,
      ...(v5 ? { properties: defined({ userProperties }) } : {}),
    }));
  const disconnect = fc
    .record({
      reasonCode: fc.constantFrom(0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x90, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99),
      properties: fc.record({
        sessionExpiryInterval: opt(u32),
        reasonString: opt(text()),
        serverReference: opt(text()),
        userProperties,
      }),
    })
    .map(({ reasonCode, properties }): Packet =>
      v5 ? { cmd: 'disconnect', reasonCode, properties: defined(properties) } : { cmd: 'disconnect' },
    );
  return fc.oneof(
    publish,
    acknowledgement,
    subscribe,
    unsubscribe,
    disconnect,
    fc.constant<Packet>({ cmd: 'pingreq' }),
  );
}

function connectArb(v: 4 | 5): fc.Arbitrary<Packet> {
  const v5 = v === 5;
  return fc
    .record({
      clientId: text(),
      clean: fc.boolean(),
      keepalive: fc.integer({ min: 0, max: 0xffff }),
      username: opt(text()),
      password: opt(bytes),
      will: opt(
        fc.record({
          topic: topicName,
          payload: bytes,
          qos: fc.constantFrom(0 as const, 1 as const, 2 as const),
          retain: fc.boolean(),
          properties: fc.record({
            willDelayInterval: opt(u32),
            payloadFormatIndicator: opt(fc.boolean()),
            messageExpiryInterval: opt(u32),
            contentType: opt(text()),
            responseTopic: opt(topicName),
            correlationData: opt(bytes),
            userProperties,
          }),
        }),
      ),
      properties: fc.record({
        sessionExpiryInterval: opt(u32),
        receiveMaximum: opt(fc.integer({ min: 1, max: 0xffff })),
        maximumPacketSize: opt(fc.integer({ min: 1, max: 0xffffffff })),
        topicAliasMaximum: opt(fc.integer({ min: 0, max: 0xffff })),
        requestResponseInformation: opt(fc.boolean()),
        requestProblemInformation: opt(fc.boolean()),
        userProperties,
        authenticationMethod: opt(text()),
      }),
    })
    .map(({ will, password, username, properties, clientId, ...rest }): Packet => ({
      cmd: 'connect',
      protocolId: 'MQTT',
      protocolVersion: v,
      ...rest,
      // mqtt-packet refuses to encode an empty client ID without a clean session.
      clientId: clientId === '' && !rest.clean ? 'c' : clientId,
      ...(username === undefined ? {} : { username }),
      // A password only with a user name: 3.1.1 requires it [MQTT-3.1.2-22], mqtt-packet always does.
      ...(password === undefined || username === undefined ? {} : { password }),
      ...(will === undefined
        ? {}
        : {
            will: v5
              ? { ...will, properties: defined(will.properties) }
              : { topic: will.topic, payload: will.payload, qos: will.qos, retain: will.retain },
          }),
      ...(v5 ? { properties: defined(properties) } : {}),
    }));
}

describe('MQTT packet validator: properties', () => {
  test('property: every packet mqtt-packet encodes from valid input passes', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(4 as const, 5 as const).chain((v) => fc.tuple(fc.constant(v), connectArb(v), packetArb(v))),
        ([version, connect, packet]) => {
          const connectBytes = encode(connect, version);
          assert.equal(validatePacket(connectBytes, undefined), null, connectBytes.toString('hex'));
          const bytes = encode(packet, version);
          assert.equal(validatePacket(bytes, version), null, `${packet.cmd} ${bytes.toString('hex')}`);
        },
      ),
      { numRuns: 1000 },
    );
  });

  test('property: mutated packets never throw, and what passes is decoded by mqtt-packet without error', () => {
    const mutation = fc.record({ at: fc.nat(), byte: fc.integer({ min: 0, max: 255 }) });
    fc.assert(
      fc.property(
        fc
          .constantFrom(4 as const, 5 as const)
          .chain((v) =>
            fc.tuple(
              fc.constant(v),
              fc.oneof(connectArb(v), packetArb(v)),
              fc.array(mutation, { minLength: 1, maxLength: 4 }),
              fc.nat(),
            ),
          ),
        ([version, packet, mutations, cut]) => {
          const original = encode(packet, version);
          const bytes = Buffer.from(original);
          for (const { at, byte } of mutations) bytes[at % bytes.length] = byte;
          const truncated = bytes.subarray(0, Math.max(1, cut % (bytes.length + 1)));
          for (const candidate of [bytes, truncated]) {
            for (const v of [undefined, 4, 5] as const) {
              const verdict = validatePacket(candidate, v);
              if (verdict !== null) {
                assert.ok(verdict.reasonCode === 0x81 || verdict.reasonCode === 0x82, JSON.stringify(verdict));
                continue;
              }
              const protocol = candidate[0]! >> 4 === 1 ? readConnectProtocol(candidate) : null;
              if (protocol && (protocol.protocolId !== 'MQTT' || (protocol.level !== 4 && protocol.level !== 5)))
                continue;
              // What the validator lets through, the decoder the connection uses accepts too.
              const parser = mqttPacket.parser({ protocolVersion: v ?? 4 });
              const errors: string[] = [];
              let decoded = 0;
              parser.on('error', (error: Error) => errors.push(error.message));
              parser.on('packet', () => decoded++);
              parser.parse(candidate);
              assert.deepEqual(errors, [], candidate.toString('hex'));
              assert.equal(decoded, 1, candidate.toString('hex'));
            }
          }
        },
      ),
      { numRuns: 2000 },
    );
  });
});

// ---- Agreement with the Mosquitto corpus's expectations ----

/**
 * Where the validator knowingly answers differently from Mosquitto's corpus, keyed by the verdict's
 * rule and reason code, with the spec's reason. Every other refusal must agree with the corpus.
 */
const REVIEWED_DIFFERENCES: Record<string, string> = {
  '§2.2.2.2 0x81':
    'A property not valid for its packet type makes it a Malformed Packet (v5 2.2.2.2); Mosquitto answers 0x82 outside SUBSCRIBE/UNSUBSCRIBE.',
  '§3.8.3.1 0x82': 'Maximum QoS 3 and Retain Handling 3 are Protocol Errors (v5 3.8.3.1); Mosquitto answers 0x81.',
  'MQTT-3.8.3-2 0x82': '"A SUBSCRIBE packet with no Payload is a Protocol Error" (v5 3.8.3); Mosquitto answers 0x81.',
  'MQTT-3.10.3-2 0x82':
    '"An UNSUBSCRIBE packet with no Payload is a Protocol Error" (v5 3.10.3); Mosquitto answers 0x81.',
  '§3.8.2.1.2 0x82': 'Subscription Identifier 0 is a Protocol Error (v5 3.8.2.1.2); Mosquitto answers 0x81.',
  '§3.3.2.1 0x82':
    'An empty Topic Name without a Topic Alias is a Protocol Error (v5 3.3.2.1); Mosquitto answers 0x81.',
  'MQTT-3.3.4-6 0x82':
    'A client PUBLISH MUST NOT carry a Subscription Identifier [MQTT-3.3.4-6]; Mosquitto accepts it.',
  'MQTT-2.2.2-2 0x81':
    'MQTT 3.1 is not supported: its CONNECT fixed header is held to 3.1.1 rules (Mosquitto accepts flags there).',
};

interface CorpusVerdict {
  verdict: PacketVerdict | null;
  /** Index of the send message whose bytes were refused. */
  at: number;
}

/** Feeds a case's sent bytes through the framer and validator as the connection does. */
function judgeCase(c: CorpusCase): CorpusVerdict {
  let version: 4 | 5 | undefined = c.connect ? (c.ver === 5 ? 5 : 4) : undefined;
  const framer = new PacketFramer();
  for (const [i, m] of c.msgs.entries()) {
    if (m.type !== 'send') continue;
    framer.push(hex(m.payload ?? ''));
    for (;;) {
      if (framer.peekLength() === LENGTH_MALFORMED) {
        return { verdict: { reasonCode: MALFORMED, rule: '§2.1.4', detail: 'framer' }, at: i };
      }
      const packet = framer.take();
      if (packet === null) break;
      const verdict = validatePacket(packet, version);
      if (verdict !== null) return { verdict, at: i };
      if (version === undefined) {
        const protocol = readConnectProtocol(packet)!;
        // An unsupported level is answered by the CONNECT handler (CONNACK 0x01): nothing more is read.
        if (protocol.protocolId !== 'MQTT' || (protocol.level !== 4 && protocol.level !== 5))
          return { verdict: null, at: i };
        version = protocol.level;
      }
    }
  }
  return { verdict: null, at: -1 };
}

test(
  '[CHAN-6] the validator’s refusals agree with the MQTT corpus, except the reviewed spec-based differences',
  { skip: !corpusAvailable() && 'corpus not present (../shared/mqtt-corpus)' },
  (t) => {
    let agreed = 0;
    const differences = new Map<string, string[]>();
    const unexplained: string[] = [];
    // MQTT 3.1 default CONNECTs are refused before anything else happens (CONNACK 0x01).
    for (const c of loadCorpus().filter((x) => !(x.ver === 3 && x.connect))) {
      const { verdict, at } = judgeCase(c);
      if (verdict === null) continue; // accepted bytes: what happens next is the handlers' business
      const name = `${c.file} ${c.group} / ${c.name}`;
      const next = c.msgs[at + 1];
      const expectedCode =
        next?.type === 'recv' && /^E001/i.test((next.payload ?? '').replace(/\s+/g, ''))
          ? parseInt((next.payload ?? '').replace(/\s+/g, '').slice(4, 6), 16)
          : undefined;
      const disagrees = !c.expectDisconnect || (expectedCode !== undefined && expectedCode !== verdict.reasonCode);
      if (!disagrees) {
        agreed++;
        continue;
      }
      const key = `${verdict.rule} 0x${verdict.reasonCode.toString(16)}`;
      if (REVIEWED_DIFFERENCES[key] === undefined) unexplained.push(`${name}: ${key} ${verdict.detail}`);
      else differences.set(key, [...(differences.get(key) ?? []), name]);
    }
    assert.deepEqual(unexplained, []);
    assert.deepEqual(
      [...differences.keys()].sort(),
      Object.keys(REVIEWED_DIFFERENCES).sort(),
      'every reviewed difference still occurs',
    );
    assert.ok(agreed >= 1150, `${agreed} refusals agree with the corpus`);
    t.diagnostic(
      `${agreed} refusals agree; reviewed differences: ${[...differences].map(([k, v]) => `${k} ×${v.length}`).join(', ')}`,
    );
  },
);

// ---- The broker refuses such bytes on a real socket ----

describe('MQTT connection: validation before decoding', () => {
  let broker: Awaited<ReturnType<typeof startConformanceBroker>>;
  before(async () => {
    broker = await startConformanceBroker();
  });
  after(() => broker?.close());

  const run = async (c: Partial<CorpusCase> & Pick<CorpusCase, 'msgs'>) => {
    const outcome = await replayCase('127.0.0.1', broker.port, {
      file: 'validator',
      group: 'validator',
      name: `case ${Math.random().toString(16).slice(2, 10)}`,
      ver: 5,
      connect: true,
      expectDisconnect: true,
      ...c,
    });
    assert.equal(outcome.ok, true, outcome.detail ?? '');
  };

  test('[MQTT-1.5.4-1] a lone surrogate in a topic name ends an MQTT 5 connection with DISCONNECT 0x81', async () => {
    await run({
      msgs: [
        { type: 'send', payload: publish5('74eda080').toString('hex') },
        { type: 'recv', payload: 'E0 01 81' },
      ],
    });
  });

  test('[MQTT-2.2.1-3] packet identifier 0 ends the connection with DISCONNECT 0x82; nothing after it is read', async () => {
    const bad = frame(0x32, `${utf8('t')} 0000 00 70`).toString('hex');
    await run({
      msgs: [
        { type: 'send', payload: `${bad} c000` },
        { type: 'recv', payload: 'E0 01 82' },
      ],
    });
  });

  test('[MQTT-1.5.3-2] U+0000 in a 3.1.1 topic name closes the connection', async () => {
    await run({ ver: 4, msgs: [{ type: 'send', payload: publish4('746f7000').toString('hex') }] });
  });

  test('[MQTT-3.1.2-2] an unknown protocol level gets CONNACK 0x01 although mqtt-packet cannot decode it', async () => {
    const connect = frame(0x10, `${utf8('MQTT')} 06 02 003c ${utf8('c')}`).toString('hex');
    await run({
      connect: false,
      msgs: [
        { type: 'send', payload: connect },
        { type: 'recv', payload: '20 02 00 01' },
      ],
    });
  });

  test('a Remaining Length of five bytes closes the connection', async () => {
    await run({ ver: 4, msgs: [{ type: 'send', payload: '30 ff ff ff ff 7f' }] });
  });

  test('packets delivered one byte per write, and several per write, are all served in order', async () => {
    const subscribe = frame(0x82, `0001 00 ${utf8('v/t')} 00`).toString('hex');
    const publish = frame(0x30, `${utf8('v/t')} 00 6869`).toString('hex');
    const bytes = hex(`${subscribe}${publish}c000`);
    const oneByOne = [...bytes].map((b) => ({ type: 'send' as const, payload: b.toString(16).padStart(2, '0') }));
    await run({
      expectDisconnect: false,
      msgs: [...oneByOne, { type: 'recv', payload: `90 04 0001 00 00 ${publish} d000` }],
    });
  });
});
