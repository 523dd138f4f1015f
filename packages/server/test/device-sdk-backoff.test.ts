// The device SDK's reconnect behaviour (issue 6): with `reconnect` it retries a refused or failed
// connect and re-establishes a lost connection, never sooner than the platform's `retry-after`, and
// otherwise with exponential backoff and full jitter; refusals that will not change (credentials,
// bans) are not retried. The server is the real MQTT over TLS listener with scripted hooks and a
// one-second `retry-after`, so the waits stay short.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { DeviceClient, type DeviceConnectError, reconnectDelayMs } from '@castellan/device';
import type { AuthenticateResult, BrokerHooks } from '../src/gateway/mqtt/index.ts';
import { MqttBroker } from '../src/gateway/mqtt/mqtt-broker.ts';
import { type MqttListener, startMqttListener } from '../src/gateway/mqtt/mqtt-listener.ts';
import { ReasonCode } from '../src/gateway/mqtt/reason-codes.ts';
import { generateDevPki, type TlsMaterial } from '../src/keys/index.ts';
import { createLogger } from '../src/logging/index.ts';
import { defaultLimits, openHooks } from './helpers/mqtt-core.ts';

const DEVICE = '01aaaaaaaaaaaaaaaaaaaaaa';
const SECRET = 's'.repeat(40);
const RETRY_AFTER_MS = 1000;

describe('[RATE-1] device SDK backoff against the MQTT over TLS listener', () => {
  let dir: string;
  let pki: TlsMaterial;
  let broker: MqttBroker;
  let listener: MqttListener;
  /** What the next CONNECTs are answered with (then: accepted); each CONNECT's arrival time. */
  let script: Array<Extract<AuthenticateResult, { ok: false }>['reason']> = [];
  const arrivals: number[] = [];

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'castellan-sdk-backoff-'));
    pki = await generateDevPki(join(dir, 'pki'));
    const open = openHooks();
    const hooks: BrokerHooks = {
      ...open,
      async authenticate(request) {
        arrivals.push(Date.now());
        const reason = script.shift();
        return reason ? { ok: false, reason } : open.authenticate(request);
      },
    };
    broker = new MqttBroker({ hooks, limits: defaultLimits, log: createLogger({ level: 'silent' }) });
    listener = await startMqttListener(
      broker,
      {
        cert: pki.cert,
        key: pki.key,
        minVersion: 'TLSv1.2',
        host: '127.0.0.1',
        port: 0,
        maxConnections: 100,
        admission: { retryAfterMinSeconds: 1, retryAfterMaxSeconds: 1 },
      },
      createLogger({ level: 'silent' }),
    );
  });
  after(async () => {
    await listener?.close();
    await broker?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const options = (extra: Partial<Parameters<typeof DeviceClient.connect>[0]> = {}) => ({
    url: `mqtts://127.0.0.1:${listener.address().port}`,
    deviceId: DEVICE,
    secret: SECRET,
    ca: pki.ca,
    servername: 'localhost',
    ...extra,
  });

  test('[RATE-1] without `reconnect`, a 0x9F refusal rejects at once and says what the server advised', async () => {
    script = ['rate-limited'];
    arrivals.length = 0;
    await assert.rejects(DeviceClient.connect(options()), (error: DeviceConnectError) => {
      assert.equal(error.code, 'MQTT_CONNACK_159');
      assert.equal(error.retryAfterMs, RETRY_AFTER_MS);
      assert.equal(error.retryable, true);
      return true;
    });
    assert.equal(arrivals.length, 1);
  });

  test('[RATE-1] a refused connect is retried no sooner than retry-after, though the backoff alone is far shorter', async () => {
    script = ['rate-limited'];
    arrivals.length = 0;
    const client = await DeviceClient.connect(options({ reconnect: { initialDelayMs: 10, maxDelayMs: 20 } }));
    try {
      assert.equal(arrivals.length, 2);
      assert.ok(arrivals[1]! - arrivals[0]! >= RETRY_AFTER_MS, `waited ${arrivals[1]! - arrivals[0]!} ms`);
      assert.equal(client.mqtt.connected, true);
    } finally {
      await client.close();
    }
  });

  test('[RATE-1] a lost connection is re-established, waiting out a server-busy refusal on the way', async () => {
    script = [];
    arrivals.length = 0;
    const client = await DeviceClient.connect(options({ reconnect: { initialDelayMs: 10, maxDelayMs: 20 } }));
    try {
      script = ['server-busy'];
      // Not events.once: that would reject on the refusal's 'error' event, which the SDK rides out.
      const reconnected = new Promise((resolve) => client.mqtt.once('connect', resolve));
      assert.equal(broker.disconnectClient(DEVICE, ReasonCode.ServerShuttingDown), true);
      await reconnected;
      // The first CONNECT, the refused one right after the loss, then the one after retry-after.
      assert.equal(arrivals.length, 3);
      assert.ok(arrivals[2]! - arrivals[1]! >= RETRY_AFTER_MS, `waited ${arrivals[2]! - arrivals[1]!} ms`);
      assert.equal(broker.isConnected(DEVICE), true);
    } finally {
      await client.close();
    }
  });

  test('[RATE-1] a refusal that will not change is not retried; a lost connection then gives up once', async () => {
    script = ['bad-credentials'];
    arrivals.length = 0;
    await assert.rejects(DeviceClient.connect(options({ reconnect: true })), {
      code: 'MQTT_CONNACK_134',
      retryable: false,
    });
    assert.equal(arrivals.length, 1);

    script = [];
    let gaveUp: DeviceConnectError | undefined;
    const client = await DeviceClient.connect(
      options({ reconnect: { initialDelayMs: 10, onGiveUp: (error) => (gaveUp = error) } }),
    );
    script = ['banned'];
    broker.disconnectClient(DEVICE, ReasonCode.AdministrativeAction);
    for (let i = 0; i < 200 && !gaveUp; i++) await new Promise((resolve) => setTimeout(resolve, 10));
    assert.equal(gaveUp?.code, 'MQTT_CONNACK_138');
    assert.equal(client.mqtt.connected, false);
    await client.close();
  });
});

describe('[RATE-1] the SDK backoff schedule', () => {
  test('[RATE-1] full jitter under a doubling ceiling, capped, and never below retry-after', () => {
    const opts = { initialDelayMs: 100, maxDelayMs: 1000 };
    const top = () => 0.999999;
    assert.deepEqual(
      [1, 2, 3, 4, 5, 6].map((n) => reconnectDelayMs(n, null, opts, top)),
      [99, 199, 399, 799, 999, 999],
    );
    // Full jitter: anywhere from 0 up to the ceiling.
    assert.equal(
      reconnectDelayMs(4, null, opts, () => 0),
      0,
    );
    assert.equal(
      reconnectDelayMs(4, null, opts, () => 0.5),
      400,
    );
    // The server's retry-after is a floor, even above the cap.
    assert.equal(reconnectDelayMs(1, 5000, opts, top), 5000);
    assert.equal(reconnectDelayMs(6, 300, opts, top), 999);
    // Defaults: 1 s, doubling, up to 120 s.
    assert.equal(reconnectDelayMs(1, null, {}, top), 999);
    assert.equal(reconnectDelayMs(20, null, {}, top), 119_999);
  });
});
