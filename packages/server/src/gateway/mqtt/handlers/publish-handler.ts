// PUBLISH from a client (3.3): validate, authorise, hand to the durable hook, then retain, route and
// acknowledge in arrival order. QoS 1 and 2 are acknowledged only after the hook's write settled and,
// when routing wrote to the broker store (retained, or queued for a persistent session), after the
// store flushed. With a synchronous hook and nothing stored, a message is routed and acknowledged in
// the same turn: no promise per message.
import { isUtf8 } from 'node:buffer';
import type { IPublishPacket } from 'mqtt-packet';
import { type InboundMessage, PublishRefusedError } from '../broker-hooks.ts';
import type { MessageProperties } from '../broker-store.ts';
import type { PayloadCodec } from '../listener-profile.ts';
import type { MqttConnection } from '../mqtt-connection.ts';
import { orderedUserProperties } from '../publish-codec.ts';
import { ReasonCode } from '../reason-codes.ts';
import type { OutboundMessage } from '../session.ts';
import { checkTopicName } from '../topic-rules.ts';

const REFUSAL_CODES: Record<PublishRefusedError['reason'], number> = {
  'quota-exceeded': ReasonCode.QuotaExceeded,
  'payload-invalid': ReasonCode.PayloadFormatInvalid,
  // PUBACK has no "message rate too high" (0x96 is a DISCONNECT code): over-rate is a quota refusal.
  'rate-limited': ReasonCode.QuotaExceeded,
  unavailable: ReasonCode.ImplementationSpecificError,
};

/** The hook accepted the message. */
const ACCEPTED = Symbol('accepted');

interface PublishContext {
  readonly qos: 0 | 1 | 2;
  readonly packetId: number;
  readonly message: OutboundMessage;
  /** The QoS 2 identifier was written to the store (persistent session). */
  readonly qos2Stored: boolean;
}

function isPromiseLike(value: unknown): value is PromiseLike<unknown> {
  return typeof (value as { then?: unknown } | null | undefined)?.then === 'function';
}

/** The forwardable MQTT 5 properties of a PUBLISH or a will [MQTT-3.3.2-17] [MQTT-3.3.2-18]. */
export function messageProperties(
  source: NonNullable<IPublishPacket['properties']> | undefined,
): MessageProperties | undefined {
  if (!source) return undefined;
  const { payloadFormatIndicator, contentType, responseTopic, correlationData, userProperties } = source;
  if (
    payloadFormatIndicator === undefined &&
    contentType === undefined &&
    responseTopic === undefined &&
    correlationData === undefined &&
    userProperties === undefined
  ) {
    return undefined;
  }
  const out: {
    payloadFormatIndicator?: boolean;
    contentType?: string;
    responseTopic?: string;
    correlationData?: Buffer;
    userProperties?: Record<string, string | string[]>;
  } = {};
  if (payloadFormatIndicator !== undefined) out.payloadFormatIndicator = payloadFormatIndicator;
  if (contentType !== undefined) out.contentType = contentType;
  if (responseTopic !== undefined) out.responseTopic = responseTopic;
  if (correlationData !== undefined) out.correlationData = correlationData;
  if (userProperties !== undefined) out.userProperties = userProperties;
  return out;
}

/** Absolute expiry from a Message Expiry Interval; absent (or 0, as Mosquitto reads it) = never. */
export function expiresAtFrom(intervalSeconds: number | undefined, now: number): number | null {
  return intervalSeconds === undefined || intervalSeconds === 0 ? null : now + intervalSeconds * 1000;
}

/** Refuses a PUBLISH: MQTT 5 QoS 1/2 with a negative PUBACK/PUBREC, otherwise by closing. */
function refusePublish(conn: MqttConnection, qos: 0 | 1 | 2, packetId: number, code: number): void {
  // A refused QoS 2 message is not awaiting PUBREL: a resend must be processed as new (MQTT 5 4.3.3).
  if (qos === 2) conn.session?.dropInboundQos2(packetId);
  if (conn.protocolVersion === 5 && qos === 1) {
    conn.writeAck('puback', packetId, code);
  } else if (conn.protocolVersion === 5 && qos === 2) {
    conn.writeAck('pubrec', packetId, code);
  } else {
    // [MQTT-3.3.5-2] (3.1.1) no negative acknowledgement exists: refusing means closing; MQTT 5 QoS 0
    // has no acknowledgement to carry the reason, so the DISCONNECT carries it.
    conn.disconnect(code);
  }
}

/**
 * A frame the codec refused: nothing reaches the hooks. QoS 1/2 get PUBACK/PUBREC 0x99 in order behind
 * the messages already in the pipeline; QoS 0 has no acknowledgement and is dropped (counted by the
 * codec). Past the codec's refusal limit the connection ends with DISCONNECT 0x99.
 */
function refuseFrame(conn: MqttConnection, codec: PayloadCodec, qos: 0 | 1 | 2, packetId: number): void {
  conn.broker.stats.publishRefused++;
  afterPending(conn, () => {
    if (qos > 0) refusePublish(conn, qos, packetId, ReasonCode.PayloadFormatInvalid);
    if (codec.exhausted) conn.disconnect(ReasonCode.PayloadFormatInvalid);
    return undefined;
  });
}

function acknowledge(conn: MqttConnection, qos: 1 | 2, packetId: number): void {
  conn.writeAck(qos === 1 ? 'puback' : 'pubrec', packetId);
}

export function handlePublish(conn: MqttConnection, packet: IPublishPacket): void {
  const broker = conn.broker;
  const v5 = conn.protocolVersion === 5;
  const qos = packet.qos;
  const session = conn.session!;
  const packetId = packet.messageId ?? 0;
  if (qos > 0 && packetId === 0) {
    // [MQTT-2.2.1-3] QoS 1 and 2 PUBLISH packets carry a non-zero packet identifier.
    conn.protocolViolation(ReasonCode.ProtocolError, 'PUBLISH without a packet identifier');
    return;
  }
  let topic = packet.topic;
  const props = v5 ? packet.properties : undefined;
  const alias = props?.topicAlias;
  if (props) {
    if (alias !== undefined) {
      // [MQTT-3.3.2-8] [MQTT-3.3.2-9] 0 and values above our Topic Alias Maximum are invalid.
      if (alias === 0 || alias > broker.topicAliasMaximum) {
        conn.protocolViolation(ReasonCode.TopicAliasInvalid, 'topic alias out of range');
        return;
      }
      if (topic.length === 0) {
        const known = conn.topicAliases?.get(alias);
        if (known === undefined) {
          conn.protocolViolation(ReasonCode.ProtocolError, 'unknown topic alias'); // 3.3.2.3.4
          return;
        }
        topic = known;
      }
    }
    if (props.subscriptionIdentifier !== undefined) {
      // [MQTT-3.3.4-6] only the server sends Subscription Identifiers.
      conn.protocolViolation(ReasonCode.ProtocolError, 'subscription identifier from a client');
      return;
    }
  }
  if (v5 && topic.length === 0) {
    conn.protocolViolation(ReasonCode.ProtocolError, 'empty topic name without a topic alias'); // 3.3.2.1
    return;
  }
  const reason = checkTopicName(topic, broker.limits);
  if (reason !== null) {
    conn.protocolViolation(ReasonCode.TopicNameInvalid, reason);
    return;
  }
  if (alias !== undefined && packet.topic.length > 0) (conn.topicAliases ??= new Map()).set(alias, topic);

  if (qos === 2 && session.inboundQos2.has(packetId)) {
    // [MQTT-4.3.3-10] a PUBLISH whose PUBREL has not arrived is acknowledged again, not routed again.
    afterPending(conn, () => {
      if (session.inboundQos2.has(packetId)) acknowledge(conn, 2, packetId);
      return undefined;
    });
    return;
  }
  if (qos > 0 && v5) {
    const inUse = conn.inboundInflight - conn.inboundQos2InPipeline + session.inboundQos2.size;
    if (inUse >= broker.limits.maxInflight) {
      conn.protocolViolation(ReasonCode.ReceiveMaximumExceeded, 'receive maximum exceeded'); // [MQTT-3.3.4-9]
      return;
    }
  }
  let payload = typeof packet.payload === 'string' ? Buffer.from(packet.payload) : packet.payload;
  const codec = conn.payloadCodec;
  if (codec !== undefined) {
    // A secure-channel client (CHAN-3, CHAN-4): the payload is a sealed frame, opened here, in arrival
    // order, before the ACL, limits, checks and the durable hook see anything.
    const opened = codec.open(payload);
    if (opened === null) {
      refuseFrame(conn, codec, qos, packetId);
      return;
    }
    payload = opened;
  }
  if (props?.payloadFormatIndicator === true && !isUtf8(payload)) {
    // [MQTT-3.3.2-4] the server may check that a payload said to be UTF-8 is: it does.
    broker.stats.publishRefused++;
    refusePublish(conn, qos, packetId, ReasonCode.PayloadFormatInvalid);
    return;
  }
  const identity = conn.identity!;
  // `$` topics are the server's (e.g. $SYS, 4.7.2): no client may publish to one.
  if (topic.charCodeAt(0) === 0x24 || !broker.hooks.authorizePublish(identity, topic)) {
    broker.stats.publishDenied++;
    broker.reportViolation({ remoteAddress: conn.remoteAddress, identity, what: 'publish-denied' });
    refusePublish(conn, qos, packetId, ReasonCode.NotAuthorized);
    return;
  }
  const qos2Stored = qos === 2 && session.addInboundQos2(packetId);
  broker.stats.messagesIn++;
  const receivedAt = Date.now();
  const properties = messageProperties(props);
  const message: OutboundMessage = {
    topic,
    payload,
    qos,
    retain: packet.retain,
    properties,
    expiresAt: expiresAtFrom(props?.messageExpiryInterval, receivedAt),
    userPropertyList: properties?.userProperties === undefined ? undefined : orderedUserProperties(packet),
  };
  const inbound: InboundMessage = { topic, payload, qos, retain: packet.retain, properties, receivedAt };
  const context: PublishContext = { qos, packetId, message, qos2Stored };

  let result: unknown;
  let threw = false;
  try {
    result = broker.hooks.onPublish(identity, inbound);
  } catch (error) {
    threw = true;
    result = error;
  }
  if (!isPromiseLike(result) && conn.pendingPublishes === 0) {
    // Fast path: nothing ahead of it and the hook answered at once.
    let flushing: Promise<void> | undefined;
    try {
      flushing = complete(conn, context, threw ? result : ACCEPTED);
    } catch (error) {
      conn.internalError(error);
      return;
    }
    if (flushing) track(conn, qos, flushing);
    return;
  }
  const stored = threw
    ? Promise.reject(result instanceof Error ? result : new Error(String(result)))
    : Promise.resolve(result);
  const previous = conn.publishTail;
  track(
    conn,
    qos,
    Promise.allSettled([previous, stored]).then(([, outcome]) =>
      complete(conn, context, outcome.status === 'fulfilled' ? ACCEPTED : outcome.reason),
    ),
  );
}

/** Counts a publish in the pipeline until `work` settles; later packets queue behind it. */
function track(conn: MqttConnection, qos: 0 | 1 | 2, work: Promise<unknown>): void {
  conn.pendingPublishes++;
  if (qos > 0) {
    conn.inboundInflight++;
    if (qos === 2) conn.inboundQos2InPipeline++;
    // 3.1.1 has no Receive Maximum: stop reading until the store catches up (backpressure).
    if (conn.protocolVersion !== 5 && conn.inboundInflight >= conn.broker.limits.maxInflight) conn.socket.pause();
  }
  const done = () => {
    conn.pendingPublishes--;
    if (qos > 0) {
      if (qos === 2) conn.inboundQos2InPipeline--;
      conn.inboundSettled();
    }
  };
  // A bug in routing or acknowledging must cost this connection, never the process.
  conn.publishTail = work.then(done, (error: unknown) => {
    done();
    conn.internalError(error);
  });
}

/**
 * Runs `action` after every PUBLISH already in the pipeline was acknowledged, keeping the order; when
 * it returns a promise (waiting for the store), later packets wait for that too.
 */
export function afterPending(conn: MqttConnection, action: () => Promise<void> | undefined): void {
  if (conn.pendingPublishes === 0) {
    const waiting = action();
    if (waiting) chain(conn, waiting);
    return;
  }
  chain(
    conn,
    conn.publishTail.then(() => action()),
  );
}

function chain(conn: MqttConnection, work: Promise<unknown>): void {
  conn.pendingPublishes++;
  conn.publishTail = work.then(
    () => {
      conn.pendingPublishes--;
    },
    (error: unknown) => {
      conn.pendingPublishes--;
      conn.internalError(error);
    },
  );
}

/** Routes and acknowledges an accepted message, or refuses it; a promise when waiting for the store. */
function complete(conn: MqttConnection, context: PublishContext, outcome: unknown): Promise<void> | undefined {
  const broker = conn.broker;
  const { qos, packetId } = context;
  if (outcome === ACCEPTED) {
    const stored = broker.publish(context.message, conn.clientId);
    if (qos === 0) return undefined;
    if (broker.durable && (stored || context.qos2Stored)) {
      return broker.flushStore().then(
        () => acknowledge(conn, qos, packetId),
        (error: unknown) => {
          broker.stats.publishRefused++;
          broker.log.error({ err: error }, 'mqtt: broker store flush failed');
          refusePublish(conn, qos, packetId, ReasonCode.UnspecifiedError);
        },
      );
    }
    acknowledge(conn, qos, packetId);
    return undefined;
  }
  const error = outcome;
  const code = error instanceof PublishRefusedError ? REFUSAL_CODES[error.reason] : ReasonCode.UnspecifiedError;
  broker.stats.publishRefused++;
  if (!(error instanceof PublishRefusedError)) broker.log.error({ err: error }, 'mqtt: publish hook failed');
  const v5 = conn.protocolVersion === 5;
  if (error instanceof PublishRefusedError && error.disconnect) {
    if (v5 && qos > 0) refusePublish(conn, qos, packetId, code);
    conn.disconnect(error.reason === 'rate-limited' ? ReasonCode.MessageRateTooHigh : code);
  } else if (qos > 0 || !v5) {
    refusePublish(conn, qos, packetId, code);
  } else if (code === ReasonCode.PayloadFormatInvalid) {
    // MQTT 5 QoS 0 has no acknowledgement: a malformed payload is the client's bug, say so and close.
    conn.disconnect(code);
  }
  // Otherwise MQTT 5 QoS 0 over quota or while storage is down: dropped and counted (at-most-once).
  return undefined;
}
