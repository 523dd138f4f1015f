// The `castellan` command line.
import { parseArgs } from 'node:util';
import { CONFIG_KEYS, loadConfig, redactConfig } from '../config/index.ts';
import { CastellanError } from '../errors/index.ts';
import { VERSION } from '../platform.ts';
import { auditCommand, auditHelp } from './audit-command.ts';
import { brokerCommand, brokerHelp } from './broker-command.ts';
import { demoCommand, demoHelp } from './demo-command.ts';
import { keysCommand, keysHelp } from './keys-command.ts';
import { upCommand, upHelp } from './up-command.ts';

const mainHelp = `Castellan ${VERSION}: a security-first cloud platform for smart-home devices.

Usage: castellan <command> [options]

Commands:
  up        run the platform (HTTPS API + MQTT over TLS) until stopped
  demo      run the end-to-end demo against a running platform
  audit     verify the tamper-evident audit log, or export it with proofs
  keys      list keys and move them through their lifecycle (rotate, suspend, destroy…)
  broker    --conformance only: the anonymous MQTT broker core on loopback, for conformance suites
  config    print the effective configuration (secrets redacted); --json for JSON
  help      show help for a command

Options:
  -h, --help      show help
  -v, --version   print the version

Run \`castellan <command> --help\` for a command's options.`;

const configHelp = `Usage: castellan config [--config <file>] [--json] [--keys]

Validates the configuration (file + environment) and prints it with secrets redacted.
  --keys   list every configuration key with its environment variable
  --json   print JSON`;

async function run(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === '-h' || command === '--help' || command === 'help') {
    const topic = command === 'help' ? rest[0] : undefined;
    process.stdout.write(
      `${topic === 'up' ? upHelp : topic === 'demo' ? demoHelp : topic === 'config' ? configHelp : topic === 'audit' ? auditHelp : topic === 'keys' ? keysHelp : topic === 'broker' ? brokerHelp : mainHelp}\n`,
    );
    return 0;
  }
  if (command === '-v' || command === '--version') {
    process.stdout.write(`${VERSION}\n`);
    return 0;
  }
  switch (command) {
    case 'up': {
      const { values } = parseArgs({
        args: rest,
        options: {
          config: { type: 'string' },
          'data-dir': { type: 'string' },
          help: { type: 'boolean', short: 'h' },
        },
        strict: true,
      });
      if (values.help) return print(upHelp);
      return upCommand(values);
    }
    case 'demo': {
      const { values } = parseArgs({
        args: rest,
        options: {
          'data-dir': { type: 'string' },
          url: { type: 'string' },
          'mqtt-url': { type: 'string' },
          ca: { type: 'string' },
          'setup-token': { type: 'string' },
          'admin-token': { type: 'string' },
          devices: { type: 'string' },
          json: { type: 'boolean' },
          help: { type: 'boolean', short: 'h' },
        },
        strict: true,
      });
      if (values.help) return print(demoHelp);
      return demoCommand(values);
    }
    case 'audit': {
      const { values, positionals } = parseArgs({
        args: rest,
        options: {
          config: { type: 'string' },
          'data-dir': { type: 'string' },
          'public-key': { type: 'string' },
          from: { type: 'string' },
          to: { type: 'string' },
          out: { type: 'string' },
          json: { type: 'boolean' },
          'no-checkpoint-file': { type: 'boolean' },
          help: { type: 'boolean', short: 'h' },
        },
        allowPositionals: true,
        strict: true,
      });
      if (values.help) return print(auditHelp);
      return auditCommand(positionals[0], values);
    }
    case 'keys': {
      const { values, positionals } = parseArgs({
        args: rest,
        options: {
          'data-dir': { type: 'string' },
          url: { type: 'string' },
          ca: { type: 'string' },
          'token-file': { type: 'string' },
          tenant: { type: 'string' },
          key: { type: 'string' },
          suite: { type: 'string' },
          user: { type: 'string' },
          out: { type: 'string' },
          in: { type: 'string' },
          escrow: { type: 'string' },
          'private-key': { type: 'string' },
          recipient: { type: 'string' },
          json: { type: 'boolean' },
          help: { type: 'boolean', short: 'h' },
        },
        allowPositionals: true,
        strict: true,
      });
      if (values.help) return print(keysHelp);
      try {
        return await keysCommand(positionals[0], values);
      } catch (error) {
        process.stderr.write(`castellan: ${(error as Error).message}\n`);
        return 1;
      }
    }
    case 'broker': {
      const { values } = parseArgs({
        args: rest,
        options: {
          conformance: { type: 'boolean' },
          port: { type: 'string' },
          host: { type: 'string' },
          help: { type: 'boolean', short: 'h' },
        },
        strict: true,
      });
      if (values.help) return print(brokerHelp);
      return brokerCommand(values);
    }
    case 'config': {
      const { values } = parseArgs({
        args: rest,
        options: {
          config: { type: 'string' },
          json: { type: 'boolean' },
          keys: { type: 'boolean' },
          help: { type: 'boolean', short: 'h' },
        },
        strict: true,
      });
      if (values.help) return print(configHelp);
      if (values.keys) {
        const keys = CONFIG_KEYS.map((k) => ({ key: k.path, env: k.env, type: k.type }));
        return print(
          values.json ? JSON.stringify(keys, null, 2) : keys.map((k) => `${k.key}  (${k.env}, ${k.type})`).join('\n'),
        );
      }
      const config = redactConfig(loadConfig(values.config ? { file: values.config } : {}));
      if (values.json) return print(JSON.stringify(config, null, 2));
      const lines = CONFIG_KEYS.map((k) => {
        const value = k.path
          .split('.')
          .reduce<unknown>((node, part) => (node as Record<string, unknown>)[part], config);
        return `${k.path} = ${JSON.stringify(value)}`;
      });
      return print(lines.join('\n'));
    }
    default:
      process.stderr.write(`castellan: unknown command '${command}'\n\n${mainHelp}\n`);
      return 2;
  }
}

function print(text: string): number {
  process.stdout.write(`${text}\n`);
  return 0;
}

try {
  process.exitCode = await run(process.argv.slice(2));
} catch (error) {
  if (error instanceof CastellanError) {
    process.stderr.write(`castellan: ${error.message}\n`);
    // 78 = EX_CONFIG (sysexits.h): the configuration, not the program, is at fault.
    process.exitCode = error.code === 'ERR_CONFIG_INVALID' || error.code === 'ERR_KEY_ROOT_INVALID' ? 78 : 1;
  } else if ((error as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
    process.stderr.write(`castellan: ${(error as Error).message}\nRun \`castellan --help\` for usage.\n`);
    process.exitCode = 2;
  } else {
    process.stderr.write(`castellan: ${(error as Error).stack ?? String(error)}\n`);
    process.exitCode = 1;
  }
}
// A cluster worker's IPC channel to the primary would keep it alive after it stopped (or failed to start).
if (process.connected && process.env.CASTELLAN_WORKER_INDEX) process.disconnect?.();
