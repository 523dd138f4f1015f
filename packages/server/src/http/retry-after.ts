// A refusal that tells the client when to come back (RFC 9110 section 10.2.3 Retry-After, in seconds).
import type { FastifyReply } from 'fastify';
import { CastellanError, type ErrorCode } from '../errors/index.ts';

export function refuseWithRetryAfter(
  reply: FastifyReply,
  retryAfterMs: number,
  code: ErrorCode = 'ERR_RATE_LIMITED',
): CastellanError {
  reply.header('retry-after', String(Math.max(1, Math.ceil(retryAfterMs / 1000))));
  return new CastellanError(code);
}
