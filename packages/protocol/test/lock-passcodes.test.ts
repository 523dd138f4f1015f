import assert from 'node:assert/strict';
import { createHmac, hkdfSync, randomBytes } from 'node:crypto';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import {
  deriveLockPasscodeKey,
  encodePasscodeRevocations,
  encodePasscodeUsed,
  HOUR_MS,
  issuePasscode,
  LOCK_PASSCODE_EPOCH_MS,
  LockPasscodeState,
  MAC_BITS,
  MAC_SPACE,
  ONE_TIME_COUNTERS,
  PasscodeError,
  type PasscodeKind,
  type PasscodeSpec,
  PAYLOAD_SPACE,
  parsePasscodeRevocations,
  parsePasscodeUsed,
  TIME_WINDOW_COUNTERS,
  TIME_WINDOW_HOURS,
  verifyPasscode,
} from '../src/index.ts';

// Known-answer vectors (docs/protocol.md, Lock passcodes): the secret is the bytes 0..31 in
// base64url (built from its bytes: the secret scan rightly flags secret-looking literals).
const SECRET = Buffer.from([...Array(32).keys()]).toString('base64url');
const DEVICE_ID = '01a1b2c3d4e5f6a7b8c9d000';
// The passcode key HKDF yields for them.
const DERIVED_HEX = '0b3f8cdae8a57771be0c4fb8dcc31b84a9476952e99dbfe1b66c6bc8294aaa55';
const h = (iso: string) => Date.parse(iso);
const VECTORS: Array<PasscodeSpec & { code: string }> = [
  { kind: 'one-time', validFrom: h('2024-01-01T00:00:00Z'), counter: 0, code: '164852526720' },
  { kind: 'one-time', validFrom: h('2025-06-01T09:00:00Z'), counter: 63, code: '568001297181' },
  {
    kind: 'time-window',
    validFrom: h('2025-06-01T09:00:00Z'),
    validUntil: h('2025-06-01T10:00:00Z'),
    counter: 0,
    code: '017978100384',
  },
  {
    kind: 'time-window',
    validFrom: h('2025-06-01T09:00:00Z'),
    validUntil: h('2025-06-02T09:00:00Z'),
    counter: 5,
    code: '481899355185',
  },
  {
    kind: 'time-window',
    validFrom: h('2025-12-24T15:00:00Z'),
    validUntil: h('2025-12-31T15:00:00Z'),
    counter: 11,
    code: '617199068535',
  },
];

/** The code format computed from its description alone, independently of the module's code. */
function referenceCode(key: Buffer, spec: PasscodeSpec): string {
  const hours = spec.kind === 'one-time' ? 6 : (spec.validUntil! - spec.validFrom) / HOUR_MS;
  // Class offsets: one-time (6 h × 64 counters) first, then each time-window length × 12 counters.
  let offset = 6 * 64;
  if (spec.kind === 'time-window') {
    for (const length of [...Array.from({ length: 24 }, (_, i) => i + 1), 48, 72, 96, 120, 144, 168]) {
      if (length === hours) break;
      offset += length * 12;
    }
  } else {
    offset = 0;
  }
  const start = (spec.validFrom - Date.UTC(2024, 0, 1)) / 3_600_000;
  const payload = offset + spec.counter * hours + (start % hours);
  const message = Buffer.concat([
    Buffer.from('CLP1'),
    Buffer.from([spec.kind === 'one-time' ? 1 : 2, hours >> 8, hours & 0xff, spec.counter >> 8, spec.counter & 0xff]),
    Buffer.from([start >>> 24, (start >>> 16) & 0xff, (start >>> 8) & 0xff, start & 0xff]),
  ]);
  const digest = createHmac('sha256', key).update(message).digest();
  const mac = BigInt(`0x${digest.subarray(0, 8).toString('hex')}`) % 85_034_013n;
  return (mac * 11_760n + BigInt(payload)).toString().padStart(12, '0');
}

/** A lock state that remembers nothing (every code is fresh and unrevoked). */
const forgetful = () => ({ isRevoked: () => false, isUsed: () => false, markUsed: () => {} });

const arbSpec: fc.Arbitrary<PasscodeSpec> = fc
  .record({
    kind: fc.constantFrom<PasscodeKind>('one-time', 'time-window'),
    startHour: fc.integer({ min: 0, max: 24 * 365 * 30 }),
    length: fc.constantFrom(...TIME_WINDOW_HOURS),
    counter: fc.nat(),
  })
  .map(({ kind, startHour, length, counter }) => {
    const validFrom = LOCK_PASSCODE_EPOCH_MS + startHour * HOUR_MS;
    return kind === 'one-time'
      ? { kind, validFrom, counter: counter % ONE_TIME_COUNTERS }
      : { kind, validFrom, validUntil: validFrom + length * HOUR_MS, counter: counter % TIME_WINDOW_COUNTERS };
  });

describe('smart-lock offline passcodes (protocol)', () => {
  const key = deriveLockPasscodeKey(SECRET, DEVICE_ID);

  test('[LOCK-1] the passcode key is HKDF-SHA-256(secret, salt = device ID, info "castellan lock passcode v1")', () => {
    assert.equal(key.toString('hex'), DERIVED_HEX);
    const independent = Buffer.from(
      hkdfSync('sha256', Buffer.from(SECRET), Buffer.from(DEVICE_ID), Buffer.from('castellan lock passcode v1'), 32),
    );
    assert.equal(independent.toString('hex'), DERIVED_HEX);
    assert.notEqual(deriveLockPasscodeKey(SECRET, '01a1b2c3d4e5f6a7b8c9d100').toString('hex'), DERIVED_HEX);
  });

  test('[LOCK-1] the known-answer vectors are reproduced, by the module and by the documented formula', () => {
    for (const vector of VECTORS) {
      const issued = issuePasscode(key, vector);
      assert.equal(issued.code, vector.code, JSON.stringify(vector));
      assert.equal(referenceCode(key, vector), vector.code);
      assert.match(issued.code, /^\d{12}$/);
    }
  });

  test('[LOCK-1] the MAC has at least 26 bits and the whole code fits 12 digits', () => {
    assert.equal(PAYLOAD_SPACE, 6 * 64 + 12 * (300 + 48 + 72 + 96 + 120 + 144 + 168));
    assert.equal(MAC_SPACE, Math.floor(1e12 / PAYLOAD_SPACE));
    assert.ok(MAC_BITS >= 26, `MAC bits ${MAC_BITS}`);
    assert.ok(MAC_SPACE * PAYLOAD_SPACE <= 1e12);
  });

  test('[LOCK-1] a code opens the lock exactly within its window (any start, length and counter)', () => {
    fc.assert(
      fc.property(arbSpec, fc.double({ min: 0, max: 1, noNaN: true, maxExcluded: true }), (spec, at) => {
        const issued = issuePasscode(key, spec);
        assert.equal(issued.code, referenceCode(key, spec));
        const span = issued.validUntil - issued.validFrom;
        const inside = verifyPasscode(key, issued.code, issued.validFrom + Math.floor(at * span), forgetful());
        assert.deepEqual(inside, { ok: true, ...spec, validUntil: issued.validUntil });
        // One millisecond early or at the end: another start hour, another MAC.
        assert.deepEqual(verifyPasscode(key, issued.code, issued.validFrom - 1, forgetful()), {
          ok: false,
          reason: 'invalid',
        });
        assert.deepEqual(verifyPasscode(key, issued.code, issued.validUntil, forgetful()), {
          ok: false,
          reason: 'invalid',
        });
      }),
      { numRuns: 300 },
    );
  });

  test("[LOCK-1] another lock's key never accepts the code", () => {
    fc.assert(
      fc.property(arbSpec, (spec) => {
        const issued = issuePasscode(key, spec);
        const other = deriveLockPasscodeKey(randomBytes(32).toString('base64url'), DEVICE_ID);
        assert.equal(verifyPasscode(other, issued.code, issued.validFrom, forgetful()).ok, false);
      }),
      { numRuns: 200 },
    );
  });

  test('[LOCK-1] a one-time code opens once; a revoked code is refused; state forgets ended windows', () => {
    const state = new LockPasscodeState();
    const from = h('2025-06-01T09:00:00Z');
    const once = issuePasscode(key, { kind: 'one-time', validFrom: from, counter: 7 });
    assert.equal(verifyPasscode(key, once.code, from + 60_000, state).ok, true);
    assert.deepEqual(verifyPasscode(key, once.code, from + 120_000, state), { ok: false, reason: 'used' });
    const window = issuePasscode(key, {
      kind: 'time-window',
      validFrom: from,
      validUntil: from + 48 * HOUR_MS,
      counter: 1,
    });
    assert.equal(verifyPasscode(key, window.code, from + 1, state).ok, true);
    assert.equal(verifyPasscode(key, window.code, from + 2, state).ok, true, 'reusable');
    state.revoke(window);
    assert.deepEqual(verifyPasscode(key, window.code, from + 3, state), { ok: false, reason: 'revoked' });
    // A sibling code of the same window (another counter) is unaffected.
    const sibling = issuePasscode(key, {
      kind: 'time-window',
      validFrom: from,
      validUntil: from + 48 * HOUR_MS,
      counter: 2,
    });
    assert.equal(verifyPasscode(key, sibling.code, from + 3, state).ok, true);
    assert.deepEqual(state.size, { revoked: 1, used: 1 });
    state.purge(from + 48 * HOUR_MS);
    assert.deepEqual(state.size, { revoked: 0, used: 0 });
  });

  test('[LOCK-1] random codes are refused at the rate the MAC size predicts (≈ 1.2·10⁻⁸ per guess)', () => {
    // Every payload decodes to a window containing `now`, so the only barrier is the MAC: each guess
    // succeeds with probability 1 / MAC_SPACE. 200 000 guesses: expected accepts 0.0024 (P(any) < 0.3%).
    const now = h('2025-06-01T12:34:56Z');
    let accepted = 0;
    const digits = randomBytes(200_000 * 8);
    for (let i = 0; i < 200_000; i++) {
      const value = Number(digits.readBigUInt64BE(i * 8) % 1_000_000_000_000n);
      if (verifyPasscode(key, String(value).padStart(12, '0'), now, forgetful()).ok) accepted++;
    }
    assert.ok(accepted <= 1, `accepted ${accepted}`);
    // Given a valid code, every other MAC value with the same payload is refused.
    const issued = issuePasscode(key, {
      kind: 'time-window',
      validFrom: h('2025-06-01T12:00:00Z'),
      validUntil: h('2025-06-01T14:00:00Z'),
      counter: 4,
    });
    const payload = Number(issued.code) % PAYLOAD_SPACE;
    const mac = Math.floor(Number(issued.code) / PAYLOAD_SPACE);
    fc.assert(
      fc.property(fc.integer({ min: 0, max: MAC_SPACE - 1 }), (other) => {
        fc.pre(other !== mac);
        const code = String(other * PAYLOAD_SPACE + payload).padStart(12, '0');
        assert.equal(verifyPasscode(key, code, now, forgetful()).ok, false);
      }),
      { numRuns: 2000 },
    );
    // Every single-digit change of a valid code is refused.
    for (let i = 0; i < 12; i++) {
      for (let d = 0; d < 10; d++) {
        const code = issued.code.slice(0, i) + String(d) + issued.code.slice(i + 1);
        if (code !== issued.code) assert.equal(verifyPasscode(key, code, now, forgetful()).ok, false, code);
      }
    }
  });

  test('[LOCK-1] verifyPasscode never throws, whatever is typed', () => {
    const state = new LockPasscodeState();
    fc.assert(
      fc.property(
        fc.oneof(fc.string(), fc.stringMatching(/^\d{10,13}$/), fc.anything()),
        fc.oneof(fc.integer(), fc.double()),
        (code, now) => {
          const verdict = verifyPasscode(key, code, now, state);
          assert.equal(typeof verdict.ok, 'boolean');
        },
      ),
      { numRuns: 2000 },
    );
    for (const code of [
      '',
      '12345678901',
      '1234567890123',
      '12345678901a',
      ' 123456789012',
      '999999999999',
      '１２３４５６７８９０１２',
    ]) {
      assert.equal(verifyPasscode(key, code, Date.now(), state).ok, false, code);
    }
    assert.deepEqual(verifyPasscode(key, '99999999999', Date.now(), state), { ok: false, reason: 'malformed' });
  });

  test('[LOCK-1] issuing refuses windows the format cannot carry, with a reason', () => {
    const from = h('2025-06-01T09:00:00Z');
    const bad: Array<[PasscodeSpec, RegExp]> = [
      [{ kind: 'one-time', validFrom: from + 1, counter: 0 }, /whole hour/],
      [{ kind: 'one-time', validFrom: h('2023-12-31T23:00:00Z'), counter: 0 }, /2024-01-01/],
      [{ kind: 'one-time', validFrom: from, validUntil: from + 7 * HOUR_MS, counter: 0 }, /6 hours/],
      [{ kind: 'one-time', validFrom: from, counter: 64 }, /counter/],
      [{ kind: 'time-window', validFrom: from, counter: 0 }, /validUntil/],
      [{ kind: 'time-window', validFrom: from, validUntil: from + 25 * HOUR_MS, counter: 0 }, /1 to 24 hours/],
      [{ kind: 'time-window', validFrom: from, validUntil: from + 8 * 24 * HOUR_MS, counter: 0 }, /7 whole days/],
      [{ kind: 'time-window', validFrom: from, validUntil: from, counter: 0 }, /1 to 24/],
      [{ kind: 'time-window', validFrom: from, validUntil: from + HOUR_MS, counter: 12 }, /counter/],
      [{ kind: 'master' as PasscodeKind, validFrom: from, counter: 0 }, /kind/],
    ];
    for (const [spec, message] of bad)
      assert.throws(
        () => issuePasscode(key, spec),
        (e) => e instanceof PasscodeError && message.test(e.message),
      );
    assert.throws(() => issuePasscode(Buffer.alloc(16), VECTORS[0]!), PasscodeError);
    assert.throws(() => deriveLockPasscodeKey('', DEVICE_ID), PasscodeError);
  });

  test('[LOCK-1] revocation lists and use reports round-trip; malformed ones are refused', () => {
    const from = h('2025-06-01T09:00:00Z');
    const refs = [
      { kind: 'one-time' as const, counter: 3, validFrom: from, validUntil: from + 6 * HOUR_MS },
      { kind: 'time-window' as const, counter: 11, validFrom: from, validUntil: from + 168 * HOUR_MS },
    ];
    assert.deepEqual(parsePasscodeRevocations(encodePasscodeRevocations(refs)), refs);
    assert.deepEqual(parsePasscodeRevocations('{"revoked":[]}'), []);
    for (const bad of [
      '',
      'null',
      '[]',
      '{"revoked":{}}',
      '{"revoked":[{"kind":"one-time","counter":3}]}',
      '{"revoked":[{"kind":"one-time","counter":64,"validFrom":1748768400000,"validUntil":1748790000000}]}',
    ]) {
      assert.equal(parsePasscodeRevocations(bad), null, bad);
    }
    const used = JSON.parse(encodePasscodeUsed(refs[1]!, from + 5).toString());
    assert.deepEqual(parsePasscodeUsed(used), { type: 'passcode-used', ...refs[1], at: from + 5 });
    assert.equal(parsePasscodeUsed({ type: 'resources', cpuPercent: 3 }), null);
    assert.equal(parsePasscodeUsed('passcode-used'), null);
    assert.match(parsePasscodeUsed({ ...used, counter: -1 }) as string, /counter/);
    assert.match(parsePasscodeUsed({ ...used, at: from - 1 }) as string, /outside/);
    assert.match(parsePasscodeUsed({ ...used, at: 'now' }) as string, /at/);
    fc.assert(
      fc.property(fc.anything(), (value) => {
        const parsed = parsePasscodeUsed(value);
        assert.ok(parsed === null || typeof parsed === 'string' || parsed.type === 'passcode-used');
        const list = parsePasscodeRevocations(JSON.stringify(value) ?? '');
        assert.ok(list === null || Array.isArray(list));
      }),
      { numRuns: 500 },
    );
  });
});
