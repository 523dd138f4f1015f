// KEY-4: both crypto suites reproduce the published known-answer vectors (vectors/crypto-suites.json),
// and round-trip, refuse tampering, and sign/verify with fresh keys.
import assert from 'node:assert/strict';
import { createCipheriv } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { sm2 } from 'sm-crypto-v2';
import { intlSuite, smSuite, suite, SUITE_NAMES } from '../src/index.ts';

const V = JSON.parse(readFileSync(new URL('../vectors/crypto-suites.json', import.meta.url), 'utf8'));
const h = (s: string) => Buffer.from(s, 'hex');

describe('crypto suites: known answers', () => {
  test('[KEY-4] intl: SHA-256, HKDF-SHA-256, AES-256-GCM and Ed25519 vectors', () => {
    for (const v of V.intl.sha256)
      assert.equal(intlSuite.digest(Buffer.from(v.message_utf8)).toString('hex'), v.digest, v.source);
    for (const v of V.intl.hkdf_sha256)
      assert.equal(intlSuite.hkdf(h(v.ikm), h(v.salt), h(v.info), v.length).toString('hex'), v.okm, v.source);
    for (const v of V.intl.aes_256_gcm) {
      const sealed = intlSuite.seal(h(v.key), h(v.plaintext), h(v.aad), h(v.nonce));
      assert.equal(sealed.toString('hex'), v.nonce + v.ciphertext + v.tag, v.source);
      assert.equal(intlSuite.open(h(v.key), sealed, h(v.aad)).toString('hex'), v.plaintext);
    }
    for (const v of V.intl.ed25519) {
      assert.equal(intlSuite.sign(h(v.private_key), h(v.message)).toString('hex'), v.signature, v.source);
      assert.ok(intlSuite.verify(h(v.public_key), h(v.message), h(v.signature)));
    }
  });

  test('[KEY-4] sm: SM3, SM4, SM4-GCM and SM2 vectors', () => {
    for (const v of V.sm.sm3)
      assert.equal(smSuite.digest(Buffer.from(v.message_utf8)).toString('hex'), v.digest, v.source);
    for (const v of V.sm.sm4_block) {
      const block = createCipheriv('sm4-ecb', h(v.key), null).setAutoPadding(false).update(h(v.plaintext));
      assert.equal(block.toString('hex'), v.ciphertext, v.source);
    }
    for (const v of V.sm.sm4_gcm) {
      const sealed = smSuite.seal(h(v.key), h(v.plaintext), h(v.aad), h(v.nonce));
      assert.equal(sealed.toString('hex'), v.nonce + v.ciphertext + v.tag, v.source);
      assert.equal(smSuite.open(h(v.key), sealed, h(v.aad)).toString('hex'), v.plaintext);
    }
    for (const v of V.sm.sm2_sign) {
      const message = Buffer.from(v.message_utf8);
      assert.ok(
        smSuite.verify(h(v.public_key), message, h(v.signature_r_s)),
        `${v.source}: the published signature verifies`,
      );
      // With the standard's fixed k the signature itself is reproduced (x1 is the x of [k]G).
      const x1 = BigInt(`0x${sm2.getPublicKeyFromPrivateKey(v.k).slice(2, 66)}`);
      const reproduced = sm2.doSignature(message, v.private_key, {
        hash: true,
        userId: '1234567812345678',
        pointPool: [{ k: BigInt(`0x${v.k}`), x1 }],
      });
      assert.equal(reproduced, v.signature_r_s, v.source);
    }
  });
});

describe('crypto suites: behaviour', () => {
  for (const name of SUITE_NAMES) {
    const s = suite(name);
    test(`[KEY-4] ${name}: property — seal/open round-trips; any other key, AAD or flipped byte fails`, () => {
      fc.assert(
        fc.property(
          fc.uint8Array({ maxLength: 200 }),
          fc.uint8Array({ maxLength: 40 }),
          fc.nat(),
          (plaintext, aad, flip) => {
            const key = Buffer.alloc(s.keyBytes, 7);
            const sealed = s.seal(key, plaintext, aad);
            assert.deepEqual(Uint8Array.from(s.open(key, sealed, aad)), plaintext);
            assert.throws(() => s.open(Buffer.alloc(s.keyBytes, 8), sealed, aad), { code: 'ERR_CRYPTO_FAILED' });
            assert.throws(() => s.open(key, sealed, Buffer.concat([aad, Buffer.of(1)])), { code: 'ERR_CRYPTO_FAILED' });
            const tampered = Buffer.from(sealed);
            tampered[flip % tampered.length]! ^= 0x01;
            assert.throws(() => s.open(key, tampered, aad), { code: 'ERR_CRYPTO_FAILED' });
          },
        ),
        { numRuns: 100 },
      );
    });

    test(`[KEY-4] ${name}: fresh signing keys sign and verify; another message or key does not`, () => {
      const a = s.generateSigningKey();
      const b = s.generateSigningKey();
      const sig = s.sign(a.privateKey, Buffer.from('firmware v1.2.3'));
      assert.ok(s.verify(a.publicKey, Buffer.from('firmware v1.2.3'), sig));
      assert.ok(!s.verify(a.publicKey, Buffer.from('firmware v1.2.4'), sig));
      assert.ok(!s.verify(b.publicKey, Buffer.from('firmware v1.2.3'), sig));
      assert.ok(!s.verify(a.publicKey, Buffer.from('firmware v1.2.3'), Buffer.alloc(sig.length)));
    });
  }

  test('[KEY-4] a key of the wrong size is refused with a clear error', () => {
    assert.throws(() => smSuite.seal(Buffer.alloc(32), Buffer.alloc(1), Buffer.alloc(0)), {
      message: 'sm4-gcm needs a 16-byte key',
    });
    assert.throws(() => intlSuite.seal(Buffer.alloc(16), Buffer.alloc(1), Buffer.alloc(0)), {
      message: 'aes-256-gcm needs a 32-byte key',
    });
  });
});
