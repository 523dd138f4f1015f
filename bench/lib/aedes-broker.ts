// aedes as the bench's "no security" peer: aedes 1.x (in-memory persistence, no authenticate or
// authorize hooks: any client may connect and publish anywhere) behind node:tls with the same kind of
// TLS material as the Mosquitto peer (lib/bench-pki.ts, ECDSA P-256). It runs in its own process
// (bench/aedes-process.ts, forked through lib/bench-child.ts) so that it never shares an event loop
// with the load generator. Same handle as Mosquitto's (PeerBroker):
//
//   const broker = await startAedes();
//   … connect to mqtts://127.0.0.1:${broker.port} pinning broker.caPem (MQTT 3.1.1: aedes has no MQTT 5) …
//   await broker.stop();
import { BenchChild } from './bench-child.ts';
import { generateBenchPki } from './bench-pki.ts';
import { type PeerBroker, procCpuMicros, procRssBytes } from './peer-broker.ts';

const AEDES_SCRIPT = new URL('../aedes-process.ts', import.meta.url);
const START_TIMEOUT_MS = 20_000;

export type AedesRunnerMessage = { type: 'start'; certPem: string; keyPem: string } | { type: 'stop' };
export type AedesChildMessage =
  | { type: 'ready'; port: number; pid: number; version: string }
  | { type: 'failed'; message: string }
  | { type: 'stopped' };

export interface AedesBroker extends PeerBroker {
  /** aedes' package version, e.g. "1.2.0". */
  readonly version: string;
}

/** Forks bench/aedes-process.ts and resolves once it listens (TLS on 127.0.0.1, a port of its choosing). */
export async function startAedes(options: { prefix?: string } = {}): Promise<AedesBroker> {
  const child = new BenchChild<AedesRunnerMessage, AedesChildMessage>({
    script: AEDES_SCRIPT,
    name: 'aedes',
    prefix: options.prefix ?? '[aedes] ',
    databaseUrl: '',
  });
  try {
    const pki = generateBenchPki(child.dataDir);
    const ready = child.next('ready', START_TIMEOUT_MS, 'aedes did not start');
    child.send({ type: 'start', certPem: pki.certPem, keyPem: pki.keyPem });
    const { port, pid, version } = await ready;
    let gone = false;
    return {
      port,
      pid,
      version,
      caPem: pki.caPem,
      rssBytes: () => (gone ? 0 : procRssBytes(pid)),
      cpuMicros: () => (gone ? 0 : procCpuMicros(pid)),
      // BenchChild: the 'stop' message, SIGKILL after its own bound, then the directory is removed.
      stop: () => child.stop().then(() => void (gone = true)),
    };
  } catch (error) {
    await child.stop();
    throw error;
  }
}
