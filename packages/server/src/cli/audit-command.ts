// `castellan audit verify|export`: checks the whole log against its signed checkpoints (exit 1 on any
// tampering, with positions) and exports entries with proofs for an outside auditor.
import { closeSync, existsSync, openSync, writeSync } from 'node:fs';
import { join, resolve } from 'node:path';
import {
  type Checkpoint,
  CheckpointSigner,
  exportAudit,
  publicKeyFromRaw,
  readDbCheckpoints,
  readFileCheckpoints,
  verifyAuditLog,
  verifyCheckpoint,
} from '../audit/index.ts';
import { loadConfig } from '../config/index.ts';
import { CastellanError } from '../errors/index.ts';
import { loadRootKey } from '../keys/index.ts';
import { openStore, type Store } from '../store/index.ts';

export const auditHelp = `Usage: castellan audit <verify|export> [options]

  verify   recompute every entry and the Merkle tree, check them against the signed checkpoints in
           the database and in <data-dir>/audit/checkpoints.jsonl; report every modified, deleted,
           inserted or reordered entry with its position. Exit code 1 when anything is wrong.
  export   write entries in their stored form with inclusion proofs to the newest checkpoint
           (JSON Lines) for an outside auditor.

Options:
  --config <file>       configuration file (as for \`castellan up\`)
  --data-dir <dir>      data directory (overrides dataDir)
  --public-key <b64>    verify with this Ed25519 public key (raw, base64) instead of the one derived
                        from the root key
  --from <n> --to <n>   only report / export positions in [from, to)
  --out <file>          export: output file (required)
  --json                verify: print the result as JSON
  --no-checkpoint-file  verify: this machine has no copy of the checkpoint file (an auditor elsewhere);
                        without this flag a missing file is reported as tampering
  -h, --help            show this help`;

export interface AuditCommandOptions {
  config?: string;
  'data-dir'?: string;
  'public-key'?: string;
  from?: string;
  to?: string;
  out?: string;
  json?: boolean;
  'no-checkpoint-file'?: boolean;
}

function position(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d+$/.test(value))
    throw new CastellanError('ERR_CONFIG_INVALID', { message: `${flag} must be a non-negative integer` });
  return Number(value);
}

export async function auditCommand(
  sub: string | undefined,
  options: AuditCommandOptions,
  out = (l: string) => process.stdout.write(`${l}\n`),
): Promise<number> {
  if (sub !== 'verify' && sub !== 'export') {
    process.stderr.write(`castellan: audit needs a subcommand: verify or export\n\n${auditHelp}\n`);
    return 2;
  }
  const config = loadConfig({
    ...(options.config ? { file: options.config } : {}),
    ...(options['data-dir'] ? { overrides: { dataDir: options['data-dir'] } } : {}),
  });
  const dataDir = resolve(config.dataDir);
  const publicKey = options['public-key']
    ? publicKeyFromRaw(Buffer.from(options['public-key'], 'base64'))
    : new CheckpointSigner(loadRootKey({ ...config, dataDir }, { create: false }).key).publicKey;
  const from = position(options.from, '--from');
  const to = position(options.to, '--to');
  if (!config.database.url && !existsSync(join(dataDir, config.database.sqliteFile))) {
    throw new CastellanError('ERR_CONFIG_INVALID', {
      message: `No database at ${join(dataDir, config.database.sqliteFile)}: point --data-dir at the platform's data directory`,
    });
  }
  const store: Store = await openStore({
    url: config.database.url,
    dataDir,
    sqliteFile: config.database.sqliteFile,
    poolMax: 2,
    ...(config.database.schema ? { schema: config.database.schema } : {}),
  });
  try {
    if (sub === 'export') {
      if (!options.out) {
        process.stderr.write('castellan: audit export needs --out <file>\n');
        return 2;
      }
      const checkpoint = (await readDbCheckpoints(store.db)).filter((c) => verifyCheckpoint(c, publicKey)).at(-1);
      if (!checkpoint) throw new CastellanError('ERR_AUDIT_NO_CHECKPOINT');
      const fd = openSync(resolve(options.out), 'w', 0o600);
      try {
        const count = await exportAudit({
          db: store.db,
          checkpoint,
          publicKey: publicKey.export({ format: 'der', type: 'spki' }).subarray(-32),
          ...(from === undefined ? {} : { from }),
          ...(to === undefined ? {} : { to }),
          write: (line) => writeSync(fd, `${line}\n`),
        });
        out(
          `exported ${count} entries with inclusion proofs to the checkpoint of size ${checkpoint.treeSize} → ${resolve(options.out)}`,
        );
      } finally {
        closeSync(fd);
      }
      return 0;
    }

    let fileCheckpoints: Checkpoint[] | null = null;
    let fileCorrupt: string | undefined;
    try {
      fileCheckpoints = readFileCheckpoints(dataDir);
    } catch (error) {
      fileCorrupt = `the checkpoint file cannot be read: ${(error as Error).message}`;
    }
    const result = await verifyAuditLog({
      db: store.db,
      publicKey,
      fileCheckpoints,
      ...(fileCorrupt ? { fileCorrupt } : {}),
      requireFile: !options['no-checkpoint-file'],
      ...(from === undefined ? {} : { from }),
      ...(to === undefined ? {} : { to }),
    });
    if (options.json) {
      out(JSON.stringify(result, null, 2));
    } else {
      out(
        `Audit log: ${result.entries} entries (tree size ${result.treeSize}), ${result.checkpointsVerified} signed checkpoint(s) verified` +
          (result.unattested > 0 ? `, ${result.unattested} newer entries not yet covered by a checkpoint` : '') +
          (fileCheckpoints === null ? '; no checkpoint file found in the data directory' : '') +
          '.',
      );
      if (result.ok) out('OK: no tampering found.');
      else {
        out(`TAMPERING DETECTED: ${result.problems.length} problem(s)`);
        for (const p of result.problems) {
          const where =
            p.position === undefined
              ? ''
              : p.until !== undefined && p.until !== p.position
                ? `positions ${p.position}..${p.until}: `
                : `position ${p.position}: `;
          out(`  ${where}${p.kind}: ${p.detail}`);
        }
      }
    }
    return result.ok ? 0 : 1;
  } finally {
    await store.close();
  }
}
