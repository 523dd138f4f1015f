// SUBSCRIBE (3.8) and UNSUBSCRIBE (3.10): every filter is validated and authorised on its own; a
// refused filter gets a failure code in SUBACK and changes nothing. Retained messages follow the SUBACK
// according to each subscription's Retain Handling.
import type { ISubscribePacket, IUnsubscribePacket } from 'mqtt-packet';
import type { MqttConnection } from '../mqtt-connection.ts';
import { ReasonCode, SUBACK_FAILURE_V4 } from '../reason-codes.ts';
import { type SubscriptionEntry, subscriptionEntry } from '../subscription-index.ts';
import { checkTopicFilter, isSharedSubscription, parseSharedSubscription } from '../topic-rules.ts';

/** Largest Subscription Identifier (a Variable Byte Integer) [MQTT 5 3.8.2.1.2]. */
const MAX_SUBSCRIPTION_IDENTIFIER = 268_435_455;

export function handleSubscribe(conn: MqttConnection, packet: ISubscribePacket): void {
  const broker = conn.broker;
  const v5 = conn.protocolVersion === 5;
  if (!packet.messageId) {
    conn.protocolViolation(ReasonCode.ProtocolError, 'SUBSCRIBE without a packet identifier'); // [MQTT-2.2.1-3]
    return;
  }
  if (!packet.subscriptions || packet.subscriptions.length === 0) {
    conn.protocolViolation(ReasonCode.ProtocolError, 'SUBSCRIBE without topic filters'); // [MQTT-3.8.3-3]
    return;
  }
  let subscriptionIdentifier: number | undefined;
  if (v5 && packet.properties?.subscriptionIdentifier !== undefined) {
    const id: unknown = packet.properties.subscriptionIdentifier;
    // More than one, or 0, is a Protocol Error (MQTT 5 3.8.2.1.2).
    if (typeof id !== 'number' || id < 1 || id > MAX_SUBSCRIPTION_IDENTIFIER) {
      conn.protocolViolation(ReasonCode.ProtocolError, 'invalid subscription identifier');
      return;
    }
    subscriptionIdentifier = id;
  }
  for (const sub of packet.subscriptions) {
    // [MQTT-3.8.3-4] No Local on a shared subscription is a Protocol Error.
    if (v5 && sub.nl === true && isSharedSubscription(sub.topic)) {
      conn.protocolViolation(ReasonCode.ProtocolError, 'No Local on a shared subscription');
      return;
    }
  }
  const identity = conn.identity!;
  const session = conn.session!;
  const retained: SubscriptionEntry[] = [];
  const granted: number[] = [];
  for (const sub of packet.subscriptions) {
    const fail = (code: number) => granted.push(v5 ? code : SUBACK_FAILURE_V4);
    let topicFilter = sub.topic;
    let group: string | undefined;
    if (isSharedSubscription(sub.topic)) {
      const shared = parseSharedSubscription(sub.topic);
      if (!shared) {
        fail(ReasonCode.TopicFilterInvalid); // [MQTT-4.8.2-1] [MQTT-4.8.2-2]
        continue;
      }
      topicFilter = shared.filter;
      group = shared.group;
    }
    if (checkTopicFilter(topicFilter, broker.limits) !== null) {
      fail(ReasonCode.TopicFilterInvalid);
      continue;
    }
    // A shared subscription is authorised for the filter it matches, not for the `$share/` prefix.
    if (!broker.hooks.authorizeSubscribe(identity, topicFilter)) {
      broker.stats.subscribeDenied++;
      broker.reportViolation({ remoteAddress: conn.remoteAddress, identity, what: 'subscribe-denied' });
      fail(ReasonCode.NotAuthorized);
      continue;
    }
    const exists = broker.subscriptions.has(conn.clientId, sub.topic);
    if (!exists && broker.subscriptions.countFor(conn.clientId) >= broker.limits.maxSubscriptionsPerClient) {
      fail(ReasonCode.QuotaExceeded);
      continue;
    }
    const qos = sub.qos;
    const retainHandling = (v5 ? (sub.rh ?? 0) : 0) as 0 | 1 | 2;
    const entry = subscriptionEntry({
      clientId: conn.clientId,
      filter: sub.topic,
      topicFilter,
      group,
      qos,
      noLocal: v5 && sub.nl === true,
      // 3.1.1 always forwards RETAIN=0 on established subscriptions [MQTT-3.3.1-9 (3.1.1)].
      retainAsPublished: v5 && sub.rap === true,
      retainHandling,
      subscriptionIdentifier,
    });
    broker.addSubscription(session, entry);
    // [MQTT-3.3.1-9] [MQTT-3.3.1-10] [MQTT-3.3.1-11] Retain Handling 0: always, 1: only if new, 2: never;
    // never for shared subscriptions (MQTT 5 4.8.2).
    if (group === undefined && (retainHandling === 0 || (retainHandling === 1 && !exists))) retained.push(entry);
    granted.push(qos);
  }
  conn.write({ cmd: 'suback', messageId: packet.messageId, granted });
  let stored = false;
  for (const entry of retained) if (broker.deliverRetained(session, entry)) stored = true;
  if (stored && broker.durable) {
    broker.flushStore().catch((error: unknown) => broker.log.error({ err: error }, 'mqtt: store flush failed'));
  }
}

export function handleUnsubscribe(conn: MqttConnection, packet: IUnsubscribePacket): void {
  if (!packet.messageId) {
    conn.protocolViolation(ReasonCode.ProtocolError, 'UNSUBSCRIBE without a packet identifier');
    return;
  }
  if (!packet.unsubscriptions || packet.unsubscriptions.length === 0) {
    conn.protocolViolation(ReasonCode.ProtocolError, 'UNSUBSCRIBE without topic filters'); // [MQTT-3.10.3-2]
    return;
  }
  const session = conn.session!;
  const codes = packet.unsubscriptions.map((filter) =>
    conn.broker.removeSubscription(session, filter) ? ReasonCode.Success : ReasonCode.NoSubscriptionExisted,
  );
  conn.write(
    conn.protocolVersion === 5
      ? { cmd: 'unsuback', messageId: packet.messageId, granted: codes }
      : { cmd: 'unsuback', messageId: packet.messageId, granted: [] },
  );
}
