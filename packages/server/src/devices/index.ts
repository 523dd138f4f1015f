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
export { bindingDeviceRoutes, type BindingDeviceRoutesOptions } from './binding/binding-device-routes.ts';
export { bindingRoutes, type BindingRoutesOptions } from './binding/binding-routes.ts';
export {
  BINDING_TOKEN_PREFIX,
  type BindingTokenStatus,
  type BindingTokenView,
  type IssuedBindingToken,
} from './binding/binding-token-store.ts';
export {
  type BindResult,
  BindingsService,
  type BindingsServiceOptions,
  type Share,
  type ShareRole,
  type UnbindWiper,
  type UserDevice,
} from './binding/bindings-service.ts';
export { devicesRoutes } from './devices-routes.ts';
export * from './certificates/index.ts';
export {
  CredentialLifecycle,
  type CredentialLifecycleOptions,
  type DropCause,
  type LiveDeviceCredential,
  type StatusChange,
} from './credential-lifecycle.ts';
export { credentialLifecycleRoutes, type CredentialLifecycleRoutesOptions } from './credential-lifecycle-routes.ts';
export { deviceApiRoutes, type DeviceApiRoutesOptions } from './device-api-routes.ts';
export {
  CHALLENGE_TTL_MS,
  createDeviceAuthenticate,
  DEVICE_TOKEN_TTL_MS,
  type DeviceAuthenticateHook,
  type DeviceAuthRefusal,
  type DeviceChallengeVerifier,
  DeviceHttpAuth,
  type DeviceHttpAuthOptions,
  deviceOf,
  type IssuedChallenge,
  type IssuedDeviceToken,
  verifyDeviceBody,
} from './device-http-auth.ts';
export {
  type HardwareIdUpload,
  HardwareIdsService,
  type HardwareIdsServiceOptions,
  MAX_HARDWARE_IDS_PER_UPLOAD,
} from './hardware-ids-service.ts';
export { AUTH_MODE_REFUSAL, productAuthModeCheck } from './product-auth-policy.ts';
export { hardwareIdsRoutes, type HardwareIdsRoutesOptions } from './hardware-ids-routes.ts';
export { productTelemetryHandler } from './product-telemetry-handler.ts';
export {
  checkCommand,
  checkDesiredState,
  checkEvent,
  checkTelemetry,
  checkValue,
  DATA_POINT_TYPES,
  type DataPointCommand,
  type DataPointEvent,
  type DataPointField,
  type DataPointProperty,
  type DataPointSchema,
  type DataPointType,
  parseDataPointSchema,
  ProductSchemaError,
  type SchemaHolder,
} from './product-schema.ts';
export {
  type Device,
  type DeviceAdmissionCheck,
  type DeviceAuthMethod,
  type DeviceStatus,
  checkAuthModes,
  PRODUCT_AUTH_MODES,
  type ProductAuthMode,
  type ProductReportLimits,
  type ProductSettings,
  SECURITY_LEVELS,
  type SecurityLevel,
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
export {
  BUILTIN_COMMANDS,
  type BuiltinCommand,
  COMMAND_STATUSES,
  type CommandStatus,
  isBuiltinCommand,
} from './commands/command-payloads.ts';
export { commandsRoutes } from './commands/commands-routes.ts';
export {
  type Command,
  type CommandCheck,
  type CommandInput,
  CommandsService,
  type CommandsServiceOptions,
  type FactoryResetHook,
} from './commands/commands-service.ts';
export { productChecks } from './commands/product-checks.ts';
export { shadowRoutes } from './shadow/shadow-routes.ts';
export {
  type DesiredStateCheck,
  type Shadow,
  ShadowService,
  type ShadowServiceOptions,
} from './shadow/shadow-service.ts';
export {
  type Batch,
  type BatchCounts,
  type BatchDevice,
  type FactoryStation,
  MAX_BATCH_DEVICES,
  ManufacturingService,
  manufacturingRoutes,
  type PlatformEndpoints,
} from './manufacturing/index.ts';
export { checkTelemetryPayload } from './telemetry-payload.ts';
export { TelemetryQueueFullError, TelemetryWriter, type TelemetryWriterOptions } from './telemetry-writer.ts';
export {
  type Aggregate,
  type Bucket,
  numericPoints,
  type PointSeries,
  TelemetryHistory,
  type TelemetryHistoryOptions,
  TelemetryPointAggregates,
  type TelemetryPage,
} from './telemetry-history.ts';
export { telemetryHistoryRoutes, type TelemetryHistoryRoutesOptions } from './telemetry-history-routes.ts';
export { PushHub, type PushHubOptions } from './push/push-hub.ts';
export { pushRoutes, type PushRoutesOptions } from './push/push-routes.ts';
export { DEFAULT_PUSH_TYPES, PUSH_EVENT_TYPES, type PushEventType } from './push/push-events.ts';
export * from './webhooks/index.ts';
export * from './posture/index.ts';
export {
  LOCK_CATEGORY,
  type LockPasscode,
  LockPasscodesService,
  type LockPasscodesServiceOptions,
  MAX_LIVE_PASSCODES,
  type PasscodeInput,
  type PasscodeStatus,
} from './locks/lock-passcodes-service.ts';
export { lockPasscodeRoutes, type LockPasscodeRoutesOptions } from './locks/lock-passcodes-routes.ts';
export { SignedTimeService, type SignedTimeServiceOptions } from './signed-time-service.ts';
export { PlatformChannelKeys } from './secure-channel/platform-channel-keys.ts';
export {
  SECURE_CHANNEL_MAX_REQUEST_BYTES,
  SECURE_CHANNEL_SESSION_ID_BYTES,
  type SecureChannelHttpRefusal,
  SecureChannelService,
  type SecureChannelServiceOptions,
} from './secure-channel/secure-channel-service.ts';
export {
  envelopePathAllowed,
  parseEnvelope,
  SECURE_CHANNEL_PATHS,
  secureChannelRoutes,
  type SecureChannelRoutesOptions,
} from './secure-channel/secure-channel-routes.ts';
export {
  type SecureChannelHttpListener,
  type SecureChannelHttpListenerOptions,
  startSecureChannelHttpListener,
} from './secure-channel/secure-channel-http-listener.ts';
export { devicePollRoutes, type DevicePollRoutesOptions } from './secure-channel/device-poll-routes.ts';
