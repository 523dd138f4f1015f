#!/usr/bin/env node
// Plain JavaScript on purpose: this file must run on any Node.js to say which one Castellan needs.
// The simulator itself is TypeScript run through Node's type stripping (Node >= 24).
const major = Number(process.versions.node.split('.')[0]);
if (!(major >= 24)) {
  process.stderr.write(
    `castellan-sim needs Node.js >= 24 (this is ${process.version}).\n` +
      'Run it through npm (npx castellan-sim): the project pins Node 26 as a devDependency.\n',
  );
  process.exit(1);
}
const { simMain } = await import('../src/sim/sim-cli.ts');
// Ctrl-C (or SIGTERM) ends the run cleanly: devices disconnect, the totals are printed.
const stop = new globalThis.AbortController();
for (const signal of ['SIGINT', 'SIGTERM']) process.once(signal, () => stop.abort());
process.exitCode = await simMain(process.argv.slice(2), {
  stdout: process.stdout,
  stderr: process.stderr,
  signal: stop.signal,
});
process.exit();
