// Signed requests of operator access keys (ORG-2), shared by the cloud (verification) and every client
// (CLI, bench, tests, business systems). The byte-by-byte format and a worked example are in
// docs/api-signing.md; this file is the reference implementation.
//
// Canonical string: eight lines joined with '\n' (no trailing newline):
//   CASTELLAN-HMAC-SHA256 | METHOD | canonical path | canonical query | host | content SHA-256 | date | nonce
// Signature: lowercase hex HMAC-SHA-256 (RFC 2104) keyed with the UTF-8 bytes of the secret.
import { createHash, createHmac, randomBytes } from 'node:crypto';

export const SIGNING_SCHEME = 'CASTELLAN-HMAC-SHA256';
export const SIGNED_HEADERS = 'host;x-castellan-content-sha256;x-castellan-date;x-castellan-nonce';
export const DATE_HEADER = 'x-castellan-date';
export const NONCE_HEADER = 'x-castellan-nonce';
export const CONTENT_SHA256_HEADER = 'x-castellan-content-sha256';

/** RFC 3339 UTC at whole seconds, exactly `YYYY-MM-DDTHH:MM:SSZ`. */
const DATE_PATTERN = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$/;
/** base64url (RFC 4648 §5, unpadded) of at least 16 random bytes: ≥ 22 characters. */
const NONCE_PATTERN = /^[A-Za-z0-9_-]{22,128}$/;
const SHA256_HEX_PATTERN = /^[0-9a-f]{64}$/;
const AUTHORIZATION_PATTERN =
  /^CASTELLAN-HMAC-SHA256 Credential=(opk_[A-Za-z0-9_-]{22}), SignedHeaders=host;x-castellan-content-sha256;x-castellan-date;x-castellan-nonce, Signature=([0-9a-f]{64})$/;

export class RequestSigningError extends Error {
  readonly code = 'ERR_REQUEST_SIGNING';
}

/** SHA-256 of the exact body bytes, lowercase hex (of the empty string when there is no body). */
export function contentSha256(body: Uint8Array | string = ''): string {
  return createHash('sha256').update(body).digest('hex');
}

/** The signing date for `ms` (milliseconds since the epoch), truncated to whole seconds. */
export function formatSigningDate(ms: number): string {
  return new Date(Math.floor(ms / 1000) * 1000).toISOString().replace('.000Z', 'Z');
}

/** Milliseconds since the epoch of a signing date, or null unless it is exactly in the documented form. */
export function parseSigningDate(value: string): number | null {
  if (!DATE_PATTERN.test(value)) return null;
  const ms = Date.parse(value);
  // Round-tripping rejects dates that parse but do not exist (2025-02-30T…).
  return Number.isFinite(ms) && formatSigningDate(ms) === value ? ms : null;
}

export function isSigningNonce(value: string): boolean {
  return NONCE_PATTERN.test(value);
}

export function isContentSha256(value: string): boolean {
  return SHA256_HEX_PATTERN.test(value);
}

/** A fresh 128-bit nonce, base64url. */
export function newSigningNonce(): string {
  return randomBytes(16).toString('base64url');
}

// RFC 3986 §2.3 unreserved characters: never percent-encoded in canonical form.
const isUnreserved = (byte: number): boolean =>
  (byte >= 0x41 && byte <= 0x5a) ||
  (byte >= 0x61 && byte <= 0x7a) ||
  (byte >= 0x30 && byte <= 0x39) ||
  byte === 0x2d ||
  byte === 0x2e ||
  byte === 0x5f ||
  byte === 0x7e;
// RFC 3986 §3.3 pchar minus unreserved and pct-encoded (sub-delims, ':' '@'), plus the '/' separator.
const PATH_RESERVED = new Set("!$&'()*+,;=:@/".split('').map((c) => c.charCodeAt(0)));
const HEX = /^[0-9A-Fa-f]{2}$/;

const encodeByte = (byte: number): string => `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;

/** Percent-decodes to bytes; a '%' not followed by two hex digits is refused. */
function decodeToBytes(component: string): number[] {
  const bytes: number[] = [];
  const raw = Buffer.from(component, 'utf8');
  for (let i = 0; i < raw.length; i++) {
    if (raw[i] === 0x25) {
      const hex = raw.subarray(i + 1, i + 3).toString('latin1');
      if (!HEX.test(hex)) throw new RequestSigningError('malformed percent-encoding');
      bytes.push(Number.parseInt(hex, 16));
      i += 2;
    } else {
      bytes.push(raw[i]!);
    }
  }
  return bytes;
}

/**
 * The path as sent, normalised per RFC 3986 §6.2.2.1-2: percent-encoded unreserved characters are
 * decoded, other percent-encodings get uppercase hex, characters that may not appear raw are encoded
 * (UTF-8). Encoded reserved characters (%2F) stay encoded; dot segments are not removed.
 */
export function canonicalPath(path: string): string {
  if (!path.startsWith('/')) throw new RequestSigningError('the path must start with /');
  const raw = Buffer.from(path, 'utf8');
  let out = '';
  for (let i = 0; i < raw.length; i++) {
    const byte = raw[i]!;
    if (byte === 0x25) {
      const hex = raw.subarray(i + 1, i + 3).toString('latin1');
      if (!HEX.test(hex)) throw new RequestSigningError('malformed percent-encoding');
      const decoded = Number.parseInt(hex, 16);
      out += isUnreserved(decoded) ? String.fromCharCode(decoded) : encodeByte(decoded);
      i += 2;
    } else {
      out += isUnreserved(byte) || PATH_RESERVED.has(byte) ? String.fromCharCode(byte) : encodeByte(byte);
    }
  }
  return out;
}

/**
 * The query without '?': pairs split on '&' (empty pairs dropped) and on the first '=' (a missing '='
 * is an empty value); names and values percent-decoded, then re-encoded with everything but unreserved
 * characters as uppercase %XX; sorted by name only (byte order of the encoded names), the values of a
 * repeated name keeping the order in which they were sent (a stable sort: servers hand repeated
 * parameters to handlers in that order, so `a=1&a=2` and `a=2&a=1` must not share a signature);
 * joined as name=value with '&'.
 *
 * A raw '+' is refused: RFC 3986 makes it a literal plus, but application/x-www-form-urlencoded (the
 * WHATWG URL standard, and the platform's query parser) decodes it as a space, so `a+b` and `a%2Bb`
 * would share a signature yet reach the handler differently. Clients encode '+' as %2B and space as %20.
 */
export function canonicalQuery(query: string): string {
  if (query.includes('+')) throw new RequestSigningError("a raw '+' in the query is ambiguous: send %2B or %20");
  const pairs: [string, string][] = [];
  for (const part of query.split('&')) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    const name = eq === -1 ? part : part.slice(0, eq);
    const value = eq === -1 ? '' : part.slice(eq + 1);
    const encode = (s: string) =>
      decodeToBytes(s)
        .map((b) => (isUnreserved(b) ? String.fromCharCode(b) : encodeByte(b)))
        .join('');
    pairs.push([encode(name), encode(value)]);
  }
  // Array.prototype.sort is stable (ECMA-262 §23.1.3.30): equal names keep their sent order.
  pairs.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  return pairs.map(([n, v]) => `${n}=${v}`).join('&');
}

export interface SignedRequestParts {
  method: string;
  /** The request target as sent: path and optional '?query' (origin-form, RFC 9112 §3.2.1). */
  target: string;
  /** The Host header as sent, port included when sent. */
  host: string;
  contentSha256: string;
  date: string;
  nonce: string;
}

export function canonicalString(parts: SignedRequestParts): string {
  const q = parts.target.indexOf('?');
  const path = q === -1 ? parts.target : parts.target.slice(0, q);
  const query = q === -1 ? '' : parts.target.slice(q + 1);
  return [
    SIGNING_SCHEME,
    parts.method.toUpperCase(),
    canonicalPath(path),
    canonicalQuery(query),
    parts.host.toLowerCase(),
    parts.contentSha256,
    parts.date,
    parts.nonce,
  ].join('\n');
}

/** HMAC-SHA-256 of the canonical string keyed with the secret's UTF-8 bytes, lowercase hex. */
export function requestSignature(secret: string, canonical: string): string {
  return createHmac('sha256', Buffer.from(secret, 'utf8')).update(canonical, 'utf8').digest('hex');
}

export interface ParsedAuthorization {
  keyId: string;
  signature: string;
}

/** Parses the Authorization header strictly (exact spacing, order and signed-header list), or null. */
export function parseSignedAuthorization(header: string): ParsedAuthorization | null {
  const match = AUTHORIZATION_PATTERN.exec(header);
  return match ? { keyId: match[1]!, signature: match[2]! } : null;
}

export interface AccessKey {
  /** The public key ID, opk_…. */
  id: string;
  secret: string;
}

export interface SignRequestInput {
  key: AccessKey;
  method: string;
  target: string;
  host: string;
  body?: Uint8Array | string | undefined;
  /** Milliseconds since the epoch; now by default. */
  now?: number;
  nonce?: string;
}

/** The four headers of a signed request (lowercase names). */
export function signRequest(input: SignRequestInput): Record<string, string> {
  const date = formatSigningDate(input.now ?? Date.now());
  const nonce = input.nonce ?? newSigningNonce();
  const hash = contentSha256(input.body ?? '');
  const canonical = canonicalString({
    method: input.method,
    target: input.target,
    host: input.host,
    contentSha256: hash,
    date,
    nonce,
  });
  const signature = requestSignature(input.key.secret, canonical);
  return {
    authorization: `${SIGNING_SCHEME} Credential=${input.key.id}, SignedHeaders=${SIGNED_HEADERS}, Signature=${signature}`,
    [DATE_HEADER]: date,
    [NONCE_HEADER]: nonce,
    [CONTENT_SHA256_HEADER]: hash,
  };
}
