// TLS key-exchange groups offered by every listener (CHAN-8). OpenSSL 3.5 (Node 26) knows the hybrid
// post-quantum groups of draft-ietf-tls-ecdhe-mlkem; the classical ones stay for devices without ML-KEM.
import { CastellanError } from '../errors/index.ts';

/** Hybrid groups (ECDHE + ML-KEM, TLS 1.3 only). */
export const HYBRID_TLS_GROUPS: readonly string[] = ['X25519MLKEM768', 'SecP256r1MLKEM768', 'SecP384r1MLKEM1024'];
/** Classical ECDHE groups (TLS 1.2 and 1.3). */
export const CLASSICAL_TLS_GROUPS: readonly string[] = ['X25519', 'X448', 'P-256', 'P-384', 'P-521'];

/** Hybrid first, then classical: a client without ML-KEM is served with X25519 or P-256. */
export const DEFAULT_TLS_GROUPS = 'X25519MLKEM768:X25519:P-256:P-384';

/**
 * Checks a colon-separated group list (`tls.groups`): non-empty, known names only, no repeats, and at
 * least one classical group so TLS 1.2 and small devices still have a key exchange. Returns null or why not.
 */
export function tlsGroupsProblem(list: string): string | null {
  const names = list.split(':');
  if (list === '' || names.some((name) => name === '')) return 'must be a non-empty, colon-separated list of groups';
  const known = [...HYBRID_TLS_GROUPS, ...CLASSICAL_TLS_GROUPS];
  const unknown = names.find((name) => !known.includes(name));
  if (unknown !== undefined) return `names an unknown group ${JSON.stringify(unknown)} (known: ${known.join(', ')})`;
  const repeated = names.find((name, i) => names.indexOf(name) !== i);
  if (repeated !== undefined) return `names ${repeated} twice`;
  if (!names.some((name) => CLASSICAL_TLS_GROUPS.includes(name))) {
    return `must keep a classical group (${CLASSICAL_TLS_GROUPS.join(', ')}) for devices without ML-KEM`;
  }
  return null;
}

/** Throws ERR_CONFIG_INVALID naming `tls.groups` when the list is unusable. */
export function assertTlsGroups(list: string): void {
  const problem = tlsGroupsProblem(list);
  if (problem)
    throw new CastellanError('ERR_CONFIG_INVALID', { message: `Invalid configuration: tls.groups ${problem}` });
}
