// The plain-HTTP listener for devices that cannot do TLS (CHAN-3; off by default, secureChannel.httpEnabled).
// It is not a second API: it serves exactly the three secure-channel paths, whose content the channel
// itself authenticates and encrypts, and answers anything else 404 ERR_SECURE_CHANNEL_NOT_FOUND. Each
// request is forwarded in-process to the main Fastify app (inject, with the real remote address), so
// the guard's per-IP limits, blocks and detections apply exactly as on HTTPS. Connections pass the
// listener's own allow/deny lists and the guard's IP blocks first (CHAN-5); bodies are capped at the
// largest secure-channel message, and headers and bodies must arrive in time.
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse, STATUS_CODES } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { FastifyInstance } from 'fastify';
import { CastellanError, type ErrorCode } from '../../errors/index.ts';
import { createAddressFilter, filterConnections } from '../../guard/address-filter.ts';
import { SECURE_CHANNEL_PATHS } from './secure-channel-routes.ts';
import { SECURE_CHANNEL_MAX_REQUEST_BYTES } from './secure-channel-service.ts';

export interface SecureChannelHttpListenerOptions {
  host: string;
  port: number;
  allow: readonly string[];
  deny: readonly string[];
  /** The guard's local IP blocks. */
  isBlocked: (ip: string) => boolean;
  /** Time to receive a whole request (http.requestTimeoutMs). */
  requestTimeoutMs: number;
  /** The main API the requests are forwarded to. */
  app: FastifyInstance;
  log: { debug: (obj: object, msg: string) => void; warn: (obj: object, msg: string) => void };
}

export interface SecureChannelHttpListener {
  readonly server: Server;
  readonly url: string;
  /** Connections refused before HTTP (lists, blocks). */
  readonly refused: () => number;
  close(): Promise<void>;
}

const ROUTES = new Set([
  `GET ${SECURE_CHANNEL_PATHS.keys}`,
  `POST ${SECURE_CHANNEL_PATHS.hello}`,
  `POST ${SECURE_CHANNEL_PATHS.request}`,
]);

function sendError(res: ServerResponse, code: ErrorCode, requestId: string = randomUUID()): void {
  const error = new CastellanError(code);
  const body = JSON.stringify({ error: { code, message: error.message, requestId } });
  res.writeHead(error.statusCode, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
    'x-request-id': requestId,
  });
  res.end(body);
}

/** Reads the body up to the cap; null when it is larger (the rest is not read). */
function readBody(req: IncomingMessage): Promise<Buffer | null> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length'] ?? 0);
    if (declared > SECURE_CHANNEL_MAX_REQUEST_BYTES) return resolve(null);
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > SECURE_CHANNEL_MAX_REQUEST_BYTES) {
        req.removeAllListeners('data');
        req.pause();
        resolve(null);
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

export async function startSecureChannelHttpListener(
  options: SecureChannelHttpListenerOptions,
): Promise<SecureChannelHttpListener> {
  const server = createServer(
    {
      requestTimeout: options.requestTimeoutMs,
      headersTimeout: Math.min(options.requestTimeoutMs, 10_000),
      keepAliveTimeout: 5_000,
      // A device's request has a handful of short headers.
      maxHeaderSize: 8192,
    },
    (req, res) => {
      handle(req, res).catch((error: unknown) => {
        options.log.warn({ err: error }, 'secure channel http: request failed');
        if (!res.headersSent) sendError(res, 'ERR_INTERNAL');
        else res.destroy();
      });
    },
  );
  server.on('clientError', (error: NodeJS.ErrnoException, socket) => {
    if (!socket.writable) return socket.destroy();
    const code = error.code === 'HPE_HEADER_OVERFLOW' ? 'ERR_HTTP_HEADERS_TOO_LARGE' : 'ERR_HTTP_BAD_REQUEST';
    const failure = new CastellanError(code);
    const body = JSON.stringify({ error: { code, message: failure.message, requestId: randomUUID() } });
    socket.end(
      `HTTP/1.1 ${failure.statusCode} ${STATUS_CODES[failure.statusCode]}\r\ncontent-type: application/json; charset=utf-8\r\n` +
        `content-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
    );
  });
  const admit = createAddressFilter({ allow: [...options.allow], deny: [...options.deny] });
  const filtered = filterConnections(
    server,
    (ip) => admit(ip) && !options.isBlocked(ip),
    // No address in the log (PRIV-4).
    () =>
      options.log.debug({}, 'secure channel http: connection refused (secureChannel.httpAllow/httpDeny or a block)'),
  );

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '').split('?', 1)[0]!;
    if (!ROUTES.has(`${req.method} ${path}`)) {
      // Drain nothing: the connection closes after the answer.
      res.setHeader('connection', 'close');
      return sendError(res, 'ERR_SECURE_CHANNEL_NOT_FOUND');
    }
    const body = req.method === 'POST' ? await readBody(req) : Buffer.alloc(0);
    if (body === null) {
      res.setHeader('connection', 'close');
      return sendError(res, 'ERR_HTTP_BODY_TOO_LARGE');
    }
    const contentType = req.headers['content-type'];
    const forwarded = await options.app.inject({
      method: req.method as 'GET' | 'POST',
      url: path,
      headers: {
        host: req.headers.host ?? 'localhost',
        ...(req.method === 'POST' && contentType ? { 'content-type': contentType } : {}),
      },
      ...(req.method === 'POST' ? { payload: body } : {}),
      remoteAddress: req.socket.remoteAddress ?? '',
    });
    const headers: Record<string, string | number> = {
      'content-length': forwarded.rawPayload.length,
      'cache-control': 'no-store',
    };
    for (const name of ['content-type', 'x-request-id', 'retry-after'] as const) {
      const value = forwarded.headers[name];
      if (value !== undefined) headers[name] = String(value);
    }
    res.writeHead(forwarded.statusCode, headers);
    res.end(forwarded.rawPayload);
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: options.host, port: options.port }, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  const urlHost = host === '0.0.0.0' || host === '[::]' ? 'localhost' : host;
  return {
    server,
    url: `http://${urlHost}:${address.port}`,
    refused: () => filtered.refused,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
