// Asymmetric device identities (DEV-5) on both databases, through the device SDK: certificates from the
// vendor's platform CA (CSR flow) for P-256 and RSA-2048 keys over mutual TLS, CAs vendors upload with
// proof of possession, SM2 devices by signed challenge-response and a device token; and the hostile
// cases: another vendor's CA, expired, another device's and self-signed certificates, forged SM2
// signatures.
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  DeviceClient,
  DeviceConnectError,
  type DeviceKeyPair,
  generateDeviceKeyPair,
  generateSm2KeyPair,
  signChallenge,
  type Sm2KeyPair,
} from '@castellan/device';
import { newDeviceNonce } from '@castellan/protocol';
import fc from 'fast-check';
import { dialectCases } from '../helpers/dialects.ts';
import { cryptoKeys, csrFor, issueFrom, makeCa, p384Csr, selfSigned, tamperedCsr } from '../helpers/device-pki.ts';
import {
  issueAccessKey,
  provisionTenant,
  request,
  startTestPlatform,
  type Tenant,
  type TestPlatform,
} from '../helpers/test-platform.ts';

/** MQTT 5 CONNACK 0x86 Bad User Name or Password: every refused credential looks the same. */
const BAD_CREDENTIALS = 'MQTT_CONNACK_134';

for (const dialect of await dialectCases()) {
  describe(`device certificates (DEV-5) on ${dialect.name}`, { skip: dialect.skip }, () => {
    let tp: TestPlatform;
    let tenant: Tenant;
    let other: Tenant;

    before(async () => {
      tp = await startTestPlatform(dialect.name);
      tenant = await provisionTenant(tp, 8);
      other = await provisionTenant(tp, 2, tenant.adminToken);
      // Both ways in (DEV-5): the products accept certificates besides secrets.
      for (const t of [tenant, other]) {
        const res = await request(tp.platform, 'PATCH', `/v1/products/${t.productId}`, {
          token: t.vendorToken,
          body: { authModes: ['secret', 'certificate'] },
        });
        assert.equal(res.status, 200, res.text);
      }
    });
    after(() => tp?.close());

    const p = () => tp.platform;

    const connect = (deviceId: string, credentials: { cert?: string; key?: string; token?: string; secret?: string }) =>
      DeviceClient.connect({
        url: p().mqttUrl,
        ca: p().caPem,
        deviceId,
        connectTimeoutMs: 5000,
        ...credentials,
      });

    const refusal = async (deviceId: string, credentials: Parameters<typeof connect>[1]) => {
      try {
        const client = await connect(deviceId, credentials);
        await client.close();
        return 'connected';
      } catch (error) {
        assert.ok(error instanceof DeviceConnectError, String(error));
        return error.code;
      }
    };

    const issue = async (t: Tenant, deviceId: string, body: Record<string, unknown>) =>
      request(p(), 'POST', `/v1/devices/${deviceId}/certificates`, { token: t.vendorToken, body });

    const certificateRows = async (deviceId: string) =>
      tp.query<{ serial: string; kind: string }>('select serial, kind from device_certificates where device_id = $1', [
        deviceId,
      ]);

    const connectAudits = async (deviceId: string) => {
      await p().audit.flush();
      return p().audit.query({ type: 'device.connect', target: deviceId, limit: 100 });
    };

    for (const algorithm of ['p256', 'rsa'] as const) {
      test(`[DEV-5] a ${algorithm === 'p256' ? 'P-256' : 'RSA-2048'} device gets a certificate from a CSR and connects over mutual TLS through the SDK`, async () => {
        const device = tenant.devices[algorithm === 'p256' ? 0 : 1]!;
        const keys = generateDeviceKeyPair(algorithm);
        const issued = await issue(tenant, device.id, { csr: await csrFor(keys, 'ignored subject') });
        assert.equal(issued.status, 201, issued.text);
        const view = issued.body.certificate;
        assert.equal(view.kind, 'issued');
        assert.equal(view.algorithm, algorithm);
        assert.equal(view.status, 'active');
        assert.match(view.serial, /^[0-9a-f]{24}$/);
        // The platform decides the subject: CN = device ID, SAN URI, client authentication only.
        const cert = new X509Certificate(view.certificate);
        const ca = new X509Certificate(issued.body.caCertificate);
        assert.equal(cert.subject, `CN=${device.id}`);
        assert.equal(cert.subjectAltName, `URI:urn:castellan:device:${device.id}`);
        assert.equal(cert.serialNumber.toLowerCase(), view.serial);
        assert.equal(cert.fingerprint256.replaceAll(':', '').toLowerCase(), view.fingerprint);
        assert.ok(cert.checkIssued(ca) && cert.verify(ca.publicKey), 'chains to the vendor CA');
        assert.equal(cert.ca, false);
        const days = (cert.validToDate.getTime() - Date.now()) / 86_400_000;
        assert.ok(days > 364 && days <= 365, `devices.certificateDays (365) applies: ${days}`);
        // The vendor's CA is P-256, created on first use, one per vendor, key sealed.
        const cas = await request(p(), 'GET', `/v1/vendors/${tenant.vendorId}/device-cas`, {
          token: tenant.vendorToken,
        });
        assert.equal(cas.status, 200);
        const platformCas = cas.body.items.filter((c: { kind: string }) => c.kind === 'platform');
        assert.equal(platformCas.length, 1);
        assert.equal(platformCas[0].certificate, issued.body.caCertificate);
        assert.equal(
          new X509Certificate(platformCas[0].certificate).publicKey.asymmetricKeyDetails?.namedCurve,
          'prime256v1',
        );
        const sealed = await tp.query<{ key_ciphertext: Uint8Array }>(
          "select key_ciphertext from device_cas where vendor_id = $1 and kind = 'platform'",
          [tenant.vendorId],
        );
        assert.ok(!Buffer.from(sealed[0]!.key_ciphertext).includes(Buffer.from('PRIVATE KEY')), 'no clear key at rest');

        const client = await connect(device.id, { cert: view.certificate, key: keys.privateKeyPem });
        assert.equal(p().broker.isConnected(device.id), true);
        await client.publishTelemetry({ temperature: 21.5 });
        await client.close();
        const audits = await connectAudits(device.id);
        assert.ok(audits.some((e) => e.result === 'success' && e.details.method === 'certificate'));
        // The secret still works for the same device (the TLS listener asks for, never demands, a certificate).
        const bySecret = await connect(device.id, { secret: device.secret });
        await bySecret.close();
      });
    }

    test('[DEV-5] a product that allows only secrets refuses a certificate device at connect, audited', async () => {
      const device = tenant.devices[7]!;
      const keys = generateDeviceKeyPair('p256');
      const issued = await issue(tenant, device.id, { csr: await csrFor(keys) });
      assert.equal(issued.status, 201, issued.text);
      const only = (authModes: string[]) =>
        request(p(), 'PATCH', `/v1/products/${tenant.productId}`, { token: tenant.vendorToken, body: { authModes } });
      try {
        assert.equal((await only(['secret'])).status, 200);
        // Products are cached briefly (read on every connect): wait for the change to apply.
        let code = 'connected';
        for (let i = 0; i < 60 && code === 'connected'; i++) {
          code = await refusal(device.id, { cert: issued.body.certificate.certificate, key: keys.privateKeyPem });
          if (code === 'connected') await sleep(250);
        }
        assert.equal(code, 'MQTT_CONNACK_135');
        assert.equal(p().broker.isConnected(device.id), false);
        const denied = (await connectAudits(device.id)).filter(
          (e) => e.result === 'denied' && e.details.reason === 'auth-mode-not-allowed',
        );
        assert.ok(denied.length >= 1, 'the refusal is audited with its reason');
        // The secret still works: the product allows it.
        const client = await connect(device.id, { secret: device.secret });
        await client.close();
      } finally {
        assert.equal((await only(['secret', 'certificate'])).status, 200);
      }
    });

    test('[DEV-5] an L2 product: its device connects with a certificate over mutual TLS, never with its secret', async () => {
      const product = await request(p(), 'POST', '/v1/products', {
        token: tenant.vendorToken,
        body: { name: 'Door Lock', category: 'lock', securityLevel: 'L2' },
      });
      assert.equal(product.status, 201, product.text);
      assert.deepEqual(product.body.authModes, ['certificate']);
      const created = await request(p(), 'POST', `/v1/products/${product.body.id}/devices`, {
        token: tenant.vendorToken,
        body: { count: 1 },
      });
      const device = created.body.devices[0] as { id: string; secret: string };
      assert.equal(await refusal(device.id, { secret: device.secret }), 'MQTT_CONNACK_135');
      const keys = generateDeviceKeyPair('p256');
      const issued = await issue(tenant, device.id, { csr: await csrFor(keys) });
      assert.equal(issued.status, 201, issued.text);
      const client = await connect(device.id, { cert: issued.body.certificate.certificate, key: keys.privateKeyPem });
      await client.publishTelemetry({ locked: true });
      await client.close();
    });

    test('[DEV-5] a bad CSR, an unsupported key or a second credential of one call is refused; nothing is recorded', async () => {
      const device = tenant.devices[2]!;
      const keys = generateDeviceKeyPair('p256');
      const cases: Array<[string, Record<string, unknown>, number, string]> = [
        ['tampered signature', { csr: await tamperedCsr(keys) }, 400, 'ERR_DEVICE_CSR_INVALID'],
        [
          'not a CSR',
          { csr: '-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----' },
          400,
          'ERR_DEVICE_CSR_INVALID',
        ],
        ['two CSRs', { csr: `${await csrFor(keys)}\n${await csrFor(keys)}` }, 400, 'ERR_DEVICE_CSR_INVALID'],
        ['a P-384 key', { csr: await p384Csr() }, 400, 'ERR_DEVICE_KEY_UNSUPPORTED'],
        [
          'an RSA-1024 key',
          { csr: await csrFor(generateDeviceKeyPair('rsa', { modulusLength: 1024 })) },
          400,
          'ERR_DEVICE_KEY_UNSUPPORTED',
        ],
        [
          'an SM2 point off the curve',
          { publicKey: `04${'11'.repeat(64)}`, algorithm: 'sm2' },
          400,
          'ERR_DEVICE_KEY_UNSUPPORTED',
        ],
        [
          'csr and publicKey',
          { csr: await csrFor(keys), publicKey: generateSm2KeyPair().publicKey, algorithm: 'sm2' },
          400,
          'ERR_VALIDATION_FAILED',
        ],
        ['nothing', {}, 400, 'ERR_VALIDATION_FAILED'],
      ];
      for (const [label, body, status, code] of cases) {
        const res = await issue(tenant, device.id, body);
        assert.equal(res.status, status, `${label}: ${res.text}`);
        assert.equal(res.body.error.code, code, label);
      }
      assert.deepEqual(await certificateRows(device.id), []);
    });

    test('[DEV-5] only the vendor may give its devices credentials: another vendor, a read-only key and staff get "not found"', async () => {
      const device = tenant.devices[2]!;
      const readOnly = await issueAccessKey(p(), tenant.adminToken, tenant.vendorId, { scopes: ['devices:read'] });
      const keys = generateDeviceKeyPair('p256');
      const csr = await csrFor(keys);
      for (const token of [other.vendorToken, readOnly, tenant.adminToken]) {
        const res = await request(p(), 'POST', `/v1/devices/${device.id}/certificates`, { token, body: { csr } });
        assert.equal(res.status, 404, res.text);
        assert.equal(res.body.error.code, 'ERR_DEVICE_NOT_FOUND');
      }
      const cas = await request(p(), 'GET', `/v1/vendors/${tenant.vendorId}/device-cas`, { token: other.vendorToken });
      assert.equal(cas.body.error.code, 'ERR_VENDOR_NOT_FOUND');
      const code = await request(p(), 'POST', `/v1/vendors/${tenant.vendorId}/device-cas/registration-codes`, {
        token: readOnly,
      });
      assert.equal(code.body.error.code, 'ERR_VENDOR_NOT_FOUND');
      assert.deepEqual(await certificateRows(device.id), []);
    });

    test("[DEV-5] refused at connect: another vendor's CA, another device's certificate, a self-signed one, an expired one", async () => {
      const [a1, a2, a3] = [tenant.devices[3]!, tenant.devices[4]!, tenant.devices[5]!];
      const x1 = other.devices[0]!;
      // Another vendor's platform CA issued this, for its own device: it cannot stand for ours.
      const xKeys = generateDeviceKeyPair('p256');
      const xCert = (await issue(other, x1.id, { csr: await csrFor(xKeys) })).body.certificate.certificate as string;
      assert.equal(await refusal(a1.id, { cert: xCert, key: xKeys.privateKeyPem }), BAD_CREDENTIALS);
      // ...and it works for the device it names, proving the refusal is about the device, not the certificate.
      await (await connect(x1.id, { cert: xCert, key: xKeys.privateKeyPem })).close();

      // Another vendor's uploaded CA mints a certificate with our device's ID: it cannot be recorded by
      // either vendor, and presenting it fails.
      const xCa = await registerCa(other);
      const forgedKeys = generateDeviceKeyPair('p256');
      const forged = await issueFrom(xCa, { cn: a1.id, publicKey: (await cryptoKeys(forgedKeys)).publicKey });
      assert.equal((await issue(other, a1.id, { certificate: forged })).body.error.code, 'ERR_DEVICE_NOT_FOUND');
      assert.equal((await issue(tenant, a1.id, { certificate: forged })).body.error.code, 'ERR_DEVICE_CERT_INVALID');
      assert.equal(await refusal(a1.id, { cert: forged, key: forgedKeys.privateKeyPem }), BAD_CREDENTIALS);

      // Our own device's certificate does not open another of our devices.
      const a2Keys = generateDeviceKeyPair('p256');
      const a2Cert = (await issue(tenant, a2.id, { csr: await csrFor(a2Keys) })).body.certificate.certificate as string;
      assert.equal(await refusal(a1.id, { cert: a2Cert, key: a2Keys.privateKeyPem }), BAD_CREDENTIALS);

      // Self-signed with our device's ID: neither recordable nor accepted.
      const selfKeys = generateDeviceKeyPair('p256');
      const self = await selfSigned(selfKeys, a1.id);
      assert.equal((await issue(tenant, a1.id, { certificate: self })).body.error.code, 'ERR_DEVICE_CERT_INVALID');
      assert.equal(await refusal(a1.id, { cert: self, key: selfKeys.privateKeyPem }), BAD_CREDENTIALS);

      // Expired: an uploaded-CA certificate recorded while valid, presented after its notAfter.
      const ca = await registerCa(tenant);
      const shortKeys = generateDeviceKeyPair('p256');
      const short = await issueFrom(ca, {
        cn: a3.id,
        publicKey: (await cryptoKeys(shortKeys)).publicKey,
        notAfter: new Date(Date.now() + 2500),
      });
      assert.equal((await issue(tenant, a3.id, { certificate: short })).status, 201);
      await (await connect(a3.id, { cert: short, key: shortKeys.privateKeyPem })).close();
      await sleep(3000);
      assert.equal(await refusal(a3.id, { cert: short, key: shortKeys.privateKeyPem }), BAD_CREDENTIALS);
      // Already expired at registration: refused there too.
      const stale = await issueFrom(ca, {
        cn: a3.id,
        notBefore: new Date(Date.now() - 86_400_000),
        notAfter: new Date(Date.now() - 60_000),
      });
      assert.equal((await issue(tenant, a3.id, { certificate: stale })).body.error.code, 'ERR_DEVICE_CERT_INVALID');

      assert.equal(p().broker.isConnected(a1.id), false);
      const reasons = (await connectAudits(a1.id))
        .filter((e) => e.result === 'failure')
        .map((e) => e.details.certificate);
      assert.ok(reasons.includes('wrong-device') && reasons.includes('unknown-certificate'), JSON.stringify(reasons));
      const expired = (await connectAudits(a3.id)).filter((e) => e.details.certificate === 'not-valid-now');
      assert.equal(expired.length, 1);
    });

    /** Registers a fresh CA for the tenant with the proof of possession. */
    async function registerCa(t: Tenant) {
      const ca = await makeCa(`CA ${Math.random()}`);
      const code = await request(p(), 'POST', `/v1/vendors/${t.vendorId}/device-cas/registration-codes`, {
        token: t.vendorToken,
      });
      assert.equal(code.status, 201, code.text);
      const verification = await issueFrom(ca, { cn: code.body.registrationCode });
      const res = await request(p(), 'POST', `/v1/vendors/${t.vendorId}/device-cas`, {
        token: t.vendorToken,
        body: { certificate: ca.pem, verificationCertificate: verification },
      });
      assert.equal(res.status, 201, res.text);
      return { ...ca, id: res.body.id as string };
    }

    test('[DEV-5] an uploaded vendor CA: proof of possession succeeds with the CA key and fails without it', async () => {
      const ca = await makeCa('Acme Device CA');
      const newCode = async (t: Tenant = tenant) =>
        (
          await request(p(), 'POST', `/v1/vendors/${t.vendorId}/device-cas/registration-codes`, {
            token: t.vendorToken,
          })
        ).body.registrationCode as string;
      const register = (verificationCertificate: string, certificate = ca.pem) =>
        request(p(), 'POST', `/v1/vendors/${tenant.vendorId}/device-cas`, {
          token: tenant.vendorToken,
          body: { certificate, verificationCertificate },
        });
      const code = await newCode();
      assert.match(code, /^[0-9a-f]{64}$/);
      // Without the CA key: the same subject and issuer name, signed by another key.
      const impostor = await makeCa('Acme Device CA');
      const noKey = await register(await issueFrom(ca, { cn: code, signingKey: impostor.keys.privateKey }));
      assert.equal(noKey.status, 400);
      assert.equal(noKey.body.error.code, 'ERR_DEVICE_CA_POP_FAILED');
      assert.equal(
        noKey.body.error.message,
        'Proof of possession failed: the verification certificate must name a valid registration code and be signed by the CA key',
      );
      // A code never issued, and another vendor's code, prove nothing either.
      const fake = await register(await issueFrom(ca, { cn: 'ab'.repeat(32) }));
      assert.equal(fake.body.error.code, 'ERR_DEVICE_CA_POP_FAILED');
      const foreign = await register(await issueFrom(ca, { cn: await newCode(other) }));
      assert.equal(foreign.body.error.code, 'ERR_DEVICE_CA_POP_FAILED');
      // An end-entity certificate is no CA.
      const leaf = await issueFrom(ca, { cn: 'not a ca' });
      assert.equal((await register(await issueFrom(ca, { cn: code }), leaf)).body.error.code, 'ERR_DEVICE_CA_INVALID');
      const fingerprint = new X509Certificate(ca.pem).fingerprint256.replaceAll(':', '').toLowerCase();
      assert.equal((await tp.query('select id from device_cas where fingerprint = $1', [fingerprint])).length, 0);

      // With the key: registered; the failed attempts did not use up the code.
      const ok = await register(await issueFrom(ca, { cn: code }));
      assert.equal(ok.status, 201, ok.text);
      assert.equal(ok.body.kind, 'uploaded');
      assert.equal(ok.body.fingerprint, fingerprint);
      // The code is single use, and the CA cannot be registered twice.
      const second = await makeCa('Acme Second CA');
      const reused = await register(await issueFrom(second, { cn: code }), second.pem);
      assert.equal(reused.body.error.code, 'ERR_DEVICE_CA_POP_FAILED');
      const again = await register(await issueFrom(ca, { cn: await newCode() }));
      assert.equal(again.status, 409);
      assert.equal(again.body.error.code, 'ERR_DEVICE_CA_DUPLICATE');

      // A device certificate the CA issued is accepted once recorded for the device, over mutual TLS.
      const device = tenant.devices[6]!;
      const keys = generateDeviceKeyPair('p256');
      const pem = await issueFrom(ca, {
        cn: device.id,
        publicKey: (await cryptoKeys(keys)).publicKey,
        sanUri: `urn:castellan:device:${device.id}`,
      });
      assert.equal(
        await refusal(device.id, { cert: pem, key: keys.privateKeyPem }),
        BAD_CREDENTIALS,
        'not yet recorded',
      );
      const recorded = await issue(tenant, device.id, { certificate: pem });
      assert.equal(recorded.status, 201, recorded.text);
      assert.equal(recorded.body.certificate.kind, 'vendor-ca');
      assert.equal(recorded.body.caCertificate, new X509Certificate(ca.pem).toString());
      assert.equal(
        (await issue(tenant, device.id, { certificate: pem })).body.error.code,
        'ERR_DEVICE_CREDENTIAL_DUPLICATE',
      );
      // A SAN naming another device makes the certificate unusable for this one.
      const mixed = await issueFrom(ca, { cn: device.id, sanUri: `urn:castellan:device:${tenant.devices[7]!.id}` });
      assert.equal((await issue(tenant, device.id, { certificate: mixed })).body.error.code, 'ERR_DEVICE_CERT_INVALID');
      const client = await connect(device.id, { cert: pem, key: keys.privateKeyPem });
      await client.publishTelemetry({ on: true });
      await client.close();
      await p().audit.flush();
      const registered = await p().audit.query({ type: 'device.ca.register', limit: 10 });
      assert.ok(registered.some((e) => e.target === ok.body.id && e.result === 'success'));
    });

    /** The HTTPS challenge-response with a signature by the device key (the SDK signs). */
    async function tokenBySignature(deviceId: string, key: Sm2KeyPair | DeviceKeyPair) {
      const clientNonce = newDeviceNonce();
      const challenge = await request(p(), 'POST', '/v1/device-api/challenges', { body: { deviceId, clientNonce } });
      assert.equal(challenge.status, 201, challenge.text);
      return request(p(), 'POST', '/v1/device-api/tokens', {
        body: {
          deviceId,
          challenge: challenge.body.challenge,
          response: signChallenge(key, deviceId, challenge.body.challenge, clientNonce),
        },
      });
    }

    test('[DEV-5] an SM2 device gets a device token by signed challenge and connects with it; a forged signature fails', async () => {
      const device = tenant.devices[7]!;
      const keys = generateSm2KeyPair();
      const registered = await issue(tenant, device.id, { publicKey: keys.publicKey, algorithm: 'sm2' });
      assert.equal(registered.status, 201, registered.text);
      assert.equal(registered.body.certificate.kind, 'sm2-key');
      assert.equal(registered.body.certificate.algorithm, 'sm2');
      assert.equal(registered.body.certificate.certificate, null);
      assert.equal(registered.body.caCertificate, null);
      assert.equal(
        (await issue(tenant, device.id, { publicKey: keys.publicKey, algorithm: 'sm2' })).body.error.code,
        'ERR_DEVICE_CREDENTIAL_DUPLICATE',
      );

      // Forged: signed by another SM2 key; and a P-256 signature where none is registered.
      for (const forger of [generateSm2KeyPair(), generateDeviceKeyPair('p256')]) {
        const forged = await tokenBySignature(device.id, forger);
        assert.equal(forged.status, 401, forged.text);
        assert.equal(forged.body.error.code, 'ERR_DEVICE_AUTH_FAILED');
      }
      // The right key, but over another device's challenge, proves nothing for this device.
      const otherDevice = tenant.devices[6]!;
      const crossed = await tokenBySignature(otherDevice.id, keys);
      assert.equal(crossed.status, 401);

      const issued = await tokenBySignature(device.id, keys);
      assert.equal(issued.status, 201, issued.text);
      const token = issued.body.token as string;
      assert.match(token, /^cas_dvt_/);
      const client = await connect(device.id, { token });
      await client.publishTelemetry({ locked: true });
      await client.close();
      // The token is this device's only: another device ID with it is refused, so is a mangled token.
      assert.equal(await refusal(otherDevice.id, { token }), BAD_CREDENTIALS);
      assert.equal(await refusal(device.id, { token: `${token.slice(0, -2)}AA` }), BAD_CREDENTIALS);
      await p().audit.flush();
      const connects = await p().audit.query({ type: 'device.connect', target: device.id, limit: 20 });
      assert.ok(connects.some((e) => e.result === 'success' && e.details.method === 'token'));
      const tokenIssue = await p().audit.query({ type: 'device.token-issue', target: device.id, limit: 5 });
      assert.equal(tokenIssue[0]?.details.method, 'certificate');
    });

    test('[DEV-5] a P-256 certificate device may use the same signed challenge over HTTPS', async () => {
      const device = tenant.devices[0]!;
      const keys = generateDeviceKeyPair('p256');
      assert.equal((await issue(tenant, device.id, { csr: await csrFor(keys) })).status, 201);
      const issued = await tokenBySignature(device.id, keys);
      assert.equal(issued.status, 201, issued.text);
    });

    test('[DEV-5] property: no device certificate opens a device it was not issued for', async () => {
      // A pool of issued certificates; any (certificate, claimed device) pair that does not match is refused.
      const pool: Array<{ id: string; cert: string; key: string }> = [];
      for (const device of tenant.devices.slice(0, 3)) {
        const keys = generateDeviceKeyPair('p256');
        const cert = (await issue(tenant, device.id, { csr: await csrFor(keys) })).body.certificate.certificate;
        pool.push({ id: device.id, cert, key: keys.privateKeyPem });
      }
      const x = other.devices[1]!;
      const xKeys = generateDeviceKeyPair('p256');
      pool.push({
        id: x.id,
        cert: (await issue(other, x.id, { csr: await csrFor(xKeys) })).body.certificate.certificate,
        key: xKeys.privateKeyPem,
      });
      const ids = [...pool.map((c) => c.id), ...tenant.devices.slice(3).map((d) => d.id)];
      await fc.assert(
        fc.asyncProperty(fc.nat(pool.length - 1), fc.nat(ids.length - 1), async (c, d) => {
          const { id, cert, key } = pool[c]!;
          const outcome = await refusal(ids[d]!, { cert, key });
          assert.equal(outcome, ids[d] === id ? 'connected' : BAD_CREDENTIALS);
        }),
        { numRuns: 12 },
      );
    });
  });
}
