// Envelope encryption as the platform uses it: KeyService.encrypt / decrypt (a fresh data key per
// value, wrapped under the tenant's KEK, the value sealed under the data key), per crypto suite, for small
// fields (32-byte values, e.g. device secrets) and 1 MiB blobs; and the bare AEAD of the same suite
// (suite(name).seal / open from @castellan/protocol) with one fixed key, so that the cost of the envelope
// shows. Runs in this process (see bench/README.md for why): the work is synchronous crypto with no I/O
// once the tenant's key is cached, and the timing loop yields to the event loop every 50 ms so that the
// runner's watchdog and signal handlers stay live.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance, PerformanceObserver } from 'node:perf_hooks';
import { type SuiteName, suite as cryptoSuite } from '@castellan/protocol';
import { KeyService } from '../../packages/server/src/keys/key-service.ts';
import {
  type KeyStoreDatabase,
  migrateToLatest,
  openStore,
  type Store,
} from '../../packages/server/src/store/index.ts';
import type { CaseResult, Column, Measure, MeasureContext, MetricValue } from '../lib/measure.ts';

type Path = 'envelope' | 'primitive';

interface Size {
  label: string;
  bytes: number;
  /** Distinct values cycled through (a power of two), so that not every operation sees the same input. */
  pool: number;
}

interface Plan {
  /** Per direction (encrypt, then decrypt): JIT, caches and the batch size settle in this. */
  warmupMs: number;
  /** Per direction, split into `windows` equal parts whose rates give the spread. */
  measureMs: number;
  windows: number;
}

// About 5 s per case (row) in a full run, 1 s with --quick: two directions of warm-up + measurement each.
const QUICK: Plan = { warmupMs: 100, measureMs: 400, windows: 4 };
const FULL: Plan = { warmupMs: 500, measureMs: 2_000, windows: 5 };

const SUITES: readonly SuiteName[] = ['intl', 'sm'];
const SIZES: readonly Size[] = [
  { label: '32 B', bytes: 32, pool: 1_024 },
  { label: '1 MiB', bytes: 2 ** 20, pool: 4 },
];
const PATHS: readonly Path[] = ['envelope', 'primitive'];

const CIPHERS: Record<SuiteName, string> = { intl: 'AES-256-GCM', sm: 'SM4-GCM' };
const PATH_NAMES: Record<Path, string> = { envelope: 'KeyService', primitive: 'primitive' };

/** The event loop gets a turn this often (timers, signals, IPC of the runner). */
const SLICE_MS = 50;
/** A case whose process got less CPU than this (100 = one core) was sharing its core: flagged. */
const BUSY_CPU_PCT = 90;
/** The clock is read about this often inside a slice: every op for 1 MiB, every 15-70 for 32 B. */
const CLOCK_CHECK_US = 200;

const COLUMNS: readonly Column[] = [
  { key: 'cipher', label: 'cipher' },
  { key: 'sealedBytes', label: 'sealed B' },
  { key: 'encOpsPerSec', label: 'encrypt ops/s' },
  { key: 'encUsPerOp', label: 'encrypt µs/op', digits: 2 },
  { key: 'encMiBPerSec', label: 'encrypt MiB/s', digits: 1 },
  { key: 'decOpsPerSec', label: 'decrypt ops/s' },
  { key: 'decUsPerOp', label: 'decrypt µs/op', digits: 2 },
  { key: 'decMiBPerSec', label: 'decrypt MiB/s', digits: 1 },
  { key: 'encVsPrimitive', label: 'encrypt × primitive', digits: 2 },
  { key: 'decVsPrimitive', label: 'decrypt × primitive', digits: 2 },
  { key: 'cpuPct', label: 'process CPU %' },
  { key: 'gcPct', label: 'GC %' },
];

const round2 = (x: number | null): number | null =>
  x === null || !Number.isFinite(x) ? null : Math.round(x * 100) / 100;
const fmt = (n: number) => Math.round(n).toLocaleString('en-US');

// ---- Temporary key stores: removed on every path, Ctrl-C included (the runner exits through process.exit) ----

const tempDirs = new Set<string>();
process.on('exit', () => {
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});

// ---- The timing loop ----

/** Runs `n` operations; a promise only when the operations are asynchronous. */
type Batch = (n: number) => void | Promise<void>;

interface Timing {
  ops: number;
  /** Time spent inside the batches (the turns given to the event loop between slices left out). */
  seconds: number;
  /** Rate of each window, for the spread. */
  windowRates: number[];
  /** process.cpuUsage() (user + system) over the measurement, µs. */
  cpuMicros: number;
  /** Wall time of the measurement, the turns given to the event loop included, ms. */
  wallMs: number;
  /** Time V8 spent in garbage collection pauses on the main thread during the measurement, ms. */
  gcMs: number;
}

const yieldToLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

/** Operations done and busy time spent in about `ms` of busy time, `k` operations between clock reads. */
async function runFor(batch: Batch, ms: number, k: number): Promise<{ ops: number; ms: number }> {
  let ops = 0;
  let busy = 0;
  while (busy < ms) {
    const start = performance.now();
    const end = start + Math.min(SLICE_MS, ms - busy);
    let now = start;
    while (now < end) {
      await batch(k);
      ops += k;
      now = performance.now();
    }
    busy += now - start;
    await yieldToLoop();
  }
  return { ops, ms: busy };
}

async function time(batch: Batch, plan: Plan): Promise<Timing> {
  // Warm-up one operation at a time, then as many between clock reads as fit in CLOCK_CHECK_US.
  const warm = await runFor(batch, plan.warmupMs, 1);
  const k = Math.max(1, Math.min(4_096, Math.floor((CLOCK_CHECK_US / 1000) * (warm.ops / warm.ms))));

  let gcMs = 0;
  const observer = new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) gcMs += entry.duration;
  });
  observer.observe({ entryTypes: ['gc'] });
  const cpu0 = process.cpuUsage();
  const wall0 = performance.now();
  let ops = 0;
  let busyMs = 0;
  const windowRates: number[] = [];
  for (let w = 0; w < plan.windows; w++) {
    const r = await runFor(batch, plan.measureMs / plan.windows, k);
    ops += r.ops;
    busyMs += r.ms;
    windowRates.push((r.ops * 1000) / r.ms);
  }
  const wallMs = performance.now() - wall0;
  const cpu = process.cpuUsage(cpu0);
  // GC entries are delivered on a later turn of the event loop.
  await yieldToLoop();
  observer.disconnect();
  return {
    ops,
    seconds: busyMs / 1000,
    windowRates,
    cpuMicros: cpu.user + cpu.system,
    wallMs,
    gcMs,
  };
}

// ---- What is encrypted and decrypted ----

interface Subject {
  suite: SuiteName;
  size: Size;
  path: Path;
  /** Builds the sealed pool and the two batches; throws when a value does not round-trip. */
  prepare(): Promise<{ sealedBytes: number; encrypt: Batch; decrypt: Batch; check(): void }>;
}

function plaintextPool(size: Size): { values: Buffer[]; contexts: string[] } {
  const values = Array.from({ length: size.pool }, () => randomBytes(size.bytes));
  // Contexts shaped like the platform's own, which bind a value to its row and column: for a device
  // secret `devices.secret_ciphertext:<device id>`, with a 24-character protocol device ID.
  const contexts = values.map((_, i) =>
    size.bytes <= 64
      ? `devices.secret_ciphertext:01${randomBytes(11).toString('hex')}`
      : `bench.blob:${i}:${randomBytes(8).toString('hex')}`,
  );
  return { values, contexts };
}

function mismatch(where: string): Error {
  return new Error(`${where}: decrypted value differs from the plaintext`);
}

function envelopeSubject(suite: SuiteName, size: Size, service: () => Promise<KeyService>, tenant: string): Subject {
  return {
    suite,
    size,
    path: 'envelope',
    async prepare() {
      const keys = await service();
      const { values, contexts } = plaintextPool(size);
      const sealed: Buffer[] = [];
      for (let i = 0; i < values.length; i++) {
        sealed.push(await keys.encrypt(tenant, values[i]!, contexts[i]!));
        if (!(await keys.decrypt(tenant, sealed[i]!, contexts[i]!)).equals(values[i]!)) throw mismatch('KeyService');
      }
      const mask = values.length - 1;
      let e = 0;
      let d = 0;
      let last: Buffer | undefined;
      return {
        sealedBytes: sealed[0]!.length,
        async encrypt(n) {
          for (let j = 0; j < n; j++, e++) await keys.encrypt(tenant, values[e & mask]!, contexts[e & mask]!);
        },
        async decrypt(n) {
          for (let j = 0; j < n; j++, d++) last = await keys.decrypt(tenant, sealed[d & mask]!, contexts[d & mask]!);
        },
        check() {
          if (!last?.equals(values[(d - 1) & mask]!)) throw mismatch('KeyService, after the timed decrypts');
        },
      };
    },
  };
}

function primitiveSubject(suite: SuiteName, size: Size): Subject {
  return {
    suite,
    size,
    path: 'primitive',
    async prepare() {
      const aead = cryptoSuite(suite);
      const key = randomBytes(aead.keyBytes);
      const { values, contexts } = plaintextPool(size);
      // The caller's associated data, encoded once: the bare AEAD as a caller with bytes at hand uses it.
      const aads = contexts.map((c) => Buffer.from(c, 'utf8'));
      const sealed = values.map((v, i) => aead.seal(key, v, aads[i]!));
      sealed.forEach((s, i) => {
        if (!aead.open(key, s, aads[i]!).equals(values[i]!)) throw mismatch('primitive');
      });
      const mask = values.length - 1;
      let e = 0;
      let d = 0;
      let last: Buffer | undefined;
      return {
        sealedBytes: sealed[0]!.length,
        encrypt(n) {
          for (let j = 0; j < n; j++, e++) aead.seal(key, values[e & mask]!, aads[e & mask]!);
        },
        decrypt(n) {
          for (let j = 0; j < n; j++, d++) last = aead.open(key, sealed[d & mask]!, aads[d & mask]!);
        },
        check() {
          if (!last?.equals(values[(d - 1) & mask]!)) throw mismatch('primitive, after the timed decrypts');
        },
      };
    },
  };
}

// ---- One KeyService per suite, on its own temporary SQLite key store ----

interface SuiteService {
  tenant: string;
  /** Opens the store, migrates it and creates the tenant's key on first call; the same promise after. */
  get(): Promise<KeyService>;
  /** First use of the tenant: create + activate its KEK (two SQLite writes), ms. */
  keyCreationMs: number | null;
  close(): Promise<void>;
}

function suiteService(suite: SuiteName): SuiteService {
  let dir: string | undefined;
  let store: Store<KeyStoreDatabase> | undefined;
  let ready: Promise<KeyService> | undefined;
  const s: SuiteService = {
    tenant: `vnd_${randomBytes(16).toString('base64url')}`,
    keyCreationMs: null,
    get() {
      ready ??= (async () => {
        dir = mkdtempSync(join(tmpdir(), 'castellan-bench-'));
        tempDirs.add(dir);
        store = await openStore<KeyStoreDatabase>({ url: '', dataDir: dir, sqliteFile: 'keys.db', poolMax: 1 });
        await migrateToLatest(store.db, store.dialect, 'keys');
        const keys = new KeyService({
          db: store.db,
          rootKey: randomBytes(32),
          audit: async () => {},
          defaultSuite: suite,
        });
        const t = performance.now();
        await keys.ensureKey(s.tenant);
        s.keyCreationMs = performance.now() - t;
        return keys;
      })();
      return ready;
    },
    async close() {
      await store?.close();
      if (dir) {
        rmSync(dir, { recursive: true, force: true });
        tempDirs.delete(dir);
      }
    },
  };
  return s;
}

// ---- Cases ----

function caseName(subject: Subject): string {
  return `${subject.suite}, ${subject.size.label}, ${PATH_NAMES[subject.path]}`;
}

function spreadPct(t: Timing): number {
  const rate = t.ops / t.seconds;
  return (100 * (Math.max(...t.windowRates) - Math.min(...t.windowRates))) / rate;
}

async function runCase(context: MeasureContext, plan: Plan, subject: Subject): Promise<CaseResult> {
  const base = { measure: 'keys', case: caseName(subject) };
  const fixed: Record<string, MetricValue> = { cipher: CIPHERS[subject.suite] };
  try {
    const prepared = await subject.prepare();
    const enc = await time(prepared.encrypt, plan);
    const dec = await time(prepared.decrypt, plan);
    prepared.check();
    const mib = subject.size.bytes / 2 ** 20;
    const cpuPct = (100 * (enc.cpuMicros + dec.cpuMicros)) / ((enc.wallMs + dec.wallMs) * 1000);
    const encRate = enc.ops / enc.seconds;
    const decRate = dec.ops / dec.seconds;
    context.progress(
      `keys: ${base.case}: encrypt ${fmt(encRate)} ops/s, decrypt ${fmt(decRate)} ops/s` +
        (subject.size.bytes >= 2 ** 20
          ? ` (${(encRate * mib).toFixed(0)} / ${(decRate * mib).toFixed(0)} MiB/s)`
          : '') +
        (cpuPct < BUSY_CPU_PCT ? `; WARNING: only ${cpuPct.toFixed(0)} % of a core, the machine is busy` : ''),
    );
    return {
      ...base,
      ok: true,
      metrics: {
        ...fixed,
        sealedBytes: prepared.sealedBytes,
        encOpsPerSec: round2(encRate),
        encUsPerOp: round2(1e6 / encRate),
        encMiBPerSec: round2(encRate * mib),
        decOpsPerSec: round2(decRate),
        decUsPerOp: round2(1e6 / decRate),
        decMiBPerSec: round2(decRate * mib),
        // Filled in by run() once the primitive of the same suite and size is measured.
        encVsPrimitive: null,
        decVsPrimitive: null,
        // In cores (100 = one): well below 100 means other work on the machine took the core.
        cpuPct: round2(cpuPct),
        gcPct: round2((100 * (enc.gcMs + dec.gcMs)) / (1000 * (enc.seconds + dec.seconds))),
      },
      details: {
        suite: subject.suite,
        path: subject.path,
        valueBytes: subject.size.bytes,
        distinctValues: subject.size.pool,
        encryptOps: enc.ops,
        encryptSeconds: round2(enc.seconds),
        encryptWindowSpreadPct: round2(spreadPct(enc)),
        encryptCpuPct: round2((100 * enc.cpuMicros) / (enc.wallMs * 1000)),
        encryptGcPct: round2((100 * enc.gcMs) / (enc.seconds * 1000)),
        decryptOps: dec.ops,
        decryptSeconds: round2(dec.seconds),
        decryptWindowSpreadPct: round2(spreadPct(dec)),
        decryptCpuPct: round2((100 * dec.cpuMicros) / (dec.wallMs * 1000)),
        decryptGcPct: round2((100 * dec.gcMs) / (dec.seconds * 1000)),
      },
    };
  } catch (error) {
    return { ...base, ok: false, error: (error as Error).message, metrics: fixed };
  }
}

export const keysMeasure: Measure = {
  name: 'keys',
  description:
    'Envelope encryption through KeyService.encrypt / decrypt (fresh data key per value, wrapped under the tenant KEK) per crypto suite, against the bare AEAD of the suite; one caller, one operation at a time',
  columns: COLUMNS,
  async run(context) {
    const plan = context.quick ? QUICK : FULL;
    const results: CaseResult[] = [];
    for (const suite of SUITES) {
      const service = suiteService(suite);
      try {
        for (const size of SIZES) {
          const rows: Partial<Record<Path, CaseResult>> = {};
          for (const path of PATHS) {
            const subject =
              path === 'envelope'
                ? envelopeSubject(suite, size, () => service.get(), service.tenant)
                : primitiveSubject(suite, size);
            context.progress(`keys: ${caseName(subject)}: measuring`);
            const result = await runCase(context, plan, subject);
            if (path === 'envelope' && service.keyCreationMs !== null) {
              result.details = { ...result.details, keyStore: 'SQLite', keyCreationMs: round2(service.keyCreationMs) };
            }
            rows[path] = result;
            results.push(result);
          }
          const envelope = rows.envelope;
          const primitive = rows.primitive;
          if (envelope?.ok && primitive?.ok) {
            // Time per operation relative to the bare AEAD: 2.5 means the envelope takes 2.5 times as long.
            const ratio = (primitiveRate: MetricValue | undefined, envelopeRate: MetricValue | undefined) =>
              typeof primitiveRate === 'number' && typeof envelopeRate === 'number'
                ? round2(primitiveRate / envelopeRate)
                : null;
            envelope.metrics.encVsPrimitive = ratio(primitive.metrics.encOpsPerSec, envelope.metrics.encOpsPerSec);
            envelope.metrics.decVsPrimitive = ratio(primitive.metrics.decOpsPerSec, envelope.metrics.decOpsPerSec);
          }
        }
      } finally {
        await service.close();
      }
    }
    return results;
  },
};
