// The messages exchanged over the IPC channel between the bench runner and its child processes:
// bench/server-process.ts (the platform under test) and bench/audit-process.ts (the audit log).

export interface ServerStartOptions {
  /** Fresh temporary directory owned by the runner (removed by it too). */
  dataDir: string;
  /** postgres://… for PostgreSQL, '' for the embedded SQLite file. */
  databaseUrl: string;
  /** PostgreSQL schema to create and drop ('' for SQLite). */
  schema: string;
  /** Devices to provision. */
  devices: number;
  /** Merged over the bench's own overrides, one level deep per section (e.g. { mqtt: { maxInflight } }). */
  configOverrides?: Record<string, Record<string, unknown>>;
  /** The bench product's own report limits (default: none, so the guard's defaults apply). */
  reportLimits?: { perSecond: number; perDay: number };
}

export interface ProvisionedDevice {
  id: string;
  secret: string;
}

/** Cumulative counters of the platform process; the runner diffs two samples. */
export interface ServerSample {
  /** process.cpuUsage() user + system, microseconds since the process started. */
  cpuMicros: number;
  rowsWritten: number;
  batchesWritten: number;
  batchesFailed: number;
  rowsRefused: number;
  publishRefused: number;
  /** Rows in the telemetry table, when asked for (a count is not free under load). */
  storedRows: number | null;
}

export type RunnerMessage =
  | { type: 'start'; options: ServerStartOptions }
  | { type: 'sample'; countRows: boolean }
  /** Changes the bench product's report limits (devices.updateProduct); answered by 'report-limits-set'. */
  | { type: 'set-report-limits'; perSecond: number; perDay: number }
  | { type: 'stop' };

export type ServerMessage =
  | {
      type: 'ready';
      mqttUrl: string;
      httpUrl: string;
      /** Session of a person who owns the bench vendor (for the authenticated HTTP measure). */
      sessionToken: string;
      caPem: string;
      devices: ProvisionedDevice[];
      dialect: 'sqlite' | 'postgres';
      databaseVersion: string;
    }
  | { type: 'sample'; sample: ServerSample }
  | { type: 'report-limits-set' }
  | { type: 'failed'; message: string }
  | { type: 'stopped' };

// ---- bench/audit-process.ts ----

export interface AuditRunOptions {
  /** Fresh temporary directory owned by the runner (removed by it too): SQLite file, checkpoint file. */
  dataDir: string;
  /** postgres://… for PostgreSQL, '' for the embedded SQLite file. */
  databaseUrl: string;
  /** PostgreSQL schema to create and drop ('' for SQLite). */
  schema: string;
  /** Entries to append, then verify. */
  entries: number;
  /** record() promises kept outstanding. */
  window: number;
  batchMaxRows: number;
  queueMaxRows: number;
}

export interface AuditRunResult {
  dialect: 'sqlite' | 'postgres';
  databaseVersion: string;
  /** Entries whose record() resolved. */
  appended: number;
  /** record() calls that rejected (batch failure, queue full): the case fails. */
  recordFailures: number;
  firstRecordError: string | null;
  appendSeconds: number;
  /** AuditLog.stats over the append phase. */
  batches: number;
  failedBatches: number;
  refused: number;
  /** Entries that carried a source IP (sealed with the day key). */
  withSourceIp: number;
  /** Mean stored details JSON, bytes. */
  detailsBytes: number;
  /** This process, user + system, over the append phase. */
  appendCpuMicros: number;
  /** Busy CPU of the whole machine over the append phase, ms summed over the cores. */
  appendMachineBusyMs: number;
  /** Event-loop delay during the appends (monitorEventLoopDelay, ms). */
  loopDelayP99Ms: number;
  loopDelayMaxMs: number;
  checkpointSeconds: number;
  closeSeconds: number;
  verifySeconds: number;
  verifyCpuMicros: number;
  verifyOk: boolean;
  verifyEntries: number;
  verifyTreeSize: number;
  checkpointsVerified: number;
  unattested: number;
  /** The verifier's problems, as "kind at position: detail" (first few). */
  problems: string[];
  /** Database bytes after the run: SQLite page_count × page_size, PostgreSQL audit tables with indexes. */
  databaseBytes: number | null;
  /** Resident set just before and just after verification (the verifier keeps state per entry). */
  rssBeforeVerifyMiB: number;
  rssAfterVerifyMiB: number;
  /** Peak resident set of this process over the whole run (appends and verification). */
  maxRssMiB: number;
}

export type AuditRunnerMessage = { type: 'start'; options: AuditRunOptions } | { type: 'stop' };

export type AuditChildMessage =
  | { type: 'progress'; line: string }
  | { type: 'result'; result: AuditRunResult }
  | { type: 'failed'; message: string }
  | { type: 'stopped' };
