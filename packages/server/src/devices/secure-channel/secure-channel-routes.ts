// The secure channel over HTTP (CHAN-3, CHAN-4; docs/protocol.md "Secure channel" → "Over HTTP"):
//
//   GET  /v1/device-api/secure-channel/keys     the pinned static public keys (JSON)
//   POST /v1/device-api/secure-channel/hello    hello (120 B) → reply (120 B) ‖ session ID (16 B)
//   POST /v1/device-api/secure-channel/request  session ID ‖ device frame → platform frame
//
// A device frame's plaintext is an envelope {"m": method, "p": "/v1/device-api/…", "b"?: body}; the
// request is dispatched in-process (app.inject) to the device-API route as that device, and the route's
// answer {"s": status, "b": body} comes back sealed. The envelope reaches /v1/device-api/* only, never
// these three routes. Served on the HTTPS API and, for devices without TLS, on the plain-HTTP listener
// (secure-channel-http-listener.ts), which forwards here so the same guard applies.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { Type } from 'typebox';
import { CastellanError, ERROR_CODES } from '../../errors/index.ts';
import { StrictObject } from '../../http/index.ts';
import type { DeviceHttpAuth } from '../device-http-auth.ts';
import { SECURE_CHANNEL_MAX_REQUEST_BYTES, type SecureChannelService } from './secure-channel-service.ts';

export const SECURE_CHANNEL_PATHS = {
  keys: '/v1/device-api/secure-channel/keys',
  hello: '/v1/device-api/secure-channel/hello',
  request: '/v1/device-api/secure-channel/request',
} as const;

export interface SecureChannelRoutesOptions {
  service: SecureChannelService;
  auth: Pick<DeviceHttpAuth, 'internalDispatchHeaders'>;
}

/** What an envelope may name: a device-API path of lower-case segments, an optional plain query. */
const ENVELOPE_PATH = /^\/v1\/device-api\/[a-z0-9_-]+(\/[a-z0-9_-]+)*(\?[A-Za-z0-9_.~=&%-]{0,512})?$/;
const ENVELOPE_METHODS = new Set(['GET', 'POST', 'PUT', 'PATCH', 'DELETE']);
const errorRef = { $ref: 'ErrorResponse#' } as const;
const binary = { description: 'application/octet-stream (docs/protocol.md, Secure channel over HTTP)' };

interface Envelope {
  method: string;
  path: string;
  body: unknown;
}

/** The envelope of a frame, or null when it is not one (JSON object, known method, allowed path). */
export function parseEnvelope(plaintext: Buffer): Envelope | null {
  let value: unknown;
  try {
    value = JSON.parse(plaintext.toString('utf8'));
  } catch {
    return null;
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return null;
  const { m, p, b, ...rest } = value as Record<string, unknown>;
  if (Object.keys(rest).length > 0 || typeof m !== 'string' || typeof p !== 'string') return null;
  if (!ENVELOPE_METHODS.has(m)) return null;
  return { method: m, path: p, body: b };
}

/** Whether the envelope may reach this path: the device API, never the secure channel's own routes. */
export function envelopePathAllowed(path: string): boolean {
  return ENVELOPE_PATH.test(path) && !path.startsWith('/v1/device-api/secure-channel');
}

export async function secureChannelRoutes(app: FastifyInstance, { service, auth }: SecureChannelRoutesOptions) {
  // Encapsulated: the JSON-only API accepts raw bytes on these routes alone.
  app.addContentTypeParser(
    'application/octet-stream',
    { parseAs: 'buffer', bodyLimit: SECURE_CHANNEL_MAX_REQUEST_BYTES },
    (_request, body, done) => done(null, body),
  );

  app.get(
    SECURE_CHANNEL_PATHS.keys,
    {
      schema: {
        summary: 'The platform’s static secure-channel public keys, which devices pin (CHAN-3)',
        tags: ['device-api'],
        response: {
          200: StrictObject({
            generation: Type.Integer({ description: 'grows when the platform rolls its static keys' }),
            keys: StrictObject({
              intl: Type.String({ description: 'P-256, 65-byte uncompressed point, hex' }),
              sm: Type.String({ description: 'SM2 curve, 65-byte uncompressed point, hex' }),
            }),
          }),
          429: errorRef,
        },
      },
    },
    async () => service.publicKeys(),
  );

  /** The raw body; any other media type (parsed as JSON by the API) is refused before the channel sees it. */
  const bytesOf = (request: FastifyRequest): Buffer => {
    if (Buffer.isBuffer(request.body)) return request.body;
    if (request.body === undefined || request.body === null) return Buffer.alloc(0);
    throw new CastellanError('ERR_HTTP_UNSUPPORTED_MEDIA_TYPE', {
      message: 'Content-Type is not supported; send application/octet-stream',
    });
  };

  app.post(
    SECURE_CHANNEL_PATHS.hello,
    {
      bodyLimit: SECURE_CHANNEL_MAX_REQUEST_BYTES,
      schema: {
        summary: 'Secure-channel handshake: hello (120 bytes) → reply (120 bytes) ‖ session ID (16 bytes)',
        description: binary.description,
        tags: ['device-api'],
        response: { 400: errorRef, 401: errorRef, 415: errorRef, 429: errorRef },
      },
    },
    async (request, reply) => {
      const answer = await service.hello(bytesOf(request), request.ip);
      return reply.type('application/octet-stream').send(answer);
    },
  );

  app.post(
    SECURE_CHANNEL_PATHS.request,
    {
      bodyLimit: SECURE_CHANNEL_MAX_REQUEST_BYTES,
      schema: {
        summary: 'A device-API request inside a secure-channel frame: session ID ‖ frame → sealed answer frame',
        description: binary.description,
        tags: ['device-api'],
        response: { 400: errorRef, 401: errorRef, 415: errorRef, 429: errorRef },
      },
    },
    async (request, reply) => {
      const opened = await service.open(bytesOf(request), request.ip);
      const envelope = parseEnvelope(opened.plaintext);
      let answer: { s: number; b: unknown };
      if (!envelope) {
        answer = { s: 400, b: errorBody('ERR_SECURE_CHANNEL_ENVELOPE_INVALID', request.id) };
      } else if (!envelopePathAllowed(envelope.path)) {
        answer = { s: 404, b: errorBody('ERR_SECURE_CHANNEL_PATH_NOT_ALLOWED', request.id) };
      } else {
        const hasBody = envelope.body !== undefined;
        const inner = await app.inject({
          method: envelope.method as 'GET',
          url: envelope.path,
          headers: {
            ...auth.internalDispatchHeaders(opened.device.id),
            host: request.headers.host ?? 'localhost',
            ...(hasBody ? { 'content-type': 'application/json' } : {}),
          },
          ...(hasBody ? { payload: JSON.stringify(envelope.body) } : {}),
          remoteAddress: request.ip,
        });
        let body: unknown = null;
        if (/^application\/json/.test(String(inner.headers['content-type'] ?? '')) && inner.payload.length > 0) {
          try {
            body = JSON.parse(inner.payload);
          } catch {
            body = null;
          }
        }
        answer = { s: inner.statusCode, b: body };
      }
      const sealed = await service.seal(opened.sessionId, Buffer.from(JSON.stringify(answer), 'utf8'), request.ip);
      return reply.type('application/octet-stream').send(sealed);
    },
  );
}

function errorBody(
  code: 'ERR_SECURE_CHANNEL_ENVELOPE_INVALID' | 'ERR_SECURE_CHANNEL_PATH_NOT_ALLOWED',
  requestId: string,
) {
  return { error: { code, message: ERROR_CODES[code].message, requestId } };
}
