// Authenticated encryption of stored secrets: AES-256-GCM under a purpose-specific key derived from the
// root key with HKDF-SHA-256 (RFC 5869), associated data binding each ciphertext to its row, so a
// ciphertext copied to another row fails to decrypt.
//
//   layout: version (1 byte, 0x01) | nonce (12) | ciphertext | tag (16)
import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from 'node:crypto';
import { CastellanError } from '../errors/index.ts';

const VERSION = 0x01;
const NONCE_BYTES = 12;
const TAG_BYTES = 16;

export class SecretBox {
  readonly #key: Buffer;

  constructor(rootKey: Uint8Array, purpose: string) {
    this.#key = Buffer.from(hkdfSync('sha256', rootKey, Buffer.alloc(0), `castellan/v1/${purpose}`, 32));
  }

  seal(plaintext: Uint8Array, associatedData: string): Buffer {
    const nonce = randomBytes(NONCE_BYTES);
    const cipher = createCipheriv('aes-256-gcm', this.#key, nonce);
    cipher.setAAD(Buffer.from(associatedData, 'utf8'));
    const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
    return Buffer.concat([Buffer.of(VERSION), nonce, body, cipher.getAuthTag()]);
  }

  open(sealed: Uint8Array, associatedData: string): Buffer {
    const box = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength);
    if (box.length < 1 + NONCE_BYTES + TAG_BYTES || box[0] !== VERSION) {
      throw new CastellanError('ERR_KEY_DECRYPT_FAILED', { detail: 'sealed value is malformed' });
    }
    const nonce = box.subarray(1, 1 + NONCE_BYTES);
    const tag = box.subarray(box.length - TAG_BYTES);
    const decipher = createDecipheriv('aes-256-gcm', this.#key, nonce);
    decipher.setAAD(Buffer.from(associatedData, 'utf8'));
    decipher.setAuthTag(tag);
    try {
      return Buffer.concat([decipher.update(box.subarray(1 + NONCE_BYTES, box.length - TAG_BYTES)), decipher.final()]);
    } catch (error) {
      throw new CastellanError('ERR_KEY_DECRYPT_FAILED', {
        detail: 'authentication tag mismatch',
        cause: error,
      });
    }
  }
}
