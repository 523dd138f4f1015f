// Post-quantum readiness (CHAN-8): every listener offers the hybrid group X25519MLKEM768 first and still
// serves classical-only clients. Node gives a server no way to read the negotiated group, so each check
// is made from the client side (TLSSocket#getEphemeralKeyInfo), the SDK's included.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import tls from 'node:tls';
import { DeviceClient } from '@castellan/device';
import { loadConfig } from '../src/config/index.ts';
import { CastellanError } from '../src/errors/index.ts';
import { DEFAULT_TLS_GROUPS } from '../src/lib/tls-groups.ts';
import { provisionTenant, startTestPlatform, type TestPlatform } from './helpers/test-platform.ts';

interface Negotiated {
  protocol: string | null;
  type?: string;
  name?: string;
}

/** Handshakes with the listener on `port` and reports what the client saw negotiated. */
function negotiate(port: number, ca: string, options: tls.ConnectionOptions): Promise<Negotiated> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, ca, servername: 'localhost', ...options }, () => {
      const info = socket.getEphemeralKeyInfo() as { type?: string; name?: string };
      resolve({ protocol: socket.getProtocol(), type: info.type, name: info.name });
      socket.destroy();
    });
    socket.on('error', reject);
  });
}

function configError(groups: string): string {
  try {
    loadConfig({ env: {}, cwd: '/nonexistent', overrides: { tls: { groups } } });
  } catch (error) {
    assert.ok(error instanceof CastellanError);
    assert.equal(error.code, 'ERR_CONFIG_INVALID');
    return error.message;
  }
  assert.fail(`tls.groups ${JSON.stringify(groups)} was accepted`);
}

describe('TLS key-exchange groups on the listeners (CHAN-8)', () => {
  let tp: TestPlatform;
  before(async () => {
    tp = await startTestPlatform('sqlite');
  });
  after(() => tp?.close());

  const listeners = () =>
    [
      ['MQTT', tp.platform.mqttPort],
      ['HTTPS', tp.platform.httpPort],
    ] as const;

  test('[CHAN-8] the default group list offers the hybrid group first, then classical ones', () => {
    assert.equal(DEFAULT_TLS_GROUPS, 'X25519MLKEM768:X25519:P-256:P-384');
    assert.equal(loadConfig({ env: {}, cwd: '/nonexistent' }).tls.groups, DEFAULT_TLS_GROUPS);
  });

  test('[CHAN-8] a client offering X25519MLKEM768 first negotiates the hybrid group with MQTT and HTTPS', async () => {
    for (const [name, port] of listeners()) {
      const result = await negotiate(port, tp.platform.caPem, { ecdhCurve: 'X25519MLKEM768:X25519:P-256' });
      assert.deepEqual(result, { protocol: 'TLSv1.3', type: 'TLSGroup', name: 'X25519MLKEM768' }, name);
    }
  });

  test('[CHAN-8] a classical-only client is still served: X25519 or P-256 over TLS 1.3, P-256 over TLS 1.2', async () => {
    for (const [name, port] of listeners()) {
      assert.deepEqual(
        await negotiate(port, tp.platform.caPem, { ecdhCurve: 'X25519' }),
        { protocol: 'TLSv1.3', type: 'ECDH', name: 'X25519' },
        name,
      );
      assert.deepEqual(
        await negotiate(port, tp.platform.caPem, { ecdhCurve: 'P-256' }),
        { protocol: 'TLSv1.3', type: 'ECDH', name: 'prime256v1' },
        name,
      );
      // TLS 1.2 knows no hybrid group; an ECDSA P-256 certificate needs P-256 offered (RFC 8422 5.1).
      assert.deepEqual(
        await negotiate(port, tp.platform.caPem, { ecdhCurve: 'X25519MLKEM768:P-256', maxVersion: 'TLSv1.2' }),
        { protocol: 'TLSv1.2', type: 'ECDH', name: 'prime256v1' },
        name,
      );
    }
  });

  test('[CHAN-8] the SDK reads the group its connection negotiated (negotiatedGroup)', async () => {
    const tenant = await provisionTenant(tp, 1);
    const device = tenant.devices[0]!;
    const client = await DeviceClient.connect({
      url: `mqtts://127.0.0.1:${tp.platform.mqttPort}`,
      deviceId: device.id,
      secret: device.secret,
      ca: tp.platform.caPem,
      servername: 'localhost',
    });
    try {
      assert.equal(client.negotiatedGroup, 'X25519MLKEM768');
    } finally {
      await client.close();
    }
    assert.equal(client.negotiatedGroup, null);
  });

  test('[CHAN-8] a misconfigured group list is a configuration error naming tls.groups', () => {
    assert.equal(
      configError('X25519:bogus'),
      'Invalid configuration: tls.groups names an unknown group "bogus" (known: X25519MLKEM768, SecP256r1MLKEM768, SecP384r1MLKEM1024, X25519, X448, P-256, P-384, P-521)',
    );
    for (const list of ['', 'X25519::P-256', 'X25519:']) {
      assert.equal(
        configError(list),
        'Invalid configuration: tls.groups must be a non-empty, colon-separated list of groups',
        list,
      );
    }
    assert.equal(
      configError('X25519MLKEM768'),
      'Invalid configuration: tls.groups must keep a classical group (X25519, X448, P-256, P-384, P-521) for devices without ML-KEM',
    );
    assert.equal(configError('X25519:P-256:X25519'), 'Invalid configuration: tls.groups names X25519 twice');
  });

  test('[CHAN-8] start-up with a bad CASTELLAN_TLS_GROUPS stops before any listener opens', async () => {
    await assert.rejects(
      startTestPlatform('sqlite', { tls: { groups: 'X25519MLKEM768:secp256k1' } }),
      (error: CastellanError) => {
        assert.equal(error.code, 'ERR_CONFIG_INVALID');
        assert.match(error.message, /^Invalid configuration: tls\.groups names an unknown group "secp256k1"/);
        return true;
      },
    );
    assert.throws(
      () => loadConfig({ env: { CASTELLAN_TLS_GROUPS: 'P-256:X25519;' }, cwd: '/nonexistent' }),
      /^CastellanError: Invalid configuration: tls\.groups names an unknown group "X25519;"/,
    );
  });
});

describe('A configured group list reaches every listener (CHAN-8)', () => {
  let tp: TestPlatform;
  before(async () => {
    tp = await startTestPlatform('sqlite', { tls: { groups: 'P-256:X25519' } });
  });
  after(() => tp?.close());

  test('[CHAN-8] tls.groups without the hybrid group: a hybrid-first client falls back to the classical group', async () => {
    for (const port of [tp.platform.mqttPort, tp.platform.httpPort]) {
      const result = await negotiate(port, tp.platform.caPem, { ecdhCurve: 'X25519MLKEM768:X25519:P-256' });
      assert.equal(result.type, 'ECDH');
      // Server preference: P-256 first in tls.groups.
      assert.equal(result.name, 'prime256v1');
    }
  });
});
