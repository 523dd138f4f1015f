// Verifies the audit log against its signed checkpoints (AUD-2) and says where it was tampered with:
// a modified field, a deleted, inserted or reordered entry, a truncated tail, a checkpoint removed
// from the database (the file or witness still has it) or one signed with another key.
import type { KeyObject } from 'node:crypto';
import type { Kysely } from 'kysely';
import type { AuditEntryTable, Database } from '../store/index.ts';
import { entryLeafHash, rowLeafHashBinary, type StoredEntry, storedEntryOf } from './audit-entry.ts';
import { type Checkpoint, verifyCheckpoint } from './checkpoint-signer.ts';
import { EMPTY_ROOT, type Hash, MerkleFrontier, nodeHash, nodeHashBinary } from './merkle-tree.ts';
import { asBuffer, asBufferOrNull } from '../lib/bytes.ts';

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

type EntryRow = AuditEntryTable;

/** Rows per read: large pages keep the per-query cost (Kysely, round trip) small against the hashing. */
const PAGE_ROWS = 10_000;
const HASH_BYTES = 32;
const ZERO_HASH = '\0'.repeat(HASH_BYTES);

function readPage(db: Kysely<Database>, after: number): Promise<EntryRow[]> {
  return db.selectFrom('audit_entries').selectAll().where('seq', '>', after).orderBy('seq').limit(PAGE_ROWS).execute();
}

/** Pages of rows in position order; the next page is requested before the current one is handed out. */
async function* readPages(db: Kysely<Database>): AsyncGenerator<EntryRow[]> {
  let page = await readPage(db, -1);
  while (page.length > 0) {
    // PostgreSQL reads the next page while this one is hashed (SQLite runs it after, no harm).
    const next = page.length === PAGE_ROWS ? readPage(db, Number(page.at(-1)!.seq)) : Promise.resolve([]);
    next.catch(() => {}); // awaited below; a consumer that stops early must not leave it unhandled
    yield page;
    page = await next;
  }
}

/** A stored leaf hash (bytes) against a recomputed one (binary string), without a Buffer per row. */
function sameHash(stored: Uint8Array | null, hash: string): boolean {
  if (stored === null || stored.length !== HASH_BYTES) return false;
  for (let i = 0; i < HASH_BYTES; i++) if (stored[i] !== hash.charCodeAt(i)) return false;
  return true;
}

/**
 * MerkleFrontier over binary-string hashes (one char per byte): the same tree, without an object and
 * a Buffer per node. Only the verifier's rebuild uses it; its root is compared at each checkpoint.
 */
class BinaryFrontier {
  readonly #hashes: string[] = [];
  readonly #heights: number[] = [];
  size: number;

  constructor(size: number, nodes: readonly { height: number; hash: string }[]) {
    this.size = size;
    for (const n of nodes) {
      this.#hashes.push(n.hash);
      this.#heights.push(n.height);
    }
  }

  append(leaf: string): void {
    let hash = leaf;
    let height = 0;
    while (this.#heights.length > 0 && this.#heights[this.#heights.length - 1] === height) {
      hash = nodeHashBinary(this.#hashes.pop()!, hash);
      this.#heights.pop();
      height++;
    }
    this.#hashes.push(hash);
    this.#heights.push(height);
    this.size++;
  }

  rootHex(): string {
    if (this.#hashes.length === 0) return EMPTY_ROOT.toString('hex');
    let hash = this.#hashes[this.#hashes.length - 1]!;
    for (let i = this.#hashes.length - 2; i >= 0; i--) hash = nodeHashBinary(this.#hashes[i]!, hash);
    return Buffer.from(hash, 'latin1').toString('hex');
  }
}

/** Recomputed leaf hashes in one growable buffer: 32 bytes each instead of an object per leaf. */
class LeafList {
  #buffer = Buffer.alloc(HASH_BYTES * 1024);
  length = 0;

  push(hash: string): void {
    if ((this.length + 1) * HASH_BYTES > this.#buffer.length) {
      const bigger = Buffer.alloc(this.#buffer.length * 2);
      this.#buffer.copy(bigger);
      this.#buffer = bigger;
    }
    this.#buffer.write(hash, this.length * HASH_BYTES, HASH_BYTES, 'latin1');
    this.length++;
  }

  at(index: number): Hash {
    return this.#buffer.subarray(index * HASH_BYTES, index * HASH_BYTES + HASH_BYTES);
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
  const frontier = new BinaryFrontier(
    start,
    MerkleFrontier.decompose(start).map((p, i) => ({
      height: p.height,
      hash: Buffer.from(retention!.prefix[i]!, 'hex').toString('latin1'),
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
      if (frontier.rootHex() === c.rootHash) {
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
  for await (const page of readPages(options.db)) {
    for (const row of page) {
      const seq = Number(row.seq);
      if (seq < start) continue;
      entries++;
      if (seq > expected) {
        report({
          kind: 'deleted',
          position: expected,
          until: seq - 1,
          detail: `entries ${expected}..${seq - 1} are missing`,
        });
        // Carry on from the stored position so later checkpoints localise further damage.
        while (frontier.size < seq) {
          frontier.append(ZERO_HASH);
          recomputedLeaves.push(ZERO_HASH);
        }
      }
      expected = seq + 1;
      const leaf = rowLeafHashBinary(row, seq);
      if (!sameHash(row.leaf_hash, leaf)) mismatched.push({ ...storedEntryOf(row), stored: asBuffer(row.leaf_hash) });
      recomputedLeaves.push(leaf);
      frontier.append(leaf);
      if (nextCheckpoint < pending.length && pending[nextCheckpoint]!.treeSize <= frontier.size) {
        compareAt(frontier.size);
      }
    }
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
