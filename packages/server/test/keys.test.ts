// Root key loading, the secret box and the development PKI.
import assert from 'node:assert/strict';
import { randomBytes, X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { CastellanError } from '../src/errors/index.ts';
import { generateDevPki, loadRootKey, loadTlsMaterial, SecretBox } from '../src/keys/index.ts';

const dirs: string[] = [];
const tempDir = () => {
  const dir = mkdtempSync(join(tmpdir(), 'castellan-keys-'));
  dirs.push(dir);
  return dir;
};
after(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

describe('root key', () => {
  test('development generates a 32-byte root key once, with 0600 permissions, and reuses it', () => {
    const dataDir = tempDir();
    const first = loadRootKey({ environment: 'development', dataDir, rootKey: { file: '', base64: '' } });
    assert.equal(first.source, 'generated');
    assert.equal(first.key.length, 32);
    assert.equal(statSync(first.file!).mode & 0o777, 0o600);
    const second = loadRootKey({ environment: 'development', dataDir, rootKey: { file: '', base64: '' } });
    assert.equal(second.source, 'file');
    assert.deepEqual(second.key, first.key);
  });

  test('[KEY-5] production refuses to generate a root key: it must come from configuration or an HSM', () => {
    assert.throws(
      () => loadRootKey({ environment: 'production', dataDir: tempDir(), rootKey: { file: '', base64: '' } }),
      (e: unknown) =>
        e instanceof CastellanError &&
        e.code === 'ERR_KEY_ROOT_INVALID' &&
        /^Production must supply the root key/.test(e.message),
    );
  });

  test('[KEY-5] a root key of the wrong size is refused without echoing it', () => {
    const bad = randomBytes(16).toString('base64');
    assert.throws(
      () => loadRootKey({ environment: 'production', dataDir: tempDir(), rootKey: { file: '', base64: bad } }),
      (e: unknown) =>
        e instanceof CastellanError &&
        e.message === 'rootKey.base64 must hold exactly 32 bytes, base64-encoded' &&
        !e.message.includes(bad),
    );
    const key = randomBytes(32).toString('base64');
    assert.equal(
      loadRootKey({ environment: 'production', dataDir: tempDir(), rootKey: { file: '', base64: key } }).source,
      'config',
    );
  });
});

describe('secret box (AES-256-GCM under an HKDF-derived key)', () => {
  const root = randomBytes(32);
  test('round-trips, and each seal uses a fresh nonce', () => {
    const box = new SecretBox(root, 'device-secret');
    const a = box.seal(Buffer.from('hello'), 'row-1');
    const b = box.seal(Buffer.from('hello'), 'row-1');
    assert.notDeepEqual(a, b);
    assert.equal(box.open(a, 'row-1').toString(), 'hello');
  });

  test('a ciphertext moved to another row, altered, or opened for another purpose fails', () => {
    const box = new SecretBox(root, 'device-secret');
    const sealed = box.seal(Buffer.from('hello'), 'row-1');
    const fails = (fn: () => unknown) =>
      assert.throws(fn, (e: unknown) => e instanceof CastellanError && e.code === 'ERR_KEY_DECRYPT_FAILED');
    fails(() => box.open(sealed, 'row-2'));
    fails(() => new SecretBox(root, 'other-purpose').open(sealed, 'row-1'));
    fails(() => new SecretBox(randomBytes(32), 'device-secret').open(sealed, 'row-1'));
    const flipped = Buffer.from(sealed);
    flipped[20]! ^= 1;
    fails(() => box.open(flipped, 'row-1'));
    fails(() => box.open(sealed.subarray(0, 10), 'row-1'));
  });
});

describe('development PKI', () => {
  test('a P-256 root CA signs a server certificate for localhost (2-level chain), all files 0600', async () => {
    const dir = tempDir();
    const material = await generateDevPki(dir);
    const ca = new X509Certificate(material.ca);
    const leaf = new X509Certificate(material.cert);
    assert.equal(ca.ca, true);
    assert.equal(leaf.ca, false);
    assert.equal(leaf.checkIssued(ca), true);
    assert.equal(leaf.verify(ca.publicKey), true);
    assert.equal(ca.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');
    assert.equal(leaf.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');
    assert.equal(leaf.checkHost('localhost'), 'localhost');
    assert.equal(leaf.checkIP('127.0.0.1'), '127.0.0.1');
    for (const f of ['ca.key', 'ca.crt', 'server.key', 'server.crt'])
      assert.equal(statSync(join(dir, f)).mode & 0o777, 0o600, f);
  });

  test('configured certificates are used; a half configuration or production without them is refused', async () => {
    const dir = tempDir();
    const material = await generateDevPki(join(dir, 'pki'));
    writeFileSync(join(dir, 'c.pem'), material.cert);
    writeFileSync(join(dir, 'k.pem'), material.key);
    const loaded = await loadTlsMaterial({
      environment: 'production',
      dataDir: dir,
      tls: { certFile: join(dir, 'c.pem'), keyFile: join(dir, 'k.pem'), caFile: '' },
    });
    assert.equal(loaded.source, 'config');
    assert.equal(loaded.cert, readFileSync(join(dir, 'c.pem'), 'utf8'));
    await assert.rejects(
      loadTlsMaterial({
        environment: 'development',
        dataDir: dir,
        tls: { certFile: join(dir, 'c.pem'), keyFile: '', caFile: '' },
      }),
      { message: 'Invalid configuration: tls.keyFile is required when the other is set' },
    );
    await assert.rejects(
      loadTlsMaterial({
        environment: 'production',
        dataDir: tempDir(),
        tls: { certFile: '', keyFile: '', caFile: '' },
      }),
      {
        message: 'Invalid configuration: tls.certFile and tls.keyFile are required in production',
      },
    );
  });
});
