// Parsing and checks for device certificates, CSRs and keys (DEV-5). Issuance and CSR parsing use
// @peculiar/x509; chain, validity and name checks at connect time use node:crypto's X509Certificate
// (OpenSSL), which is fast and already loaded. The platform, not OpenSSL's TLS verification, decides
// whether a client certificate is good (the MQTT listener asks for one but accepts any).
import {
  createHash,
  createPublicKey,
  type KeyObject,
  randomBytes,
  verify,
  webcrypto,
  X509Certificate,
} from 'node:crypto';
// @peculiar/x509 resolves its services through tsyringe, which needs the Reflect metadata API.
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { smSuite } from '@castellan/protocol';

x509.cryptoProvider.set(webcrypto);

export { x509 };

export type DeviceKeyAlgorithm = 'p256' | 'rsa' | 'sm2';

/** The SAN URI naming a device in the certificates the platform issues. */
export const DEVICE_URI_PREFIX = 'urn:castellan:device:';
export const deviceUri = (deviceId: string): string => `${DEVICE_URI_PREFIX}${deviceId}`;

/** Signature hashes accepted on CSRs and certificates: nothing weaker than SHA-256. */
const STRONG_HASHES = new Set(['SHA-256', 'SHA-384', 'SHA-512']);

export const sha256Hex = (data: Uint8Array): string => createHash('sha256').update(data).digest('hex');

/** A positive, fixed-length 96-bit serial from the CSPRNG (RFC 5280 4.1.2.2: ≤ 20 octets, positive). */
export function newSerial(): string {
  const bytes = randomBytes(12);
  bytes[0] = (bytes[0]! & 0x3f) | 0x40;
  return bytes.toString('hex');
}

/** Serials compared and stored as lower-case hex without leading zero octets. */
export function normaliseSerial(serial: string): string {
  return serial.toLowerCase().replace(/^(00)+(?=[0-9a-f]{2})/, '');
}

/** P-256 or RSA 2048–8192 from a DER SubjectPublicKeyInfo; null for anything else. */
export function keyAlgorithmOf(spki: Uint8Array): 'p256' | 'rsa' | null {
  let key: KeyObject;
  try {
    key = createPublicKey({ key: Buffer.from(spki), format: 'der', type: 'spki' });
  } catch {
    return null;
  }
  if (key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1') return 'p256';
  if (key.asymmetricKeyType === 'rsa') {
    const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
    if (bits >= 2048 && bits <= 8192) return 'rsa';
  }
  return null;
}

// SubjectPublicKeyInfo { id-ecPublicKey, SM2 curve 1.2.156.10197.1.301 } wrapping a 65-byte point.
const SM2_SPKI_PREFIX = Buffer.from('3059301306072a8648ce3d020106082a811ccf5501822d034200', 'hex');

/**
 * The SubjectPublicKeyInfo of an SM2 public key given as 130 hex digits (04‖X‖Y); null unless it is a
 * point on the SM2 curve (OpenSSL decodes and checks it).
 */
export function sm2Spki(publicKeyHex: string): Buffer | null {
  if (!/^04[0-9a-fA-F]{128}$/.test(publicKeyHex)) return null;
  const spki = Buffer.concat([SM2_SPKI_PREFIX, Buffer.from(publicKeyHex, 'hex')]);
  try {
    createPublicKey({ key: spki, format: 'der', type: 'spki' });
  } catch {
    return null;
  }
  return spki;
}

/**
 * Verifies a device's signature over `message` with one of its registered keys: SM2 with SM3 and the
 * standard's default user ID (GB/T 32918.2, `SM2_DEFAULT_USER_ID`), signature r‖s (64 bytes) as
 * sm-crypto-v2 produces it; ECDSA P-256 with SHA-256 (DER or r‖s); RSA PKCS#1 v1.5 with SHA-256.
 */
export function verifyDeviceSignature(
  algorithm: DeviceKeyAlgorithm,
  spki: Uint8Array,
  message: Uint8Array,
  signature: Uint8Array,
): boolean {
  try {
    if (algorithm === 'sm2') {
      return smSuite.verify(Buffer.from(spki).subarray(-65), message, signature);
    }
    const key = createPublicKey({ key: Buffer.from(spki), format: 'der', type: 'spki' });
    if (algorithm === 'p256') {
      return signature.length === 64
        ? verify('sha256', message, { key, dsaEncoding: 'ieee-p1363' }, signature)
        : verify('sha256', message, key, signature);
    }
    return verify('sha256', message, key, signature);
  } catch {
    return false;
  }
}

/** Exactly one PEM block of `label`; null otherwise (bundles and trailing junk are refused). */
export function singlePem(text: string, label: 'CERTIFICATE' | 'CERTIFICATE REQUEST'): string | null {
  const pattern = new RegExp(`-----BEGIN ${label}-----[A-Za-z0-9+/=\\s]+-----END ${label}-----`, 'g');
  const blocks = text.match(pattern);
  if (blocks?.length !== 1) return null;
  if (text.replace(pattern, '').trim() !== '') return null;
  return blocks[0];
}

export function parseCertificate(pem: string): X509Certificate | null {
  const block = singlePem(pem, 'CERTIFICATE');
  if (!block) return null;
  try {
    return new X509Certificate(block);
  } catch {
    return null;
  }
}

export function spkiOf(cert: X509Certificate): Buffer {
  return cert.publicKey.export({ type: 'spki', format: 'der' });
}

/** The certificate's validity contains `now`. */
export function validAt(cert: X509Certificate, now: number): boolean {
  return cert.validFromDate.getTime() <= now && now <= cert.validToDate.getTime();
}

/** Values of one attribute of the certificate's subject (e.g. every CN). */
export function subjectField(cert: X509Certificate, field: 'CN'): string[] {
  return cert.subject
    .split('\n')
    .filter((line) => line.startsWith(`${field}=`))
    .map((line) => line.slice(field.length + 1));
}

/** The `URI:` entries of the subject alternative name. */
export function sanUris(cert: X509Certificate): string[] {
  const san = cert.subjectAltName;
  if (!san) return [];
  return san
    .split(/,\s*/)
    .filter((entry) => entry.startsWith('URI:'))
    .map((entry) => entry.slice(4).replace(/^"|"$/g, ''));
}

/**
 * The certificate names exactly this device: one CN, the device ID, and every Castellan device URI
 * in its SAN names the same device.
 */
export function namesDevice(cert: X509Certificate, deviceId: string): boolean {
  const cns = subjectField(cert, 'CN');
  if (cns.length !== 1 || cns[0] !== deviceId) return false;
  return sanUris(cert)
    .filter((uri) => uri.startsWith(DEVICE_URI_PREFIX))
    .every((uri) => uri === deviceUri(deviceId));
}

/** `ca` issued `cert` (names, key identifiers, the CA's key usage) and its signature verifies. */
export function issuedBy(cert: X509Certificate, ca: X509Certificate): boolean {
  try {
    return ca.ca && cert.checkIssued(ca) && cert.verify(ca.publicKey);
  } catch {
    return false;
  }
}

/** Signed with SHA-256 or stronger (read with @peculiar/x509; node:crypto does not expose it). */
export function strongSignature(der: Uint8Array): boolean {
  try {
    return STRONG_HASHES.has(hashName(new x509.X509Certificate(Buffer.from(der)).signatureAlgorithm));
  } catch {
    return false;
  }
}

export function hashName(algorithm: x509.HashedAlgorithm): string {
  const hash = (algorithm as { hash?: { name?: string } | string }).hash;
  return typeof hash === 'string' ? hash : (hash?.name ?? '');
}

/** A CSR's self-signature verifies with a hash of SHA-256 or stronger. */
export async function verifiedCsr(pem: string): Promise<x509.Pkcs10CertificateRequest | null> {
  const block = singlePem(pem, 'CERTIFICATE REQUEST');
  if (!block) return null;
  try {
    const csr = new x509.Pkcs10CertificateRequest(block);
    if (!STRONG_HASHES.has(hashName(csr.signatureAlgorithm))) return null;
    return (await csr.verify()) ? csr : null;
  } catch {
    return null;
  }
}

/** The CA may sign certificates: basic constraints cA, and keyCertSign when key usage is present. */
export function canSignCertificates(der: Uint8Array): boolean {
  try {
    const cert = new x509.X509Certificate(Buffer.from(der));
    const constraints = cert.getExtension(x509.BasicConstraintsExtension);
    if (!constraints?.ca) return false;
    const usage = cert.getExtension(x509.KeyUsagesExtension);
    return !usage || (usage.usages & x509.KeyUsageFlags.keyCertSign) !== 0;
  } catch {
    return false;
  }
}
