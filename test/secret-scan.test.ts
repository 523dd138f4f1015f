// KEY-5: no hard-coded keys or secrets anywhere in the code base. The scanner proves it can fail by
// finding secrets planted in a temporary tree (generated now, never committed).
import assert from 'node:assert/strict';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, test } from 'node:test';
import { scanTree } from '../scripts/scan-secrets.ts';

const repoRoot = resolve(import.meta.dirname, '..');

describe('secret scan', () => {
  test('[KEY-5] the repository contains no hard-coded private keys or secrets', () => {
    assert.deepEqual(scanTree(repoRoot), []);
  });

  test('[KEY-5] the scanner finds planted keys and secrets, with file and line', () => {
    const dir = mkdtempSync(join(tmpdir(), 'castellan-scan-'));
    try {
      mkdirSync(join(dir, 'src'));
      const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
      const pem = privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
      writeFileSync(join(dir, 'src', 'tls.ts'), `// fixture\nexport const key = \`${pem}\`;\n`);
      writeFileSync(
        join(dir, 'src', 'client.ts'),
        `const x = 1;\nconst apiSecret = '${randomBytes(24).toString('base64url')}';\n`,
      );
      writeFileSync(join(dir, 'config.json'), `{\n  "rootKey": "${randomBytes(32).toString('hex')}"\n}\n`);
      writeFileSync(join(dir, 'notes.md'), `token: cas_adm_${randomBytes(32).toString('base64url')}\n`);
      writeFileSync(
        join(dir, 'fine.ts'),
        "const password = process.env.PASSWORD ?? '';\nconst tokenName = 'setup-token-file-name';\n",
      );
      const findings = scanTree(dir)
        .map((f) => `${f.file}:${f.line}:${f.rule}`)
        .sort();
      assert.deepEqual(findings, [
        'config.json:2:assigned-key-material',
        'notes.md:1:castellan-token',
        'src/client.ts:2:assigned-secret',
        'src/tls.ts:2:private-key-block',
      ]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
