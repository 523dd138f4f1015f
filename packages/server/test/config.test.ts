// Configuration: one schema, validated at start, errors name the dotted key, secrets never echoed.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { CONFIG_KEYS, loadConfig, redactConfig } from '../src/config/index.ts';
import { CastellanError } from '../src/errors/index.ts';

function configError(fn: () => unknown): string {
  try {
    fn();
  } catch (error) {
    assert.ok(error instanceof CastellanError);
    assert.equal(error.code, 'ERR_CONFIG_INVALID');
    return error.message;
  }
  assert.fail('expected a configuration error');
}

describe('configuration', () => {
  test('defaults: HTTPS on 8443, MQTT over TLS on 8883, embedded SQLite, TLS 1.2 minimum', () => {
    const config = loadConfig({ env: {}, cwd: tmpdir() });
    assert.equal(config.http.port, 8443);
    assert.equal(config.mqtt.port, 8883);
    assert.equal(config.database.url, '');
    assert.equal(config.tls.minVersion, 'TLSv1.2');
    assert.equal(config.environment, 'development');
  });

  test('the result is deeply frozen', () => {
    const config = loadConfig({ env: {}, cwd: tmpdir() });
    assert.ok(Object.isFrozen(config) && Object.isFrozen(config.http));
    assert.throws(() => {
      (config.http as { port: number }).port = 1;
    }, TypeError);
  });

  test('environment variables map onto keys and are converted by type', () => {
    const config = loadConfig({
      cwd: tmpdir(),
      env: {
        CASTELLAN_HTTP_PORT: '9443',
        CASTELLAN_HTTP_TRUST_PROXY: 'true',
        DATABASE_URL: 'postgres://db/x',
        CASTELLAN_LOG_LEVEL: 'warn',
      },
    });
    assert.equal(config.http.port, 9443);
    assert.equal(config.http.trustProxy, true);
    assert.equal(config.database.url, 'postgres://db/x');
    assert.equal(config.log.level, 'warn');
  });

  test('precedence: defaults < file < environment < overrides', () => {
    const dir = mkdtempSync(join(tmpdir(), 'castellan-config-'));
    try {
      writeFileSync(
        join(dir, 'castellan.config.json'),
        JSON.stringify({ http: { port: 1111, host: '127.0.0.1' }, mqtt: { port: 2222 } }),
      );
      const config = loadConfig({
        cwd: dir,
        env: { CASTELLAN_MQTT_PORT: '3333' },
        overrides: { http: { port: 4444 } },
      });
      assert.deepEqual([config.http.host, config.http.port, config.mqtt.port], ['127.0.0.1', 4444, 3333]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a bad value stops start-up with the dotted key and the reason', () => {
    const cases: Array<[Record<string, string>, string]> = [
      [{ CASTELLAN_HTTP_PORT: 'abc' }, 'Invalid configuration: http.port must be a number (from CASTELLAN_HTTP_PORT)'],
      [{ CASTELLAN_HTTP_PORT: '70000' }, 'Invalid configuration: http.port must be <= 65535'],
      [{ CASTELLAN_MQTT_MAX_PACKET_BYTES: '10' }, 'Invalid configuration: mqtt.maxPacketBytes must be >= 256'],
      [
        { CASTELLAN_TLS_MIN_VERSION: 'TLSv1.1' },
        'Invalid configuration: tls.minVersion must be one of: TLSv1.2, TLSv1.3',
      ],
      [
        { CASTELLAN_HTTP_TRUST_PROXY: 'yes' },
        'Invalid configuration: http.trustProxy must be true or false (from CASTELLAN_HTTP_TRUST_PROXY)',
      ],
      [
        { CASTELLAN_HTTP_PROT: '1' },
        'Invalid configuration: CASTELLAN_HTTP_PROT is not a known configuration variable (see docs/configuration.md)',
      ],
    ];
    for (const [env, message] of cases)
      assert.equal(
        configError(() => loadConfig({ env, cwd: tmpdir() })),
        message,
      );
  });

  test('[RES-2] scale mode needs PostgreSQL and Redis, and workers need scale mode', () => {
    const pg = 'postgres://postgres@127.0.0.1:5432/test';
    const cases: Array<[Record<string, string>, string]> = [
      [
        { CASTELLAN_CLUSTER_ENABLED: 'true', REDIS_URL: 'redis://127.0.0.1:6379' },
        'Invalid configuration: cluster.enabled needs a PostgreSQL database.url (processes share one database)',
      ],
      [
        { CASTELLAN_CLUSTER_ENABLED: 'true', DATABASE_URL: pg },
        'Invalid configuration: cluster.enabled needs redis.url (processes share one Redis)',
      ],
      [
        { CASTELLAN_CLUSTER_WORKERS: '2' },
        'Invalid configuration: cluster.workers above 1 needs cluster.enabled (scale mode)',
      ],
      [{ CASTELLAN_CLUSTER_WORKERS: '65' }, 'Invalid configuration: cluster.workers must be <= 64'],
    ];
    for (const [env, message] of cases)
      assert.equal(
        configError(() => loadConfig({ env, cwd: tmpdir() })),
        message,
      );
    const ok = loadConfig({
      env: {
        CASTELLAN_CLUSTER_ENABLED: 'true',
        CASTELLAN_CLUSTER_WORKERS: '4',
        DATABASE_URL: pg,
        REDIS_URL: 'redis://127.0.0.1:6379',
      },
      cwd: tmpdir(),
    });
    assert.equal(ok.cluster.workers, 4);
  });

  test('unknown keys in a file are refused, naming the key', () => {
    const dir = mkdtempSync(join(tmpdir(), 'castellan-config-'));
    try {
      const file = join(dir, 'c.json');
      writeFileSync(file, JSON.stringify({ http: { prot: 1 } }));
      assert.equal(
        configError(() => loadConfig({ env: {}, file })),
        'Invalid configuration: http.prot is not a known configuration key',
      );
      writeFileSync(file, '{ "http": ');
      assert.match(
        configError(() => loadConfig({ env: {}, file })),
        /^Invalid configuration: \(file\) .*c\.json is not valid JSON/,
      );
      assert.match(
        configError(() => loadConfig({ env: {}, file: join(dir, 'missing.json') })),
        /cannot read .*missing\.json: ENOENT/,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a secret value is never echoed back, even when invalid, and is redacted when printed', () => {
    const secret = 'postgres://user:Sup3rS3cretPassw0rd@db/x';
    const rootKey = randomBytes(32).toString('base64');
    const message = configError(() =>
      loadConfig({
        env: { DATABASE_URL: secret },
        cwd: tmpdir(),
        overrides: { database: { url: 42 as unknown as string } },
      }),
    );
    assert.equal(
      message,
      'Invalid configuration: database.url must be empty (embedded SQLite), sqlite:<file>, or start with postgres:// or postgresql://',
    );
    const wrongScheme = configError(() =>
      loadConfig({ env: { DATABASE_URL: 'mysql://user:Sup3rS3cretPassw0rd@db/x' }, cwd: tmpdir() }),
    );
    assert.equal(wrongScheme.includes('Sup3rS3cret'), false);
    const shortKey = randomBytes(16).toString('base64');
    const keyMessage = configError(() => loadConfig({ env: { CASTELLAN_ROOT_KEY_BASE64: shortKey }, cwd: tmpdir() }));
    assert.equal(keyMessage, 'Invalid configuration: rootKey.base64 must be 32 bytes, base64-encoded (44 characters)');
    const both = configError(() =>
      loadConfig({ env: { DATABASE_URL: 'postgres://a/b', CASTELLAN_DATABASE_URL: 'postgres://c/d' }, cwd: tmpdir() }),
    );
    assert.equal(
      both,
      'Invalid configuration: database.url is set differently by DATABASE_URL and CASTELLAN_DATABASE_URL; set only one',
    );
    const printed = JSON.stringify(
      redactConfig(
        loadConfig({
          env: { DATABASE_URL: secret, CASTELLAN_ROOT_KEY_BASE64: rootKey },
          cwd: tmpdir(),
        }),
      ),
    );
    assert.equal(printed.includes('Sup3rS3cret'), false);
    assert.equal(printed.includes(rootKey), false);
    assert.match(printed, /\[redacted\]/);
  });

  test('every key has a CASTELLAN_ environment variable', () => {
    assert.ok(CONFIG_KEYS.length >= 30);
    for (const key of CONFIG_KEYS) assert.match(key.env, /^CASTELLAN_[A-Z0-9_]+$/);
    assert.equal(new Set(CONFIG_KEYS.map((k) => k.env)).size, CONFIG_KEYS.length);
  });
});
