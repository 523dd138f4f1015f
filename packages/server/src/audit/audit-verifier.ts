// Verifies the audit log against its signed checkpoints (AUD-2) and says where it was tampered with:
// a modified field, a deleted, inserted or reordered entry, a truncated tail, a checkpoint removed
// from the database (the file or witness still has it) or one signed with another key.
import type { KeyObject } from 'node:crypto';
import type { Kysely } from 'kysely';
import type { Database } from '../store/index.ts';
import { entryLeafHash, type StoredEntry, storedEntryOf } from './audit-entry.ts';
import { type Checkpoint, verifyCheckpoint } from './checkpoint-signer.ts';
import { type Hash, MerkleFrontier, nodeHash } from './merkle-tree.ts';
import { asBufferOrNull } from '../lib/bytes.ts';

export type ProblemKind =
  | 'modified'
  | 'deleted'
  | 'inserted'
  | 'reordered'
  | 'truncated'
  | 'root-mismatch'
  | 'checkpoint-signature'
  | 'checkpoint-missing'
  | 'checkpoint-conflict'
  | 'checkpoint-file-corrupt'
  | 'checkpoint-file-missing';

export interface Problem {
  kind: ProblemKind;
  /** First affected entry position (leaf index), when one can be named. */
  position?: number;
  /** Last affected position for a range. */
  until?: number;
  detail: string;
}

export interface VerifyResult {
  ok: boolean;
  entries: number;
  treeSize: number;
  checkpointsVerified: number;
  /** Entries after the newest trusted checkpoint: verified for internal consistency only. */
  unattested: number;
  problems: Problem[];
}

export interface VerifyOptions {
  db: Kysely<Database>;
  publicKey: KeyObject;
  /** Checkpoints from the file outside the database (null when the file is absent). */
  fileCheckpoints: Checkpoint[] | null;
  fileCorrupt?: string;
  /** The checkpoint file must exist whenever the database has checkpoints (true where the log was written). */
  requireFile?: boolean;
  /** Report problems only within [from, to). The whole log is still hashed. */
  from?: number;
  to?: number;
}

interface Row extends StoredEntry {
  stored: Buffer;
}

async function* readEntries(db: Kysely<Database>): AsyncGenerator<Row> {
  let after = -1;
  for (;;) {
    const rows = await db
      .selectFrom('audit_entries')
      .selectAll()
      .where('seq', '>', after)
      .orderBy('seq')
      .limit(5000)
      .execute();
    if (rows.length === 0) return;
    for (const r of rows) {
      yield { ...storedEntryOf(r), stored: asBufferOrNull(r.leaf_hash)! };
    }
    after = Number(rows.at(-1)!.seq);
  }
}

/** Recomputed leaf hashes in one growable buffer: 32 bytes each instead of an object per leaf. */
class LeafList {
  #buffer = Buffer.alloc(32 * 1024);
  length = 0;

  push(hash: Hash): void {
    if ((this.length + 1) * 32 > this.#buffer.length) {
      const bigger = Buffer.alloc(this.#buffer.length * 2);
      this.#buffer.copy(bigger);
      this.#buffer = bigger;
    }
    hash.copy(this.#buffer, this.length * 32);
    this.length++;
  }

  at(index: number): Hash {
    return this.#buffer.subarray(index * 32, index * 32 + 32);
  }
}

export async function verifyAuditLog(options: VerifyOptions): Promise<VerifyResult> {
  const problems: Problem[] = [];
  const inRange = (p: number) =>
    (options.from === undefined || p >= options.from) && (options.to === undefined || p < options.to);
  const report = (problem: Problem) => {
    if (
      problem.position === undefined ||
      inRange(problem.position) ||
      (problem.until !== undefined && inRange(problem.until))
    ) {
      problems.push(problem);
    }
  };

  // 1. Checkpoints: signatures, and agreement between the database and the file outside it.
  const dbCheckpoints = (
    await options.db.selectFrom('audit_checkpoints').select('body').orderBy('tree_size').execute()
  ).map((r) => JSON.parse(r.body) as Checkpoint);
  if (options.fileCorrupt) report({ kind: 'checkpoint-file-corrupt', detail: options.fileCorrupt });
  if (options.requireFile && options.fileCheckpoints === null && !options.fileCorrupt && dbCheckpoints.length > 0) {
    report({
      kind: 'checkpoint-file-missing',
      detail: 'the database has signed checkpoints but the checkpoint file outside it is gone',
    });
  }
  const trusted = new Map<number, Checkpoint>();
  const check = (c: Checkpoint, where: string) => {
    if (!verifyCheckpoint(c, options.publicKey)) {
      report({
        kind: 'checkpoint-signature',
        position: c.treeSize,
        detail: `checkpoint of size ${c.treeSize} in the ${where} is not signed by the audit key`,
      });
      return;
    }
    const seen = trusted.get(c.treeSize);
    if (seen && seen.rootHash !== c.rootHash) {
      report({
        kind: 'checkpoint-conflict',
        position: c.treeSize,
        detail: `two signed checkpoints of size ${c.treeSize} disagree on the root`,
      });
    }
    if (!seen || c.kind === 'retention') trusted.set(c.treeSize, c);
  };
  const identity = (c: Checkpoint) => `${c.treeSize}/${c.rootHash}/${c.time}/${c.signature}`;
  const inDatabase = new Set(dbCheckpoints.map(identity));
  for (const c of dbCheckpoints) check(c, 'database');
  for (const c of options.fileCheckpoints ?? []) {
    // The same signed checkpoint in both places was verified once already.
    if (inDatabase.has(identity(c))) continue;
    if (!dbCheckpoints.some((d) => d.treeSize === c.treeSize && d.rootHash === c.rootHash && d.time === c.time)) {
      report({
        kind: 'checkpoint-missing',
        position: c.treeSize,
        detail: `checkpoint of size ${c.treeSize} (${new Date(c.time).toISOString()}) is in the checkpoint file but not in the database`,
      });
    }
    check(c, 'checkpoint file');
  }
  const checkpoints = [...trusted.values()].sort((a, b) => a.treeSize - b.treeSize);
  const retention = checkpoints.filter((c) => c.kind === 'retention').at(-1);
  const start = retention?.prunedBefore ?? 0;
  const frontier = new MerkleFrontier(
    start,
    MerkleFrontier.decompose(start).map((p, i) => ({
      height: p.height,
      hash: Buffer.from(retention!.prefix[i]!, 'hex'),
    })),
  );

  // 2. Entries, in position order: recompute every leaf, compare with the stored leaf hash.
  const mismatched: Row[] = [];
  const recomputedLeaves = new LeafList();
  const pending = checkpoints.filter((c) => c.treeSize > start);
  let nextCheckpoint = 0;
  let verified = 0;
  let expected = start;
  let lastMatched = start;
  const compareAt = (size: number) => {
    while (nextCheckpoint < pending.length && pending[nextCheckpoint]!.treeSize === size) {
      const c = pending[nextCheckpoint++]!;
      if (frontier.root().toString('hex') === c.rootHash) {
        verified++;
        lastMatched = size;
      } else {
        report({
          kind: 'root-mismatch',
          position: lastMatched,
          until: size - 1,
          detail: `entries ${lastMatched}..${size - 1} do not hash to the checkpoint of size ${size}`,
        });
        lastMatched = size;
      }
    }
    while (nextCheckpoint < pending.length && pending[nextCheckpoint]!.treeSize < size) nextCheckpoint++;
  };
  compareAt(start);
  let entries = 0;
  for await (const row of readEntries(options.db)) {
    if (row.seq < start) continue;
    entries++;
    if (row.seq > expected) {
      report({
        kind: 'deleted',
        position: expected,
        until: row.seq - 1,
        detail: `entries ${expected}..${row.seq - 1} are missing`,
      });
      // Carry on from the stored position so later checkpoints localise further damage.
      while (frontier.size < row.seq) {
        frontier.append(Buffer.alloc(32));
        recomputedLeaves.push(Buffer.alloc(32));
      }
    }
    expected = row.seq + 1;
    const leaf = entryLeafHash(row);
    if (!leaf.equals(row.stored)) mismatched.push(row);
    recomputedLeaves.push(leaf);
    frontier.append(leaf);
    compareAt(frontier.size);
  }
  const newest = pending.at(-1);
  if (newest && newest.treeSize > expected) {
    report({
      kind: 'truncated',
      position: expected,
      until: newest.treeSize - 1,
      detail: `the log ends at ${expected} but a signed checkpoint covers ${newest.treeSize} entries: entries ${expected}..${newest.treeSize - 1} were removed`,
    });
  }

  // 3. Classify rows whose content no longer matches their own leaf hash: content that hashes
  // correctly one position later was shifted down (an entry before it was deleted and the rest
  // renumbered), one position earlier shifted up (an entry was inserted), at another mismatched
  // position reordered; anything else was modified.
  const positions = new Set(mismatched.map((r) => r.seq));
  const down: number[] = [];
  const up: number[] = [];
  const other: Row[] = [];
  for (const row of mismatched) {
    if (entryLeafHash(row, row.seq + 1).equals(row.stored)) down.push(row.seq);
    else if (entryLeafHash(row, row.seq - 1).equals(row.stored)) up.push(row.seq);
    else other.push(row);
  }
  if (down.length > 0) {
    report({
      kind: 'deleted',
      position: down[0]!,
      until: down.at(-1)!,
      detail: `an entry at ${down[0]} was deleted and ${down.length} later entries renumbered down`,
    });
  }
  const inserted = up.length > 0 ? up[0]! - 1 : undefined;
  if (inserted !== undefined) {
    report({
      kind: 'inserted',
      position: inserted,
      until: up.at(-1)!,
      detail: `an entry was inserted at ${inserted} and ${up.length} later entries renumbered up`,
    });
  }
  for (const row of other) {
    if (row.seq === inserted) continue;
    const home = [...positions].find((p) => p !== row.seq && entryLeafHash(row, p).equals(row.stored));
    report(
      home === undefined
        ? { kind: 'modified', position: row.seq, detail: `entry ${row.seq} was modified after it was written` }
        : { kind: 'reordered', position: row.seq, detail: `entry at ${row.seq} belongs at ${home}` },
    );
  }

  // 4. A root mismatch with every leaf hash intact means leaf hashes were rewritten too: the stored
  // interior nodes written at append time narrow it down to a pair of entries.
  const entryProblems = problems.filter((p) => ['modified', 'deleted', 'inserted', 'reordered'].includes(p.kind));
  for (const problem of problems.filter((p) => p.kind === 'root-mismatch')) {
    const explained = entryProblems.some(
      (e) => e.position! <= problem.until! && (e.until ?? e.position!) >= problem.position!,
    );
    if (explained) continue;
    const from = Math.max(problem.position! - start, 0) & ~1;
    for (let i = from; i + 1 < recomputedLeaves.length && start + i <= problem.until!; i += 2) {
      const idx = (start + i) / 2;
      if (!Number.isInteger(idx)) break;
      const node = await options.db
        .selectFrom('audit_nodes')
        .select('hash')
        .where('height', '=', 1)
        .where('idx', '=', idx)
        .executeTakeFirst();
      if (node && !nodeHash(recomputedLeaves.at(i), recomputedLeaves.at(i + 1)).equals(asBufferOrNull(node.hash)!)) {
        if (!positions.has(start + i) && !positions.has(start + i + 1)) {
          report({
            kind: 'modified',
            position: start + i,
            until: start + i + 1,
            detail: `entry ${start + i} or ${start + i + 1} was modified and its leaf hash rewritten`,
          });
        }
        break;
      }
    }
  }

  problems.sort((a, b) => (a.position ?? -1) - (b.position ?? -1));
  return {
    ok: problems.length === 0,
    entries,
    treeSize: expected,
    checkpointsVerified: verified,
    unattested: Math.max(0, expected - (newest?.treeSize ?? start)),
    problems,
  };
}
