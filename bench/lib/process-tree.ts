// Finding processes the runner does not hold a handle on (a platform forked by BenchChild, the workers of
// `castellan up` in scale mode) and summing their resident sets, from /proc (Linux only).
import { readdirSync, readFileSync } from 'node:fs';
import { procRssBytes } from './peer-broker.ts';

interface ProcEntry {
  pid: number;
  ppid: number;
}

function processes(): ProcEntry[] {
  const entries: ProcEntry[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      // After the command name (which may hold spaces and parentheses): state, ppid, …
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      entries.push({ pid: Number(name), ppid: Number(fields[1]) });
    } catch {
      // Gone between the listing and the read.
    }
  }
  return entries;
}

function commandLine(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ');
  } catch {
    return '';
  }
}

/** Direct children of `ppid` whose command line contains `match` (all children without it). */
export function childPids(ppid: number, match?: string): number[] {
  return processes()
    .filter((p) => p.ppid === ppid && (match === undefined || commandLine(p.pid).includes(match)))
    .map((p) => p.pid);
}

/** `pid` and all its descendants. */
export function processTree(pid: number): number[] {
  const all = processes();
  const tree = [pid];
  for (let i = 0; i < tree.length; i++) for (const p of all) if (p.ppid === tree[i]) tree.push(p.pid);
  return tree;
}

/** Sum of VmRSS over the processes, bytes (a process that is gone counts 0). */
export function totalRssBytes(pids: readonly number[]): number {
  return pids.reduce((sum, pid) => sum + procRssBytes(pid), 0);
}
