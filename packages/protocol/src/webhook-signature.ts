// Webhook signatures: how Castellan signs the device events it POSTs to a vendor's business systems,
// and how a receiver checks them. The signed content binds the message ID and the send time to the
// exact body bytes, so a captured request cannot be replayed later (timestamp tolerance) or with
// another body (HMAC-SHA256 over `${id}.${timestamp}.${body}`); the same scheme as Standard Webhooks
// and Stripe, with Castellan's header names.
import { createHmac, timingSafeEqual } from 'node:crypto';

/** The message ID: the same on every retry of one delivery (receivers deduplicate on it). */
export const WEBHOOK_ID_HEADER = 'castellan-webhook-id';
/** When this attempt was sent, in whole seconds since the Unix epoch. */
export const WEBHOOK_TIMESTAMP_HEADER = 'castellan-webhook-timestamp';
/** `v1=<hex>`; during a secret rotation's grace period, one `v1=` per valid secret, space-separated. */
export const WEBHOOK_SIGNATURE_HEADER = 'castellan-signature';
/** How far a timestamp may be from the receiver's clock by default (5 minutes, either way). */
export const WEBHOOK_TOLERANCE_SECONDS = 300;

const VERSION = 'v1';
const HEX_SIGNATURE = /^[0-9a-f]{64}$/;

export type WebhookVerificationFailure =
  'missing-header' | 'timestamp-invalid' | 'timestamp-out-of-tolerance' | 'signature-mismatch';

export class WebhookVerificationError extends Error {
  readonly code: WebhookVerificationFailure;
  constructor(code: WebhookVerificationFailure, message: string) {
    super(message);
    this.name = 'WebhookVerificationError';
    this.code = code;
  }
}

function toBytes(value: string | Uint8Array): Buffer {
  return typeof value === 'string'
    ? Buffer.from(value, 'utf8')
    : Buffer.from(value.buffer, value.byteOffset, value.length);
}

/** HMAC-SHA256(secret, `${id}.${timestamp}.${body}`) as lower-case hex. */
export function webhookSignature(
  secret: string | Uint8Array,
  id: string,
  timestamp: number | string,
  body: string | Uint8Array,
): string {
  return createHmac('sha256', toBytes(secret))
    .update(`${id}.${timestamp}.`, 'utf8')
    .update(toBytes(body))
    .digest('hex');
}

/** The `castellan-signature` header value: `v1=<hex>` for each secret (new secret first). */
export function signWebhook(input: {
  secrets: readonly (string | Uint8Array)[];
  id: string;
  timestamp: number;
  body: string | Uint8Array;
}): string {
  return input.secrets.map((s) => `${VERSION}=${webhookSignature(s, input.id, input.timestamp, input.body)}`).join(' ');
}

/** Request headers as Node gives them (lower-case names) or a fetch `Headers` object. */
export type WebhookHeaders = Readonly<Record<string, string | readonly string[] | undefined>> | Headers;

function header(headers: WebhookHeaders, name: string): string | undefined {
  if (typeof (headers as Headers).get === 'function') return (headers as Headers).get(name) ?? undefined;
  const value = (headers as Record<string, string | readonly string[] | undefined>)[name];
  return Array.isArray(value) ? (value as readonly string[]).join(' ') : (value as string | undefined);
}

/**
 * Checks a received webhook: the three headers are present, the timestamp is within `toleranceSeconds`
 * of `now`, and some `v1=` signature matches one of the receiver's secrets (compared in constant
 * time). `body` must be the raw bytes as received, before any JSON parsing. Returns the message ID
 * and timestamp; throws WebhookVerificationError otherwise.
 */
export function verifyWebhookSignature(input: {
  /** The endpoint's secret; two during a rotation (the new and the previous one). */
  secret: string | Uint8Array | readonly (string | Uint8Array)[];
  headers: WebhookHeaders;
  body: string | Uint8Array;
  toleranceSeconds?: number;
  /** The receiver's clock, ms since the epoch (default Date.now()). */
  now?: number;
}): { id: string; timestamp: number } {
  const id = header(input.headers, WEBHOOK_ID_HEADER);
  const stamp = header(input.headers, WEBHOOK_TIMESTAMP_HEADER);
  const signatures = header(input.headers, WEBHOOK_SIGNATURE_HEADER);
  if (!id || !stamp || !signatures) {
    throw new WebhookVerificationError('missing-header', 'webhook signature headers are missing');
  }
  if (!/^\d{1,12}$/.test(stamp))
    throw new WebhookVerificationError('timestamp-invalid', 'webhook timestamp is invalid');
  const timestamp = Number(stamp);
  const tolerance = input.toleranceSeconds ?? WEBHOOK_TOLERANCE_SECONDS;
  const nowSeconds = Math.floor((input.now ?? Date.now()) / 1000);
  if (Math.abs(nowSeconds - timestamp) > tolerance) {
    throw new WebhookVerificationError('timestamp-out-of-tolerance', 'webhook timestamp is outside the tolerance');
  }
  const presented = signatures
    .split(/[\s,]+/)
    .filter((part) => part.startsWith(`${VERSION}=`))
    .map((part) => part.slice(VERSION.length + 1))
    .filter((hex) => HEX_SIGNATURE.test(hex))
    .map((hex) => Buffer.from(hex, 'hex'));
  const secrets = Array.isArray(input.secret)
    ? (input.secret as readonly (string | Uint8Array)[])
    : [input.secret as string | Uint8Array];
  let match = false;
  // Every pair is compared, so the time taken does not say which secret or signature matched.
  for (const secret of secrets) {
    const expected = Buffer.from(webhookSignature(secret, id, timestamp, input.body), 'hex');
    for (const candidate of presented) {
      if (candidate.length === expected.length && timingSafeEqual(candidate, expected)) match = true;
    }
  }
  if (!match) throw new WebhookVerificationError('signature-mismatch', 'webhook signature does not match');
  return { id, timestamp };
}
