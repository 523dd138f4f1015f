// The broker's security and storage decisions are hooks; the broker itself knows nothing about devices.
// Every hook fails closed: without an explicit decision the answer is "no".
import type { MessageProperties } from './broker-store.ts';

export type ProtocolVersion = 4 | 5;

export interface ConnectRequest {
  readonly clientId: string;
  readonly username: string | undefined;
  readonly password: Buffer | undefined;
  readonly protocolVersion: ProtocolVersion;
  readonly remoteAddress: string;
  /**
   * The TLS client certificate (DER), when the client presented one. The listener asks for one but
   * lets OpenSSL accept any: the hook decides (DEV-5 mutual TLS).
   */
  readonly peerCertificate?: Buffer;
}

export interface ClientIdentity {
  /** Who is connected: for devices, the device ID. */
  readonly principalId: string;
  readonly kind: 'device' | 'service';
  /** The client identifier this principal must use; an empty CONNECT client ID is assigned this one. */
  readonly clientId: string;
  /** Context for authorisation and logging (e.g. vendor and product IDs). Never secrets. */
  readonly attributes: Readonly<Record<string, string>>;
}

export type AuthenticateResult =
  | { readonly ok: true; readonly identity: ClientIdentity }
  | {
      readonly ok: false;
      readonly reason: 'bad-credentials' | 'not-authorized' | 'banned' | 'rate-limited' | 'server-busy';
    };

export interface InboundMessage {
  readonly topic: string;
  readonly payload: Buffer;
  readonly qos: 0 | 1 | 2;
  /** The publisher asked for the message to be retained. */
  readonly retain?: boolean;
  /** MQTT 5 properties forwarded with the message (none for MQTT 3.1.1). */
  readonly properties?: MessageProperties;
  readonly receivedAt: number;
}

/** Thrown (or rejected) by onPublish to refuse a message with a reason the client can be told. */
export class PublishRefusedError extends Error {
  readonly reason: 'quota-exceeded' | 'payload-invalid' | 'rate-limited' | 'unavailable';
  /** End the connection after refusing (e.g. repeated excess over a rate limit). */
  readonly disconnect: boolean;
  constructor(reason: PublishRefusedError['reason'], message: string, options: { disconnect?: boolean } = {}) {
    // A refusal is an answer, not a fault: under overload thousands a second are made, and capturing
    // a stack trace for each was a measurable share of the broker's time (bench: overload).
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    super(message);
    Error.stackTraceLimit = limit;
    this.name = 'PublishRefusedError';
    this.reason = reason;
    this.disconnect = options.disconnect ?? false;
  }
}

/** Something a client did that the broker refused: fed to intrusion detection. */
export interface Violation {
  readonly remoteAddress: string;
  readonly identity: ClientIdentity | undefined;
  /** e.g. 'publish-denied', 'subscribe-denied', 'protocol-error'. */
  readonly what: string;
}

export interface BrokerHooks {
  authenticate(request: ConnectRequest): Promise<AuthenticateResult>;
  authorizePublish(identity: ClientIdentity, topic: string): boolean;
  authorizeSubscribe(identity: ClientIdentity, filter: string): boolean;
  /**
   * Called for every authorised PUBLISH before it is routed or acknowledged; the returned promise
   * settles when the message is durable (QoS 1 and 2 are acknowledged only then).
   */
  onPublish(identity: ClientIdentity, message: InboundMessage): Promise<void> | void;
  /** Optional observer of refusals (ACL denials, protocol errors). */
  onViolation?(violation: Violation): void;
  /** Optional observer of a client ID taken over by a new connection (conflicting clients). */
  onTakeover?(identity: ClientIdentity, remoteAddresses: { previous: string; next: string }): void;
  /**
   * Optional observer: a client that authenticated was refused at CONNECT all the same (a client ID
   * that is not its own, a will it may not publish). No CONNACK 0x00 was sent, so no onConnected.
   */
  onConnectRefused?(
    identity: ClientIdentity,
    info: { remoteAddress: string; reasonCode: number; reason: 'client-id-mismatch' | 'will-refused' },
  ): void;
  /** Optional observer (presence): a client's CONNACK was sent. */
  onConnected?(identity: ClientIdentity, info: ConnectionInfo): void;
  /** Optional observer (presence): a connected client's connection ended, with why. */
  onDisconnected?(identity: ClientIdentity, info: DisconnectionInfo): void;
}

export interface ConnectionInfo {
  readonly clientId: string;
  readonly remoteAddress: string;
  readonly protocolVersion: ProtocolVersion;
  readonly sessionPresent: boolean;
  readonly keepAliveSeconds: number;
}

/**
 * Why a connection ended: 'client' = DISCONNECT from the client; 'takeover' = a newer connection with
 * the same client ID; 'keep-alive' = silent too long; 'protocol-error' = a malformed or forbidden
 * packet; 'server' = disconnected by the platform (revoked, quarantined, shutting down); 'network' =
 * the socket closed without DISCONNECT.
 */
export interface DisconnectionInfo {
  readonly clientId: string;
  readonly remoteAddress: string;
  readonly reason: 'client' | 'takeover' | 'keep-alive' | 'protocol-error' | 'server' | 'network';
  /** The MQTT 5 reason code sent or received, when there was one. */
  readonly reasonCode?: number;
  readonly connectedForMs: number;
}

export const denyAllHooks: BrokerHooks = {
  async authenticate() {
    return { ok: false, reason: 'not-authorized' };
  },
  authorizePublish: () => false,
  authorizeSubscribe: () => false,
  onPublish: () => {
    throw new PublishRefusedError('unavailable', 'no publish hook configured');
  },
};
