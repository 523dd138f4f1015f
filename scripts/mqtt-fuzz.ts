// A fuzzing campaign against Castellan's MQTT packet path, longer than the test suite's
// (packages/server/test/mqtt-fuzz.test.ts; helpers in packages/server/test/helpers/mqtt-fuzz.ts): the same
// streams, mutated from ../shared/mqtt-corpus, written to a broker in this process while a witness client
// stays subscribed. Every distinct failure (hang, connection left open, leaked connection, malformed
// packet from the broker, error-level log line, handler exception disguised as a protocol violation,
// uncaught error, broken witness, framer or validator exception) is printed once with the seed and case
// that reproduce it, the bytes, and those bytes minimised. Run:
//   node scripts/mqtt-fuzz.ts --runs 20000              a number of streams (default 5000)
//   node scripts/mqtt-fuzz.ts --seconds 300             as many as fit in the time
//   node scripts/mqtt-fuzz.ts --seed 42 --case 17       one generated case again, verbosely
//   node scripts/mqtt-fuzz.ts --replay 101a0004...c000 [--chunks 1]   one byte stream
// Options: --seed <n> (default: random, printed), --barrier-ms <n> (PINGREQ barrier, default 1000),
// --concurrency <n> (streams written side by side, default 1: with more, streams that share a client ID
// take each other's sessions over mid-stream), --no-minimise. Exit status 1 when anything was found.
import { parseArgs } from 'node:util';
import fc from 'fast-check';
import {
  type CaseFailure,
  checkFramerAndValidator,
  describeInput,
  type FuzzInput,
  FuzzHarness,
  fuzzInputArb,
  loadSeeds,
  minimiseBytes,
} from '../packages/server/test/helpers/mqtt-fuzz.ts';

const { values } = parseArgs({
  options: {
    runs: { type: 'string' },
    seconds: { type: 'string' },
    seed: { type: 'string' },
    case: { type: 'string' },
    replay: { type: 'string' },
    chunks: { type: 'string' },
    'barrier-ms': { type: 'string', default: '1000' },
    'no-minimise': { type: 'boolean', default: false },
    concurrency: { type: 'string', default: '1' },
  },
  strict: true,
});

const BATCH = 500;
const barrierMs = Number(values['barrier-ms']);
const seed = values.seed !== undefined ? Number(values.seed) : (Math.random() * 0x7fffffff) | 0;
const seconds = values.seconds !== undefined ? Number(values.seconds) : undefined;
const runs = values.runs !== undefined ? Number(values.runs) : seconds !== undefined ? Number.POSITIVE_INFINITY : 5_000;
const out = (line: string) => process.stdout.write(`${line}\n`);

const seeds = loadSeeds();
const arbitrary = fuzzInputArb(seeds);
/** Case `index` of the campaign with this seed: batches of BATCH streams, batch b drawn with seed + b. */
function generate(campaignSeed: number, batch: number): FuzzInput[] {
  return fc.sample(arbitrary, { seed: (campaignSeed + batch) | 0, numRuns: BATCH });
}
function caseAt(campaignSeed: number, index: number): FuzzInput {
  return generate(campaignSeed, Math.floor(index / BATCH))[index % BATCH]!;
}

const harness = await FuzzHarness.start();

/** Runs one stream and then the witness; the first problem, if any. */
async function runOne(
  input: Pick<FuzzInput, 'bytes' | 'chunks'>,
  ms = barrierMs,
): Promise<{ verdict: string; failure?: CaseFailure }> {
  const inProcess = framerProblem(input);
  if (inProcess) return { verdict: 'failed', failure: inProcess };
  const report = await harness.runCase(input, { barrierMs: ms });
  if (report.failure) return report;
  const witness = await harness.checkWitness();
  if (witness) return { verdict: 'failed', failure: { kind: 'witness', detail: witness } };
  return report;
}

function framerProblem(input: Pick<FuzzInput, 'bytes' | 'chunks'>): CaseFailure | null {
  try {
    checkFramerAndValidator(input, input.bytes.length >> 1, 40);
    return null;
  } catch (error) {
    return { kind: 'uncaught', detail: `framer/validator threw: ${(error as Error).stack}` };
  }
}

/** Runs streams side by side, then checks that all were released and the witness still works. */
async function runGroup(inputs: FuzzInput[]): Promise<Array<{ verdict: string; failure?: CaseFailure }>> {
  if (inputs.length === 1) return [await runOne(inputs[0]!)];
  const reports: Array<{ verdict: string; failure?: CaseFailure }> = await Promise.all(
    inputs.map(async (input) =>
      framerProblem(input)
        ? { verdict: 'failed', failure: framerProblem(input)! }
        : harness.runCase(input, { barrierMs, concurrent: true }),
    ),
  );
  const leak = !(await harness.connectionsSettle(harness.bystanderCount, 1_500));
  const witness = leak ? null : await harness.checkWitness();
  if (leak || witness) {
    const detail = leak
      ? `${harness.broker.connectionCount} connections after the group closed, expected ${harness.bystanderCount} (witness and observers)`
      : witness!;
    const kind = leak ? 'leak' : 'witness';
    const at = reports.findIndex((r) => !r.failure);
    if (at >= 0)
      reports[at] = {
        verdict: 'failed',
        failure: { kind, detail: `${detail} (one of ${inputs.length} streams run together)` },
      };
  }
  return reports;
}

/** Failures of one kind and reason are one finding, whatever the bytes and numbers. */
const signature = (f: CaseFailure) =>
  `${f.kind}: ${f.detail
    .replace(/[0-9a-f]{6,}/g, 'X')
    .replace(/\d+/g, 'N')
    .slice(0, 160)}`;

async function minimise(input: FuzzInput, failure: CaseFailure): Promise<string> {
  const sameKind = async (bytes: Buffer, chunks: number[]) => {
    const r = await runOne({ bytes, chunks }, Math.min(barrierMs, 300));
    return r.failure?.kind === failure.kind;
  };
  // Cut into single bytes if the whole stream in one write does not fail the same way.
  const chunks = (await sameKind(input.bytes, [])) ? [] : (await sameKind(input.bytes, [1])) ? [1] : input.chunks;
  const minimal = await minimiseBytes(input.bytes, (candidate) => sameKind(candidate, chunks));
  const confirm = await runOne({ bytes: minimal, chunks });
  return `${describeInput({ bytes: minimal, chunks })}\n    -> ${confirm.failure ? `${confirm.failure.kind}: ${confirm.failure.detail}` : 'does not fail with the full barrier'}`;
}

let exitCode: number;
if (values.replay !== undefined || values.case !== undefined) {
  const input: Pick<FuzzInput, 'bytes' | 'chunks'> & { recipe?: string } =
    values.replay !== undefined
      ? {
          bytes: Buffer.from(values.replay.replace(/\s+/g, ''), 'hex'),
          chunks: values.chunks ? values.chunks.split(',').map(Number) : [],
        }
      : caseAt(seed, Number(values.case));
  out(describeInput(input));
  if (input.recipe) out(`recipe: ${input.recipe}`);
  const report = await runOne(input);
  out(report.failure ? `FAILED ${report.failure.kind}: ${report.failure.detail}` : `ok: ${report.verdict}`);
  for (const entry of harness.logs.filter((l) => l.level >= 20 && l.msg?.startsWith('mqtt')))
    out(`log: ${JSON.stringify(entry)}`);
  exitCode = report.failure ? 1 : 0;
} else {
  out(`mqtt-fuzz: seed ${seed}, ${Number.isFinite(runs) ? `${runs} streams` : `${seconds} s`}, ${seeds.length} seeds`);
  const started = Date.now();
  const deadline = seconds !== undefined ? started + seconds * 1000 : Number.POSITIVE_INFINITY;
  const verdicts: Record<string, number> = {};
  const found = new Map<string, number>();
  const concurrency = Math.max(1, Number(values.concurrency));
  let index = 0;
  let stop = false;
  for (let batch = 0; index < runs && Date.now() < deadline && !stop; batch++) {
    const inputs = generate(seed, batch);
    for (let k = 0; k < inputs.length && index < runs && Date.now() < deadline && !stop; k += concurrency) {
      const group = inputs.slice(k, k + Math.min(concurrency, runs - index));
      const reports = await runGroup(group);
      for (const [g, report] of reports.entries()) {
        const input = group[g]!;
        const caseIndex = index + g;
        verdicts[report.verdict] = (verdicts[report.verdict] ?? 0) + 1;
        if (!report.failure) continue;
        const key = signature(report.failure);
        const seen = found.get(key) ?? 0;
        found.set(key, seen + 1);
        if (seen === 0) {
          out(
            `\nFOUND ${report.failure.kind} at --seed ${seed} --case ${caseIndex}${concurrency > 1 ? ` (--concurrency ${concurrency}, group of cases ${index}..${index + group.length - 1})` : ''}`,
          );
          out(`  ${report.failure.detail}`);
          out(`  ${describeInput(input)}`);
          out(`  recipe: ${input.recipe.slice(0, 600)}`);
          if (!values['no-minimise']) {
            // Side by side, a failure may need its neighbours: minimised only when it also fails alone.
            const alone = concurrency > 1 ? await runOne(input) : report;
            if (alone.failure?.kind === report.failure.kind) out(`  minimal: ${await minimise(input, report.failure)}`);
            else out('  does not fail alone: the group is the reproduction');
          }
        }
        if (report.failure.kind === 'witness' || report.failure.kind === 'uncaught') {
          out('  the broker is no longer trustworthy: stopping');
          stop = true;
        }
      }
      const before = index;
      index += group.length;
      if (Math.floor(index / 200) > Math.floor(before / 200)) harness.trimLogs();
      if (Math.floor(index / 5_000) > Math.floor(before / 5_000))
        out(`  ${index} streams, ${Math.round((Date.now() - started) / 1000)} s`);
    }
  }
  const elapsed = Math.round((Date.now() - started) / 1000);
  out(
    `\n${index} streams in ${elapsed} s: ${Object.entries(verdicts)
      .map(([k, v]) => `${v} ${k}`)
      .join(', ')}`,
  );
  out(`broker: ${JSON.stringify(harness.broker.stats)}`);
  if (found.size === 0) out('nothing found');
  for (const [key, count] of found) out(`  ${count} x ${key}`);
  exitCode = found.size ? 1 : 0;
}
await harness.close();
process.exit(exitCode);
