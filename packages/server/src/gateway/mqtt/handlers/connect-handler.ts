// CONNECT (MQTT 3.1.1 3.1, MQTT 5 3.1): protocol checks, authentication through the hook, client ID
// policy, will validation, session takeover or resumption, CONNACK.
import { isUtf8 } from 'node:buffer';
import type { Duplex } from 'node:stream';
import { TLSSocket } from 'node:tls';
import mqttPacket, { type IConnackPacket, type IConnectPacket } from 'mqtt-packet';
import type { AuthenticateResult, ClientIdentity } from '../broker-hooks.ts';
import { refusalProperties } from '../connection-admission.ts';
import type { EnhancedAuthenticateResult, PayloadCodec } from '../listener-profile.ts';
import type { MqttConnection, PendingWill } from '../mqtt-connection.ts';
import { ConnackReturnCode, ReasonCode } from '../reason-codes.ts';
import { checkTopicName } from '../topic-rules.ts';
import { messageProperties } from './publish-handler.ts';

const MAX_CLIENT_ID_LENGTH = 256;

/** The TLS client certificate (DER) of the connection, when one was presented (DEV-5 mutual TLS). */
function peerCertificateOf(socket: Duplex): { peerCertificate?: Buffer } {
  if (!(socket instanceof TLSSocket)) return {};
  const cert = socket.getPeerX509Certificate();
  return cert ? { peerCertificate: cert.raw } : {};
}

/**
 * Sends a refusing CONNACK in the client's protocol version and closes [MQTT-3.2.2-5]. MQTT 5 refusals
 * for load or rate (0x9F, 0x89, 0x88) carry a `retry-after` User Property (connection-admission.ts);
 * MQTT 3.1.1 has no properties to carry it.
 */
function refuse(conn: MqttConnection, v4Code: number, v5Code: number, connect?: IConnectPacket): void {
  conn.broker.stats.connectsRefused++;
  const packet: IConnackPacket =
    conn.protocolVersion === 5
      ? {
          cmd: 'connack',
          sessionPresent: false,
          reasonCode: v5Code,
          ...refusalProperties(conn.broker, conn.remoteAddress, v5Code, connect?.properties?.maximumPacketSize),
        }
      : { cmd: 'connack', sessionPresent: false, returnCode: v4Code };
  conn.write(packet);
  conn.destroy();
}

/** An authenticated client refused all the same: the hook hears of it (it may audit), safely. */
function refusedAfterAuthentication(
  conn: MqttConnection,
  identity: ClientIdentity,
  reasonCode: number,
  reason: 'client-id-mismatch' | 'will-refused',
): void {
  try {
    conn.broker.hooks.onConnectRefused?.(identity, { remoteAddress: conn.remoteAddress, reasonCode, reason });
  } catch (error) {
    conn.broker.log.error({ err: error }, 'mqtt: onConnectRefused hook failed');
  }
}

function checkWill(
  conn: MqttConnection,
  packet: IConnectPacket,
  identity: ClientIdentity,
): PendingWill | { v4: number; v5: number } | undefined {
  const will = packet.will;
  if (!will) return undefined;
  const limits = conn.broker.limits;
  if (checkTopicName(will.topic, limits) !== null) {
    return { v4: ConnackReturnCode.NotAuthorized, v5: ReasonCode.TopicNameInvalid };
  }
  // As for PUBLISH, `$` topics are the server's.
  if (will.topic.startsWith('$') || !conn.broker.hooks.authorizePublish(identity, will.topic)) {
    return { v4: ConnackReturnCode.NotAuthorized, v5: ReasonCode.NotAuthorized };
  }
  const payload = typeof will.payload === 'string' ? Buffer.from(will.payload) : Buffer.from(will.payload ?? []);
  const v5 = conn.protocolVersion === 5;
  const properties = v5 ? will.properties : undefined;
  // MQTT 5 3.1.3.2.3: the server may check a will said to be UTF-8: it does (0x99).
  if (properties?.payloadFormatIndicator === true && !isUtf8(payload)) {
    return { v4: ConnackReturnCode.NotAuthorized, v5: ReasonCode.PayloadFormatInvalid };
  }
  const expiry = properties?.messageExpiryInterval;
  return {
    topic: will.topic,
    payload,
    qos: will.qos ?? 0,
    retain: will.retain === true,
    properties: messageProperties(properties),
    expirySeconds: expiry === undefined || expiry === 0 ? null : expiry,
    delaySeconds: properties?.willDelayInterval ?? 0,
  };
}

export function handleConnect(conn: MqttConnection, packet: IConnectPacket): void {
  // [MQTT-3.1.0-2] a second CONNECT is a protocol violation.
  if (conn.state !== 'new') {
    conn.protocolViolation(ReasonCode.ProtocolError, 'second CONNECT');
    return;
  }
  conn.state = 'authenticating';
  const version = packet.protocolVersion;
  if (version !== 4 && version !== 5) {
    // [MQTT-3.1.2-2] unsupported protocol level: CONNACK 0x01, then close.
    conn.protocolVersion = 4;
    refuse(conn, ConnackReturnCode.UnacceptableProtocolVersion, ReasonCode.UnsupportedProtocolVersion);
    return;
  }
  conn.protocolVersion = version;
  const clientId = packet.clientId ?? '';
  const clean = packet.clean !== false;
  if (clientId.length > MAX_CLIENT_ID_LENGTH || clientId.includes('\u0000')) {
    refuse(conn, ConnackReturnCode.IdentifierRejected, ReasonCode.ClientIdentifierNotValid);
    return;
  }
  // [MQTT-3.1.3-8] (3.1.1) an empty client ID requires a clean session.
  if (clientId === '' && version === 4 && !clean) {
    refuse(conn, ConnackReturnCode.IdentifierRejected, ReasonCode.ClientIdentifierNotValid);
    return;
  }
  const method = version === 5 ? packet.properties?.authenticationMethod : undefined;
  const profile = conn.profile;
  if (profile !== undefined && version !== 5) {
    // A listener with a profile serves its Authentication Method only (no fallback to plain MQTT);
    // MQTT 3.1.1 has no Authentication Data to carry the answer back: an unacceptable protocol level.
    refuse(conn, ConnackReturnCode.UnacceptableProtocolVersion, ReasonCode.UnsupportedProtocolVersion);
    return;
  }
  if (method !== profile?.authenticationMethod) {
    // [MQTT-4.12.0-1 (v5)] an unsupported method (on the TLS listener: any; with a profile: any other,
    // or none) is refused with 0x8C and the connection closed. 3.1.1 never gets here with a profile.
    refuse(conn, ConnackReturnCode.NotAuthorized, ReasonCode.BadAuthenticationMethod);
    return;
  }
  if (version === 5 && (packet.properties?.receiveMaximum === 0 || packet.properties?.maximumPacketSize === 0)) {
    // Receive Maximum 0 and Maximum Packet Size 0 are Protocol Errors (MQTT 5 3.1.2.11.3, 3.1.2.11.4).
    // The packet validator closes such a CONNECT first; kept so this handler is safe on its own.
    refuse(conn, ConnackReturnCode.IdentifierRejected, ReasonCode.ProtocolError);
    return;
  }
  const broker = conn.broker;
  const request = {
    clientId,
    username: packet.username,
    password: packet.password,
    protocolVersion: conn.protocolVersion,
    remoteAddress: conn.remoteAddress,
    ...peerCertificateOf(conn.socket),
  };
  const authenticating: Promise<AuthenticateResult | EnhancedAuthenticateResult> =
    profile !== undefined && method !== undefined
      ? profile.authenticate({
          ...request,
          authenticationMethod: method,
          authenticationData: packet.properties?.authenticationData,
          hasWill: packet.will !== undefined,
        })
      : broker.hooks.authenticate(request);
  authenticating
    .then(
      (result) => {
        if (conn.state !== 'authenticating') return; // the client went away meanwhile
        if (!result.ok) {
          broker.stats.authFailures++;
          if (result.reason === 'server-busy') {
            refuse(conn, ConnackReturnCode.ServerUnavailable, ReasonCode.ServerBusy, packet);
          } else if (result.reason === 'banned') refuse(conn, ConnackReturnCode.NotAuthorized, ReasonCode.Banned);
          else if (result.reason === 'rate-limited') {
            refuse(conn, ConnackReturnCode.ServerUnavailable, ReasonCode.ConnectionRateExceeded, packet);
          } else if (result.reason === 'not-authorized')
            refuse(conn, ConnackReturnCode.NotAuthorized, ReasonCode.NotAuthorized);
          else refuse(conn, ConnackReturnCode.BadUserNameOrPassword, ReasonCode.BadUserNameOrPassword);
          return;
        }
        const enhanced =
          'codec' in result && method !== undefined
            ? { method, data: result.authenticationData, codec: result.codec }
            : undefined;
        accept(conn, packet, result.identity, clientId, clean, enhanced);
      },
      (error: unknown) => {
        broker.log.error({ err: error }, 'mqtt: authentication hook failed');
        if (conn.state === 'authenticating') {
          refuse(conn, ConnackReturnCode.ServerUnavailable, ReasonCode.ServerUnavailable, packet);
        }
      },
    )
    .catch((error: unknown) => conn.internalError(error));
}

function accept(
  conn: MqttConnection,
  packet: IConnectPacket,
  identity: ClientIdentity,
  requestedClientId: string,
  clean: boolean,
  enhanced?: { method: string; data: Buffer; codec: PayloadCodec },
): void {
  const broker = conn.broker;
  const limits = broker.limits;
  // A principal may only use its own client identifier; an empty one is assigned.
  if (requestedClientId !== '' && requestedClientId !== identity.clientId) {
    refusedAfterAuthentication(conn, identity, ReasonCode.ClientIdentifierNotValid, 'client-id-mismatch');
    refuse(conn, ConnackReturnCode.IdentifierRejected, ReasonCode.ClientIdentifierNotValid);
    return;
  }
  const clientId = identity.clientId;
  const will = checkWill(conn, packet, identity);
  if (will && 'v4' in will) {
    refusedAfterAuthentication(conn, identity, will.v5, 'will-refused');
    refuse(conn, will.v4, will.v5);
    return;
  }
  conn.clientId = clientId;
  conn.identity = identity;
  conn.will = will;

  // Session expiry: 3.1.1 clean=false keeps the session for the configured maximum; MQTT 5 asks.
  const requestedExpiry =
    conn.protocolVersion === 5
      ? (packet.properties?.sessionExpiryInterval ?? 0)
      : clean
        ? 0
        : limits.maxSessionExpirySeconds;
  const expiry = Math.min(requestedExpiry, limits.maxSessionExpirySeconds);

  // Keep-alive: a client asking for none, or for more than the maximum, gets the maximum.
  const requestedKeepAlive = packet.keepalive ?? 0;
  const keepAlive =
    requestedKeepAlive === 0 || requestedKeepAlive > limits.maxKeepAliveSeconds
      ? limits.maxKeepAliveSeconds
      : requestedKeepAlive;

  const connack: IConnackPacket =
    conn.protocolVersion === 5
      ? {
          cmd: 'connack',
          reasonCode: ReasonCode.Success,
          sessionPresent: false,
          // Maximum QoS 2, retained messages, wildcard and shared subscriptions and subscription
          // identifiers are all available, which is what their absence says (MQTT 5 3.2.2.3).
          // Response Information is optional and not offered, whatever Request Response Information asked.
          properties: {
            receiveMaximum: limits.maxInflight,
            maximumPacketSize: limits.maxPacketBytes,
            topicAliasMaximum: broker.topicAliasMaximum,
            ...(requestedClientId === '' ? { assignedClientIdentifier: clientId } : {}),
            ...(keepAlive !== requestedKeepAlive ? { serverKeepAlive: keepAlive } : {}),
            ...(expiry !== requestedExpiry ? { sessionExpiryInterval: expiry } : {}),
            // [MQTT-4.12.0-5 (v5)] a successful CONNACK repeats the CONNECT's Authentication Method;
            // its Authentication Data ends the exchange (3.2.2.3.17, 3.2.2.3.18).
            ...(enhanced ? { authenticationMethod: enhanced.method, authenticationData: enhanced.data } : {}),
          },
        }
      : { cmd: 'connack', returnCode: ConnackReturnCode.Accepted, sessionPresent: false };
  if (conn.protocolVersion === 5 && packet.properties?.maximumPacketSize) {
    conn.clientMaximumPacketSize = packet.properties.maximumPacketSize;
    // [MQTT-3.1.2-25 (v5)] not even the CONNACK may exceed it: such a client cannot be served.
    if (mqttPacket.generate(connack, { protocolVersion: 5 }).length > conn.clientMaximumPacketSize) {
      conn.destroy('protocol-error');
      return;
    }
  }

  if (enhanced) {
    // Before the session resumes: queued and retained messages are sealed on their way out.
    conn.authenticationMethod = enhanced.method;
    conn.payloadCodec = enhanced.codec;
  }
  const { session, present } = broker.openSession(conn, clientId, identity, clean, expiry);
  session.receiveMaximum = conn.protocolVersion === 5 ? (packet.properties?.receiveMaximum ?? 65535) : 65535;
  conn.session = session;
  connack.sessionPresent = present;
  conn.write(connack);
  broker.stats.connectsAccepted++;
  conn.connected(keepAlive);
  session.resume(conn);
  broker.notifyConnected(conn, present, keepAlive);
}
