// The `castellan` command as a user runs it: the launcher's Node check, help, configuration errors,
// and `up` + `demo` end to end in separate processes, then a graceful SIGTERM.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { openDistributedKey } from '../src/keys/index.ts';

const bin = resolve(import.meta.dirname, '../bin/castellan.js');
// A clean environment: no CASTELLAN_* or DATABASE_URL leaks in from the developer's shell.
const baseEnv: NodeJS.ProcessEnv = Object.fromEntries(
  Object.entries(process.env).filter(([k]) => !k.startsWith('CASTELLAN_') && k !== 'DATABASE_URL'),
);

function run(args: string[], env: NodeJS.ProcessEnv = {}, cwd?: string) {
  return spawnSync(process.execPath, [bin, ...args], {
    env: { ...baseEnv, ...env },
    cwd,
    encoding: 'utf8',
    timeout: 60_000,
  });
}

const dirs: string[] = [];
const children: ChildProcess[] = [];
after(() => {
  for (const child of children) child.kill('SIGKILL');
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

describe('castellan CLI', () => {
  test('the plain-JS launcher refuses Node older than 24 with a clear message', (t) => {
    const system = spawnSync('/usr/bin/node', ['--version'], { encoding: 'utf8' });
    const major = Number(/^v(\d+)/.exec(system.stdout ?? '')?.[1]);
    if (system.error || !(major < 24)) {
      t.skip('no Node older than 24 at /usr/bin/node on this machine');
      return;
    }
    const result = spawnSync('/usr/bin/node', [bin, '--help'], { encoding: 'utf8' });
    assert.equal(result.status, 1);
    assert.match(result.stderr, /^castellan needs Node\.js >= 24 \(this is v\d+/);
  });

  test('--help and per-command help', () => {
    const main = run(['--help']);
    assert.equal(main.status, 0);
    assert.match(main.stdout, /Usage: castellan <command>/);
    for (const command of ['up', 'demo', 'config']) {
      const help = run([command, '--help']);
      assert.equal(help.status, 0, command);
      assert.match(help.stdout, new RegExp(`Usage: castellan ${command}`));
    }
    assert.match(run(['--version']).stdout, /^\d+\.\d+\.\d+\n$/);
  });

  test('unknown commands and flags are usage errors (exit 2)', () => {
    const unknown = run(['launch']);
    assert.equal(unknown.status, 2);
    assert.match(unknown.stderr, /unknown command 'launch'/);
    const flag = run(['up', '--port', '1']);
    assert.equal(flag.status, 2);
    assert.match(flag.stderr, /Unknown option '--port'/);
  });

  test('a bad configuration value stops `up` naming the key (exit 78), without echoing secrets', () => {
    const dir = mkdtempSync(join(tmpdir(), 'castellan-cli-'));
    dirs.push(dir);
    const bad = run(['up', '--data-dir', dir], { CASTELLAN_HTTP_PORT: '70000' }, dir);
    assert.equal(bad.status, 78);
    assert.match(bad.stderr, /^castellan: Invalid configuration: http\.port must be <= 65535$/m);
    const secret = randomBytes(16).toString('base64'); // valid base64, wrong size
    const badKey = run(
      ['up', '--data-dir', dir],
      {
        CASTELLAN_ROOT_KEY_BASE64: secret,
        CASTELLAN_HTTP_PORT: '0',
        CASTELLAN_MQTT_PORT: '0',
        CASTELLAN_ADMIN_PORT: '0',
      },
      dir,
    );
    assert.equal(badKey.status, 78);
    assert.match(
      badKey.stderr,
      /^castellan: Invalid configuration: rootKey\.base64 must be 32 bytes, base64-encoded \(44 characters\)$/m,
    );
    assert.equal((badKey.stderr + badKey.stdout).includes(secret), false);
  });

  test('`config --keys --json` lists every key with its environment variable', () => {
    const result = run(['config', '--keys', '--json']);
    assert.equal(result.status, 0);
    const keys = JSON.parse(result.stdout) as { key: string; env: string }[];
    assert.ok(keys.some((k) => k.key === 'http.port' && k.env === 'CASTELLAN_HTTP_PORT'));
  });

  test('`demo` without a running platform fails clearly', () => {
    const dir = mkdtempSync(join(tmpdir(), 'castellan-cli-'));
    dirs.push(dir);
    const result = run(['demo', '--data-dir', dir]);
    assert.equal(result.status, 1);
    assert.match(result.stdout, /demo failed: no running platform found/);
  });

  test(
    '[DEV-3] [DEV-7] [BIND-1] [BIND-3] [BIND-5] [CHAN-7] [SESS-5] [AUD-2] `up` then `demo` (twice) complete the device lifecycle and verify the audit log; SIGTERM stops gracefully; no secret reaches the logs',
    { timeout: 300_000 },
    async () => {
      const dir = mkdtempSync(join(tmpdir(), 'castellan-cli-'));
      dirs.push(dir);
      const up = spawn(process.execPath, [bin, 'up', '--data-dir', join(dir, 'data')], {
        cwd: dir,
        env: {
          ...baseEnv,
          CASTELLAN_HTTP_PORT: '0',
          CASTELLAN_MQTT_PORT: '0',
          CASTELLAN_HTTP_HOST: '127.0.0.1',
          CASTELLAN_MQTT_HOST: '127.0.0.1',
        },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      children.push(up);
      let output = '';
      up.stdout.on('data', (c) => (output += c));
      up.stderr.on('data', (c) => (output += c));
      const runtime = join(dir, 'data', 'runtime.json');
      for (let i = 0; i < 300 && !existsSync(runtime); i++) await sleep(50);
      assert.ok(existsSync(runtime), `platform did not start:\n${output}`);
      const setupToken = readFileSync(join(dir, 'data', 'setup-token'), 'utf8').trim();

      const demo = spawnSync(process.execPath, [bin, 'demo', '--data-dir', join(dir, 'data'), '--devices', '2'], {
        cwd: dir,
        env: baseEnv,
        encoding: 'utf8',
        timeout: 60_000,
      });
      assert.equal(demo.status, 0, demo.stdout + demo.stderr);
      assert.match(demo.stdout, /✔ consumer registered: demo-consumer-\d+@example\.com/);
      assert.match(demo.stdout, /✔ activation code read from the development outbox and confirmed: account active/);
      assert.match(demo.stdout, /✔ consumer signed in: usr_/);
      assert.ok(
        demo.stdout.indexOf('consumer signed in') < demo.stdout.indexOf('setup token used'),
        'the demo starts with the consumer',
      );
      assert.match(demo.stdout, /✔ setup token used: first administrator created, TOTP factor confirmed/);
      assert.match(demo.stdout, /✔ connection with the device ID alone refused: MQTT_CONNACK_134/);
      assert.match(demo.stdout, /✔ vendor read every device's latest telemetry over HTTPS: matches what was sent/);
      // The device lifecycle (issue 7's demo story), in this order.
      const lifecycle = [
        /✔ factory station registered: fst_\S+ \(X25519 \+ Ed25519 keys made at the station; token shown once, not printed\)/,
        /✔ batch issued to the station: bat_\S+, 2 device IDs, no secrets in the response/,
        /✔ factory opened the sealed batch and burned the device files: 2 files \(0600\) in \S+demo-factory\/bat_\S+, 2 signed receipts/,
        /✔ a burned device without a recorded burn receipt is refused: MQTT_CONNACK_135/,
        /✔ burn receipts uploaded and accepted: 2 accepted \(2 new\); batch counts: issued 2, burned 2, activated 0/,
        /✔ consumer requested a one-time binding token: bnt_\S+, valid until .+ \(token not printed\)/,
        /✔ app sealed the SoftAP payload to the device's pairing key; the device opened it: Castellan-[0-9A-F]{6}: \d+ bytes/,
        /✔ device connected over MQTT\/TLS with its burned credentials: first connection activated it: [0-9a-f]{24}; batch counts: burned 2, activated 1/,
        /✔ device presented the binding token over the device API and was bound: at .+; the token is spent/,
        /✔ the consumer sees the device in GET \/v1\/me\/devices: [0-9a-f]{24}, role owner/,
        /✔ consumer set desired state; the device received it and reported back: desired \{"power":"on","brightness":80\} \(version \d+\); device got \{"power":"on","brightness":80\}; shadow version \d+, delta empty/,
        /✔ consumer sent a command; the device answered: cmd_\S+ blink → succeeded, result \{"blinked":3\}/,
        /✔ the device reported telemetry; the owner reads it: \{"power_w":42,"voltage_v":230\}/,
        /✔ second consumer registered \(proof of work, activation code\) and signed in: usr_\S+, demo-guest-\d+@example\.com/,
        /✔ owner shared the device with the second consumer as guest: shr_\S+, until /,
        /✔ the second consumer reads the device and its shadow; as guest it cannot control it: [0-9a-f]{24} active, reported power on; desired change refused: ERR_DEVICE_NOT_FOUND/,
        /✔ owner revoked the share; the second consumer now gets 404: ERR_DEVICE_NOT_FOUND/,
        /✔ owner unbound the device: the owner's data is wiped: former owner: shadow ERR_DEVICE_NOT_FOUND, not in \/v1\/me\/devices; vendor sees shadow version 0, 0 commands, telemetry ERR_TELEMETRY_NOT_FOUND/,
        /✔ the unbound device can be bound again: the second consumer paired it over BLE and owns it now/,
        /✔ consumer signed out; the old session token is refused: ERR_AUTH_INVALID/,
        /✔ the device's lifecycle is in the audit log: \d+ entries for [0-9a-f]{24}: device\.connect \(refused\), device\.activate, device\.bind, device\.shadow\.desired, device\.command\.issue, device\.share, device\.share\.revoke, device\.unbind/,
        /✔ audit checkpoints verified with the published key/,
      ];
      let from = 0;
      for (const line of lifecycle) {
        const at = demo.stdout.slice(from).search(line);
        assert.ok(at >= 0, `${line} (in order) in:\n${demo.stdout}`);
        from += at;
      }
      const batchDir = /in (\S+demo-factory\/bat_\S+), 2 signed receipts/.exec(demo.stdout)![1]!;
      const burnedFiles = readdirSync(batchDir).filter((f) => /^[0-9a-f]{24}\.json$/.test(f));
      assert.equal(burnedFiles.length, 2);
      for (const file of burnedFiles) assert.equal(statSync(join(batchDir, file)).mode & 0o777, 0o600);
      const deviceSecrets = burnedFiles.map(
        (f) => JSON.parse(readFileSync(join(batchDir, f), 'utf8')).secret as string,
      );
      assert.match(
        demo.stdout,
        /✔ audit checkpoints verified with the published key: \d+ entries appended during the demo/,
      );
      assert.match(demo.stdout, /✔ audit log verified entry by entry: \d+ entries, \d+ checkpoints, no tampering/);
      assert.match(demo.stdout, /Demo completed\.$/m);

      const again = spawnSync(
        process.execPath,
        [bin, 'demo', '--data-dir', join(dir, 'data'), '--json', '--devices', '1'],
        {
          cwd: dir,
          env: baseEnv,
          encoding: 'utf8',
          timeout: 60_000,
        },
      );
      assert.equal(again.status, 0, again.stdout + again.stderr);
      const summary = JSON.parse(again.stdout);
      assert.equal(summary.ok, true);
      assert.ok(summary.steps.some((s: { step: string }) => s.step === 'administrator credential found'));
      assert.ok(
        summary.steps.some((s: { step: string }) => s.step === 'consumer signed in'),
        'a new consumer each run',
      );
      const step = (name: string) => summary.steps.find((s: { step: string }) => s.step === name)?.detail as string;
      assert.match(
        step('burn receipts uploaded and accepted'),
        /^1 accepted \(1 new\); batch counts: issued 1, burned 1,/,
      );
      assert.match(step("owner unbound the device: the owner's data is wiped"), /telemetry ERR_TELEMETRY_NOT_FOUND$/);
      assert.equal(summary.steps.at(-1).step, 'audit log verified entry by entry', 'the audit verification comes last');

      const keysRun = (...args: string[]) =>
        spawnSync(process.execPath, [bin, 'keys', ...args, '--data-dir', join(dir, 'data')], {
          cwd: dir,
          env: baseEnv,
          encoding: 'utf8',
          timeout: 30_000,
        });
      const listed = keysRun('list', '--json');
      assert.equal(listed.status, 0, listed.stderr);
      const keyList = JSON.parse(listed.stdout) as { id: string; tenant: string; state: string }[];
      const vendorKey = keyList.find((k) => k.tenant.startsWith('vnd_'))!;
      assert.equal(vendorKey.state, 'active');
      assert.equal(listed.stdout.includes('material'), false);
      const rotated = keysRun('rotate', '--tenant', vendorKey.tenant, '--json');
      assert.equal(rotated.status, 0, rotated.stderr);
      assert.equal((JSON.parse(rotated.stdout) as { state: string }).state, 'active');
      const refused = keysRun('activate', '--key', vendorKey.id);
      assert.equal(refused.status, 1);
      assert.match(refused.stderr, /Cannot activate a key that is deactivated/);
      assert.equal(keysRun('rotate').status, 2, 'usage error without --tenant');
      const smRun = keysRun('rotate', '--tenant', 'cli-sm', '--suite', 'sm', '--json');
      assert.equal(smRun.status, 0, smRun.stderr);
      assert.equal((JSON.parse(smRun.stdout) as { suite: string }).suite, 'sm', '--suite reaches the API');
      const userKey = keysRun('rotate', '--tenant', 'cli-sm', '--user', 'u1', '--json');
      assert.equal(userKey.status, 0, userKey.stderr);
      assert.deepEqual(
        [(JSON.parse(userKey.stdout) as { user: string; suite: string }).user, JSON.parse(userKey.stdout).suite],
        ['u1', 'sm'],
        "a user's key follows the tenant's suite",
      );
      const shredded = keysRun('shred', '--tenant', 'cli-sm', '--user', 'u1');
      assert.equal(shredded.status, 0, shredded.stderr);
      assert.match(shredded.stdout, /tenant cli-sm {2}user u1 {2}v1 {2}sm {2}destroyed/);
      assert.equal(keysRun('shred').status, 2, 'shred needs --tenant');
      const badSuite = keysRun('rotate', '--tenant', 'cli-sm', '--suite', 'des');
      assert.equal(badSuite.status, 2);
      assert.match(badSuite.stderr, /--suite must be intl or sm, not 'des'/);
      const backupFile = join(dir, 'keys-backup.json');
      const backedUp = keysRun('backup', '--out', backupFile);
      assert.equal(backedUp.status, 0, backedUp.stderr);
      assert.equal(statSync(backupFile).mode & 0o777, 0o600);
      const backupKeyId = (JSON.parse(backedUp.stdout) as { backupKeyId: string }).backupKeyId;
      const recipient = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
      writeFileSync(join(dir, 'recipient.pem'), recipient.publicKey.export({ format: 'pem', type: 'spki' }));
      const escrowed = keysRun(
        'backup-key-escrow',
        '--key',
        backupKeyId,
        '--recipient',
        join(dir, 'recipient.pem'),
        '--out',
        join(dir, 'escrow.json'),
      );
      assert.equal(escrowed.status, 0, escrowed.stderr);
      writeFileSync(join(dir, 'not-a-key.pem'), 'hello');
      const badRecipient = keysRun(
        'backup-key-escrow',
        '--key',
        backupKeyId,
        '--recipient',
        join(dir, 'not-a-key.pem'),
        '--out',
        join(dir, 'x.json'),
      );
      assert.equal(badRecipient.status, 1);
      assert.match(badRecipient.stderr, /recipientPublicKeyPem is not a P-256 public key/);
      const distributed = keysRun(
        'distribute',
        '--key',
        (JSON.parse(smRun.stdout) as { id: string }).id,
        '--recipient',
        join(dir, 'recipient.pem'),
        '--out',
        join(dir, 'distributed.json'),
      );
      assert.equal(distributed.status, 0, distributed.stderr);
      const sealedKey = JSON.parse(readFileSync(join(dir, 'distributed.json'), 'utf8'));
      assert.equal(sealedKey.suite, 'sm');
      assert.equal(
        openDistributedKey(sealedKey, recipient.privateKey.export({ format: 'pem', type: 'pkcs8' }).toString()).length,
        16,
        'an SM4 key',
      );
      assert.equal(keysRun('distribute', '--key', 'kv_x', '--out', join(dir, 'y.json')).status, 2, 'needs --recipient');
      const restoredRun = keysRun('restore', '--in', backupFile, '--json');
      assert.equal(restoredRun.status, 0, restoredRun.stderr);
      assert.equal(
        (JSON.parse(restoredRun.stdout) as { restored: number }).restored,
        0,
        'nothing missing: nothing restored',
      );

      const adminToken = readFileSync(join(dir, 'data', 'demo-admin.token'), 'utf8').trim();
      up.kill('SIGTERM');
      const code = await new Promise<number | null>((r) => up.once('exit', (c) => r(c)));
      assert.equal(code, 0, output);
      assert.equal(existsSync(runtime), false, 'runtime.json is removed on a graceful stop');
      assert.match(output, /"msg":"castellan stopped"/);
      for (const secret of [setupToken, adminToken])
        assert.equal(output.includes(secret), false, 'a token reached the output');
      assert.equal(demo.stdout.includes(adminToken) || again.stdout.includes(adminToken), false);
      for (const secret of deviceSecrets) {
        assert.equal(output.includes(secret) || demo.stdout.includes(secret), false, 'a burned device secret leaked');
      }
    },
  );
});
