// One webhook attempt: a POST to the address the guard resolved (never a second DNS lookup), with the
// URL's own name as Host and TLS SNI so the receiver's certificate is checked against it. Redirects are
// not followed (a 3xx is a failed attempt), the whole exchange is bounded by a timeout, and at most a
// small part of the response body is read and then discarded: receivers answer with a status.
import http from 'node:http';
import https from 'node:https';
import type { OutboundTarget } from './outbound-guard.ts';

export interface SendOutcome {
  readonly ok: boolean;
  /** The HTTP status, when a response arrived. */
  readonly status: number | null;
  /** Why the attempt failed, for the delivery record (no response bodies, no secrets). */
  readonly error: string | null;
  /** The receiver's Retry-After (429, 503), in ms, when it gave one in seconds. */
  readonly retryAfterMs: number | null;
}

const MAX_RESPONSE_BYTES = 16 * 1024;

function retryAfterOf(value: string | string[] | undefined): number | null {
  const text = Array.isArray(value) ? value[0] : value;
  return text !== undefined && /^\d{1,7}$/.test(text.trim()) ? Number(text.trim()) * 1000 : null;
}

function failureOf(error: unknown): string {
  const e = error as NodeJS.ErrnoException & { name?: string };
  if (e.name === 'TimeoutError' || e.name === 'AbortError' || e.code === 'ABORT_ERR') return 'timeout';
  if (typeof e.code === 'string' && /CERT|SSL|TLS|SELF_SIGNED|HOSTNAME|ALTNAME/.test(e.code)) return `tls: ${e.code}`;
  return `network: ${e.code ?? 'error'}`;
}

export function sendWebhook(
  target: OutboundTarget,
  body: string,
  headers: Readonly<Record<string, string>>,
  options: { timeoutMs: number; signal?: AbortSignal },
): Promise<SendOutcome> {
  const payload = Buffer.from(body, 'utf8');
  const signal = options.signal
    ? AbortSignal.any([options.signal, AbortSignal.timeout(options.timeoutMs)])
    : AbortSignal.timeout(options.timeoutMs);
  const secure = target.url.protocol === 'https:';
  const requestOptions: https.RequestOptions = {
    method: 'POST',
    // The resolved address itself: an IP literal is never looked up again. Without a servername (an
    // IP-literal URL) the certificate is checked against this same address.
    host: target.address,
    family: target.family,
    port: target.port,
    path: `${target.url.pathname}${target.url.search}`,
    headers: {
      ...headers,
      host: target.url.host,
      'content-type': 'application/json',
      'content-length': String(payload.length),
    },
    // A fresh connection per attempt: a pooled socket could lead to an address checked for another URL.
    agent: false,
    signal,
    ...(secure
      ? {
          ...(target.servername ? { servername: target.servername } : {}),
          rejectUnauthorized: true,
          minVersion: 'TLSv1.2' as const,
        }
      : {}),
  };
  return new Promise((resolve) => {
    let settled = false;
    const settle = (outcome: SendOutcome) => {
      if (settled) return;
      settled = true;
      resolve(outcome);
    };
    const req = (secure ? https : http).request(requestOptions, (res) => {
      const status = res.statusCode ?? 0;
      const outcome: SendOutcome = {
        ok: status >= 200 && status < 300,
        status,
        error:
          status >= 200 && status < 300
            ? null
            : status >= 300 && status < 400
              ? `redirect ${status}`
              : `http ${status}`,
        retryAfterMs: status === 429 || status === 503 ? retryAfterOf(res.headers['retry-after']) : null,
      };
      let received = 0;
      res.on('data', (chunk: Buffer) => {
        received += chunk.length;
        if (received > MAX_RESPONSE_BYTES) {
          res.destroy();
          settle(outcome);
        }
      });
      res.on('end', () => settle(outcome));
      res.on('close', () => settle(outcome));
      res.on('error', () => settle(outcome));
    });
    req.on('error', (error) => settle({ ok: false, status: null, error: failureOf(error), retryAfterMs: null }));
    req.end(payload);
  });
}
