// Retained messages through the broker core on real sockets: set and clear [MQTT-3.3.1-5..7], delivery
// on subscribe per Retain Handling [MQTT-3.3.1-9..11], the RETAIN flag on forwarded messages per Retain
// As Published and 3.1.1 [MQTT-3.3.1-12], none for shared subscriptions, expiry, retained wills and
// broker-published `$SYS` messages.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import type mqttPacket from 'mqtt-packet';
import { RetainedIndex } from '../src/gateway/mqtt/retained-index.ts';
import { topicMatches } from '../src/gateway/mqtt/topic-rules.ts';
import {
  connectClient,
  type CoreBroker,
  endClient,
  nextMessages,
  RawClient,
  startCoreBroker,
} from './helpers/mqtt-core.ts';

describe('MQTT retained messages', () => {
  let core: CoreBroker;
  before(async () => {
    core = await startCoreBroker();
  });
  after(() => core?.close());

  /** Subscribes a raw client and returns the PUBLISH packets that follow the SUBACK (barrier: PINGRESP). */
  async function subscribeAndCollect(
    raw: RawClient,
    subscriptions: mqttPacket.ISubscription[],
    messageId = 1,
    properties?: mqttPacket.ISubscribePacket['properties'],
  ): Promise<mqttPacket.IPublishPacket[]> {
    raw.send({ cmd: 'subscribe', messageId, subscriptions, ...(properties ? { properties } : {}) });
    await raw.next('suback');
    await raw.barrier();
    const publishes = raw.packets.filter((p): p is mqttPacket.IPublishPacket => p.cmd === 'publish');
    raw.packets.length = 0;
    return publishes;
  }

  test('[MQTT-3.3.1-5] [MQTT-3.3.1-9] a retained message reaches a later subscriber with RETAIN=1, at the lower QoS', async () => {
    const pub = await connectClient(core.url, { clientId: 'ret-pub-1' });
    await pub.publishAsync('ret/a/temp', '21.5', { qos: 1, retain: true });
    for (const version of [5, 4] as const) {
      const { raw } = await RawClient.connect(core.port, { clientId: `ret-sub-1-${version}` }, version);
      raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'ret/+/temp', qos: 0 }] }, version);
      await raw.next('suback');
      const message = (await raw.next('publish')) as mqttPacket.IPublishPacket;
      assert.equal(message.topic, 'ret/a/temp');
      assert.equal(message.payload.toString(), '21.5');
      assert.equal(message.retain, true);
      assert.equal(message.qos, 0, 'granted QoS 0 caps the retained QoS 1');
      raw.close();
    }
    await endClient(pub);
  });

  test('[MQTT-3.3.1-6] [MQTT-3.3.1-7] an empty retained message clears the topic and is not retained itself', async () => {
    const pub = await connectClient(core.url, { clientId: 'ret-pub-2' });
    await pub.publishAsync('ret/clear', 'x', { qos: 1, retain: true });
    assert.equal(core.broker.retainedCount > 0, true);
    const before = core.broker.retainedCount;
    await pub.publishAsync('ret/clear', '', { qos: 1, retain: true });
    assert.equal(core.broker.retainedCount, before - 1);
    const { raw } = await RawClient.connect(core.port, { clientId: 'ret-sub-2' });
    assert.deepEqual(await subscribeAndCollect(raw, [{ topic: 'ret/clear', qos: 1 }]), []);
    raw.close();
    await endClient(pub);
  });

  test('[MQTT-3.3.1-9] [MQTT-3.3.1-10] [MQTT-3.3.1-11] Retain Handling 0 always, 1 only for a new subscription, 2 never', async () => {
    const pub = await connectClient(core.url, { clientId: 'ret-pub-3' });
    await pub.publishAsync('ret/rh', 'kept', { qos: 1, retain: true });
    const { raw } = await RawClient.connect(core.port, { clientId: 'ret-sub-3' });
    const count = async (rh: number, id: number) =>
      (await subscribeAndCollect(raw, [{ topic: 'ret/rh', qos: 1, rh }], id)).length;
    assert.equal(await count(2, 1), 0, 'rh 2: never');
    assert.equal(await count(1, 2), 0, 'rh 1: the subscription exists already (from rh 2)');
    raw.send({ cmd: 'unsubscribe', messageId: 3, unsubscriptions: ['ret/rh'] });
    await raw.next('unsuback');
    assert.equal(await count(1, 4), 1, 'rh 1: a new subscription');
    assert.equal(await count(0, 5), 1, 'rh 0: again on every SUBSCRIBE');
    assert.equal(await count(0, 6), 1);
    raw.close();
    await endClient(pub);
  });

  test('[MQTT-3.3.1-12] the RETAIN flag of a forwarded message: kept with Retain As Published, else 0; 3.1.1 always 0', async () => {
    const rap = await RawClient.connect(core.port, { clientId: 'ret-rap' });
    await subscribeAndCollect(rap.raw, [{ topic: 'ret/live', qos: 1, rap: true, rh: 2 }]);
    const plain = await RawClient.connect(core.port, { clientId: 'ret-norap' });
    await subscribeAndCollect(plain.raw, [{ topic: 'ret/live', qos: 1, rh: 2 }]);
    const v4 = await RawClient.connect(core.port, { clientId: 'ret-v4' }, 4);
    v4.raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'ret/live', qos: 1 }] }, 4);
    await v4.raw.next('suback');
    await v4.raw.barrier(4);
    v4.raw.packets.length = 0;
    const pub = await connectClient(core.url, { clientId: 'ret-pub-4' });
    await pub.publishAsync('ret/live', 'now', { qos: 1, retain: true });
    assert.equal(((await rap.raw.next('publish')) as mqttPacket.IPublishPacket).retain, true);
    assert.equal(((await plain.raw.next('publish')) as mqttPacket.IPublishPacket).retain, false);
    assert.equal(((await v4.raw.next('publish')) as mqttPacket.IPublishPacket).retain, false);
    for (const c of [rap.raw, plain.raw, v4.raw]) c.close();
    await pub.publishAsync('ret/live', '', { qos: 1, retain: true });
    await endClient(pub);
  });

  test('shared subscriptions get no retained messages', async () => {
    const pub = await connectClient(core.url, { clientId: 'ret-pub-5' });
    await pub.publishAsync('ret/shared', 'old', { qos: 1, retain: true });
    const { raw } = await RawClient.connect(core.port, { clientId: 'ret-sub-5' });
    assert.deepEqual(await subscribeAndCollect(raw, [{ topic: '$share/g/ret/shared', qos: 1 }]), []);
    raw.close();
    await endClient(pub);
  });

  test('[MQTT-3.3.2-5] an expired retained message is not delivered; a live one carries its remaining interval [MQTT-3.3.2-6]', async (t) => {
    const pub = await connectClient(core.url, { clientId: 'ret-pub-6' });
    await pub.publishAsync('ret/exp/short', 'short', {
      qos: 1,
      retain: true,
      properties: { messageExpiryInterval: 5 },
    });
    await pub.publishAsync('ret/exp/long', 'long', {
      qos: 1,
      retain: true,
      properties: { messageExpiryInterval: 100 },
    });
    t.mock.timers.enable({ apis: ['Date'], now: Date.now() });
    t.mock.timers.tick(10_000);
    const { raw } = await RawClient.connect(core.port, { clientId: 'ret-sub-6' });
    const got = await subscribeAndCollect(raw, [{ topic: 'ret/exp/#', qos: 1 }]);
    t.mock.timers.reset();
    assert.deepEqual(
      got.map((p) => p.topic),
      ['ret/exp/long'],
    );
    const interval = got[0]!.properties?.messageExpiryInterval ?? 0;
    assert.ok(interval <= 90 && interval >= 89, `remaining interval ${interval}`);
    raw.close();
    await endClient(pub);
  });

  test('a will may be retained (and QoS 2): a later subscriber gets it', async () => {
    const doomed = await RawClient.connect(core.port, {
      clientId: 'ret-will',
      will: { topic: 'ret/will/status', payload: Buffer.from('offline'), qos: 2, retain: true },
    });
    doomed.raw.close(); // no DISCONNECT: the will is published
    await doomed.raw.waitClosed();
    const sub = await connectClient(core.url, { clientId: 'ret-will-sub' });
    const got = nextMessages(sub, 1);
    await sub.subscribeAsync('ret/will/status', { qos: 2 });
    const [message] = await got;
    assert.equal(message!.payload.toString(), 'offline');
    assert.equal(message!.packet.retain, true);
    assert.equal(message!.packet.qos, 2);
    await endClient(sub);
  });

  test('[MQTT-4.7.2-1] publishSystem retains `$SYS` messages: `#` does not match them, `$SYS/#` does', async () => {
    core.broker.publishSystem('$SYS/broker/uptime', Buffer.from('42'), { retain: true });
    const { raw } = await RawClient.connect(core.port, { clientId: 'ret-sys' });
    const all = await subscribeAndCollect(raw, [{ topic: '#', qos: 0, rh: 0 }]);
    assert.equal(
      all.some((p) => p.topic.startsWith('$')),
      false,
    );
    const sys = await subscribeAndCollect(raw, [{ topic: '$SYS/#', qos: 1 }], 2);
    assert.deepEqual(
      sys.map((p) => [p.topic, p.payload.toString(), p.retain]),
      [['$SYS/broker/uptime', '42', true]],
    );
    // Live: a non-retained system message reaches the `$SYS/#` subscriber with RETAIN=0.
    core.broker.publishSystem('$SYS/broker/load', Buffer.from('1'), { retain: false, qos: 1 });
    const live = (await raw.next('publish')) as mqttPacket.IPublishPacket;
    assert.deepEqual([live.topic, live.retain, live.qos], ['$SYS/broker/load', false, 1]);
    raw.close();
  });
});

test('the retained index finds exactly the retained topics a filter matches (property, against the spec matcher)', () => {
  const level = fc.constantFrom('a', 'b', '$SYS', '', 'devices', 'x1');
  const topicArb = fc.array(level, { minLength: 1, maxLength: 4 }).map((levels) => levels.join('/'));
  const filterArb = fc
    .tuple(fc.array(fc.oneof(level, fc.constant('+')), { minLength: 0, maxLength: 4 }), fc.boolean())
    .map(([levels, hash]) => [...levels, ...(hash ? ['#'] : [])].join('/'))
    .filter((filter) => filter.length > 0);
  fc.assert(
    fc.property(
      fc.uniqueArray(topicArb, { maxLength: 30 }),
      fc.array(topicArb, { maxLength: 10 }),
      filterArb,
      (topics, removed, filter) => {
        const index = new RetainedIndex();
        const message = (topic: string) => ({
          topic,
          payload: Buffer.from('x'),
          qos: 0 as const,
          retain: true,
          expiresAt: null,
        });
        for (const topic of topics) index.set(topic, message(topic));
        for (const topic of removed) index.delete(topic);
        const left = topics.filter((t) => !removed.includes(t));
        assert.equal(index.size, left.length);
        const expected = left.filter((t) => topicMatches(filter, t)).sort();
        assert.deepEqual(
          index
            .match(filter)
            .map((m) => m.topic)
            .sort(),
          expected,
          `filter ${filter}`,
        );
      },
    ),
    { numRuns: 2000 },
  );
});
