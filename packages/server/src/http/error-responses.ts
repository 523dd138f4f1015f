// One error format for every HTTP response: { error: { code, message, requestId, details? } }.
// Fastify's own errors are mapped onto the registry's codes; anything unexposed becomes ERR_INTERNAL.
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { Type } from 'typebox';
import { CastellanError, type ErrorCode } from '../errors/index.ts';

export const ErrorResponseSchema = Type.Object(
  {
    error: Type.Object({
      code: Type.String({ description: 'Stable error code, see docs/errors.md' }),
      message: Type.String(),
      requestId: Type.String(),
      details: Type.Optional(Type.Object({}, { additionalProperties: true })),
    }),
  },
  { $id: 'ErrorResponse' },
);

interface AjvError {
  keyword: string;
  instancePath: string;
  message?: string;
  params: Record<string, unknown>;
}

const FASTIFY_CODES: Readonly<Record<string, ErrorCode>> = {
  FST_ERR_CTP_INVALID_JSON_BODY: 'ERR_HTTP_MALFORMED_JSON',
  FST_ERR_CTP_BODY_TOO_LARGE: 'ERR_HTTP_BODY_TOO_LARGE',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'ERR_HTTP_UNSUPPORTED_MEDIA_TYPE',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'ERR_HTTP_EMPTY_BODY',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'ERR_HTTP_BAD_REQUEST',
};

function fromValidation(errors: AjvError[], context: string | undefined): CastellanError {
  const first = errors[0]!;
  const base = `${context ?? 'body'}${first.instancePath}`;
  if (first.keyword === 'additionalProperties') {
    const field = `${base}/${String(first.params.additionalProperty)}`;
    return new CastellanError('ERR_VALIDATION_UNKNOWN_FIELD', {
      message: `Unknown field ${field}`,
      details: { field },
    });
  }
  return new CastellanError('ERR_VALIDATION_FAILED', {
    message: `${base} ${first.message ?? 'is invalid'}`,
    details: { field: base, rule: first.keyword },
  });
}

export function toCastellanError(error: unknown): CastellanError {
  if (error instanceof CastellanError) return error;
  const e = error as FastifyError & { validation?: AjvError[]; validationContext?: string };
  if (Array.isArray(e.validation) && e.validation.length > 0) return fromValidation(e.validation, e.validationContext);
  const mapped = typeof e.code === 'string' ? FASTIFY_CODES[e.code] : undefined;
  if (mapped) return new CastellanError(mapped);
  if (typeof e.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) {
    return new CastellanError('ERR_HTTP_BAD_REQUEST', { detail: e.message });
  }
  return new CastellanError('ERR_INTERNAL', { detail: e?.message, cause: error });
}

export function sendError(request: FastifyRequest, reply: FastifyReply, error: unknown): FastifyReply {
  let failure = toCastellanError(error);
  if (!failure.expose || failure.code === 'ERR_INTERNAL') {
    // The client learns nothing; the log keeps the detail (never request bodies or credentials).
    request.log.error({ err: error, code: failure.code, detail: failure.detail }, 'request failed');
    failure = new CastellanError('ERR_INTERNAL');
  } else if (failure.statusCode >= 500) {
    request.log.warn({ code: failure.code }, 'request refused');
  }
  if (failure.code === 'ERR_AUTH_REQUIRED' || failure.code === 'ERR_AUTH_INVALID') {
    reply.header('www-authenticate', 'Bearer realm="castellan"');
  }
  return reply.status(failure.statusCode).send({
    error: {
      code: failure.code,
      message: failure.message,
      requestId: request.id,
      ...(failure.details ? { details: failure.details } : {}),
    },
  });
}
