export {
  DEVICE_ID_LENGTH,
  DEVICE_ID_SPEC_VERSION,
  DeviceIdError,
  type DeviceIdParts,
  generateCode,
  generateDeviceId,
  isDeviceId,
  isProductCode,
  isVendorCode,
  parseDeviceId,
} from './device-id.ts';
export {
  type DeviceChannel,
  deviceTopic,
  isWithinDeviceNamespace,
  type ParsedDeviceTopic,
  parseDeviceTopic,
  TOPIC_ROOT,
} from './topics.ts';
export {
  type CryptoSuite,
  CryptoSuiteError,
  intlSuite,
  SM2_DEFAULT_USER_ID,
  type SigningKeyPair,
  SUITE_NAMES,
  type SuiteName,
  smSuite,
  suite,
} from './crypto-suites.ts';
