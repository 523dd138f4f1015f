// Device key pairs for the asymmetric authentication mode (DEV-5): P-256 and RSA keys for mutual TLS
// (their CSR is made with the vendor's tooling; the platform's tests use @peculiar/x509), SM2 keys for
// signed challenge-response (OpenSSL under Node 26 cannot use SM2 certificates in TLS). Private keys stay
// on the device; only public keys, CSRs and signatures leave it.
//
// Signed challenge (docs: device certificates): the device signs the UTF-8 bytes of
//   "castellan device signature v1|<deviceId>|<challenge>|<clientNonce>"
// from the HTTPS challenge-response (POST /v1/device-api/challenges) and sends the signature, base64url,
// as the `response`: SM2 with SM3 and the GB/T 32918 default user ID (r‖s, 64 bytes); ECDSA P-256 with
// SHA-256 (DER); RSA PKCS#1 v1.5 with SHA-256.
import { createPrivateKey, generateKeyPairSync, sign } from 'node:crypto';
import { smSuite } from '@castellan/protocol';

export const SIGNED_CHALLENGE_CONTEXT = 'castellan device signature v1';

export interface DeviceKeyPair {
  readonly algorithm: 'p256' | 'rsa';
  /** PKCS#8, PEM: stays on the device. */
  readonly privateKeyPem: string;
  /** SubjectPublicKeyInfo, PEM. */
  readonly publicKeyPem: string;
}

export interface Sm2KeyPair {
  readonly algorithm: 'sm2';
  /** The 32-byte private scalar, hex: stays on the device. */
  readonly privateKey: string;
  /** Uncompressed point 04‖X‖Y, 130 hex digits: registered with the platform. */
  readonly publicKey: string;
}

export type DeviceSigningKey = DeviceKeyPair | Sm2KeyPair;

/** A fresh P-256 or RSA key pair (RSA: 2048 bits unless asked for more, at most 8192). */
export function generateDeviceKeyPair(
  algorithm: 'p256' | 'rsa',
  options: { modulusLength?: number } = {},
): DeviceKeyPair {
  const pair =
    algorithm === 'p256'
      ? generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
      : generateKeyPairSync('rsa', { modulusLength: options.modulusLength ?? 2048 });
  return {
    algorithm,
    privateKeyPem: pair.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    publicKeyPem: pair.publicKey.export({ type: 'spki', format: 'pem' }).toString(),
  };
}

/** A fresh SM2 key pair (GB/T 32918). */
export function generateSm2KeyPair(): Sm2KeyPair {
  const { privateKey, publicKey } = smSuite.generateSigningKey();
  return { algorithm: 'sm2', privateKey: privateKey.toString('hex'), publicKey: publicKey.toString('hex') };
}

/** The bytes a device signs to answer a challenge with its key. */
export function signedChallengeMessage(deviceId: string, challenge: string, clientNonce: string): Buffer {
  return Buffer.from([SIGNED_CHALLENGE_CONTEXT, deviceId, challenge, clientNonce].join('|'), 'utf8');
}

/** Signs a challenge with the device's key; the result (base64url) is the challenge `response`. */
export function signChallenge(key: DeviceSigningKey, deviceId: string, challenge: string, clientNonce: string): string {
  const message = signedChallengeMessage(deviceId, challenge, clientNonce);
  if (key.algorithm === 'sm2') return smSuite.sign(Buffer.from(key.privateKey, 'hex'), message).toString('base64url');
  return sign('sha256', message, createPrivateKey(key.privateKeyPem)).toString('base64url');
}
