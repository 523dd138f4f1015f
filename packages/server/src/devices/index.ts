export { devicesRoutes } from './devices-routes.ts';
export {
  type Device,
  type DeviceStatus,
  type ProductReportLimits,
  DevicesService,
  type DevicesServiceOptions,
  type FieldCipher,
  type IssuedDevice,
  type Product,
  type TelemetryItem,
  type VendorDirectory,
} from './devices-service.ts';
export { checkTelemetryPayload } from './telemetry-payload.ts';
export { TelemetryQueueFullError, TelemetryWriter, type TelemetryWriterOptions } from './telemetry-writer.ts';
