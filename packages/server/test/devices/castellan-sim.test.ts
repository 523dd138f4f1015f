// castellan-sim against a real platform on both databases: ten devices for a few seconds (every one
// connects, telemetry is acknowledged and stored, commands are answered, progress is reported), a run
// that ends after its messages, schema-conforming telemetry for a product with data points, and the
// CLI as a subprocess: totals on stdout, progress on stderr, clear errors and exit code 2 on bad input.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { runSimulation, type SimulationProgress, TelemetryGenerator, parseTelemetrySchema } from '@castellan/device';
import { dialectCases } from '../helpers/dialects.ts';
import {
  provisionTenant,
  request,
  startTestPlatform,
  type Tenant,
  type TestPlatform,
} from '../helpers/test-platform.ts';

const BIN = fileURLToPath(new URL('../../../device/bin/castellan-sim.js', import.meta.url));

/** Runs the CLI with Node 26 (process.execPath); never rejects on a non-zero exit. */
function sim(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, ...args], { timeout: 60_000 }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

for (const dialect of await dialectCases()) {
  describe(`castellan-sim on ${dialect.name}`, { skip: dialect.skip }, () => {
    let tp: TestPlatform;
    let tenant: Tenant;
    let dir: string;

    before(async () => {
      tp = await startTestPlatform(dialect.name);
      tenant = await provisionTenant(tp, 12);
      dir = mkdtempSync(join(tmpdir(), 'castellan-sim-'));
    });
    after(async () => {
      await tp?.close();
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    const stored = async (ids: string[]) => {
      const rows = await tp.query<{ n: number | string }>(
        `select count(*) as n from telemetry where device_id in (${ids.map((_, i) => `$${i + 1}`).join(', ')})`,
        ids,
      );
      return Number(rows[0]!.n);
    };

    test('ten devices connect, report telemetry for a few seconds, answer a command; every ack is stored', async () => {
      const devices = tenant.devices.slice(0, 10);
      const progress: SimulationProgress[] = [];
      let commandSent = false;
      let commandId: string | undefined;
      const run = runSimulation({
        url: tp.platform.mqttUrl,
        ca: tp.platform.caPem,
        devices,
        ratePerSecond: 5,
        durationMs: 4000,
        onProgress: (p) => {
          progress.push(p);
          if (!commandSent && p.online === devices.length) {
            commandSent = true;
            void request(tp.platform, 'POST', `/v1/devices/${devices[0]!.id}/commands`, {
              token: tenant.vendorToken,
              body: { name: 'blink', params: { times: 2 } },
            }).then((res) => {
              assert.equal(res.status, 202, res.text);
              commandId = res.body.id as string;
            });
          }
        },
      });
      const result = await run;
      assert.equal(result.devices, 10);
      assert.equal(result.connected, 10, JSON.stringify(progress.at(-1)));
      assert.equal(result.errors, 0, progress.at(-1)?.lastError ?? '');
      // 10 devices × 5/s × 4 s = 200 at most (plus the first tick); well above a third of it.
      assert.ok(result.messages >= 70 && result.messages <= 220, `messages ${result.messages}`);
      assert.ok(result.elapsedMs >= 4000 && result.elapsedMs < 12_000);
      assert.equal(await stored(devices.map((d) => d.id)), result.messages, 'every acknowledged message is stored');
      assert.ok(progress.length >= 3, 'progress about once a second, and at the end');
      assert.equal(progress.at(-1)!.done, true);
      assert.ok(commandSent, 'all ten were online at once');
      assert.ok(commandId);
      const command = await request(
        tp.platform,
        'GET',
        `/v1/devices/${devices[0]!.id}/commands/${commandId}?wait=true`,
        {
          token: tenant.vendorToken,
        },
      );
      assert.equal(command.body.status, 'succeeded', command.text);
      assert.deepEqual(command.body.result, { simulated: true, name: 'blink' });
      assert.equal(result.commands, 1);
    });

    test('a run ends by itself after its messages; telemetry follows a data-point schema', async () => {
      const devices = tenant.devices.slice(10, 12);
      const before = await stored(devices.map((d) => d.id));
      const result = await runSimulation({
        url: tp.platform.mqttUrl,
        ca: tp.platform.caPem,
        devices,
        ratePerSecond: 50,
        messagesPerDevice: 4,
        schema: parseTelemetrySchema({
          dataPoints: {
            properties: [
              { code: 'level', type: 'integer', min: 10, max: 20, step: 5 },
              { code: 'celsius', type: 'number', min: 18.5, max: 19, step: 0.1 },
              { code: 'mode', type: 'enum', values: ['eco', 'boost'] },
            ],
          },
        }),
      });
      assert.deepEqual(
        { connected: result.connected, messages: result.messages, errors: result.errors },
        { connected: 2, messages: 8, errors: 0 },
      );
      assert.equal((await stored(devices.map((d) => d.id))) - before, 8);
      const rows = await tp.query<{ payload: Uint8Array | string }>(
        'select payload from telemetry where device_id = $1 order by seq desc limit 4',
        [devices[0]!.id],
      );
      for (const row of rows) {
        const value = JSON.parse(Buffer.from(row.payload as Uint8Array).toString('utf8'));
        assert.ok([10, 15, 20].includes(value.level), JSON.stringify(value));
        assert.ok([18.5, 18.6, 18.7, 18.8, 18.9, 19].includes(value.celsius), JSON.stringify(value));
        assert.ok(['eco', 'boost'].includes(value.mode));
      }
      // The generator never leaves the schema, whatever its random source says.
      const generator = new TelemetryGenerator(
        parseTelemetrySchema({ properties: [{ code: 'x', type: 'number', min: -1, max: 1, step: 0.25 }] }),
      );
      for (let i = 0; i < 500; i++) {
        const { x } = generator.next() as { x: number };
        assert.ok(x >= -1 && x <= 1 && Number.isInteger((x + 1) / 0.25), String(x));
      }
    });

    test('the CLI runs from a devices file and a directory of device files; bad input gets a clear error', async () => {
      const ca = join(dir, 'ca.pem');
      writeFileSync(ca, tp.platform.caPem);
      const devicesFile = join(dir, 'devices.json');
      writeFileSync(devicesFile, JSON.stringify({ productId: tenant.productId, devices: tenant.devices.slice(0, 3) }));
      const run = await sim([
        '--url',
        tp.platform.mqttUrl,
        '--ca',
        ca,
        '--devices',
        devicesFile,
        '--count',
        '2',
        '--rate',
        '10',
        '--duration',
        '3',
      ]);
      assert.equal(run.code, 0, run.stderr);
      const totals = JSON.parse(run.stdout);
      assert.equal(totals.connected, 2);
      assert.equal(totals.devices, 2);
      assert.ok(totals.messages > 0);
      // Not a terminal: one progress line a second, the last one final.
      const lines = run.stderr.trim().split('\n');
      assert.ok(lines.length >= 2, run.stderr);
      assert.match(
        lines.at(-1)!,
        /^castellan-sim \d+\.\ds {2}connected \d+\/2 {2}messages \d+ \(\d+\.\d\/s\) {2}errors 0/,
      );
      assert.ok(!run.stderr.includes('\r'), 'no carriage returns outside a terminal');

      // A directory of factory device files (<deviceId>.json: deviceId, secret, mqttUrl, caPem).
      const images = join(dir, 'images');
      mkdirSync(images);
      for (const d of tenant.devices.slice(3, 5)) {
        writeFileSync(
          join(images, `${d.id}.json`),
          JSON.stringify({
            format: 'castellan-device-credentials/1',
            deviceId: d.id,
            secret: d.secret,
            mqttUrl: tp.platform.mqttUrl,
            caPem: tp.platform.caPem,
          }),
        );
      }
      writeFileSync(join(images, 'receipts.json'), '{}');
      const fromImages = await sim(['--devices', images, '--messages', '2', '--rate', '20']);
      assert.equal(fromImages.code, 0, fromImages.stderr);
      assert.deepEqual(JSON.parse(fromImages.stdout).messages, 4);

      // A wrong secret: the run completes with failures (exit 1) and says so.
      writeFileSync(
        join(dir, 'wrong.json'),
        JSON.stringify({ devices: [{ id: tenant.devices[5]!.id, secret: 'not-the-secret' }] }),
      );
      const wrong = await sim([
        '--url',
        tp.platform.mqttUrl,
        '--ca',
        ca,
        '--devices',
        join(dir, 'wrong.json'),
        '--duration',
        '1',
      ]);
      assert.equal(wrong.code, 1, wrong.stderr);
      assert.match(wrong.stderr, /1 of 1 devices never connected, 1 errors/);

      const notJson = join(dir, 'bad.json');
      writeFileSync(notJson, '{"devices": [');
      const badId = join(dir, 'bad-id.json');
      writeFileSync(badId, JSON.stringify({ devices: [{ id: 'dev-1', secret: 's' }] }));
      const usage: Array<[string[], RegExp]> = [
        [[], /--devices is required/],
        [['--devices', devicesFile, '--bogus'], /Unknown option '--bogus'/],
        [
          ['--devices', join(dir, 'missing.json'), '--url', tp.platform.mqttUrl, '--ca', ca],
          /cannot read --devices .*missing\.json: ENOENT/,
        ],
        [['--devices', notJson, '--ca', ca], /bad\.json is not valid JSON/],
        [['--devices', badId, '--ca', ca], /devices\[0\]: no valid device ID/],
        [['--devices', devicesFile, '--ca', ca], /--url is required/],
        [['--devices', devicesFile, '--ca', ca, '--url', 'mqtt://127.0.0.1:1883'], /--url must be mqtts:\/\//],
        [['--devices', devicesFile, '--url', tp.platform.mqttUrl, '--ca', devicesFile], /is not a PEM certificate/],
        [
          ['--devices', devicesFile, '--url', tp.platform.mqttUrl, '--ca', ca, '--count', '4'],
          /--count 4 asks for more devices than .* holds \(3\)/,
        ],
        [
          ['--devices', devicesFile, '--url', tp.platform.mqttUrl, '--ca', ca, '--rate', '0'],
          /--rate must be a number above 0/,
        ],
        [
          ['--devices', devicesFile, '--url', tp.platform.mqttUrl, '--ca', ca, '--rate', 'fast'],
          /--rate must be a number/,
        ],
        [
          ['--devices', devicesFile, '--url', tp.platform.mqttUrl, '--ca', ca, '--messages', '2.5'],
          /--messages must be a whole number/,
        ],
        [['--devices', devicesFile, '--url', tp.platform.mqttUrl, '--ca', ca, '--duration', '-1'], /--duration/],
        [
          ['--devices', devicesFile, '--url', tp.platform.mqttUrl, '--ca', ca, '--schema', devicesFile],
          /--schema .*: the schema has no properties/,
        ],
      ];
      for (const [args, message] of usage) {
        const res = await sim(args);
        assert.equal(res.code, 2, `${args.join(' ')}: ${res.stderr}`);
        assert.match(res.stderr, message, args.join(' '));
        assert.match(res.stderr, /Run castellan-sim --help for usage\./);
        assert.equal(res.stdout, '');
      }
      const help = await sim(['--help']);
      assert.equal(help.code, 0);
      assert.match(help.stdout, /^Usage: castellan-sim --devices/);
    });
  });
}
