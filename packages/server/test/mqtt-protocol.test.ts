// Hostile and malformed MQTT input on the real TLS listener: every case ends in a clear refusal (a
// reason code or a closed connection), never a crash, a hang or a stored message; a well-behaved
// device is served afterwards.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import type mqttPacket from 'mqtt-packet';
import { connectDevice, endClient, publishOutcome, RawMqtt } from './helpers/mqtt-clients.ts';
import { provisionTenant, startTestPlatform, type Tenant, type TestPlatform } from './helpers/test-platform.ts';

describe('MQTT protocol robustness', () => {
  let tp: TestPlatform;
  let tenant: Tenant;

  before(async () => {
    tp = await startTestPlatform('sqlite', { mqtt: { maxPacketBytes: 1024, connectTimeoutMs: 300 } });
    tenant = await provisionTenant(tp, 2);
  });
  after(() => tp?.close());

  const device = () => tenant.devices[0]!;
  const telemetryRows = async () =>
    Number((await tp.query<{ n: number }>('select count(*) as n from telemetry'))[0]!.n);

  async function connected(version: 4 | 5 = 5, extra: Record<string, unknown> = {}): Promise<RawMqtt> {
    const raw = await RawMqtt.open(tp.platform, version);
    raw.send(
      {
        cmd: 'connect',
        protocolId: 'MQTT',
        protocolVersion: version,
        clientId: device().id,
        username: device().id,
        password: Buffer.from(device().secret),
        clean: true,
        keepalive: 30,
        ...extra,
      },
      version,
    );
    const connack = (await raw.next('connack')) as mqttPacket.IConnackPacket;
    assert.equal(connack.reasonCode ?? connack.returnCode, 0);
    return raw;
  }

  async function stillServes(): Promise<void> {
    const client = await connectDevice(tp.platform, tenant.devices[1]!);
    assert.equal(await publishOutcome(client, `devices/${tenant.devices[1]!.id}/state`, '{"ok":1}', 1), 0);
    await endClient(client);
  }

  test('garbage instead of CONNECT closes the connection', async () => {
    const raw = await RawMqtt.open(tp.platform);
    raw.send(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    assert.equal(await raw.waitClosed(), true);
    await stillServes();
  });

  test('[MQTT-3.1.0-1] a first packet other than CONNECT closes the connection', async () => {
    const raw = await RawMqtt.open(tp.platform);
    raw.send({ cmd: 'pingreq' });
    assert.equal(await raw.waitClosed(), true);
    assert.equal(raw.packets.length, 0);
  });

  test('a connection that never sends CONNECT is closed after the connect timeout', async () => {
    const raw = await RawMqtt.open(tp.platform);
    assert.equal(await raw.waitClosed(3000), true);
  });

  test('[MQTT-3.1.2-2] an unsupported protocol level gets CONNACK 0x01 and is closed', async () => {
    const raw = await RawMqtt.open(tp.platform, 4);
    // MQTT 3.1 (MQIsdp, level 3) CONNECT, hand-assembled: 3.1 is not supported.
    raw.send(Buffer.from('100f00064d51497364700302000a000170', 'hex'));
    const connack = (await raw.next('connack')) as mqttPacket.IConnackPacket;
    assert.equal(connack.returnCode, 1);
    assert.equal(await raw.waitClosed(), true);
  });

  test('[MQTT-3.1.0-2] a second CONNECT is a protocol error (0x82)', async () => {
    const raw = await connected(5);
    raw.send(
      {
        cmd: 'connect',
        protocolId: 'MQTT',
        protocolVersion: 5,
        clientId: device().id,
        clean: true,
        keepalive: 30,
      },
      5,
    );
    const disconnect = (await raw.next('disconnect')) as mqttPacket.IDisconnectPacket;
    assert.equal(disconnect.reasonCode, 0x82);
    assert.equal(await raw.waitClosed(), true);
  });

  test('an oversized packet is refused as soon as its length is known (0x95) and nothing is stored', async () => {
    const before = await telemetryRows();
    const raw = await connected(5);
    // Fixed header of a 5,000-byte PUBLISH; the body never needs to arrive.
    raw.send(Buffer.from([0x30, 0x88, 0x27]));
    const disconnect = (await raw.next('disconnect')) as mqttPacket.IDisconnectPacket;
    assert.equal(disconnect.reasonCode, 0x95);
    assert.equal(await raw.waitClosed(), true);
    assert.equal(await telemetryRows(), before);
  });

  test('QoS 2 telemetry is stored exactly once; `$` topics are refused (0x87); aliases above the maximum are 0x94', async () => {
    const before = await telemetryRows();
    const topic = `devices/${device().id}/telemetry`;
    const raw = await connected(5);
    const qos2 = {
      cmd: 'publish',
      topic,
      payload: '{"qos2":1}',
      qos: 2,
      messageId: 7,
      dup: false,
      retain: false,
    } as const;
    raw.send(qos2, 5);
    assert.equal(((await raw.next('pubrec')) as mqttPacket.IPubrecPacket).reasonCode ?? 0, 0);
    // [MQTT-4.3.3-10] the same PUBLISH again before PUBREL: acknowledged, not stored again.
    raw.send({ ...qos2, dup: true }, 5);
    assert.equal(((await raw.next('pubrec')) as mqttPacket.IPubrecPacket).reasonCode ?? 0, 0);
    raw.send({ cmd: 'pubrel', messageId: 7 }, 5);
    assert.equal(((await raw.next('pubcomp')) as mqttPacket.IPubcompPacket).reasonCode ?? 0, 0);
    assert.equal(await telemetryRows(), before + 1);
    // The device ACL still applies to QoS 2 and `$` topics are nobody's to publish to.
    for (const [other, code] of [
      [`devices/${tenant.devices[1]!.id}/telemetry`, 0x87],
      ['$SYS/broker/uptime', 0x87],
    ] as const) {
      raw.send({ ...qos2, topic: other, messageId: 8 }, 5);
      const pubrec = (await raw.next('pubrec')) as mqttPacket.IPubrecPacket;
      assert.equal(pubrec.reasonCode, code, other);
    }
    raw.send(
      { cmd: 'publish', topic, payload: '{"a":1}', qos: 0, dup: false, retain: false, properties: { topicAlias: 11 } },
      5,
    );
    const disconnect = (await raw.next('disconnect')) as mqttPacket.IDisconnectPacket;
    assert.equal(disconnect.reasonCode, 0x94);
    assert.equal(await raw.waitClosed(), true);
    assert.equal(await telemetryRows(), before + 1);
  });

  test('[MQTT-3.3.2-2] [MQTT-1.5.4-2] wildcards and U+0000 in a topic name are malformed (0x81)', async () => {
    for (const topic of [
      `devices/${device().id}/+`,
      `devices/${device().id}/#`,
      `devices/${device().id}/tele\u0000metry`,
    ]) {
      const raw = await connected(5);
      raw.send({ cmd: 'publish', topic, payload: '{"a":1}', qos: 1, messageId: 3, dup: false, retain: false }, 5);
      const disconnect = (await raw.next('disconnect')) as mqttPacket.IDisconnectPacket;
      assert.equal(disconnect.reasonCode, 0x81, topic);
    }
  });

  test('invalid topic filters get a failure code per filter and do not subscribe', async () => {
    const raw = await connected(5);
    raw.send(
      {
        cmd: 'subscribe',
        messageId: 5,
        subscriptions: [
          { topic: `devices/${device().id}/a#`, qos: 1 },
          { topic: `devices/${device().id}/+x`, qos: 1 },
          { topic: `$share/g/devices/${device().id}/state`, qos: 1 },
          { topic: `$share/g/devices/${tenant.devices[1]!.id}/state`, qos: 1 },
          { topic: `devices/${device().id}/state`, qos: 2 },
        ],
      },
      5,
    );
    const suback = (await raw.next('suback')) as mqttPacket.ISubackPacket;
    // A shared subscription is authorised for the filter it shares: own topics yes, another device's no.
    assert.deepEqual(suback.granted, [0x8f, 0x8f, 1, 0x87, 2]);
    raw.close();
  });

  test('PINGREQ is answered; a silent client is dropped after 1.5 × keep-alive', async () => {
    const raw = await connected(4, { keepalive: 1, protocolVersion: 4 });
    raw.send({ cmd: 'pingreq' }, 4);
    assert.ok(await raw.next('pingresp'));
    assert.equal(await raw.waitClosed(4000), true, 'closed after the keep-alive expired');
  });

  test('property: random bytes after CONNECT never crash the broker or store anything', async () => {
    const before = await telemetryRows();
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ minLength: 1, maxLength: 300 }), async (bytes) => {
        const raw = await connected(5);
        raw.send(Buffer.from(bytes));
        // Barrier: the broker closed us, or still answers a PINGREQ (bytes that form a partial
        // packet swallow it, which the short wait covers).
        raw.send({ cmd: 'pingreq' }, 5);
        await raw.next('pingresp', 150).catch(() => undefined);
        raw.close();
      }),
      { numRuns: 40 },
    );
    assert.equal(await telemetryRows(), before);
    await stillServes();
  });
});
