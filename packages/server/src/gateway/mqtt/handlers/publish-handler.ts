// PUBLISH from a client (3.3): validate, authorise, hand to the durable hook, then route and
// acknowledge in arrival order. QoS 1 is acknowledged only after the hook's write settled.
import type { IPublishPacket } from 'mqtt-packet';
import { type InboundMessage, PublishRefusedError } from '../broker-hooks.ts';
import type { MqttConnection } from '../mqtt-connection.ts';
import { ReasonCode } from '../reason-codes.ts';
import { checkTopicName } from '../topic-rules.ts';

const REFUSAL_CODES: Record<PublishRefusedError['reason'], number> = {
  'quota-exceeded': ReasonCode.QuotaExceeded,
  'payload-invalid': ReasonCode.PayloadFormatInvalid,
  // PUBACK has no "message rate too high" (0x96 is a DISCONNECT code): over-rate is a quota refusal.
  'rate-limited': ReasonCode.QuotaExceeded,
  unavailable: ReasonCode.ImplementationSpecificError,
};

export function handlePublish(conn: MqttConnection, packet: IPublishPacket): void {
  const broker = conn.broker;
  const v5 = conn.protocolVersion === 5;
  if (packet.qos === 2) {
    // Maximum QoS 1 is advertised [MQTT-3.2.2-11 (v5)]; 3.1.1 cannot say so, so it closes.
    conn.protocolViolation(ReasonCode.QoSNotSupported, 'QoS 2 is not supported');
    return;
  }
  if (packet.qos === 1 && !packet.messageId) {
    conn.protocolViolation(ReasonCode.ProtocolError, 'QoS 1 PUBLISH without a packet identifier'); // [MQTT-2.3.1-1]
    return;
  }
  if (v5 && packet.properties?.topicAlias !== undefined) {
    conn.protocolViolation(ReasonCode.TopicAliasInvalid, 'topic aliases are not accepted'); // Topic Alias Maximum is 0
    return;
  }
  if (packet.retain) {
    conn.protocolViolation(ReasonCode.RetainNotSupported, 'retained messages are not supported');
    return;
  }
  const reason = checkTopicName(packet.topic, broker.limits);
  if (reason !== null) {
    conn.protocolViolation(ReasonCode.TopicNameInvalid, reason);
    return;
  }
  const identity = conn.identity!;
  if (!broker.hooks.authorizePublish(identity, packet.topic)) {
    broker.stats.publishDenied++;
    broker.hooks.onViolation?.({ remoteAddress: conn.remoteAddress, identity, what: 'publish-denied' });
    if (v5 && packet.qos === 1) {
      conn.write({ cmd: 'puback', messageId: packet.messageId!, reasonCode: ReasonCode.NotAuthorized });
      return;
    }
    // [MQTT-3.3.5-2] (3.1.1): refuse by closing the connection; MQTT 5 QoS 0 has no ack to carry it.
    conn.disconnect(ReasonCode.NotAuthorized);
    return;
  }
  if (packet.qos === 1) {
    if (v5 && conn.inboundInflight >= broker.limits.maxInflight) {
      conn.protocolViolation(ReasonCode.ReceiveMaximumExceeded, 'receive maximum exceeded'); // [MQTT-3.3.4-9]
      return;
    }
    conn.inboundInflight++;
    // 3.1.1 has no Receive Maximum: stop reading until the store catches up (backpressure).
    if (!v5 && conn.inboundInflight >= broker.limits.maxInflight) conn.socket.pause();
  }
  broker.stats.messagesIn++;
  const payload = typeof packet.payload === 'string' ? Buffer.from(packet.payload) : packet.payload;
  const message: InboundMessage = { topic: packet.topic, payload, qos: packet.qos, receivedAt: Date.now() };
  let stored: Promise<void>;
  try {
    stored = Promise.resolve(broker.hooks.onPublish(identity, message));
  } catch (error) {
    stored = Promise.reject(error instanceof Error ? error : new Error(String(error)));
  }
  const previous = conn.publishTail;
  conn.publishTail = Promise.allSettled([previous, stored]).then(([, outcome]) => {
    if (packet.qos === 1) conn.inboundSettled();
    if (outcome.status === 'fulfilled') {
      broker.route({ topic: message.topic, payload, qos: message.qos, retain: false }, conn.clientId);
      if (packet.qos === 1) conn.write({ cmd: 'puback', messageId: packet.messageId!, reasonCode: ReasonCode.Success });
      return;
    }
    const error: unknown = outcome.reason;
    const code = error instanceof PublishRefusedError ? REFUSAL_CODES[error.reason] : ReasonCode.UnspecifiedError;
    broker.stats.publishRefused++;
    if (!(error instanceof PublishRefusedError)) broker.log.error({ err: error }, 'mqtt: publish hook failed');
    if (error instanceof PublishRefusedError && error.disconnect) {
      if (v5 && packet.qos === 1) conn.write({ cmd: 'puback', messageId: packet.messageId!, reasonCode: code });
      conn.disconnect(error.reason === 'rate-limited' ? ReasonCode.MessageRateTooHigh : code);
    } else if (v5 && packet.qos === 1) {
      conn.write({ cmd: 'puback', messageId: packet.messageId!, reasonCode: code });
    } else if (!v5) {
      // 3.1.1 has no negative acknowledgement: closing is the only honest refusal.
      conn.disconnect(code);
    } else if (code === ReasonCode.PayloadFormatInvalid) {
      // MQTT 5 QoS 0 has no acknowledgement: a malformed payload is the client's bug, say so and close.
      conn.disconnect(code);
    }
    // MQTT 5 QoS 0 over quota or while storage is down: dropped and counted (at-most-once allows it).
  });
  // A bug in routing or acknowledging must cost this connection, never the process.
  conn.publishTail = conn.publishTail.catch((error: unknown) => conn.internalError(error));
}
