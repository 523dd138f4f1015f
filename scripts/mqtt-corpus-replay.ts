// Replays ../shared/mqtt-corpus (1,483 Mosquitto broker cases) against a broker on plain TCP and
// reports how many pass and why the others fail (grouped). Run:
//   node scripts/mqtt-corpus-replay.ts                 Castellan's conformance listener, in this process
//   node scripts/mqtt-corpus-replay.ts --port 1884     a broker already listening on 127.0.0.1:1884
//   node scripts/mqtt-corpus-replay.ts --mosquitto     a private Mosquitto started on a free port
// Options: --json <file> (every outcome), --filter <text> (cases whose file, group or name contain it),
// --wait-ms <n> (bound of each wait, default 1500). Not a test: it measures; the issue-6 test suite
// turns it into assertions with a reviewed exceptions list.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { corpusAvailable, CORPUS_DIR, loadCorpus, replayCorpus } from '../packages/server/test/helpers/mqtt-corpus.ts';

const { values } = parseArgs({
  options: {
    port: { type: 'string' },
    mosquitto: { type: 'boolean', default: false },
    json: { type: 'string' },
    filter: { type: 'string' },
    'wait-ms': { type: 'string', default: '1500' },
  },
  strict: true,
});

if (!corpusAvailable()) {
  process.stderr.write(`the corpus is not at ${CORPUS_DIR} (set CASTELLAN_MQTT_CORPUS)\n`);
  process.exit(2);
}

async function freePort(): Promise<number> {
  const server = net.createServer().listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((r) => server.close(r));
  return port;
}

async function waitForPort(port: number): Promise<void> {
  for (let i = 0; i < 100; i++) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port }, () => {
        s.destroy();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`nothing listens on 127.0.0.1:${port}`);
}

const cleanups: Array<() => Promise<void> | void> = [];
let port: number;
let target: string;
if (values.port) {
  port = Number(values.port);
  target = `127.0.0.1:${port}`;
} else if (values.mosquitto) {
  port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'corpus-mosquitto-'));
  writeFileSync(join(dir, 'mosquitto.conf'), `listener ${port} 127.0.0.1\nallow_anonymous true\npersistence false\n`);
  const child = spawn('mosquitto', ['-c', join(dir, 'mosquitto.conf')], { stdio: 'ignore' });
  cleanups.push(() => {
    child.kill('SIGTERM');
    rmSync(dir, { recursive: true, force: true });
  });
  await waitForPort(port);
  target = `Mosquitto on 127.0.0.1:${port}`;
} else {
  const { startConformanceBroker } = await import('../packages/server/test/helpers/conformance-broker.ts');
  const broker = await startConformanceBroker();
  cleanups.push(() => broker.close());
  port = broker.port;
  target = `Castellan's conformance listener on 127.0.0.1:${port}`;
}

try {
  const filter = values.filter;
  const cases = loadCorpus().filter((c) => !filter || `${c.file} ${c.group} ${c.name}`.includes(filter));
  const started = Date.now();
  const outcomes = await replayCorpus('127.0.0.1', port, cases, { ms: Number(values['wait-ms']) });
  const failed = outcomes.filter((o) => !o.ok);
  const reasons = new Map<string, number>();
  for (const f of failed) {
    const key = (f.detail ?? '').replace(/[0-9a-f]{6,}/g, '…');
    reasons.set(key, (reasons.get(key) ?? 0) + 1);
  }
  process.stdout.write(
    `${target}: ${outcomes.length - failed.length}/${outcomes.length} cases pass in ${((Date.now() - started) / 1000).toFixed(1)} s\n`,
  );
  for (const [reason, n] of [...reasons].sort((a, b) => b[1] - a[1])) process.stdout.write(`  ${n} × ${reason}\n`);
  if (values.json) writeFileSync(values.json, `${JSON.stringify(outcomes, null, 1)}\n`);
} finally {
  for (const c of cleanups) await c();
}
