// Device flows through the real API for tests: a consumer signs up, gets a binding token, the app seals
// it into the provisioning payload, the simulated device (SDK) opens it and binds over the device API;
// sharing a bound device with a second consumer; a device connected through the SDK.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  DeviceClient,
  DeviceProvisioningSimulator,
  deviceApiActivator,
  type DeviceBindResult,
  sealProvisioningPayload,
} from '@castellan/device';
import { latestCode, register, signIn } from './account-flows.ts';
import { request, type TestPlatform } from './test-platform.ts';

export const CONSUMER_PASSWORD = 'violet kettle marching 1848 lantern';

/** A signed-in consumer. */
export interface Consumer {
  userToken: string;
  userId: string;
  identifier: string;
  password: string;
}

let consumers = 0;

/**
 * Registers, activates and signs in a fresh consumer (unique e-mail address). Each one registers from
 * its own loopback address (127.91.x.y), so tests that need many people stay under the per-address
 * registration limit (accounts.registrationsPerIpPerHour).
 */
export async function newConsumer(tp: TestPlatform, label = 'consumer'): Promise<Consumer> {
  const identifier = `${label}-${randomBytes(5).toString('hex')}@example.test`;
  const n = consumers++ % 65_000;
  const localAddress = `127.91.${n >> 8}.${(n & 255) + 1}`;
  const registered = await register(
    tp,
    { identifier, password: CONSUMER_PASSWORD, kind: 'consumer' },
    { localAddress },
  );
  assert.equal(registered.status, 202, registered.text);
  const code = await latestCode(tp, identifier, 'activation');
  const activated = await request(tp.platform, 'POST', '/v1/auth/activate', {
    localAddress,
    body: { identifier, code, password: CONSUMER_PASSWORD },
  });
  assert.equal(activated.status, 200, activated.text);
  const userToken = await signIn(tp, identifier, CONSUMER_PASSWORD);
  const me = await request(tp.platform, 'GET', '/v1/me', { token: userToken });
  assert.equal(me.status, 200, me.text);
  return { userToken, userId: me.body.id as string, identifier, password: CONSUMER_PASSWORD };
}

/** A binding token for the signed-in user (POST /v1/binding-tokens). */
export async function bindingToken(tp: TestPlatform, userToken: string): Promise<{ id: string; token: string }> {
  const res = await request(tp.platform, 'POST', '/v1/binding-tokens', { token: userToken });
  assert.equal(res.status, 201, res.text);
  return { id: res.body.id as string, token: res.body.token as string };
}

/** The simulated device (SDK) for `device`, activating against this platform. */
export function deviceSimulator(tp: TestPlatform, device: { id: string; secret: string }): DeviceProvisioningSimulator {
  return new DeviceProvisioningSimulator({
    deviceId: device.id,
    activator: deviceApiActivator({ deviceId: device.id, secret: device.secret, ca: tp.platform.caPem }),
  });
}

/**
 * The app's side of pairing: the device enters SoftAP mode, the app seals {Wi-Fi, token, platform URL}
 * to the device's provisioning key, the device decrypts and presents the token. Rejects with the SDK's
 * DeviceApiError when the platform refuses.
 */
export async function provisionWithToken(
  tp: TestPlatform,
  device: { id: string; secret: string },
  token: string,
): Promise<DeviceBindResult> {
  const simulator = deviceSimulator(tp, device);
  const advertised = simulator.enterPairingMode('softap');
  const envelope = sealProvisioningPayload(device.id, advertised.publicKey, {
    ssid: 'home-network',
    wifiPassword: 'wifi password 123',
    bindingToken: token,
    region: 'eu',
    platformUrl: tp.platform.httpUrl,
  });
  return simulator.provision(envelope);
}

/**
 * Binds `device` to a consumer through the real flow (token → encrypted provisioning payload → device
 * presents it). Without `user`, a fresh consumer signs up; with one, that consumer gets the device.
 */
export async function bindDevice(
  tp: TestPlatform,
  device: { id: string; secret: string },
  user?: Pick<Consumer, 'userToken' | 'userId'>,
): Promise<{ userToken: string; userId: string }> {
  const owner = user ?? (await newConsumer(tp, 'owner'));
  const { id, token } = await bindingToken(tp, owner.userToken);
  const result = await provisionWithToken(tp, device, token);
  assert.equal(typeof result.boundAt, 'number');
  const status = await request(tp.platform, 'GET', `/v1/binding-tokens/${id}`, { token: owner.userToken });
  assert.equal(status.status, 200, status.text);
  assert.equal(status.body.status, 'bound');
  assert.equal(status.body.deviceId, device.id);
  return { userToken: owner.userToken, userId: owner.userId };
}

/**
 * Shares a bound device with a fresh second consumer (by e-mail) in `role`; returns that consumer.
 * `ownerToken` must belong to the owner (or an admin for member/guest) and be freshly signed in
 * (sharing needs a recent authentication).
 */
export async function shareDevice(
  tp: TestPlatform,
  ownerToken: string,
  deviceId: string,
  role: 'admin' | 'member' | 'guest',
  options: { expiresAt?: number; to?: Consumer } = {},
): Promise<{ userToken: string; userId: string; shareId: string }> {
  const invitee = options.to ?? (await newConsumer(tp, role));
  const res = await request(tp.platform, 'POST', `/v1/devices/${deviceId}/shares`, {
    token: ownerToken,
    body: {
      email: invitee.identifier,
      role,
      ...(options.expiresAt !== undefined ? { expiresAt: options.expiresAt } : {}),
    },
  });
  assert.equal(res.status, 201, res.text);
  assert.equal(res.body.userId, invitee.userId);
  return { userToken: invitee.userToken, userId: invitee.userId, shareId: res.body.id as string };
}

/**
 * A device connected through the SDK (MQTT over TLS, the platform CA pinned) with its own secret;
 * `opened` collects the client so the test's `after` can close it.
 */
export async function sdkDevice(
  tp: TestPlatform,
  device: { id: string; secret: string },
  opened: DeviceClient[],
  protocolVersion: 4 | 5 = 5,
): Promise<DeviceClient> {
  const client = await DeviceClient.connect({
    url: tp.platform.mqttUrl,
    deviceId: device.id,
    secret: device.secret,
    ca: tp.platform.caPem,
    servername: 'localhost',
    protocolVersion,
  });
  opened.push(client);
  return client;
}
