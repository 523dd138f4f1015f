#!/usr/bin/env node
// Plain JavaScript on purpose: this file must run on any Node.js to say which one Castellan needs.
// Castellan itself is TypeScript run through Node's type stripping (Node >= 24).
const major = Number(process.versions.node.split('.')[0]);
if (!(major >= 24)) {
  process.stderr.write(
    `castellan needs Node.js >= 24 (this is ${process.version}).\n` +
      'Run it through npm (npm start, npm test, npx castellan): the project pins Node 26 as a devDependency.\n',
  );
  process.exit(1);
}
await import('../src/cli/main.ts');
