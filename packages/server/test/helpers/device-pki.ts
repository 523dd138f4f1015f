// Test PKI for device certificates (DEV-5): CSRs for SDK-generated keys, vendor CAs, verification
// certificates for the proof of possession, and hostile certificates (self-signed, expired, another
// device's). @peculiar/x509 is a server dependency; the device SDK generates the keys only.
import 'reflect-metadata';
import { createPrivateKey, createPublicKey, randomBytes, webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';
import type { DeviceKeyPair } from '@castellan/device';

x509.cryptoProvider.set(webcrypto);

const EC = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const RSA = { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' } as const;
const ECDSA_SHA256 = { name: 'ECDSA', hash: 'SHA-256' } as const;

export interface KeyPair {
  privateKey: CryptoKey;
  publicKey: CryptoKey;
}

/** The SDK's PEM key pair as WebCrypto keys (for @peculiar/x509). */
export async function cryptoKeys(pair: DeviceKeyPair): Promise<KeyPair> {
  const algorithm = pair.algorithm === 'p256' ? EC : RSA;
  const pkcs8 = createPrivateKey(pair.privateKeyPem).export({ type: 'pkcs8', format: 'der' });
  const spki = createPublicKey(pair.publicKeyPem).export({ type: 'spki', format: 'der' });
  return {
    privateKey: await webcrypto.subtle.importKey('pkcs8', Uint8Array.from(pkcs8), algorithm, true, ['sign']),
    publicKey: await webcrypto.subtle.importKey('spki', Uint8Array.from(spki), algorithm, true, ['verify']),
  };
}

const signingAlgorithm = (pair: DeviceKeyPair) => (pair.algorithm === 'p256' ? ECDSA_SHA256 : RSA);

/** A PKCS#10 CSR (PEM) for the SDK's key pair. */
export async function csrFor(pair: DeviceKeyPair, cn = 'device'): Promise<string> {
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: `CN=${cn}`,
    keys: await cryptoKeys(pair),
    signingAlgorithm: signingAlgorithm(pair),
  });
  return csr.toString('pem');
}

/** A CSR whose signature no longer verifies (one bit of the signature flipped). */
export async function tamperedCsr(pair: DeviceKeyPair): Promise<string> {
  const der = Buffer.from(new x509.Pkcs10CertificateRequest(await csrFor(pair)).rawData);
  der[der.length - 3]! ^= 0x01;
  return new x509.Pkcs10CertificateRequest(der).toString('pem');
}

/** A CSR for a key type the platform refuses (P-384). */
export async function p384Csr(): Promise<string> {
  const alg = { name: 'ECDSA', namedCurve: 'P-384' } as const;
  const keys = await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify']);
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: 'CN=device',
    keys,
    signingAlgorithm: { name: 'ECDSA', hash: 'SHA-384' },
  });
  return csr.toString('pem');
}

export interface TestCa {
  cert: x509.X509Certificate;
  pem: string;
  keys: KeyPair;
}

const serial = () => {
  const b = randomBytes(10);
  b[0] = (b[0]! & 0x7f) | 0x01;
  return b.toString('hex');
};

/** A vendor's own CA (P-256, self-signed). */
export async function makeCa(name = 'Vendor Device CA'): Promise<TestCa> {
  const keys = await webcrypto.subtle.generateKey(EC, true, ['sign', 'verify']);
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(),
    name: `CN=${name}, O=Test Vendor`,
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 365 * 86_400_000),
    signingAlgorithm: ECDSA_SHA256,
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { cert, pem: cert.toString('pem'), keys };
}

/**
 * A certificate signed by `ca`'s key (or by `signingKey`, to forge one without the CA key) for a
 * device's public key (or a fresh key when none is given).
 */
export async function issueFrom(
  ca: Pick<TestCa, 'cert' | 'keys'>,
  options: {
    cn: string;
    publicKey?: CryptoKey;
    sanUri?: string;
    notBefore?: Date;
    notAfter?: Date;
    signingKey?: CryptoKey;
  },
): Promise<string> {
  const publicKey = options.publicKey ?? (await webcrypto.subtle.generateKey(EC, true, ['sign', 'verify'])).publicKey;
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial(),
    subject: `CN=${options.cn}`,
    issuer: ca.cert.subject,
    notBefore: options.notBefore ?? new Date(Date.now() - 60_000),
    notAfter: options.notAfter ?? new Date(Date.now() + 30 * 86_400_000),
    signingAlgorithm: ECDSA_SHA256,
    publicKey,
    signingKey: options.signingKey ?? ca.keys.privateKey,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth]),
      ...(options.sanUri ? [new x509.SubjectAlternativeNameExtension([{ type: 'url', value: options.sanUri }])] : []),
      await x509.AuthorityKeyIdentifierExtension.create(ca.cert.publicKey),
    ],
  });
  return cert.toString('pem');
}

/** A self-signed certificate naming the device, for the device's own key. */
export async function selfSigned(pair: DeviceKeyPair, cn: string): Promise<string> {
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(),
    name: `CN=${cn}`,
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 30 * 86_400_000),
    signingAlgorithm: signingAlgorithm(pair),
    keys: await cryptoKeys(pair),
  });
  return cert.toString('pem');
}
