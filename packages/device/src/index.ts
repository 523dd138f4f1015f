export {
  DeviceClient,
  type DeviceClientOptions,
  DeviceConnectError,
  type DeviceReconnectOptions,
  reconnectDelayMs,
} from './device-client.ts';
export {
  SECURE_CHANNEL_MQTT_METHOD,
  SecureChannelMqttClient,
  type SecureChannelMqttClientOptions,
} from './secure-channel-mqtt-client.ts';
export {
  DeviceHttpClient,
  type DeviceHttpClientOptions,
  DeviceHttpError,
  type DeviceHttpResponse,
} from './device-http-client.ts';
export { SecureChannelHttpClient, type SecureChannelHttpClientOptions } from './secure-channel-http-client.ts';
export {
  type BuiltinCommandHooks,
  type CommandHandler,
  CommandRejectedError,
  type DeviceCommand,
  DeviceCommands,
} from './device-commands.ts';
export {
  type DesiredDocument,
  type DesiredHandler,
  DeviceShadow,
  mergeState,
  type ShadowState,
  type ShadowSyncResult,
  stateDelta,
} from './device-shadow.ts';
export {
  BATCH_ALGORITHM,
  BATCH_FORMAT,
  type BatchFile,
  type BatchHeader,
  type BatchPlaintext,
  type BurnReceipt,
  canonicalJson,
  DEVICE_IMAGE_FORMAT,
  type DeviceImage,
  deviceImageText,
  type EncryptionCurve,
  FACTORY_EXIT,
  FactoryError,
  generateStationKeys,
  openBatch,
  parseDeviceImage,
  parseEncryptionPublicKey,
  parseSigningPublicKey,
  receiptBytes,
  sealBatch,
  sha256Hex,
  type SignedReceipt,
  signReceipt,
  spkiPem,
  type StationKeyPairs,
  verifyReceipt,
} from './factory/factory-format.ts';
export {
  burnBatch,
  type BurnOptions,
  type BurnSummary,
  burnDevices,
  type DeviceCredentials,
  fetchBatch,
  keygen,
  type KeygenResult,
  loadDeviceCredentials,
  loadStationKeys,
  type PlatformConnection,
  type ReceiptUploadResult,
  receiptsFileName,
  STATION_KEY_FILES,
  type StationKeys,
  uploadReceipts,
} from './factory/factory-tool.ts';
export { factoryHelp, factoryMain, type FactoryIo } from './factory/factory-cli.ts';
export {
  type DeviceApiActivatorOptions,
  DeviceApiError,
  deviceApiActivator,
} from './provisioning/device-api-activator.ts';
export {
  type DeviceBindResult,
  DeviceProvisioningSimulator,
  type DeviceProvisioningSimulatorOptions,
  type PairingAdvertisement,
  type PairingMode,
  type ProvisioningActivator,
} from './provisioning/device-provisioning-simulator.ts';
export {
  checkProvisioningPayload,
  generateProvisioningKeyPair,
  MAX_ENVELOPE_BYTES,
  openProvisioningPayload,
  PROVISIONING_VERSION,
  ProvisioningError,
  type ProvisioningKeyPair,
  type ProvisioningPayload,
  sealProvisioningPayload,
} from './provisioning/provisioning-payload.ts';
export {
  type LockEntryResult,
  type LockoutPolicy,
  LockSimulator,
  type LockSimulatorOptions,
} from './lock-simulator.ts';
export {
  type DeviceKeyPair,
  type DeviceSigningKey,
  generateDeviceKeyPair,
  generateSm2KeyPair,
  SIGNED_CHALLENGE_CONTEXT,
  signChallenge,
  signedChallengeMessage,
  type Sm2KeyPair,
} from './device-keys.ts';
export {
  buildPostureReport,
  computePostureDigests,
  connectionTls,
  type PostureInput,
  type PosturePublisher,
  type PostureReportMessage,
  type PostureSecurityLevel,
  type PostureSource,
  type PostureTls,
  reportPosture,
} from './device-posture.ts';
export {
  MAX_RATE_PER_SECOND,
  runSimulation,
  type SimDevice,
  type SimulationOptions,
  SimulationOptionsError,
  type SimulationProgress,
  type SimulationResult,
} from './sim/run-simulation.ts';
export {
  loadSimDevices,
  parseSimArgs,
  progressLine,
  SIM_EXIT,
  SIM_HELP,
  simMain,
  type SimIo,
  SimUsageError,
} from './sim/sim-cli.ts';
export {
  DEFAULT_TELEMETRY_SCHEMA,
  parseTelemetrySchema,
  SchemaFileError,
  type SimProperty,
  TelemetryGenerator,
  type TelemetrySchema,
} from './sim/telemetry-generator.ts';
