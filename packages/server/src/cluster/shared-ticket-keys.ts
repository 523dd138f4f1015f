// TLS session-ticket keys shared by the processes of a scale deployment (RES-2): the first process to
// need an epoch's key makes it (48 CSPRNG bytes) and stores it in Redis with SET NX, so every process
// sets the same key and a ticket from one resumes on any other. Stored sealed (AES-256-GCM under a key
// derived from the root key): a Redis dump alone does not give the keys that decrypt tickets. Each
// key expires from Redis two periods after its epoch began: past that, no process can use it again.
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import { TICKET_KEY_BYTES, type TicketKeySource } from '../gateway/index.ts';

export interface SharedTicketKeysOptions {
  redis: Redis;
  keyPrefix: string;
  /** Which listener: keys are never shared between the MQTT and HTTPS listeners. */
  listener: 'mqtt' | 'https';
  /** 32 bytes derived from the root key, the same in every process. */
  wrapKey: Buffer;
  rotationMinutes: number;
}

export class SharedTicketKeys implements TicketKeySource {
  readonly #o: SharedTicketKeysOptions;

  constructor(options: SharedTicketKeysOptions) {
    if (options.wrapKey.length !== 32) throw new Error('the ticket wrap key is 32 bytes');
    this.#o = options;
  }

  async keyFor(epoch: number): Promise<Buffer> {
    const name = `${this.#o.keyPrefix}tls-ticket:${this.#o.listener}:${epoch}`;
    const aad = Buffer.from(name);
    const fresh = randomBytes(TICKET_KEY_BYTES);
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', this.#o.wrapKey, iv).setAAD(aad);
    const sealed = Buffer.concat([iv, cipher.update(fresh), cipher.final(), cipher.getAuthTag()]);
    const ttlMs = 2 * this.#o.rotationMinutes * 60_000;
    await this.#o.redis.set(name, sealed.toString('base64'), 'PX', ttlMs, 'NX');
    const stored = await this.#o.redis.get(name);
    if (!stored) throw new Error('the shared ticket key vanished from Redis');
    const bytes = Buffer.from(stored, 'base64');
    const decipher = createDecipheriv('aes-256-gcm', this.#o.wrapKey, bytes.subarray(0, 12)).setAAD(aad);
    decipher.setAuthTag(bytes.subarray(bytes.length - 16));
    return Buffer.concat([decipher.update(bytes.subarray(12, bytes.length - 16)), decipher.final()]);
  }
}
