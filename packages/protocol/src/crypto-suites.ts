// Crypto suites selectable per tenant (KEY-4): international and Chinese national algorithms behind one
// interface. node:crypto provides AES-GCM, SHA-256, HKDF, Ed25519, SM3 and SM4 (OpenSSL 3.5); SM2 comes
// from sm-crypto-v2 (node:crypto cannot sign SM2 with the standard's user ID). Published test vectors
// for every primitive are in vectors/crypto-suites.json.
//
//   suite  AEAD (key, nonce, tag)          hash     KDF            signatures
//   intl   AES-256-GCM (32 B, 12 B, 16 B)  SHA-256  HKDF-SHA-256   Ed25519 (RFC 8032)
//   sm     SM4-GCM (16 B, 12 B, 16 B)      SM3      HKDF-SM3       SM2 with SM3 and user ID (GB/T 32918)
import {
  type CipherGCMTypes,
  createCipheriv,
  createDecipheriv,
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  hkdfSync,
  randomBytes,
  sign,
  verify,
} from 'node:crypto';
import { sm2 } from 'sm-crypto-v2';

export type SuiteName = 'intl' | 'sm';
export const SUITE_NAMES: readonly SuiteName[] = ['intl', 'sm'];

export class CryptoSuiteError extends Error {
  readonly code = 'ERR_CRYPTO_FAILED';
}

export interface SigningKeyPair {
  /** intl: the 32-byte Ed25519 seed; sm: the 32-byte SM2 private scalar. */
  privateKey: Buffer;
  /** intl: the 32-byte Ed25519 public key; sm: the 65-byte uncompressed SM2 point (04‖X‖Y). */
  publicKey: Buffer;
}

export interface CryptoSuite {
  readonly name: SuiteName;
  readonly keyBytes: number;
  /** AEAD: nonce (12) ‖ ciphertext ‖ tag (16). A nonce may be given only for known-answer tests. */
  seal(key: Uint8Array, plaintext: Uint8Array, aad: Uint8Array, nonce?: Uint8Array): Buffer;
  open(key: Uint8Array, sealed: Uint8Array, aad: Uint8Array): Buffer;
  digest(data: Uint8Array): Buffer;
  hkdf(ikm: Uint8Array, salt: Uint8Array, info: Uint8Array, length: number): Buffer;
  generateSigningKey(): SigningKeyPair;
  sign(privateKey: Uint8Array, message: Uint8Array): Buffer;
  verify(publicKey: Uint8Array, message: Uint8Array, signature: Uint8Array): boolean;
}

function aead(cipher: 'aes-256-gcm' | 'sm4-gcm', keyBytes: number) {
  // @types/node lists only AES names as GCM ciphers; sm4-gcm is one too under OpenSSL 3.
  const name = cipher as CipherGCMTypes;
  return {
    seal(key: Uint8Array, plaintext: Uint8Array, aad: Uint8Array, nonce: Uint8Array = randomBytes(12)): Buffer {
      if (key.length !== keyBytes) throw new CryptoSuiteError(`${cipher} needs a ${keyBytes}-byte key`);
      const c = createCipheriv(name, key, nonce, { authTagLength: 16 });
      c.setAAD(aad);
      return Buffer.concat([nonce, c.update(plaintext), c.final(), c.getAuthTag()]);
    },
    open(key: Uint8Array, sealed: Uint8Array, aad: Uint8Array): Buffer {
      if (key.length !== keyBytes) throw new CryptoSuiteError(`${cipher} needs a ${keyBytes}-byte key`);
      if (sealed.length < 28) throw new CryptoSuiteError('sealed value is too short');
      const d = createDecipheriv(name, key, sealed.subarray(0, 12), { authTagLength: 16 });
      d.setAAD(aad);
      d.setAuthTag(sealed.subarray(sealed.length - 16));
      try {
        return Buffer.concat([d.update(sealed.subarray(12, sealed.length - 16)), d.final()]);
      } catch {
        throw new CryptoSuiteError('authentication failed');
      }
    },
  };
}

// RFC 8410 DER wrappings of raw Ed25519 keys.
const ED25519_PKCS8 = Buffer.from('302e020100300506032b657004220420', 'hex');
const ED25519_SPKI = Buffer.from('302a300506032b6570032100', 'hex');
/** GB/T 32918 default user ID (Z value), used unless a protocol says otherwise. */
export const SM2_DEFAULT_USER_ID = '1234567812345678';

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

export const intlSuite: CryptoSuite = {
  name: 'intl',
  keyBytes: 32,
  ...aead('aes-256-gcm', 32),
  digest: (data) => createHash('sha256').update(data).digest(),
  hkdf: (ikm, salt, info, length) => Buffer.from(hkdfSync('sha256', ikm, salt, info, length)),
  generateSigningKey() {
    const { privateKey, publicKey } = generateKeyPairSync('ed25519');
    return {
      privateKey: privateKey.export({ format: 'der', type: 'pkcs8' }).subarray(-32),
      publicKey: publicKey.export({ format: 'der', type: 'spki' }).subarray(-32),
    };
  },
  sign: (privateKey, message) =>
    sign(
      null,
      message,
      createPrivateKey({ key: Buffer.concat([ED25519_PKCS8, privateKey]), format: 'der', type: 'pkcs8' }),
    ),
  verify(publicKey, message, signature) {
    try {
      return verify(
        null,
        message,
        createPublicKey({ key: Buffer.concat([ED25519_SPKI, publicKey]), format: 'der', type: 'spki' }),
        signature,
      );
    } catch {
      return false;
    }
  },
};

export const smSuite: CryptoSuite = {
  name: 'sm',
  keyBytes: 16,
  ...aead('sm4-gcm', 16),
  digest: (data) => createHash('sm3').update(data).digest(),
  hkdf: (ikm, salt, info, length) => Buffer.from(hkdfSync('sm3', ikm, salt, info, length)),
  generateSigningKey() {
    // Never seeded: sm-crypto-v2's seeded generation is broken (every seed gives key 1).
    const { privateKey, publicKey } = sm2.generateKeyPairHex();
    return { privateKey: Buffer.from(privateKey.padStart(64, '0'), 'hex'), publicKey: Buffer.from(publicKey, 'hex') };
  },
  sign(privateKey, message) {
    // hash: true applies SM3 over Z‖M as GB/T 32918.2 requires (the library's default is false).
    const sig = sm2.doSignature(Uint8Array.from(message), hex(privateKey), { hash: true, userId: SM2_DEFAULT_USER_ID });
    return Buffer.from(sig, 'hex');
  },
  verify(publicKey, message, signature) {
    try {
      return sm2.doVerifySignature(Uint8Array.from(message), hex(signature), hex(publicKey), {
        hash: true,
        userId: SM2_DEFAULT_USER_ID,
      });
    } catch {
      return false;
    }
  },
};

export function suite(name: SuiteName): CryptoSuite {
  if (name === 'intl') return intlSuite;
  if (name === 'sm') return smSuite;
  throw new CryptoSuiteError(`unknown crypto suite ${String(name)}`);
}
