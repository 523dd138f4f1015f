// A small HTTPS client for the platform's API that pins the platform's CA (no system trust store).
// Staff authenticate with a bearer token; operators sign each request with an access key (ORG-2,
// docs/api-signing.md).
import https from 'node:https';
import { type AccessKey, signRequest } from '@castellan/protocol';

export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  constructor(status: number, code: string, message: string) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }
}

export class ApiClient {
  readonly #base: URL;
  readonly #ca: string;
  /** A staff bearer token, or an operator access key (then every request is signed). */
  token: string | AccessKey | undefined;

  get baseUrl(): string {
    return this.#base.toString();
  }

  get ca(): string {
    return this.#ca;
  }

  constructor(baseUrl: string, ca: string, token?: string | AccessKey) {
    this.#base = new URL(baseUrl);
    if (this.#base.protocol !== 'https:') throw new Error('the API is served over HTTPS only');
    this.#ca = ca;
    this.token = token;
  }

  request<T>(method: string, path: string, body?: unknown): Promise<T> {
    const url = new URL(path, this.#base);
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const credentials =
      typeof this.token === 'string'
        ? { authorization: `Bearer ${this.token}` }
        : this.token
          ? {
              host: url.host,
              ...signRequest({
                key: this.token,
                method,
                target: `${url.pathname}${url.search}`,
                host: url.host,
                body: payload,
              }),
            }
          : {};
    return new Promise<T>((resolve, reject) => {
      const req = https.request(
        url,
        {
          method,
          ca: this.#ca,
          minVersion: 'TLSv1.2',
          timeout: 15_000,
          headers: {
            accept: 'application/json',
            // An app, not a browser: session tokens come in the response body, not as cookies.
            'x-castellan-client': 'app',
            ...(payload ? { 'content-type': 'application/json', 'content-length': payload.length } : {}),
            ...credentials,
          },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            let parsed: unknown;
            try {
              parsed = text ? JSON.parse(text) : null;
            } catch {
              return reject(
                new ApiError(
                  res.statusCode ?? 0,
                  'ERR_CLIENT_BAD_RESPONSE',
                  `non-JSON response from ${method} ${url.pathname}`,
                ),
              );
            }
            const status = res.statusCode ?? 0;
            if (status >= 400) {
              const error = (parsed as { error?: { code?: string; message?: string } } | null)?.error;
              return reject(
                new ApiError(
                  status,
                  error?.code ?? 'ERR_UNKNOWN',
                  `${method} ${url.pathname}: ${status} ${error?.code ?? ''} ${error?.message ?? ''}`.trim(),
                ),
              );
            }
            resolve(parsed as T);
          });
        },
      );
      req.on('timeout', () => req.destroy(new Error(`${method} ${url.pathname} timed out`)));
      req.on('error', reject);
      req.end(payload);
    });
  }
}
