// The production MQTT over TLS listener with third-party clients: Debian's mosquitto_pub, mosquitto_sub
// and mosquitto_rr (libmosquitto, OpenSSL) on MQTT 5 and 3.1.1. A device connects with its own ID and
// secret, verifying the platform's CA; what it sends is stored or routed; refusals reach the client as
// the CONNACK/SUBACK/PUBACK codes the tools print (CHAN-1, CHAN-6, DEV-3).
//
// A device has exactly one connection (its client ID is its device ID: a second one takes the first
// over) and may use only its own `devices/{id}/` topics, so two live processes of one device cannot form
// a pub → sub pair. Routing is shown instead with a retained message (mosquitto_pub -r, then
// mosquitto_sub), with mosquitto_rr (subscribes, then publishes, on the device's own topic) and with
// mosquitto_sub receiving a cloud-originated command.
//
// mosquitto clients are run with execFile/spawn (never a shell), with timeouts, HOME and
// XDG_CONFIG_HOME pointed at a temporary directory (they read ~/.config/mosquitto_{pub,sub}).
import assert from 'node:assert/strict';
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  provisionTenant,
  request,
  startTestPlatform,
  type Tenant,
  type TestPlatform,
} from './helpers/test-platform.ts';

const TOOLS = ['/usr/bin/mosquitto_pub', '/usr/bin/mosquitto_sub', '/usr/bin/mosquitto_rr'];
const missing = TOOLS.filter((tool) => !existsSync(tool));
const onCi = process.env.CI === 'true';

type Version = 'mqttv5' | 'mqttv311';
const VERSIONS: Version[] = ['mqttv5', 'mqttv311'];
const label = (v: Version) => (v === 'mqttv5' ? 'MQTT 5' : 'MQTT 3.1.1');

/** What mosquitto prints for a refused CONNECT, and its exit status (the CONNACK code). */
const BAD_CREDENTIALS = {
  mqttv5: { code: 0x86, line: 'Connection error: Bad User Name or Password' },
  mqttv311: { code: 4, line: 'Connection error: Connection Refused: bad user name or password.' },
} as const;
const IDENTIFIER_REJECTED = {
  mqttv5: { code: 0x85, line: 'Connection error: Client Identifier not valid' },
  mqttv311: { code: 2, line: 'Connection error: Connection Refused: identifier rejected.' },
} as const;

interface Device {
  id: string;
  secret: string;
}

interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

describe('third-party MQTT clients (mosquitto) against the TLS listener', { skip: skipReason() }, () => {
  let tp: TestPlatform;
  let tenant: Tenant;
  let work: string;
  let caFile: string;
  const children: ChildProcess[] = [];

  before(async () => {
    tp = await startTestPlatform('sqlite');
    tenant = await provisionTenant(tp, 3);
    work = mkdtempSync(join(tmpdir(), 'castellan-mosquitto-'));
    caFile = join(work, 'ca.pem');
    writeFileSync(caFile, tp.platform.caPem);
    for (const version of ['TLSv1.1', 'TLSv1.2']) {
      // libmosquitto's --tls-version is a minimum, not a maximum: without this the client would offer
      // TLS 1.3 too. SECLEVEL=0 lets OpenSSL really send a TLS 1.1 ClientHello, so a refusal is the server's.
      writeFileSync(
        join(work, `openssl-${version}.cnf`),
        [
          'openssl_conf = openssl_init',
          '[openssl_init]',
          'ssl_conf = ssl_sect',
          '[ssl_sect]',
          'system_default = system_default_sect',
          '[system_default_sect]',
          `MinProtocol = ${version}`,
          `MaxProtocol = ${version}`,
          'CipherString = DEFAULT@SECLEVEL=0',
          '',
        ].join('\n'),
      );
    }
  });
  after(async () => {
    for (const child of children) if (child.exitCode === null) child.kill('SIGKILL');
    await tp?.close();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  const env = (extra: Record<string, string> = {}) => ({
    PATH: '/usr/bin:/bin',
    HOME: work,
    XDG_CONFIG_HOME: work,
    ...extra,
  });

  function run(tool: string, args: string[], extraEnv: Record<string, string> = {}): Promise<RunResult> {
    return new Promise((resolve) => {
      const child = execFile(
        `/usr/bin/${tool}`,
        args,
        { env: env(extraEnv), timeout: 20_000, encoding: 'utf8' },
        (_error, stdout, stderr) => resolve({ code: child.exitCode, signal: child.signalCode, stdout, stderr }),
      );
    });
  }

  /** Connection options for a device: the listener, the pinned CA, the device's own credentials. */
  const connection = (version: Version, device: Device, options: { tls?: boolean; clientId?: string } = {}) => [
    '-h',
    '127.0.0.1',
    '-p',
    String(tp.platform.mqttPort),
    ...(options.tls === false ? [] : ['--cafile', caFile]),
    '-V',
    version,
    ...(options.clientId === '' ? [] : ['-i', options.clientId ?? device.id]),
    '-u',
    device.id,
    '-P',
    device.secret,
  ];

  const latestTelemetry = async (deviceId: string) =>
    (await request(tp.platform, 'GET', `/v1/devices/${deviceId}/telemetry/latest`, { token: tenant.vendorToken })).body
      ?.payload;

  for (const version of VERSIONS) {
    const [a, b] = [0, 1].map((i) => () => tenant.devices[i]!) as [() => Device, () => Device];

    test(`[CHAN-1] [CHAN-6] ${label(version)}: mosquitto_pub telemetry over TLS is stored; the vendor reads it back`, async () => {
      const device = a();
      const reading = { power_w: version === 'mqttv5' ? 5 : 311, client: 'mosquitto_pub' };
      const sent = await run('mosquitto_pub', [
        ...connection(version, device),
        '-q',
        '1',
        '-t',
        `devices/${device.id}/telemetry`,
        '-m',
        JSON.stringify(reading),
      ]);
      assert.deepEqual(sent, { code: 0, signal: null, stdout: '', stderr: '' });
      // QoS 1 is acknowledged only once stored, and mosquitto_pub exits only after the PUBACK.
      assert.deepEqual(await latestTelemetry(device.id), reading);

      // Without -i the client sends an empty client ID and the broker assigns the device ID.
      const assigned = { ...reading, clientId: 'assigned' };
      const again = await run('mosquitto_pub', [
        ...connection(version, device, { clientId: '' }),
        '-q',
        '1',
        '-t',
        `devices/${device.id}/telemetry`,
        '-m',
        JSON.stringify(assigned),
      ]);
      assert.deepEqual(again, { code: 0, signal: null, stdout: '', stderr: '' });
      assert.deepEqual(await latestTelemetry(device.id), assigned);
    });

    test(`[CHAN-6] ${label(version)}: mosquitto_sub receives the state mosquitto_pub retained; another device gets none of it`, async () => {
      const [device, other] = [a(), b()];
      const retain = async (d: Device, payload: string | null) =>
        run('mosquitto_pub', [
          ...connection(version, d),
          '-q',
          '1',
          '-r',
          '-t',
          `devices/${d.id}/state`,
          ...(payload === null ? ['-n'] : ['-m', payload]),
        ]);
      const state = JSON.stringify({ on: true, by: `mosquitto_pub ${version}` });
      assert.deepEqual(await retain(device, state), { code: 0, signal: null, stdout: '', stderr: '' });
      assert.deepEqual(await retain(other, '{"on":false}'), { code: 0, signal: null, stdout: '', stderr: '' });
      try {
        const received = await run('mosquitto_sub', [
          ...connection(version, device),
          '-q',
          '1',
          '-t',
          `devices/${device.id}/state`,
          '-C',
          '1',
          '-W',
          '10',
          '-v',
        ]);
        assert.deepEqual(received, {
          code: 0,
          signal: null,
          stdout: `devices/${device.id}/state ${state}\n`,
          stderr: '',
        });
        // The other device asks for everything first, then its own state: the wildcards are refused, so
        // the first (and only) message it gets is its own retained state.
        const own = await run('mosquitto_sub', [
          ...connection(version, other),
          '-q',
          '1',
          '-t',
          '#',
          '-t',
          'devices/+/state',
          '-t',
          `devices/${device.id}/state`,
          '-t',
          `devices/${other.id}/state`,
          '-C',
          '1',
          '-W',
          '10',
          '-v',
        ]);
        assert.deepEqual(own, {
          code: 0,
          signal: null,
          stdout: `devices/${other.id}/state {"on":false}\n`,
          stderr: '',
        });
      } finally {
        // An empty retained message clears the topic [MQTT-3.3.1-6].
        await retain(device, null);
        await retain(other, null);
      }
    });

    test(`[CHAN-6] ${label(version)}: mosquitto_rr subscribes to and publishes on its own topic and gets its message back`, async () => {
      const device = a();
      const topic = `devices/${device.id}/state`;
      const result = await run('mosquitto_rr', [
        ...connection(version, device),
        '-q',
        '1',
        '-t',
        topic,
        '-e',
        topic,
        '-m',
        '{"on":true}',
        '-W',
        '10',
        '-v',
      ]);
      assert.deepEqual(result, { code: 0, signal: null, stdout: `${topic} {"on":true}\n`, stderr: '' });
    });

    test(`[CHAN-6] ${label(version)}: mosquitto_sub gets a cloud command on its own topic and nothing another device sends`, async () => {
      const [device, attacker] = [a(), b()];
      const filters = [`devices/${device.id}/commands/#`, `devices/${device.id}/state`];
      const sub = spawn(
        '/usr/bin/mosquitto_sub',
        [...connection(version, device), '-q', '1', ...filters.flatMap((f) => ['-t', f]), '-C', '1', '-W', '15', '-v'],
        { env: env(), timeout: 20_000 },
      );
      children.push(sub);
      let stdout = '';
      let stderr = '';
      sub.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
      sub.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
      const exited = once(sub, 'exit');
      // mosquitto_sub's stdout is block-buffered on a pipe, so its "Subscribed" line cannot serve as a
      // barrier: wait until the broker holds both subscriptions instead.
      const subscribed = () => filters.every((f) => tp.platform.broker.subscriptions.has(device.id, f));
      for (let i = 0; i < 500 && !subscribed() && sub.exitCode === null; i++) await sleep(10);
      assert.ok(subscribed(), `mosquitto_sub did not subscribe: ${stdout} ${stderr}`);

      // Another device aims at this device's command and state topics: refused, and never routed.
      for (const topic of [`devices/${device.id}/commands/unlock`, `devices/${device.id}/state`]) {
        const refused = await run('mosquitto_pub', [
          ...connection(version, attacker),
          '-q',
          '1',
          '-t',
          topic,
          '-m',
          '{"from":"attacker"}',
        ]);
        if (version === 'mqttv5') {
          // PUBACK 0x87; mosquitto_pub reports it and exits 0 (the connection itself was fine).
          assert.deepEqual(refused, {
            code: 0,
            signal: null,
            stdout: '',
            stderr: 'Warning: Publish 1 failed: Not authorized.\n',
          });
        } else {
          // 3.1.1 has no negative PUBACK: the broker closes the connection [MQTT-3.3.5-2].
          assert.deepEqual(refused, {
            code: 7,
            signal: null,
            stdout: '',
            stderr: 'Error: The connection was lost.\n',
          });
        }
      }

      // The cloud sends a command (broker-originated, as the platform does): the first and only
      // message the subscriber sees, so nothing of the attacker's came before it.
      const command = `devices/${device.id}/commands/reboot`;
      tp.platform.broker.publishSystem(command, Buffer.from('{"cmd":"reboot"}'), { retain: false, qos: 1 });
      await exited;
      assert.equal(sub.exitCode, 0, stderr);
      const messages = stdout.split('\n').filter((line) => line.startsWith('devices/'));
      assert.deepEqual(messages, [`${command} {"cmd":"reboot"}`]);
      assert.equal(stdout.includes('attacker'), false);
    });

    test(`[CHAN-6] ${label(version)}: mosquitto_sub is refused other devices' topics and wildcards above its own`, async () => {
      const [device, other] = [a(), b()];
      const refused = version === 'mqttv5' ? 0x87 : 0x80;
      const filters = [`devices/${other.id}/#`, '#', 'devices/+/telemetry', '+/#', `devices/${device.id}/state`];
      const result = await run('mosquitto_sub', [
        ...connection(version, device),
        '-q',
        '1',
        ...filters.flatMap((f) => ['-t', f]),
        '-E',
        '-d',
      ]);
      assert.equal(result.code, 0, result.stderr);
      // libmosquitto prints the SUBACK's codes in order: four refusals, the own topic granted at QoS 1.
      assert.match(
        result.stdout,
        new RegExp(`^Subscribed \\(mid: 1\\): ${[refused, refused, refused, refused, 1].join(', ')}$`, 'm'),
      );

      const denied = await run('mosquitto_sub', [
        ...connection(version, device),
        '-q',
        '1',
        '-t',
        `devices/${other.id}/telemetry`,
        '-E',
      ]);
      assert.deepEqual(denied, {
        code: 0,
        signal: null,
        stdout: '',
        stderr: 'All subscription requests were denied.\n',
      });
    });

    test(`[DEV-3] ${label(version)}: a wrong, missing or borrowed secret is refused with the CONNACK code mosquitto prints`, async () => {
      const [device, other] = [a(), b()];
      const wrong = `${device.secret.slice(0, -1)}${device.secret.endsWith('A') ? 'B' : 'A'}`;
      const attempts: Array<[string, string[]]> = [
        ['a wrong secret', connection(version, { id: device.id, secret: wrong })],
        // -u without -P: CONNECT carries a user name and no password.
        ['no password', connection(version, device).slice(0, -2)],
        ["another device's secret", connection(version, { id: device.id, secret: other.secret })],
        [
          'a user name that is not a device ID',
          [...connection(version, device, { clientId: '' }).slice(0, -4), '-u', 'admin', '-P', device.secret],
        ],
      ];
      const before = tp.platform.broker.stats.connectsAccepted;
      for (const [what, args] of attempts) {
        for (const tool of ['mosquitto_pub', 'mosquitto_sub'] as const) {
          const action =
            tool === 'mosquitto_pub'
              ? ['-q', '1', '-t', `devices/${device.id}/telemetry`, '-m', '{"x":1}']
              : ['-q', '1', '-t', `devices/${device.id}/state`, '-E'];
          const result = await run(tool, [...args, ...action]);
          assert.equal(result.code, BAD_CREDENTIALS[version].code, `${tool}, ${what}: ${result.stderr}`);
          assert.equal(result.stderr.split('\n')[0], BAD_CREDENTIALS[version].line, `${tool}, ${what}`);
        }
      }
      // Its own secret with another device's client ID: identifier rejected.
      const spoof = await run('mosquitto_pub', [
        ...connection(version, device, { clientId: other.id }),
        '-q',
        '1',
        '-t',
        `devices/${device.id}/telemetry`,
        '-m',
        '{"x":1}',
      ]);
      assert.equal(spoof.code, IDENTIFIER_REJECTED[version].code, spoof.stderr);
      assert.equal(spoof.stderr.split('\n')[0], IDENTIFIER_REJECTED[version].line);
      assert.equal(tp.platform.broker.stats.connectsAccepted, before, 'no attempt was accepted');
    });

    test(`[CHAN-1] ${label(version)}: MQTT without TLS on the TLS port gets no CONNACK`, async () => {
      const device = a();
      const stats = tp.platform.broker.stats;
      const opened = stats.connectionsOpened;
      const refusalsLogged = () => tp.logs.lines.filter((l) => l.includes('mqtt: TLS handshake refused')).length;
      const logged = refusalsLogged();
      const result = await run('mosquitto_pub', [
        ...connection(version, device, { tls: false }),
        '-q',
        '1',
        '-t',
        `devices/${device.id}/telemetry`,
        '-m',
        '{"plain":true}',
        '-d',
      ]);
      // The CONNECT went out in the clear; the server answered with no MQTT at all and closed.
      assert.equal(result.code, 7, result.stderr);
      assert.equal(result.stderr, 'Error: The connection was lost.\n');
      assert.match(result.stdout, /sending CONNECT/);
      assert.doesNotMatch(result.stdout, /received CONNACK/);
      assert.equal(stats.connectionsOpened, opened, 'the bytes never reached the MQTT broker');
      assert.ok(refusalsLogged() > logged, 'the refused handshake is logged');
    });

    test(`[CHAN-1] ${label(version)}: a client limited to TLS 1.1 is refused by the server; TLS 1.2 with AEAD connects`, async () => {
      const device = a();
      const publish = ['-q', '1', '-t', `devices/${device.id}/state`, '-m', '{"tls":"test"}', '-d'];
      const tls11 = await run(
        'mosquitto_pub',
        [...connection(version, device), '--tls-version', 'tlsv1.1', '--ciphers', 'DEFAULT@SECLEVEL=0', ...publish],
        { OPENSSL_CONF: join(work, 'openssl-TLSv1.1.cnf') },
      );
      // 1 when the failure surfaces while connecting, 8 (MOSQ_ERR_TLS) when it surfaces in the loop.
      assert.ok(tls11.code === 1 || tls11.code === 8, `exit ${tls11.code}: ${tls11.stderr}`);
      assert.match(tls11.stderr, /A TLS error occurred\./);
      // The alert is received from the server: the client did offer TLS 1.1 and the server refused it.
      assert.match(tls11.stdout + tls11.stderr, /SSL routines::tlsv1 alert protocol version/);
      assert.doesNotMatch(tls11.stdout, /received CONNACK/);

      // TLS 1.2 with only CBC suites: refused too (AEAD only).
      const cbc = await run(
        'mosquitto_pub',
        [
          ...connection(version, device),
          '--tls-version',
          'tlsv1.2',
          '--ciphers',
          'ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA256',
          ...publish,
        ],
        { OPENSSL_CONF: join(work, 'openssl-TLSv1.2.cnf') },
      );
      assert.ok(cbc.code === 1 || cbc.code === 8, `exit ${cbc.code}: ${cbc.stderr}`);
      assert.match(cbc.stdout + cbc.stderr, /SSL routines::sslv3 alert handshake failure/);

      // The same forced configuration at TLS 1.2 with the default (AEAD) suites connects: the refusal
      // above is about the version and the suites, not the test's setup.
      const tls12 = await run(
        'mosquitto_pub',
        [...connection(version, device), '--tls-version', 'tlsv1.2', ...publish],
        {
          OPENSSL_CONF: join(work, 'openssl-TLSv1.2.cnf'),
        },
      );
      assert.equal(tls12.code, 0, tls12.stderr);
      assert.match(tls12.stdout, /received PUBACK \(Mid: 1, RC:0\)/);
    });
  }
});

function skipReason(): string | false {
  if (missing.length === 0) return false;
  // On CI the test below fails instead of this suite passing silently.
  return `mosquitto clients not installed (${missing.join(', ')}): apt-get install mosquitto-clients`;
}

if (missing.length > 0 && onCi) {
  test('[CHAN-1] [CHAN-6] the mosquitto clients are installed on CI', () => {
    assert.fail(`missing on CI: ${missing.join(', ')} (apt-get install mosquitto-clients)`);
  });
}
