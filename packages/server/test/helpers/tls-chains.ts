// Server certificate chains for the TLS profile tests and the handshake bench (CHAN-2): root → leaf or
// root → intermediate → leaf, ECDSA P-256 or RSA-2048, the leaf valid for localhost and 127.0.0.1.
import 'reflect-metadata';
import { KeyObject, webcrypto } from 'node:crypto';

interface KeyPair {
  privateKey: CryptoKey;
  publicKey: CryptoKey;
}
import * as x509 from '@peculiar/x509';

x509.cryptoProvider.set(webcrypto);

export type ChainKeyType = 'p256' | 'rsa2048';

const ALGORITHMS = {
  p256: {
    key: { name: 'ECDSA', namedCurve: 'P-256' },
    sign: { name: 'ECDSA', hash: 'SHA-256' },
  },
  rsa2048: {
    key: { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256', publicExponent: new Uint8Array([1, 0, 1]), modulusLength: 2048 },
    sign: { name: 'RSASSA-PKCS1-v1_5' },
  },
} as const;

export interface ServerChain {
  /** The leaf, then any intermediates: what the server sends (`cert`). */
  certPem: string;
  /** The leaf's private key (PKCS#8 PEM). */
  keyPem: string;
  /** The root the client pins (`ca`); never sent by the server. */
  rootPem: string;
  /** Certificates in the chain, root included (2 or 3). */
  levels: number;
}

function serial(): string {
  const bytes = webcrypto.getRandomValues(new Uint8Array(16));
  bytes[0] = (bytes[0]! & 0x7f) | 0x01;
  return Buffer.from(bytes).toString('hex');
}

async function generateKeys(type: ChainKeyType): Promise<KeyPair> {
  return await webcrypto.subtle.generateKey(ALGORITHMS[type].key, true, ['sign', 'verify']);
}

/** A chain of `levels` certificates (2: root → leaf; 3: root → intermediate → leaf), all of one key type. */
export async function makeServerChain(type: ChainKeyType, levels: 2 | 3, label = 'Test'): Promise<ServerChain> {
  const now = Date.now();
  const validity = { notBefore: new Date(now - 60_000), notAfter: new Date(now + 30 * 86_400_000) };
  const sign = ALGORITHMS[type].sign;
  const rootKeys = await generateKeys(type);
  const root = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(),
    name: `CN=${label} Root CA`,
    ...validity,
    signingAlgorithm: sign,
    keys: rootKeys,
    extensions: [
      new x509.BasicConstraintsExtension(true, levels - 2, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(rootKeys.publicKey),
    ],
  });
  let issuer = { cert: root, keys: rootKeys };
  const intermediates: x509.X509Certificate[] = [];
  if (levels === 3) {
    const keys = await generateKeys(type);
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: serial(),
      subject: `CN=${label} Intermediate CA`,
      issuer: root.subject,
      ...validity,
      signingAlgorithm: sign,
      publicKey: keys.publicKey,
      signingKey: rootKeys.privateKey,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
        await x509.AuthorityKeyIdentifierExtension.create(rootKeys.publicKey),
      ],
    });
    intermediates.push(cert);
    issuer = { cert, keys };
  }
  const leafKeys = await generateKeys(type);
  const leaf = await x509.X509CertificateGenerator.create({
    serialNumber: serial(),
    subject: `CN=localhost`,
    issuer: issuer.cert.subject,
    ...validity,
    signingAlgorithm: sign,
    publicKey: leafKeys.publicKey,
    signingKey: issuer.keys.privateKey,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(
        type === 'p256'
          ? x509.KeyUsageFlags.digitalSignature
          : x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment,
        true,
      ),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
      new x509.SubjectAlternativeNameExtension([
        { type: 'dns', value: 'localhost' },
        { type: 'ip', value: '127.0.0.1' },
      ]),
      await x509.AuthorityKeyIdentifierExtension.create(issuer.keys.publicKey),
    ],
  });
  return {
    certPem: [leaf, ...intermediates].map((c) => c.toString('pem')).join('\n'),
    keyPem: KeyObject.from(leafKeys.privateKey).export({ type: 'pkcs8', format: 'pem' }).toString(),
    rootPem: root.toString('pem'),
    levels,
  };
}
