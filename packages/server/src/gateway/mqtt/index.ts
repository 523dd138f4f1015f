export {
  type AuthenticateResult,
  type BrokerHooks,
  type ClientIdentity,
  type ConnectionInfo,
  type ConnectRequest,
  denyAllHooks,
  type DisconnectionInfo,
  type InboundMessage,
  type ProtocolVersion,
  PublishRefusedError,
  type Violation,
} from './broker-hooks.ts';
export {
  type BrokerStore,
  type MessageProperties,
  memoryOnlyBrokerStore,
  type PendingState,
  type StoredMessage,
  type StoredPending,
  type StoredSession,
  type StoredSessionMeta,
  type StoredSubscription,
} from './broker-store.ts';
export {
  type BrokerLimits,
  type BrokerStats,
  DEFAULT_MAX_RETAINED_MESSAGES,
  DEFAULT_TOPIC_ALIAS_MAXIMUM,
  MqttBroker,
  type MqttBrokerOptions,
} from './mqtt-broker.ts';
export {
  AEAD_CIPHERS,
  formatHostPort,
  type MqttListener,
  startMqttListener,
  tlsServerOptions,
} from './mqtt-listener.ts';
export {
  type EnhancedAuthenticateResult,
  type EnhancedConnectRequest,
  type ListenerProfile,
  type PayloadCodec,
} from './listener-profile.ts';
export { ConnackReturnCode, ReasonCode } from './reason-codes.ts';
export { type SecureChannelListener, startSecureChannelListener } from './secure-channel-listener.ts';
export { SqlBrokerStore, type SqlBrokerStoreOptions, type SqlBrokerStoreStats } from './sql-broker-store.ts';
export { checkTopicFilter, checkTopicName } from './topic-rules.ts';
export { CONFORMANCE_ASSIGNED_CLIENT_ID_PREFIX, conformanceHooks, isConformanceHooks } from './conformance-hooks.ts';
export {
  CONFORMANCE_WARNING,
  type ConformanceListener,
  isLoopbackHost,
  startConformanceListener,
} from './conformance-listener.ts';
export { TICKET_KEY_BYTES, type TicketKeySource, TicketKeyRotation } from './tls-lite-profile.ts';
