// The platform's static secure-channel key pairs (CHAN-3, CHAN-4), one per suite: devices pin the public
// key (it is in their factory image and at GET /v1/device-api/secure-channel/keys) and the handshake's
// Z1 = ECDH(device ephemeral, platform static) proves the platform holds the private one.
// Derived from the root key (HKDF via the key service's blind-index keys), so every process of a scale
// deployment, and every restart, serves the same pair without storing it; a new `generation` rolls it.
import { channelPublicKey, type ChannelKeyPair, type SuiteName } from '@castellan/protocol';

export interface ChannelKeyDeriver {
  /** HMAC-SHA-256 under a root-derived key for (tenant, purpose): 32 pseudo-random bytes. */
  blindIndex(tenant: string, purpose: string, value: string): Buffer;
}

export class PlatformChannelKeys {
  readonly #pairs = new Map<SuiteName, ChannelKeyPair>();
  readonly #deriver: ChannelKeyDeriver;
  readonly generation: number;

  constructor(deriver: ChannelKeyDeriver, generation = 1) {
    this.#deriver = deriver;
    this.generation = generation;
  }

  /** The static key pair of a suite (derived once, then cached). */
  keyPair(suite: SuiteName): ChannelKeyPair {
    let pair = this.#pairs.get(suite);
    if (!pair) {
      pair = this.#derive(suite);
      this.#pairs.set(suite, pair);
    }
    return pair;
  }

  /** Hex public keys (65-byte uncompressed points) devices pin, by suite. */
  publicKeys(): Record<SuiteName, string> {
    return { intl: this.keyPair('intl').publicKey.toString('hex'), sm: this.keyPair('sm').publicKey.toString('hex') };
  }

  #derive(suite: SuiteName): ChannelKeyPair {
    // A 256-bit value is a valid scalar unless it is 0 or ≥ the group order (probability < 2^-32 for
    // both curves): try the next counter then.
    for (let counter = 0; counter < 16; counter++) {
      const privateKey = this.#deriver.blindIndex(
        'platform',
        'secure-channel-static-key',
        `${suite}/${this.generation}/${counter}`,
      );
      try {
        return { privateKey, publicKey: channelPublicKey(suite, privateKey) };
      } catch {
        // not a scalar of the curve: next counter
      }
    }
    throw new Error(`no ${suite} secure-channel key could be derived`);
  }
}
