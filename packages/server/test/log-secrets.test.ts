// SESS-5 / OPS-1: the secret and token values issued during a run never appear in its logs. The test
// collects the actual values (setup token, administrator and vendor tokens, device secrets, and the
// wrong secrets and tokens an attacker tried, and the device lifecycle's own: binding tokens, factory
// station tokens, rotated device secrets, webhook secrets, consumer passwords) and searches every
// captured log line for them.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { generateStationKeys, spkiPem } from '@castellan/device';
import { bindingToken, CONSUMER_PASSWORD, newConsumer, provisionWithToken } from './helpers/device-flows.ts';
import { connectDevice, endClient, mqttConnect, publishOutcome } from './helpers/mqtt-clients.ts';
import {
  provisionTenant,
  rawHttps,
  request,
  startTestPlatform,
  type Tenant,
  type TestPlatform,
} from './helpers/test-platform.ts';

describe('secrets stay out of logs', () => {
  let tp: TestPlatform;
  let tenant: Tenant;
  const secrets: string[] = [];

  before(async () => {
    // Most verbose level: whatever any component logs is searched.
    tp = await startTestPlatform('sqlite', { log: { level: 'trace' } });
    const setupToken = tp.platform.setupToken!;
    secrets.push(setupToken);
    tenant = await provisionTenant(tp, 2);
    secrets.push(tenant.adminToken, tenant.vendorToken.secret, ...tenant.devices.map((d) => d.secret));

    // Failures are where secrets leak most often: wrong setup token, forged bearer tokens, wrong device secrets.
    const wrongSetup = `${setupToken.slice(0, -4)}${setupToken.endsWith('AAAA') ? 'BBBB' : 'AAAA'}`;
    secrets.push(wrongSetup);
    await request(tp.platform, 'POST', '/v1/setup', { body: { setupToken: wrongSetup, adminName: 'x' } });
    const key = tenant.vendorToken;
    const forged = `${key.secret.slice(0, -4)}${key.secret.endsWith('BBBB') ? 'AAAA' : 'BBBB'}`;
    secrets.push(forged);
    await request(tp.platform, 'GET', '/v1/products', { token: forged });
    // A request signed with a wrong access-key secret, and the real secret sent as a bearer token.
    await request(tp.platform, 'GET', '/v1/products', { token: { id: key.id, secret: forged } });
    await request(tp.platform, 'GET', '/v1/products', { token: key.secret });
    await request(tp.platform, 'GET', `/v1/devices/not-an-id?token=${encodeURIComponent('x')}`, {
      token: tenant.vendorToken,
    });
    await request(tp.platform, 'POST', '/v1/products', {
      token: tenant.vendorToken,
      rawBody: `{"name": "${tenant.vendorToken.secret}"`,
    });
    // A request too broken to route, carrying a bearer token: the raw bytes must not be logged.
    await rawHttps(
      tp.platform,
      `GET /v1/products HTTP/1.1\r\nAuthorization: Bearer ${tenant.vendorToken.secret}\r\nBad Header\r\n\r\n`,
    );
    const d = tenant.devices[0]!;
    const wrongSecret = `${d.secret.slice(0, -4)}${d.secret.endsWith('CCCC') ? 'DDDD' : 'CCCC'}`;
    secrets.push(wrongSecret);
    await mqttConnect(tp.platform, { username: d.id, password: wrongSecret });
    await mqttConnect(tp.platform, {
      username: d.id,
      password: tenant.devices[1]!.secret,
      protocolVersion: 4,
    });
    const client = await connectDevice(tp.platform, d);
    await publishOutcome(client, `devices/${d.id}/telemetry`, JSON.stringify({ note: 'hello' }), 1);
    await publishOutcome(client, `devices/${tenant.devices[1]!.id}/telemetry`, '{"x":1}', 1);
    await endClient(client);

    // Issue 7: a consumer binds the second device with a one-time token (and a forged token is tried).
    const consumer = await newConsumer(tp, 'logs');
    secrets.push(CONSUMER_PASSWORD, consumer.userToken);
    const binding = await bindingToken(tp, consumer.userToken);
    secrets.push(binding.token);
    const forgedBinding = `${binding.token.slice(0, -4)}${binding.token.endsWith('EEEE') ? 'FFFF' : 'EEEE'}`;
    secrets.push(forgedBinding);
    await provisionWithToken(tp, tenant.devices[1]!, forgedBinding).catch(() => {});
    await provisionWithToken(tp, tenant.devices[1]!, binding.token);
    // A factory station's token (shown once), a webhook secret, a rotated device secret.
    const stationKeys = generateStationKeys();
    const station = await request(tp.platform, 'POST', `/v1/products/${tenant.productId}/factory-stations`, {
      token: tenant.vendorToken,
      body: {
        name: 'Line 1',
        encryptionPublicKey: spkiPem(stationKeys.encryption.publicKey),
        signingPublicKey: spkiPem(stationKeys.signing.publicKey),
      },
    });
    assert.equal(station.status, 201, station.text);
    secrets.push(station.body.token);
    await request(tp.platform, 'GET', '/v1/factory/batches/bat_AAAAAAAAAAAAAAAAAAAAAA', { token: station.body.token });
    const rotated = await request(tp.platform, 'POST', `/v1/devices/${d.id}/credentials/rotate`, {
      token: tenant.vendorToken,
      body: {},
    });
    assert.equal(rotated.status, 200, rotated.text);
    secrets.push(rotated.body.secret);
    await mqttConnect(tp.platform, { username: d.id, password: rotated.body.secret });
    await tp.platform.close(); // flush every last line
  });
  after(() => tp?.close());

  test('[SESS-5] [OPS-1] no issued or attempted secret or token value appears in any log line', () => {
    const text = tp.logs.text();
    // The search must have something to search: requests, MQTT failures and shutdown are all logged.
    assert.ok(tp.logs.lines.length > 20, `only ${tp.logs.lines.length} log lines`);
    assert.match(text, /incoming request/);
    assert.match(text, /device authentication failed/);
    assert.match(text, /castellan stopped/);
    assert.match(text, /unparsable request refused/);
    for (const secret of secrets) {
      assert.ok(typeof secret === 'string' && secret.length >= 16, 'every searched value is a real secret');
      assert.equal(text.includes(secret), false, 'a secret value was found in the logs');
      // Also a distinctive fragment, in case a value was truncated or wrapped.
      assert.equal(text.includes(secret.slice(-20)), false, 'a fragment of a secret was found in the logs');
    }
    for (const line of tp.logs.lines) JSON.parse(line); // structured: every line is JSON
  });

  test('[SESS-5] operator notices do not print the setup token when not on a terminal', () => {
    const notices = tp.notices.join('\n');
    assert.match(notices, /setup token was written to/);
    assert.equal(notices.includes(secrets[0]!), false);
  });

  test('[OPS-1] every HTTP log line carries a request ID', () => {
    const requests = tp.logs.lines.map((l) => JSON.parse(l)).filter((l) => l.msg === 'incoming request');
    assert.ok(requests.length > 5);
    for (const entry of requests) assert.match(entry.reqId, /^[0-9a-f-]{36}$/);
  });
});
