// Binding (BIND-1) and unbinding (BIND-5) end to end through the device SDK on both databases: the app
// seals the binding token into the encrypted provisioning payload, the simulated device opens it and
// presents the token over the device API; refusals for a token used twice, by another user, after its
// TTL; one owner at a time; unbinding wipes and can be retried; factory reset clears the binding.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  DeviceApiError,
  DeviceClient,
  DeviceProvisioningSimulator,
  generateProvisioningKeyPair,
  openProvisioningPayload,
  type ProvisioningPayload,
  sealProvisioningPayload,
} from '@castellan/device';
import type { DeviceChange } from '../../src/devices/index.ts';
import { dialectCases } from '../helpers/dialects.ts';
import {
  bindDevice,
  bindingToken,
  deviceSimulator,
  newConsumer,
  provisionWithToken,
  shareDevice,
} from '../helpers/device-flows.ts';
import {
  provisionTenant,
  request,
  startTestPlatform,
  type Tenant,
  type TestPlatform,
} from '../helpers/test-platform.ts';

const DEVICE_ID = '01a1b2c3d4e5f6aabbccdd00';
const PAYLOAD: ProvisioningPayload = {
  ssid: 'home-network',
  wifiPassword: 'correct horse 42',
  bindingToken: 'bnd_AAAAAAAAAAAAAAAAAAAAAA',
  region: 'eu',
  platformUrl: 'https://castellan.example:8443',
};
const INVALID_TOKEN = 'The binding token is invalid, expired or already used';
const ALREADY_BOUND = 'The device is bound to another user; it must be unbound or reset first';
const TTL_SECONDS = 2;

/** The platform's refusal as the device SDK sees it. */
async function refusal(promise: Promise<unknown>): Promise<{ code: string; message: string; status: number }> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof DeviceApiError, String(error));
    return { code: error.code, message: error.message, status: error.status };
  }
  assert.fail('expected the platform to refuse');
}

describe('provisioning payload (SDK)', () => {
  test('[BIND-1] the payload opens only on the device it was sealed for, in its pairing session, untampered', () => {
    const keys = generateProvisioningKeyPair();
    const envelope = sealProvisioningPayload(DEVICE_ID, keys.publicKey, PAYLOAD);
    assert.deepEqual(openProvisioningPayload(DEVICE_ID, keys, envelope), PAYLOAD);
    // Nothing of the payload shows in the envelope.
    for (const secret of [PAYLOAD.wifiPassword, PAYLOAD.bindingToken, PAYLOAD.ssid]) {
      assert.equal(envelope.includes(Buffer.from(secret)), false);
    }
    // Fresh app key and nonce every time.
    const again = sealProvisioningPayload(DEVICE_ID, keys.publicKey, PAYLOAD);
    assert.notDeepEqual(again.subarray(1, 78), envelope.subarray(1, 78));
    // Every single flipped bit fails (version, app key, nonce, ciphertext, tag).
    for (let i = 0; i < envelope.length; i++) {
      const tampered = Buffer.from(envelope);
      tampered[i]! ^= 1 << (i % 8);
      assert.throws(
        () => openProvisioningPayload(DEVICE_ID, keys, tampered),
        (e: Error & { code?: string }) =>
          e.code === 'ERR_PROVISIONING_PAYLOAD_INVALID' || e.code === 'ERR_PROVISIONING_KEY_INVALID',
        `byte ${i}`,
      );
    }
    // Truncated, or for another device (AAD), or another session's key: refused.
    assert.throws(() => openProvisioningPayload(DEVICE_ID, keys, envelope.subarray(0, envelope.length - 1)), {
      code: 'ERR_PROVISIONING_PAYLOAD_INVALID',
    });
    assert.throws(() => openProvisioningPayload('01a1b2c3d4e5f6aabbccdd01', keys, envelope), {
      code: 'ERR_PROVISIONING_PAYLOAD_INVALID',
      message: 'the payload does not authenticate',
    });
    assert.throws(() => openProvisioningPayload(DEVICE_ID, generateProvisioningKeyPair(), envelope), {
      code: 'ERR_PROVISIONING_PAYLOAD_INVALID',
    });
    // A public key that is not a point on P-256 is refused before any use.
    const offCurve = Buffer.alloc(65, 7);
    offCurve[0] = 4;
    assert.throws(() => sealProvisioningPayload(DEVICE_ID, offCurve, PAYLOAD), {
      code: 'ERR_PROVISIONING_KEY_INVALID',
    });
    assert.throws(() => sealProvisioningPayload(DEVICE_ID, keys.publicKey, { ...PAYLOAD, platformUrl: 'http://x' }), {
      code: 'ERR_PROVISIONING_PAYLOAD_INVALID',
      message: 'platformUrl must be an https:// URL',
    });
  });

  test('[BIND-1] the simulator leaves pairing mode after one good payload: a replay does not open', async () => {
    const tokens: string[] = [];
    const simulator = new DeviceProvisioningSimulator({
      deviceId: DEVICE_ID,
      activator: {
        async bind(_url, token) {
          tokens.push(token);
          return { boundAt: 1, alreadyBound: false };
        },
      },
    });
    assert.throws(() => simulator.receive(Buffer.alloc(200)), { code: 'ERR_PROVISIONING_NOT_PAIRING' });
    const advertised = simulator.enterPairingMode('ble');
    assert.equal(advertised.mode, 'ble');
    assert.equal(Buffer.from(advertised.publicKey, 'base64url').length, 65);
    const envelope = sealProvisioningPayload(DEVICE_ID, advertised.publicKey, PAYLOAD);
    const tampered = Buffer.from(envelope);
    tampered[tampered.length - 1]! ^= 0x80;
    assert.throws(() => simulator.receive(tampered), { code: 'ERR_PROVISIONING_PAYLOAD_INVALID' });
    assert.equal(simulator.pairing, true, 'a forged payload does not end pairing');
    assert.deepEqual(await simulator.provision(envelope), { boundAt: 1, alreadyBound: false });
    assert.deepEqual(tokens, [PAYLOAD.bindingToken]);
    assert.equal(simulator.pairing, false);
    assert.deepEqual(simulator.network, {
      ssid: PAYLOAD.ssid,
      region: PAYLOAD.region,
      platformUrl: PAYLOAD.platformUrl,
    });
    assert.throws(() => simulator.receive(envelope), { code: 'ERR_PROVISIONING_NOT_PAIRING' });
    // A new session has a new key: the recorded envelope does not open there either.
    simulator.enterPairingMode();
    assert.throws(() => simulator.receive(envelope), { code: 'ERR_PROVISIONING_PAYLOAD_INVALID' });
  });
});

for (const dialect of await dialectCases()) {
  describe(`binding on ${dialect.name}`, { skip: dialect.skip }, () => {
    let tp: TestPlatform;
    let tenant: Tenant;
    let spare: Tenant['devices'];

    before(async () => {
      tp = await startTestPlatform(dialect.name, {
        devices: { bindingTokenTtlSeconds: TTL_SECONDS, bindingTokensPerUser: 3 },
      });
      tenant = await provisionTenant(tp, 12);
      spare = [...tenant.devices];
    });
    after(() => tp?.close());

    const nextDevice = () => {
      const device = spare.shift();
      assert.ok(device, 'enough test devices');
      return device;
    };
    const ownerRow = async (deviceId: string) =>
      (await tp.query<{ user_id: string }>('select user_id from device_bindings where device_id = $1', [deviceId]))[0]
        ?.user_id ?? null;
    const auditRows = async (type: string, target: string) => {
      await tp.platform.audit.flush();
      return tp.query<{ result: string; details: string; actor_type: string }>(
        'select result, details, actor_type from audit_entries where event_type = $1 and target = $2 order by seq',
        [type, target],
      );
    };

    test('[BIND-1] a consumer binds a device through the SDK: token → sealed payload → device presents it', async () => {
      const device = nextDevice();
      const alice = await newConsumer(tp, 'alice');
      const changes: DeviceChange[] = [];
      const listen = (c: DeviceChange) => changes.push(c);
      tp.platform.deviceEvents.on('change', listen);
      const issued = await request(tp.platform, 'POST', '/v1/binding-tokens', { token: alice.userToken });
      assert.equal(issued.status, 201, issued.text);
      const token = issued.body.token as string;
      assert.match(token, /^bnd_[A-Za-z0-9_-]{22}$/, '128 random bits, 26 characters: fits a BLE payload');
      assert.ok(issued.body.expiresAt > Date.now() && issued.body.expiresAt <= Date.now() + TTL_SECONDS * 1000);
      const pending = await request(tp.platform, 'GET', `/v1/binding-tokens/${issued.body.id}`, {
        token: alice.userToken,
      });
      assert.equal(pending.body.status, 'pending');
      assert.equal(pending.body.deviceId, null);
      // Stored hashed only.
      const stored = await tp.query<{ token_hash: Uint8Array }>('select token_hash from binding_tokens where id = $1', [
        issued.body.id,
      ]);
      assert.equal(Buffer.from(stored[0]!.token_hash).length, 32);
      assert.equal(Buffer.from(stored[0]!.token_hash).includes(Buffer.from(token)), false);

      const result = await provisionWithToken(tp, device, token);
      tp.platform.deviceEvents.off('change', listen);
      assert.equal(result.alreadyBound, false);
      assert.equal(await ownerRow(device.id), alice.userId);
      const bound = await request(tp.platform, 'GET', `/v1/binding-tokens/${issued.body.id}`, {
        token: alice.userToken,
      });
      assert.equal(bound.body.status, 'bound');
      assert.equal(bound.body.deviceId, device.id);
      const mine = await request(tp.platform, 'GET', '/v1/me/devices', { token: alice.userToken });
      assert.equal(mine.status, 200, mine.text);
      assert.deepEqual(
        mine.body.items.map((d: { id: string; role: string }) => [d.id, d.role]),
        [[device.id, 'owner']],
      );
      const read = await request(tp.platform, 'GET', `/v1/devices/${device.id}`, { token: alice.userToken });
      assert.equal(read.status, 200, read.text);
      assert.equal(read.body.id, device.id);
      assert.ok(changes.some((c) => c.kind === 'binding.bound' && c.deviceId === device.id));
      const audited = await auditRows('device.bind', device.id);
      assert.equal(audited.at(-1)?.result, 'success');
      assert.equal(audited.at(-1)?.actor_type, 'device');
      assert.equal(JSON.stringify(audited).includes(token), false, 'the token never reaches the audit log');
      assert.equal(tp.logs.text().includes(token), false, 'nor the log');
    });

    test('[BIND-1] a binding token used twice is refused, and the second device stays unbound', async () => {
      const [first, second] = [nextDevice(), nextDevice()];
      const bob = await newConsumer(tp, 'bob');
      const { token } = await bindingToken(tp, bob.userToken);
      await provisionWithToken(tp, first, token);
      const refused = await refusal(provisionWithToken(tp, second, token));
      assert.deepEqual(refused, { code: 'ERR_BINDING_TOKEN_INVALID', message: INVALID_TOKEN, status: 400 });
      assert.equal(await ownerRow(second.id), null);
      // Even the same device cannot replay it (the binding stays, nothing new happens).
      const replay = await refusal(provisionWithToken(tp, first, token));
      assert.equal(replay.code, 'ERR_BINDING_TOKEN_INVALID');
      const audited = await auditRows('device.bind', second.id);
      assert.equal(audited.at(-1)?.result, 'denied');
      assert.equal(JSON.parse(audited.at(-1)!.details).reason, 'used');
      // Unknown and malformed tokens get the same answer.
      for (const bad of ['bnd_AAAAAAAAAAAAAAAAAAAAAA', 'not-a-binding-token', `${token}A`]) {
        const other = await refusal(provisionWithToken(tp, second, bad));
        assert.deepEqual(other, { code: 'ERR_BINDING_TOKEN_INVALID', message: INVALID_TOKEN, status: 400 });
      }
    });

    test('[BIND-1] a token binds only for its issuer: another user can neither read, cancel nor bind with it', async () => {
      const [devA, devB] = [nextDevice(), nextDevice()];
      const carol = await newConsumer(tp, 'carol');
      const mallory = await newConsumer(tp, 'mallory');
      const issued = await bindingToken(tp, carol.userToken);
      // Mallory knows the token's ID: reading or cancelling it looks like a missing token (audited).
      for (const method of ['GET', 'DELETE'] as const) {
        const res = await request(tp.platform, method, `/v1/binding-tokens/${issued.id}`, { token: mallory.userToken });
        assert.equal(res.status, 404, res.text);
        assert.equal(res.body.error.code, 'ERR_BINDING_TOKEN_NOT_FOUND');
        assert.equal(res.body.error.message, 'Binding token not found');
      }
      const denied = await auditRows('binding-token.read', issued.id);
      assert.equal(denied.at(-1)?.result, 'denied');
      // Mallory's own device presented with Carol's (leaked) token: the binding goes to Carol, never
      // to Mallory, who gains no access at all.
      await provisionWithToken(tp, devB, issued.token);
      assert.equal(await ownerRow(devB.id), carol.userId);
      const malloryDevices = await request(tp.platform, 'GET', '/v1/me/devices', { token: mallory.userToken });
      assert.deepEqual(malloryDevices.body.items, []);
      const read = await request(tp.platform, 'GET', `/v1/devices/${devB.id}`, { token: mallory.userToken });
      assert.equal(read.status, 404);
      assert.equal(read.body.error.code, 'ERR_DEVICE_NOT_FOUND');
      // And once used, Mallory cannot use it again for her own device either.
      const again = await refusal(provisionWithToken(tp, devA, issued.token));
      assert.equal(again.code, 'ERR_BINDING_TOKEN_INVALID');
      assert.equal(await ownerRow(devA.id), null);
    });

    test('[BIND-1] a token used after its TTL is refused; outstanding tokens are limited per user', async () => {
      const device = nextDevice();
      const dave = await newConsumer(tp, 'dave');
      const issued = await bindingToken(tp, dave.userToken);
      await sleep(TTL_SECONDS * 1000 + 200);
      const refused = await refusal(provisionWithToken(tp, device, issued.token));
      assert.deepEqual(refused, { code: 'ERR_BINDING_TOKEN_INVALID', message: INVALID_TOKEN, status: 400 });
      assert.equal(await ownerRow(device.id), null);
      const status = await request(tp.platform, 'GET', `/v1/binding-tokens/${issued.id}`, { token: dave.userToken });
      assert.equal(status.body.status, 'expired');
      const audited = await auditRows('device.bind', device.id);
      assert.equal(JSON.parse(audited.at(-1)!.details).reason, 'expired');

      const held = [];
      for (let i = 0; i < 3; i++) held.push(await bindingToken(tp, dave.userToken));
      const limited = await request(tp.platform, 'POST', '/v1/binding-tokens', { token: dave.userToken });
      assert.equal(limited.status, 429);
      assert.equal(limited.body.error.code, 'ERR_BINDING_TOKEN_LIMIT');
      const cancelled = await request(tp.platform, 'DELETE', `/v1/binding-tokens/${held[0]!.id}`, {
        token: dave.userToken,
      });
      assert.equal(cancelled.status, 204);
      const cancelledUse = await refusal(provisionWithToken(tp, device, held[0]!.token));
      assert.equal(cancelledUse.code, 'ERR_BINDING_TOKEN_INVALID');
      assert.equal((await request(tp.platform, 'POST', '/v1/binding-tokens', { token: dave.userToken })).status, 201);
    });

    test('[BIND-1] only signed-in people get binding tokens', async () => {
      assert.equal((await request(tp.platform, 'POST', '/v1/binding-tokens')).status, 401);
      for (const token of [tenant.vendorToken, tenant.adminToken]) {
        const res = await request(tp.platform, 'POST', '/v1/binding-tokens', { token });
        assert.equal(res.status, 403, res.text);
        assert.equal(res.body.error.code, 'ERR_AUTH_FORBIDDEN');
      }
    });

    test('[BIND-5] a bound device cannot be bound by another user until unbound; then the new user can', async () => {
      const device = nextDevice();
      const erin = await bindDevice(tp, device);
      const frank = await newConsumer(tp, 'frank');
      const franks = await bindingToken(tp, frank.userToken);
      const refused = await refusal(provisionWithToken(tp, device, franks.token));
      assert.deepEqual(refused, { code: 'ERR_DEVICE_ALREADY_BOUND', message: ALREADY_BOUND, status: 409 });
      assert.equal(await ownerRow(device.id), erin.userId);
      const stillPending = await request(tp.platform, 'GET', `/v1/binding-tokens/${franks.id}`, {
        token: frank.userToken,
      });
      assert.equal(stillPending.body.status, 'pending', 'the refused token is not spent');
      const audited = await auditRows('device.bind', device.id);
      assert.equal(JSON.parse(audited.at(-1)!.details).reason, 'bound-to-another-user');
      // The owner re-provisioning (new Wi-Fi) keeps the binding.
      const again = await bindingToken(tp, erin.userToken);
      assert.equal((await provisionWithToken(tp, device, again.token)).alreadyBound, true);
      // Frank cannot unbind someone else's device.
      const notHis = await request(tp.platform, 'DELETE', `/v1/devices/${device.id}/binding`, {
        token: frank.userToken,
      });
      assert.equal(notHis.status, 404);
      assert.equal(await ownerRow(device.id), erin.userId);

      const unbound = await request(tp.platform, 'DELETE', `/v1/devices/${device.id}/binding`, {
        token: erin.userToken,
      });
      assert.equal(unbound.status, 200, unbound.text);
      assert.deepEqual(unbound.body, { unbound: true });
      const fresh = await bindingToken(tp, frank.userToken);
      assert.equal((await provisionWithToken(tp, device, fresh.token)).alreadyBound, false);
      assert.equal(await ownerRow(device.id), frank.userId);
      const lost = await request(tp.platform, 'GET', `/v1/devices/${device.id}`, { token: erin.userToken });
      assert.equal(lost.status, 404);
    });

    test('[BIND-5] unbinding runs every wiper first, deletes shares and tokens, audits and emits; a failing wiper keeps everything for a retry', async () => {
      const device = nextDevice();
      const owner = await bindDevice(tp, device);
      const guest = await shareDevice(tp, owner.userToken, device.id, 'guest');
      // Data held for the owner: telemetry and reported state from the device (SDK), desired state.
      const client = await DeviceClient.connect({
        url: tp.platform.mqttUrl,
        deviceId: device.id,
        secret: device.secret,
        ca: tp.platform.caPem,
      });
      try {
        await client.publishTelemetry({ temperature: 21.5 });
        await client.reportState({ power: 'off' });
      } finally {
        await client.close();
      }
      const desired = await request(tp.platform, 'PUT', `/v1/devices/${device.id}/shadow/desired`, {
        token: owner.userToken,
        body: { state: { power: 'on' } },
      });
      assert.equal(desired.status, 200, desired.text);
      const held = async () => {
        const counts: Record<string, number> = {};
        for (const table of ['telemetry', 'device_shadows', 'device_shares', 'device_bindings']) {
          const rows = await tp.query(`select 1 from ${table} where device_id = $1`, [device.id]);
          counts[table] = rows.length;
        }
        return counts;
      };
      for (let i = 0; i < 50 && (await held()).telemetry === 0; i++) await sleep(20);
      const before = await held();
      assert.ok((before.telemetry ?? 0) > 0 && (before.device_shadows ?? 0) > 0, JSON.stringify(before));
      let failNext = true;
      const wiped: Array<[string, string]> = [];
      tp.platform.deviceAccess.onUnbind(async (deviceId, previousOwner) => {
        if (deviceId !== device.id) return;
        if (failNext) {
          failNext = false;
          throw new Error('storage hiccup');
        }
        wiped.push([deviceId, previousOwner]);
      });
      const failed = await request(tp.platform, 'DELETE', `/v1/devices/${device.id}/binding`, {
        token: owner.userToken,
      });
      assert.equal(failed.status, 503, failed.text);
      assert.equal(failed.body.error.code, 'ERR_DEVICE_UNBIND_FAILED');
      assert.equal(await ownerRow(device.id), owner.userId, 'nothing unbound');
      const shares = () => tp.query('select id from device_shares where device_id = $1', [device.id]);
      assert.equal((await shares()).length, 1);
      assert.equal((await auditRows('device.unbind', device.id)).at(-1)?.result, 'failure');

      const changes: DeviceChange[] = [];
      const listen = (c: DeviceChange) => changes.push(c);
      tp.platform.deviceEvents.on('change', listen);
      const retried = await request(tp.platform, 'DELETE', `/v1/devices/${device.id}/binding`, {
        token: owner.userToken,
      });
      tp.platform.deviceEvents.off('change', listen);
      assert.equal(retried.status, 200, retried.text);
      assert.deepEqual(wiped, [[device.id, owner.userId]]);
      assert.deepEqual(await held(), { telemetry: 0, device_shadows: 0, device_shares: 0, device_bindings: 0 });
      assert.equal(
        (await tp.query('select id from binding_tokens where device_id = $1', [device.id])).length,
        0,
        'the tokens naming the previous owner are gone',
      );
      const audited = await auditRows('device.unbind', device.id);
      assert.equal(audited.at(-1)?.result, 'success');
      assert.equal(JSON.parse(audited.at(-1)!.details).previousOwner, owner.userId);
      assert.ok(changes.some((c) => c.kind === 'binding.unbound' && c.deviceId === device.id));
      for (const token of [owner.userToken, guest.userToken]) {
        assert.equal((await request(tp.platform, 'GET', `/v1/devices/${device.id}`, { token })).status, 404);
      }
      // Unbinding an unbound device: nobody owns it, so it is simply not found for everyone.
      const twice = await request(tp.platform, 'DELETE', `/v1/devices/${device.id}/binding`, {
        token: owner.userToken,
      });
      assert.equal(twice.status, 404);
    });

    test('[BIND-5] a factory reset reported by the device clears the binding; a new user can bind', async () => {
      const device = nextDevice();
      const owner = await bindDevice(tp, device);
      const simulator = deviceSimulator(tp, device);
      assert.deepEqual(await simulator.factoryReset(tp.platform.httpUrl), { unbound: true });
      assert.equal(await ownerRow(device.id), null);
      assert.equal(
        (await request(tp.platform, 'GET', `/v1/devices/${device.id}`, { token: owner.userToken })).status,
        404,
      );
      const audited = await auditRows('device.unbind', device.id);
      assert.equal(JSON.parse(audited.at(-1)!.details).reason, 'factory-reset');
      assert.equal(audited.at(-1)?.actor_type, 'device');
      assert.deepEqual(await simulator.factoryReset(tp.platform.httpUrl), { unbound: false });
      const next = await bindDevice(tp, device);
      assert.equal(await ownerRow(device.id), next.userId);
    });
  });
}
