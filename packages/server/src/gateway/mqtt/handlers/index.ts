// One handler per packet type; the connection dispatches through this table.
import type { PacketCmd } from 'mqtt-packet';
import type { MqttConnection } from '../mqtt-connection.ts';
import { handleConnect } from './connect-handler.ts';
import {
  handleAuth,
  handleDisconnect,
  handlePingreq,
  handlePuback,
  handlePubcomp,
  handlePubrec,
  handlePubrel,
  handleServerOnly,
} from './control-handlers.ts';
import { handlePublish } from './publish-handler.ts';
import { handleSubscribe, handleUnsubscribe } from './subscribe-handler.ts';

// Each handler narrows the packet to its own type; the table is keyed by that type's `cmd`.
type Handler = (conn: MqttConnection, packet: never) => void;

export const packetHandlers: Readonly<Record<PacketCmd, Handler>> = {
  connect: handleConnect,
  publish: handlePublish,
  puback: handlePuback,
  subscribe: handleSubscribe,
  unsubscribe: handleUnsubscribe,
  pingreq: handlePingreq,
  disconnect: handleDisconnect,
  auth: handleAuth,
  pubrec: handlePubrec,
  pubrel: handlePubrel,
  pubcomp: handlePubcomp,
  connack: handleServerOnly,
  suback: handleServerOnly,
  unsuback: handleServerOnly,
  pingresp: handleServerOnly,
};
