export {
  type AuthenticateResult,
  type BrokerHooks,
  type ClientIdentity,
  type ConnectRequest,
  denyAllHooks,
  type InboundMessage,
  type ProtocolVersion,
  PublishRefusedError,
  type Violation,
} from './broker-hooks.ts';
export { type BrokerLimits, type BrokerStats, MqttBroker, type MqttBrokerOptions } from './mqtt-broker.ts';
export {
  AEAD_CIPHERS,
  formatHostPort,
  type MqttListener,
  startMqttListener,
  tlsServerOptions,
} from './mqtt-listener.ts';
export { ConnackReturnCode, ReasonCode } from './reason-codes.ts';
export { checkTopicFilter, checkTopicName } from './topic-rules.ts';
export { CONFORMANCE_ASSIGNED_CLIENT_ID_PREFIX, conformanceHooks, isConformanceHooks } from './conformance-hooks.ts';
export {
  CONFORMANCE_WARNING,
  type ConformanceListener,
  isLoopbackHost,
  startConformanceListener,
} from './conformance-listener.ts';
