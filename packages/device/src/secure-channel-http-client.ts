// The device SDK's secure-channel client over HTTP (CHAN-3, CHAN-4; docs/protocol.md "Secure channel" →
// "Over HTTP"), for devices that cannot do TLS: a one-round-trip handshake against the platform's pinned
// static public key, then every device-API request sealed in a frame (device ID, epoch, sequence number
// and timestamp authenticated) and every answer opened from one. Keys rotate by the library's rules
// (dynamic keys); when the platform refuses a frame of an established session (expired, ended by a
// credential change, …) the client handshakes again once and resends, since a refused frame had no
// effect. Works over the plain-HTTP listener (http://) and over HTTPS (https://, with the pinned CA).
import http from 'node:http';
import https from 'node:https';
import {
  completeHandshake,
  createHello,
  SECURE_CHANNEL_HELLO_BYTES,
  type SecureChannelSession,
  type SessionOptions,
  type SuiteName,
} from '@castellan/protocol';
import { DeviceHttpError, type DeviceHttpResponse } from './device-http-client.ts';

export interface SecureChannelHttpClientOptions {
  /** http://host:port of the plain-HTTP secure-channel listener, or https://host:port of the API. */
  baseUrl: string;
  deviceId: string;
  secret: string;
  /** The platform's static public key for the suite (65 bytes, or 130 hex digits), pinned in the device. */
  platformPublicKey: string | Uint8Array;
  /** 'intl' (P-256, AES-128-GCM; default) or 'sm' (SM2 curve, SM3, SM4-GCM). */
  suite?: SuiteName;
  /** PEM CA to pin for an https:// baseUrl. */
  ca?: string | Buffer;
  /** Must match the platform's secureChannel.rotateAfterFrames / rotateAfterMinutes. */
  sessionOptions?: SessionOptions;
  timeoutMs?: number;
  /** The device's clock (ms since the epoch); Date.now by default. */
  clock?: () => number;
}

const PATHS = {
  hello: '/v1/device-api/secure-channel/hello',
  request: '/v1/device-api/secure-channel/request',
} as const;
/** Session ID length after the 120-byte reply (docs/protocol.md "Over HTTP"). */
const SESSION_ID_BYTES = 16;

interface RawAnswer {
  status: number;
  contentType: string;
  body: Buffer;
}

export class SecureChannelHttpClient {
  readonly deviceId: string;
  readonly suite: SuiteName;
  readonly #o: SecureChannelHttpClientOptions;
  readonly #platformKey: Buffer;
  readonly #clock: () => number;
  #session: SecureChannelSession | null = null;
  #sessionId: Buffer | null = null;
  /** Handshakes done (one per session). */
  handshakes = 0;

  constructor(options: SecureChannelHttpClientOptions) {
    const url = new URL(options.baseUrl);
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new TypeError('baseUrl must be http(s)://');
    if (url.protocol === 'https:' && !options.ca) throw new TypeError('an https:// baseUrl needs the pinned ca');
    this.#o = options;
    this.deviceId = options.deviceId;
    this.suite = options.suite ?? 'intl';
    this.#platformKey =
      typeof options.platformPublicKey === 'string'
        ? Buffer.from(options.platformPublicKey, 'hex')
        : Buffer.from(options.platformPublicKey);
    if (this.#platformKey.length !== 65) throw new TypeError('platformPublicKey is a 65-byte point');
    this.#clock = options.clock ?? Date.now;
  }

  /** Whether a session is established. */
  get connected(): boolean {
    return this.#session !== null;
  }

  /** Handshakes (again): a fresh ephemeral key, a new session. */
  async handshake(): Promise<void> {
    this.forgetSession();
    const { hello, ephemeral } = createHello({
      suite: this.suite,
      deviceId: this.deviceId,
      secret: this.#o.secret,
      now: this.#clock(),
    });
    const answer = await this.#post(PATHS.hello, hello);
    if (answer.status !== 200 || answer.body.length !== SECURE_CHANNEL_HELLO_BYTES + SESSION_ID_BYTES) {
      throw refusal(answer, 'the platform refused the hello');
    }
    // Throws SecureChannelError('forged') when the peer does not hold the pinned key: nothing is sent then.
    this.#session = completeHandshake({
      suite: this.suite,
      deviceId: this.deviceId,
      secret: this.#o.secret,
      hello,
      ephemeral,
      reply: answer.body.subarray(0, SECURE_CHANNEL_HELLO_BYTES),
      platformPublicKey: this.#platformKey,
      now: this.#clock(),
      ...(this.#o.sessionOptions ? { options: this.#o.sessionOptions } : {}),
    });
    this.#sessionId = Buffer.from(answer.body.subarray(SECURE_CHANNEL_HELLO_BYTES));
    this.handshakes++;
  }

  forgetSession(): void {
    this.#session = null;
    this.#sessionId = null;
  }

  /**
   * A device-API request (path under /v1/device-api/) through the channel; the answer is the route's
   * status and JSON body, like DeviceHttpClient.request.
   */
  async request<T = unknown>(method: string, path: string, body?: unknown): Promise<DeviceHttpResponse<T>> {
    const envelope = Buffer.from(JSON.stringify({ m: method, p: path, ...(body === undefined ? {} : { b: body }) }));
    const fresh = this.#session === null;
    if (fresh) await this.handshake();
    try {
      return await this.#send<T>(envelope);
    } catch (error) {
      // A refused frame of an older session (expired, ended, keys out of step): one new session, once.
      if (fresh || !(error instanceof DeviceHttpError) || error.code !== 'ERR_SECURE_CHANNEL_REFUSED') throw error;
      await this.handshake();
      return this.#send<T>(envelope);
    }
  }

  reportTelemetry(points: Record<string, unknown>): Promise<DeviceHttpResponse<unknown>> {
    return this.request('POST', '/v1/device-api/telemetry', points);
  }

  reportState(state: Record<string, unknown>): Promise<DeviceHttpResponse<unknown>> {
    return this.request('POST', '/v1/device-api/state', state);
  }

  async #send<T>(envelope: Buffer): Promise<DeviceHttpResponse<T>> {
    const session = this.#session!;
    const frame = session.seal(envelope, this.#clock());
    const answer = await this.#post(PATHS.request, Buffer.concat([this.#sessionId!, frame]));
    if (answer.status !== 200) {
      if (answer.status === 401) this.forgetSession();
      throw refusal(answer, 'the platform refused the frame');
    }
    const plaintext = session.open(answer.body, this.#clock());
    const inner = JSON.parse(plaintext.toString('utf8')) as { s: number; b: T };
    return { status: inner.s, body: inner.b };
  }

  #post(path: string, body: Buffer): Promise<RawAnswer> {
    const url = new URL(path, this.#o.baseUrl);
    const secure = url.protocol === 'https:';
    const request = secure ? https.request : http.request;
    return new Promise((resolve, reject) => {
      const req = request(
        url,
        {
          method: 'POST',
          headers: { 'content-type': 'application/octet-stream', 'content-length': body.length },
          timeout: this.#o.timeoutMs ?? 10_000,
          ...(secure ? { ca: this.#o.ca, minVersion: 'TLSv1.2' as const } : {}),
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (chunk: Buffer) => chunks.push(chunk));
          res.on('end', () =>
            resolve({
              status: res.statusCode ?? 0,
              contentType: String(res.headers['content-type'] ?? ''),
              body: Buffer.concat(chunks),
            }),
          );
          res.on('error', reject);
        },
      );
      req.on('timeout', () => req.destroy(new DeviceHttpError('ERR_TIMEOUT', 'the platform did not answer in time')));
      req.on('error', reject);
      req.end(body);
    });
  }
}

function refusal(answer: RawAnswer, fallback: string): DeviceHttpError {
  if (answer.contentType.startsWith('application/json')) {
    try {
      const { error } = JSON.parse(answer.body.toString('utf8')) as { error?: { code?: string; message?: string } };
      if (error?.code) return new DeviceHttpError(error.code, error.message ?? fallback, answer.status);
    } catch {
      // not our error format
    }
  }
  return new DeviceHttpError('ERR_SECURE_CHANNEL_UNEXPECTED', fallback, answer.status);
}
