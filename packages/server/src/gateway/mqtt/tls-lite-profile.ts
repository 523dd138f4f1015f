// The lightweight TLS profile of the MQTT listener (CHAN-2; Tuya patent 003: "a lightweight ECC TLS
// with a 2-level chain"): an ECDSA P-256 certificate under a P-256 root, one AES-128-GCM suite per TLS
// version, and session resumption so a device that reconnects skips the ECDHE + ECDSA work.
import { createPrivateKey, randomBytes, X509Certificate } from 'node:crypto';
import type tls from 'node:tls';
import { CastellanError } from '../../errors/index.ts';

/** Node's ticket key: 16 bytes key name, 16 bytes HMAC key, 16 bytes AES key (tls.Server#setTicketKeys). */
export const TICKET_KEY_BYTES = 48;

function describeKey(details: { type?: string; curve?: string; bits?: number }): string {
  return details.curve ? `${details.type} ${details.curve}` : `${details.type} (${details.bits ?? '?'} bits)`;
}

/**
 * The lite profile's certificate must be ECDSA P-256 (its private key too): a device with an ECC-only
 * TLS stack cannot verify anything else. Throws ERR_CONFIG_INVALID naming the configuration key.
 */
export function assertLiteCertificate(certPem: string, keyPem: string): void {
  let leaf: X509Certificate;
  try {
    leaf = new X509Certificate(certPem);
  } catch {
    throw new CastellanError('ERR_CONFIG_INVALID', {
      message: 'Invalid configuration: tls.certFile does not hold a PEM certificate',
    });
  }
  const certKey = leaf.publicKey;
  const privateKey = createPrivateKey(keyPem);
  for (const [configKey, key] of [
    ['tls.certFile', certKey],
    ['tls.keyFile', privateKey],
  ] as const) {
    const curve = key.asymmetricKeyDetails?.namedCurve;
    if (key.asymmetricKeyType !== 'ec' || curve !== 'prime256v1') {
      const found = describeKey({
        type: key.asymmetricKeyType,
        curve: key.asymmetricKeyType === 'ec' ? curve : undefined,
        bits: key.asymmetricKeyDetails?.modulusLength,
      });
      throw new CastellanError('ERR_CONFIG_INVALID', {
        message: `Invalid configuration: mqtt.tlsProfile "lite" needs an ECDSA P-256 certificate and key; ${configKey} holds ${found}`,
      });
    }
  }
}

/** Where ticket keys come from when several processes must share them (scale mode: Redis). */
export interface TicketKeySource {
  /** The 48-byte key of a rotation epoch (floor(time / rotation period)); the same in every process. */
  keyFor(epoch: number): Promise<Buffer>;
}

/**
 * Session-ticket keys of a TLS listener: 48 CSPRNG bytes made at start and replaced every
 * `rotationMinutes` (forward secrecy of resumed sessions is bounded by the key's life). Node holds one
 * ticket key per server (setTicketKeys replaces it), so a ticket issued under the previous key no
 * longer resumes: after a rotation each device makes one full handshake and receives a new ticket.
 * With a shared source (scale mode, RES-2) every process sets the same key for the same epoch, at the
 * epoch's boundary, so a ticket issued by one process resumes on any other.
 */
export class TicketKeyRotation {
  readonly #server: tls.Server;
  readonly #periodMs: number;
  readonly #source: TicketKeySource | null;
  readonly #onError: (error: unknown) => void;
  #timer: NodeJS.Timeout | undefined;
  #rotations = 0;
  #stopped = false;
  /** The epoch whose shared key is set (null while only a local key is). */
  #epoch: number | null = null;
  /** Settles once the first shared key is in place (immediately without a source). */
  readonly ready: Promise<void>;

  constructor(
    server: tls.Server,
    rotationMinutes: number,
    source: TicketKeySource | null = null,
    onError: (error: unknown) => void = () => {},
  ) {
    this.#server = server;
    this.#periodMs = rotationMinutes * 60_000;
    this.#source = source;
    this.#onError = onError;
    // A local key at once: the server never runs on Node's default key, even before the shared one arrives.
    this.rotate();
    if (source) {
      this.ready = this.sync();
    } else {
      this.ready = Promise.resolve();
      this.#timer = setInterval(() => this.rotate(), this.#periodMs);
      this.#timer.unref();
    }
  }

  /** Rotations so far (the first key, made at start, counts as one). */
  get rotations(): number {
    return this.#rotations;
  }

  /** The shared epoch in use (null without a source or before its key arrived). */
  get epoch(): number | null {
    return this.#epoch;
  }

  /** A fresh local key (without a source; with one, the next sync() replaces it by the shared key). */
  rotate(): void {
    this.#server.setTicketKeys(randomBytes(TICKET_KEY_BYTES));
    this.#rotations++;
  }

  /**
   * Sets the shared key of the current epoch and schedules the next boundary. A source that fails
   * keeps the previous key (resumption may then fail across processes; full handshakes still work)
   * and is retried within a few seconds.
   */
  async sync(): Promise<void> {
    if (!this.#source || this.#stopped) return;
    clearTimeout(this.#timer);
    const now = Date.now();
    const epoch = Math.floor(now / this.#periodMs);
    let retryMs = (epoch + 1) * this.#periodMs - now;
    try {
      const key = await this.#source.keyFor(epoch);
      if (key.length !== TICKET_KEY_BYTES) throw new Error(`a ticket key is ${TICKET_KEY_BYTES} bytes`);
      if (!this.#stopped && this.#epoch !== epoch) {
        this.#server.setTicketKeys(key);
        this.#epoch = epoch;
        this.#rotations++;
      }
    } catch (error) {
      this.#onError(error);
      retryMs = Math.min(retryMs, 5_000);
    }
    if (this.#stopped) return;
    this.#timer = setTimeout(() => void this.sync(), Math.max(retryMs, 10));
    this.#timer.unref();
  }

  stop(): void {
    this.#stopped = true;
    clearInterval(this.#timer);
    clearTimeout(this.#timer);
  }
}
