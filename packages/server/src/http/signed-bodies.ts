// The body half of a signed request (operator requests, docs/api-signing.md; device requests, DEV-6):
// the signature covers a SHA-256 of the body, but onRequest hooks run before the body arrives. The hook
// that checked the signature promises the hash here; a preParsing hook then hashes the payload as it
// streams to the parser, and a mismatch fails the stream, so the handler never runs.
import { createHash } from 'node:crypto';
import { Transform } from 'node:stream';
import { contentSha256 } from '@castellan/protocol';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { constantTimeEqual } from '../lib/random-ids.ts';

/** True when the request carries a body (RFC 9112 §6.3: Content-Length or Transfer-Encoding). */
function hasBody(request: FastifyRequest): boolean {
  if (request.headers['transfer-encoding'] !== undefined) return true;
  const length = request.headers['content-length'];
  return length !== undefined && length !== '0';
}

export class SignedBodies {
  readonly #promised = new WeakMap<FastifyRequest, { sha256: string; refuse: () => void }>();
  readonly #verified = new WeakSet<FastifyRequest>();
  readonly #failure: () => Error;

  /** `failure` builds the error a mismatching body fails with (a fixed, revealing-nothing message). */
  constructor(failure: () => Error) {
    this.#failure = failure;
  }

  /** The signature checked out and covers `sha256` (hex); `refuse` records a mismatch (audit, guard). */
  promise(request: FastifyRequest, sha256: string, refuse: () => void): void {
    this.#promised.set(request, { sha256, refuse });
  }

  /** A request whose credential covers no body (a bearer token): nothing to compare. */
  markVerified(request: FastifyRequest): void {
    this.#verified.add(request);
  }

  /** True once the body received was compared with the promised hash (or none was needed). */
  isVerified(request: FastifyRequest): boolean {
    return this.#verified.has(request);
  }

  /** The preParsing hook. */
  readonly verify = async (
    request: FastifyRequest,
    _reply: FastifyReply,
    payload: NodeJS.ReadableStream,
  ): Promise<NodeJS.ReadableStream> => {
    const promise = this.#promised.get(request);
    if (!promise) return payload;
    this.#promised.delete(request);
    const matches = (hex: string) => constantTimeEqual(Buffer.from(hex), Buffer.from(promise.sha256));
    if (!hasBody(request)) {
      if (!matches(contentSha256())) {
        promise.refuse();
        throw this.#failure();
      }
      this.#verified.add(request);
      return payload;
    }
    const hash = createHash('sha256');
    const verified = this.#verified;
    const failure = this.#failure;
    const checked = new Transform({
      transform(chunk: Buffer, _encoding, callback) {
        hash.update(chunk);
        callback(null, chunk);
      },
      flush(callback) {
        if (matches(hash.digest('hex'))) {
          verified.add(request);
          return callback();
        }
        promise.refuse();
        callback(failure());
      },
    });
    // A client that aborts mid-body must not leave the parser waiting.
    payload.on('error', (error: Error) => checked.destroy(error));
    return payload.pipe(checked);
  };
}
