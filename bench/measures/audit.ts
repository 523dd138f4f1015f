// The tamper-evident audit log: how fast entries go in through AuditLog.record() (group commit, Merkle
// leaf and interior nodes, sealed source IPs), and how long verifyAuditLog takes over the whole log. Both
// run in a child process (bench/audit-process.ts) with a fresh SQLite file or PostgreSQL schema per case;
// this process only starts it, shows its progress and turns its result into metrics.
import { BenchChild } from '../lib/bench-child.ts';
import type { AuditChildMessage, AuditRunnerMessage, AuditRunResult } from '../lib/ipc-messages.ts';
import type { CaseResult, Column, Measure, MeasureContext } from '../lib/measure.ts';

type Backend = 'sqlite' | 'postgres';

interface Plan {
  backends: readonly Backend[];
  /** Entries appended, then verified, per database. */
  entries: number;
  /** record() promises kept outstanding, so that group commit fills its batches. */
  window: number;
}

const QUICK: Plan = { backends: ['sqlite', 'postgres'], entries: 20_000, window: 5_000 };
const FULL: Plan = { backends: ['sqlite', 'postgres'], entries: 1_000_000, window: 5_000 };

/** The platform's default (`audit.batchMaxRows`). */
const BATCH_MAX_ROWS = 1_000;
/** Above the window, so that no record() is refused for a full queue (the default is 100,000). */
const QUEUE_MAX_ROWS = 100_000;

/** Product goals (docs): sustained appends, and verification of a million entries. */
const GOAL_ENTRIES_PER_SEC = 50_000;
const GOAL_VERIFY_SECONDS_PER_MILLION = 10;

/**
 * The child reports progress every 10 % of the appends and between phases; this long without a word
 * means it is stuck. Verification sends nothing while it runs, so this also bounds it.
 */
const STALL_TIMEOUT_MS = 180_000;

const BACKEND_NAMES: Record<Backend, string> = { sqlite: 'SQLite', postgres: 'PostgreSQL' };

const COLUMNS: readonly Column[] = [
  { key: 'entries', label: 'entries' },
  { key: 'window', label: 'in flight' },
  { key: 'entriesPerSec', label: 'entries/s' },
  { key: 'batches', label: 'batches' },
  { key: 'rowsPerCommit', label: 'rows / commit' },
  { key: 'commitsPerSec', label: 'commits/s' },
  { key: 'appendCpuPct', label: 'process CPU %' },
  { key: 'machineCpuPct', label: 'machine CPU %' },
  { key: 'loopDelayMaxMs', label: 'max loop delay ms' },
  { key: 'bytesPerEntry', label: 'DB B / entry' },
  { key: 'verifySeconds', label: 'verify s', digits: 1 },
  { key: 'verifyPerSec', label: 'verified entries/s' },
  { key: 'appendGoal', label: `≥ ${GOAL_ENTRIES_PER_SEC / 1000} k/s` },
  { key: 'verifyGoal', label: `verify 1M < ${GOAL_VERIFY_SECONDS_PER_MILLION} s` },
];

const round2 = (x: number | null): number | null =>
  x === null || !Number.isFinite(x) ? null : Math.round(x * 100) / 100;

function problemsOf(plan: Plan, r: AuditRunResult): string[] {
  return [
    r.recordFailures > 0 ? `${r.recordFailures} record() calls failed: ${r.firstRecordError}` : null,
    r.appended !== plan.entries ? `${r.appended} of ${plan.entries} entries appended` : null,
    r.failedBatches > 0 ? `${r.failedBatches} audit batches failed to commit` : null,
    !r.verifyOk ? `verification failed: ${r.problems.join('; ') || 'no problem named'}` : null,
    r.verifyEntries !== r.appended || r.verifyTreeSize !== r.appended
      ? `the verifier saw ${r.verifyEntries} entries (tree size ${r.verifyTreeSize}) for ${r.appended} appended`
      : null,
    r.checkpointsVerified < 1 || r.unattested > 0
      ? `${r.checkpointsVerified} checkpoints verified, ${r.unattested} entries not covered by one`
      : null,
  ].filter((p): p is string => p !== null);
}

async function runCase(context: MeasureContext, plan: Plan, backend: Backend): Promise<CaseResult> {
  const label = BACKEND_NAMES[backend];
  const base = { measure: 'audit', case: label };
  const fixed = { entries: plan.entries, window: plan.window };
  let child: BenchChild<AuditRunnerMessage, AuditChildMessage> | undefined;
  try {
    context.progress(`audit: ${label}: starting (${plan.entries.toLocaleString('en-US')} entries)`);
    child = new BenchChild({
      script: new URL('../audit-process.ts', import.meta.url),
      name: 'audit',
      prefix: `[audit ${backend}] `,
      databaseUrl: backend === 'postgres' ? context.postgresUrl : '',
    });
    const done = child.next('result', STALL_TIMEOUT_MS, 'the audit run did not finish', {
      onProgress: (m) => {
        if (m.type === 'progress') context.progress(`audit: ${label}: ${m.line}`);
      },
    });
    child.send({
      type: 'start',
      options: {
        dataDir: child.dataDir,
        databaseUrl: child.databaseUrl,
        schema: child.schema,
        entries: plan.entries,
        window: plan.window,
        batchMaxRows: BATCH_MAX_ROWS,
        queueMaxRows: QUEUE_MAX_ROWS,
      },
    });
    const r = (await done).result;
    const problems = problemsOf(plan, r);
    const entriesPerSec = r.appended / r.appendSeconds;
    const verifySecondsPerMillion = (r.verifySeconds * 1_000_000) / Math.max(1, r.verifyEntries);
    context.progress(
      `audit: ${label}: ${Math.round(entriesPerSec).toLocaleString('en-US')} entries/s, verified in ${r.verifySeconds.toFixed(1)} s`,
    );
    return {
      ...base,
      ok: problems.length === 0,
      ...(problems.length ? { error: problems.join('; ') } : {}),
      metrics: {
        ...fixed,
        entriesPerSec: round2(entriesPerSec),
        batches: r.batches,
        rowsPerCommit: round2(r.batches ? r.appended / r.batches : null),
        commitsPerSec: round2(r.batches / r.appendSeconds),
        appendCpuPct: round2((100 * r.appendCpuMicros) / (r.appendSeconds * 1e6)),
        // In cores like the column before it (200 % = both cores busy): beyond the process it is
        // mostly PostgreSQL and the kernel.
        machineCpuPct: round2((100 * r.appendMachineBusyMs) / (r.appendSeconds * 1000)),
        loopDelayMaxMs: round2(r.loopDelayMaxMs),
        bytesPerEntry: round2(r.databaseBytes === null ? null : r.databaseBytes / r.appended),
        verifySeconds: round2(r.verifySeconds),
        verifyPerSec: round2(r.verifyEntries / r.verifySeconds),
        // A smoke run is too short to judge either goal.
        appendGoal: context.quick ? null : entriesPerSec >= GOAL_ENTRIES_PER_SEC ? 'met' : 'not met',
        verifyGoal: context.quick
          ? null
          : verifySecondsPerMillion < GOAL_VERIFY_SECONDS_PER_MILLION
            ? 'met'
            : 'not met',
      },
      details: {
        backend,
        databaseVersion: r.databaseVersion,
        batchMaxRows: BATCH_MAX_ROWS,
        queueMaxRows: QUEUE_MAX_ROWS,
        appendSeconds: round2(r.appendSeconds),
        entriesWithSourceIp: r.withSourceIp,
        meanDetailsBytes: round2(r.detailsBytes),
        refused: r.refused,
        loopDelayP99Ms: round2(r.loopDelayP99Ms),
        checkpointSeconds: round2(r.checkpointSeconds),
        closeSeconds: round2(r.closeSeconds),
        verifyCpuPct: round2((100 * r.verifyCpuMicros) / (r.verifySeconds * 1e6)),
        verifySecondsPerMillion: round2(verifySecondsPerMillion),
        checkpointsVerified: r.checkpointsVerified,
        databaseBytes: r.databaseBytes,
        rssBeforeVerifyMiB: round2(r.rssBeforeVerifyMiB),
        rssAfterVerifyMiB: round2(r.rssAfterVerifyMiB),
        maxRssMiB: round2(r.maxRssMiB),
      },
    };
  } catch (error) {
    return { ...base, ok: false, error: (error as Error).message, metrics: fixed };
  } finally {
    await child?.stop();
  }
}

export const auditMeasure: Measure = {
  name: 'audit',
  description:
    'Audit entries/s through AuditLog.record() (group commit into the Merkle tree), then verifyAuditLog over the whole log',
  columns: COLUMNS,
  async run(context) {
    const plan = context.quick ? QUICK : FULL;
    const results: CaseResult[] = [];
    for (const backend of plan.backends) results.push(await runCase(context, plan, backend));
    return results;
  },
};
