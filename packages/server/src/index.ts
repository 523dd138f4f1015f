// @castellan/server public surface.
export { type CastellanConfig, loadConfig, redactConfig } from './config/index.ts';
export { CastellanError, ERROR_CODES, type ErrorCode } from './errors/index.ts';
export {
  type Platform,
  type PlatformOptions,
  RUNTIME_FILE,
  type RuntimeInfo,
  startPlatform,
  VERSION,
} from './platform.ts';
