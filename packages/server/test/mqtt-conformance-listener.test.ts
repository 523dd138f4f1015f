// The MQTT conformance listener: the same broker core with anonymous, open hooks on plain TCP, loopback
// only, for third-party conformance suites and fuzzers. And the other side of the fence: the production
// TLS listener (and `castellan up`) can never be given those hooks.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import type { IClientOptions, MqttClient } from 'mqtt';
import { defaultMqttConfig } from '../src/config/index.ts';
import { CastellanError } from '../src/errors/index.ts';
import {
  type BrokerLimits,
  type ConformanceListener,
  conformanceHooks,
  denyAllHooks,
  isConformanceHooks,
  isLoopbackHost,
  MqttBroker,
  startConformanceListener,
  startMqttListener,
} from '../src/gateway/mqtt/index.ts';
import { createLogger } from '../src/logging/index.ts';
import { endClient, openMqttClient } from './helpers/mqtt-clients.ts';
import { connectClient, nextMessages } from './helpers/mqtt-core.ts';
import { startTestPlatform } from './helpers/test-platform.ts';

const limits: BrokerLimits = defaultMqttConfig();
const silent = createLogger({ level: 'silent' });
const bin = resolve(import.meta.dirname, '../bin/castellan.js');
const baseEnv: NodeJS.ProcessEnv = Object.fromEntries(
  Object.entries(process.env).filter(([k]) => !k.startsWith('CASTELLAN_') && k !== 'DATABASE_URL'),
);

function capturingLogger() {
  const lines: Array<Record<string, unknown>> = [];
  const destination = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString('utf8').split('\n')) if (line) lines.push(JSON.parse(line));
      callback();
    },
  });
  return { log: createLogger({ level: 'info', destination }), lines };
}

/** An anonymous client: an empty client ID unless the test names one. */
const connect = (url: string, options: Partial<IClientOptions> = {}): Promise<MqttClient> =>
  connectClient(url, { clientId: '', ...options });

/** The next `count` messages as topic, UTF-8 payload and QoS. */
const nextPayloads = async (client: MqttClient, count: number) =>
  (await nextMessages(client, count)).map(({ topic, payload, packet }) => ({
    topic,
    payload: payload.toString('utf8'),
    qos: packet.qos,
  }));

describe('MQTT conformance listener (in-process)', () => {
  let broker: MqttBroker;
  let listener: ConformanceListener;
  let url: string;
  const captured = capturingLogger();

  before(async () => {
    broker = new MqttBroker({ hooks: conformanceHooks(), limits, log: silent });
    listener = await startConformanceListener(broker, { host: '127.0.0.1', port: 0 }, captured.log);
    url = listener.url();
  });
  after(async () => {
    await broker?.close();
    await listener?.close();
  });

  test('[CHAN-6] it listens on loopback over plain TCP and warns loudly that it is anonymous and open', () => {
    assert.equal(broker.conformance, true);
    assert.match(url, /^mqtt:\/\/127\.0\.0\.1:\d+$/);
    assert.notEqual(listener.address().port, 0);
    assert.match(listener.warning, /ANONYMOUS and OPEN/);
    assert.match(listener.warning, /conformance suites and fuzzers/);
    const warning = captured.lines.find((l) => l.level === 40 && l.msg === listener.warning);
    assert.ok(warning, 'the warning is logged at warn level');
  });

  for (const protocolVersion of [4, 5] as const) {
    test(`[CHAN-6] MQTT ${protocolVersion === 4 ? '3.1.1' : '5'}: anonymous clients subscribe to a/# and receive QoS 0 and QoS 1 from another client`, async () => {
      const subscriber = await connect(url, { protocolVersion });
      const publisher = await connect(url, { protocolVersion, clientId: `publisher-v${protocolVersion}` });
      try {
        const granted = await subscriber.subscribeAsync('a/#', { qos: 1 });
        assert.equal(granted[0]?.qos, 1);
        const received = nextPayloads(subscriber, 2);
        await publisher.publishAsync('a/b', 'zero', { qos: 0 });
        await publisher.publishAsync('a/b', 'one', { qos: 1 });
        const messages = await received;
        assert.deepEqual(
          messages.sort((x, y) => x.qos - y.qos),
          [
            { topic: 'a/b', payload: 'zero', qos: 0 },
            { topic: 'a/b', payload: 'one', qos: 1 },
          ],
        );
      } finally {
        await endClient(subscriber);
        await endClient(publisher);
      }
    });
  }

  test('[CHAN-6] an empty MQTT 5 client ID is assigned one', async () => {
    const { client, connack } = await openMqttClient(url, { clientId: '' });
    try {
      assert.match(connack.properties?.assignedClientIdentifier ?? '', /^conformance-[0-9a-f-]{36}$/);
    } finally {
      await endClient(client);
    }
  });

  test('the broker protocol validation still applies: a wildcard in a topic name closes the connection', async () => {
    const client = await connect(url, { clientId: 'bad-topic' });
    const closed = new Promise<void>((r) => client.once('close', () => r()));
    client.publish('a/+', 'x', { qos: 0 });
    await closed;
    client.end(true);
    assert.ok(broker.stats.protocolErrors >= 1);
  });
});

describe('[CHAN-6] conformance hooks never reach a production listener; the conformance listener stays on loopback', () => {
  test('the brand cannot be forged: copies and look-alikes are not conformance hooks', () => {
    const hooks = conformanceHooks();
    assert.equal(isConformanceHooks(hooks), true);
    assert.ok(Object.isFrozen(hooks));
    assert.equal(isConformanceHooks({ ...hooks }), false);
    assert.equal(isConformanceHooks(denyAllHooks), false);
    assert.equal(isConformanceHooks(undefined), false);
    assert.equal(new MqttBroker({ limits, log: silent }).conformance, false);
    assert.equal(new MqttBroker({ hooks: { ...hooks }, limits, log: silent }).conformance, false);
  });

  test('[CHAN-1] startMqttListener (MQTT over TLS) refuses a broker built with conformance hooks', async () => {
    const broker = new MqttBroker({ hooks: conformanceHooks(), limits, log: silent });
    await assert.rejects(
      startMqttListener(
        broker,
        { cert: 'unused', key: 'unused', minVersion: 'TLSv1.2', host: '127.0.0.1', port: 0, maxConnections: 10 },
        silent,
      ),
      (error: unknown) =>
        error instanceof CastellanError &&
        error.code === 'ERR_BROKER_CONFORMANCE_HOOKS_REFUSED' &&
        /conformance hooks/.test(error.message),
    );
    // Even if the hooks were swapped in after construction, the listener checks the hooks themselves.
    const swapped = new MqttBroker({ limits, log: silent });
    (swapped as unknown as { hooks: unknown }).hooks = conformanceHooks();
    await assert.rejects(
      startMqttListener(
        swapped,
        { cert: 'unused', key: 'unused', minVersion: 'TLSv1.2', host: '127.0.0.1', port: 0, maxConnections: 10 },
        silent,
      ),
      { code: 'ERR_BROKER_CONFORMANCE_HOOKS_REFUSED' },
    );
  });

  test('the platform builds its broker with the device hooks, never the conformance hooks', async () => {
    const source = readFileSync(resolve(import.meta.dirname, '../src/platform.ts'), 'utf8');
    assert.match(source, /hooks: deviceBrokerHooks\(/);
    assert.doesNotMatch(source, /conformance/i);
    const tp = await startTestPlatform('sqlite');
    try {
      assert.equal(tp.platform.broker.conformance, false);
      assert.equal(isConformanceHooks(tp.platform.broker.hooks), false);
    } finally {
      await tp.close();
    }
  });

  for (const host of [
    '0.0.0.0',
    '::',
    '10.0.0.1',
    '192.168.1.10',
    '::ffff:10.0.0.1',
    'example.com',
    'localhost.example.com',
  ]) {
    test(`the conformance listener refuses host ${host}`, async () => {
      const broker = new MqttBroker({ hooks: conformanceHooks(), limits, log: silent });
      await assert.rejects(
        startConformanceListener(broker, { host, port: 0 }, silent),
        (error: unknown) =>
          error instanceof CastellanError &&
          error.code === 'ERR_BROKER_CONFORMANCE_NOT_LOOPBACK' &&
          error.message.includes(`'${host}'`),
      );
    });
  }

  test('loopback hosts are recognised: 127.0.0.0/8, ::1 and localhost only', () => {
    for (const host of [
      '127.0.0.1',
      '127.1.2.3',
      '127.255.255.255',
      '::1',
      '0:0:0:0:0:0:0:1',
      'localhost',
      'LOCALHOST',
    ]) {
      assert.equal(isLoopbackHost(host), true, host);
    }
    for (const host of [
      '0.0.0.0',
      '::',
      '128.0.0.1',
      '126.255.255.255',
      '10.0.0.1',
      '::2',
      'example.com',
      '',
      '127.0.0.1.nip.io',
    ]) {
      assert.equal(isLoopbackHost(host), false, host);
    }
  });

  test('localhost and 127.x addresses other than 127.0.0.1 are served', async () => {
    for (const host of ['localhost', '127.0.0.2']) {
      const broker = new MqttBroker({ hooks: conformanceHooks(), limits, log: silent });
      const listener = await startConformanceListener(broker, { host, port: 0 }, silent);
      try {
        assert.equal(isLoopbackHost(listener.address().address), true);
        const client = await connect(listener.url(), { protocolVersion: 4, clientId: 'loopback' });
        await endClient(client);
      } finally {
        await broker.close();
        await listener.close();
      }
    }
  });

  test('the conformance listener refuses a broker built with any other hooks', async () => {
    for (const hooks of [undefined, denyAllHooks, { ...conformanceHooks() }]) {
      const broker = new MqttBroker({ ...(hooks ? { hooks } : {}), limits, log: silent });
      await assert.rejects(startConformanceListener(broker, { host: '127.0.0.1', port: 0 }, silent), {
        code: 'ERR_BROKER_CONFORMANCE_HOOKS_REFUSED',
      });
    }
  });
});

describe('`castellan broker --conformance`', () => {
  const children: ChildProcess[] = [];
  after(() => {
    for (const child of children) child.kill('SIGKILL');
  });
  const run = (args: string[]) =>
    spawnSync(process.execPath, [bin, ...args], { env: baseEnv, encoding: 'utf8', timeout: 60_000 });

  test('[CHAN-6] prints its loopback address, serves anonymous clients, warns on stderr and exits 0 on SIGTERM', async () => {
    const child = spawn(process.execPath, [bin, 'broker', '--conformance', '--port', '0'], {
      env: baseEnv,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    children.push(child);
    let stdout = '';
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    const address = await new Promise<string>((resolvePromise, reject) => {
      const timer = setTimeout(() => reject(new Error(`no address printed; stderr: ${stderr}`)), 60_000);
      child.stdout.on('data', (d: Buffer) => {
        stdout += d.toString('utf8');
        const match = /^listening on (mqtt:\/\/127\.0\.0\.1:\d+)\n/.exec(stdout);
        if (match) {
          clearTimeout(timer);
          resolvePromise(match[1]!);
        }
      });
      child.once('exit', (code) => reject(new Error(`exited ${code} before listening; stderr: ${stderr}`)));
    });
    const subscriber = await connect(address, { protocolVersion: 5, clientId: 'cli-sub' });
    const publisher = await connect(address, { protocolVersion: 4, clientId: 'cli-pub' });
    const received = nextPayloads(subscriber, 1);
    await subscriber.subscribeAsync('a/#', { qos: 1 });
    await publisher.publishAsync('a/b', 'hello', { qos: 1 });
    assert.deepEqual(await received, [{ topic: 'a/b', payload: 'hello', qos: 1 }]);
    await endClient(publisher);
    const serverClosed = new Promise<void>((r) => subscriber.once('close', () => r()));
    child.kill('SIGTERM');
    assert.equal(await exited, 0, stderr);
    await serverClosed;
    subscriber.end(true);
    assert.equal(stdout, `listening on ${address}\n`, 'stdout carries only the address');
    assert.match(stderr, /WARNING: MQTT conformance listener: ANONYMOUS and OPEN/);
  });

  test('[CHAN-6] a non-loopback --host is refused with a message naming it', () => {
    const result = run(['broker', '--conformance', '--port', '0', '--host', '0.0.0.0']);
    assert.notEqual(result.status, 0);
    assert.equal(result.status, 1);
    assert.match(result.stderr, /refuses host '0\.0\.0\.0'/);
    assert.equal(result.stdout, '');
  });

  test('[CHAN-6] without --conformance it is refused as a usage error (exit 2), pointing at `castellan up`', () => {
    const result = run(['broker', '--port', '0']);
    assert.equal(result.status, 2);
    assert.match(result.stderr, /needs --conformance/);
    assert.match(result.stderr, /castellan up/);
    assert.equal(result.stdout, '');
  });

  test('bad --port values are usage errors; help is listed', () => {
    for (const port of ['65536', 'abc']) {
      const result = run(['broker', '--conformance', '--port', port]);
      assert.equal(result.status, 2, port);
      assert.match(result.stderr, /--port/);
    }
    assert.equal(run(['broker', '--conformance']).status, 2);
    const help = run(['broker', '--help']);
    assert.equal(help.status, 0);
    assert.match(help.stdout, /Usage: castellan broker --conformance/);
    assert.match(run(['--help']).stdout, /broker {4}--conformance only/);
  });
});
