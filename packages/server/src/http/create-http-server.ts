// The HTTPS API (Fastify): TLS 1.2+ with AEAD suites only, security headers, schema validation at the
// edge, one error format, request IDs, OpenAPI generated from the same schemas. No plain-HTTP listener.
import { randomUUID } from 'node:crypto';
import { STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';
import cookie from '@fastify/cookie';
import helmet from '@fastify/helmet';
import swagger from '@fastify/swagger';
import Fastify, { type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { CastellanError } from '../errors/index.ts';
import { AEAD_CIPHERS } from '../lib/tls-ciphers.ts';
import { ErrorResponseSchema, sendError } from './error-responses.ts';
import { type HealthRoutesOptions, healthRoutes } from './health-routes.ts';
import { createValidatorCompiler } from './validator-compilers.ts';

export interface HttpServerOptions {
  /** groups: tls.groups (CHAN-8), key-exchange groups most preferred first. */
  tls: { cert: string; key: string; minVersion: 'TLSv1.2' | 'TLSv1.3'; groups?: string };
  bodyLimitBytes: number;
  requestTimeoutMs: number;
  trustProxy: boolean;
  version: string;
  log: Logger;
  readiness: HealthRoutesOptions['readiness'];
  /** Runs before any route is registered: hooks that must cover every route (the guard). */
  beforeRoutes?: (app: FastifyInstance) => void;
  /** Registers each subsystem's routes (a Fastify plugin with its options), in order. */
  routes: ReadonlyArray<(app: FastifyInstance) => PromiseLike<unknown>>;
}

/**
 * Requests too broken to reach Fastify's routing (unparsable, oversized headers, too slow) get the one
 * error format too. Fastify's default handler would log the raw bytes, Authorization header included.
 */
function answerClientError(log: Logger, error: NodeJS.ErrnoException, socket: Duplex): void {
  // A TLS failure (handshake timeout, refused protocol) leaves no HTTP to answer in; Node does not close
  // the socket after a handshake timeout, so a silent client would hold it for ever.
  if (error.code === 'ECONNRESET' || /^ERR_(TLS|SSL)_/.test(error.code ?? '') || socket.destroyed || !socket.writable) {
    socket.destroy();
    return;
  }
  const failure = new CastellanError(
    error.code === 'HPE_HEADER_OVERFLOW'
      ? 'ERR_HTTP_HEADERS_TOO_LARGE'
      : error.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? 'ERR_HTTP_REQUEST_TIMEOUT'
        : 'ERR_HTTP_BAD_REQUEST',
  );
  const requestId = randomUUID();
  log.debug({ code: failure.code, parserError: error.code, requestId }, 'http: unparsable request refused');
  const body = JSON.stringify({ error: { code: failure.code, message: failure.message, requestId } });
  socket.end(
    `HTTP/1.1 ${failure.statusCode} ${STATUS_CODES[failure.statusCode]}\r\n` +
      `content-type: application/json; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\n` +
      `x-request-id: ${requestId}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n${body}`,
  );
}

export async function createHttpServer(options: HttpServerOptions): Promise<FastifyInstance> {
  const app = Fastify({
    https: {
      cert: options.tls.cert,
      key: options.tls.key,
      minVersion: options.tls.minVersion,
      ciphers: AEAD_CIPHERS,
      ...(options.tls.groups ? { ecdhCurve: options.tls.groups } : {}),
      honorCipherOrder: true,
      // Fixed, not Node's argv-derived default: every process of a scale deployment resumes the others'
      // sessions (RES-2).
      sessionIdContext: 'castellan-https',
      // The handshake is part of receiving a request (Node's default would give it 120 s).
      handshakeTimeout: options.requestTimeoutMs,
    },
    loggerInstance: options.log,
    genReqId: () => randomUUID(),
    bodyLimit: options.bodyLimitBytes,
    requestTimeout: options.requestTimeoutMs,
    trustProxy: options.trustProxy,
    // Shutdown refusals use our error format (hook below), not Fastify's.
    return503OnClosing: false,
    forceCloseConnections: 'idle',
    clientErrorHandler: (error, socket) => answerClientError(options.log, error, socket),
  });

  let closing = false;
  app.addHook('preClose', async () => {
    closing = true;
  });
  app.addHook('onRequest', async () => {
    if (closing) throw new CastellanError('ERR_HTTP_SHUTTING_DOWN');
  });
  app.setValidatorCompiler(createValidatorCompiler());
  // The API speaks JSON only: other media types are refused (415) rather than parsed as text.
  app.removeContentTypeParser('text/plain');
  app.setErrorHandler((error, request, reply) => sendError(request, reply, error));
  app.setNotFoundHandler((request, reply) => sendError(request, reply, new CastellanError('ERR_HTTP_NOT_FOUND')));
  app.addSchema(ErrorResponseSchema);
  app.decorateRequest('principal', undefined);
  app.addHook('onSend', async (request, reply, payload) => {
    reply.header('x-request-id', request.id);
    // API responses can carry secrets shown once: never cache them anywhere.
    reply.header('cache-control', 'no-store');
    return payload;
  });

  await app.register(helmet, { global: true });
  // Session cookies (accounts/session-delivery.ts); parsed only, never signed: the token is the secret.
  await app.register(cookie);
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'Castellan API',
        version: options.version,
        description: 'Security-first cloud platform for smart-home devices. Errors: docs/errors.md.',
      },
      components: {
        securitySchemes: {
          bearer: {
            type: 'http',
            scheme: 'bearer',
            description: 'A session token (cas_ses_…, apps) or a staff API credential (cas_adm_…)',
          },
          sessionCookie: {
            type: 'apiKey',
            in: 'cookie',
            name: '__Host-castellan_session',
            description: 'The browser session cookie (HttpOnly, Secure, SameSite=Strict)',
          },
          operatorSignature: {
            type: 'apiKey',
            in: 'header',
            name: 'Authorization',
            description:
              'CASTELLAN-HMAC-SHA256 signed request of an operator access key (docs/api-signing.md), with X-Castellan-Date, X-Castellan-Nonce and X-Castellan-Content-SHA256',
          },
          deviceSignature: {
            type: 'apiKey',
            in: 'header',
            name: 'Authorization',
            description:
              'CAS-DEVICE-HMAC-SHA256 request signed with a key derived from the device secret, with x-castellan-content-sha256 (docs/protocol.md, device HTTPS authentication)',
          },
          deviceToken: {
            type: 'http',
            scheme: 'bearer',
            description: 'A short-lived device token (cas_dvt_…) from the challenge-response exchange (DEV-6)',
          },
        },
      },
    },
  });

  options.beforeRoutes?.(app as unknown as FastifyInstance);
  await app.register(healthRoutes, { readiness: options.readiness });
  for (const register of options.routes) await register(app as unknown as FastifyInstance);
  return app as unknown as FastifyInstance;
}
