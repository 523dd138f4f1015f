// SUBSCRIBE (3.8) and UNSUBSCRIBE (3.10): every filter is validated and authorised on its own; a
// refused filter gets a failure code in SUBACK and changes nothing.
import type { ISubscribePacket, IUnsubscribePacket } from 'mqtt-packet';
import type { MqttConnection } from '../mqtt-connection.ts';
import { ReasonCode, SUBACK_FAILURE_V4 } from '../reason-codes.ts';
import { checkTopicFilter, isSharedSubscription } from '../topic-rules.ts';

export function handleSubscribe(conn: MqttConnection, packet: ISubscribePacket): void {
  const broker = conn.broker;
  const v5 = conn.protocolVersion === 5;
  if (!packet.messageId) {
    conn.protocolViolation(ReasonCode.ProtocolError, 'SUBSCRIBE without a packet identifier');
    return;
  }
  if (!packet.subscriptions || packet.subscriptions.length === 0) {
    conn.protocolViolation(ReasonCode.ProtocolError, 'SUBSCRIBE without topic filters'); // [MQTT-3.8.3-3]
    return;
  }
  if (v5 && packet.properties?.subscriptionIdentifier !== undefined) {
    conn.protocolViolation(
      ReasonCode.SubscriptionIdentifiersNotSupported,
      'subscription identifiers are not supported',
    );
    return;
  }
  const identity = conn.identity!;
  const granted = packet.subscriptions.map((sub) => {
    const fail = (code: number) => (v5 ? code : SUBACK_FAILURE_V4);
    if (checkTopicFilter(sub.topic, broker.limits) !== null) return fail(ReasonCode.TopicFilterInvalid);
    if (isSharedSubscription(sub.topic)) return fail(ReasonCode.SharedSubscriptionsNotSupported);
    if (!broker.hooks.authorizeSubscribe(identity, sub.topic)) {
      broker.stats.subscribeDenied++;
      broker.hooks.onViolation?.({ remoteAddress: conn.remoteAddress, identity, what: 'subscribe-denied' });
      return fail(ReasonCode.NotAuthorized);
    }
    const exists = broker.subscriptions.has(conn.clientId, sub.topic);
    if (!exists && broker.subscriptions.countFor(conn.clientId) >= broker.limits.maxSubscriptionsPerClient) {
      return fail(ReasonCode.QuotaExceeded);
    }
    const qos = Math.min(sub.qos, 1) as 0 | 1; // granted QoS may be lower than requested [MQTT-3.9.3-2]
    broker.subscriptions.add({
      clientId: conn.clientId,
      filter: sub.topic,
      qos,
      noLocal: v5 && sub.nl === true,
    });
    return qos;
  });
  conn.write({ cmd: 'suback', messageId: packet.messageId, granted });
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
  const codes = packet.unsubscriptions.map((filter) =>
    conn.broker.subscriptions.remove(conn.clientId, filter) ? ReasonCode.Success : ReasonCode.NoSubscriptionExisted,
  );
  conn.write(
    conn.protocolVersion === 5
      ? { cmd: 'unsuback', messageId: packet.messageId, granted: codes }
      : { cmd: 'unsuback', messageId: packet.messageId, granted: [] },
  );
}
