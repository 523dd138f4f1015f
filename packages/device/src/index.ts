export { DeviceClient, type DeviceClientOptions, DeviceConnectError } from './device-client.ts';
