// Password hashing (ACC-3): argon2id with OWASP's Password Storage Cheat Sheet parameters (m = 19 MiB,
// t = 2, p = 1), through @node-rs/argon2 (N-API, prebuilt; runs off the event loop). The PHC string
// carries its parameters, so raising them later only needs needsRehash() at the next sign-in.
import { randomBytes } from 'node:crypto';
import { hash, verify } from '@node-rs/argon2';

export const ARGON2_PARAMS = { algorithm: 2 /* Argon2id */, memoryCost: 19_456, timeCost: 2, parallelism: 1 } as const;

/** A fixed hash of a random password: verifying against it costs what a real check costs. */
let decoy: Promise<string> | undefined;

export async function hashPassword(password: string): Promise<string> {
  return hash(password, ARGON2_PARAMS);
}

/**
 * How many verifications (real or decoy) ran in this process: tests use it to prove that a locked
 * account costs no hash (ACC-4).
 */
export const passwordVerifications = { count: 0 };

/** Constant-work verification: a missing hash is checked against a decoy so timing tells nothing. */
export async function verifyPassword(phc: string | null | undefined, password: string): Promise<boolean> {
  passwordVerifications.count++;
  if (!phc) {
    decoy ??= hashPassword(randomBytes(24).toString('base64url'));
    await verify(await decoy, password).catch(() => false);
    return false;
  }
  try {
    return await verify(phc, password);
  } catch {
    return false;
  }
}

/** True when a stored hash used weaker parameters than today's. */
export function needsRehash(phc: string): boolean {
  const m = /^\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$/.exec(phc);
  if (!m) return true;
  return Number(m[1]) < ARGON2_PARAMS.memoryCost || Number(m[2]) < ARGON2_PARAMS.timeCost;
}
