#!/usr/bin/env node
// Plain JavaScript on purpose: this file must run on any Node.js to say which one Castellan needs.
// The factory tool itself is TypeScript run through Node's type stripping (Node >= 24).
const major = Number(process.versions.node.split('.')[0]);
if (!(major >= 24)) {
  process.stderr.write(
    `castellan-factory needs Node.js >= 24 (this is ${process.version}).\n` +
      'Run it through npm (npx castellan-factory): the project pins Node 26 as a devDependency.\n',
  );
  process.exit(1);
}
const { factoryMain } = await import('../src/factory/factory-cli.ts');
process.exitCode = await factoryMain(process.argv.slice(2));
