// Verification of signed operator requests (ORG-2; format in docs/api-signing.md). Runs in onRequest,
// before the body is read: header syntax → date within the window → key live → source address in the
// key's allow-list → HMAC (constant-time) → nonce never seen (a row in request_nonces, so every
// process shares the replay memory) → later, the body actually received must hash to the signed
// X-Castellan-Content-SHA256 (a preParsing hook hashes it as it streams past).
// Every refusal is the same ERR_AUTH_INVALID; the reason goes only to the debug log and the audit log.
import {
  CONTENT_SHA256_HEADER,
  canonicalString,
  DATE_HEADER,
  isContentSha256,
  isSigningNonce,
  NONCE_HEADER,
  parseSignedAuthorization,
  parseSigningDate,
  requestSignature,
} from '@castellan/protocol';
import type { FastifyRequest } from 'fastify';
import type { Kysely } from 'kysely';
import type { Logger } from 'pino';
import type { AuditEvent } from '../audit/index.ts';
import { CastellanError } from '../errors/index.ts';
import { constantTimeEqual } from '../lib/random-ids.ts';
import type { Database } from '../store/index.ts';
import type { AccountsKeys } from './accounts-context.ts';
import { isUniqueViolation } from './accounts-service.ts';
import { addressAllowed, parseJsonList, plainIp, secretContext } from './operator-keys-service.ts';
import { OPERATOR_SCOPES, type OperatorPrincipal, type OperatorScope } from './principal.ts';
import type { SignedRequestVerifier } from './request-authenticator.ts';
import { SignedBodies } from '../http/index.ts';

/** last_used_at is written at most this often per key (it is a hint, not an audit record). */
const LAST_USED_RESOLUTION_MS = 60_000;

export type SignatureRefusal =
  | 'malformed'
  | 'stale-date'
  | 'unknown-key'
  | 'revoked-key'
  | 'address-not-allowed'
  | 'query-plus'
  | 'bad-signature'
  | 'replayed-nonce'
  | 'body-hash-mismatch';

export interface OperatorRequestVerifierOptions {
  db: Kysely<Database>;
  keys: Pick<AccountsKeys, 'decrypt'>;
  /** accounts.signatureWindowSeconds: how far the signed date may be from the server clock. */
  windowSeconds: number;
  record: (event: AuditEvent) => void;
  log: Logger;
  now?: () => number;
}

/** Bodies of requests whose signature checked out, compared with the hash they promised. */
const signedBodies = new SignedBodies(() => new CastellanError('ERR_AUTH_INVALID'));

const header = (request: FastifyRequest, name: string): string | undefined => {
  const value = request.headers[name];
  return typeof value === 'string' ? value : undefined;
};

export class OperatorRequestVerifier implements SignedRequestVerifier {
  readonly #db: Kysely<Database>;
  readonly #keys: Pick<AccountsKeys, 'decrypt'>;
  readonly #windowMs: number;
  readonly #record: (event: AuditEvent) => void;
  readonly #log: Logger;
  readonly #now: () => number;

  constructor(options: OperatorRequestVerifierOptions) {
    this.#db = options.db;
    this.#keys = options.keys;
    this.#windowMs = options.windowSeconds * 1000;
    this.#record = options.record;
    this.#log = options.log;
    this.#now = options.now ?? Date.now;
  }

  async verify(request: FastifyRequest): Promise<OperatorPrincipal | null> {
    const auth = parseSignedAuthorization(header(request, 'authorization') ?? '');
    const dateText = header(request, DATE_HEADER) ?? '';
    const nonce = header(request, NONCE_HEADER) ?? '';
    const declaredSha = header(request, CONTENT_SHA256_HEADER) ?? '';
    const host = header(request, 'host');
    const target = request.raw.url ?? '';
    const signedAt = parseSigningDate(dateText);
    if (
      !auth ||
      signedAt === null ||
      !isSigningNonce(nonce) ||
      !isContentSha256(declaredSha) ||
      !host ||
      !target.startsWith('/')
    ) {
      return this.#refuse(request, 'malformed', auth?.keyId);
    }
    const now = this.#now();
    if (Math.abs(now - signedAt) > this.#windowMs) return this.#refuse(request, 'stale-date', auth.keyId);

    const key = await this.#db
      .selectFrom('operator_keys')
      .select(['id', 'vendor_id', 'secret_ciphertext', 'scopes', 'allowed_cidrs', 'last_used_at', 'revoked_at'])
      .where('id', '=', auth.keyId)
      .executeTakeFirst();
    if (!key) return this.#refuse(request, 'unknown-key', auth.keyId);
    if (key.revoked_at !== null) return this.#refuse(request, 'revoked-key', auth.keyId, key.vendor_id);
    if (!addressAllowed(parseJsonList(key.allowed_cidrs), request.ip)) {
      return this.#refuse(request, 'address-not-allowed', auth.keyId, key.vendor_id);
    }

    // A raw '+' means a plus to the canonical query (RFC 3986) but a space to the query parser
    // (application/x-www-form-urlencoded), so `a+b` and `a%2Bb` would share a signature while the
    // handler sees different values: refused outright (docs/api-signing.md).
    const query = target.indexOf('?');
    if (query !== -1 && target.includes('+', query)) {
      return this.#refuse(request, 'query-plus', auth.keyId, key.vendor_id);
    }

    let canonical: string;
    try {
      canonical = canonicalString({
        method: request.method,
        target,
        host,
        contentSha256: declaredSha,
        date: dateText,
        nonce,
      });
    } catch {
      return this.#refuse(request, 'malformed', auth.keyId, key.vendor_id);
    }
    const secret = (await this.#keys.decrypt(key.vendor_id, key.secret_ciphertext, secretContext(key.id))).toString(
      'utf8',
    );
    const expected = Buffer.from(requestSignature(secret, canonical), 'hex');
    if (!constantTimeEqual(expected, Buffer.from(auth.signature, 'hex'))) {
      return this.#refuse(request, 'bad-signature', auth.keyId, key.vendor_id);
    }

    // Only a request with a valid signature may occupy a nonce: otherwise anyone could burn nonces.
    try {
      await this.#db
        .insertInto('request_nonces')
        .values({ key_id: key.id, nonce, expires_at: signedAt + this.#windowMs })
        .execute();
    } catch (error) {
      if (isUniqueViolation(error)) return this.#refuse(request, 'replayed-nonce', auth.keyId, key.vendor_id);
      throw error;
    }

    if (key.last_used_at === null || now - Number(key.last_used_at) >= LAST_USED_RESOLUTION_MS) {
      await this.#db.updateTable('operator_keys').set({ last_used_at: now }).where('id', '=', key.id).execute();
    }
    signedBodies.promise(
      request,
      declaredSha,
      () => void this.#refuse(request, 'body-hash-mismatch', key.id, key.vendor_id),
    );
    const scopes = parseJsonList(key.scopes).filter((s): s is OperatorScope =>
      (OPERATOR_SCOPES as readonly string[]).includes(s),
    );
    return { kind: 'operator', id: key.vendor_id, credentialId: key.id, scopes };
  }

  #refuse(request: FastifyRequest, reason: SignatureRefusal, keyId?: string, vendorId?: string): null {
    this.#log.debug({ reason, keyId, requestId: request.id }, 'accounts: signed request refused');
    this.#record({
      actor: vendorId ? { type: 'operator', id: vendorId } : { type: 'system', id: 'anonymous' },
      tenant: vendorId ?? null,
      type: 'operator.signature-refused',
      target: keyId ?? null,
      sourceIp: plainIp(request.ip),
      result: 'failure',
      details: { reason, requestId: request.id },
    });
    return null;
  }
}

/**
 * preParsing hook (register once, before the routes): for a request authenticated by signature, the
 * body must be exactly the bytes whose hash was signed. The payload is hashed as it streams to the
 * parser; a mismatch fails the stream, so the handler never runs.
 */
export const verifySignedBody = signedBodies.verify;
