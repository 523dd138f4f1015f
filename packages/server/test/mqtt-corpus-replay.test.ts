// The corpus replay's own rules (scripts/mqtt-corpus-replay.ts): splitting expected bytes into
// packets, and the one encoding freedom MQTT 5 allows that the comparison must not count as a
// difference. A replay that misjudged these would report false conformance failures or passes.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  canonicalPacket,
  connectLevel,
  corpusAvailable,
  hex,
  loadCorpus,
  splitPackets,
} from './helpers/mqtt-corpus.ts';

test('[CHAN-1] expected bytes split into whole packets, or not at all', () => {
  assert.deepEqual(
    splitPackets(hex('40 02 1234 D0 00'))?.map((p) => p.toString('hex')),
    ['40021234', 'd000'],
  );
  assert.equal(splitPackets(hex('40 03 1234')), null, 'a truncated packet is not a packet');
  assert.equal(splitPackets(hex('30 FF FF FF FF 7F')), null, 'a remaining length longer than 4 bytes');
});

test('[CHAN-1] MQTT 5: an omitted empty property length (and success reason) equals the explicit form', () => {
  assert.equal(canonicalPacket(hex('E0 02 82 00'), 5), canonicalPacket(hex('E0 01 82'), 5));
  assert.equal(canonicalPacket(hex('E0 00'), 5), canonicalPacket(hex('E0 02 00 00'), 5));
  assert.equal(canonicalPacket(hex('40 04 1234 00 00'), 5), canonicalPacket(hex('40 02 1234'), 5));
  assert.notEqual(canonicalPacket(hex('E0 01 81'), 5), canonicalPacket(hex('E0 01 82'), 5), 'reason codes differ');
  assert.notEqual(canonicalPacket(hex('40 03 1234 10'), 5), canonicalPacket(hex('40 02 1234'), 5));
  // MQTT 3.1.1 has no such freedom: bytes are compared as they are.
  assert.notEqual(canonicalPacket(hex('40 03 1234 00'), 4), canonicalPacket(hex('40 02 1234'), 4));
});

test('the corpus loads with the documented defaults', { skip: !corpusAvailable() && 'corpus not present' }, () => {
  const cases = loadCorpus();
  assert.equal(cases.length, 1483);
  assert.ok(cases.every((c) => [3, 4, 5].includes(c.ver)));
  // MQTT 3.1 (protocol name MQIsdp, level 3): by `ver`, or in a CONNECT the case sends itself.
  const mqisdp = (c: (typeof cases)[number]) =>
    c.ver === 3 || c.msgs.some((m) => (m.payload ?? '').replace(/\s+/g, '').toUpperCase().includes('4D5149736470'));
  assert.equal(cases.filter(mqisdp).length, 7);
  assert.equal(cases.filter((c) => c.ver === 5).length, 1188);
});

test('[CHAN-1] a case that sends its own CONNECT has its CONNACK compared in the level that CONNECT declares', () => {
  assert.equal(connectLevel(hex('10 0D 0004 4D515454 05 02 000A 00 0000')), 5);
  assert.equal(connectLevel(hex('10 0C 0004 4D515454 04 02 000A 0000')), 4);
  assert.equal(connectLevel(hex('10 0F 0006 4D5149736470 03 02 000A 0001 70')), 3);
  assert.equal(connectLevel(hex('30 03 0001 61')), undefined, 'not a CONNECT');
  assert.equal(connectLevel(hex('10 02 00')), undefined, 'too short to declare a level');
});
