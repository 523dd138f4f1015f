// Summarises a V8 CPU profile (`node --cpu-prof`, or BENCH_CPU_PROF_DIR=<dir> for the platform child):
// self time per function and per source file, as shares of the samples, so bench/README.md can say
// where a measure's time goes. Usage: node bench/tools/profile-summary.ts <file.cpuprofile> [top=25]
import { readFileSync } from 'node:fs';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

const [file, topArg] = process.argv.slice(2);
if (!file) {
  process.stderr.write('usage: node bench/tools/profile-summary.ts <file.cpuprofile> [top]\n');
  process.exit(2);
}
const top = Number(topArg ?? 25);
const profile = JSON.parse(readFileSync(file, 'utf8')) as Profile;
const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const selfUs = new Map<number, number>();
profile.samples.forEach((id, i) => selfUs.set(id, (selfUs.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0)));
const total = [...selfUs.values()].reduce((a, b) => a + b, 0);

const shorten = (url: string) =>
  url
    .replace(/^file:\/\/.*?\/(packages|bench|node_modules)\//, '$1/')
    .replace(/^node:/, 'node:')
    .replace(/^$/, '(native)');
const fnKey = (n: ProfileNode) =>
  `${n.callFrame.functionName || '(anonymous)'}  ${shorten(n.callFrame.url)}:${n.callFrame.lineNumber + 1}`;
const add = (map: Map<string, number>, key: string, us: number) => map.set(key, (map.get(key) ?? 0) + us);

const byFunction = new Map<string, number>();
const byFile = new Map<string, number>();
for (const [id, us] of selfUs) {
  const node = byId.get(id);
  if (!node) continue;
  add(byFunction, fnKey(node), us);
  add(byFile, shorten(node.callFrame.url) || node.callFrame.functionName, us);
}
const print = (title: string, map: Map<string, number>) => {
  process.stdout.write(`\n${title} (self time, ${(total / 1e6).toFixed(1)} s sampled)\n`);
  for (const [key, us] of [...map].sort((a, b) => b[1] - a[1]).slice(0, top)) {
    process.stdout.write(`${((100 * us) / total).toFixed(1).padStart(5)} %  ${key}\n`);
  }
};
print('functions', byFunction);
print('files', byFile);
