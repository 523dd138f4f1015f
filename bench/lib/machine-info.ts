// The machine a run happened on, recorded with its results (numbers mean little without it).
import { availableParallelism, cpus, totalmem } from 'node:os';
import { performance } from 'node:perf_hooks';

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
  /** CPU time spent neither idle nor waiting for I/O, summed over all cores. */
  busyMs: number;
  /** When it was read (performance.now()): busy / elapsed is in cores, like process.cpuUsage(). */
  atMs: number;
}

/** Busy CPU time of the whole machine, to diff around a measurement window. */
export function machineCpuTimes(): MachineCpuTimes {
  let busyMs = 0;
  // os.cpus() leaves out iowait, steal and softirq, so its sum is not elapsed time: only busy time is used.
  for (const { times } of cpus()) busyMs += times.user + times.nice + times.sys + times.irq;
  return { busyMs, atMs: performance.now() };
}

/**
 * CPU the machine spends while the bench is idle (in cores, like cpuUsage): other work on a small machine
 * (a test suite, a build) takes cores from the server and the generator and makes the numbers noisy.
 */
export async function backgroundCpuPct(ms: number): Promise<number> {
  const before = machineCpuTimes();
  await new Promise((resolve) => setTimeout(resolve, ms));
  const after = machineCpuTimes();
  return (100 * (after.busyMs - before.busyMs)) / Math.max(1, after.atMs - before.atMs);
}
