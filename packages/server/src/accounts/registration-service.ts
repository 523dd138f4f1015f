// Self-service registration, activation and password reset (ACC-1..4). Nothing here tells a caller
// whether an identifier is registered (OWASP Authentication Cheat Sheet, "Authentication and Error
// Messages"; NIST SP 800-63B 5.2.2): a taken identifier gets the same answer as a free one, the
// password is hashed either way, and the person who owns it is told by message instead. Messages are
// sent without waiting for the transport so its latency does not reveal which branch ran.
import type { AccountsContext } from './accounts-context.ts';
import { OneTimeCodes } from './one-time-codes.ts';
import { createPersonalOrganisation } from './organisations-service.ts';
import { hashPassword, verifyPassword } from './password-hasher.ts';
import { checkPasswordPolicy } from './password-policy.ts';
import type { UserKind } from './principal.ts';
import { ProofOfWork } from './proof-of-work.ts';
import { CastellanError } from '../errors/index.ts';
import { type Identifier, identifierIndex, type UserRecord } from './user-directory.ts';

/** What a registration did, for the audit log only (never for the response). */
export type RegistrationOutcome = 'created' | 'pending-again' | 'existing';

export interface RegistrationResult {
  userId: string;
  outcome: RegistrationOutcome;
}

/**
 * Compared against the live activation code when the password is wrong: it counts the guess like a
 * wrong code but can never match (codes are decimal digits), so the code is never used up by it.
 */
const NOT_A_CODE = 'wrong-password';

export class RegistrationService {
  readonly pow: ProofOfWork;
  readonly codes: OneTimeCodes;
  readonly #ctx: AccountsContext;

  constructor(ctx: AccountsContext) {
    this.#ctx = ctx;
    this.pow = new ProofOfWork(ctx);
    this.codes = new OneTimeCodes(ctx);
  }

  /** The identifier's blind index as hex: a stable, non-reversible key for per-identifier limits. */
  limitKey(identifier: Identifier): string {
    return identifierIndex(this.#ctx.keys, identifier).toString('hex');
  }

  checkPassword(password: string, identifier: Identifier): void {
    const inputs = [identifier.value];
    if (identifier.kind === 'email') inputs.push(identifier.value.split('@')[0]!);
    checkPasswordPolicy(
      password,
      { minLength: this.#ctx.config.passwordMinLength, minScore: this.#ctx.config.passwordMinScore },
      inputs,
    );
  }

  /**
   * Registers a pending account and sends its activation code. For a taken identifier: a pending
   * account takes the new password and gets a fresh code (so a squatter's earlier password does not
   * survive the owner's registration; activation needs the code AND this password, so a later
   * registration by someone else can only make the owner's activation fail, never take it over); an
   * active account's owner gets a notice instead. The caller sees no difference.
   */
  async register(input: { identifier: Identifier; password: string; kind: UserKind }): Promise<RegistrationResult> {
    const passwordHash = await hashPassword(input.password);
    let existing = await this.#ctx.users.findByIdentifier(input.identifier);
    if (!existing) {
      try {
        const user = await this.#ctx.users.create({
          identifier: input.identifier,
          kind: input.kind,
          status: 'pending',
          passwordHash,
        });
        await this.#sendActivation(user.id, input.identifier);
        return { userId: user.id, outcome: 'created' };
      } catch (error) {
        // A concurrent registration took it between the lookup and the insert.
        if (!(error instanceof CastellanError && error.code === 'ERR_ACCOUNT_EXISTS')) throw error;
        existing = await this.#ctx.users.findByIdentifier(input.identifier);
        if (!existing) throw error;
      }
    }
    if (existing.status === 'pending') {
      if (await this.#replacePendingPassword(existing.id, passwordHash)) {
        await this.#sendActivation(existing.id, input.identifier);
        return { userId: existing.id, outcome: 'pending-again' };
      }
      // Activated between the lookup and the update: its password stays, its owner gets the notice.
      existing = (await this.#ctx.users.get(existing.id)) ?? existing;
    }
    if (existing.status === 'active') {
      this.#deliver(input.identifier, 'registration-attempt', 'Someone tried to register with your address', [
        'Someone tried to create a Castellan account with this address, which already has an account.',
        'If it was you, sign in instead, or reset your password if you forgot it.',
        'If it was not you, you need not do anything: your account is unchanged.',
      ]);
    }
    return { userId: existing.id, outcome: 'existing' };
  }

  /**
   * Activates a pending account with its code and the password of the registration being activated;
   * null for anything wrong (unknown identifier, not pending, wrong password, wrong, expired or used
   * code), which callers answer with one generic error. Binding the password matters because
   * re-registering a pending identifier replaces its password: without it, whoever registered last
   * would own the account the address holder activates. A wrong password counts as a guess against
   * the live code (like a wrong code, toward codeMaxAttempts) but never uses it up, so the owner can
   * retry with the right password, and someone without the code cannot spend it.
   */
  async activate(
    identifier: Identifier,
    code: string,
    password: string,
  ): Promise<{ user: UserRecord; organisationId: string | null } | null> {
    const user = await this.#ctx.users.findByIdentifier(identifier);
    if (!user || user.status !== 'pending' || !user.passwordHash) {
      await verifyPassword(null, password); // the same work as a real check (NIST SP 800-63B 5.2.2)
      return null;
    }
    if (!(await verifyPassword(user.passwordHash, password))) {
      await this.codes.consume(user.id, 'activate', NOT_A_CODE);
      return null;
    }
    if (!(await this.codes.consume(user.id, 'activate', code))) return null;
    // A developer's personal vendor organisation (ORG-1) exists before the account is active; its
    // creation is idempotent, so a failure here is repaired by a resent code.
    const organisation = user.kind === 'developer' ? await createPersonalOrganisation(this.#ctx, user.id) : null;
    // Only if the password just verified is still the stored one: a re-registration racing this
    // request must not have its password activated by the owner's code.
    const activated = await this.#ctx.db
      .updateTable('users')
      .set({ status: 'active', activated_at: this.#ctx.now() })
      .where('id', '=', user.id)
      .where('status', '=', 'pending')
      .where('password_hash', '=', user.passwordHash)
      .executeTakeFirst();
    if (Number(activated.numUpdatedRows) !== 1) return null;
    return { user: { ...user, status: 'active' }, organisationId: organisation?.vendorId ?? null };
  }

  /** Sends a new activation code if the identifier belongs to a pending account; the user id or null. */
  async resendActivation(identifier: Identifier): Promise<string | null> {
    const user = await this.#ctx.users.findByIdentifier(identifier);
    if (!user || user.status !== 'pending') return null;
    await this.#sendActivation(user.id, identifier);
    return user.id;
  }

  /** Sends a reset code if the identifier belongs to an active account; the user id or null. */
  async requestReset(identifier: Identifier): Promise<string | null> {
    const user = await this.#ctx.users.findByIdentifier(identifier);
    if (!user || user.status !== 'active') return null;
    const code = await this.codes.issue(user.id, 'reset');
    this.#deliver(identifier, 'password-reset', 'Your Castellan password reset code', [
      `Your Castellan password reset code is ${code}.`,
      `It expires in ${this.#ctx.config.codeTtlMinutes} minutes and works once.`,
      'If you did not ask to reset your password, ignore this message: your password is unchanged.',
    ]);
    return user.id;
  }

  /**
   * Sets a new password with a reset code and ends every session of the account (ACC-4: whoever
   * held the old password is signed out). Returns the user id, or null for anything wrong.
   */
  async resetPassword(identifier: Identifier, code: string, newPassword: string): Promise<string | null> {
    this.checkPassword(newPassword, identifier);
    // Hashed before the lookup, whatever the outcome, so known and unknown identifiers cost the same.
    const passwordHash = await hashPassword(newPassword);
    const user = await this.#ctx.users.findByIdentifier(identifier);
    if (!user || user.status !== 'active') return null;
    if (!(await this.codes.consume(user.id, 'reset', code))) return null;
    await this.#ctx.users.setPasswordHash(user.id, passwordHash);
    await this.#ctx.sessions.revokeAll(user.id);
    return user.id;
  }

  /**
   * Replaces the password of an account only while it is still pending (compare-and-set), so a
   * registration racing the owner's activation cannot set the password of the now active account.
   */
  async #replacePendingPassword(userId: string, passwordHash: string): Promise<boolean> {
    const updated = await this.#ctx.db
      .updateTable('users')
      .set({ password_hash: passwordHash, password_changed_at: this.#ctx.now() })
      .where('id', '=', userId)
      .where('status', '=', 'pending')
      .executeTakeFirst();
    return Number(updated.numUpdatedRows) === 1;
  }

  async #sendActivation(userId: string, identifier: Identifier): Promise<void> {
    const code = await this.codes.issue(userId, 'activate');
    this.#deliver(identifier, 'activation', 'Your Castellan activation code', [
      `Your Castellan activation code is ${code}.`,
      `It expires in ${this.#ctx.config.codeTtlMinutes} minutes and works once.`,
      'If you did not register, ignore this message.',
    ]);
  }

  /** Fire and forget: a failed transport is logged (without recipient or text), never shown. */
  #deliver(to: Identifier, purpose: string, subject: string, lines: string[]): void {
    this.#ctx.sender
      .send({ channel: to.kind === 'email' ? 'email' : 'sms', to: to.value, subject, text: lines.join('\n'), purpose })
      .catch((error: unknown) => {
        this.#ctx.log.warn({ purpose, errorCode: (error as { code?: unknown }).code }, 'message delivery failed');
      });
  }
}
