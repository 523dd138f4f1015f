// The seven goals of the benchmarks issue (issue 9), judged from one run's results: each is met, not met,
// or not measured (its measure did not run, or every case it reads failed), with the figure it was judged
// on. Each goal reads named metrics of named measures; bench/README.md ("Goals") says how each is judged.
// A goal that holds several cases (SQLite and PostgreSQL, TLS 1.2 and 1.3, 10 and 100 devices) is met only
// when every case that ran meets it; failed cases are named in the figure and judged on the others.
import type { CaseResult } from './measure.ts';

export type GoalStatus = 'met' | 'not met' | 'not measured';

export interface GoalResult {
  key: string;
  /** The goal as the issue states it. */
  goal: string;
  status: GoalStatus;
  /** What it was judged on, e.g. "SQLite: p99 12.3 ms at 998 cmd/s, 0 errors ✓". */
  figure: string;
  /** The measure it reads (`--only` name). */
  measure: string;
}

const MET = '✓';
const MISSED = '✗';

function num(r: CaseResult, key: string): number | null {
  const value = r.metrics[key];
  return typeof value === 'number' && Number.isFinite(value) ? value : null;
}

function fmt(value: number | null, digits = 0): string {
  if (value === null) return '–';
  return value.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

const casesOf = (results: readonly CaseResult[], measure: string, pick: (r: CaseResult) => boolean = () => true) =>
  results.filter((r) => r.measure === measure && pick(r));

/** One part of a goal judged on one case: its text and whether it met the bar (null: no figure). */
interface Part {
  text: string;
  met: boolean | null;
}

/** Met when every part with a figure met it; not measured when none has one. */
function judge(key: string, goal: string, measure: string, parts: readonly Part[], failed: readonly CaseResult[]) {
  const judged = parts.filter((p) => p.met !== null);
  const failures = failed.map((r) => `${r.case}: failed (${(r.error ?? 'unknown error').slice(0, 80)})`);
  const figure = [...parts.map((p) => p.text), ...failures].join('; ') || `no ${measure} result`;
  const status: GoalStatus = judged.length === 0 ? 'not measured' : judged.every((p) => p.met) ? 'met' : 'not met';
  return { key, goal, measure, status, figure } satisfies GoalResult;
}

const mark = (met: boolean | null) => (met === null ? '' : met ? ` ${MET}` : ` ${MISSED}`);

/** 1. broker-throughput: Castellan's QoS 1 msgs/s ÷ Mosquitto's, same devices, same run (vsMosquitto). */
function throughputGoal(results: readonly CaseResult[]): GoalResult {
  const cases = casesOf(results, 'broker-throughput', (r) => r.case.startsWith('Castellan'));
  const parts = cases
    .filter((r) => r.ok)
    .map((r): Part => {
      const ratio = num(r, 'vsMosquitto');
      const devices = num(r, 'devices');
      const mosquitto = casesOf(
        results,
        'broker-throughput',
        (m) => m.ok && m.case.startsWith('Mosquitto') && num(m, 'devices') === devices,
      )[0];
      const met = ratio === null ? null : ratio >= 1.0;
      return {
        text: `${fmt(devices)} devices: ${fmt(ratio, 2)}× (${fmt(num(r, 'msgsPerSec'))} vs ${fmt(mosquitto ? num(mosquitto, 'msgsPerSec') : null)} msgs/s)${mark(met)}`,
        met,
      };
    });
  return judge(
    'secure-telemetry-throughput',
    'secure telemetry throughput ≥ 1.0× Mosquitto’s on the same machine',
    'broker-throughput',
    parts,
    cases.filter((r) => !r.ok),
  );
}

/** 2. connections: the scale-mode case holds ≥ 100,000 idle TLS devices at ≤ 30 KiB of server memory each. */
function connectionsGoal(results: readonly CaseResult[]): GoalResult {
  const cases = casesOf(results, 'connections', (r) => r.case.startsWith('Castellan scale mode'));
  const parts = cases
    .filter((r) => r.ok)
    .map((r): Part => {
      const held = num(r, 'held');
      const kib = num(r, 'kibPerConnection');
      const met = held === null || kib === null ? null : held >= 100_000 && kib <= 30;
      return { text: `${r.case}: ${fmt(held)} held at ${fmt(kib, 1)} KiB each${mark(met)}`, met };
    });
  // Without a scale-mode case (--quick runs none) the single process's figure is context, not a verdict.
  if (cases.length === 0) {
    const single = casesOf(results, 'connections', (r) => r.ok && r.case.startsWith('Castellan'))[0];
    if (single) {
      parts.push({
        text: `no scale-mode case; ${single.case}: ${fmt(num(single, 'held'))} held at ${fmt(num(single, 'kibPerConnection'), 1)} KiB each`,
        met: null,
      });
    }
  }
  return judge(
    'idle-connections',
    '100,000 idle TLS devices held by one machine in scale mode, ≤ 30 KiB server memory each',
    'connections',
    parts,
    cases.filter((r) => !r.ok),
  );
}

/** 3. overload: Castellan's delivered msgs/s under twice its peak ÷ that peak (fraction). */
function overloadGoal(results: readonly CaseResult[]): GoalResult {
  const cases = casesOf(results, 'overload', (r) => r.case.startsWith('Castellan'));
  const others = casesOf(results, 'overload', (r) => r.ok && !r.case.startsWith('Castellan'))
    .map((r) => `${r.case} ${fmt(num(r, 'fraction'), 2)}`)
    .join(', ');
  const parts = cases
    .filter((r) => r.ok)
    .map((r): Part => {
      const fraction = num(r, 'fraction');
      const met = fraction === null ? null : fraction >= 0.9;
      return {
        text: `${fmt(fraction, 2)} of peak (${fmt(num(r, 'delivered'))} of ${fmt(num(r, 'peak'))} msgs/s at ${fmt(num(r, 'offered'))} offered)${mark(met)}${others ? `; ${others}` : ''}`,
        met,
      };
    });
  return judge(
    'overload',
    'under 2× overload, throughput ≥ 90% of peak',
    'overload',
    parts,
    cases.filter((r) => !r.ok),
  );
}

/** 4. tls-handshakes: lite P-256 rows against the RSA-2048 row of the same TLS version. */
function tlsGoal(results: readonly CaseResult[]): GoalResult {
  const cases = casesOf(
    results,
    'tls-handshakes',
    (r) => r.details?.chain === 'p256-2' && r.details.groups === 'P-256',
  );
  const parts = cases
    .filter((r) => r.ok)
    .map((r): Part => {
      const full = num(r, 'fullVsRsa');
      const resumed = num(r, 'resumedVsRsaFull');
      const bytes = num(r, 'fullBytesVsRsa');
      const met =
        full === null || resumed === null || bytes === null ? null : full >= 1.7 && resumed >= 3 && bytes <= 0.5;
      const version = typeof r.details?.version === 'string' ? r.details.version.replace('TLSv', 'TLS ') : r.case;
      return {
        text: `${version}: full ${fmt(full, 2)}×${mark(full === null ? null : full >= 1.7)}, resumed ${fmt(resumed, 2)}×${mark(resumed === null ? null : resumed >= 3)}, bytes ${fmt(bytes, 2)}${mark(bytes === null ? null : bytes <= 0.5)}`,
        met,
      };
    });
  return judge(
    'tls-handshakes',
    'lite-profile full handshakes ≥ 1.7× the RSA-2048 chain’s rate, ≥ 3× with resumption, ≤ 50% of its bytes',
    'tls-handshakes',
    parts,
    cases.filter((r) => !r.ok),
  );
}

/** 5. command-rtt: p99 of the full round trip < 20 ms at 1,000 commands/s offered, achieved, without errors. */
function commandGoal(results: readonly CaseResult[]): GoalResult {
  const cases = casesOf(results, 'command-rtt', (r) => num(r, 'rate') === 1_000);
  const parts = cases
    .filter((r) => r.ok)
    .map((r): Part => {
      const p99 = num(r, 'p99Ms');
      const achieved = num(r, 'achievedPerSec');
      const errors = num(r, 'errors');
      const met = p99 === null || achieved === null ? null : p99 < 20 && achieved >= 950 && errors === 0;
      return {
        text: `${r.case.split(',')[0]}: p99 ${fmt(p99, 1)} ms at ${fmt(achieved)} cmd/s achieved, ${fmt(errors)} errors${mark(met)}`,
        met,
      };
    });
  return judge(
    'command-rtt',
    'command round trip p99 < 20 ms at 1,000 commands/s',
    'command-rtt',
    parts,
    cases.filter((r) => !r.ok),
  );
}

/** 6. http-auth: authenticated device reads/s ÷ /healthz requests/s, same server, same run (ratio). */
function httpAuthGoal(results: readonly CaseResult[]): GoalResult {
  const cases = casesOf(results, 'http-auth');
  const parts = cases
    .filter((r) => r.ok)
    .map((r): Part => {
      const ratio = num(r, 'ratio');
      const met = ratio === null ? null : ratio >= 0.6;
      return {
        text: `${r.case.split(',')[0]}: ${fmt(ratio, 2)}× (${fmt(num(r, 'authRps'))} vs ${fmt(num(r, 'healthzRps'))} req/s)${mark(met)}`,
        met,
      };
    });
  return judge(
    'http-auth',
    'authenticated API requests ≥ 0.6× /healthz on the same server',
    'http-auth',
    parts,
    cases.filter((r) => !r.ok),
  );
}

/** 7. audit: appends/s, and verification time scaled to 1M entries (exact when the run appended 1M). */
function auditGoal(results: readonly CaseResult[]): GoalResult {
  const cases = casesOf(results, 'audit');
  const parts = cases
    .filter((r) => r.ok)
    .map((r): Part => {
      const rate = num(r, 'entriesPerSec');
      const entries = num(r, 'entries');
      const verify = num(r, 'verifySeconds');
      const perMillion = verify === null || !entries ? null : (verify * 1_000_000) / entries;
      const rateMet = rate === null ? null : rate >= 50_000;
      const verifyMet = perMillion === null ? null : perMillion < 10;
      const scaled = entries === 1_000_000 ? '' : ` (linear from ${fmt(entries)})`;
      return {
        text: `${r.case}: ${fmt(rate)} appends/s${mark(rateMet)}, verify 1M ${fmt(perMillion, 1)} s${scaled}${mark(verifyMet)}`,
        met: rateMet === null || verifyMet === null ? null : rateMet && verifyMet,
      };
    });
  return judge(
    'audit',
    'audit ≥ 50,000 appends/s, verification of 1M entries < 10 s',
    'audit',
    parts,
    cases.filter((r) => !r.ok),
  );
}

/** The seven goals, in the issue's order. */
export function evaluateGoals(results: readonly CaseResult[]): GoalResult[] {
  return [
    throughputGoal(results),
    connectionsGoal(results),
    overloadGoal(results),
    tlsGoal(results),
    commandGoal(results),
    httpAuthGoal(results),
    auditGoal(results),
  ];
}

export function goalsTable(goals: readonly GoalResult[]): string {
  const escape = (text: string) => text.replace(/\|/g, '\\|');
  const rows = goals.map((g) => {
    const status = g.status === 'not measured' ? 'not measured' : `**${g.status}**`;
    return `| ${escape(g.goal)} | ${status} | ${escape(g.figure)} | ${g.measure} |`;
  });
  return ['| goal | status | figure | measure |', '| --- | --- | --- | --- |', ...rows].join('\n');
}
