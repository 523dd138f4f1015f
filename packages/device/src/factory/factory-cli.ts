// `castellan-factory`: the manufacturing line's tool (DEV-7). keygen makes a station's key pairs;
// burn fetches a batch sealed to the station, writes one credentials file per device, signs a burn
// receipt per device and uploads them. Exit codes: FACTORY_EXIT in factory-format.ts.
import { statSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { type EncryptionCurve, FACTORY_EXIT, FactoryError } from './factory-format.ts';
import { burnBatch, keygen, readInput } from './factory-tool.ts';

export const factoryHelp = `castellan-factory: the Castellan manufacturing line tool.

Usage:
  castellan-factory keygen --out <dir> [--curve x25519|p256]
      Creates the station's key pairs in <dir> (0700; files 0600): an encryption key (X25519 by
      default) that batches are sealed to, and an Ed25519 key that signs burn receipts. Prints the
      two public keys to register the station with the platform.

  castellan-factory burn --url https://<platform> --ca <ca.pem> --token-file <file>
                         --keys <dir> --batch <batchId> --out <dir>
      Fetches the batch, opens it with the station's key, writes <out>/<deviceId>.json (0600) per
      device, signs a burn receipt per device and uploads them.

Exit codes: 0 done; 2 usage; 65 batch file failed authentication or is malformed; 66 missing input
file; 69 platform unreachable; 73 output cannot be written; 77 the platform refused; 78 bad key file.`;

export interface FactoryIo {
  stdout: (text: string) => void;
  stderr: (text: string) => void;
}

const processIo: FactoryIo = {
  stdout: (text) => process.stdout.write(text),
  stderr: (text) => process.stderr.write(text),
};

/** Runs the command line; returns the exit code (never exits the process itself). */
export async function factoryMain(argv: readonly string[], io: FactoryIo = processIo): Promise<number> {
  try {
    return await run(argv, io);
  } catch (error) {
    if (error instanceof FactoryError) {
      io.stderr(`castellan-factory: ${error.message}\n`);
      return error.exitCode;
    }
    if ((error as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      io.stderr(`castellan-factory: ${(error as Error).message}\nRun \`castellan-factory --help\` for usage.\n`);
      return FACTORY_EXIT.usage;
    }
    io.stderr(`castellan-factory: ${(error as Error).stack ?? String(error)}\n`);
    return 1;
  }
}

function usage(message: string): FactoryError {
  return new FactoryError('ERR_FACTORY_USAGE', `${message}\nRun \`castellan-factory --help\` for usage.`, 2);
}

async function run(argv: readonly string[], io: FactoryIo): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === '-h' || command === '--help' || command === 'help') {
    io.stdout(`${factoryHelp}\n`);
    return 0;
  }
  switch (command) {
    case 'keygen': {
      const { values } = parseArgs({
        args: rest,
        options: { out: { type: 'string' }, curve: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
        strict: true,
      });
      if (values.help) return print(io, factoryHelp);
      if (!values.out) throw usage('keygen needs --out <dir>');
      const curve = curveOption(values.curve);
      const keys = keygen({ outDir: values.out, curve });
      io.stdout(
        `Station keys written to ${keys.dir} (private keys 0600; keep them on this station).\n\n` +
          `Encryption public key (${keys.curve}; batches are sealed to it):\n${keys.encryptionPublicKey}\n` +
          `Signing public key (Ed25519; verifies burn receipts):\n${keys.signingPublicKey}`,
      );
      return 0;
    }
    case 'burn': {
      const { values } = parseArgs({
        args: rest,
        options: {
          url: { type: 'string' },
          ca: { type: 'string' },
          'token-file': { type: 'string' },
          keys: { type: 'string' },
          batch: { type: 'string' },
          out: { type: 'string' },
          help: { type: 'boolean', short: 'h' },
        },
        strict: true,
      });
      if (values.help) return print(io, factoryHelp);
      const missing = (['url', 'ca', 'token-file', 'keys', 'batch', 'out'] as const).filter((k) => !values[k]);
      if (missing.length > 0) throw usage(`burn needs ${missing.map((k) => `--${k}`).join(', ')}`);
      const ca = readInput(values.ca!, 'CA certificate');
      if (!ca.includes('-----BEGIN CERTIFICATE-----')) {
        throw new FactoryError('ERR_FACTORY_CA_INVALID', `${values.ca} is not a PEM certificate`, FACTORY_EXIT.badKey);
      }
      const tokenFile = values['token-file']!;
      const token = readInput(tokenFile, 'token file').trim();
      if (!/^cas_fac_[A-Za-z0-9_-]{43}$/.test(token)) {
        throw new FactoryError(
          'ERR_FACTORY_TOKEN_INVALID',
          `${tokenFile} does not hold a factory token (cas_fac_…)`,
          FACTORY_EXIT.badKey,
        );
      }
      if ((statSync(tokenFile).mode & 0o077) !== 0) {
        io.stderr(`castellan-factory: warning: ${tokenFile} is readable by others; chmod 600 it\n`);
      }
      const summary = await burnBatch({
        url: values.url!,
        ca,
        token,
        keys: values.keys!,
        batchId: values.batch!,
        outDir: values.out!,
      });
      io.stdout(
        `batch ${summary.batchId} (product ${summary.productId}, station ${summary.stationId})\n` +
          `device files in ${values.out}; signed receipts in ${summary.receiptsFile}\n` +
          `burned ${summary.burned} devices, ${summary.accepted} receipts accepted` +
          (summary.duplicates > 0 ? ` (${summary.duplicates} already recorded)` : '') +
          '\n',
      );
      return 0;
    }
    default:
      throw usage(`unknown command '${command}'`);
  }
}

function curveOption(value: string | undefined): EncryptionCurve {
  if (value === undefined || value === 'x25519') return 'X25519';
  if (value === 'p256') return 'P-256';
  throw usage(`--curve must be x25519 or p256, not '${value}'`);
}

function print(io: FactoryIo, text: string): number {
  io.stdout(`${text}\n`);
  return 0;
}
