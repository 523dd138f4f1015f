// Broker state survives a restart, on both databases: a device's persistent MQTT 5 session (its
// subscription and a QoS 1 message queued while it was away) and a retained message are written to the
// store, the platform stops, a new platform starts over the same data directory / schema, and the
// device resumes its session, receives the queued message and, on subscribing again, the retained one.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { after, before, describe, test } from 'node:test';
import mqtt, { type IClientOptions, type IPublishPacket, type MqttClient } from 'mqtt';
import { deviceTopic } from '@castellan/protocol';
import { loadConfig } from '../src/config/index.ts';
import { type Platform, startPlatform } from '../src/platform.ts';
import { dialectCases, type DialectName, dropSchema, pgQuery, POSTGRES_URL, uniqueSchema } from './helpers/dialects.ts';
import { endClient, subscribeOutcome } from './helpers/mqtt-clients.ts';
import { captureLogs, provisionTenant, type CapturedLogs, type TestPlatform } from './helpers/test-platform.ts';

/** A platform over a given data directory (and PostgreSQL schema), so a second one can take over its state. */
async function startOn(
  dialect: DialectName,
  dataDir: string,
  schema: string | undefined,
): Promise<{ platform: Platform; logs: CapturedLogs }> {
  const config = loadConfig({
    env: {},
    cwd: dataDir,
    overrides: {
      dataDir,
      log: { level: 'debug' },
      http: { host: '127.0.0.1', port: 0 },
      mqtt: { host: '127.0.0.1', port: 0, connectTimeoutMs: 5000 },
      admin: { port: 0 },
      database: dialect === 'postgres' ? { url: POSTGRES_URL, schema } : {},
    },
  });
  const { stream, logs } = captureLogs();
  const platform = await startPlatform(config, { logDestination: stream, notice: () => {} });
  return { platform, logs };
}

/**
 * Connects with MQTT 5, clean start off; messages are collected from the first packet on (a resumed
 * session's queue is sent right after CONNACK, before a listener added later would see it).
 */
function connectPersistent(
  platform: Platform,
  device: { id: string; secret: string },
): Promise<{
  client: MqttClient;
  sessionPresent: boolean;
  received: IPublishPacket[];
  next: () => Promise<IPublishPacket>;
}> {
  const received: IPublishPacket[] = [];
  let wake: (() => void) | undefined;
  const client = mqtt.connect(platform.mqttUrl, {
    clientId: device.id,
    username: device.id,
    password: device.secret,
    protocolVersion: 5,
    clean: false,
    properties: { sessionExpiryInterval: 3600 },
    reconnectPeriod: 0,
    connectTimeout: 5000,
    ca: platform.caPem,
    rejectUnauthorized: true,
  } as IClientOptions);
  client.on('message', (_topic, _payload, packet) => {
    received.push(packet);
    wake?.();
  });
  let read = 0;
  const next = async () => {
    while (read >= received.length) {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('no message within 5 s')), 5000);
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    return received[read++]!;
  };
  return new Promise((resolve, reject) => {
    client.once('connect', (connack) => {
      client.on('error', () => {});
      resolve({ client, sessionPresent: connack.sessionPresent, received, next });
    });
    client.once('error', (error) => {
      client.end(true);
      reject(error);
    });
  });
}

for (const dialect of await dialectCases()) {
  describe(`MQTT broker state across a restart on ${dialect.name}`, { skip: dialect.skip }, () => {
    let dataDir: string;
    let schema: string | undefined;
    let running: Platform | undefined;

    const query = async <T>(text: string, values: unknown[] = []): Promise<T[]> => {
      if (schema) return pgQuery<T>(schema, text, values);
      const db = new DatabaseSync(join(dataDir, 'castellan.db'), { readOnly: true });
      try {
        return db.prepare(text.replace(/\$(\d+)/g, '?')).all(...(values as never[])) as T[];
      } finally {
        db.close();
      }
    };

    before(() => {
      dataDir = mkdtempSync(join(tmpdir(), 'castellan-restart-'));
      schema = dialect.name === 'postgres' ? uniqueSchema() : undefined;
    });
    after(async () => {
      await running?.close();
      if (schema) {
        await dropSchema(schema);
        await dropSchema(`${schema}_keys`);
      }
      rmSync(dataDir, { recursive: true, force: true });
    });

    test('a persistent session and a retained message survive a restart: queued QoS 1 delivered, retained on subscribe', async () => {
      const first = await startOn(dialect.name, dataDir, schema);
      running = first.platform;
      // provisionTenant needs only the platform.
      const tenant = await provisionTenant({ platform: first.platform } as TestPlatform, 1);
      const device = tenant.devices[0]!;
      const commands = deviceTopic.commands(device.id);

      const b = await connectPersistent(first.platform, device);
      assert.equal(b.sessionPresent, false);
      assert.deepEqual(await subscribeOutcome(b.client, [commands]), [1]);
      await endClient(b.client);

      // Nothing but the platform publishes to a device's command topics: the broker's own API.
      const reboot = deviceTopic.command(device.id, 'reboot');
      const config = deviceTopic.command(device.id, 'config');
      first.platform.broker.publishSystem(reboot, Buffer.from('{"delay":5}'), { retain: false, qos: 1 });
      first.platform.broker.publishSystem(config, Buffer.from('{"interval":60}'), { retain: true, qos: 1 });
      await first.platform.close();
      running = undefined;
      // Between the two runs, the database alone holds the state (read without the platform's code).
      const stored = await query<{ client_id: string; topic: string }>(
        'select p.client_id, p.topic from broker_pending p join broker_sessions s on s.client_id = p.client_id order by p.seq',
      );
      assert.deepEqual(
        stored.map((r) => [r.client_id, r.topic]),
        [
          [device.id, reboot],
          [device.id, config],
        ],
      );
      assert.deepEqual(
        (await query<{ topic: string }>('select topic from broker_retained where topic = $1', [config])).length,
        1,
      );

      const second = await startOn(dialect.name, dataDir, schema);
      running = second.platform;
      const resumed = await connectPersistent(second.platform, device);
      try {
        assert.equal(resumed.sessionPresent, true, 'the session was restored from the store');
        // Both messages were queued for the offline subscriber, in order; the retained one is delivered
        // to an existing subscription with RETAIN 0 [MQTT-3.3.1-9 (v5: retain as published off)].
        const m1 = await resumed.next();
        assert.deepEqual([m1.topic, m1.qos, m1.payload.toString(), m1.retain], [reboot, 1, '{"delay":5}', false]);
        const m2 = await resumed.next();
        assert.deepEqual([m2.topic, m2.qos, m2.payload.toString(), m2.retain], [config, 1, '{"interval":60}', false]);
        // Subscribing again sends the retained message with RETAIN 1 [MQTT-3.3.1-9, MQTT-3.8.4-4].
        assert.deepEqual(await subscribeOutcome(resumed.client, [commands]), [1]);
        const m3 = await resumed.next();
        assert.deepEqual([m3.topic, m3.payload.toString(), m3.retain], [config, '{"interval":60}', true]);
        assert.equal(resumed.received.filter((p) => p.topic === reboot).length, 1, 'the command came once');
      } finally {
        await endClient(resumed.client);
      }
    });
  });
}
