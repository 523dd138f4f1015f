// Trusted time (DEV-6, issue 8): devices without a clock ask GET /v1/device-api/time?nonce=… and get the
// platform's time signed together with their nonce (packages/protocol signed-time.ts). The signing key is
// the platform's TLS server key, whose certificate devices already trust through the pinned CA: no new
// key to provision, store or rotate, and a CA rollover covers it too. Only an ECDSA P-256 key is used
// (what small devices verify; the development PKI's); with any other TLS key the platform answers 503
// ERR_TIME_SIGNING_UNAVAILABLE rather than signing with an algorithm devices may not support.
import { createPrivateKey } from 'node:crypto';
import { type SignedTimeResponse, SignedTimeError, timeSigner } from '@castellan/protocol';
import { CastellanError } from '../errors/index.ts';

export interface SignedTimeServiceOptions {
  /** PEM private key of the TLS listener. */
  key: string;
  /** PEM certificate of the TLS listener: the leaf first, then any intermediates. */
  cert: string;
  now?: () => number;
}

export class SignedTimeService {
  readonly #sign: ((nonce: string, time: number) => SignedTimeResponse) | null;
  /** Why signing is unavailable (for the startup log), or null when it is available. */
  readonly unavailableReason: string | null;
  readonly #now: () => number;

  constructor({ key, cert, now = Date.now }: SignedTimeServiceOptions) {
    this.#now = now;
    let sign: ((nonce: string, time: number) => SignedTimeResponse) | null = null;
    let reason: string | null = null;
    try {
      sign = timeSigner({ key: createPrivateKey(key), certificates: cert });
    } catch (error) {
      reason = error instanceof SignedTimeError ? error.message : 'the TLS key or certificate cannot be read';
    }
    this.#sign = sign;
    this.unavailableReason = reason;
  }

  get available(): boolean {
    return this.#sign !== null;
  }

  /** The signed answer for this nonce (already checked against the route's schema). */
  answer(nonce: string): SignedTimeResponse {
    if (!this.#sign) throw new CastellanError('ERR_TIME_SIGNING_UNAVAILABLE');
    return this.#sign(nonce, this.#now());
  }
}
