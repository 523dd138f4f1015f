// PUBACK, PUBREC, PUBREL, PUBCOMP, PINGREQ, DISCONNECT, AUTH and packets only a server may send.
import type {
  IAuthPacket,
  IDisconnectPacket,
  IPubackPacket,
  IPubcompPacket,
  IPubrecPacket,
  IPubrelPacket,
} from 'mqtt-packet';
import type { MqttConnection } from '../mqtt-connection.ts';
import { ReasonCode } from '../reason-codes.ts';
import { afterPending } from './publish-handler.ts';

export function handlePuback(conn: MqttConnection, packet: IPubackPacket): void {
  // An acknowledgement for an identifier not in flight is ignored (it may be a late duplicate).
  if (packet.messageId && conn.session?.acknowledge(packet.messageId) === 'mismatch') {
    conn.protocolViolation(ReasonCode.ProtocolError, 'PUBACK for a QoS 2 message');
  }
}

/** PUBREC for a QoS 2 message the server sent: answer PUBREL [MQTT-4.3.3-4]. */
export function handlePubrec(conn: MqttConnection, packet: IPubrecPacket): void {
  const id = packet.messageId;
  if (!id || !conn.session) return;
  const reasonCode = packet.reasonCode ?? 0;
  const outcome = conn.session.received(id, reasonCode);
  if (outcome === 'release') conn.writeAck('pubrel', id);
  else if (outcome === 'mismatch') conn.protocolViolation(ReasonCode.ProtocolError, 'PUBREC for a QoS 1 message');
  else if (outcome === 'unknown' && reasonCode < 0x80) {
    // MQTT 5: say the identifier is unknown; 3.1.1: a PUBREL all the same, so the client can finish.
    // (A PUBREC ≥ 0x80 ends an exchange and is never answered, known or not.)
    conn.writeAck('pubrel', id, ReasonCode.PacketIdentifierNotFound);
  }
}

/** PUBCOMP for a QoS 2 message the server sent: the exchange is over. */
export function handlePubcomp(conn: MqttConnection, packet: IPubcompPacket): void {
  if (packet.messageId && conn.session?.complete(packet.messageId) === 'mismatch') {
    conn.protocolViolation(ReasonCode.ProtocolError, 'PUBCOMP before PUBREL');
  }
}

/**
 * PUBREL from a client: the QoS 2 identifier is released and PUBCOMP sent [MQTT-4.3.3-11]; an unknown
 * identifier gets PUBCOMP 0x92 in MQTT 5. In order after pending PUBLISH acknowledgements, and, for a
 * persistent session, after the store recorded the release (a reused identifier must not look like a
 * duplicate after a restart).
 */
export function handlePubrel(conn: MqttConnection, packet: IPubrelPacket): void {
  const id = packet.messageId;
  if (!id) return;
  afterPending(conn, () => {
    const session = conn.session;
    if (!session) return undefined;
    const known = session.releaseInboundQos2(id);
    const reasonCode = known ? ReasonCode.Success : ReasonCode.PacketIdentifierNotFound;
    if (!known || session.store === null || !conn.broker.durable) {
      conn.writeAck('pubcomp', id, reasonCode);
      return undefined;
    }
    return conn.broker.flushStore().then(() => {
      conn.writeAck('pubcomp', id, reasonCode);
    });
  });
}

export function handlePingreq(conn: MqttConnection): void {
  conn.write({ cmd: 'pingresp' }); // [MQTT-3.12.4-1]
}

export function handleDisconnect(conn: MqttConnection, packet: IDisconnectPacket): void {
  const reasonCode = conn.protocolVersion === 5 ? (packet.reasonCode ?? 0) : undefined;
  if (conn.protocolVersion === 5) {
    const requested = packet.properties?.sessionExpiryInterval;
    const session = conn.session;
    if (requested !== undefined && session) {
      // [MQTT-3.14.2-2 (v5)] a session that ends with its connection cannot be revived here.
      if (session.expiryInterval === 0 && requested !== 0) {
        conn.protocolViolation(ReasonCode.ProtocolError, 'session expiry raised from zero on DISCONNECT');
        return;
      }
      conn.broker.changeSessionExpiry(session, Math.min(requested, conn.broker.limits.maxSessionExpirySeconds));
    }
    // Reason 0x04 asks for the will to be published anyway.
    conn.gracefulDisconnect = packet.reasonCode !== ReasonCode.DisconnectWithWill;
  } else {
    conn.gracefulDisconnect = true; // [MQTT-3.14.4-3] discard the will
  }
  conn.destroy('client', reasonCode);
}

export function handleAuth(conn: MqttConnection, packet: IAuthPacket): void {
  if (conn.authenticationMethod === undefined || conn.state !== 'connected') {
    // No Authentication Method was accepted at CONNECT [MQTT-4.12.0-7 (v5)]; the packet validator
    // refuses such an AUTH first. Kept so this handler is safe on its own.
    conn.protocolViolation(ReasonCode.ProtocolError, 'AUTH without an authentication method');
    return;
  }
  if (packet.properties?.authenticationMethod !== conn.authenticationMethod) {
    // [MQTT-4.12.1-1 (v5)] re-authentication uses the method the client authenticated with.
    conn.protocolViolation(ReasonCode.ProtocolError, 'AUTH with another authentication method');
    return;
  }
  if (packet.reasonCode !== ReasonCode.ReAuthenticate) {
    // 0x18 Continue: the exchange ended with the CONNACK and the server sent no AUTH to continue.
    conn.protocolViolation(ReasonCode.ProtocolError, 'AUTH 0x18 outside an authentication exchange');
    return;
  }
  // Re-authentication (4.12.1) is not offered: the methods served complete within CONNECT/CONNACK
  // (the secure channel re-keys in-band); the client connects again instead. A failed
  // re-authentication ends with DISCONNECT and a closed connection [MQTT-4.12.1-2]: 0x87, since
  // 0x8C is not a DISCONNECT reason code (3.14.2.1).
  conn.disconnect(ReasonCode.NotAuthorized);
}

export function handleServerOnly(conn: MqttConnection): void {
  // CONNACK, SUBACK, UNSUBACK and PINGRESP are sent only by servers.
  conn.protocolViolation(ReasonCode.ProtocolError, 'packet type not allowed from a client');
}
