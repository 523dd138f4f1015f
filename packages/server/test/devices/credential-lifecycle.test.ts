// Credential lifecycle (DEV-8) on both databases, through the device SDK: a revoked certificate's live
// connection is dropped within seconds (by the revoking process at once, by every process's sweep when
// the change comes from elsewhere) and reconnecting is refused; secret rotation, revoke-all,
// disable/enable, decommissioning (refused for ever), revoking an uploaded CA; and authorisation.
import assert from 'node:assert/strict';
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
import type { Packet } from 'mqtt';
import type { DeviceChange } from '../../src/devices/index.ts';
import { dialectCases } from '../helpers/dialects.ts';
import { cryptoKeys, csrFor, issueFrom, makeCa } from '../helpers/device-pki.ts';
import {
  issueAccessKey,
  provisionTenant,
  request,
  startTestPlatform,
  type Tenant,
  type TestPlatform,
} from '../helpers/test-platform.ts';

const BAD_CREDENTIALS = 'MQTT_CONNACK_134';
const NOT_AUTHORIZED = 'MQTT_CONNACK_135';
/** MQTT 5 DISCONNECT reason codes the platform ends a live connection with. */
const DISCONNECT_NOT_AUTHORIZED = 0x87;
const DISCONNECT_ADMINISTRATIVE = 0x98;
/** "Within seconds": the sweep runs every second in these tests. */
const DROP_WITHIN_MS = 4000;

for (const dialect of await dialectCases()) {
  describe(`credential lifecycle (DEV-8) on ${dialect.name}`, { skip: dialect.skip }, () => {
    let tp: TestPlatform;
    let tenant: Tenant;
    let other: Tenant;
    const changes: DeviceChange[] = [];

    before(async () => {
      tp = await startTestPlatform(dialect.name, { devices: { credentialSweepSeconds: 1 } });
      tenant = await provisionTenant(tp, 10);
      other = await provisionTenant(tp, 1, tenant.adminToken);
      // Both ways in (DEV-5): the products accept certificates besides secrets.
      for (const t of [tenant, other]) {
        const res = await request(tp.platform, 'PATCH', `/v1/products/${t.productId}`, {
          token: t.vendorToken,
          body: { authModes: ['secret', 'certificate'] },
        });
        assert.equal(res.status, 200, res.text);
      }
      tp.platform.deviceEvents.on('change', (change) => changes.push(change));
    });
    after(() => tp?.close());

    const p = () => tp.platform;

    const connect = (deviceId: string, credentials: { cert?: string; key?: string; token?: string; secret?: string }) =>
      DeviceClient.connect({ url: p().mqttUrl, ca: p().caPem, deviceId, connectTimeoutMs: 5000, ...credentials });

    const refusal = async (deviceId: string, credentials: Parameters<typeof connect>[1]) => {
      try {
        await (await connect(deviceId, credentials)).close();
        return 'connected';
      } catch (error) {
        assert.ok(error instanceof DeviceConnectError, String(error));
        return error.code;
      }
    };

    /** Watches a connected client: when its connection closed, and the DISCONNECT reason it was sent. */
    function watch(client: DeviceClient) {
      const state: { closedAt: number | null; reasonCode: number | null } = { closedAt: null, reasonCode: null };
      client.mqtt.on('packetreceive', (packet: Packet) => {
        if (packet.cmd === 'disconnect') state.reasonCode = packet.reasonCode ?? 0;
      });
      client.mqtt.on('close', () => {
        state.closedAt ??= Date.now();
      });
      return {
        state,
        async dropped(since: number): Promise<number> {
          while (state.closedAt === null && Date.now() - since < DROP_WITHIN_MS + 2000) await sleep(25);
          assert.notEqual(state.closedAt, null, 'the live connection was dropped');
          return state.closedAt! - since;
        },
      };
    }

    const post = (t: Tenant, path: string, body?: unknown) =>
      request(p(), 'POST', path, { token: t.vendorToken, ...(body === undefined ? {} : { body }) });

    async function certificateDevice(deviceId: string) {
      const keys = generateDeviceKeyPair('p256');
      const res = await post(tenant, `/v1/devices/${deviceId}/certificates`, { csr: await csrFor(keys) });
      assert.equal(res.status, 201, res.text);
      return {
        cert: res.body.certificate.certificate as string,
        key: keys.privateKeyPem,
        serial: res.body.certificate.serial as string,
      };
    }

    async function tokenBySignature(deviceId: string, key: Sm2KeyPair | DeviceKeyPair) {
      const clientNonce = newDeviceNonce();
      const challenge = await request(p(), 'POST', '/v1/device-api/challenges', { body: { deviceId, clientNonce } });
      return request(p(), 'POST', '/v1/device-api/tokens', {
        body: {
          deviceId,
          challenge: challenge.body.challenge,
          response: signChallenge(key, deviceId, challenge.body.challenge, clientNonce),
        },
      });
    }

    async function sm2Device(deviceId: string) {
      const keys = generateSm2KeyPair();
      const res = await post(tenant, `/v1/devices/${deviceId}/certificates`, {
        publicKey: keys.publicKey,
        algorithm: 'sm2',
      });
      assert.equal(res.status, 201, res.text);
      const token = await tokenBySignature(deviceId, keys);
      assert.equal(token.status, 201, token.text);
      return { keys, token: token.body.token as string, serial: res.body.certificate.serial as string };
    }

    const audits = async (type: string, target: string) => {
      await p().audit.flush();
      return p().audit.query({ type, target, limit: 20 });
    };

    test("[DEV-8] a revoked certificate's live connection is dropped within seconds and reconnecting is refused", async () => {
      const device = tenant.devices[0]!;
      const credential = await certificateDevice(device.id);
      const client = await connect(device.id, credential);
      const watched = watch(client);
      await client.publishTelemetry({ n: 1 });
      const started = Date.now();
      const res = await post(tenant, `/v1/devices/${device.id}/certificates/${credential.serial}/revoke`, {
        reason: 'key-compromise',
      });
      assert.equal(res.status, 200, res.text);
      assert.deepEqual(res.body, { id: device.id, serial: credential.serial, revoked: 1, disconnected: 1 });
      const took = await watched.dropped(started);
      assert.ok(took < DROP_WITHIN_MS, `dropped after ${took} ms`);
      assert.equal(watched.state.reasonCode, DISCONNECT_NOT_AUTHORIZED);
      assert.equal(p().broker.isConnected(device.id), false);
      await client.close();
      assert.equal(await refusal(device.id, credential), BAD_CREDENTIALS);
      // Listed as revoked; revoking again finds nothing to revoke.
      const listed = await request(p(), 'GET', `/v1/devices/${device.id}/certificates`, { token: tenant.vendorToken });
      assert.equal(listed.body.items[0].status, 'revoked');
      const again = await post(tenant, `/v1/devices/${device.id}/certificates/${credential.serial}/revoke`);
      assert.equal(again.status, 404);
      assert.equal(again.body.error.code, 'ERR_DEVICE_CERT_NOT_FOUND');
      const [entry] = await audits('device.certificate.revoke', device.id);
      assert.equal(entry?.details.reason, 'key-compromise');
      assert.ok(
        changes.some(
          (c) => c.deviceId === device.id && c.kind === 'credential.revoked' && c.data.serial === credential.serial,
        ),
      );
    });

    test('[DEV-8] revoked by another process (straight in the store): the sweep drops the connection within seconds', async () => {
      const device = tenant.devices[1]!;
      const credential = await certificateDevice(device.id);
      const client = await connect(device.id, credential);
      const watched = watch(client);
      const started = Date.now();
      // What another platform process does: write the revocation; this process only sees the store.
      await p()
        .store.db.updateTable('device_certificates')
        .set({ revoked_at: Date.now(), revoke_reason: 'superseded' })
        .where('device_id', '=', device.id)
        .execute();
      const took = await watched.dropped(started);
      assert.ok(took < DROP_WITHIN_MS, `dropped after ${took} ms`);
      assert.equal(watched.state.reasonCode, DISCONNECT_NOT_AUTHORIZED);
      await client.close();
      assert.equal(await refusal(device.id, credential), BAD_CREDENTIALS);
      const [dropped] = await audits('device.connection-dropped', device.id);
      assert.equal(dropped?.details.reason, 'certificate-revoked');
      // A device disabled elsewhere goes the same way.
      const secretDevice = tenant.devices[2]!;
      const bySecret = await connect(secretDevice.id, { secret: secretDevice.secret });
      const watchedSecret = watch(bySecret);
      const t0 = Date.now();
      await p().store.db.updateTable('devices').set({ status: 'disabled' }).where('id', '=', secretDevice.id).execute();
      assert.ok((await watchedSecret.dropped(t0)) < DROP_WITHIN_MS);
      assert.equal(watchedSecret.state.reasonCode, DISCONNECT_ADMINISTRATIVE);
      await bySecret.close();
      await p().store.db.updateTable('devices').set({ status: 'active' }).where('id', '=', secretDevice.id).execute();
    });

    test('[DEV-8] rotating the secret: the new one is shown once and works, the old one is refused and its session dropped', async () => {
      const device = tenant.devices[3]!;
      const sm2 = await sm2Device(device.id);
      const client = await connect(device.id, { secret: device.secret });
      const watched = watch(client);
      const started = Date.now();
      const res = await post(tenant, `/v1/devices/${device.id}/credentials/rotate`);
      assert.equal(res.status, 200, res.text);
      assert.equal(res.body.id, device.id);
      assert.equal(res.body.disconnected, 1);
      const secret = res.body.secret as string;
      assert.match(secret, /^[A-Za-z0-9_-]{43}$/);
      assert.notEqual(secret, device.secret);
      assert.ok((await watched.dropped(started)) < DROP_WITHIN_MS);
      await client.close();
      assert.equal(await refusal(device.id, { secret: device.secret }), BAD_CREDENTIALS);
      // Device tokens end with the old secret (they may have been bought with it); the key still works.
      assert.equal(await refusal(device.id, { token: sm2.token }), BAD_CREDENTIALS);
      assert.equal((await tokenBySignature(device.id, sm2.keys)).status, 201);
      const fresh = await connect(device.id, { secret });
      await fresh.publishTelemetry({ rotated: true });
      // The sweep leaves a connection made with the new secret alone.
      await sleep(1500);
      assert.equal(p().broker.isConnected(device.id), true);
      await fresh.close();
      const [entry] = await audits('device.credentials.rotate', device.id);
      assert.equal(entry?.result, 'success');
      assert.ok(!JSON.stringify(entry).includes(secret), 'the secret is not in the audit log');
      assert.ok(!tp.logs.text().includes(secret), 'nor in the logs');
      device.secret = secret;
    });

    test('[DEV-8] disable drops and refuses the device; enable lets it back', async () => {
      const device = tenant.devices[4]!;
      const client = await connect(device.id, { secret: device.secret });
      const watched = watch(client);
      const started = Date.now();
      const disabled = await post(tenant, `/v1/devices/${device.id}/disable`);
      assert.equal(disabled.status, 200, disabled.text);
      assert.deepEqual(disabled.body, { id: device.id, status: 'disabled', previousStatus: 'active', disconnected: 1 });
      assert.ok((await watched.dropped(started)) < DROP_WITHIN_MS);
      assert.equal(watched.state.reasonCode, DISCONNECT_ADMINISTRATIVE);
      await client.close();
      assert.equal(await refusal(device.id, { secret: device.secret }), NOT_AUTHORIZED);
      const enabled = await post(tenant, `/v1/devices/${device.id}/enable`);
      assert.deepEqual(enabled.body, { id: device.id, status: 'active', previousStatus: 'disabled', disconnected: 0 });
      await (await connect(device.id, { secret: device.secret })).close();
      const notDisabled = await post(tenant, `/v1/devices/${device.id}/enable`);
      assert.equal(notDisabled.status, 409);
      assert.equal(notDisabled.body.error.code, 'ERR_DEVICE_NOT_DISABLED');
      assert.ok(
        changes.some((c) => c.deviceId === device.id && c.kind === 'status.changed' && c.data.status === 'disabled'),
      );
      assert.equal((await audits('device.disable', device.id)).length, 1);
      assert.equal((await audits('device.enable', device.id)).length, 1);
    });

    test('[DEV-8] revoking every credential: secret, certificate and device token all refused; the device stays', async () => {
      const device = tenant.devices[5]!;
      const credential = await certificateDevice(device.id);
      const sm2 = await sm2Device(device.id);
      const client = await connect(device.id, { token: sm2.token });
      const watched = watch(client);
      const started = Date.now();
      const res = await post(tenant, `/v1/devices/${device.id}/credentials/revoke`, { reason: 'key-compromise' });
      assert.equal(res.status, 200, res.text);
      assert.deepEqual(res.body, { id: device.id, certificates: 2, tokens: 1, disconnected: 1 });
      assert.ok((await watched.dropped(started)) < DROP_WITHIN_MS);
      await client.close();
      assert.equal(await refusal(device.id, { secret: device.secret }), BAD_CREDENTIALS);
      assert.equal(await refusal(device.id, credential), BAD_CREDENTIALS);
      assert.equal(await refusal(device.id, { token: sm2.token }), BAD_CREDENTIALS);
      assert.equal((await tokenBySignature(device.id, sm2.keys)).status, 401, 'the SM2 key is revoked too');
      // Still an active device: a rotation gives it a working secret again.
      const rotated = await post(tenant, `/v1/devices/${device.id}/credentials/rotate`);
      await (await connect(device.id, { secret: rotated.body.secret })).close();
    });

    test('[DEV-8] decommissioning: dropped, every credential refused for ever, nothing revives it, the ID stays taken', async () => {
      const device = tenant.devices[6]!;
      const credential = await certificateDevice(device.id);
      const sm2 = await sm2Device(device.id);
      const client = await connect(device.id, credential);
      const watched = watch(client);
      const started = Date.now();
      const res = await post(tenant, `/v1/devices/${device.id}/decommission`);
      assert.equal(res.status, 200, res.text);
      assert.deepEqual(res.body, {
        id: device.id,
        status: 'decommissioned',
        previousStatus: 'active',
        disconnected: 1,
      });
      assert.ok((await watched.dropped(started)) < DROP_WITHIN_MS);
      assert.equal(watched.state.reasonCode, DISCONNECT_ADMINISTRATIVE);
      await client.close();
      for (const credentials of [{ secret: device.secret }, credential, { token: sm2.token }]) {
        assert.equal(await refusal(device.id, credentials), BAD_CREDENTIALS);
      }
      assert.equal((await tokenBySignature(device.id, sm2.keys)).status, 401);
      // No operation brings it back.
      for (const [path, body] of [
        [`/v1/devices/${device.id}/enable`, undefined],
        [`/v1/devices/${device.id}/disable`, undefined],
        [`/v1/devices/${device.id}/credentials/rotate`, undefined],
        [`/v1/devices/${device.id}/credentials/revoke`, undefined],
        [`/v1/devices/${device.id}/decommission`, undefined],
        [`/v1/devices/${device.id}/certificates`, { csr: await csrFor(generateDeviceKeyPair('p256')) }],
      ] as const) {
        const refused = await post(tenant, path, body);
        assert.equal(refused.status, 409, `${path}: ${refused.text}`);
        assert.equal(refused.body.error.code, 'ERR_DEVICE_DECOMMISSIONED');
      }
      // Not even the guard's quarantine/release path (status changes never leave 'decommissioned').
      await p().devices.setStatus(device.id, 'quarantined');
      await p().devices.setStatus(device.id, 'active');
      assert.equal((await p().devices.getDevice(device.id))?.status, 'decommissioned');
      const release = await request(p(), 'POST', `/v1/devices/${device.id}/release`, { token: tenant.vendorToken });
      assert.notEqual(release.status, 200);
      assert.equal(await refusal(device.id, { secret: device.secret }), BAD_CREDENTIALS);
      // The row stays (its ID can never be issued again) with its secret destroyed.
      const rows = await tp.query<{ status: string; secret_ciphertext: Uint8Array }>(
        'select status, secret_ciphertext from devices where id = $1',
        [device.id],
      );
      assert.equal(rows.length, 1);
      assert.equal(rows[0]!.status, 'decommissioned');
      assert.equal(Buffer.from(rows[0]!.secret_ciphertext).length, 0);
      const read = await request(p(), 'GET', `/v1/devices/${device.id}`, { token: tenant.vendorToken });
      assert.equal(read.body.status, 'decommissioned');
      const [entry] = await audits('device.decommission', device.id);
      assert.equal(entry?.details.certificates, 2);
      assert.ok(changes.some((c) => c.deviceId === device.id && c.data.status === 'decommissioned'));
    });

    test('[DEV-8] revoking an uploaded vendor CA drops and refuses the devices holding its certificates', async () => {
      const device = tenant.devices[7]!;
      const ca = await makeCa('Revocable CA');
      const code = await post(tenant, `/v1/vendors/${tenant.vendorId}/device-cas/registration-codes`);
      const registered = await post(tenant, `/v1/vendors/${tenant.vendorId}/device-cas`, {
        certificate: ca.pem,
        verificationCertificate: await issueFrom(ca, { cn: code.body.registrationCode }),
      });
      assert.equal(registered.status, 201, registered.text);
      const keys = generateDeviceKeyPair('p256');
      const cert = await issueFrom(ca, { cn: device.id, publicKey: (await cryptoKeys(keys)).publicKey });
      assert.equal((await post(tenant, `/v1/devices/${device.id}/certificates`, { certificate: cert })).status, 201);
      const client = await connect(device.id, { cert, key: keys.privateKeyPem });
      const watched = watch(client);
      const started = Date.now();
      const res = await post(tenant, `/v1/vendors/${tenant.vendorId}/device-cas/${registered.body.id}/revoke`);
      assert.equal(res.status, 200, res.text);
      assert.deepEqual(res.body, { id: registered.body.id, devices: 1, disconnected: 1 });
      assert.ok((await watched.dropped(started)) < DROP_WITHIN_MS);
      await client.close();
      assert.equal(await refusal(device.id, { cert, key: keys.privateKeyPem }), BAD_CREDENTIALS);
      // Another vendor cannot revoke it (nor see it): "not found".
      const foreign = await post(other, `/v1/vendors/${tenant.vendorId}/device-cas/${registered.body.id}/revoke`);
      assert.equal(foreign.body.error.code, 'ERR_VENDOR_NOT_FOUND');
    });

    test('[DEV-8] only the vendor\'s credential managers act: another vendor and a read-only key get "not found", nothing changes', async () => {
      const device = tenant.devices[8]!;
      const credential = await certificateDevice(device.id);
      const client = await connect(device.id, credential);
      const readOnly = await issueAccessKey(p(), tenant.adminToken, tenant.vendorId, { scopes: ['devices:read'] });
      const paths = [
        `/v1/devices/${device.id}/credentials/rotate`,
        `/v1/devices/${device.id}/credentials/revoke`,
        `/v1/devices/${device.id}/certificates/${credential.serial}/revoke`,
        `/v1/devices/${device.id}/disable`,
        `/v1/devices/${device.id}/decommission`,
      ];
      for (const token of [other.vendorToken, readOnly, tenant.adminToken]) {
        for (const path of paths) {
          const res = await request(p(), 'POST', path, { token });
          assert.equal(res.status, 404, `${path}: ${res.text}`);
          assert.equal(res.body.error.code, 'ERR_DEVICE_NOT_FOUND');
        }
      }
      await sleep(1200);
      assert.equal(p().broker.isConnected(device.id), true, 'still connected');
      assert.equal((await p().devices.getDevice(device.id))?.status, 'active');
      await client.close();
      await (await connect(device.id, { secret: device.secret })).close();
    });
  });
}
