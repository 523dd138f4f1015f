// WebAuthn passkeys and security keys (ACC-6), on @simplewebauthn/server. The relying party is the
// public origin: RP ID = its host name, expected origin = the origin itself (WebAuthn Level 2, 5.1.3
// and 7.1). Every ceremony's challenge is stored server-side in auth_challenges, bound to its
// purpose, its person and (for the sign-in step) the pending session, lives 5 minutes and is deleted
// when a response is presented, whatever the outcome: a challenge answers at most one response
// (replay protection, WebAuthn 13.4.3). Signature counters must move forward (6.1.1); a credential
// whose authenticator does not count (always 0) is accepted as the specification allows.
import { createHash } from 'node:crypto';
import {
  type AuthenticationResponseJSON,
  type AuthenticatorTransport,
  generateAuthenticationOptions,
  generateRegistrationOptions,
  type PublicKeyCredentialCreationOptionsJSON,
  type PublicKeyCredentialRequestOptionsJSON,
  type RegistrationResponseJSON,
  verifyAuthenticationResponse,
  verifyRegistrationResponse,
} from '@simplewebauthn/server';
import type { Kysely } from 'kysely';
import { CastellanError } from '../errors/index.ts';
import type { Database } from '../store/index.ts';

export const CHALLENGE_TTL_MS = 5 * 60_000;
const RP_NAME = 'Castellan';
/** Enough for a person's phones and keys; bounds the allowCredentials list. */
export const MAX_CREDENTIALS_PER_PERSON = 20;

/**
 * What a challenge is for. A second factor after a password only needs presence ('discouraged'
 * verification); a passkey that replaces the password, and a step-up, need user verification (PIN or
 * biometric), so that the key alone is not enough.
 */
export type AssertionPurpose = 'webauthn-mfa' | 'webauthn-step-up' | 'webauthn-passkey';
type ChallengePurpose = 'webauthn-register' | AssertionPurpose;

const NEEDS_USER_VERIFICATION: Readonly<Record<AssertionPurpose, boolean>> = {
  'webauthn-mfa': false,
  'webauthn-step-up': true,
  'webauthn-passkey': true,
};

export interface PasskeyView {
  readonly id: string;
  readonly label: string;
  readonly transports: string[];
  readonly createdAt: number;
  readonly lastUsedAt: number | null;
}

/** Why an assertion was refused, for the audit log (never the response itself). */
export type AssertionFailure = 'challenge' | 'credential' | 'signature' | 'counter';

export type AssertionOutcome =
  { ok: true; userId: string; credentialId: string } | { ok: false; reason: AssertionFailure; userId?: string };

interface ChallengePayload {
  challenge: string;
  sessionId?: string;
}

/** A challenge row's ID is derived from the challenge, so a response (which signs it) names its row. */
export function challengeIdOf(challenge: string): string {
  return `chl_${createHash('sha256').update(challenge, 'utf8').digest().subarray(0, 16).toString('base64url')}`;
}

/** The challenge a response claims to answer (the library checks the claim against the stored one). */
function claimedChallenge(clientDataJSON: string): string | null {
  try {
    const data = JSON.parse(Buffer.from(clientDataJSON, 'base64url').toString('utf8')) as { challenge?: unknown };
    return typeof data.challenge === 'string' && data.challenge.length <= 256 ? data.challenge : null;
  } catch {
    return null;
  }
}

function parseTransports(raw: string): AuthenticatorTransport[] {
  try {
    const list = JSON.parse(raw) as unknown;
    return Array.isArray(list) ? (list.filter((t) => typeof t === 'string') as AuthenticatorTransport[]) : [];
  } catch {
    return [];
  }
}

/** The user handle of a person: the bytes of the user ID (no personal data, WebAuthn 14.6.1). */
export function userHandleOf(userId: string): Uint8Array<ArrayBuffer> {
  return new TextEncoder().encode(userId);
}

export class WebauthnService {
  readonly #db: Kysely<Database>;
  readonly #publicUrl: () => string;
  readonly #now: () => number;

  constructor(options: { db: Kysely<Database>; publicUrl: () => string; now?: () => number }) {
    this.#db = options.db;
    this.#publicUrl = options.publicUrl;
    this.#now = options.now ?? Date.now;
  }

  /** RP ID and expected origin, from the public URL. */
  #relyingParty(): { rpID: string; origin: string } {
    const url = new URL(this.#publicUrl());
    return { rpID: url.hostname, origin: url.origin };
  }

  async #storeChallenge(
    purpose: ChallengePurpose,
    challenge: string,
    principalId: string | null,
    sessionId?: string,
  ): Promise<string> {
    const id = challengeIdOf(challenge);
    const now = this.#now();
    const payload: ChallengePayload = { challenge, ...(sessionId ? { sessionId } : {}) };
    await this.#db
      .insertInto('auth_challenges')
      .values({
        id,
        principal_id: principalId,
        purpose,
        payload: JSON.stringify(payload),
        created_at: now,
        expires_at: now + CHALLENGE_TTL_MS,
      })
      .execute();
    return id;
  }

  /**
   * Deletes and returns a live challenge of this purpose (and person, and session). Only the DELETE
   * that removes the row gets it, so concurrent presentations of one response cannot both pass.
   */
  async #takeChallenge(
    id: string,
    purpose: ChallengePurpose,
    principalId: string | null,
    sessionId?: string,
  ): Promise<string | null> {
    let query = this.#db.deleteFrom('auth_challenges').where('id', '=', id).where('purpose', '=', purpose);
    query =
      principalId === null ? query.where('principal_id', 'is', null) : query.where('principal_id', '=', principalId);
    const row = await query.returning(['payload', 'expires_at']).executeTakeFirst();
    if (!row || this.#now() >= Number(row.expires_at)) return null;
    const payload = JSON.parse(row.payload) as ChallengePayload;
    if ((payload.sessionId ?? null) !== (sessionId ?? null)) return null;
    return payload.challenge;
  }

  async list(userId: string): Promise<PasskeyView[]> {
    const rows = await this.#db
      .selectFrom('webauthn_credentials')
      .select(['id', 'label', 'transports', 'created_at', 'last_used_at'])
      .where('principal_id', '=', userId)
      .orderBy('created_at')
      .execute();
    return rows.map((r) => ({
      id: r.id,
      label: r.label,
      transports: parseTransports(r.transports),
      createdAt: Number(r.created_at),
      lastUsedAt: r.last_used_at === null ? null : Number(r.last_used_at),
    }));
  }

  async count(userId: string): Promise<number> {
    const row = await this.#db
      .selectFrom('webauthn_credentials')
      .select((eb) => eb.fn.countAll<number | string>().as('n'))
      .where('principal_id', '=', userId)
      .executeTakeFirstOrThrow();
    return Number(row.n);
  }

  /** Removes one of a person's credentials; false when the person has no such credential. */
  async remove(userId: string, credentialId: string): Promise<boolean> {
    const result = await this.#db
      .deleteFrom('webauthn_credentials')
      .where('id', '=', credentialId)
      .where('principal_id', '=', userId)
      .executeTakeFirst();
    return Number(result.numDeletedRows) === 1;
  }

  async #allowList(userId: string): Promise<{ id: string; transports: AuthenticatorTransport[] }[]> {
    const rows = await this.#db
      .selectFrom('webauthn_credentials')
      .select(['id', 'transports'])
      .where('principal_id', '=', userId)
      .execute();
    return rows.map((r) => ({ id: r.id, transports: parseTransports(r.transports) }));
  }

  /** Options for navigator.credentials.create(); existing credentials are excluded (no duplicates). */
  async registrationOptions(userId: string, userName: string): Promise<PublicKeyCredentialCreationOptionsJSON> {
    const existing = await this.#allowList(userId);
    if (existing.length >= MAX_CREDENTIALS_PER_PERSON) throw new CastellanError('ERR_MFA_TOO_MANY_PASSKEYS');
    const { rpID } = this.#relyingParty();
    const options = await generateRegistrationOptions({
      rpName: RP_NAME,
      rpID,
      userName,
      userDisplayName: userName,
      userID: userHandleOf(userId),
      attestationType: 'none',
      excludeCredentials: existing,
      authenticatorSelection: { residentKey: 'preferred', userVerification: 'preferred' },
      timeout: CHALLENGE_TTL_MS,
    });
    await this.#storeChallenge('webauthn-register', options.challenge, userId);
    return options;
  }

  /** Verifies an attestation ('none' accepted: we trust the key, not its maker) and stores the credential. */
  async register(userId: string, response: RegistrationResponseJSON, label: string): Promise<PasskeyView> {
    const claimed = claimedChallenge(response.response.clientDataJSON);
    const challenge = claimed && (await this.#takeChallenge(challengeIdOf(claimed), 'webauthn-register', userId));
    if (!challenge) throw new CastellanError('ERR_MFA_WEBAUTHN_REJECTED');
    const { rpID, origin } = this.#relyingParty();
    let verified: Awaited<ReturnType<typeof verifyRegistrationResponse>>;
    try {
      verified = await verifyRegistrationResponse({
        response,
        expectedChallenge: challenge,
        expectedOrigin: origin,
        expectedRPID: rpID,
        requireUserVerification: false,
      });
    } catch {
      throw new CastellanError('ERR_MFA_WEBAUTHN_REJECTED');
    }
    if (!verified.verified) throw new CastellanError('ERR_MFA_WEBAUTHN_REJECTED');
    const { credential } = verified.registrationInfo;
    const now = this.#now();
    const transports = response.response.transports ?? credential.transports ?? [];
    const inserted = await this.#db
      .insertInto('webauthn_credentials')
      .values({
        id: credential.id,
        principal_id: userId,
        public_key: Buffer.from(credential.publicKey),
        counter: credential.counter,
        transports: JSON.stringify(transports.slice(0, 8)),
        label,
        created_at: now,
        last_used_at: null,
      })
      // A credential ID is registered once, to one person.
      .onConflict((oc) => oc.column('id').doNothing())
      .returning('id')
      .executeTakeFirst();
    if (!inserted) throw new CastellanError('ERR_MFA_ALREADY_ENROLLED');
    return { id: credential.id, label, transports: [...transports], createdAt: now, lastUsedAt: null };
  }

  /**
   * Options for navigator.credentials.get(). With a person: their credentials are allowed. Without
   * (passwordless sign-in): an empty allow list asks for a discoverable credential. Returns the
   * challenge's ID for the caller to present with the response.
   */
  async authenticationOptions(
    purpose: AssertionPurpose,
    userId: string | null,
    sessionId?: string,
  ): Promise<{ options: PublicKeyCredentialRequestOptionsJSON; challengeId: string }> {
    const allowCredentials = userId ? await this.#allowList(userId) : [];
    const options = await generateAuthenticationOptions({
      rpID: this.#relyingParty().rpID,
      allowCredentials,
      userVerification: NEEDS_USER_VERIFICATION[purpose] ? 'required' : 'discouraged',
      timeout: CHALLENGE_TTL_MS,
    });
    const challengeId = await this.#storeChallenge(purpose, options.challenge, userId, sessionId);
    return { options, challengeId };
  }

  /**
   * Verifies an assertion. `userId` null: passwordless, the credential names its owner. The challenge
   * is spent first, so a response (valid or not) is checked against it only once.
   */
  async authenticate(
    purpose: AssertionPurpose,
    response: AuthenticationResponseJSON,
    expected: { userId: string | null; sessionId?: string; challengeId?: string },
  ): Promise<AssertionOutcome> {
    const claimed = claimedChallenge(response.response.clientDataJSON);
    const id = expected.challengeId ?? (claimed ? challengeIdOf(claimed) : null);
    const challenge = id && (await this.#takeChallenge(id, purpose, expected.userId, expected.sessionId));
    if (!challenge) return { ok: false, reason: 'challenge' };
    const row = await this.#db
      .selectFrom('webauthn_credentials')
      .select(['id', 'principal_id', 'public_key', 'counter', 'transports'])
      .where('id', '=', response.id)
      .executeTakeFirst();
    if (!row || (expected.userId !== null && row.principal_id !== expected.userId)) {
      return { ok: false, reason: 'credential' };
    }
    // A discoverable credential returns the user handle it was created with; it must be its owner's.
    const handle = response.response.userHandle;
    if (handle && handle !== Buffer.from(userHandleOf(row.principal_id)).toString('base64url')) {
      return { ok: false, reason: 'credential', userId: row.principal_id };
    }
    const counter = Number(row.counter);
    const { rpID, origin } = this.#relyingParty();
    let verified: Awaited<ReturnType<typeof verifyAuthenticationResponse>>;
    try {
      verified = await verifyAuthenticationResponse({
        response,
        expectedChallenge: challenge,
        expectedOrigin: origin,
        expectedRPID: rpID,
        credential: {
          id: row.id,
          publicKey: new Uint8Array(row.public_key),
          counter,
          transports: parseTransports(row.transports),
        },
        requireUserVerification: NEEDS_USER_VERIFICATION[purpose],
      });
    } catch (error) {
      // The library throws for a counter that did not move forward, as for any other mismatch.
      const reason = /counter/i.test((error as Error).message) ? 'counter' : 'signature';
      return { ok: false, reason, userId: row.principal_id };
    }
    if (!verified.verified) return { ok: false, reason: 'signature', userId: row.principal_id };
    const newCounter = verified.authenticationInfo.newCounter;
    if ((newCounter !== 0 || counter !== 0) && newCounter <= counter) {
      return { ok: false, reason: 'counter', userId: row.principal_id };
    }
    // Only the UPDATE that still sees the old counter wins: two uses of one assertion cannot both pass.
    const updated = await this.#db
      .updateTable('webauthn_credentials')
      .set({ counter: newCounter, last_used_at: this.#now() })
      .where('id', '=', row.id)
      .where('counter', '=', counter)
      .executeTakeFirst();
    if (Number(updated.numUpdatedRows) !== 1) return { ok: false, reason: 'counter', userId: row.principal_id };
    return { ok: true, userId: row.principal_id, credentialId: row.id };
  }
}
