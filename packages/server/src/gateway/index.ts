export { type ConnectedDevice, type DeviceChannelHandler, deviceBrokerHooks } from './device-broker-hooks.ts';
export * from './mqtt/index.ts';
export {
  DEFAULT_SECURE_CHANNEL_MAX_REFUSALS,
  SECURE_CHANNEL_MQTT_METHOD,
  type SecureChannelMqttRefusal,
  secureChannelProfile,
  type SecureChannelProfileOptions,
} from './secure-channel-broker-hooks.ts';
export {
  SYS_TENANTS_ROOT,
  SysTopicsPublisher,
  type SysTopicsPublisherOptions,
  sysTenantPrefix,
  sysTopic,
} from './sys-topics-publisher.ts';
