export {
  DeviceClient,
  type DeviceClientOptions,
  DeviceConnectError,
  type DeviceReconnectOptions,
  reconnectDelayMs,
} from './device-client.ts';
