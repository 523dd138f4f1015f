// Development PKI: an ECDSA P-256 root CA and a server certificate signed by it (a 2-level chain, the
// lightweight profile small devices can verify), written to dataDir/pki with 0600 permissions on first
// start. Production supplies its own certificate and key through tls.certFile / tls.keyFile.
import { KeyObject, webcrypto } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
// @peculiar/x509 resolves its services through tsyringe, which needs the Reflect metadata API.
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { CastellanError } from '../errors/index.ts';

x509.cryptoProvider.set(webcrypto);

const EC = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGN = { name: 'ECDSA', hash: 'SHA-256' } as const;

export interface TlsMaterial {
  cert: string;
  key: string;
  /** The CA devices pin. */
  ca: string;
  source: 'config' | 'development';
  dir?: string;
}

export interface TlsConfig {
  environment: 'development' | 'production';
  dataDir: string;
  tls: { certFile: string; keyFile: string; caFile: string };
}

function pemKey(key: CryptoKey): string {
  return KeyObject.from(key).export({ type: 'pkcs8', format: 'pem' }).toString();
}

function serial(): string {
  // Positive 128-bit serial (RFC 5280 4.1.2.2: ≤ 20 octets, positive).
  const bytes = webcrypto.getRandomValues(new Uint8Array(16));
  bytes[0] = (bytes[0]! & 0x7f) | 0x01;
  return Buffer.from(bytes).toString('hex');
}

function writeSecret(file: string, text: string): void {
  writeFileSync(file, text, { mode: 0o600 });
  chmodSync(file, 0o600);
}

/** Creates the development CA and server certificate (valid for localhost, 127.0.0.1 and ::1). */
export async function generateDevPki(dir: string, hostnames: readonly string[] = []): Promise<TlsMaterial> {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const now = Date.now();
  const caKeys = await webcrypto.subtle.generateKey(EC, true, ['sign', 'verify']);
  const caCert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(),
    name: 'CN=Castellan Development Root CA, O=Castellan (development only)',
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + 10 * 365 * 86_400_000),
    signingAlgorithm: SIGN,
    keys: caKeys,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(caKeys.publicKey),
    ],
  });
  const serverKeys = await webcrypto.subtle.generateKey(EC, true, ['sign', 'verify']);
  const names = [
    { type: 'dns' as const, value: 'localhost' },
    { type: 'ip' as const, value: '127.0.0.1' },
    { type: 'ip' as const, value: '::1' },
    ...hostnames.map((h) => ({ type: 'dns' as const, value: h })),
  ];
  const serverCert = await x509.X509CertificateGenerator.create({
    serialNumber: serial(),
    subject: 'CN=localhost, O=Castellan (development only)',
    issuer: caCert.subject,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + 397 * 86_400_000),
    signingAlgorithm: SIGN,
    publicKey: serverKeys.publicKey,
    signingKey: caKeys.privateKey,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
      new x509.SubjectAlternativeNameExtension(names),
      await x509.AuthorityKeyIdentifierExtension.create(caKeys.publicKey),
    ],
  });
  const material = {
    ca: caCert.toString('pem'),
    cert: serverCert.toString('pem'),
    key: pemKey(serverKeys.privateKey),
  };
  writeSecret(join(dir, 'ca.key'), pemKey(caKeys.privateKey));
  writeSecret(join(dir, 'ca.crt'), material.ca);
  writeSecret(join(dir, 'server.key'), material.key);
  writeSecret(join(dir, 'server.crt'), material.cert);
  return { ...material, source: 'development', dir };
}

function readPem(file: string, key: string): string {
  try {
    return readFileSync(resolve(file), 'utf8');
  } catch (error) {
    throw new CastellanError('ERR_CONFIG_INVALID', {
      message: `Invalid configuration: ${key} cannot be read (${(error as NodeJS.ErrnoException).code ?? 'error'})`,
    });
  }
}

/** Configured certificate and key, or the development PKI (created on first use). */
export async function loadTlsMaterial(config: TlsConfig): Promise<TlsMaterial> {
  const { certFile, keyFile, caFile } = config.tls;
  if (certFile || keyFile) {
    if (!certFile || !keyFile) {
      throw new CastellanError('ERR_CONFIG_INVALID', {
        message: `Invalid configuration: ${certFile ? 'tls.keyFile' : 'tls.certFile'} is required when the other is set`,
      });
    }
    const cert = readPem(certFile, 'tls.certFile');
    return {
      cert,
      key: readPem(keyFile, 'tls.keyFile'),
      ca: caFile ? readPem(caFile, 'tls.caFile') : cert,
      source: 'config',
    };
  }
  if (config.environment === 'production') {
    throw new CastellanError('ERR_CONFIG_INVALID', {
      message: 'Invalid configuration: tls.certFile and tls.keyFile are required in production',
    });
  }
  const dir = resolve(config.dataDir, 'pki');
  const files = ['ca.crt', 'server.crt', 'server.key'].map((f) => join(dir, f));
  if (files.every((f) => existsSync(f))) {
    const [ca, cert, key] = files.map((f) => readFileSync(f, 'utf8')) as [string, string, string];
    return { ca, cert, key, source: 'development', dir };
  }
  return generateDevPki(dir);
}
