// Proof-of-work against scripted registration (ACC-2): ALTCHA v2 challenges (altcha-lib), signed
// with an HMAC key derived from the root key so no state is kept per challenge. In ALTCHA's
// deterministic mode the server picks a secret counter in 1..powDifficulty and publishes the derived
// key's prefix; the client must try counters until it finds it (on average powDifficulty / 2 SHA-256
// derivations), while the server verifies with one HMAC of the key signature. A solved payload works
// once: its signature's hash is remembered in auth_challenges until the challenge expires.
import { createHash, randomInt } from 'node:crypto';
import { type Challenge, createChallenge, type Payload, verifySolution } from 'altcha-lib';
import { deriveKey } from 'altcha-lib/algorithms/sha';
import { CastellanError } from '../errors/index.ts';
import type { AccountsContext } from './accounts-context.ts';

/** How long a challenge may be solved and submitted. */
export const CHALLENGE_TTL_MS = 10 * 60_000;
export const ALTCHA_USED_PURPOSE = 'altcha-used';
const ALGORITHM = 'SHA-256';
/** base64 of the JSON payload the ALTCHA widget submits; generous, far below the body limit. */
export const MAX_PAYLOAD_LENGTH = 4096;

type ProofContext = Pick<AccountsContext, 'db' | 'keys' | 'config' | 'now'>;

export class ProofOfWork {
  readonly #ctx: ProofContext;
  readonly #signatureSecret: string;
  readonly #keySignatureSecret: string;

  constructor(ctx: ProofContext) {
    this.#ctx = ctx;
    // Two independent keys from the root key (HKDF inside blindIndex): one signs the challenge
    // parameters, one signs the expected derived key.
    this.#signatureSecret = ctx.keys.blindIndex('platform', 'altcha-hmac', 'key').toString('hex');
    this.#keySignatureSecret = ctx.keys.blindIndex('platform', 'altcha-hmac', 'derived-key').toString('hex');
  }

  /** A fresh signed challenge for the client to solve. */
  async challenge(): Promise<Challenge> {
    return createChallenge({
      algorithm: ALGORITHM,
      cost: 1,
      counter: randomInt(1, this.#ctx.config.powDifficulty + 1),
      deriveKey,
      expiresAt: new Date(this.#ctx.now() + CHALLENGE_TTL_MS),
      hmacSignatureSecret: this.#signatureSecret,
      hmacKeySignatureSecret: this.#keySignatureSecret,
    });
  }

  /**
   * Checks a solved payload (base64 JSON {challenge, solution}) and burns it. Missing →
   * ERR_AUTH_CHALLENGE_REQUIRED; anything else wrong (malformed, forged, expired, unsolved, replayed)
   * → ERR_AUTH_CHALLENGE_INVALID with one message.
   */
  async verifyAndConsume(encoded: string | undefined): Promise<void> {
    if (encoded === undefined || encoded === '') throw new CastellanError('ERR_AUTH_CHALLENGE_REQUIRED');
    const payload = parsePayload(encoded);
    if (!payload) throw new CastellanError('ERR_AUTH_CHALLENGE_INVALID');
    const { challenge, solution } = payload;
    const expiresAt = challenge.parameters.expiresAt;
    // Only our own shape: SHA-256, with an expiry (verifySolution would accept a signed challenge
    // without one as never expiring).
    if (challenge.parameters.algorithm !== ALGORITHM || typeof expiresAt !== 'number' || !challenge.signature) {
      throw new CastellanError('ERR_AUTH_CHALLENGE_INVALID');
    }
    let verified: boolean;
    try {
      const result = await verifySolution({
        challenge,
        solution,
        deriveKey,
        hmacSignatureSecret: this.#signatureSecret,
        hmacKeySignatureSecret: this.#keySignatureSecret,
      });
      verified = result.verified && !result.expired;
    } catch {
      verified = false; // malformed parameters make altcha-lib throw
    }
    if (!verified || expiresAt * 1000 <= this.#ctx.now()) throw new CastellanError('ERR_AUTH_CHALLENGE_INVALID');
    // Single use: the insert of the signature's hash races safely (primary key); a second insert of
    // the same solved challenge inserts nothing.
    const id = `alt_${createHash('sha256').update(challenge.signature, 'utf8').digest('base64url')}`;
    const inserted = await this.#ctx.db
      .insertInto('auth_challenges')
      .values({
        id,
        principal_id: null,
        purpose: ALTCHA_USED_PURPOSE,
        payload: '',
        created_at: this.#ctx.now(),
        expires_at: expiresAt * 1000,
      })
      .onConflict((oc) => oc.column('id').doNothing())
      .returning('id')
      .execute();
    if (inserted.length !== 1) throw new CastellanError('ERR_AUTH_CHALLENGE_INVALID');
  }
}

function parsePayload(encoded: string): Payload | null {
  if (encoded.length > MAX_PAYLOAD_LENGTH) return null;
  try {
    const value = JSON.parse(Buffer.from(encoded, 'base64').toString('utf8')) as unknown;
    if (!isRecord(value) || !isRecord(value.challenge) || !isRecord(value.solution)) return null;
    const { parameters, signature } = value.challenge;
    if (!isRecord(parameters) || typeof signature !== 'string') return null;
    return value as unknown as Payload;
  } catch {
    return null;
  }
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}
