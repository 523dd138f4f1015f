// Structured logs (pino). Secrets never reach a log line: request bodies and headers are not logged,
// and any field that could carry a credential is redacted by path as a second line of defence.
import { type DestinationStream, type Logger, pino } from 'pino';

export const REDACTED_PATHS = [
  'req.headers.authorization',
  'req.headers.cookie',
  'req.headers["x-setup-token"]',
  'res.headers["set-cookie"]',
  'password',
  'secret',
  'token',
  'setupToken',
  'rootKey',
  '*.password',
  '*.secret',
  '*.token',
  '*.setupToken',
  '*.authorization',
  '*.rootKey',
];

export interface LoggerOptions {
  level: string;
  /** Where lines go; stdout by default. Tests pass a stream to scan the lines. */
  destination?: DestinationStream;
}

export function createLogger(options: LoggerOptions): Logger {
  return pino(
    {
      level: options.level,
      base: { service: 'castellan' },
      redact: { paths: REDACTED_PATHS, censor: '[redacted]' },
      serializers: {
        // Requests are logged by method and path only: no headers, no client IP or port (PRIV-4).
        req: (req: { method?: string; url?: string }) => ({ method: req.method, url: req.url?.split('?')[0] }),
        res: (res: { statusCode?: number }) => ({ statusCode: res.statusCode }),
        err: pino.stdSerializers.err,
      },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    options.destination ?? pino.destination({ fd: 1, sync: false }),
  );
}

export type { Logger };
