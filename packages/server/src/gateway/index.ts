export { deviceBrokerHooks } from './device-broker-hooks.ts';
export * from './mqtt/index.ts';
