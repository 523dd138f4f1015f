// A platform in its own process, for tests that need two processes (e.g. limits shared over Redis).
// argv[2]: JSON config overrides. Prints one JSON line {httpUrl, mqttUrl, caPem} when up; stops on
// SIGTERM or when stdin closes.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig } from '../../src/config/index.ts';
import { startPlatform } from '../../src/platform.ts';

const dataDir = mkdtempSync(join(tmpdir(), 'castellan-child-'));
const overrides = JSON.parse(process.argv[2] ?? '{}') as Record<string, unknown>;
const config = loadConfig({ env: {}, cwd: dataDir, overrides: { ...overrides, dataDir } });
const platform = await startPlatform(config, { logDestination: { write: () => true }, notice: () => {} });
process.stdout.write(
  `${JSON.stringify({ httpUrl: platform.httpUrl, mqttUrl: platform.mqttUrl, caPem: platform.caPem })}\n`,
);
let stopping = false;
const stop = async () => {
  if (stopping) return;
  stopping = true;
  await platform.close();
  rmSync(dataDir, { recursive: true, force: true });
  process.exit(0);
};
process.on('SIGTERM', () => void stop());
process.stdin.on('end', () => void stop());
process.stdin.resume();
