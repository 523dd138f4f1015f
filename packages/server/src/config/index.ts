export { type CastellanConfig, ConfigSchema, SECRET_CONFIG_KEYS } from './config-schema.ts';
export {
  CONFIG_KEYS,
  type DeepPartial,
  defaultMqttConfig,
  type LoadConfigOptions,
  loadConfig,
  redactConfig,
} from './load-config.ts';
