// The per-device topic ACL (CHAN-6) under attack, MQTT 5 and 3.1.1: a device may publish and subscribe
// only under its own `devices/{id}/`. Every refusal is checked twice: the code the broker sends (PUBACK
// or PUBREC 0x87, SUBACK 0x87 / 0x80, CONNACK 0x87 / 5, or the connection closed where 3.1.1 has no
// negative acknowledgement [MQTT-3.3.5-2]) AND that the harm did not happen: another device watching
// its own topics receives nothing from the attacker, and its stored telemetry is unchanged. Property
// tests then compare the authorisation hook, and the broker on the wire, with an independent matcher.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import type { MqttClient } from 'mqtt';
import type { IConnectPacket, IPublishPacket, Packet } from 'mqtt-packet';
import type { ClientIdentity } from '../src/gateway/mqtt/index.ts';
import {
  connectDevice,
  endClient,
  mqttConnect,
  publishOutcome,
  RawMqtt,
  subscribeOutcome,
} from './helpers/mqtt-clients.ts';
import { provisionTenant, startTestPlatform, type Tenant, type TestPlatform } from './helpers/test-platform.ts';

type Version = 4 | 5;
const NAME = { 4: 'MQTT 3.1.1', 5: 'MQTT 5' } as const;
const NOT_AUTHORIZED = 0x87;
const SUBACK_FAILURE_V4 = 0x80;
const TOPIC_FILTER_INVALID = 0x8f;
const MALFORMED_PACKET = 0x81;
const CONNACK_NOT_AUTHORIZED = { 4: 5, 5: NOT_AUTHORIZED } as const;

interface Device {
  id: string;
  secret: string;
}

/** Look-alikes of a device ID: upper case, and a Unicode homoglyph (fullwidth digit, Cyrillic letter). */
function lookAlikes(id: string): string[] {
  const fullwidth = id.replace(/[0-9]/, (d) => String.fromCharCode(0xff10 + Number(d)));
  const cyrillic = /[ace]/.test(id)
    ? id.replace(/[ace]/, (c) => ({ a: '\u0430', c: '\u0441', e: '\u0435' })[c as 'a' | 'c' | 'e'])
    : `${id.slice(0, -1)}\u0430`;
  return [id.toUpperCase(), fullwidth, cyrillic, `${id}\u200b`];
}

/**
 * A device watching everything under its own namespace. `quiet()` proves nothing else arrived: the
 * device publishes a barrier message on its own state topic and waits for it, so anything routed to it
 * earlier (the attacker's refused messages were refused before their acknowledgement) is already here.
 */
class Watcher {
  readonly received: Array<{ topic: string; payload: string }> = [];
  readonly device: Device;
  readonly client: MqttClient;
  #barrier = 0;

  private constructor(device: Device, client: MqttClient) {
    this.device = device;
    this.client = client;
    client.on('message', (topic, payload) => this.received.push({ topic, payload: payload.toString('utf8') }));
  }

  static async start(tp: TestPlatform, device: Device): Promise<Watcher> {
    const client = await connectDevice(tp.platform, device, 5);
    // Retain Handling 2: not the device's own retained state, only what is published from now on.
    const granted = await new Promise<number[]>((resolve, reject) =>
      client.subscribe(`devices/${device.id}/#`, { qos: 1, rh: 2 }, (error, grants) =>
        error ? reject(error) : resolve((grants ?? []).map((g) => g.qos)),
      ),
    );
    assert.deepEqual(granted, [1]);
    return new Watcher(device, client);
  }

  async quiet(what: string): Promise<void> {
    const payload = JSON.stringify({ barrier: ++this.#barrier });
    const topic = `devices/${this.device.id}/state`;
    const arrived = new Promise<void>((resolve) => {
      const check = (t: string, p: Buffer) => {
        if (t === topic && p.toString('utf8') === payload) {
          this.client.off('message', check);
          resolve();
        }
      };
      this.client.on('message', check);
    });
    assert.equal(await publishOutcome(this.client, topic, payload, 1), 0);
    await arrived;
    const foreign = this.received.filter((m) => !(m.topic === topic && m.payload.startsWith('{"barrier":')));
    assert.deepEqual(foreign, [], `${this.device.id} received something after: ${what}`);
  }

  close(): Promise<void> {
    return endClient(this.client);
  }
}

// ---- An independent model of MQTT topic filters (MQTT 5 4.7, 4.8.2), for the property tests ----

/** A valid topic filter (4.7.1): '#' alone and last, '+' alone in its level, non-empty, no U+0000. */
function isValidFilter(filter: string): boolean {
  if (filter.length === 0 || filter.includes('\u0000')) return false;
  const levels = filter.split('/');
  return levels.every(
    (level, i) =>
      (!level.includes('#') || (level === '#' && i === levels.length - 1)) && (!level.includes('+') || level === '+'),
  );
}

/** The filter that matches topics: a `$share/{group}/` prefix removed; null when malformed (4.8.2). */
function effectiveFilter(filter: string): string | null {
  if (!filter.startsWith('$share/')) return isValidFilter(filter) ? filter : null;
  const [, group, ...rest] = filter.split('/');
  if (!group || group.includes('+') || group.includes('#') || rest.length === 0) return null;
  const inner = rest.join('/');
  return isValidFilter(inner) ? inner : null;
}

/**
 * Could a valid filter match at least one topic whose first two levels are `devices/{id}`? Built from
 * the matching rules, level by level: '#' matches the rest (parent level included), '+' any one level,
 * a literal only itself; `$` topics are not matched by a leading wildcard, and `devices` is not `$`.
 */
function couldReach(filter: string, id: string): boolean {
  const target = ['devices', id];
  const levels = filter.split('/');
  for (let i = 0; i < target.length; i++) {
    const level = levels[i];
    if (level === '#') return true;
    if (level === undefined) return false; // the filter ends above the device level
    if (level !== '+' && level !== target[i]) return false;
  }
  return true;
}

/** Could it match any topic not under `devices/{own}` (another device's, `$SYS`, anything else)? */
function couldLeaveNamespace(filter: string, own: string): boolean {
  const levels = filter.split('/');
  return !(levels[0] === 'devices' && levels[1] === own);
}

describe('[CHAN-6] per-device topic ACL under attack', () => {
  let tp: TestPlatform;
  let tenant: Tenant;
  let foreign: Tenant;
  let attacker: Device;
  let victim: Device; // same vendor and product
  let stranger: Device; // another vendor
  let watchers: Watcher[];

  const telemetry = async (deviceId: string) =>
    tp.query<{ n: number; last: string | null }>(
      'select count(*) as n, max(seq) as last from telemetry where device_id = $1',
      [deviceId],
    );

  before(async () => {
    tp = await startTestPlatform('sqlite');
    tenant = await provisionTenant(tp, 2);
    foreign = await provisionTenant(tp, 1, tenant.adminToken);
    [attacker, victim] = tenant.devices as [Device, Device];
    stranger = foreign.devices[0]!;
    // Both victims have stored telemetry and a retained state the attacker must never see.
    for (const device of [victim, stranger]) {
      const client = await connectDevice(tp.platform, device, 5);
      assert.equal(await publishOutcome(client, `devices/${device.id}/telemetry`, '{"kwh":1}', 1), 0);
      await new Promise<void>((resolve, reject) =>
        client.publish(`devices/${device.id}/state`, '{"locked":true}', { qos: 1, retain: true }, (error) =>
          error ? reject(error) : resolve(),
        ),
      );
      await endClient(client);
    }
    watchers = [await Watcher.start(tp, victim), await Watcher.start(tp, stranger)];
  });
  after(async () => {
    for (const watcher of watchers ?? []) await watcher.close();
    await tp?.close();
  });

  /** Topics the attacker must not publish to: every channel of both victims, and name tricks. */
  const forbiddenTopics = () => {
    const own = attacker.id;
    const topics: string[] = [];
    for (const v of [victim.id, stranger.id]) {
      for (const channel of [
        'telemetry',
        'state',
        'events',
        'commands/reboot',
        'commands',
        'telemetry/x',
        'events/x',
      ]) {
        topics.push(`devices/${v}/${channel}`);
      }
    }
    const v = victim.id;
    topics.push(
      // Levels are literal in MQTT: '..' is a level name, not a path step, and these are not device topics.
      `devices/${own}/../${v}/telemetry`,
      `devices/${own}/telemetry/../../${v}/telemetry`,
      // Trailing slash, empty levels, leading slash.
      `devices/${v}/telemetry/`,
      `devices/${own}/telemetry/`,
      `devices//${v}/telemetry`,
      `devices/${v}//telemetry`,
      `/devices/${v}/telemetry`,
      `devices/${own}`,
      `devices/${own}/`,
      'devices',
      // Case and Unicode look-alikes of the victim's ID and of the attacker's own.
      ...lookAlikes(v).map((id) => `devices/${id}/telemetry`),
      ...lookAlikes(own).map((id) => `devices/${id}/telemetry`),
      `DEVICES/${v}/telemetry`,
      `Devices/${own}/telemetry`,
      // Commands flow cloud → device only, also for the own device.
      `devices/${own}/commands/unlock`,
      // Server topics.
      `$SYS/broker/${v}`,
      `$share/g/devices/${v}/telemetry`,
    );
    return topics;
  };

  for (const version of [5, 4] as const) {
    test(`[CHAN-6] ${NAME[version]}: publishing outside the own namespace is refused on every channel and reaches nobody`, async () => {
      const topics = forbiddenTopics();
      const before = await Promise.all([victim, stranger].map((d) => telemetry(d.id)));
      const denied = tp.platform.broker.stats.publishDenied;
      let client = await connectDevice(tp.platform, attacker, version);
      for (const topic of topics) {
        const outcome = await publishOutcome(client, topic, '{"unlock":true}', 1);
        if (version === 5) {
          assert.equal(outcome, NOT_AUTHORIZED, topic);
        } else {
          // [MQTT-3.3.5-2] 3.1.1: the only refusal is closing the connection.
          assert.equal(outcome, 'closed', topic);
          client.end(true);
          client = await connectDevice(tp.platform, attacker, version);
        }
      }
      await endClient(client);
      assert.equal(tp.platform.broker.stats.publishDenied - denied, topics.length, 'each refusal counted');
      for (const watcher of watchers) await watcher.quiet(`${NAME[version]} publishes`);
      assert.deepEqual(await Promise.all([victim, stranger].map((d) => telemetry(d.id))), before);
    });

    test(`[CHAN-6] ${NAME[version]}: QoS 0, QoS 2 and retained publishes to another device are refused too`, async () => {
      const before = await telemetry(victim.id);
      const raw = await RawMqtt.open(tp.platform, version);
      raw.send(connectPacket(version, attacker), version);
      assert.equal(connackCode(await raw.next('connack')), 0);
      if (version === 5) {
        // QoS 2: PUBREC 0x87 (MQTT 5 3.5.2.1); retained QoS 1: PUBACK 0x87; the connection stays up.
        raw.send(publishPacket(`devices/${victim.id}/telemetry`, 2, 7), 5);
        assert.deepEqual(pick(await raw.next('pubrec'), 'messageId', 'reasonCode'), [7, NOT_AUTHORIZED]);
        raw.send({ ...publishPacket(`devices/${victim.id}/state`, 1, 8), retain: true }, 5);
        assert.deepEqual(pick(await raw.next('puback'), 'messageId', 'reasonCode'), [8, NOT_AUTHORIZED]);
        // QoS 0 has no acknowledgement: the DISCONNECT carries the reason, then the server closes.
        raw.send(publishPacket(`devices/${victim.id}/telemetry`, 0), 5);
        assert.equal(reasonOf(await raw.next('disconnect')), NOT_AUTHORIZED);
        assert.equal(await raw.waitClosed(), true);
      } else {
        raw.send(publishPacket(`devices/${victim.id}/telemetry`, 2, 7), 4);
        assert.equal(await raw.next('pubrec'), undefined, 'closed without a PUBREC');
        for (const qos of [0, 1] as const) {
          const again = await RawMqtt.open(tp.platform, 4);
          again.send(connectPacket(4, attacker), 4);
          assert.equal(connackCode(await again.next('connack')), 0);
          again.send({ ...publishPacket(`devices/${victim.id}/state`, qos, 9), retain: true }, 4);
          assert.equal(await again.waitClosed(), true, `retained QoS ${qos}`);
          assert.equal(again.packets.length, 0, 'nothing but the CONNACK was sent');
        }
      }
      raw.close();
      for (const watcher of watchers) await watcher.quiet(`${NAME[version]} QoS 0/2/retained`);
      assert.deepEqual(await telemetry(victim.id), before);
      // The victim's retained state is still its own.
      const check = await connectDevice(tp.platform, victim, 5);
      const retained = new Promise<string>((resolve) => check.once('message', (_t, p) => resolve(p.toString('utf8'))));
      assert.deepEqual(await subscribeOutcome(check, [`devices/${victim.id}/state`]), [1]);
      assert.equal(await retained, '{"locked":true}');
      await endClient(check);
      // The watcher's connection was taken over by that check: start it again.
      watchers[0] = await Watcher.start(tp, victim);
    });

    test(`[CHAN-6] ${NAME[version]}: subscriptions that could reach another device are refused and deliver nothing`, async () => {
      const own = attacker.id;
      const v = victim.id;
      const refused = version === 5 ? NOT_AUTHORIZED : SUBACK_FAILURE_V4;
      const invalid = version === 5 ? TOPIC_FILTER_INVALID : SUBACK_FAILURE_V4;
      const cases: Array<[string, number]> = [
        ...[
          '#',
          '+',
          '+/#',
          '+/+',
          '+/+/+',
          '+/+/telemetry',
          'devices',
          'devices/#',
          'devices/+',
          'devices/+/#',
          'devices/+/telemetry',
          'devices/+/state',
          'devices/+/+/+',
          `devices/${v}/#`,
          `devices/${v}/+`,
          `devices/${v}/telemetry`,
          `devices/${v}/commands/#`,
          `devices/${stranger.id}/#`,
          `+/${v}/+`,
          `+/${v}/#`,
          `devices/${v}`,
          `devices/${own}`,
          `devices//${v}/#`,
          `/devices/${v}/#`,
          `devices/${v}/telemetry/`,
          `DEVICES/${v}/#`,
          ...lookAlikes(v).map((id) => `devices/${id}/#`),
          ...lookAlikes(own).map((id) => `devices/${id}/#`),
          // Shared subscriptions are authorised for the filter inside `$share/{group}/`.
          `$share/g/devices/+/telemetry`,
          `$share/g/devices/${v}/#`,
          '$share/g/#',
          `$share/${own}/devices/+/state`,
          '$SYS/#',
          '$SYS/+',
        ].map((f): [string, number] => [f, refused]),
        // Malformed filters are refused as such [MQTT-4.7.1-2] [MQTT-4.7.1-3].
        [`devices/${v}#`, invalid],
        [`devices/+${v}/#`, invalid],
        [`devices/${own}/#/telemetry`, invalid],
        // Inside the own namespace, literally: granted, and (levels being literal) harmless.
        [`devices/${own}/../${v}/#`, 1],
        [`devices/${own}/state`, 1],
        [`$share/g/devices/${own}/commands/#`, 1],
      ];
      // A raw client: mqtt.js would refuse to send the malformed filters.
      const raw = await RawMqtt.open(tp.platform, version);
      raw.send(connectPacket(version, attacker), version);
      assert.equal(connackCode(await raw.next('connack')), 0);
      raw.send({ cmd: 'subscribe', messageId: 1, subscriptions: cases.map(([topic]) => ({ topic, qos: 1 })) }, version);
      const granted = ((await raw.next('suback')) as { granted?: number[] } | undefined)?.granted ?? [];
      assert.deepEqual(
        cases.map(([f], i) => [f, granted[i]]),
        cases.map(([f, code]) => [f, code]),
      );
      // The victims publish on every channel (their retained states were already there).
      for (const d of [victim, stranger]) {
        const c = await connectDevice(tp.platform, d, 5);
        for (const channel of ['telemetry', 'state', 'events']) {
          assert.equal(await publishOutcome(c, `devices/${d.id}/${channel}`, '{"secret":1}', 1), 0);
        }
        await endClient(c);
      }
      // Barrier: the attacker's own state is routed back to it before its PUBACK; it is all that arrived.
      raw.send(publishPacket(`devices/${own}/state`, 1, 2), version);
      assert.deepEqual(pick(await raw.next('puback'), 'messageId'), [2]);
      assert.deepEqual(
        raw.packets.filter((p) => p.cmd === 'publish').map((p) => (p as { topic: string }).topic),
        [`devices/${own}/state`],
      );
      raw.close();
      // The victims' watchers were taken over by their publishing connections.
      watchers = [await Watcher.start(tp, victim), await Watcher.start(tp, stranger)];
    });

    test(`[CHAN-6] ${NAME[version]}: a will aimed at another device is refused at CONNECT`, async () => {
      const before = await telemetry(victim.id);
      for (const topic of [
        `devices/${victim.id}/telemetry`,
        `devices/${stranger.id}/state`,
        `devices/${attacker.id}/commands/x`,
      ]) {
        const outcome = await mqttConnect(tp.platform, {
          username: attacker.id,
          password: attacker.secret,
          protocolVersion: version,
          will: { topic, payload: Buffer.from('{"will":1}'), qos: 1, retain: false },
        });
        assert.equal(outcome.client, undefined, topic);
        assert.equal(outcome.refusedWith, CONNACK_NOT_AUTHORIZED[version], topic);
      }
      for (const watcher of watchers) await watcher.quiet(`${NAME[version]} wills`);
      assert.deepEqual(await telemetry(victim.id), before);
    });
  }

  test('[CHAN-6] MQTT 5: a topic alias cannot carry a publish into another namespace', async () => {
    const raw = await RawMqtt.open(tp.platform, 5);
    raw.send(connectPacket(5, attacker), 5);
    const connack = await raw.next('connack');
    assert.equal(connackCode(connack), 0);
    const max = (connack as { properties?: { topicAliasMaximum?: number } }).properties?.topicAliasMaximum ?? 0;
    const aliased = (topic: string, id: number) => ({ ...publishPacket(topic, 1, id), properties: { topicAlias: 1 } });
    if (max === 0) {
      // No aliases offered: using one is a protocol error (0x94), and nothing is published.
      raw.send(aliased(`devices/${victim.id}/telemetry`, 1), 5);
      assert.equal(reasonOf(await raw.next('disconnect')), 0x94);
    } else {
      // Alias 1 set together with a refused topic; the alias alone is then authorised as that topic.
      raw.send(aliased(`devices/${victim.id}/telemetry`, 1), 5);
      assert.deepEqual(pick(await raw.next('puback'), 'messageId', 'reasonCode'), [1, NOT_AUTHORIZED]);
      raw.send(aliased('', 2), 5);
      assert.deepEqual(pick(await raw.next('puback'), 'messageId', 'reasonCode'), [2, NOT_AUTHORIZED]);
      // Re-pointed at the own state topic, the same alias works.
      raw.send(aliased(`devices/${attacker.id}/state`, 3), 5);
      assert.deepEqual(pick(await raw.next('puback'), 'messageId', 'reasonCode'), [3, 0]);
      raw.send(aliased('', 4), 5);
      assert.deepEqual(pick(await raw.next('puback'), 'messageId', 'reasonCode'), [4, 0]);
      // And back at the victim: refused again.
      raw.send(aliased(`devices/${victim.id}/state`, 5), 5);
      raw.send(aliased('', 6), 5);
      assert.deepEqual(pick(await raw.next('puback'), 'messageId', 'reasonCode'), [5, NOT_AUTHORIZED]);
      assert.deepEqual(pick(await raw.next('puback'), 'messageId', 'reasonCode'), [6, NOT_AUTHORIZED]);
    }
    raw.close();
    for (const watcher of watchers) await watcher.quiet('topic aliases');
  });

  test('[CHAN-6] a U+0000 in a topic name closes the connection (0x81) instead of truncating to a victim topic', async () => {
    for (const version of [5, 4] as const) {
      const raw = await RawMqtt.open(tp.platform, version);
      raw.send(connectPacket(version, attacker), version);
      assert.equal(connackCode(await raw.next('connack')), 0);
      raw.send(publishPacket(`devices/${victim.id}/telemetry\u0000devices/${attacker.id}/telemetry`, 1, 1), version);
      // [MQTT-1.5.4-2] U+0000 in a UTF-8 string makes the packet malformed.
      if (version === 5) assert.equal(reasonOf(await raw.next('disconnect')), MALFORMED_PACKET);
      assert.equal(await raw.next('puback'), undefined);
      assert.equal(await raw.waitClosed(), true);
    }
    for (const watcher of watchers) await watcher.quiet('U+0000');
  });

  describe('[CHAN-6] properties: nothing the ACL allows can reach outside the own namespace', () => {
    const identity = (): ClientIdentity => ({
      principalId: attacker.id,
      kind: 'device',
      clientId: attacker.id,
      attributes: { vendorId: tenant.vendorId, productId: tenant.productId },
    });
    /** Strings from a small alphabet: both device IDs, wildcards, separators, `$`, and near misses. */
    const stringsOf = () => {
      const tokens = [
        attacker.id,
        victim.id,
        stranger.id,
        'devices',
        'DEVICES',
        '+',
        '#',
        '/',
        '$',
        '$share',
        '$SYS',
        'g',
        'telemetry',
        'state',
        'commands',
        '..',
        '',
        victim.id.toUpperCase(),
        attacker.id.slice(0, 12),
      ];
      const levels = tokens.filter((t) => t !== '/');
      return fc.oneof(
        // Arbitrary concatenations (mostly malformed or near misses)...
        fc.array(fc.constantFrom(...tokens), { minLength: 1, maxLength: 8 }).map((parts) => parts.join('')),
        // ...and well-formed level sequences.
        fc.array(fc.constantFrom(...levels), { minLength: 1, maxLength: 6 }).map((parts) => parts.join('/')),
        fc
          .array(fc.constantFrom(...levels), { minLength: 0, maxLength: 4 })
          .map((parts) => ['devices', attacker.id, ...parts].join('/')),
        // ...and the own prefix continued without a separator (`devices/{own}{other}`).
        fc
          .array(fc.constantFrom(...tokens), { minLength: 1, maxLength: 4 })
          .map((parts) => `devices/${attacker.id}${parts.join('')}`),
      );
    };

    test('[CHAN-6] authorizeSubscribe never allows a filter that could match another device topic', () => {
      const hooks = tp.platform.broker.hooks;
      let allowed = 0;
      fc.assert(
        fc.property(stringsOf(), (filter) => {
          if (!isValidFilter(filter)) return; // the broker refuses these before asking the hook
          if (!hooks.authorizeSubscribe(identity(), filter)) return;
          allowed++;
          assert.equal(couldReach(filter, victim.id), false, filter);
          assert.equal(couldReach(filter, stranger.id), false, filter);
          assert.equal(couldLeaveNamespace(filter, attacker.id), false, filter);
        }),
        { numRuns: 20_000 },
      );
      assert.ok(allowed > 100, `the property was exercised on allowed filters (${allowed})`);
    });

    test('[CHAN-6] authorizePublish never allows a topic outside the own namespace', () => {
      const hooks = tp.platform.broker.hooks;
      let allowed = 0;
      fc.assert(
        fc.property(stringsOf(), (topic) => {
          // A topic name has no wildcards [MQTT-3.3.2-2] and is not empty [MQTT-4.7.3-1].
          if (topic.length === 0 || topic.includes('+') || topic.includes('#')) return;
          if (!hooks.authorizePublish(identity(), topic)) return;
          allowed++;
          const levels = topic.split('/');
          assert.deepEqual(levels.slice(0, 2), ['devices', attacker.id], topic);
          assert.ok(['telemetry', 'state', 'events'].includes(levels[2]!), topic);
        }),
        { numRuns: 20_000 },
      );
      assert.ok(allowed > 20, `the property was exercised on allowed topics (${allowed})`);
    });

    for (const version of [5, 4] as const) {
      test(`[CHAN-6] ${NAME[version]} on the wire: SUBACK grants only filters confined to the own namespace, and nothing leaks`, async () => {
        const victimClient = await connectDevice(tp.platform, victim, 5);
        let grantedCount = 0;
        await fc.assert(
          fc.asyncProperty(fc.array(stringsOf(), { minLength: 1, maxLength: 6 }), async (filters) => {
            // An empty filter closes the connection [MQTT-4.7.3-1], as does (MQTT 5) a malformed shared
            // subscription [MQTT-4.8.2-1] [MQTT-4.8.2-2]: conformance matters, not the ACL; left out.
            filters = filters.filter(
              (f) => f.length > 0 && (version === 4 || !f.startsWith('$share/') || effectiveFilter(f) !== null),
            );
            if (filters.length === 0) return;
            // A fresh connection per run: a failure (or its shrinking) cannot spill into the next run.
            const raw = await RawMqtt.open(tp.platform, version);
            try {
              raw.send(connectPacket(version, attacker), version);
              assert.equal(connackCode(await raw.next('connack')), 0);
              raw.send(
                { cmd: 'subscribe', messageId: 1, subscriptions: filters.map((topic) => ({ topic, qos: 1 })) },
                version,
              );
              const suback = (await raw.next('suback')) as { messageId: number; granted: number[] } | undefined;
              assert.ok(suback, `connection closed after SUBSCRIBE ${JSON.stringify(filters)}`);
              assert.equal(suback.granted.length, filters.length);
              const grantedFilters = filters.filter((_, i) => suback.granted[i]! < 0x80);
              for (const filter of grantedFilters) {
                const effective = effectiveFilter(filter);
                assert.ok(effective !== null, `malformed filter granted: ${filter}`);
                assert.equal(couldLeaveNamespace(effective, attacker.id), false, filter);
                grantedCount++;
              }
              // The victim publishes; the attacker's own state is the barrier.
              assert.equal(await publishOutcome(victimClient, `devices/${victim.id}/state`, '{"v":1}', 1), 0);
              raw.send(publishPacket(`devices/${attacker.id}/state`, 1, 2), version);
              assert.deepEqual(pick(await raw.next('puback'), 'messageId'), [2]);
              for (const p of raw.packets.filter((x) => x.cmd === 'publish') as Array<{ topic: string }>) {
                assert.ok(
                  p.topic.startsWith(`devices/${attacker.id}/`),
                  `leaked ${p.topic} via ${JSON.stringify(filters)}`,
                );
              }
            } finally {
              raw.close();
              await raw.waitClosed();
            }
          }),
          { numRuns: 60 },
        );
        assert.ok(grantedCount > 0, 'some filters were granted');
        await endClient(victimClient);
        watchers[0] = await Watcher.start(tp, victim);
      });
    }
  });
});

function connectPacket(version: Version, device: Device): IConnectPacket {
  return {
    cmd: 'connect',
    protocolId: 'MQTT',
    protocolVersion: version,
    clientId: device.id,
    username: device.id,
    password: Buffer.from(device.secret),
    clean: true,
    keepalive: 30,
  };
}

function publishPacket(topic: string, qos: 0 | 1 | 2, messageId?: number): IPublishPacket {
  return {
    cmd: 'publish',
    topic,
    payload: Buffer.from('{"attack":1}'),
    qos,
    retain: false,
    dup: false,
    ...(qos > 0 ? { messageId } : {}),
  };
}

/** CONNACK return code (3.1.1) or reason code (5). */
function connackCode(packet: Packet | undefined): number | undefined {
  const p = packet as { returnCode?: number; reasonCode?: number } | undefined;
  return p?.reasonCode ?? p?.returnCode;
}

/** The reason code of a DISCONNECT (MQTT 5); undefined when the connection closed without one. */
function reasonOf(packet: Packet | undefined): number | undefined {
  return (packet as { reasonCode?: number } | undefined)?.reasonCode;
}

function pick(packet: Packet | undefined, ...keys: string[]): unknown[] {
  return keys.map((k) => (packet as Record<string, unknown> | undefined)?.[k]);
}
