// Trusted time for devices without a clock (DEV-6, issue 8): the device sends a fresh random nonce and
// the platform answers with its time, signed together with that nonce by the key of its TLS server
// certificate. The device checks the certificate chain against its pinned CA (signatures only: it has
// no clock yet), then the nonce and the signature, and only then the certificates' validity dates,
// against the signed time itself. A recorded answer is useless to an attacker (the nonce is fresh), and
// nobody without the platform's key can produce one. The byte format is in docs/protocol.md ("Signed
// time"); packages/protocol/test/signed-time.test.ts holds the known-answer vectors.
//
//   message   = ASCII "castellan-time-v1" | nonce | time          ('|' = 0x7c, no trailing newline)
//     nonce   = the device's base64url nonce exactly as sent (22-128 characters: 16 to 96 random bytes)
//     time    = the platform's time in ms since the epoch, decimal, no sign, no leading zeros
//   signature = ECDSA P-256 over SHA-256(message), IEEE P1363 encoding (r ‖ s, 32 bytes each, 64 bytes),
//               base64url without padding (86 characters)
//
// Every byte of the message is printable ASCII, so it can never equal what the same key signs in TLS:
// TLS 1.3 CertificateVerify starts with 64 spaces (RFC 8446 §4.4.3) and a TLS 1.2 ServerKeyExchange has
// the byte 0x03 (named_curve) right after the two 32-byte randoms (RFC 8422 §5.4).
import {
  createPrivateKey,
  createPublicKey,
  KeyObject,
  randomBytes,
  sign,
  timingSafeEqual,
  verify,
  X509Certificate,
} from 'node:crypto';

export const SIGNED_TIME_CONTEXT = 'castellan-time-v1';
/** Longest chain accepted between the signing leaf and a pinned CA (intermediates). */
export const SIGNED_TIME_MAX_INTERMEDIATES = 3;

const NONCE_PATTERN = /^[A-Za-z0-9_-]{22,128}$/;
const SIGNATURE_PATTERN = /^[A-Za-z0-9_-]{86}$/;
const PEM_BLOCK = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;
const SERVER_AUTH = '1.3.6.1.5.5.7.3.1';
const ANY_EKU = '2.5.29.37.0';

/** The platform's answer to GET /v1/device-api/time?nonce=… (the JSON fields the signature covers or proves). */
export interface SignedTimeResponse {
  /** ms since the epoch. */
  time: number;
  /** The device's nonce, echoed. */
  nonce: string;
  /** base64url(r ‖ s) of ECDSA P-256 SHA-256 over signedTimeMessage(nonce, time). */
  signature: string;
  /** PEM of the signing leaf certificate (the platform's TLS server certificate). */
  certificate: string;
  /** PEM intermediates from the leaf towards the pinned CA, if any. */
  chain?: string[];
}

export type SignedTimeFailure =
  | 'malformed'
  | 'nonce-mismatch'
  | 'untrusted-certificate'
  | 'unsupported-key'
  | 'bad-signature'
  | 'certificate-not-valid-at-time';

export class SignedTimeError extends Error {
  readonly code = 'ERR_SIGNED_TIME';
  readonly reason: SignedTimeFailure;
  constructor(reason: SignedTimeFailure, message: string) {
    super(message);
    this.name = 'SignedTimeError';
    this.reason = reason;
  }
}

/** A fresh 128-bit time nonce, base64url (22 characters). */
export function newTimeNonce(): string {
  return randomBytes(16).toString('base64url');
}

export function isTimeNonce(value: unknown): value is string {
  return typeof value === 'string' && NONCE_PATTERN.test(value);
}

/** The exact bytes signed: `castellan-time-v1|<nonce>|<time>`. */
export function signedTimeMessage(nonce: string, time: number): Buffer {
  if (!isTimeNonce(nonce)) throw new SignedTimeError('malformed', 'nonce must be 22-128 base64url characters');
  if (!Number.isSafeInteger(time) || time < 0)
    throw new SignedTimeError('malformed', 'time must be a safe integer ≥ 0');
  return Buffer.from(`${SIGNED_TIME_CONTEXT}|${nonce}|${time}`, 'ascii');
}

/** Splits a PEM bundle into its certificates (other blocks, such as keys, are ignored). */
export function splitPemCertificates(pem: string | Buffer): string[] {
  return (typeof pem === 'string' ? pem : pem.toString('utf8')).match(PEM_BLOCK)?.map((b) => `${b}\n`) ?? [];
}

const isP256 = (key: KeyObject) =>
  key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1';

export interface TimeSigningKey {
  /** PEM (PKCS#8 or SEC1) or a KeyObject: must be ECDSA P-256. */
  key: string | Buffer | KeyObject;
  /** PEM: the leaf first, then any intermediates (a full-chain file as used for TLS). */
  certificates: string | Buffer;
}

/** A signer bound to one P-256 key and its certificate; throws SignedTimeError('unsupported-key') otherwise. */
export function timeSigner(input: TimeSigningKey): (nonce: string, time: number) => SignedTimeResponse {
  const key = input.key instanceof KeyObject ? input.key : createPrivateKey(input.key);
  if (key.type !== 'private' || !isP256(key)) {
    throw new SignedTimeError('unsupported-key', 'the time-signing key must be an ECDSA P-256 private key');
  }
  const [leaf, ...chain] = splitPemCertificates(input.certificates);
  if (!leaf) throw new SignedTimeError('malformed', 'no certificate for the time-signing key');
  const leafKey = new X509Certificate(leaf).publicKey;
  const ours = createPublicKey(key).export({ type: 'spki', format: 'der' });
  if (!ours.equals(leafKey.export({ type: 'spki', format: 'der' }))) {
    throw new SignedTimeError('unsupported-key', 'the first certificate is not the time-signing key’s');
  }
  return (nonce, time) => ({
    time,
    nonce,
    signature: sign('sha256', signedTimeMessage(nonce, time), {
      key,
      dsaEncoding: 'ieee-p1363',
    }).toString('base64url'),
    certificate: leaf,
    ...(chain.length > 0 ? { chain } : {}),
  });
}

/** Convenience: one signed answer. */
export function signTime(input: TimeSigningKey, nonce: string, time: number): SignedTimeResponse {
  return timeSigner(input)(nonce, time);
}

function parseCertificate(pem: unknown): X509Certificate {
  if (typeof pem !== 'string' || pem.length > 16_384) throw new SignedTimeError('malformed', 'certificate is not PEM');
  try {
    return new X509Certificate(pem);
  } catch {
    throw new SignedTimeError('malformed', 'certificate is not PEM');
  }
}

/** Is `child` issued and signed by `parent` (name match, then the signature)? No dates are checked. */
const signedBy = (child: X509Certificate, parent: X509Certificate) =>
  child.checkIssued(parent) && child.verify(parent.publicKey);

/**
 * The path leaf → intermediates → pinned CA, checked by signature only (the device has no clock yet).
 * A pinned certificate is a trust anchor (the leaf itself may be pinned, as with a self-signed server
 * certificate). Intermediates must be CA certificates.
 */
function trustedPath(leaf: X509Certificate, chain: X509Certificate[], anchors: X509Certificate[]): X509Certificate[] {
  const path = [leaf];
  const pool = [...chain];
  for (let depth = 0; depth <= SIGNED_TIME_MAX_INTERMEDIATES; depth++) {
    const current = path[path.length - 1]!;
    const anchor = anchors.find((a) => a.raw.equals(current.raw) || signedBy(current, a));
    if (anchor) return anchor.raw.equals(current.raw) ? path : [...path, anchor];
    const next = pool.findIndex((c) => c.ca && signedBy(current, c));
    if (next === -1) break;
    path.push(pool.splice(next, 1)[0]!);
  }
  throw new SignedTimeError('untrusted-certificate', 'the time certificate does not chain to the pinned CA');
}

const validAt = (cert: X509Certificate, time: number) =>
  cert.validFromDate.getTime() <= time && time <= cert.validToDate.getTime();

/** Parses a pinned CA option (a PEM bundle or a list of PEMs) into its certificates. */
function pinnedCertificates(ca: VerifySignedTimeOptions['ca']): X509Certificate[] {
  const list: ReadonlyArray<string | Buffer> = typeof ca === 'string' || Buffer.isBuffer(ca) ? [ca] : ca;
  return list.flatMap((pem) => splitPemCertificates(pem)).map((pem) => new X509Certificate(pem));
}

/**
 * Checks, by signature only, that `leaf` chains to a pinned CA through the given intermediates; returns
 * the path (leaf first, anchor last) or throws SignedTimeError('untrusted-certificate'). For devices
 * whose TLS stack cannot check dates yet: the dates are left to the caller.
 */
export function certificatePathToPinnedCa(
  leaf: X509Certificate,
  chain: readonly X509Certificate[],
  ca: VerifySignedTimeOptions['ca'],
): X509Certificate[] {
  const anchors = pinnedCertificates(ca);
  if (anchors.length === 0) throw new SignedTimeError('malformed', 'no pinned CA certificate');
  return trustedPath(leaf, [...chain], anchors);
}

export interface VerifySignedTimeOptions {
  /** The pinned CA certificate(s): a PEM bundle or a list of PEMs (several during a CA rollover). */
  ca: string | Buffer | ReadonlyArray<string | Buffer>;
  /** The nonce this device sent with its request. */
  nonce: string;
}

/**
 * Device side: checks a signed-time answer and returns its time (ms since the epoch). Order: shape →
 * nonce → certificate path to a pinned CA by signature → leaf is a P-256 server key → signature →
 * every certificate on the path valid at the signed time (its own notBefore/notAfter). Throws
 * SignedTimeError with the failing reason.
 */
export function verifySignedTime(response: unknown, options: VerifySignedTimeOptions): number {
  const r = response as Partial<Record<keyof SignedTimeResponse, unknown>> | null;
  if (typeof r !== 'object' || r === null) throw new SignedTimeError('malformed', 'the time answer is not an object');
  const { time, nonce, signature } = r;
  if (typeof time !== 'number' || !Number.isSafeInteger(time) || time < 0) {
    throw new SignedTimeError('malformed', 'time is not a safe integer ≥ 0');
  }
  if (!isTimeNonce(nonce) || typeof signature !== 'string' || !SIGNATURE_PATTERN.test(signature)) {
    throw new SignedTimeError('malformed', 'nonce or signature is malformed');
  }
  if (!isTimeNonce(options.nonce)) throw new SignedTimeError('malformed', 'the expected nonce is malformed');
  const got = Buffer.from(nonce, 'ascii');
  const want = Buffer.from(options.nonce, 'ascii');
  if (got.length !== want.length || !timingSafeEqual(got, want)) {
    throw new SignedTimeError('nonce-mismatch', 'the time answer is for another nonce');
  }
  const leaf = parseCertificate(r.certificate);
  if (r.chain !== undefined && (!Array.isArray(r.chain) || r.chain.length > SIGNED_TIME_MAX_INTERMEDIATES)) {
    throw new SignedTimeError('malformed', 'chain must be a list of at most 3 PEM certificates');
  }
  const chain = ((r.chain as unknown[] | undefined) ?? []).map(parseCertificate);
  const path = certificatePathToPinnedCa(leaf, chain, options.ca);
  const eku = leaf.keyUsage;
  if (
    leaf.ca ||
    !isP256(leaf.publicKey) ||
    (eku !== undefined && !eku.includes(SERVER_AUTH) && !eku.includes(ANY_EKU))
  ) {
    throw new SignedTimeError('unsupported-key', 'the time certificate is not a P-256 server certificate');
  }
  const ok = verify(
    'sha256',
    signedTimeMessage(nonce, time),
    { key: leaf.publicKey, dsaEncoding: 'ieee-p1363' },
    Buffer.from(signature, 'base64url'),
  );
  if (!ok) throw new SignedTimeError('bad-signature', 'the time signature does not verify');
  // Only now is `time` trusted, and it is the clock the certificates' own dates are judged by.
  if (!path.every((cert) => validAt(cert, time))) {
    throw new SignedTimeError('certificate-not-valid-at-time', 'a time certificate is not valid at the signed time');
  }
  return time;
}
