// The device SDK's HTTPS client (DEV-6) for devices that report over HTTPS: every request is signed in
// timestamp mode with a key derived from the device secret (the secret never travels), over TLS ≥ 1.2
// to a platform whose certificate must chain to the pinned CA (no system trust store). Challenge-response
// mode authenticates the platform too: it must prove it holds the device's key (serverProof) before the
// device answers; the device token it then gets replaces signatures until it expires.
// Hardware-ID registration (DEV-4) is a static helper: the device's own secret comes back sealed.
import { X509Certificate } from 'node:crypto';
import https from 'node:https';
import { isIP } from 'node:net';
import { checkServerIdentity, type TLSSocket } from 'node:tls';
import {
  certificatePathToPinnedCa,
  challengeDeviceResponse,
  deviceRequestKey,
  newDeviceNonce,
  newTimeNonce,
  openDeviceSecret,
  SignedTimeError,
  signDeviceRequest,
  signRegistration,
  verifyServerProof,
  verifySignedTime,
} from '@castellan/protocol';

export interface DeviceHttpClientOptions {
  /** https://host:port of the platform. */
  baseUrl: string;
  deviceId: string;
  secret: string;
  /** PEM CA certificate of the platform (pinned: no system trust store). */
  ca: string | Buffer;
  /** SNI / certificate name to check; defaults to the URL's host. */
  servername?: string;
  timeoutMs?: number;
  /** The device's clock (ms since the epoch); Date.now by default. syncClock() corrects its offset. */
  clock?: () => number;
  /** syncClock() accepts only signed time (no fallback to the plain answer of an older platform). */
  requireSignedTime?: boolean;
}

export interface DeviceHttpResponse<T> {
  status: number;
  body: T;
}

export class DeviceHttpError extends Error {
  readonly code: string;
  readonly status: number | null;
  constructor(code: string, message: string, status: number | null = null) {
    super(message);
    this.name = 'DeviceHttpError';
    this.code = code;
    this.status = status;
  }
}

interface PinnedTarget {
  baseUrl: string;
  ca: string | Buffer;
  servername?: string | undefined;
  timeoutMs?: number | undefined;
}

/** Tokens are dropped this long before they expire (clock skew, request time). */
const TOKEN_MARGIN_MS = 30_000;
/** What the TLS stack says when the certificate's dates disagree with this machine's clock. */
const DATE_ERRORS = new Set(['CERT_NOT_YET_VALID', 'CERT_HAS_EXPIRED']);

/**
 * The peer's certificate chain as sent, checked by signature only against the pinned CA, plus the name:
 * the TLS check for a machine whose clock is wrong (dates are judged later, against signed time).
 */
function checkPeerWithoutDates(socket: TLSSocket, target: PinnedTarget, hostname: string): Error | null {
  const leaf = socket.getPeerX509Certificate();
  if (!leaf) return new Error('no server certificate');
  const chain: X509Certificate[] = [];
  let link = socket.getPeerCertificate(true);
  while (link.issuerCertificate && link.issuerCertificate !== link && chain.length < 4) {
    link = link.issuerCertificate;
    chain.push(new X509Certificate(link.raw));
  }
  try {
    certificatePathToPinnedCa(leaf, chain, target.ca);
  } catch {
    return new Error('the server certificate does not chain to the pinned CA');
  }
  return checkServerIdentity(target.servername ?? hostname, socket.getPeerCertificate()) ?? null;
}

function send(
  target: PinnedTarget,
  method: string,
  path: string,
  headers: Record<string, string>,
  payload: Buffer | null,
  /** Signed time only: the chain is checked by signature and name, its dates after the answer verifies. */
  withoutDates = false,
): Promise<{ status: number; text: string }> {
  const url = new URL(path, target.baseUrl);
  if (url.protocol !== 'https:') return Promise.reject(new DeviceHttpError('ERR_NOT_HTTPS', 'baseUrl must be https'));
  const servername = target.servername ?? (isIP(url.hostname) ? undefined : url.hostname);
  return new Promise((resolve, reject) => {
    const req = https.request(
      url,
      {
        method,
        ca: target.ca,
        rejectUnauthorized: !withoutDates,
        minVersion: 'TLSv1.2',
        agent: false,
        ...(servername ? { servername } : {}),
        headers: {
          ...headers,
          ...(payload ? { 'content-type': 'application/json', 'content-length': String(payload.length) } : {}),
        },
        timeout: target.timeoutMs ?? 10_000,
      },
      (res) => {
        if (withoutDates) {
          const refused = checkPeerWithoutDates(res.socket as TLSSocket, target, url.hostname);
          if (refused) {
            res.destroy();
            reject(new DeviceHttpError('ERR_PLATFORM_NOT_AUTHENTIC', refused.message));
            return;
          }
        }
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new DeviceHttpError('ERR_TIMEOUT', 'the platform did not answer in time')));
    req.on('error', reject);
    req.end(payload ?? undefined);
  });
}

function parse<T>(text: string): T {
  if (text === '') return undefined as T;
  try {
    return JSON.parse(text) as T;
  } catch {
    return text as T;
  }
}

export class DeviceHttpClient {
  readonly deviceId: string;
  readonly #secret: string;
  readonly #target: PinnedTarget;
  readonly #host: string;
  readonly #clock: () => number;
  #offsetMs = 0;
  #clockSource: 'signed' | 'unsigned' | null = null;
  readonly #requireSignedTime: boolean;
  #token: { value: string; expiresAt: number } | null = null;

  constructor(options: DeviceHttpClientOptions) {
    this.deviceId = options.deviceId;
    this.#secret = options.secret;
    this.#target = {
      baseUrl: options.baseUrl,
      ca: options.ca,
      servername: options.servername,
      timeoutMs: options.timeoutMs,
    };
    this.#host = new URL(options.baseUrl).host;
    this.#clock = options.clock ?? Date.now;
    this.#requireSignedTime = options.requireSignedTime ?? false;
  }

  /** The device's clock corrected by the offset syncClock() measured. */
  now(): number {
    return this.#clock() + this.#offsetMs;
  }

  /** Whether requests currently go with a device token (challenge-response) rather than signatures. */
  get hasToken(): boolean {
    return this.#token !== null && this.#token.expiresAt - TOKEN_MARGIN_MS > this.now();
  }

  /**
   * A request to the device API: `authorization: Bearer cas_dvt_…` while a token is held, otherwise
   * signed in timestamp mode. Never throws on an HTTP error status (the caller reads `status`).
   */
  async request<T = unknown>(method: string, path: string, body?: unknown): Promise<DeviceHttpResponse<T>> {
    const payload = body === undefined ? null : Buffer.from(JSON.stringify(body), 'utf8');
    const target = new URL(path, this.#target.baseUrl);
    const pathAndQuery = `${target.pathname}${target.search}`;
    const headers = this.hasToken
      ? { authorization: `Bearer ${this.#token!.value}` }
      : signDeviceRequest({
          deviceId: this.deviceId,
          secret: this.#secret,
          method,
          path: pathAndQuery,
          host: this.#host,
          body: payload ?? '',
          now: this.now(),
        });
    const res = await send(this.#target, method, pathAndQuery, headers, payload);
    return { status: res.status, body: parse<T>(res.text) };
  }

  /**
   * Sets this client's clock from the platform's (GET /v1/device-api/time?nonce=…) and returns the offset
   * (ms). Trusted time (DEV-6): a fresh nonce goes out and the answer must come back signed with it by a
   * P-256 certificate under the pinned CA, valid at the signed time (verifySignedTime); a forged answer
   * or one for another nonce (a replay) is refused with ERR_TIME_NOT_AUTHENTIC and leaves the clock
   * alone. When this machine's clock is so wrong that TLS refuses the platform's certificate dates, the
   * request is retried once with the chain checked by signature and name only: the answer itself is
   * authenticated end to end and the request carries nothing but the nonce. An older platform's unsigned
   * answer is used only without requireSignedTime, and never on that retry.
   */
  async syncClock(): Promise<number> {
    const nonce = newTimeNonce();
    const path = `/v1/device-api/time?nonce=${nonce}`;
    let withoutDates = false;
    let before = this.#clock();
    let res: { status: number; text: string };
    try {
      res = await send(this.#target, 'GET', path, {}, null);
    } catch (error) {
      if (!DATE_ERRORS.has((error as NodeJS.ErrnoException).code ?? '')) throw error;
      withoutDates = true;
      before = this.#clock();
      res = await send(this.#target, 'GET', path, {}, null, true);
    }
    let after = this.#clock();
    let answer = parse<{ now?: unknown; signature?: unknown; error?: { code?: unknown } } | null>(res.text);
    if (res.status === 200 && typeof answer === 'object' && answer !== null && 'signature' in answer) {
      let time: number;
      try {
        time = verifySignedTime(answer, { ca: this.#target.ca, nonce });
      } catch (error) {
        const reason = error instanceof SignedTimeError ? error.reason : 'malformed';
        throw new DeviceHttpError('ERR_TIME_NOT_AUTHENTIC', `the platform's time is not authentic (${reason})`);
      }
      this.#clockSource = 'signed';
      this.#offsetMs = Math.round(time - (before + after) / 2);
      return this.#offsetMs;
    }
    if (this.#requireSignedTime || withoutDates) {
      throw new DeviceHttpError('ERR_TIME_NOT_AUTHENTIC', 'the platform did not sign its time', res.status);
    }
    // A platform that cannot sign (503 ERR_TIME_SIGNING_UNAVAILABLE) still tells its time without a nonce.
    if (res.status === 503 && answer?.error?.code === 'ERR_TIME_SIGNING_UNAVAILABLE') {
      before = this.#clock();
      res = await send(this.#target, 'GET', '/v1/device-api/time', {}, null);
      after = this.#clock();
      answer = parse(res.text);
    }
    const now = answer?.now;
    if (res.status !== 200 || typeof now !== 'number') {
      throw new DeviceHttpError('ERR_TIME_UNAVAILABLE', 'the platform did not return its time', res.status);
    }
    this.#clockSource = 'unsigned';
    this.#offsetMs = Math.round(now - (before + after) / 2);
    return this.#offsetMs;
  }

  /** How the last syncClock() set the clock: 'signed' (trusted time), 'unsigned', or null before any. */
  get clockSource(): 'signed' | 'unsigned' | null {
    return this.#clockSource;
  }

  /**
   * Challenge-response (mutual): the platform must first prove it holds this device's key (serverProof,
   * compared in constant time); a platform that cannot is refused before the device answers anything.
   * The device token received is then used by request() until it expires.
   */
  async authenticateWithChallenge(): Promise<{ expiresAt: number }> {
    const clientNonce = newDeviceNonce();
    const first = await send(
      this.#target,
      'POST',
      '/v1/device-api/challenges',
      {},
      Buffer.from(JSON.stringify({ deviceId: this.deviceId, clientNonce })),
    );
    const issued = parse<{ challenge?: unknown; serverProof?: unknown }>(first.text);
    if (first.status !== 201 || typeof issued?.challenge !== 'string' || typeof issued.serverProof !== 'string') {
      throw new DeviceHttpError('ERR_CHALLENGE_FAILED', 'the platform did not issue a challenge', first.status);
    }
    if (!verifyServerProof(this.#secret, this.deviceId, clientNonce, issued.challenge, issued.serverProof)) {
      throw new DeviceHttpError('ERR_PLATFORM_NOT_AUTHENTIC', 'the platform could not prove it knows this device');
    }
    const response = challengeDeviceResponse(
      deviceRequestKey(this.#secret),
      this.deviceId,
      issued.challenge,
      clientNonce,
    );
    const second = await send(
      this.#target,
      'POST',
      '/v1/device-api/tokens',
      {},
      Buffer.from(JSON.stringify({ deviceId: this.deviceId, challenge: issued.challenge, response })),
    );
    const token = parse<{ token?: unknown; expiresAt?: unknown }>(second.text);
    if (second.status !== 201 || typeof token?.token !== 'string' || typeof token.expiresAt !== 'number') {
      throw new DeviceHttpError('ERR_DEVICE_AUTH_FAILED', 'the platform refused the challenge response', second.status);
    }
    this.#token = { value: token.token, expiresAt: token.expiresAt };
    return { expiresAt: token.expiresAt };
  }

  /** Drops the device token: requests are signed again. */
  forgetToken(): void {
    this.#token = null;
  }

  reportTelemetry(points: Record<string, unknown>): Promise<DeviceHttpResponse<unknown>> {
    return this.request('POST', '/v1/device-api/telemetry', points);
  }

  reportState(state: Record<string, unknown>): Promise<DeviceHttpResponse<unknown>> {
    return this.request('POST', '/v1/device-api/state', state);
  }

  /**
   * Hardware-ID registration (DEV-4): proves knowledge of the product secret for a listed MAC/IMEI and
   * receives a device ID and its own secret, sealed under a key derived from the product secret and the
   * nonce. Returns a client for the new device.
   */
  static async register(options: {
    baseUrl: string;
    ca: string | Buffer;
    servername?: string;
    productId: string;
    hardwareId: string;
    productSecret: string;
    now?: number;
  }): Promise<{ deviceId: string; secret: string; client: DeviceHttpClient }> {
    const body = signRegistration({
      productId: options.productId,
      hardwareId: options.hardwareId,
      productSecret: options.productSecret,
      ...(options.now !== undefined ? { now: options.now } : {}),
    });
    const target = { baseUrl: options.baseUrl, ca: options.ca, servername: options.servername };
    const res = await send(target, 'POST', '/v1/device-api/register', {}, Buffer.from(JSON.stringify(body)));
    const answer = parse<{ deviceId?: unknown; sealedSecret?: unknown; error?: { code?: string; message?: string } }>(
      res.text,
    );
    if (res.status !== 201 || typeof answer?.deviceId !== 'string' || typeof answer.sealedSecret !== 'string') {
      throw new DeviceHttpError(
        answer?.error?.code ?? 'ERR_DEVICE_REGISTRATION_FAILED',
        answer?.error?.message ?? 'registration failed',
        res.status,
      );
    }
    const secret = openDeviceSecret(options.productSecret, {
      productId: body.productId,
      hardwareId: body.hardwareId,
      deviceId: answer.deviceId,
      nonce: body.nonce,
      sealed: answer.sealedSecret,
    });
    const client = new DeviceHttpClient({
      baseUrl: options.baseUrl,
      ca: options.ca,
      deviceId: answer.deviceId,
      secret,
      ...(options.servername ? { servername: options.servername } : {}),
    });
    return { deviceId: answer.deviceId, secret, client };
  }
}
