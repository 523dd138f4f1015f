// The protocol spec is checked independently (issue 8): scripts/check-protocol-vectors.py, written in
// Python from docs/protocol.md alone, must reproduce every intl-suite secure-channel vector and every
// device-request-signing vector. In CI (CI set) it always runs; elsewhere it is skipped only when
// python3 or its cryptography module is missing.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, test } from 'node:test';

const root = resolve(import.meta.dirname, '..');
const checker = resolve(root, 'scripts/check-protocol-vectors.py');
const vectors = resolve(root, 'packages/protocol/vectors');

// The first Python 3 on PATH that has the cryptography module, else Debian's own (where apt-get's
// python3-cryptography goes, when PATH starts with another Python such as pyenv's).
const interpreters = ['python3', '/usr/bin/python3'];
const importsCryptography = (bin: string) =>
  spawnSync(bin, ['-c', 'import cryptography'], { encoding: 'utf8', timeout: 60_000 });
const probe = importsCryptography(interpreters[0]!);
const interpreter = interpreters.find((bin) => importsCryptography(bin).status === 0);
const available = interpreter !== undefined;

function python(args: string[], env: NodeJS.ProcessEnv = process.env) {
  return spawnSync(interpreter ?? 'python3', args, { encoding: 'utf8', env, timeout: 60_000 });
}
const inCi = Boolean(process.env.CI);
const skip =
  !available && !inCi
    ? 'python3 with the cryptography module is not installed (apt-get install python3-cryptography)'
    : false;

describe('independent Python checker of the protocol vectors', () => {
  test('[CHAN-3] [DEV-6] scripts/check-protocol-vectors.py reproduces every vector', { skip }, () => {
    assert.ok(available, `python3 cannot import cryptography in CI: ${probe.stderr || probe.error?.message}`);
    const run = python([checker]);
    assert.equal(run.status, 0, `checker failed:\n${run.stdout}\n${run.stderr}`);
    assert.match(run.stdout, /^ok: \d+ checks reproduced/);
  });

  test('[CHAN-3] the checker fails on a vector that does not match the spec', { skip }, () => {
    const dir = mkdtempSync(join(tmpdir(), 'castellan-vectors-'));
    try {
      cpSync(vectors, dir, { recursive: true });
      const file = join(dir, 'secure-channel.json');
      const channel = JSON.parse(readFileSync(file, 'utf8'));
      const frame: string = channel.intl.frames[1].frame;
      // One bit of the last frame's tag.
      channel.intl.frames[1].frame = frame.slice(0, -1) + (Number.parseInt(frame.slice(-1), 16) ^ 1).toString(16);
      writeFileSync(file, JSON.stringify(channel));
      const run = python([checker], { ...process.env, CASTELLAN_VECTORS_DIR: dir });
      assert.equal(run.status, 1, run.stdout + run.stderr);
      assert.match(run.stderr, /FAIL intl frame 1:/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
