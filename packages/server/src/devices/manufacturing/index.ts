export { createFactoryAuthenticate, type FactoryAuthenticateHook, stationOf } from './factory-authenticate.ts';
export { manufacturingRoutes, type ManufacturingRoutesOptions } from './manufacturing-routes.ts';
export {
  type Batch,
  type BatchCounts,
  type BatchDevice,
  type BatchDeviceState,
  type FactoryStation,
  MAX_BATCH_DEVICES,
  ManufacturingService,
  type ManufacturingServiceOptions,
  type PlatformEndpoints,
  type ReceiptResult,
  type StationStatus,
} from './manufacturing-service.ts';
