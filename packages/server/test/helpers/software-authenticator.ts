// A software WebAuthn authenticator for tests: a P-256 key pair and the byte layouts of WebAuthn Level 2
// (W3C), so registration and assertion run end-to-end through the HTTP API without a browser.
//   authenticatorData (section 6.1) = rpIdHash(32) | flags(1) | signCount(4, big-endian)
//                                     [| attestedCredentialData: AAGUID(16) | idLength(2) | id | COSE key]
//   attestationObject (section 6.5) = CBOR {fmt: 'none', attStmt: {}, authData}
//   assertion signature (section 6.3.3) = ECDSA-SHA256(authData || SHA-256(clientDataJSON)), DER-encoded
import { createHash, generateKeyPairSync, type KeyObject, randomBytes, sign } from 'node:crypto';
import { isoCBOR } from '@simplewebauthn/server/helpers';

const FLAG_UP = 0x01;
const FLAG_UV = 0x04;
const FLAG_AT = 0x40;

// COSE (RFC 9053): kty EC2 = 2, alg ES256 = -7, crv P-256 = 1.
const COSE_KTY = 1;
const COSE_ALG = 3;
const COSE_CRV = -1;
const COSE_X = -2;
const COSE_Y = -3;

const b64url = (bytes: Uint8Array | string): string => Buffer.from(bytes).toString('base64url');
const sha256 = (data: Uint8Array | string): Buffer => createHash('sha256').update(data).digest();

function counterBytes(counter: number): Buffer {
  const out = Buffer.alloc(4);
  out.writeUInt32BE(counter >>> 0);
  return out;
}

export interface CeremonyOptions {
  challenge: string;
  /** Registration options carry the user handle (base64url). */
  user?: { id: string };
}

export interface AssertOptions {
  /** Override the signature counter (default: one more than last time). */
  counter?: number;
  /** Sign with this key instead of the credential's own (a forged assertion). */
  signingKey?: KeyObject;
  /** Override the origin in clientDataJSON. */
  origin?: string;
  /** Set the user-verified flag (default true). */
  userVerified?: boolean;
}

export class SoftwareAuthenticator {
  readonly credentialId: Buffer;
  readonly rpId: string;
  readonly origin: string;
  readonly privateKey: KeyObject;
  readonly #cosePublicKey: Uint8Array;
  userHandle: string | undefined;
  counter = 0;

  constructor(options: { rpId: string; origin: string; credentialId?: Buffer }) {
    this.rpId = options.rpId;
    this.origin = options.origin;
    this.credentialId = options.credentialId ?? randomBytes(32);
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    this.privateKey = privateKey;
    const jwk = publicKey.export({ format: 'jwk' });
    this.#cosePublicKey = isoCBOR.encode(
      new Map<number, number | Uint8Array>([
        [COSE_KTY, 2],
        [COSE_ALG, -7],
        [COSE_CRV, 1],
        [COSE_X, Buffer.from(jwk.x!, 'base64url')],
        [COSE_Y, Buffer.from(jwk.y!, 'base64url')],
      ]),
    );
  }

  /** For a URL like https://127.0.0.1:8443: the RP ID is its host name, the origin the URL's origin. */
  static for(publicUrl: string): SoftwareAuthenticator {
    const url = new URL(publicUrl);
    return new SoftwareAuthenticator({ rpId: url.hostname, origin: url.origin });
  }

  /** The same credential ID with a different key: its assertions must be refused. */
  impostor(): SoftwareAuthenticator {
    const other = new SoftwareAuthenticator({ rpId: this.rpId, origin: this.origin, credentialId: this.credentialId });
    other.userHandle = this.userHandle;
    return other;
  }

  get id(): string {
    return b64url(this.credentialId);
  }

  #clientData(type: 'webauthn.create' | 'webauthn.get', challenge: string, origin = this.origin): Buffer {
    return Buffer.from(JSON.stringify({ type, challenge, origin, crossOrigin: false }), 'utf8');
  }

  /** navigator.credentials.create() with 'none' attestation, as RegistrationResponseJSON. */
  register(options: CeremonyOptions) {
    this.userHandle = options.user?.id;
    const idLength = Buffer.alloc(2);
    idLength.writeUInt16BE(this.credentialId.length);
    const authData = Buffer.concat([
      sha256(this.rpId),
      Buffer.from([FLAG_UP | FLAG_UV | FLAG_AT]),
      counterBytes(this.counter),
      Buffer.alloc(16), // AAGUID: zero for 'none' attestation
      idLength,
      this.credentialId,
      this.#cosePublicKey,
    ]);
    const attestation: Parameters<typeof isoCBOR.encode>[0] = new Map();
    attestation.set('fmt', 'none');
    attestation.set('attStmt', new Map());
    attestation.set('authData', new Uint8Array(authData));
    const attestationObject = isoCBOR.encode(attestation);
    return {
      id: this.id,
      rawId: this.id,
      type: 'public-key' as const,
      clientExtensionResults: {},
      response: {
        clientDataJSON: b64url(this.#clientData('webauthn.create', options.challenge)),
        attestationObject: b64url(attestationObject),
        transports: ['internal'],
      },
    };
  }

  /** navigator.credentials.get(), as AuthenticationResponseJSON. */
  assert(options: CeremonyOptions, overrides: AssertOptions = {}) {
    this.counter = overrides.counter ?? this.counter + 1;
    const flags = FLAG_UP | (overrides.userVerified === false ? 0 : FLAG_UV);
    const authData = Buffer.concat([sha256(this.rpId), Buffer.from([flags]), counterBytes(this.counter)]);
    const clientData = this.#clientData('webauthn.get', options.challenge, overrides.origin);
    const signature = sign(
      'sha256',
      Buffer.concat([authData, sha256(clientData)]),
      overrides.signingKey ?? this.privateKey,
    );
    return {
      id: this.id,
      rawId: this.id,
      type: 'public-key' as const,
      clientExtensionResults: {},
      response: {
        clientDataJSON: b64url(clientData),
        authenticatorData: b64url(authData),
        signature: b64url(signature),
        ...(this.userHandle ? { userHandle: this.userHandle } : {}),
      },
    };
  }
}
