// Device posture (DEV-10, S 6.1.5e, S 8.1.4p): what a device reports about itself on its events topic,
// `{"type":"posture","firmwareVersion":…,"securityLevel":"L1|L2|L3","digests":{<path>:<sha256 hex>}}`
// and optionally `"tls":{"group":…,"version":…,"cipher":…}`, what its own TLS connection negotiated
// (CHAN-8: Node gives a server no way to read the key-exchange group, so the device tells), validated
// strictly (a malformed report is refused, never half-stored), and how it compares with the golden
// values the vendor set for the product and that firmware version.
import { HYBRID_TLS_GROUPS } from '../../lib/tls-groups.ts';

export const SECURITY_LEVELS = ['L1', 'L2', 'L3'] as const;
export type SecurityLevel = (typeof SECURITY_LEVELS)[number];

/** Letters, digits, `.`, `_`, `+`, `-`; 1–64 characters, starting with a letter or digit (semver fits). */
export const FIRMWARE_VERSION_PATTERN = '^[0-9A-Za-z][0-9A-Za-z._+-]{0,63}$';
/** A core file's path: 1–256 characters without control characters. */
export const CORE_FILE_PATTERN = '^[^\\u0000-\\u001f\\u007f]{1,256}$';
export const SHA256_HEX_PATTERN = '^[0-9a-f]{64}$';
export const MAX_CORE_FILES = 256;
/** A key-exchange group as TLS names it (`X25519MLKEM768`, `P-256`, …): 1–32 letters, digits, `_`, `-`, `.`. */
export const TLS_GROUP_PATTERN = '^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$';
/** A cipher suite, IANA (`TLS_AES_128_GCM_SHA256`) or OpenSSL (`ECDHE-ECDSA-AES128-GCM-SHA256`) name: 1–64 characters. */
export const TLS_CIPHER_PATTERN = '^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$';
export const TLS_VERSIONS = ['TLSv1.2', 'TLSv1.3'] as const;
export type TlsVersion = (typeof TLS_VERSIONS)[number];
/** Largest posture report accepted (256 paths of 256 characters with their digests fit). */
const MAX_REPORT_BYTES = 96 * 1024;

const firmwareRe = new RegExp(FIRMWARE_VERSION_PATTERN);
const pathRe = new RegExp(CORE_FILE_PATTERN);
const digestRe = new RegExp(SHA256_HEX_PATTERN);
const groupRe = new RegExp(TLS_GROUP_PATTERN);
const cipherRe = new RegExp(TLS_CIPHER_PATTERN);
const TLS_FIELDS = ['group', 'version', 'cipher'];

/** What the device's TLS connection to the platform negotiated, as the device saw it (CHAN-8). */
export interface PostureTls {
  readonly group: string;
  readonly version: TlsVersion;
  readonly cipher: string;
}

/** True for a hybrid post-quantum group (ML-KEM with ECDHE); anything else is classical. */
export const isPostQuantumGroup = (group: string): boolean => HYBRID_TLS_GROUPS.includes(group);

export interface PostureReport {
  readonly firmwareVersion: string;
  readonly securityLevel: SecurityLevel;
  /** Core file path → SHA-256 (lower-case hex). */
  readonly digests: Readonly<Record<string, string>>;
  /** Absent when the device did not say (not over TLS, or an older SDK). */
  readonly tls?: PostureTls;
}

export interface GoldenValues {
  readonly securityLevel: SecurityLevel;
  readonly digests: Readonly<Record<string, string>>;
}

export type PostureDeviation =
  | { readonly kind: 'unknown-firmware'; readonly firmwareVersion: string }
  | { readonly kind: 'security-level'; readonly reported: SecurityLevel; readonly required: SecurityLevel }
  | { readonly kind: 'digest-mismatch'; readonly path: string }
  | { readonly kind: 'missing-file'; readonly path: string }
  | { readonly kind: 'classical-key-exchange'; readonly group: string; readonly required: SecurityLevel };

export type ParsedPosture = { ok: true; report: PostureReport } | { ok: false; reason: string };

const isPlainObject = (value: unknown): value is Record<string, unknown> =>
  typeof value === 'object' && value !== null && !Array.isArray(value);

/** Checks a digests map (from a device or a vendor); the reason names the first problem. */
export function checkDigests(value: unknown, field = 'digests'): string | null {
  if (!isPlainObject(value)) return `${field} must be an object of core file path to SHA-256 hex`;
  const entries = Object.entries(value);
  if (entries.length === 0 || entries.length > MAX_CORE_FILES) {
    return `${field} must name 1 to ${MAX_CORE_FILES} core files`;
  }
  for (const [path, digest] of entries) {
    if (!pathRe.test(path)) return `${field}: a path must be 1-256 characters without control characters`;
    if (typeof digest !== 'string' || !digestRe.test(digest)) {
      return `${field}: the digest of ${JSON.stringify(path)} must be 64 lower-case hex digits (SHA-256)`;
    }
  }
  return null;
}

/** Checks a report's `tls` object; the reason names the first problem. */
function checkTls(value: unknown): string | null {
  if (!isPlainObject(value)) return 'tls must be an object {group, version, cipher}';
  const unknown = Object.keys(value).find((k) => !TLS_FIELDS.includes(k));
  if (unknown !== undefined) return `tls: unknown field ${JSON.stringify(unknown)}`;
  if (typeof value.group !== 'string' || !groupRe.test(value.group)) {
    return 'tls.group must be 1-32 letters, digits, "_", "-" or "." (e.g. X25519MLKEM768, P-256)';
  }
  if (typeof value.version !== 'string' || !(TLS_VERSIONS as readonly string[]).includes(value.version)) {
    return 'tls.version must be TLSv1.2 or TLSv1.3';
  }
  if (typeof value.cipher !== 'string' || !cipherRe.test(value.cipher)) {
    return 'tls.cipher must be 1-64 letters, digits, "_" or "-"';
  }
  return null;
}

/**
 * A posture report from an events-topic payload. Null when the payload is not a posture report at all
 * (not JSON, or another `type`): other events are not this parser's business. A report with
 * `"type":"posture"` must be exactly right: known fields only, each well-formed.
 */
export function parsePostureReport(payload: Buffer): ParsedPosture | null {
  let value: unknown;
  try {
    value = JSON.parse(payload.toString('utf8'));
  } catch {
    return null;
  }
  if (!isPlainObject(value) || value.type !== 'posture') return null;
  if (payload.length > MAX_REPORT_BYTES)
    return { ok: false, reason: `posture report exceeds ${MAX_REPORT_BYTES} bytes` };
  const unknown = Object.keys(value).filter(
    (k) => !['type', 'firmwareVersion', 'securityLevel', 'digests', 'tls'].includes(k),
  );
  if (unknown.length > 0) return { ok: false, reason: `posture report: unknown field ${JSON.stringify(unknown[0])}` };
  const { firmwareVersion, securityLevel, digests, tls } = value;
  if (typeof firmwareVersion !== 'string' || !firmwareRe.test(firmwareVersion)) {
    return {
      ok: false,
      reason: 'posture report: firmwareVersion must be 1-64 letters, digits, ".", "_", "+" or "-"',
    };
  }
  if (typeof securityLevel !== 'string' || !(SECURITY_LEVELS as readonly string[]).includes(securityLevel)) {
    return { ok: false, reason: 'posture report: securityLevel must be L1, L2 or L3' };
  }
  const problem = checkDigests(digests);
  if (problem) return { ok: false, reason: `posture report: ${problem}` };
  const tlsProblem = tls === undefined ? null : checkTls(tls);
  if (tlsProblem) return { ok: false, reason: `posture report: ${tlsProblem}` };
  const reportedTls = tls as PostureTls | undefined;
  return {
    ok: true,
    report: {
      firmwareVersion,
      securityLevel: securityLevel as SecurityLevel,
      digests: Object.fromEntries(Object.entries(digests as Record<string, string>)),
      ...(reportedTls
        ? { tls: { group: reportedTls.group, version: reportedTls.version, cipher: reportedTls.cipher } }
        : {}),
    },
  };
}

const rank = (level: SecurityLevel) => SECURITY_LEVELS.indexOf(level);

/**
 * Deviations of a report from the golden values of its firmware (null: the version is unknown) and
 * the product's security level (null: none recorded): an unknown version; a level below the higher of
 * the golden and the product level; every core file whose digest differs or is missing; at level L3, a
 * reported TLS key exchange without ML-KEM (CHAN-8: harvest-now-decrypt-later; a report without `tls`
 * says nothing either way). Extra files a device reports are not deviations. In a stable order (paths
 * sorted), so equal findings compare equal.
 */
export function comparePosture(
  report: PostureReport,
  golden: GoldenValues | null,
  productLevel: SecurityLevel | null,
): PostureDeviation[] {
  const deviations: PostureDeviation[] = [];
  if (!golden) deviations.push({ kind: 'unknown-firmware', firmwareVersion: report.firmwareVersion });
  const required = [golden?.securityLevel, productLevel]
    .filter((l): l is SecurityLevel => l !== undefined && l !== null)
    .reduce<SecurityLevel | null>((max, l) => (max === null || rank(l) > rank(max) ? l : max), null);
  if (required !== null && rank(report.securityLevel) < rank(required)) {
    deviations.push({ kind: 'security-level', reported: report.securityLevel, required });
  }
  if (golden) {
    const reported = new Map(Object.entries(report.digests));
    for (const path of Object.keys(golden.digests).sort()) {
      const digest = reported.get(path);
      if (digest === undefined) deviations.push({ kind: 'missing-file', path });
      else if (digest !== golden.digests[path]) deviations.push({ kind: 'digest-mismatch', path });
    }
  }
  if (required === 'L3' && report.tls && !isPostQuantumGroup(report.tls.group)) {
    deviations.push({ kind: 'classical-key-exchange', group: report.tls.group, required });
  }
  return deviations;
}
