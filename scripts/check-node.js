// Plain JavaScript so that it runs on any Node: npm scripts must run on the Node 26 pinned in
// devDependencies (node_modules/.bin/node), which `npm ci` installs.
const major = Number(process.versions.node.split('.')[0]);
if (!(major >= 24)) {
  process.stderr.write(
    `This project needs Node.js >= 24 but npm found ${process.version}.\n` +
      'Run `npm ci` first: it installs the pinned Node 26 that npm scripts then use.\n',
  );
  process.exit(1);
}
