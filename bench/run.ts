// Castellan benchmark runner: `npm run bench [-- options]` (see bench/README.md).
// Runs the selected measures one after the other, prints a Markdown table per measure on stdout
// (progress goes to stderr), writes bench/results/latest.json, and exits non-zero if any case failed.
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { stopAllBenchChildren } from './lib/bench-child.ts';
import { evaluateGoals, type GoalResult, goalsTable } from './lib/goals.ts';
import { backgroundCpuPct, type MachineInfo, machineInfo } from './lib/machine-info.ts';
import { markdownTable } from './lib/markdown-table.ts';
import type { CaseResult, Measure, MeasureContext } from './lib/measure.ts';
import { auditMeasure } from './measures/audit.ts';
import { brokerThroughputMeasure } from './measures/broker-throughput.ts';
import { commandRttMeasure } from './measures/command-rtt.ts';
import { connectionsMeasure } from './measures/connections.ts';
import { httpAuthMeasure } from './measures/http-auth.ts';
import { keysMeasure } from './measures/keys.ts';
import { overloadMeasure } from './measures/overload.ts';
import { secureChannelMeasure } from './measures/secure-channel.ts';
import { telemetryMeasure } from './measures/telemetry.ts';
import { tlsHandshakesMeasure } from './measures/tls-handshakes.ts';

const MEASURES: readonly Measure[] = [
  telemetryMeasure,
  auditMeasure,
  keysMeasure,
  httpAuthMeasure,
  commandRttMeasure,
  connectionsMeasure,
  tlsHandshakesMeasure,
  secureChannelMeasure,
  brokerThroughputMeasure,
  overloadMeasure,
];

const DEFAULT_POSTGRES_URL = 'postgres://postgres@127.0.0.1:5432/test';
const RESULTS_FILE = fileURLToPath(new URL('./results/latest.json', import.meta.url));
/** Background CPU (100 = one core) above which the run is flagged as noisy. */
const BUSY_WARNING_PCT = 20;
/** Last line of defence against a hang nobody foresaw; every wait inside is bounded already. */
/** CASTELLAN_BENCH_WATCHDOG_SECONDS raises the full run's for long runs (connections at 100,000 devices). */
// Quick: ten measures of a few seconds each, some starting brokers and platforms (about 2 min in all).
const WATCHDOG_MS = {
  quick: 360_000,
  full: (Number(process.env.CASTELLAN_BENCH_WATCHDOG_SECONDS) || 1_800) * 1000,
};

const USAGE = `Usage: npm run bench [-- options]

Options:
  --quick               smoke run of a few seconds (CI); numbers are not meaningful
  --only <name>         run only this measure (${MEASURES.map((m) => m.name).join(', ')}); repeatable
  --json-out <file>     also write the JSON results to this file
  --postgres-url <url>  PostgreSQL for the PostgreSQL cases (default ${DEFAULT_POSTGRES_URL})
  -h, --help            show this help`;

interface RunReport {
  date: string;
  mode: 'quick' | 'full';
  machine: MachineInfo;
  /** CPU busy (in cores, 100 = one) before the run started, from other processes. */
  backgroundCpuPct: number;
  durationSeconds: number;
  results: CaseResult[];
  /** The seven goals judged from these results (lib/goals.ts). */
  goals: GoalResult[];
}

function fail(message: string, code = 1): never {
  process.stderr.write(`bench: ${message}\n`);
  process.exit(code);
}

function parseOptions() {
  try {
    return parseArgs({
      args: process.argv.slice(2),
      options: {
        quick: { type: 'boolean', default: false },
        only: { type: 'string', multiple: true },
        'json-out': { type: 'string' },
        'postgres-url': { type: 'string', default: DEFAULT_POSTGRES_URL },
        help: { type: 'boolean', short: 'h', default: false },
      },
      strict: true,
      allowPositionals: false,
    }).values;
  } catch (error) {
    return fail(`${(error as Error).message}\n\n${USAGE}`, 2);
  }
}

function writeJson(file: string, report: RunReport): void {
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, `${JSON.stringify(report, null, 2)}\n`);
}

async function main(): Promise<number> {
  const options = parseOptions();
  if (options.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  const unknown = (options.only ?? []).filter((name) => !MEASURES.some((m) => m.name === name));
  if (unknown.length)
    fail(`unknown measure ${unknown.join(', ')} (known: ${MEASURES.map((m) => m.name).join(', ')})`, 2);
  const selected = options.only ? MEASURES.filter((m) => options.only!.includes(m.name)) : MEASURES;
  const mode = options.quick ? 'quick' : 'full';

  const watchdog = setTimeout(() => {
    process.stderr.write(`bench: no result after ${WATCHDOG_MS[mode] / 1000} s; stopping\n`);
    void stopAllBenchChildren(10_000).finally(() => process.exit(1));
  }, WATCHDOG_MS[mode]);
  watchdog.unref();

  const context: MeasureContext = {
    quick: options.quick,
    postgresUrl: options['postgres-url'],
    progress: (line) => process.stderr.write(`bench: ${line}\n`),
  };
  const background = await backgroundCpuPct(options.quick ? 300 : 2_000);
  if (background > BUSY_WARNING_PCT) {
    context.progress(
      `WARNING: the machine is already busy (${background.toFixed(0)} % of a core before the run); numbers will be low and noisy`,
    );
  }
  const started = performance.now();
  const results: CaseResult[] = [];
  const tables: string[] = [];
  for (const measure of selected) {
    const measureResults = await measure.run(context);
    results.push(...measureResults);
    tables.push(`### ${measure.name}\n\n${measure.description}.\n\n${markdownTable(measure.columns, measureResults)}`);
  }
  clearTimeout(watchdog);

  const report: RunReport = {
    date: new Date().toISOString(),
    mode,
    machine: machineInfo(),
    backgroundCpuPct: Math.round(background),
    durationSeconds: Math.round((performance.now() - started) / 100) / 10,
    results,
    goals: evaluateGoals(results),
  };
  writeJson(RESULTS_FILE, report);
  if (options['json-out']) writeJson(resolve(options['json-out']), report);

  const m = report.machine;
  process.stdout.write(
    `## Castellan bench (${mode}, ${report.date.slice(0, 10)}; ${m.cpus} CPUs ${m.cpuModel}, ${m.memoryGiB} GiB, ` +
      `Node ${m.node}; background CPU ${report.backgroundCpuPct} %)\n\n` +
      `${tables.join('\n\n')}\n\n` +
      `### Goals\n\n${mode === 'quick' ? 'Smoke run: the figures are not meaningful, only the paths are checked.\n\n' : ''}` +
      `${goalsTable(report.goals)}\n`,
  );
  const failed = results.filter((r) => !r.ok);
  for (const r of failed) process.stderr.write(`bench: FAILED ${r.measure} (${r.case}): ${r.error}\n`);
  process.stderr.write(
    `bench: ${results.length - failed.length}/${results.length} cases ok in ${report.durationSeconds} s; results in ${RESULTS_FILE}\n`,
  );
  return failed.length ? 1 : 0;
}

// Ctrl-C reaches the platform processes too; give them a moment to close and drop their schemas.
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    process.stderr.write(`bench: ${signal}, stopping\n`);
    void stopAllBenchChildren(10_000).finally(() => process.exit(130));
  });
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => fail((error as Error).stack ?? String(error)),
);
