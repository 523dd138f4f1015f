// `castellan audit export`: entries in their stored form with inclusion proofs to a signed checkpoint,
// so an outside auditor can check each entry with the public key alone (JSON Lines).
import type { Kysely } from 'kysely';
import type { Database } from '../store/index.ts';
import { storedEntryOf } from './audit-entry.ts';
import { storedSubtrees } from './audit-log.ts';
import type { Checkpoint } from './checkpoint-signer.ts';
import { inclusionProof } from './merkle-tree.ts';
import { asBufferOrNull } from '../lib/bytes.ts';

export interface ExportOptions {
  db: Kysely<Database>;
  checkpoint: Checkpoint;
  publicKey: Buffer;
  from?: number;
  to?: number;
  write(line: string): void;
}

/** Writes a header line and one line per entry in [from, to) ∩ the checkpoint; returns the count. */
export async function exportAudit(options: ExportOptions): Promise<number> {
  const { checkpoint } = options;
  const from = Math.max(options.from ?? 0, checkpoint.prunedBefore);
  const to = Math.min(options.to ?? checkpoint.treeSize, checkpoint.treeSize);
  options.write(
    JSON.stringify({
      type: 'header',
      format: 'castellan-audit-export/v1',
      leafFormat:
        'SHA-256(0x00 || UTF-8 JSON array: ["castellan-audit-entry/v1", seq, time, actorType, actorId, tenant, eventType, target, result, ipEpoch, sourceIp (base64) | null, details])',
      publicKey: options.publicKey.toString('base64'),
      checkpoint,
    }),
  );
  const subtrees = storedSubtrees(options.db);
  let count = 0;
  let after = from - 1;
  while (after + 1 < to) {
    const rows = await options.db
      .selectFrom('audit_entries')
      .selectAll()
      .where('seq', '>', after)
      .where('seq', '<', to)
      .orderBy('seq')
      .limit(1000)
      .execute();
    if (rows.length === 0) break;
    for (const r of rows) {
      const stored = storedEntryOf(r);
      const seq = stored.seq;
      const proof = await inclusionProof(seq, checkpoint.treeSize, subtrees);
      options.write(
        JSON.stringify({
          type: 'entry',
          entry: { ...stored, sourceIp: stored.sourceIp?.toString('base64') ?? null },
          leafHash: asBufferOrNull(r.leaf_hash)!.toString('hex'),
          treeSize: checkpoint.treeSize,
          proof: proof.map((h) => h.toString('hex')),
        }),
      );
      count++;
    }
    after = Number(rows.at(-1)!.seq);
  }
  return count;
}
