export { CastellanError, type CastellanErrorOptions, isCastellanError } from './castellan-error.ts';
export { ERROR_CODES, type ErrorCode, type ErrorCodeSpec } from './error-codes.ts';
