// payloadJson: the one JSON parse a device payload gets on its way through the platform.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { payloadJson } from '../../src/devices/payload-json.ts';
import { checkTelemetryPayload } from '../../src/devices/telemetry-payload.ts';
import { numericPoints } from '../../src/devices/telemetry-history.ts';

test('a payload is parsed once: the same Buffer gives the same parsed value', () => {
  const payload = Buffer.from('{"t":21.5,"on":true}');
  const first = payloadJson(payload);
  assert.ok(first.ok);
  assert.equal(payloadJson(payload), first);
  // A different Buffer with the same bytes is parsed on its own.
  const other = payloadJson(Buffer.from(payload));
  assert.notEqual(other, first);
  assert.deepEqual(other, first);
  assert.deepEqual(numericPoints(payload), [
    ['t', 21.5],
    ['on', 1],
  ]);
});

test('invalid UTF-8 and invalid JSON are told apart, and the telemetry check keeps its messages', () => {
  assert.deepEqual(payloadJson(Buffer.from([0x7b, 0xff, 0x7d])), { ok: false, reason: 'payload is not valid UTF-8' });
  assert.deepEqual(payloadJson(Buffer.from('{"a":')), { ok: false, reason: 'payload is not valid JSON' });
  assert.deepEqual(checkTelemetryPayload(Buffer.from([0xc3, 0x28])), {
    ok: false,
    reason: 'payload is not valid UTF-8',
  });
  assert.deepEqual(checkTelemetryPayload(Buffer.from('not json')), { ok: false, reason: 'payload is not valid JSON' });
  assert.deepEqual(checkTelemetryPayload(Buffer.from('[1,2]')), { ok: false, reason: 'payload must be a JSON object' });
  assert.deepEqual(checkTelemetryPayload(Buffer.alloc(0)), { ok: false, reason: 'payload is empty' });
  // A leading byte-order mark is not part of the text (WHATWG decode), as before.
  assert.deepEqual(payloadJson(Buffer.from('\uFEFF{"a":1}')), { ok: true, value: { a: 1 } });
});

test('property: any JSON value round-trips, and no byte string throws', () => {
  fc.assert(
    fc.property(fc.jsonValue(), (value) => {
      const result = payloadJson(Buffer.from(JSON.stringify(value)));
      assert.ok(result.ok);
      // JSON itself turns -0 into 0.
      assert.deepEqual(result.value, JSON.parse(JSON.stringify(value)));
    }),
  );
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
      const result = payloadJson(Buffer.from(bytes));
      assert.equal(typeof result.ok, 'boolean');
    }),
  );
});
