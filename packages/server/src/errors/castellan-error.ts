import { ERROR_CODES, type ErrorCode } from './error-codes.ts';

export interface CastellanErrorOptions {
  /** Public message; defaults to the registry's. Must never carry secrets. */
  message?: string;
  /** Internal detail for logs only; never sent to clients. */
  detail?: string;
  /** Structured, client-safe detail (e.g. which field failed validation). */
  details?: Record<string, unknown>;
  cause?: unknown;
}

/**
 * The one base error. `code` is stable (`ERR_<AREA>_<REASON>`), `statusCode` and `expose` come from the
 * registry; the public message is separate from the internal detail.
 */
export class CastellanError extends Error {
  readonly code: ErrorCode;
  readonly statusCode: number;
  readonly expose: boolean;
  readonly detail: string | undefined;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, options: CastellanErrorOptions = {}) {
    const spec = ERROR_CODES[code];
    super(options.message ?? spec.message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'CastellanError';
    this.code = code;
    this.statusCode = spec.status;
    this.expose = spec.expose;
    this.detail = options.detail;
    this.details = options.details;
  }
}

export function isCastellanError(error: unknown): error is CastellanError {
  return error instanceof CastellanError;
}
