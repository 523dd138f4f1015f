// Device authentication on the HTTPS device API (DEV-6, S 8.1.2a/e; formats in docs/protocol.md and
// @castellan/protocol device-request-signing.ts). Two modes:
//
// - Timestamp: every request is signed with a key derived from the device secret (HKDF; the secret never
//   travels). onRequest, before the body is read: header syntax → ts within ±300 s → HMAC (constant
//   time, an unknown device costs the same) → nonce never seen (a row in device_request_nonces, so every
//   process shares the replay memory) → admission (status, product auth modes…). The body actually
//   received must then hash to the signed x-castellan-content-sha256 (verifyDeviceBody, preParsing).
// - Challenge-response: the device sends a client nonce, the platform answers with a single-use 60 s
//   challenge and a serverProof (the platform proves it holds the device's key: mutual authentication);
//   the device's HMAC response buys a 15-minute device token (cas_dvt_…, stored as SHA-256) accepted as
//   `authorization: Bearer cas_dvt_…`. Other proofs (a certificate device's signature over the challenge)
//   plug in through DeviceChallengeVerifier.
//
// Every refusal is the same 401 ERR_DEVICE_AUTH_FAILED; the reason goes only to the audit log.
import { createHash, randomBytes } from 'node:crypto';
import {
  challengeDeviceResponse,
  challengeServerProof,
  constantTimeStringEqual,
  DEVICE_CONTENT_SHA256_HEADER,
  DEVICE_REQUEST_WINDOW_MS,
  deviceCanonicalString,
  deviceRequestSignature,
  isContentDigest,
  isDeviceId,
  isDeviceNonce,
  isDeviceToken,
  parseDeviceAuthorization,
  parseDeviceBearer,
} from '@castellan/protocol';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Kysely } from 'kysely';
import type { AuditEvent } from '../audit/index.ts';
import { CastellanError } from '../errors/index.ts';
// The leaf module, not guard/index.ts: that imports the HTTP and accounts layers, which import this one.
import { normaliseIp } from '../guard/address-filter.ts';
import { hashToken, newToken } from '../lib/random-ids.ts';
import type { Database } from '../store/index.ts';
import type { Device, DeviceAuthMethod, DevicesService } from './devices-service.ts';
import { SignedBodies } from '../http/index.ts';

declare module 'fastify' {
  interface FastifyRequest {
    /** The device behind a /v1/device-api request (set by the device authenticate hook). */
    device: Device | undefined;
  }
}

export const CHALLENGE_TTL_MS = 60_000;
/** Carries `deviceId.token` on in-process requests from the secure channel (internalDispatchHeaders). */
const INTERNAL_DISPATCH_HEADER = 'x-castellan-internal-device';
export const DEVICE_TOKEN_TTL_MS = 15 * 60_000;

export type DeviceAuthRefusal =
  | 'malformed'
  | 'stale-ts'
  | 'bad-signature'
  | 'replayed-nonce'
  | 'body-hash-mismatch'
  | 'unknown-token'
  | 'unknown-challenge'
  | 'bad-response'
  | 'not-admitted';

/**
 * Checks a challenge response the HMAC check did not accept, e.g. a certificate device's SM2/ECDSA
 * signature over the challenge (DEV-5). Returns how the device proved itself, or null.
 */
export type DeviceChallengeVerifier = (input: {
  deviceId: string;
  challenge: string;
  clientNonce: string;
  response: string;
}) => Promise<DeviceAuthMethod | null>;

export type DeviceAuthenticateHook = (request: FastifyRequest, reply: FastifyReply) => Promise<void>;

export interface DeviceHttpAuthOptions {
  db: Kysely<Database>;
  devices: Pick<DevicesService, 'deviceRequestKey' | 'getDevice' | 'admit'>;
  /** Records an audit event without waiting. */
  record: (event: AuditEvent) => void;
  /** Intrusion detection: counts authentication failures per address and device (IDS-1). */
  authFailure?: (ip: string, subject: { kind: 'device'; id: string } | null) => Promise<void>;
  now?: () => number;
  /** How often expired nonces, challenges and tokens are purged (ms); 0 disables the timer. */
  purgeIntervalMs?: number;
}

export interface IssuedChallenge {
  challenge: string;
  expiresAt: number;
  serverProof: string;
}

export interface IssuedDeviceToken {
  token: string;
  expiresAt: number;
  deviceId: string;
}

/** Bodies of signed device requests, compared with the hash they promised; deviceOf() needs a verified one. */
const signedBodies = new SignedBodies(() => new CastellanError('ERR_DEVICE_AUTH_FAILED'));

const header = (request: FastifyRequest, name: string): string | undefined => {
  const value = request.headers[name];
  return typeof value === 'string' ? value : undefined;
};

const sha256 = (value: string): Buffer => createHash('sha256').update(value, 'utf8').digest();

export class DeviceHttpAuth {
  /** Extra challenge-response proofs (certificate devices); tried in order when the HMAC does not match. */
  readonly challengeVerifiers: DeviceChallengeVerifier[] = [];
  /** Told of every admitted device request (first use activates a batch device, DEV-7); must not throw. */
  readonly onAdmitted: Array<(device: Device, method: DeviceAuthMethod) => void> = [];
  /** The onRequest hook of every /v1/device-api route that needs an authenticated device. */
  readonly authenticate: DeviceAuthenticateHook;
  readonly #db: Kysely<Database>;
  readonly #devices: DeviceHttpAuthOptions['devices'];
  readonly #record: DeviceHttpAuthOptions['record'];
  readonly #authFailure: DeviceHttpAuthOptions['authFailure'];
  readonly #now: () => number;
  readonly #timer: NodeJS.Timeout | undefined;
  readonly #internalToken = randomBytes(32).toString('base64url');

  constructor(options: DeviceHttpAuthOptions) {
    this.#db = options.db;
    this.#devices = options.devices;
    this.#record = options.record;
    this.#authFailure = options.authFailure;
    this.#now = options.now ?? Date.now;
    this.authenticate = (request) => this.#authenticate(request);
    const every = options.purgeIntervalMs ?? 60_000;
    if (every > 0) {
      this.#timer = setInterval(() => {
        this.purgeExpired().catch(() => {});
      }, every);
      this.#timer.unref();
    }
  }

  close(): void {
    if (this.#timer) clearInterval(this.#timer);
  }

  /** Deletes expired nonces, challenges and tokens; returns how many rows went. */
  async purgeExpired(): Promise<number> {
    const now = this.#now();
    let purged = 0;
    for (const table of ['device_request_nonces', 'device_challenges', 'device_tokens'] as const) {
      const result = await this.#db.deleteFrom(table).where('expires_at', '<', now).executeTakeFirst();
      purged += Number(result.numDeletedRows);
    }
    return purged;
  }

  /** Ends every device token of a device (credential rotation, revocation, decommissioning: DEV-8). */
  async revokeTokens(deviceId: string): Promise<number> {
    const result = await this.#db.deleteFrom('device_tokens').where('device_id', '=', deviceId).executeTakeFirst();
    return Number(result.numDeletedRows);
  }

  /**
   * The device a live device token belongs to, or null (unknown, expired, revoked, or of another device
   * than `deviceId`): the MQTT broker accepts a token as the password (DEV-5 SM2 devices). Admission is
   * the caller's.
   */
  async deviceForToken(deviceId: string, token: string): Promise<Device | null> {
    if (!isDeviceId(deviceId) || !isDeviceToken(token)) return null;
    const row = await this.#db
      .selectFrom('device_tokens')
      .select(['device_id', 'expires_at'])
      .where('token_hash', '=', hashToken(token))
      .executeTakeFirst();
    if (!row || row.device_id !== deviceId || Number(row.expires_at) <= this.#now()) return null;
    return this.#devices.getDevice(row.device_id);
  }

  /**
   * Remembers a nonce for `subject` until `expiresAt`; false when it was already used (a replay). Shared
   * by hardware-ID registration (subject `product:<id>`).
   */
  async useNonce(subject: string, nonce: string, expiresAt: number): Promise<boolean> {
    const inserted = await this.#db
      .insertInto('device_request_nonces')
      .values({ subject, nonce, expires_at: expiresAt })
      .onConflict((oc) => oc.columns(['subject', 'nonce']).doNothing())
      .returning('nonce')
      .executeTakeFirst();
    return inserted !== undefined;
  }

  /**
   * Headers that make an in-process request (app.inject) arrive as `deviceId`, for device-API requests
   * carried inside an authenticated secure-channel frame (CHAN-3). The token is random per process and
   * never leaves it; a request from outside carrying the header with any other value is refused.
   */
  internalDispatchHeaders(deviceId: string): Record<string, string> {
    return { [INTERNAL_DISPATCH_HEADER]: `${deviceId}.${this.#internalToken}` };
  }

  async #authenticate(request: FastifyRequest): Promise<void> {
    const internal = request.headers[INTERNAL_DISPATCH_HEADER];
    if (internal !== undefined) {
      const [deviceId = '', token = ''] = typeof internal === 'string' ? internal.split('.', 2) : [];
      if (!constantTimeStringEqual(token, this.#internalToken) || !isDeviceId(deviceId)) {
        return this.#fail(request, 'malformed');
      }
      const device = await this.#devices.getDevice(deviceId);
      if (!device) return this.#fail(request, 'malformed');
      // The secure channel authenticated the device by its secret (the psk).
      await this.#admit(request, device, 'secret');
      signedBodies.markVerified(request);
      return;
    }
    const authorization = header(request, 'authorization') ?? '';
    const token = parseDeviceBearer(authorization);
    if (token !== null) {
      const row = await this.#db
        .selectFrom('device_tokens')
        .select(['device_id', 'expires_at'])
        .where('token_hash', '=', hashToken(token))
        .executeTakeFirst();
      if (!row || Number(row.expires_at) <= this.#now()) return this.#fail(request, 'unknown-token');
      const device = await this.#devices.getDevice(row.device_id);
      if (!device) return this.#fail(request, 'unknown-token');
      await this.#admit(request, device, 'token');
      signedBodies.markVerified(request);
      return;
    }

    const auth = parseDeviceAuthorization(authorization);
    const declared = header(request, DEVICE_CONTENT_SHA256_HEADER) ?? '';
    const host = header(request, 'host');
    const target = request.raw.url ?? '';
    if (!auth || !isContentDigest(declared) || !host || !target.startsWith('/')) {
      return this.#fail(request, 'malformed', auth?.deviceId);
    }
    if (Math.abs(this.#now() - auth.ts) > DEVICE_REQUEST_WINDOW_MS) {
      return this.#fail(request, 'stale-ts', auth.deviceId);
    }
    let canonical: string;
    try {
      canonical = deviceCanonicalString({
        deviceId: auth.deviceId,
        method: request.method,
        target,
        host,
        ts: auth.ts,
        nonce: auth.nonce,
        contentSha256: declared,
      });
    } catch {
      // Malformed percent-encoding or a raw '+' in the query (ambiguous: see docs/api-signing.md).
      return this.#fail(request, 'malformed', auth.deviceId);
    }
    // An unknown device gets a key of no device: the HMAC check runs and fails the same way.
    const { device, key } = await this.#devices.deviceRequestKey(auth.deviceId);
    const expected = deviceRequestSignature(key, canonical);
    if (!constantTimeStringEqual(expected, auth.sig) || !device) {
      return this.#fail(request, 'bad-signature', auth.deviceId);
    }
    // Only a correctly signed request may occupy a nonce: otherwise anyone could burn a device's nonces.
    if (!(await this.useNonce(device.id, auth.nonce, auth.ts + DEVICE_REQUEST_WINDOW_MS))) {
      return this.#fail(request, 'replayed-nonce', device.id, device.vendorId);
    }
    await this.#admit(request, device, 'secret');
    signedBodies.promise(
      request,
      declared,
      () => void this.#fail(request, 'body-hash-mismatch', device.id, device.vendorId).catch(() => {}),
    );
  }

  async #admit(request: FastifyRequest, device: Device, method: DeviceAuthMethod): Promise<void> {
    const refusal = await this.#devices.admit(device, method);
    if (refusal !== null) {
      this.#record({
        actor: { type: 'device', id: device.id },
        tenant: device.vendorId,
        type: 'device.http-auth',
        target: device.id,
        sourceIp: normaliseIp(request.ip),
        result: 'denied',
        details: { reason: refusal, method, requestId: request.id },
      });
      throw new CastellanError('ERR_DEVICE_AUTH_FAILED');
    }
    request.device = device;
    for (const listener of this.onAdmitted) listener(device, method);
  }

  async #fail(
    request: FastifyRequest,
    reason: DeviceAuthRefusal,
    deviceId?: string,
    vendorId?: string,
  ): Promise<never> {
    const known = deviceId !== undefined && isDeviceId(deviceId);
    const ip = normaliseIp(request.ip);
    this.#record({
      actor: { type: 'device', id: known ? deviceId : 'unknown' },
      tenant: vendorId ?? null,
      type: 'device.http-auth',
      target: known ? deviceId : null,
      sourceIp: ip,
      result: 'failure',
      details: { reason, requestId: request.id },
    });
    await this.#authFailure?.(ip, known ? { kind: 'device', id: deviceId } : null);
    throw new CastellanError('ERR_DEVICE_AUTH_FAILED');
  }

  /**
   * Challenge-response, step 1: a fresh single-use challenge for the device and the platform's proof
   * that it holds the device's key. An unknown device gets a challenge and a proof too (under a key of no
   * device), indistinguishable from a real one.
   */
  async issueChallenge(deviceId: string, clientNonce: string): Promise<IssuedChallenge> {
    if (!isDeviceId(deviceId) || !isDeviceNonce(clientNonce)) throw new CastellanError('ERR_DEVICE_AUTH_FAILED');
    const challenge = randomBytes(32).toString('base64url');
    const { key } = await this.#devices.deviceRequestKey(deviceId);
    const expiresAt = this.#now() + CHALLENGE_TTL_MS;
    await this.#db
      .insertInto('device_challenges')
      .values({
        challenge_hash: sha256(challenge),
        device_id: deviceId,
        client_nonce: clientNonce,
        expires_at: expiresAt,
      })
      .execute();
    return { challenge, expiresAt, serverProof: challengeServerProof(key, deviceId, clientNonce, challenge) };
  }

  /**
   * Challenge-response, step 2: the challenge is consumed whatever the outcome (one guess per
   * challenge); a matching HMAC response (or a registered verifier's proof) from an admitted device buys
   * a device token.
   */
  async redeemChallenge(
    request: FastifyRequest,
    deviceId: string,
    challenge: string,
    response: string,
  ): Promise<IssuedDeviceToken> {
    const now = this.#now();
    const row = isDeviceId(deviceId)
      ? await this.#db
          .deleteFrom('device_challenges')
          .where('challenge_hash', '=', sha256(challenge))
          .where('device_id', '=', deviceId)
          .returning(['client_nonce', 'expires_at'])
          .executeTakeFirst()
      : undefined;
    if (!row || Number(row.expires_at) <= now) return this.#fail(request, 'unknown-challenge', deviceId);
    const clientNonce = row.client_nonce;
    const { device: keyed, key } = await this.#devices.deviceRequestKey(deviceId);
    let device: Device | null = null;
    let method: DeviceAuthMethod | null = null;
    if (constantTimeStringEqual(challengeDeviceResponse(key, deviceId, challenge, clientNonce), response) && keyed) {
      device = keyed;
      method = 'secret';
    } else {
      for (const verify of this.challengeVerifiers) {
        method = await verify({ deviceId, challenge, clientNonce, response });
        if (method !== null) {
          device = await this.#devices.getDevice(deviceId);
          break;
        }
      }
    }
    if (!device || method === null) return this.#fail(request, 'bad-response', deviceId);
    // The mode the device proved itself with must be allowed (an L2 product refuses its secret: DEV-5).
    await this.#admit(request, device, method);
    const token = newToken('cas_dvt');
    const expiresAt = now + DEVICE_TOKEN_TTL_MS;
    await this.#db
      .insertInto('device_tokens')
      .values({ token_hash: hashToken(token), device_id: device.id, method, created_at: now, expires_at: expiresAt })
      .execute();
    this.#record({
      actor: { type: 'device', id: device.id },
      tenant: device.vendorId,
      type: 'device.token-issue',
      target: device.id,
      sourceIp: normaliseIp(request.ip),
      result: 'success',
      details: { method, expiresAt, requestId: request.id },
    });
    return { token, expiresAt, deviceId: device.id };
  }
}

/** Builds the device authenticate hook (onRequest) for /v1/device-api routes. */
export function createDeviceAuthenticate(options: DeviceHttpAuthOptions): DeviceHttpAuth {
  return new DeviceHttpAuth(options);
}

/**
 * preParsing hook for every route behind the device authenticate hook: the body must be exactly the bytes
 * whose SHA-256 was signed. The payload is hashed as it streams to the parser; a mismatch fails the
 * stream, so the handler never runs.
 */
export const verifyDeviceBody = signedBodies.verify;

/**
 * The authenticated device of a request. Fails closed: a route that forgot verifyDeviceBody (so the
 * signed body hash was never compared with the body received) gets no device.
 */
export function deviceOf(request: FastifyRequest): Device {
  if (!request.device || !signedBodies.isVerified(request)) throw new CastellanError('ERR_DEVICE_AUTH_FAILED');
  return request.device;
}
