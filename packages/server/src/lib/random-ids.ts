// Every identifier and token comes from the CSPRNG (node:crypto randomBytes).
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';

/** A 128-bit random identifier with a type prefix, e.g. `vnd_3q2…`. Not a secret. */
export function newId(prefix: string): string {
  return `${prefix}_${randomBytes(16).toString('base64url')}`;
}

/** A 256-bit bearer secret with a recognisable prefix (so secret scanners can find leaked ones). */
export function newToken(prefix: string): string {
  return `${prefix}_${randomBytes(32).toString('base64url')}`;
}

/**
 * Tokens carry 256 random bits, so a fast hash suffices: there is nothing to brute-force. (Slow
 * password hashes are for human-chosen passwords.)
 */
export function hashToken(token: string): Buffer {
  return createHash('sha256').update(token, 'utf8').digest();
}

export function constantTimeEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}
