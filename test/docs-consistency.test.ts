// Documentation that must stay true: every error code and every configuration key is documented,
// and nothing documented is missing from the code. Also: npm scripts really run the pinned Node.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { describe, test } from 'node:test';
import { CONFIG_KEYS } from '../packages/server/src/config/index.ts';
import { ERROR_CODES } from '../packages/server/src/errors/index.ts';

const root = resolve(import.meta.dirname, '..');
const read = (file: string) => readFileSync(resolve(root, file), 'utf8');

describe('documentation matches the code', () => {
  test('docs/errors.md lists exactly the registered error codes, with their HTTP status', () => {
    const documented = new Map(
      [...read('docs/errors.md').matchAll(/^\|\s*`(ERR_[A-Z0-9_]+)`\s*\|\s*(\d{3})\s*\|/gm)].map((m) => [
        m[1]!,
        Number(m[2]),
      ]),
    );
    assert.deepEqual([...documented.keys()].sort(), Object.keys(ERROR_CODES).sort());
    for (const [code, spec] of Object.entries(ERROR_CODES)) assert.equal(documented.get(code), spec.status, code);
  });

  test('docs/configuration.md lists every configuration key with its environment variable', () => {
    const rows = new Map(
      [...read('docs/configuration.md').matchAll(/^\|\s*`([A-Za-z0-9.]+)`\s*\|\s*`(CASTELLAN_[A-Z0-9_]+)`\s*\|/gm)].map(
        (m) => [m[1]!, m[2]!],
      ),
    );
    assert.deepEqual([...rows.keys()].sort(), CONFIG_KEYS.map((k) => k.path).sort());
    for (const key of CONFIG_KEYS) assert.equal(rows.get(key.path), key.env, key.path);
  });

  test('npm scripts run the Node.js pinned in devDependencies, not the machine one', () => {
    const pinned = JSON.parse(read('package.json')).devDependencies.node as string;
    const major = Number(/(\d+)\./.exec(pinned)?.[1]);
    assert.equal(Number(process.versions.node.split('.')[0]), major, `running ${process.version}, pinned ${pinned}`);
    assert.ok(major >= 24);
  });
});
