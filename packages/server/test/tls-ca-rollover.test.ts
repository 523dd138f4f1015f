// Server CA rollover without bricking devices: devices pin the platform CA (DeviceClient `ca`); a device
// shipped with both pins (the current CA and its successor) keeps connecting when the platform moves to
// a certificate under the new CA, while a device pinning only the old CA is refused (docs: CA rollover).
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { DeviceClient, type DeviceConnectError } from '@castellan/device';
import { tlsServerOptions } from '../src/gateway/mqtt/mqtt-listener.ts';
import { provisionTenant, startTestPlatform, type Tenant, type TestPlatform } from './helpers/test-platform.ts';
import { makeServerChain, type ServerChain } from './helpers/tls-chains.ts';

describe('Server CA rollover with both pins shipped ahead of time', { timeout: 60_000 }, () => {
  let oldChain: ServerChain;
  let newChain: ServerChain;
  let dir: string;
  let tp: TestPlatform;
  let tenant: Tenant;
  before(async () => {
    oldChain = await makeServerChain('p256', 2, 'Old Platform');
    newChain = await makeServerChain('p256', 2, 'New Platform');
    dir = mkdtempSync(join(tmpdir(), 'castellan-rollover-'));
    writeFileSync(join(dir, 'server.crt'), oldChain.certPem);
    writeFileSync(join(dir, 'server.key'), oldChain.keyPem, { mode: 0o600 });
    writeFileSync(join(dir, 'ca.crt'), oldChain.rootPem);
    tp = await startTestPlatform('sqlite', {
      tls: { certFile: join(dir, 'server.crt'), keyFile: join(dir, 'server.key'), caFile: join(dir, 'ca.crt') },
    });
    tenant = await provisionTenant(tp, 2);
  });
  after(async () => {
    await tp?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const connect = (index: number, ca: string | string[]) =>
    DeviceClient.connect({
      url: `mqtts://127.0.0.1:${tp.platform.mqttPort}`,
      deviceId: tenant.devices[index]!.id,
      secret: tenant.devices[index]!.secret,
      ca,
      servername: 'localhost',
    });

  /** The platform serves a certificate under the new CA (as after replacing tls.certFile/keyFile). */
  const switchToNewCa = () =>
    tp.platform.mqttListener.server.setSecureContext(
      tlsServerOptions({ cert: newChain.certPem, key: newChain.keyPem, minVersion: 'TLSv1.2' }, 5000),
    );

  test('CA rollover: a device pinning [old, new] connects before and after the switch; one pinning only the old CA is refused after it', async () => {
    assert.equal(tp.platform.caPem, oldChain.rootPem);
    const both = [oldChain.rootPem, newChain.rootPem];
    // Before: both devices connect to the certificate under the old CA.
    for (const [index, ca] of [
      [0, both],
      [1, oldChain.rootPem],
    ] as const) {
      const client = await connect(index, ca);
      await client.publishTelemetry({ phase: 'before' });
      await client.close();
    }
    // A device that already holds only the new pin cannot reach the old platform (why both ship first).
    await assert.rejects(connect(1, newChain.rootPem), (error: DeviceConnectError) => {
      assert.equal(error.code, 'ERR_DEVICE_CONNECT');
      return true;
    });

    switchToNewCa();

    const rolled = await connect(0, both);
    try {
      await rolled.publishTelemetry({ phase: 'after' });
    } finally {
      await rolled.close();
    }
    await assert.rejects(connect(1, oldChain.rootPem), (error: DeviceConnectError) => {
      assert.equal(error.code, 'ERR_DEVICE_CONNECT');
      assert.match(error.message, /unable to verify the first certificate/);
      return true;
    });
  });
});
