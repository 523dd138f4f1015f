export {
  type ConnectedInfo,
  type DisconnectedInfo,
  type LiveConnection,
  PresenceTracker,
  type PresenceTrackerOptions,
} from './device-presence.ts';
export {
  DEVICE_ROLES,
  type DeviceAccess,
  type DeviceAction,
  type DeviceRole,
  deviceRoleAllows,
  mayGrant,
} from './device-access.ts';
export { type DeviceChange, DeviceEvents, type DeviceEventMap, type DeviceMessage } from './device-events.ts';
export { devicesRoutes } from './devices-routes.ts';
export {
  type Device,
  type DeviceAdmissionCheck,
  type DeviceAuthMethod,
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
export {
  type DeviceConnected,
  type DeviceDisconnected,
  type DevicePresence,
  type DisconnectReason,
  type PresenceChange,
  type PresenceEventMap,
  PresenceEvents,
} from './presence-events.ts';
export { checkTelemetryPayload } from './telemetry-payload.ts';
export { TelemetryQueueFullError, TelemetryWriter, type TelemetryWriterOptions } from './telemetry-writer.ts';
