export { type ConnectedDevice, type DeviceChannelHandler, deviceBrokerHooks } from './device-broker-hooks.ts';
export * from './mqtt/index.ts';
export {
  SYS_TENANTS_ROOT,
  SysTopicsPublisher,
  type SysTopicsPublisherOptions,
  sysTenantPrefix,
  sysTopic,
} from './sys-topics-publisher.ts';
