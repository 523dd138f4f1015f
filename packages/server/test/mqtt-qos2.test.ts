// QoS 2 in both directions through the broker core on real sockets: exactly-once inbound (a duplicate
// PUBLISH awaiting PUBREL is acknowledged, not routed again), PUBREL/PUBCOMP, and the outbound
// PUBLISH → PUBREC → PUBREL → PUBCOMP flow with PUBREL resent on resumption [MQTT-4.3.3] [MQTT-4.4.0-1].
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type mqttPacket from 'mqtt-packet';
import {
  connectClient,
  type CoreBroker,
  endClient,
  nextMessages,
  openHooks,
  RawClient,
  startCoreBroker,
} from './helpers/mqtt-core.ts';

const publish = (topic: string, payload: string, qos: 0 | 1 | 2, messageId?: number, dup = false) =>
  ({
    cmd: 'publish',
    topic,
    payload: Buffer.from(payload),
    qos,
    retain: false,
    dup,
    ...(messageId === undefined ? {} : { messageId }),
  }) as mqttPacket.IPublishPacket;

describe('MQTT QoS 2', () => {
  let core: CoreBroker;
  before(async () => {
    core = await startCoreBroker();
  });
  after(() => core?.close());

  for (const version of [5, 4] as const) {
    test(`[MQTT-4.3.3-10] [MQTT-4.3.3-12] v${version}: a duplicate PUBLISH awaiting PUBREL is acknowledged again and routed once`, async () => {
      const topic = `qos2/once/v${version}`;
      const sub = await connectClient(core.url, { clientId: `q2-sub-${version}`, protocolVersion: version });
      await sub.subscribeAsync(topic, { qos: 2 });
      const received: string[] = [];
      sub.on('message', (_t, payload) => received.push(payload.toString()));
      const { raw } = await RawClient.connect(core.port, { clientId: `q2-pub-${version}` }, version);
      raw.send(publish(topic, 'exactly-once', 2, 7), version);
      const pubrec = (await raw.next('pubrec')) as mqttPacket.IPubrecPacket;
      assert.equal(pubrec.messageId, 7);
      assert.equal(pubrec.reasonCode ?? 0, 0);
      // The same packet again, DUP set, before PUBREL: PUBREC again, nothing routed again.
      raw.send(publish(topic, 'exactly-once', 2, 7, true), version);
      const again = (await raw.next('pubrec')) as mqttPacket.IPubrecPacket;
      assert.equal(again.messageId, 7);
      raw.send({ cmd: 'pubrel', messageId: 7 }, version);
      const pubcomp = (await raw.next('pubcomp')) as mqttPacket.IPubcompPacket;
      assert.equal(pubcomp.messageId, 7);
      assert.equal(pubcomp.reasonCode ?? 0, 0);
      // After PUBCOMP the identifier is free: a new message with it is a new message.
      raw.send(publish(topic, 'second', 2, 7), version);
      await raw.next('pubrec');
      raw.send({ cmd: 'pubrel', messageId: 7 }, version);
      await raw.next('pubcomp');
      // Barrier: the subscriber got "second", so anything routed before it has arrived as well.
      while (!received.includes('second')) await new Promise((r) => setTimeout(r, 10));
      assert.deepEqual(received, ['exactly-once', 'second']);
      raw.close();
      await endClient(sub);
    });
  }

  test('[MQTT-4.3.3-11] v5: PUBREL for an unknown identifier gets PUBCOMP 0x92; 3.1.1 gets a plain PUBCOMP', async () => {
    const v5 = await RawClient.connect(core.port, { clientId: 'q2-unknown-5' }, 5);
    v5.raw.send({ cmd: 'pubrel', messageId: 99 }, 5);
    const pubcomp5 = (await v5.raw.next('pubcomp')) as mqttPacket.IPubcompPacket;
    assert.equal(pubcomp5.messageId, 99);
    assert.equal(pubcomp5.reasonCode, 0x92);
    assert.equal(await v5.raw.barrier(), true, 'still connected');
    v5.raw.close();
    const v4 = await RawClient.connect(core.port, { clientId: 'q2-unknown-4' }, 4);
    v4.raw.send({ cmd: 'pubrel', messageId: 99 }, 4);
    const pubcomp4 = (await v4.raw.next('pubcomp')) as mqttPacket.IPubcompPacket;
    assert.equal(pubcomp4.messageId, 99);
    v4.raw.close();
  });

  test('SUBACK grants QoS 2 and mqtt.js completes QoS 2 end to end', async () => {
    const sub = await connectClient(core.url, { clientId: 'q2-e2e-sub' });
    const granted = await sub.subscribeAsync('qos2/e2e', { qos: 2 });
    assert.equal(granted[0]!.qos, 2);
    const pub = await connectClient(core.url, { clientId: 'q2-e2e-pub' });
    const got = nextMessages(sub, 1);
    await pub.publishAsync('qos2/e2e', 'hello', { qos: 2 });
    const [message] = await got;
    assert.equal(message!.packet.qos, 2);
    assert.equal(message!.payload.toString(), 'hello');
    await endClient(pub);
    await endClient(sub);
  });

  test('[MQTT-4.4.0-1] outbound QoS 2: PUBREC → PUBREL; on resumption PUBREL is resent, then PUBCOMP ends it', async () => {
    const clientId = 'q2-out';
    const session = { clientId, clean: false, properties: { sessionExpiryInterval: 60 } };
    const first = await RawClient.connect(core.port, session);
    first.raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'qos2/out', qos: 2 }] });
    const suback = (await first.raw.next('suback')) as mqttPacket.ISubackPacket;
    assert.deepEqual(suback.granted, [2]);
    const pub = await connectClient(core.url, { clientId: 'q2-out-pub' });
    await pub.publishAsync('qos2/out', 'twice-safe', { qos: 2 });
    const delivered = (await first.raw.next('publish')) as mqttPacket.IPublishPacket;
    assert.equal(delivered.qos, 2);
    assert.equal(delivered.dup, false);
    first.raw.send({ cmd: 'pubrec', messageId: delivered.messageId! });
    const pubrel = (await first.raw.next('pubrel')) as mqttPacket.IPubrelPacket;
    assert.equal(pubrel.messageId, delivered.messageId);
    first.raw.close(); // gone before PUBCOMP
    await first.raw.waitClosed();

    const second = await RawClient.connect(core.port, session);
    assert.equal(second.connack.sessionPresent, true);
    const resent = (await second.raw.next('pubrel')) as mqttPacket.IPubrelPacket;
    assert.equal(resent.messageId, delivered.messageId);
    second.raw.send({ cmd: 'pubcomp', messageId: delivered.messageId! });
    assert.equal(await second.raw.barrier(), true);
    assert.equal(second.raw.packets.filter((p) => p.cmd === 'publish').length, 0, 'the message is not sent again');
    second.raw.send({ cmd: 'disconnect', properties: { sessionExpiryInterval: 0 } });
    await second.raw.waitClosed();

    // A third connection finds nothing left to resend.
    const third = await RawClient.connect(core.port, { clientId, clean: false });
    assert.equal(third.connack.sessionPresent, false, 'the session ended with expiry 0');
    assert.equal(await third.raw.barrier(), true);
    assert.equal(third.raw.packets.length, 0);
    third.raw.close();
    await endClient(pub);
  });

  test('[MQTT-4.4.0-1] outbound QoS 2 without PUBREC is resent with DUP on resumption', async () => {
    const clientId = 'q2-dup';
    const session = { clientId, clean: false, properties: { sessionExpiryInterval: 60 } };
    const first = await RawClient.connect(core.port, session);
    first.raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'qos2/dup', qos: 2 }] });
    await first.raw.next('suback');
    const pub = await connectClient(core.url, { clientId: 'q2-dup-pub' });
    await pub.publishAsync('qos2/dup', 'again', { qos: 2 });
    const delivered = (await first.raw.next('publish')) as mqttPacket.IPublishPacket;
    first.raw.close();
    await first.raw.waitClosed();
    const second = await RawClient.connect(core.port, session);
    const resent = (await second.raw.next('publish')) as mqttPacket.IPublishPacket;
    assert.equal(resent.messageId, delivered.messageId);
    assert.equal(resent.dup, true);
    assert.equal(resent.payload.toString(), 'again');
    second.raw.send({ cmd: 'pubrec', messageId: resent.messageId! });
    await second.raw.next('pubrel');
    second.raw.send({ cmd: 'pubcomp', messageId: resent.messageId! });
    second.raw.send({ cmd: 'disconnect', properties: { sessionExpiryInterval: 0 } });
    await second.raw.waitClosed();
    await endClient(pub);
  });

  test('a PUBREC with a failure reason ends the outbound exchange without PUBREL', async () => {
    const { raw } = await RawClient.connect(core.port, { clientId: 'q2-refuse' });
    raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'qos2/refuse', qos: 2 }] });
    await raw.next('suback');
    const pub = await connectClient(core.url, { clientId: 'q2-refuse-pub' });
    await pub.publishAsync('qos2/refuse', 'no', { qos: 2 });
    const delivered = (await raw.next('publish')) as mqttPacket.IPublishPacket;
    raw.send({ cmd: 'pubrec', messageId: delivered.messageId!, reasonCode: 0x80 });
    assert.equal(await raw.barrier(), true);
    assert.equal(raw.packets.filter((p) => p.cmd === 'pubrel').length, 0);
    raw.close();
    await endClient(pub);
  });
});

describe('MQTT QoS 2 with a durable hook', () => {
  test('[MQTT-4.3.3-9] PUBREC waits for the onPublish hook; a refusal is PUBREC 0x97 and frees the identifier', async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let refuse = false;
    const core = await startCoreBroker({
      hooks: openHooks({
        async onPublish() {
          await gate;
          if (refuse) {
            const { PublishRefusedError } = await import('../src/gateway/mqtt/index.ts');
            throw new PublishRefusedError('quota-exceeded', 'test quota');
          }
        },
      }),
    });
    try {
      const { raw } = await RawClient.connect(core.port, { clientId: 'q2-hook' });
      raw.send(publish('qos2/hook', 'slow', 2, 3));
      // PINGRESP overtakes the held PUBREC: the acknowledgement really waits for the hook.
      assert.equal(await raw.barrier(), true);
      assert.equal(raw.packets.filter((p) => p.cmd === 'pubrec').length, 0);
      release();
      const pubrec = (await raw.next('pubrec')) as mqttPacket.IPubrecPacket;
      assert.equal(pubrec.reasonCode ?? 0, 0);
      raw.send({ cmd: 'pubrel', messageId: 3 });
      await raw.next('pubcomp');
      refuse = true;
      raw.send(publish('qos2/hook', 'refused', 2, 4));
      const refused = (await raw.next('pubrec')) as mqttPacket.IPubrecPacket;
      assert.equal(refused.reasonCode, 0x97);
      // The identifier is free again: PUBREL for it is unknown.
      raw.send({ cmd: 'pubrel', messageId: 4 });
      assert.equal(((await raw.next('pubcomp')) as mqttPacket.IPubcompPacket).reasonCode, 0x92);
      raw.close();
    } finally {
      await core.close();
    }
  });

  test('[MQTT-3.3.4-9] QoS 2 messages awaiting PUBREL count against the Receive Maximum (0x93)', async () => {
    const core = await startCoreBroker({ limits: { maxInflight: 2 } });
    try {
      const { raw, connack } = await RawClient.connect(core.port, { clientId: 'q2-recvmax' });
      assert.equal(connack.properties?.receiveMaximum, 2);
      raw.send(publish('qos2/max', 'a', 2, 1));
      raw.send(publish('qos2/max', 'b', 2, 2));
      await raw.next('pubrec');
      await raw.next('pubrec');
      raw.send(publish('qos2/max', 'c', 2, 3));
      const disconnect = (await raw.next('disconnect')) as mqttPacket.IDisconnectPacket;
      assert.equal(disconnect.reasonCode, 0x93);
      assert.equal(await raw.waitClosed(), true);
    } finally {
      await core.close();
    }
  });
});
