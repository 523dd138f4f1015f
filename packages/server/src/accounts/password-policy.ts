// Password policy (ACC-3), after NIST SP 800-63B section 5.1.1.2: a minimum length, a strength
// estimate (zxcvbn-ts, with the person's own identifiers as inputs so "alice@…" does not pass for
// alice), and rejection of known common/breached passwords from the list shipped with
// @zxcvbn-ts/language-common (passwords-common). No composition rules, no forced expiry.
import { ZxcvbnFactory } from '@zxcvbn-ts/core';
import { adjacencyGraphs, dictionary } from '@zxcvbn-ts/language-common';
import { translations } from '@zxcvbn-ts/language-en';
import { CastellanError } from '../errors/index.ts';

const zxcvbn = new ZxcvbnFactory({ dictionary, graphs: adjacencyGraphs, translations });
const COMMON = new Set<string>(
  ((dictionary as Record<string, unknown>)['passwords-common'] as string[] | undefined)?.map((p) => p.toLowerCase()) ??
    [],
);

export interface PasswordPolicy {
  minLength: number;
  /** zxcvbn score 0..4. */
  minScore: number;
}

/** Number of entries in the shipped common-password list (the test asserts it is substantial). */
export const COMMON_PASSWORD_COUNT = COMMON.size;

/**
 * Throws ERR_PASSWORD_WEAK with a reason that helps the person choose better; never echoes the
 * password. `userInputs`: the person's e-mail, phone, name, username.
 */
export function checkPasswordPolicy(password: string, policy: PasswordPolicy, userInputs: string[] = []): void {
  const length = [...password].length;
  if (length < policy.minLength) {
    throw new CastellanError('ERR_PASSWORD_WEAK', {
      message: `Password is too short: use at least ${policy.minLength} characters (a passphrase of several words works well)`,
    });
  }
  if (COMMON.has(password.toLowerCase())) {
    throw new CastellanError('ERR_PASSWORD_WEAK', {
      message: 'Password is on the list of common or breached passwords; choose another',
    });
  }
  // zxcvbn's cost grows with length; 128 characters are plenty to estimate.
  // The parts of an identifier count too ("alice" of alice@example.com, the digits of a phone).
  const inputs = userInputs.flatMap((input) => [input, ...input.split(/[@._+\-\s]+/)]).filter((x) => x.length >= 3);
  const result = zxcvbn.check(password.slice(0, 128), inputs);
  if (result.score < policy.minScore) {
    const hint = result.feedback.warning ? `: ${result.feedback.warning}` : '';
    throw new CastellanError('ERR_PASSWORD_WEAK', {
      message: `Password is too easy to guess${hint}; a longer passphrase of unrelated words is stronger`,
    });
  }
}
