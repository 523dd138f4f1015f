import assert from 'node:assert/strict';
import { createHash, createHmac, hkdfSync } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import {
  challengeDeviceResponse,
  challengeServerProof,
  deviceCanonicalString,
  deviceRequestKey,
  DeviceSigningError,
  normaliseHardwareId,
  openDeviceSecret,
  parseDeviceAuthorization,
  parseDeviceBearer,
  registrationProof,
  sealDeviceSecret,
  signDeviceRequest,
  signRegistration,
  verifyServerProof,
} from '../src/index.ts';

// Known-answer vectors of docs/protocol.md ("Device HTTPS authentication"), value for value, read from
// vectors/device-request-signing.json (scripts/check-protocol-vectors.py reproduces them independently).
// Every input is a byte pattern: the secret is base64url(00 01 … 1f), nonces are repeated bytes.
type VectorField =
  | 'deviceId'
  | 'secret'
  | 'key'
  | 'method'
  | 'path'
  | 'host'
  | 'body'
  | 'nonce'
  | 'contentSha256'
  | 'canonical'
  | 'sig'
  | 'clientNonce'
  | 'challenge'
  | 'serverProof'
  | 'response'
  | 'productId'
  | 'productSecret'
  | 'hardwareId'
  | 'proof'
  | 'sealIv'
  | 'sealed';
const V = JSON.parse(
  readFileSync(new URL('../vectors/device-request-signing.json', import.meta.url), 'utf8'),
) as Record<VectorField, string> & { ts: number };

const hmac64 = (key: Uint8Array, message: string) => createHmac('sha256', key).update(message).digest('base64url');

describe('device request signing (timestamp mode)', () => {
  test('[DEV-6] the documented vector is reproduced exactly, and independently from its definition', () => {
    assert.equal(V.secret, 'AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8');
    const key = deviceRequestKey(V.secret);
    assert.equal(key.toString('hex'), V.key);
    // RFC 5869 HKDF straight from node:crypto, keyed with the secret's UTF-8 bytes.
    assert.equal(
      Buffer.from(hkdfSync('sha256', Buffer.from(V.secret), 'castellan', 'castellan device request v1', 32)).toString(
        'hex',
      ),
      V.key,
    );
    assert.equal(createHash('sha256').update(V.body).digest('hex'), V.contentSha256);
    const canonical = deviceCanonicalString({
      deviceId: V.deviceId,
      method: 'post',
      target: V.path,
      host: 'Castellan.Example.com:8443',
      ts: V.ts,
      nonce: V.nonce,
      contentSha256: V.contentSha256,
    });
    assert.equal(canonical, V.canonical);
    assert.equal(hmac64(key, V.canonical), V.sig);
    const headers = signDeviceRequest({
      deviceId: V.deviceId,
      secret: V.secret,
      method: V.method,
      path: V.path,
      host: V.host,
      body: V.body,
      now: V.ts,
      nonce: V.nonce,
    });
    assert.deepEqual(headers, {
      authorization: `CAS-DEVICE-HMAC-SHA256 device=${V.deviceId},ts=${V.ts},nonce=${V.nonce},sig=${V.sig}`,
      'x-castellan-content-sha256': V.contentSha256,
    });
    // The secret itself appears nowhere on the wire.
    assert.ok(!JSON.stringify(headers).includes(V.secret));
    assert.deepEqual(parseDeviceAuthorization(headers.authorization), {
      deviceId: V.deviceId,
      ts: V.ts,
      nonce: V.nonce,
      sig: V.sig,
    });
  });

  test('[DEV-6] the Authorization header parser is strict', () => {
    const good = `CAS-DEVICE-HMAC-SHA256 device=${V.deviceId},ts=${V.ts},nonce=${V.nonce},sig=${V.sig}`;
    assert.ok(parseDeviceAuthorization(good));
    for (const bad of [
      good.replace('CAS-DEVICE', 'cas-device'),
      good.replace(',ts=', ', ts='),
      good.replace(`ts=${V.ts}`, 'ts=0'),
      good.replace(`ts=${V.ts}`, 'ts=01748779200000'),
      good.replace(`nonce=${V.nonce}`, 'nonce=short'),
      good.replace(`sig=${V.sig}`, `sig=${V.sig}=`),
      good.replace(`device=${V.deviceId}`, 'device=01ABCDEF1234560A1B2C3D00'),
      `${good} `,
      good.replace(`ts=${V.ts}`, 'ts=99999999999999999'),
    ]) {
      assert.equal(parseDeviceAuthorization(bad), null, bad);
    }
    assert.equal(parseDeviceBearer(`Bearer cas_dvt_${'A'.repeat(43)}`), `cas_dvt_${'A'.repeat(43)}`);
    assert.equal(parseDeviceBearer(`Bearer cas_dvt_${'A'.repeat(42)}`), null);
    assert.equal(parseDeviceBearer(`bearer cas_dvt_${'A'.repeat(43)}`), null);
  });

  test('[DEV-6] any change to a signed part changes the signature', () => {
    const base = { deviceId: V.deviceId, secret: V.secret, method: 'POST', path: '/a', host: 'h', now: V.ts };
    const sigOf = (h: Record<string, string>) => parseDeviceAuthorization(h.authorization!)!.sig;
    fc.assert(
      fc.property(
        fc.string({ maxLength: 64 }),
        fc.string({ maxLength: 64 }),
        fc.base64String({ minLength: 32, maxLength: 32 }).map((s) => s.replaceAll('+', '-').replaceAll('/', '_')),
        (body, other, nonceish) => {
          const nonce = nonceish.replaceAll('=', 'A');
          const one = sigOf(signDeviceRequest({ ...base, body, nonce }));
          if (body !== other) assert.notEqual(one, sigOf(signDeviceRequest({ ...base, body: other, nonce })));
          assert.notEqual(one, sigOf(signDeviceRequest({ ...base, body, nonce, now: V.ts + 1 })));
          assert.notEqual(one, sigOf(signDeviceRequest({ ...base, body, nonce, path: '/b' })));
          assert.notEqual(one, sigOf(signDeviceRequest({ ...base, body, nonce, secret: `${V.secret}x` })));
        },
      ),
      { numRuns: 100 },
    );
    assert.throws(() => signDeviceRequest({ ...base, deviceId: 'nope' }), DeviceSigningError);
    assert.throws(() => signDeviceRequest({ ...base, nonce: 'short' }), DeviceSigningError);
  });
});

describe('device challenge-response', () => {
  test('[DEV-6] serverProof and response match the documented vectors', () => {
    assert.equal(V.clientNonce, Buffer.alloc(16, 0x11).toString('base64url'));
    assert.equal(V.challenge, Buffer.alloc(32, 0x22).toString('base64url'));
    const key = deviceRequestKey(V.secret);
    assert.equal(challengeServerProof(key, V.deviceId, V.clientNonce, V.challenge), V.serverProof);
    assert.equal(hmac64(key, `server|${V.deviceId}|${V.clientNonce}|${V.challenge}`), V.serverProof);
    assert.equal(challengeDeviceResponse(key, V.deviceId, V.challenge, V.clientNonce), V.response);
    assert.equal(hmac64(key, `device|${V.deviceId}|${V.challenge}|${V.clientNonce}`), V.response);
  });

  test('[DEV-6] the device accepts only the proof of a platform that holds its key', () => {
    assert.ok(verifyServerProof(V.secret, V.deviceId, V.clientNonce, V.challenge, V.serverProof));
    assert.ok(!verifyServerProof(`${V.secret}x`, V.deviceId, V.clientNonce, V.challenge, V.serverProof));
    assert.ok(!verifyServerProof(V.secret, V.deviceId, V.challenge, V.clientNonce, V.serverProof));
    // The device's own response reflected back is not a server proof (distinct labels).
    assert.ok(!verifyServerProof(V.secret, V.deviceId, V.clientNonce, V.challenge, V.response));
    assert.ok(!verifyServerProof(V.secret, V.deviceId, V.clientNonce, V.challenge, ''));
    assert.ok(!verifyServerProof(V.secret, V.deviceId, V.clientNonce, V.challenge, `${V.serverProof}A`));
  });
});

describe('hardware-ID registration', () => {
  test('[DEV-4] hardware IDs are normalised to one canonical form, bad ones refused', () => {
    for (const mac of ['AA:BB:CC:00:11:22', 'aa-bb-cc-00-11-22', 'aabb.cc00.1122', 'AABBCC001122', ' aabbcc001122 ']) {
      assert.equal(normaliseHardwareId(mac), 'mac:aabbcc001122', mac);
    }
    assert.equal(normaliseHardwareId('35-209900-176148-1'), 'imei:352099001761481');
    assert.equal(normaliseHardwareId('352099001761481'), 'imei:352099001761481');
    assert.equal(normaliseHardwareId('mac:aabbcc001122'), 'mac:aabbcc001122');
    assert.equal(normaliseHardwareId('imei:352099001761481'), 'imei:352099001761481');
    fc.assert(
      fc.property(fc.string({ maxLength: 70 }), (raw) => {
        const once = normaliseHardwareId(raw);
        if (once !== null) assert.equal(normaliseHardwareId(once), once, 'idempotent');
      }),
    );
    for (const bad of [
      '352099001761482', // Luhn digit wrong
      'AA:BB:CC:00:11',
      'AA:BB-CC:00:11:22',
      '00:00:00:00:00:00',
      'ff:ff:ff:ff:ff:ff',
      'gg:bb:cc:00:11:22',
      '',
      'x'.repeat(100),
      'MAC:aabbcc001122',
      'mac:000000000000',
      'imei:352099001761482',
    ]) {
      assert.equal(normaliseHardwareId(bad), null, bad);
    }
  });

  test('[DEV-4] the registration proof and the sealed secret match the documented vectors', () => {
    const body = signRegistration({
      productId: V.productId,
      hardwareId: 'AA:BB:CC:00:11:22',
      productSecret: V.productSecret,
      now: V.ts,
      nonce: V.nonce,
    });
    assert.deepEqual(body, {
      productId: V.productId,
      hardwareId: V.hardwareId,
      ts: V.ts,
      nonce: V.nonce,
      proof: V.proof,
    });
    const productKey = hkdfSync(
      'sha256',
      Buffer.from(V.productSecret),
      'castellan',
      'castellan product registration v1',
      32,
    );
    assert.equal(
      hmac64(Buffer.from(productKey), `register|${V.productId}|${V.hardwareId}|${V.ts}|${V.nonce}`),
      V.proof,
    );
    assert.equal(
      registrationProof(V.productSecret, {
        productId: V.productId,
        hardwareId: V.hardwareId,
        ts: V.ts,
        nonce: V.nonce,
      }),
      V.proof,
    );
    const sealInput = { productId: V.productId, hardwareId: V.hardwareId, deviceId: V.deviceId, nonce: V.nonce };
    assert.equal(
      sealDeviceSecret(V.productSecret, { ...sealInput, secret: V.secret }, Buffer.from(V.sealIv, 'hex')),
      V.sealed,
    );
    assert.equal(openDeviceSecret(V.productSecret, { ...sealInput, sealed: V.sealed }), V.secret);
    // Another product secret, nonce, device or hardware ID cannot open it.
    for (const wrong of [
      { ...sealInput, nonce: 'BBECAwQFBgcICQoLDA0ODw' },
      { ...sealInput, deviceId: '01abcdef1234560a1b2c3d01' },
      { ...sealInput, hardwareId: 'mac:aabbcc001123' },
    ]) {
      assert.throws(() => openDeviceSecret(V.productSecret, { ...wrong, sealed: V.sealed }), DeviceSigningError);
    }
    assert.throws(
      () => openDeviceSecret(`${V.productSecret}x`, { ...sealInput, sealed: V.sealed }),
      DeviceSigningError,
    );
    assert.throws(() => openDeviceSecret(V.productSecret, { ...sealInput, sealed: 'AAAA' }), DeviceSigningError);
  });
});
