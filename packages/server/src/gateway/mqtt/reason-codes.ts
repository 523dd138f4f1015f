// MQTT 5 reason codes (OASIS MQTT v5.0, 2.4) and MQTT 3.1.1 CONNACK return codes (3.2.2.3) that the
// broker uses. Refusals in 3.1.1 that have no return code close the connection instead.

export const ReasonCode = {
  Success: 0x00,
  GrantedQoS0: 0x00,
  GrantedQoS1: 0x01,
  NoMatchingSubscribers: 0x10,
  NoSubscriptionExisted: 0x11,
  DisconnectWithWill: 0x04,
  ContinueAuthentication: 0x18,
  ReAuthenticate: 0x19,
  UnspecifiedError: 0x80,
  MalformedPacket: 0x81,
  ProtocolError: 0x82,
  ImplementationSpecificError: 0x83,
  UnsupportedProtocolVersion: 0x84,
  ClientIdentifierNotValid: 0x85,
  BadUserNameOrPassword: 0x86,
  NotAuthorized: 0x87,
  ServerUnavailable: 0x88,
  ServerBusy: 0x89,
  Banned: 0x8a,
  ServerShuttingDown: 0x8b,
  BadAuthenticationMethod: 0x8c,
  KeepAliveTimeout: 0x8d,
  SessionTakenOver: 0x8e,
  TopicFilterInvalid: 0x8f,
  TopicNameInvalid: 0x90,
  PacketIdentifierInUse: 0x91,
  PacketIdentifierNotFound: 0x92,
  ReceiveMaximumExceeded: 0x93,
  TopicAliasInvalid: 0x94,
  PacketTooLarge: 0x95,
  MessageRateTooHigh: 0x96,
  QuotaExceeded: 0x97,
  AdministrativeAction: 0x98,
  PayloadFormatInvalid: 0x99,
  RetainNotSupported: 0x9a,
  QoSNotSupported: 0x9b,
  SharedSubscriptionsNotSupported: 0x9e,
  ConnectionRateExceeded: 0x9f,
  SubscriptionIdentifiersNotSupported: 0xa1,
} as const;

/** MQTT 3.1.1 CONNACK return codes. */
export const ConnackReturnCode = {
  Accepted: 0,
  UnacceptableProtocolVersion: 1,
  IdentifierRejected: 2,
  ServerUnavailable: 3,
  BadUserNameOrPassword: 4,
  NotAuthorized: 5,
} as const;

/** 3.1.1 SUBACK failure return code [MQTT-3.9.3-2]. */
export const SUBACK_FAILURE_V4 = 0x80;
