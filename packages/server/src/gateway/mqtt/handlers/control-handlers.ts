// PUBACK, PINGREQ, DISCONNECT, AUTH, QoS 2 flow packets and packets only a server may send.
import type { IDisconnectPacket, IPubackPacket } from 'mqtt-packet';
import type { MqttConnection } from '../mqtt-connection.ts';
import { ReasonCode } from '../reason-codes.ts';

export function handlePuback(conn: MqttConnection, packet: IPubackPacket): void {
  // An acknowledgement for an identifier not in flight is ignored (it may be a late duplicate).
  if (packet.messageId) conn.session?.acknowledge(packet.messageId);
}

export function handlePingreq(conn: MqttConnection): void {
  conn.write({ cmd: 'pingresp' }); // [MQTT-3.12.4-1]
}

export function handleDisconnect(conn: MqttConnection, packet: IDisconnectPacket): void {
  if (conn.protocolVersion === 5) {
    const requested = packet.properties?.sessionExpiryInterval;
    if (requested !== undefined && conn.session) {
      // [MQTT-3.14.2-2 (v5)] a session that ended with its connection cannot be revived here.
      if (conn.session.expiryInterval === 0 && requested !== 0) {
        conn.protocolViolation(ReasonCode.ProtocolError, 'session expiry raised from zero on DISCONNECT');
        return;
      }
      conn.session.expiryInterval = Math.min(requested, conn.broker.limits.maxSessionExpirySeconds);
    }
    // Reason 0x04 asks for the will to be published anyway.
    conn.gracefulDisconnect = packet.reasonCode !== ReasonCode.DisconnectWithWill;
  } else {
    conn.gracefulDisconnect = true; // [MQTT-3.14.4-3] discard the will
  }
  conn.destroy();
}

export function handleAuth(conn: MqttConnection): void {
  // No authentication method was accepted at CONNECT, so AUTH is a protocol error [MQTT-4.12.0-1 (v5)].
  conn.protocolViolation(ReasonCode.ProtocolError, 'AUTH without an authentication method');
}

export function handleQos2Flow(conn: MqttConnection): void {
  conn.protocolViolation(ReasonCode.ProtocolError, 'QoS 2 flow packet while QoS 2 is not supported');
}

export function handleServerOnly(conn: MqttConnection): void {
  // CONNACK, SUBACK, UNSUBACK and PINGRESP are sent only by servers.
  conn.protocolViolation(ReasonCode.ProtocolError, 'packet type not allowed from a client');
}
