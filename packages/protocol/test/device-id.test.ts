import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { DeviceIdError, generateCode, generateDeviceId, isDeviceId, parseDeviceId } from '../src/index.ts';

const hex = (n: number) => fc.stringMatching(new RegExp(`^[0-9a-f]{${n}}$`));

describe('device ID codec', () => {
  test('[DEV-1] a generated ID is 01 + vendor code + product code + 8 random hex + extension', () => {
    const id = generateDeviceId('a1b2c3', '00ff10');
    assert.match(id, /^01a1b2c300ff10[0-9a-f]{8}00$/);
    assert.equal(id.length, 24);
    assert.deepEqual(parseDeviceId(id), {
      version: '01',
      vendorCode: 'a1b2c3',
      productCode: '00ff10',
      random: id.slice(14, 22),
      extension: '00',
    });
  });

  test('[DEV-1] generate → parse round-trips for every vendor, product and extension', () => {
    fc.assert(
      fc.property(hex(6), hex(6), hex(2), (vendor, product, extension) => {
        const parts = parseDeviceId(generateDeviceId(vendor, product, extension));
        return parts.vendorCode === vendor && parts.productCode === product && parts.extension === extension;
      }),
    );
  });

  test('[DEV-1] malformed IDs are refused with a message naming the problem', () => {
    const cases: Array<[unknown, RegExp]> = [
      [42, /must be a string/],
      ['', /24 hex digits, got 0 characters/],
      ['01a1b2c300ff10abcdef00', /24 hex digits, got 22 characters/],
      ['01a1b2c300ff10abcdef0000ff', /got 26 characters/],
      ['01A1B2C300FF10ABCDEF0000', /only lower-case hex digits/],
      ['01a1b2c300ff10abcdef00zz', /only lower-case hex digits/],
      ['02a1b2c300ff10abcdef0000', /spec version must be 01/],
      ['01a1b2c3 0ff10abcdef0000', /only lower-case hex digits/],
    ];
    for (const [value, message] of cases) {
      assert.throws(
        () => parseDeviceId(value),
        (error: unknown) => error instanceof DeviceIdError && message.test((error as Error).message),
      );
      assert.equal(isDeviceId(value), false);
    }
  });

  test('[DEV-1] isDeviceId accepts exactly the well-formed strings', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 30 }), (s) => isDeviceId(s) === /^01[0-9a-f]{22}$/.test(s)),
      { numRuns: 2000 },
    );
  });

  test('[DEV-1] generating refuses malformed vendor, product or extension codes', () => {
    assert.throws(() => generateDeviceId('A1B2C3', '000000'), /vendor code/);
    assert.throws(() => generateDeviceId('a1b2c', '000000'), /vendor code/);
    assert.throws(() => generateDeviceId('a1b2c3', '00000g'), /product code/);
    assert.throws(() => generateDeviceId('a1b2c3', '000000', '0'), /extension/);
  });

  test('[DEV-1] the random part is uniformly distributed (CSPRNG): every bit is set about half the time', () => {
    const samples = 20_000;
    const ones = new Array<number>(32).fill(0);
    const digitCounts = new Array<number>(16).fill(0);
    for (let i = 0; i < samples; i++) {
      const random = parseDeviceId(generateDeviceId('000001', '000002')).random;
      const value = Number.parseInt(random, 16);
      for (let bit = 0; bit < 32; bit++) if ((value >>> bit) & 1) ones[bit]!++;
      for (const ch of random) digitCounts[Number.parseInt(ch, 16)]!++;
    }
    // Binomial(20000, 0.5): σ ≈ 71; 6σ bounds make a false alarm astronomically unlikely.
    for (const count of ones)
      assert.ok(Math.abs(count - samples / 2) < 6 * 71, `bit count ${count} is far from ${samples / 2}`);
    // χ² over the 16 hex digits (15 degrees of freedom); 60 is far beyond the 0.9999 quantile (~44).
    const expected = (samples * 8) / 16;
    const chi2 = digitCounts.reduce((sum, c) => sum + (c - expected) ** 2 / expected, 0);
    assert.ok(chi2 < 60, `chi-square ${chi2.toFixed(1)} says the digits are not uniform`);
  });

  test('[DEV-1] vendor and product codes are random 6-hex-digit codes', () => {
    const codes = new Set(Array.from({ length: 200 }, () => generateCode()));
    for (const code of codes) assert.match(code, /^[0-9a-f]{6}$/);
    assert.ok(codes.size > 190, 'codes repeat far more often than a 24-bit random draw would');
  });
});
