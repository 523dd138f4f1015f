// TLS handshake cost of the MQTT listener (CHAN-2): the lite profile (ECDSA P-256 leaf under a P-256
// root, 2 levels, AES-128-GCM only) against an RSA-2048 root → intermediate → leaf chain on the standard
// profile, each full and resumed (session ticket), over TLS 1.2 and TLS 1.3; plus the lite profile with
// the hybrid post-quantum group (CHAN-8) to show what ML-KEM adds.
//   handshakes/s   one server thread, `concurrency` clients at once from the runner's main thread
//   bytes          counted on the raw TCP socket under the client's TLS socket, both directions, from
//                  connect until the handshake is done and (full handshakes) the ticket has arrived
//   server CPU     process.threadCpuUsage() of the server's worker thread around a batch, ÷ handshakes
// The server is built by the listener's own tlsServerOptions; it asks for a client certificate (as the
// MQTT listener does, DEV-5), which adds a CertificateRequest to every full handshake.
import { once } from 'node:events';
import net from 'node:net';
import tls from 'node:tls';
import { Worker } from 'node:worker_threads';
import { makeServerChain, type ServerChain } from '../../packages/server/test/helpers/tls-chains.ts';
import type { HandshakeServerData, HandshakeServerReply } from '../lib/tls-handshake-server.ts';
import type { CaseResult, Column, Measure, MeasureContext } from '../lib/measure.ts';

interface Plan {
  /** Handshakes per batch (warm-up, then measured) of each kind. */
  handshakes: number;
  warmup: number;
  concurrency: number;
}

const QUICK: Plan = { handshakes: 60, warmup: 10, concurrency: 4 };
const FULL: Plan = { handshakes: 3000, warmup: 300, concurrency: 16 };

interface Scenario {
  label: string;
  chain: 'p256-2' | 'rsa2048-3';
  profile: 'lite' | 'standard';
  version: 'TLSv1.2' | 'TLSv1.3';
  /** What the client offers (a small chip: P-256 only). */
  groups: string;
}

const SCENARIOS: readonly Scenario[] = [
  { label: 'lite, P-256 2-level, TLS 1.2', chain: 'p256-2', profile: 'lite', version: 'TLSv1.2', groups: 'P-256' },
  { label: 'lite, P-256 2-level, TLS 1.3', chain: 'p256-2', profile: 'lite', version: 'TLSv1.3', groups: 'P-256' },
  {
    label: 'lite, P-256 2-level, TLS 1.3, X25519MLKEM768',
    chain: 'p256-2',
    profile: 'lite',
    version: 'TLSv1.3',
    groups: 'X25519MLKEM768',
  },
  { label: 'RSA-2048 3-level, TLS 1.2', chain: 'rsa2048-3', profile: 'standard', version: 'TLSv1.2', groups: 'P-256' },
  { label: 'RSA-2048 3-level, TLS 1.3', chain: 'rsa2048-3', profile: 'standard', version: 'TLSv1.3', groups: 'P-256' },
];

const COLUMNS: readonly Column[] = [
  { key: 'cipher', label: 'suite' },
  { key: 'fullPerSecond', label: 'full hs/s' },
  { key: 'resumedPerSecond', label: 'resumed hs/s' },
  { key: 'fullClientBytes', label: 'full bytes c→s' },
  { key: 'fullServerBytes', label: 'full bytes s→c' },
  { key: 'resumedClientBytes', label: 'resumed bytes c→s' },
  { key: 'resumedServerBytes', label: 'resumed bytes s→c' },
  { key: 'fullCpuMicros', label: 'server CPU µs/full', digits: 0 },
  { key: 'resumedCpuMicros', label: 'server CPU µs/resumed', digits: 0 },
  // Lite rows against the RSA-2048 row of the same TLS version, measured in the same run (the goals).
  { key: 'fullVsRsa', label: 'full hs/s ÷ RSA full', digits: 2 },
  { key: 'resumedVsRsaFull', label: 'resumed hs/s ÷ RSA full', digits: 2 },
  { key: 'fullBytesVsRsa', label: 'full bytes ÷ RSA full', digits: 2 },
];

interface Handshake {
  clientBytes: number;
  serverBytes: number;
  reused: boolean;
  cipher: string;
  session: Buffer | null;
}

class HandshakeServer {
  readonly #worker: Worker;
  readonly port: number;
  private constructor(worker: Worker, port: number) {
    this.#worker = worker;
    this.port = port;
  }

  static async start(data: HandshakeServerData): Promise<HandshakeServer> {
    const worker = new Worker(new URL('../lib/tls-handshake-server.ts', import.meta.url), { workerData: data });
    const [reply] = (await once(worker, 'message')) as [HandshakeServerReply];
    if (!('port' in reply)) throw new Error('the handshake server did not report its port');
    return new HandshakeServer(worker, reply.port);
  }

  async cpuMicros(): Promise<number> {
    const reply = once(this.#worker, 'message') as Promise<[HandshakeServerReply]>;
    this.#worker.postMessage('cpu');
    const [answer] = await reply;
    if (!('cpuMicros' in answer)) throw new Error('unexpected answer from the handshake server');
    return answer.cpuMicros;
  }

  async stop(): Promise<void> {
    this.#worker.postMessage('stop');
    await once(this.#worker, 'exit');
  }
}

/** One handshake; bytes are read off the TCP socket the TLS socket runs over. */
async function handshake(port: number, chain: ServerChain, scenario: Scenario, session?: Buffer): Promise<Handshake> {
  const raw = net.connect({ host: '127.0.0.1', port });
  const socket = tls.connect({
    socket: raw,
    ca: chain.rootPem,
    servername: 'localhost',
    minVersion: scenario.version,
    maxVersion: scenario.version,
    ecdhCurve: scenario.groups,
    ...(session ? { session } : {}),
  });
  const signal = AbortSignal.timeout(10_000);
  try {
    const ticket = once(socket, 'session', { signal }) as Promise<[Buffer]>;
    ticket.catch(() => {});
    await once(socket, 'secureConnect', { signal });
    if (!socket.authorized) throw new Error(`certificate not verified: ${String(socket.authorizationError)}`);
    const reused = socket.isSessionReused();
    // A full handshake is done for the device once it holds the ticket it will resume with.
    const newSession = reused ? null : (await ticket)[0];
    return {
      clientBytes: raw.bytesWritten,
      serverBytes: raw.bytesRead,
      reused,
      cipher: socket.getCipher().name,
      session: newSession,
    };
  } finally {
    socket.destroy();
  }
}

/** `count` handshakes, `concurrency` at a time; every one must be of the expected kind. */
async function batch(
  count: number,
  concurrency: number,
  run: () => Promise<Handshake>,
  expectReused: boolean,
): Promise<Handshake[]> {
  const results: Handshake[] = [];
  let next = 0;
  const lane = async () => {
    while (next < count) {
      next++;
      const result = await run();
      if (result.reused !== expectReused) throw new Error(`a handshake was ${result.reused ? '' : 'not '}resumed`);
      results.push(result);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, lane));
  return results;
}

const mean = (values: number[]) => values.reduce((a, b) => a + b, 0) / values.length;

async function runScenario(
  context: MeasureContext,
  plan: Plan,
  scenario: Scenario,
  chains: Record<Scenario['chain'], ServerChain>,
): Promise<CaseResult> {
  const chain = chains[scenario.chain];
  let server: HandshakeServer | undefined;
  try {
    server = await HandshakeServer.start({
      options: {
        cert: chain.certPem,
        key: chain.keyPem,
        minVersion: 'TLSv1.2',
        groups: 'X25519MLKEM768:X25519:P-256:P-384',
        profile: scenario.profile,
      },
    });
    const port = server.port;
    context.progress(`tls-handshakes ${scenario.label}: ${plan.handshakes} full, ${plan.handshakes} resumed`);
    const first = await handshake(port, chain, scenario);
    const ticket = first.session!;
    await batch(plan.warmup, plan.concurrency, () => handshake(port, chain, scenario), false);
    await batch(plan.warmup, plan.concurrency, () => handshake(port, chain, scenario, ticket), true);

    const measure = async (resumed: boolean) => {
      const cpuBefore = await server!.cpuMicros();
      const started = performance.now();
      const results = await batch(
        plan.handshakes,
        plan.concurrency,
        () => handshake(port, chain, scenario, resumed ? ticket : undefined),
        resumed,
      );
      const seconds = (performance.now() - started) / 1000;
      const cpu = (await server!.cpuMicros()) - cpuBefore;
      return {
        perSecond: results.length / seconds,
        clientBytes: mean(results.map((r) => r.clientBytes)),
        serverBytes: mean(results.map((r) => r.serverBytes)),
        cpuMicros: cpu / results.length,
      };
    };
    const full = await measure(false);
    const resumed = await measure(true);
    return {
      measure: 'tls-handshakes',
      case: scenario.label,
      ok: true,
      metrics: {
        cipher: first.cipher,
        fullPerSecond: full.perSecond,
        resumedPerSecond: resumed.perSecond,
        fullClientBytes: full.clientBytes,
        fullServerBytes: full.serverBytes,
        resumedClientBytes: resumed.clientBytes,
        resumedServerBytes: resumed.serverBytes,
        fullCpuMicros: full.cpuMicros,
        resumedCpuMicros: resumed.cpuMicros,
      },
      details: {
        concurrency: plan.concurrency,
        handshakes: plan.handshakes,
        chain: scenario.chain,
        chainLevels: chain.levels,
        profile: scenario.profile,
        version: scenario.version,
        groups: scenario.groups,
      },
    };
  } catch (error) {
    return { measure: 'tls-handshakes', case: scenario.label, ok: false, error: (error as Error).message, metrics: {} };
  } finally {
    await server?.stop();
  }
}

const numberOf = (r: CaseResult, key: string): number | null => {
  const value = r.metrics[key];
  return typeof value === 'number' && Number.isFinite(value) ? value : null;
};
const ratioOf = (a: number | null, b: number | null): number | null =>
  a === null || b === null || b <= 0 ? null : Math.round((a / b) * 100) / 100;

/**
 * The goals' ratios, on each P-256 row against the RSA-2048 row of the same TLS version: full handshakes/s
 * (goal ≥ 1.7), resumed handshakes/s against RSA's full ones (what a fleet reconnecting with tickets
 * costs against one without a cheap chain; goal ≥ 3), and the full handshake's bytes both ways (goal ≤ 0.5).
 */
function addRsaRatios(results: CaseResult[]): void {
  const rsaOf = (version: unknown) =>
    results.find((r) => r.ok && r.details?.chain === 'rsa2048-3' && r.details.version === version);
  for (const r of results) {
    if (!r.ok || r.details?.chain !== 'p256-2') continue;
    const rsa = rsaOf(r.details.version);
    if (!rsa) continue;
    const bytes = (c: CaseResult) => {
      const sent = numberOf(c, 'fullClientBytes');
      const received = numberOf(c, 'fullServerBytes');
      return sent === null || received === null ? null : sent + received;
    };
    r.metrics.fullVsRsa = ratioOf(numberOf(r, 'fullPerSecond'), numberOf(rsa, 'fullPerSecond'));
    r.metrics.resumedVsRsaFull = ratioOf(numberOf(r, 'resumedPerSecond'), numberOf(rsa, 'fullPerSecond'));
    r.metrics.fullBytesVsRsa = ratioOf(bytes(r), bytes(rsa));
    r.details.rsaCase = rsa.case;
    // Server CPU per full handshake, RSA ÷ lite: the server's capacity ratio, free of the clients' share.
    r.details.fullServerCpuRsaOverLite = ratioOf(numberOf(rsa, 'fullCpuMicros'), numberOf(r, 'fullCpuMicros'));
    r.details.resumedServerCpuRsaFullOverLite = ratioOf(
      numberOf(rsa, 'fullCpuMicros'),
      numberOf(r, 'resumedCpuMicros'),
    );
  }
}

export const tlsHandshakesMeasure: Measure = {
  name: 'tls-handshakes',
  description:
    'TLS handshakes on the MQTT listener options: lite profile (ECDSA P-256, 2 levels) vs RSA-2048 3 levels, full and resumed by ticket; client offers P-256 unless named; bytes on the TCP socket both ways (full: until the ticket arrived); server CPU from the server thread alone',
  columns: COLUMNS,
  async run(context) {
    const plan = context.quick ? QUICK : FULL;
    const chains = {
      'p256-2': await makeServerChain('p256', 2, 'Bench Lite'),
      'rsa2048-3': await makeServerChain('rsa2048', 3, 'Bench RSA'),
    };
    const results: CaseResult[] = [];
    for (const scenario of SCENARIOS) results.push(await runScenario(context, plan, scenario, chains));
    addRsaRatios(results);
    return results;
  },
};
