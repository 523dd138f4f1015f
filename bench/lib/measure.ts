// What a measure is: a named set of cases whose metrics become one Markdown table and JSON records.

export interface MeasureContext {
  /** Smoke run: a few seconds in total, correctness of the path over precision of the numbers. */
  quick: boolean;
  /** PostgreSQL for the cases that use it. */
  postgresUrl: string;
  /** Progress for the operator (stderr; stdout carries the results). */
  progress(line: string): void;
}

export type MetricValue = number | string | null;

export interface CaseResult {
  measure: string;
  /** e.g. "sqlite, 50 devices". */
  case: string;
  ok: boolean;
  /** Why the case failed (ok = false). */
  error?: string;
  metrics: Record<string, MetricValue>;
  /** Anything else worth keeping in the JSON (database version, raw counters). */
  details?: Record<string, unknown>;
}

export interface Column {
  key: string;
  label: string;
  /** Decimal places for numbers (default 0). */
  digits?: number;
}

export interface Measure {
  readonly name: string;
  readonly description: string;
  readonly columns: readonly Column[];
  run(context: MeasureContext): Promise<CaseResult[]>;
}
