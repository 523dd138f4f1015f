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

/**
 * Session-ticket keys of the lite listener: 48 CSPRNG bytes made at start and replaced every
 * `rotationMinutes` (forward secrecy of resumed sessions is bounded by the key's life). Node holds one
 * ticket key per server (setTicketKeys replaces it), so a ticket issued under the previous key no
 * longer resumes: after a rotation each device makes one full handshake and receives a new ticket.
 */
export class TicketKeyRotation {
  readonly #server: tls.Server;
  readonly #timer: NodeJS.Timeout;
  #rotations = 0;

  constructor(server: tls.Server, rotationMinutes: number) {
    this.#server = server;
    this.rotate();
    this.#timer = setInterval(() => this.rotate(), rotationMinutes * 60_000);
    this.#timer.unref();
  }

  /** Rotations so far (the first key, made at start, counts as one). */
  get rotations(): number {
    return this.#rotations;
  }

  rotate(): void {
    this.#server.setTicketKeys(randomBytes(TICKET_KEY_BYTES));
    this.#rotations++;
  }

  stop(): void {
    clearInterval(this.#timer);
  }
}
