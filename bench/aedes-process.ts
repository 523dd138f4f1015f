// The "no security" peer broker of the bench (lib/aedes-broker.ts): aedes 1.x with its in-memory
// persistence and no hooks, behind node:tls on 127.0.0.1. Started by the runner with fork():
//   runner → 'start' {certPem, keyPem} → listens on a free port → 'ready' {port, pid, version}
//   runner → 'stop' (or disconnect, SIGINT, SIGTERM) → closes the listener and the broker, exits.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import tls from 'node:tls';
import { Aedes } from 'aedes';
import type { AedesChildMessage, AedesRunnerMessage } from './lib/aedes-broker.ts';

let broker: Aedes | undefined;
let server: tls.Server | undefined;
let stopping = false;

function send(message: AedesChildMessage): Promise<void> {
  if (!process.connected) return Promise.resolve();
  return new Promise((resolve) => process.send!(message, undefined, undefined, () => resolve()));
}

async function start(certPem: string, keyPem: string): Promise<void> {
  broker = await Aedes.createBroker();
  const aedes = broker;
  server = tls.createServer({ cert: certPem, key: keyPem, minVersion: 'TLSv1.2' }, (socket) => {
    socket.setNoDelay(true);
    aedes.handle(socket);
  });
  server.on('tlsClientError', (_error, socket) => socket.destroy());
  await new Promise<void>((resolve, reject) => {
    server!.once('error', reject);
    server!.listen(0, '127.0.0.1', resolve);
  });
  // aedes' package exports hide its package.json: it is read next to the entry point.
  const entry = createRequire(import.meta.url).resolve('aedes');
  const version = (JSON.parse(readFileSync(join(dirname(entry), 'package.json'), 'utf8')) as { version: string })
    .version;
  await send({ type: 'ready', port: (server.address() as { port: number }).port, pid: process.pid, version });
}

function stop(code: number): void {
  if (stopping) return;
  stopping = true;
  const exit = () => void send({ type: 'stopped' }).finally(() => process.exit(code));
  // Connections are dropped, not drained: the bench is over.
  server?.close();
  if (broker) broker.close(exit);
  else exit();
  setTimeout(() => process.exit(code), 2_000).unref();
}

process.on('message', (message: AedesRunnerMessage) => {
  if (message.type === 'start') {
    start(message.certPem, message.keyPem).catch(async (error: unknown) => {
      await send({ type: 'failed', message: (error as Error).message });
      stop(1);
    });
  } else if (message.type === 'stop') stop(0);
});
process.on('disconnect', () => stop(1));
process.on('SIGINT', () => stop(130));
process.on('SIGTERM', () => stop(143));
