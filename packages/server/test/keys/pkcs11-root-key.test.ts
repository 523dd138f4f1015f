// KEY-1 (c): the root key sealed by a key inside a PKCS#11 token (SoftHSM2 here). The platform works
// end to end with it, survives a restart, keeps no clear root key on disk, and refuses a wrong PIN or
// another token.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { loadConfig } from '../../src/config/index.ts';
import { CastellanError } from '../../src/errors/index.ts';
import { loadRootKey } from '../../src/keys/index.ts';
import { startPlatform } from '../../src/platform.ts';

const MODULE = ['/usr/lib/softhsm/libsofthsm2.so', '/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so'].find((m) =>
  existsSync(m),
);
const hasPkcs11js = (() => {
  try {
    createRequire(import.meta.url)('pkcs11js');
    return true;
  } catch {
    return false;
  }
})();
const missing = !MODULE
  ? 'SoftHSM2 is not installed (apt-get install softhsm2)'
  : !hasPkcs11js
    ? 'pkcs11js is not installed'
    : false;
if (missing && process.env.CI === 'true') throw new Error(`PKCS#11 tests cannot run on CI: ${missing}`);

describe('root key in a PKCS#11 token (SoftHSM2)', { skip: missing }, () => {
  let dir: string;

  function initToken(label: string): void {
    execFileSync('softhsm2-util', ['--init-token', '--free', '--label', label, '--pin', '1234', '--so-pin', '5678'], {
      env: process.env,
      stdio: 'ignore',
    });
  }

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'castellan-hsm-'));
    mkdirSync(join(dir, 'tokens'));
    writeFileSync(
      join(dir, 'softhsm2.conf'),
      `directories.tokendir = ${join(dir, 'tokens')}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`,
    );
    // A private token store for this test (read by the module at C_Initialize).
    process.env.SOFTHSM2_CONF = join(dir, 'softhsm2.conf');
    initToken('castellan-test');
    initToken('other-token');
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  const rootKey = (overrides: Record<string, string> = {}) => ({
    file: '',
    base64: '',
    pkcs11Module: MODULE!,
    pkcs11Token: 'castellan-test',
    pkcs11Pin: '1234',
    pkcs11KeyLabel: 'castellan-root-kek',
    ...overrides,
  });

  test('[KEY-1] the platform runs on a token-sealed root key, across a restart, with no clear root key on disk', async () => {
    const dataDir = join(dir, 'data');
    // Development mode only for the TLS certificate (the development PKI); the root key is the token's.
    const config = loadConfig({
      env: {},
      cwd: dir,
      overrides: {
        dataDir,
        rootKey: rootKey(),
        http: { host: '127.0.0.1', port: 0 },
        mqtt: { host: '127.0.0.1', port: 0 },
        admin: { enabled: false },
        log: { level: 'silent' },
      },
    });
    const first = await startPlatform(config, { notice: () => {} });
    const vendor = await first.accounts.createVendor('HSM Vendor');
    const product = await first.devices.createProduct(vendor.id, { name: 'Lock', category: 'lock' });
    const [device] = await first.devices.createDevices(product.id, 1);
    await first.close();
    assert.equal(existsSync(join(dataDir, 'root.key')), false, 'no clear root key file');
    assert.equal(statSync(join(dataDir, 'root.key.hsm')).mode & 0o777, 0o600);

    const second = await startPlatform(config, { notice: () => {} });
    try {
      assert.ok(
        await second.devices.authenticateDevice(device!.id, Buffer.from(device!.secret)),
        'the same root key after a restart',
      );
    } finally {
      await second.close();
    }
  });

  test('[KEY-1] a wrong PIN, a missing token, or another token is refused clearly', () => {
    const dataDir = join(dir, 'data');
    const refuse = (overrides: Record<string, string>, message: RegExp) =>
      assert.throws(
        () => loadRootKey({ environment: 'production', dataDir, rootKey: rootKey(overrides) }),
        (e: unknown) => e instanceof CastellanError && e.code === 'ERR_KEY_ROOT_INVALID' && message.test(e.message),
      );
    refuse({ pkcs11Pin: '0000' }, /^PKCS#11 root key: login refused \(check the PIN\)$/);
    refuse({ pkcs11Token: 'no-such-token' }, /^PKCS#11 root key: no token labelled "no-such-token"$/);
    refuse({ pkcs11Token: 'other-token' }, /cannot open .*root\.key\.hsm$/);
    refuse({ pkcs11Module: '/nonexistent/libp11.so' }, /^PKCS#11 root key: cannot load the module/);
  });
});
