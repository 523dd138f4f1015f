// TLS material for the bench's peer brokers (Mosquitto, aedes): a fresh CA and a server certificate for
// 127.0.0.1 / localhost, both ECDSA P-256 like Castellan's development PKI, made with the openssl CLI in a
// directory the caller owns (and removes).
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface BenchPki {
  /** PEM files in `dir`, for brokers that read files (Mosquitto). */
  caFile: string;
  certFile: string;
  keyFile: string;
  /** The same as text, for brokers that take PEM (node:tls) and for clients pinning the CA. */
  caPem: string;
  certPem: string;
  keyPem: string;
}

function openssl(dir: string, args: readonly string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'], timeout: 20_000 });
}

/** Generates a CA (2 days) and a server certificate it signs, in `dir`. Synchronous, ~50 ms. */
export function generateBenchPki(dir: string): BenchPki {
  const ec = ['ecparam', '-name', 'prime256v1', '-genkey', '-noout'];
  openssl(dir, [...ec, '-out', 'ca.key']);
  openssl(dir, [
    'req', '-x509', '-new', '-key', 'ca.key', '-sha256', '-days', '2', '-subj', '/CN=Castellan bench peer CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
    '-out', 'ca.pem',
  ]); // prettier-ignore
  openssl(dir, [...ec, '-out', 'server.key']);
  openssl(dir, ['req', '-new', '-key', 'server.key', '-subj', '/CN=localhost', '-out', 'server.csr']);
  writeFileSync(
    join(dir, 'server.ext'),
    'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n' +
      'extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n',
  );
  openssl(dir, [
    'x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2',
    '-sha256', '-extfile', 'server.ext', '-out', 'server.pem',
  ]); // prettier-ignore
  const file = (name: string) => join(dir, name);
  return {
    caFile: file('ca.pem'),
    certFile: file('server.pem'),
    keyFile: file('server.key'),
    caPem: readFileSync(file('ca.pem'), 'utf8'),
    certPem: readFileSync(file('server.pem'), 'utf8'),
    keyPem: readFileSync(file('server.key'), 'utf8'),
  };
}
