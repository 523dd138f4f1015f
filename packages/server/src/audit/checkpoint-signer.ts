// Signed tree heads ("checkpoints"): Ed25519 over a small text note, in the spirit of RFC 9162's signed
// tree heads and C2SP signed notes. The signing key is derived from the root key (HKDF), so no extra
// secret needs handling; auditors verify with the public key alone (`GET /v1/audit/public-key`).
import { createHash, createPrivateKey, createPublicKey, hkdfSync, type KeyObject, sign, verify } from 'node:crypto';

export type CheckpointKind = 'periodic' | 'on-demand' | 'shutdown' | 'retention';

export interface Checkpoint {
  treeSize: number;
  /** Hex MTH of the first treeSize entries. */
  rootHash: string;
  time: number;
  kind: CheckpointKind;
  /** Entries below this position were removed by retention; verification starts from `prefix`. */
  prunedBefore: number;
  /** Hex subtree roots (MerkleFrontier) of the first prunedBefore entries; empty when nothing was pruned. */
  prefix: string[];
  keyId: string;
  /** Base64 Ed25519 signature over `checkpointNote(...)`. */
  signature: string;
}

// PKCS#8 wrapping of a raw Ed25519 seed (RFC 8410): a fixed 16-byte prefix.
const ED25519_PKCS8_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex');

export function checkpointNote(c: Omit<Checkpoint, 'keyId' | 'signature'>): Buffer {
  return Buffer.from(
    [
      'castellan-audit-checkpoint/v1',
      `size ${c.treeSize}`,
      `root ${c.rootHash}`,
      `time ${c.time}`,
      `kind ${c.kind}`,
      `pruned-before ${c.prunedBefore}`,
      `prefix ${c.prefix.join(',')}`,
      '',
    ].join('\n'),
    'utf8',
  );
}

export function rawPublicKey(key: KeyObject): Buffer {
  return key.export({ format: 'der', type: 'spki' }).subarray(-32);
}

export function publicKeyFromRaw(raw: Buffer): KeyObject {
  // SPKI wrapping of a raw Ed25519 public key (RFC 8410).
  return createPublicKey({
    key: Buffer.concat([Buffer.from('302a300506032b6570032100', 'hex'), raw]),
    format: 'der',
    type: 'spki',
  });
}

const keyIds = new WeakMap<KeyObject, string>();

export function keyIdOf(publicKey: KeyObject): string {
  let id = keyIds.get(publicKey);
  if (id === undefined) {
    id = createHash('sha256').update(rawPublicKey(publicKey)).digest('hex').slice(0, 16);
    keyIds.set(publicKey, id);
  }
  return id;
}

export class CheckpointSigner {
  readonly #privateKey: KeyObject;
  readonly publicKey: KeyObject;
  readonly keyId: string;

  constructor(rootKey: Uint8Array) {
    const seed = Buffer.from(hkdfSync('sha256', rootKey, Buffer.alloc(0), 'castellan/v1/audit-checkpoint-signing', 32));
    this.#privateKey = createPrivateKey({
      key: Buffer.concat([ED25519_PKCS8_PREFIX, seed]),
      format: 'der',
      type: 'pkcs8',
    });
    this.publicKey = createPublicKey(this.#privateKey);
    this.keyId = keyIdOf(this.publicKey);
  }

  sign(body: Omit<Checkpoint, 'keyId' | 'signature'>): Checkpoint {
    const signature = sign(null, checkpointNote(body), this.#privateKey).toString('base64');
    return { ...body, keyId: this.keyId, signature };
  }
}

/** True when the checkpoint carries a valid signature by `publicKey`. */
export function verifyCheckpoint(checkpoint: Checkpoint, publicKey: KeyObject): boolean {
  try {
    return (
      checkpoint.keyId === keyIdOf(publicKey) &&
      verify(null, checkpointNote(checkpoint), publicKey, Buffer.from(checkpoint.signature, 'base64'))
    );
  } catch {
    return false;
  }
}
