// Per-listener connection behaviour the broker core applies without knowing what it means. The TLS
// listener has none. The secure-channel listener (CHAN-3, CHAN-4) has one: every CONNECT must carry its
// MQTT 5 Authentication Method, whose exchange completes within CONNECT/CONNACK [MQTT-4.12], and every
// PUBLISH payload is opened on the way in and sealed on the way out by a per-connection codec.
import type { AuthenticateResult, ClientIdentity, ConnectRequest } from './broker-hooks.ts';

/** A CONNECT that carried the profile's Authentication Method. */
export interface EnhancedConnectRequest extends ConnectRequest {
  readonly authenticationMethod: string;
  /** The CONNECT's Authentication Data (MQTT 5 3.1.2.11.10); undefined when absent. */
  readonly authenticationData: Buffer | undefined;
  /** The CONNECT carried a will (its payload is outside anything the method authenticates). */
  readonly hasWill: boolean;
}

export type EnhancedAuthenticateResult =
  | {
      readonly ok: true;
      readonly identity: ClientIdentity;
      /** Sent back in the CONNACK's Authentication Data [MQTT-4.12.0-5]. */
      readonly authenticationData: Buffer;
      /** Opens and seals this connection's PUBLISH payloads. */
      readonly codec: PayloadCodec;
    }
  | Extract<AuthenticateResult, { ok: false }>;

/** One connection's payload transform: used by the PUBLISH handler and the delivery path only. */
export interface PayloadCodec {
  /**
   * The plaintext of a PUBLISH payload from the client, or null when it is refused (the codec has
   * counted and reported why). Called in arrival order.
   */
  open(payload: Buffer): Buffer | null;
  /** Too many refusals on this connection: it ends (DISCONNECT 0x99). */
  readonly exhausted: boolean;
  /** The payload to deliver to the client, or null when it cannot be sealed (never delivered). */
  seal(payload: Buffer): Buffer | null;
}

export interface ListenerProfile {
  /** The only Authentication Method accepted; CONNECTs without it are refused with 0x8C. */
  readonly authenticationMethod: string;
  /** Decides a CONNECT carrying the method (instead of the broker's authenticate hook). */
  authenticate(request: EnhancedConnectRequest): Promise<EnhancedAuthenticateResult>;
}
