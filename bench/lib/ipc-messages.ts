// The messages exchanged over the IPC channel between the bench runner and bench/server-process.ts.

export interface ServerStartOptions {
  /** Fresh temporary directory owned by the runner (removed by it too). */
  dataDir: string;
  /** postgres://… for PostgreSQL, '' for the embedded SQLite file. */
  databaseUrl: string;
  /** PostgreSQL schema to create and drop ('' for SQLite). */
  schema: string;
  /** Devices to provision. */
  devices: number;
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
  { type: 'start'; options: ServerStartOptions } | { type: 'sample'; countRows: boolean } | { type: 'stop' };

export type ServerMessage =
  | {
      type: 'ready';
      mqttUrl: string;
      caPem: string;
      devices: ProvisionedDevice[];
      dialect: 'sqlite' | 'postgres';
      databaseVersion: string;
    }
  | { type: 'sample'; sample: ServerSample }
  | { type: 'failed'; message: string }
  | { type: 'stopped' };
