// The machine a run happened on, recorded with its results (numbers mean little without it).
import { availableParallelism, cpus, totalmem } from 'node:os';

export interface MachineInfo {
  cpus: number;
  cpuModel: string;
  memoryGiB: number;
  node: string;
  platform: string;
}

export function machineInfo(): MachineInfo {
  return {
    cpus: availableParallelism(),
    cpuModel: cpus()[0]?.model.trim() ?? 'unknown',
    memoryGiB: Math.round(totalmem() / 2 ** 30),
    node: process.version,
    platform: `${process.platform} ${process.arch}`,
  };
}

export interface MachineCpuTimes {
  /** CPU time spent not idle, summed over all cores. */
  busyMs: number;
  /** Elapsed time per core (total over all cores / core count): busy / wall is in cores, like cpuUsage. */
  wallMs: number;
}

/** Busy CPU time of the whole machine, to diff around a measurement window. */
export function machineCpuTimes(): MachineCpuTimes {
  const all = cpus();
  let busyMs = 0;
  let totalMs = 0;
  for (const { times } of all) {
    const total = times.user + times.nice + times.sys + times.idle + times.irq;
    totalMs += total;
    busyMs += total - times.idle;
  }
  return { busyMs, wallMs: totalMs / Math.max(1, all.length) };
}

/**
 * CPU the machine spends while the bench is idle (in cores, like cpuUsage): other work on a small machine
 * (a test suite, a build) takes cores from the server and the generator and makes the numbers noisy.
 */
export async function backgroundCpuPct(ms: number): Promise<number> {
  const before = machineCpuTimes();
  await new Promise((resolve) => setTimeout(resolve, ms));
  const after = machineCpuTimes();
  return (100 * (after.busyMs - before.busyMs)) / Math.max(1, after.wallMs - before.wallMs);
}
