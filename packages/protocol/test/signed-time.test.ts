import assert from 'node:assert/strict';
import { createHash, createPublicKey, generateKeyPairSync, verify, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import {
  newTimeNonce,
  SignedTimeError,
  type SignedTimeFailure,
  signedTimeMessage,
  signTime,
  splitPemCertificates,
  timeSigner,
  verifySignedTime,
} from '../src/index.ts';

// Known-answer vectors of docs/protocol.md ("Signed time"), generated deterministically by
// vectors/generate-signed-time.py (fixed private scalars, RFC 6979 signatures) so any implementation can
// reproduce them byte for byte.
const V = JSON.parse(readFileSync(new URL('../vectors/signed-time.json', import.meta.url), 'utf8')) as {
  nonce: string;
  time: number;
  messageHex: string;
  messageSha256: string;
  signature: string;
  signatureIntermediate: string;
  signatureRogue: string;
  signatureAt2027: string;
  caPem: string;
  leafPem: string;
  leafKeyPem: string;
  intermediatePem: string;
  leaf2Pem: string;
  leaf2KeyPem: string;
  rogueCaPem: string;
  rogueLeafPem: string;
};

const vector = { time: V.time, nonce: V.nonce, signature: V.signature, certificate: V.leafPem };

const refused = (reason: SignedTimeFailure) => (error: unknown) => {
  assert.ok(error instanceof SignedTimeError, String(error));
  assert.equal(error.reason, reason, error.message);
  assert.equal(error.code, 'ERR_SIGNED_TIME');
  return true;
};

describe('signed time (trusted time for devices without a clock)', () => {
  test('[DEV-6] the documented vector: exact message bytes, digest and RFC 6979 signature', () => {
    assert.equal(V.nonce, 'AAECAwQFBgcICQoLDA0ODw');
    const message = signedTimeMessage(V.nonce, V.time);
    assert.equal(message.toString('ascii'), 'castellan-time-v1|AAECAwQFBgcICQoLDA0ODw|1748779200000');
    assert.equal(message.toString('hex'), V.messageHex);
    assert.equal(createHash('sha256').update(message).digest('hex'), V.messageSha256);
    // The recorded signature is r ‖ s (64 bytes) and verifies under the leaf's key, also as DER.
    const raw = Buffer.from(V.signature, 'base64url');
    assert.equal(raw.length, 64);
    const leafKey = new X509Certificate(V.leafPem).publicKey;
    assert.ok(verify('sha256', message, { key: leafKey, dsaEncoding: 'ieee-p1363' }, raw));
    assert.equal(verifySignedTime(vector, { ca: V.caPem, nonce: V.nonce }), V.time);
  });

  test('[DEV-6] the signer produces answers the verifier accepts (ECDSA is randomised: fresh signatures differ)', () => {
    const sign = timeSigner({ key: V.leafKeyPem, certificates: V.leafPem });
    const nonce = newTimeNonce();
    const a = sign(nonce, V.time);
    const b = sign(nonce, V.time);
    assert.notEqual(a.signature, b.signature);
    assert.equal(a.certificate, V.leafPem);
    assert.equal(a.chain, undefined);
    for (const answer of [a, b]) assert.equal(verifySignedTime(answer, { ca: V.caPem, nonce }), V.time);
    // Through a JSON round trip, as on the wire.
    assert.equal(verifySignedTime(JSON.parse(JSON.stringify(a)), { ca: V.caPem, nonce }), V.time);
  });

  test('[DEV-6] a chain through an intermediate CA is followed; the full-chain file feeds the signer', () => {
    const answer = {
      ...vector,
      signature: V.signatureIntermediate,
      certificate: V.leaf2Pem,
      chain: [V.intermediatePem],
    };
    assert.equal(verifySignedTime(answer, { ca: V.caPem, nonce: V.nonce }), V.time);
    // Without the intermediate the path cannot be built.
    assert.throws(
      () => verifySignedTime({ ...answer, chain: [] }, { ca: V.caPem, nonce: V.nonce }),
      refused('untrusted-certificate'),
    );
    const signed = signTime({ key: V.leaf2KeyPem, certificates: V.leaf2Pem + V.intermediatePem }, V.nonce, V.time);
    assert.deepEqual(splitPemCertificates(V.leaf2Pem + V.intermediatePem).length, 2);
    assert.equal(signed.chain?.length, 1);
    assert.equal(verifySignedTime(signed, { ca: V.caPem, nonce: V.nonce }), V.time);
  });

  test('[DEV-6] several pinned CAs (a CA rollover): any of them anchors the path', () => {
    assert.equal(verifySignedTime(vector, { ca: [V.rogueCaPem, V.caPem], nonce: V.nonce }), V.time);
    assert.equal(verifySignedTime(vector, { ca: V.rogueCaPem + V.caPem, nonce: V.nonce }), V.time);
  });

  test('[DEV-6] forged signatures, another nonce and a certificate not under the pinned CA are refused', () => {
    const opts = { ca: V.caPem, nonce: V.nonce };
    const flipped = Buffer.from(V.signature, 'base64url');
    flipped[10]! ^= 1;
    assert.throws(
      () => verifySignedTime({ ...vector, signature: flipped.toString('base64url') }, opts),
      refused('bad-signature'),
    );
    // The signature does not cover another time (a shifted clock) …
    assert.throws(() => verifySignedTime({ ...vector, time: V.time + 1 }, opts), refused('bad-signature'));
    // … nor does an answer serve another nonce (a replayed answer).
    const other = newTimeNonce();
    assert.throws(() => verifySignedTime(vector, { ca: V.caPem, nonce: other }), refused('nonce-mismatch'));
    assert.throws(
      () => verifySignedTime({ ...vector, nonce: other }, { ca: V.caPem, nonce: other }),
      refused('bad-signature'),
    );
    // The same names under a look-alike CA: signed correctly by its own key, still not trusted.
    const rogue = { ...vector, signature: V.signatureRogue, certificate: V.rogueLeafPem };
    assert.equal(verifySignedTime(rogue, { ca: V.rogueCaPem, nonce: V.nonce }), V.time);
    assert.throws(() => verifySignedTime(rogue, opts), refused('untrusted-certificate'));
    // Nor can the rogue CA be smuggled in as an "intermediate".
    assert.throws(() => verifySignedTime({ ...rogue, chain: [V.rogueCaPem] }, opts), refused('untrusted-certificate'));
    // The CA certificate itself is no time-signing certificate.
    assert.throws(() => verifySignedTime({ ...vector, certificate: V.caPem }, opts), refused('unsupported-key'));
  });

  test('[DEV-6] certificate dates are judged against the signed time, after the signature', () => {
    // The leaf is valid in 2025 only; a correctly signed 2027 time is refused for that reason.
    const at2027 = { ...vector, time: 1798761600000, signature: V.signatureAt2027 };
    assert.throws(
      () => verifySignedTime(at2027, { ca: V.caPem, nonce: V.nonce }),
      refused('certificate-not-valid-at-time'),
    );
    // The same time with a broken signature fails on the signature: dates never decide before it.
    const broken = Buffer.from(V.signatureAt2027, 'base64url');
    broken[0]! ^= 0x80;
    assert.throws(
      () => verifySignedTime({ ...at2027, signature: broken.toString('base64url') }, { ca: V.caPem, nonce: V.nonce }),
      refused('bad-signature'),
    );
  });

  test('[DEV-6] the signer refuses keys other than P-256 and a certificate of another key', () => {
    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
    assert.throws(() => timeSigner({ key: rsa, certificates: V.leafPem }), refused('unsupported-key'));
    const p384 = generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey;
    assert.throws(() => timeSigner({ key: p384, certificates: V.leafPem }), refused('unsupported-key'));
    assert.throws(() => timeSigner({ key: V.leaf2KeyPem, certificates: V.leafPem }), refused('unsupported-key'));
    assert.throws(() => timeSigner({ key: V.leafKeyPem, certificates: '' }), refused('malformed'));
    assert.ok(createPublicKey(V.leafKeyPem));
  });

  test('[DEV-6] malformed answers are refused as malformed, never thrown as something else (property)', () => {
    fc.assert(
      fc.property(
        fc.record(
          {
            time: fc.oneof(fc.integer(), fc.double(), fc.string(), fc.constant(V.time)),
            nonce: fc.oneof(fc.string(), fc.constant(V.nonce)),
            signature: fc.oneof(fc.string(), fc.constant(V.signature)),
            certificate: fc.oneof(fc.string(), fc.constant(V.leafPem)),
            chain: fc.oneof(fc.constant(undefined), fc.array(fc.string(), { maxLength: 5 })),
          },
          { requiredKeys: [] },
        ),
        (answer) => {
          try {
            verifySignedTime(answer, { ca: V.caPem, nonce: V.nonce });
          } catch (error) {
            assert.ok(error instanceof SignedTimeError, String(error));
          }
        },
      ),
      { numRuns: 300 },
    );
    for (const bad of [null, 1, 'x', [], { ...vector, time: -1 }, { ...vector, signature: 'A'.repeat(87) }]) {
      assert.throws(() => verifySignedTime(bad, { ca: V.caPem, nonce: V.nonce }), refused('malformed'));
    }
  });
});
