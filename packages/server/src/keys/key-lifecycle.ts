// Key lifecycle states and the transitions allowed between them (KEY-2; NIST SP 800-57 Part 1, 5.3).
//
//   pre-active ──activate──▶ active ──suspend──▶ suspended ──activate──▶ active
//        │                     │  ╲                  │
//        │                     │   ╲──deactivate─────┼──▶ deactivated (decrypt only)
//        │                     └──compromise─────────┴──▶ compromised (decrypt only, flagged)
//        └───────────── destroy (from any state but destroyed) ─────────▶ destroyed
import { CastellanError } from '../errors/index.ts';

export type KeyState = 'pre-active' | 'active' | 'suspended' | 'deactivated' | 'compromised' | 'destroyed';
export type KeyOperation = 'activate' | 'suspend' | 'deactivate' | 'compromise' | 'destroy';

const TRANSITIONS: Readonly<Record<KeyOperation, { from: readonly KeyState[]; to: KeyState }>> = {
  activate: { from: ['pre-active', 'suspended'], to: 'active' },
  suspend: { from: ['active'], to: 'suspended' },
  deactivate: { from: ['active', 'suspended'], to: 'deactivated' },
  compromise: { from: ['pre-active', 'active', 'suspended', 'deactivated'], to: 'compromised' },
  destroy: { from: ['pre-active', 'active', 'suspended', 'deactivated', 'compromised'], to: 'destroyed' },
};

/** The state an operation leads to; throws ERR_KEY_TRANSITION_INVALID naming both states. */
export function nextState(current: KeyState, operation: KeyOperation): KeyState {
  const rule = TRANSITIONS[operation];
  if (!rule.from.includes(current)) {
    throw new CastellanError('ERR_KEY_TRANSITION_INVALID', {
      message: `Cannot ${operation} a key that is ${current}`,
    });
  }
  return rule.to;
}

/** May new data be encrypted under a key in this state? */
export const canEncrypt = (state: KeyState): boolean => state === 'active';

/** May existing data be decrypted with a key in this state? */
export const canDecrypt = (state: KeyState): boolean =>
  state === 'active' || state === 'deactivated' || state === 'compromised';

export const KEY_OPERATIONS = Object.keys(TRANSITIONS) as KeyOperation[];
export const KEY_STATES: readonly KeyState[] = [
  'pre-active',
  'active',
  'suspended',
  'deactivated',
  'compromised',
  'destroyed',
];
