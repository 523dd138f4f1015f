// The tamper-evident audit log (AUD-1, AUD-2): every entry is a leaf of an RFC 9162 Merkle tree;
// signed checkpoints (tree heads) go to the database, to an append-only file in the data directory
// and, if configured, to a witness URL, so that deleting the newest checkpoint together with the
// entries after it is still detected. Appends are batched: many entries share one transaction.
import { createCipheriv, createDecipheriv, createSecretKey, type KeyObject, randomBytes } from 'node:crypto';
import { appendFileSync, closeSync, fsyncSync, mkdirSync, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CompiledQuery, type Kysely, sql } from 'kysely';
import type { Logger } from 'pino';
import { SecretBox } from '../keys/index.ts';
import type { Database, DialectName } from '../store/index.ts';
import { type AuditEvent, entryLeafHashBinary, maskDetails, type StoredEntry } from './audit-entry.ts';
import { type Checkpoint, type CheckpointKind, CheckpointSigner } from './checkpoint-signer.ts';
import {
  consistencyProof,
  type Hash,
  inclusionProof,
  MerkleFrontier,
  type SubtreeHash,
  subtreeResolver,
} from './merkle-tree.ts';
import { asBuffer } from '../lib/bytes.ts';

export const CHECKPOINT_FILE = join('audit', 'checkpoints.jsonl');
const DAY_MS = 86_400_000;

export interface AuditLogOptions {
  db: Kysely<Database>;
  dialect: DialectName;
  rootKey: Uint8Array;
  dataDir: string;
  log: Logger;
  batchMaxRows: number;
  queueMaxRows: number;
  /** 0 disables periodic checkpoints. */
  checkpointIntervalMs: number;
  retentionDays: number;
  ipRetentionDays: number;
  /** POST target for every checkpoint; empty for none. */
  witnessUrl: string;
  now?: () => number;
}

export interface AuditEntryView {
  seq: number;
  time: number;
  actor: { type: string; id: string };
  tenant: string | null;
  type: string;
  target: string | null;
  result: string;
  /** The source IP while its day key exists (security-retention period), otherwise null. */
  sourceIp: string | null;
  details: Record<string, unknown>;
}

export interface AuditQuery {
  tenant?: string;
  actorType?: string;
  actorId?: string;
  type?: string;
  target?: string;
  result?: string;
  from?: number;
  to?: number;
  afterSeq?: number;
  limit: number;
}

interface Pending {
  /** The stored form, built when recorded (all but seq, and the sealed IP while `ip` is set). */
  entry: StoredEntry;
  /** A source IP still to be sealed: its day key was not loaded yet when the event was recorded. */
  ip: string | null;
  resolve(seq: number): void;
  reject(error: unknown): void;
}

/** What seals source IPs of one day: the key (null once destroyed) and the AAD. */
interface IpSealing {
  epoch: string;
  from: number;
  until: number;
  key: KeyObject | null;
  aad: Buffer;
}

const ENTRY_COLUMNS = [
  'seq',
  'time',
  'actor_type',
  'actor_id',
  'tenant',
  'event_type',
  'target',
  'result',
  'ip_epoch',
  'source_ip',
  'details',
  'leaf_hash',
] as const;
const NODE_COLUMNS = ['height', 'idx', 'hash'] as const;
// SQLite: statements of at most 256 rows, the rest in powers of two, so that a handful of statement
// texts serve every batch size (the driver caches prepared statements by text). PostgreSQL: one
// statement per batch (a round trip each), within its 65,535 bind parameters.
const SQLITE_CHUNK_ROWS = 256;
const POSTGRES_MAX_PARAMS = 65_535;
/** Statement texts by dialect, table and row count; bounded (PostgreSQL's vary with the batch size). */
const insertSqlCache = new Map<string, string>();
const INSERT_SQL_CACHE_MAX = 32;

function insertSql(dialect: DialectName, table: string, columns: readonly string[], rows: number): string {
  const key = `${dialect}/${table}/${rows}`;
  let text = insertSqlCache.get(key);
  if (text === undefined) {
    const tuples: string[] = [];
    let n = 0;
    for (let r = 0; r < rows; r++) {
      const marks = columns.map(() => (dialect === 'postgres' ? `$${++n}` : '?'));
      tuples.push(`(${marks.join(', ')})`);
    }
    text = `insert into "${table}" (${columns.map((c) => `"${c}"`).join(', ')}) values ${tuples.join(', ')}`;
    if (insertSqlCache.size >= INSERT_SQL_CACHE_MAX) insertSqlCache.delete(insertSqlCache.keys().next().value!);
    insertSqlCache.set(key, text);
  }
  return text;
}

/** Row counts of the insert statements for `rows` rows. */
function chunkRows(dialect: DialectName, rows: number, columns: number): number[] {
  const out: number[] = [];
  if (dialect === 'postgres') {
    const max = Math.floor(POSTGRES_MAX_PARAMS / columns);
    for (let left = rows; left > 0; left -= Math.min(left, max)) out.push(Math.min(left, max));
    return out;
  }
  let left = rows;
  for (; left >= SQLITE_CHUNK_ROWS; left -= SQLITE_CHUNK_ROWS) out.push(SQLITE_CHUNK_ROWS);
  for (let size = SQLITE_CHUNK_ROWS / 2; size >= 1; size /= 2) {
    if (left >= size) {
      out.push(size);
      left -= size;
    }
  }
  return out;
}

/** Multi-row inserts of `params` (row-major, `columns.length` values a row) as precompiled SQL. */
async function insertRows(
  trx: Kysely<Database>,
  dialect: DialectName,
  table: string,
  columns: readonly string[],
  params: unknown[],
): Promise<void> {
  const width = columns.length;
  let offset = 0;
  for (const rows of chunkRows(dialect, params.length / width, width)) {
    const values = params.slice(offset, offset + rows * width);
    offset += rows * width;
    await trx.executeQuery(CompiledQuery.raw(insertSql(dialect, table, columns, rows), values));
  }
}

/** Random GCM nonces drawn from the CSPRNG in bulk (one call per 1,024 instead of one per entry). */
class NoncePool {
  static readonly BYTES = 12;
  #pool = Buffer.alloc(0);
  #offset = 0;

  next(): Buffer {
    if (this.#offset + NoncePool.BYTES > this.#pool.length) {
      this.#pool = randomBytes(NoncePool.BYTES * 1024);
      this.#offset = 0;
    }
    const nonce = this.#pool.subarray(this.#offset, this.#offset + NoncePool.BYTES);
    this.#offset += NoncePool.BYTES;
    return nonce;
  }
}

export class AuditQueueFullError extends Error {
  constructor() {
    super('audit queue is full');
    this.name = 'AuditQueueFullError';
  }
}

// The last day asked for: nearly every entry falls on the same UTC day as the one before it.
let epochFrom = 0;
let epochUntil = 0;
let epochName = '';

/** The UTC day (YYYY-MM-DD) of a time in ms: the source-IP key epoch. */
export function epochOf(time: number): string {
  if (time >= epochFrom && time < epochUntil) return epochName;
  const name = new Date(time).toISOString().slice(0, 10);
  epochFrom = Math.floor(time / DAY_MS) * DAY_MS;
  epochUntil = epochFrom + DAY_MS;
  epochName = name;
  return name;
}

/** Loads the frontier of the first `size` leaves from stored nodes (and the newest leaf hash). */
async function loadFrontier(
  db: Kysely<Database>,
  size: number,
  prefix: { size: number; nodes: Hash[] },
): Promise<MerkleFrontier> {
  const parts = MerkleFrontier.decompose(size);
  const nodes: { height: number; hash: Hash }[] = [];
  for (const { start, height } of parts) {
    if (height === 0) {
      const row = await db.selectFrom('audit_entries').select('leaf_hash').where('seq', '=', start).executeTakeFirst();
      if (!row) throw new Error(`audit leaf ${start} is missing`);
      nodes.push({ height, hash: asBuffer(row.leaf_hash) });
    } else {
      const row = await db
        .selectFrom('audit_nodes')
        .select('hash')
        .where('height', '=', height)
        .where('idx', '=', start / 2 ** height)
        .executeTakeFirst();
      if (row) nodes.push({ height, hash: asBuffer(row.hash) });
      else {
        // A subtree wholly inside a pruned prefix comes from the retention checkpoint.
        const fromPrefix = MerkleFrontier.decompose(prefix.size).findIndex(
          (p) => p.start === start && p.height === height,
        );
        if (fromPrefix < 0) throw new Error(`audit node ${height}/${start} is missing`);
        nodes.push({ height, hash: prefix.nodes[fromPrefix]! });
      }
    }
  }
  return new MerkleFrontier(size, nodes);
}

export class AuditLog {
  readonly signer: CheckpointSigner;
  readonly stats = { appended: 0, batches: 0, refused: 0, failedBatches: 0, checkpoints: 0 };
  readonly #o: AuditLogOptions;
  readonly #now: () => number;
  readonly #keyBox: SecretBox;
  readonly #ipKeys = new Map<string, Buffer | null>();
  readonly #ipKeyLookups = new Map<string, Promise<Buffer | null>>();
  readonly #nonces = new NoncePool();
  /** The newest day's sealing key, once loaded: record() seals that day's IPs synchronously. */
  #sealing: IpSealing | undefined;
  #frontier: MerkleFrontier;
  #prunedBefore: number;
  #prefix: Hash[];
  #lastCheckpointSize: number;
  #queue: Pending[] = [];
  #draining: Promise<void> | undefined;
  #scheduled = false;
  #closed = false;
  #timers: NodeJS.Timeout[] = [];

  private constructor(
    options: AuditLogOptions,
    frontier: MerkleFrontier,
    pruned: { before: number; prefix: Hash[] },
    lastCheckpointSize: number,
  ) {
    this.#o = options;
    this.#now = options.now ?? Date.now;
    this.signer = new CheckpointSigner(options.rootKey);
    this.#keyBox = new SecretBox(options.rootKey, 'audit-ip-epoch-key');
    this.#frontier = frontier;
    this.#prunedBefore = pruned.before;
    this.#prefix = pruned.prefix;
    this.#lastCheckpointSize = lastCheckpointSize;
  }

  static async open(options: AuditLogOptions): Promise<AuditLog> {
    const checkpoints = await readDbCheckpoints(options.db);
    const retention = [...checkpoints].reverse().find((c) => c.kind === 'retention');
    const pruned = {
      before: retention?.prunedBefore ?? 0,
      prefix: (retention?.prefix ?? []).map((h) => Buffer.from(h, 'hex')),
    };
    const size = await currentSize(options.db, checkpoints);
    const frontier = await loadFrontier(options.db, size, { size: pruned.before, nodes: pruned.prefix });
    const log = new AuditLog(options, frontier, pruned, checkpoints.at(-1)?.treeSize ?? 0);
    mkdirSync(join(options.dataDir, 'audit'), { recursive: true, mode: 0o700 });
    if (options.checkpointIntervalMs > 0) {
      const timer = setInterval(() => {
        if (log.#frontier.size > log.#lastCheckpointSize)
          log
            .checkpoint('periodic')
            .catch((e: unknown) => log.#o.log.error({ err: e }, 'audit: periodic checkpoint failed'));
      }, options.checkpointIntervalMs);
      timer.unref();
      log.#timers.push(timer);
    }
    const retentionTimer = setInterval(() => {
      log.applyRetention().catch((e: unknown) => log.#o.log.error({ err: e }, 'audit: retention failed'));
    }, DAY_MS / 24);
    retentionTimer.unref();
    log.#timers.push(retentionTimer);
    return log;
  }

  get size(): number {
    return this.#frontier.size;
  }

  /**
   * Whether new work can count on being audited: write operations are refused up front while the
   * queue is nearly full, rather than done and then reported as failed.
   */
  get accepting(): boolean {
    return !this.#closed && this.#queue.length < this.#o.queueMaxRows * 0.9;
  }

  get publicKeyRaw(): Buffer {
    return this.signer.publicKey.export({ format: 'der', type: 'spki' }).subarray(-32);
  }

  /** Records an event; resolves with its position once committed. */
  record(event: AuditEvent): Promise<number> {
    if (this.#closed) return Promise.reject(new Error('audit log is closed'));
    if (this.#queue.length >= this.#o.queueMaxRows) {
      this.stats.refused++;
      return Promise.reject(new AuditQueueFullError());
    }
    let entry: StoredEntry;
    let ip: string | null = null;
    try {
      const time = this.#now();
      entry = {
        seq: -1,
        time,
        actorType: event.actor.type,
        actorId: event.actor.id,
        tenant: event.tenant ?? null,
        eventType: event.type,
        target: event.target ?? null,
        result: event.result,
        ipEpoch: null,
        sourceIp: null,
        details: JSON.stringify(maskDetails(event.details ?? {})),
      };
      if (event.sourceIp) {
        // The stored form is built now (the caller's turn), so a batch's transaction only hashes
        // and inserts; only the first IP of a new day waits for its key in #drain.
        const sealing = this.#sealing;
        if (sealing && time >= sealing.from && time < sealing.until) this.#sealInto(entry, sealing, event.sourceIp);
        else ip = event.sourceIp;
      }
    } catch (error) {
      // E.g. details that cannot be serialised: only this entry fails, not the batch it would join.
      return Promise.reject(error instanceof Error ? error : new Error(String(error)));
    }
    return new Promise<number>((resolve, reject) => {
      this.#queue.push({ entry, ip, resolve, reject });
      this.#schedule();
    });
  }

  /** Records without waiting (hot paths such as MQTT connects); failures are logged, never thrown. */
  recordSoon(event: AuditEvent): void {
    this.record(event).catch((error: unknown) =>
      this.#o.log.warn({ err: error, type: event.type }, 'audit: entry not recorded'),
    );
  }

  #schedule(): void {
    if (this.#scheduled || this.#draining) return;
    this.#scheduled = true;
    // Group commit: everything recorded before the next event-loop turn shares a transaction.
    setImmediate(() => {
      this.#scheduled = false;
      this.#kick();
    });
  }

  #kick(): void {
    if (this.#draining) return;
    this.#draining = this.#drain().finally(() => {
      this.#draining = undefined;
      if (this.#queue.length > 0) this.#schedule();
    });
  }

  /** Settles when everything recorded so far is committed. */
  async flush(): Promise<void> {
    while (this.#queue.length > 0 || this.#draining) {
      if (!this.#draining) this.#kick();
      await this.#draining;
    }
  }

  async #drain(): Promise<void> {
    let first = true;
    while (this.#queue.length > 0) {
      // node:sqlite runs a whole batch without yielding: give the event loop (MQTT, HTTPS) a turn
      // between batches so a long queue never stalls the platform for its whole length.
      if (!first) await new Promise<void>((resolve) => setImmediate(resolve));
      first = false;
      const batch = this.#queue.splice(0, this.#o.batchMaxRows);
      try {
        await this.#sealPending(batch);
        const frontier = await this.#o.db.transaction().execute(async (trx) => {
          if (this.#o.dialect === 'postgres') {
            // One writer at a time across processes; another process may have appended meanwhile.
            await sql`select pg_advisory_xact_lock(hashtext(current_schema() || '.audit_entries'))`.execute(trx);
          }
          const size = await currentSize(trx, []);
          const base =
            size === this.#frontier.size
              ? this.#frontier.clone()
              : await loadFrontier(trx, size, { size: this.#prunedBefore, nodes: this.#prefix });
          // Bind parameters straight from the entries: no row object per entry, no query building.
          const rows: unknown[] = [];
          const nodes: unknown[] = [];
          for (const { entry } of batch) {
            entry.seq = base.size;
            const leaf = Buffer.from(entryLeafHashBinary(entry), 'latin1');
            for (const n of base.append(leaf)) nodes.push(n.height, n.index, n.hash);
            rows.push(
              entry.seq,
              entry.time,
              entry.actorType,
              entry.actorId,
              entry.tenant,
              entry.eventType,
              entry.target,
              entry.result,
              entry.ipEpoch,
              entry.sourceIp,
              entry.details,
              leaf,
            );
          }
          await insertRows(trx, this.#o.dialect, 'audit_entries', ENTRY_COLUMNS, rows);
          await insertRows(trx, this.#o.dialect, 'audit_nodes', NODE_COLUMNS, nodes);
          return base;
        });
        this.#frontier = frontier;
        this.stats.appended += batch.length;
        this.stats.batches++;
        for (const p of batch) p.resolve(p.entry.seq);
      } catch (error) {
        this.stats.failedBatches++;
        this.#o.log.error({ err: error, entries: batch.length }, 'audit: batch write failed');
        for (const p of batch) p.reject(error);
      }
    }
  }

  /** Seals the source IPs that record() could not (their day's key was not loaded yet). */
  async #sealPending(batch: readonly Pending[]): Promise<void> {
    for (const p of batch) {
      if (p.ip === null) continue;
      const sealing = await this.#sealingFor(p.entry.time);
      this.#sealInto(p.entry, sealing, p.ip);
      p.ip = null;
    }
  }

  /** Sets the entry's ip_epoch and sealed IP (neither while the day's key is destroyed). */
  #sealInto(entry: StoredEntry, sealing: IpSealing, ip: string): void {
    if (!sealing.key) return;
    entry.ipEpoch = sealing.epoch;
    entry.sourceIp = sealIp(sealing.key, sealing.aad, this.#nonces.next(), ip);
  }

  async #sealingFor(time: number): Promise<IpSealing> {
    const current = this.#sealing;
    if (current && time >= current.from && time < current.until) return current;
    const epoch = epochOf(time);
    const key = await this.#ipKey(epoch, true);
    const from = Math.floor(time / DAY_MS) * DAY_MS;
    const sealing: IpSealing = {
      epoch,
      from,
      until: from + DAY_MS,
      key: key ? createSecretKey(key) : null,
      aad: Buffer.from(`audit-ip:${epoch}`),
    };
    // Kept for record() only when it is the newest day (a late entry must not displace today's).
    if (!this.#sealing || from >= this.#sealing.from) this.#sealing = sealing;
    return sealing;
  }

  async #ipKey(epoch: string, create: boolean): Promise<Buffer | null> {
    const cached = this.#ipKeys.get(epoch);
    if (cached !== undefined) return cached;
    // The first entries of a new day arrive together: one lookup serves them all.
    const pending = this.#ipKeyLookups.get(epoch);
    if (pending) return pending;
    const lookup = this.#loadIpKey(epoch, create).finally(() => this.#ipKeyLookups.delete(epoch));
    this.#ipKeyLookups.set(epoch, lookup);
    return lookup;
  }

  async #loadIpKey(epoch: string, create: boolean): Promise<Buffer | null> {
    let row = await this.#o.db.selectFrom('audit_ip_keys').selectAll().where('epoch', '=', epoch).executeTakeFirst();
    if (!row && create) {
      await this.#o.db
        .insertInto('audit_ip_keys')
        .values({
          epoch,
          sealed_key: this.#keyBox.seal(randomBytes(32), `audit-ip:${epoch}`),
          created_at: this.#now(),
          destroyed_at: null,
        })
        .onConflict((oc) => oc.column('epoch').doNothing())
        .execute();
      row = await this.#o.db.selectFrom('audit_ip_keys').selectAll().where('epoch', '=', epoch).executeTakeFirst();
    }
    const key = row?.sealed_key ? this.#keyBox.open(row.sealed_key, `audit-ip:${epoch}`) : null;
    if (row) this.#ipKeys.set(epoch, key);
    return key;
  }

  /** Signs the current tree head and publishes it to the database, the checkpoint file and the witness. */
  async checkpoint(kind: CheckpointKind = 'on-demand'): Promise<Checkpoint> {
    await this.flush();
    return this.#publish(
      this.signer.sign({
        treeSize: this.#frontier.size,
        rootHash: this.#frontier.root().toString('hex'),
        time: this.#now(),
        kind,
        prunedBefore: this.#prunedBefore,
        prefix: this.#prefix.map((h) => h.toString('hex')),
      }),
    );
  }

  async #publish(checkpoint: Checkpoint, beforeCommit?: (trx: Kysely<Database>) => Promise<void>): Promise<Checkpoint> {
    await this.#o.db.transaction().execute(async (trx) => {
      await trx
        .insertInto('audit_checkpoints')
        .values({ tree_size: checkpoint.treeSize, time: checkpoint.time, body: JSON.stringify(checkpoint) })
        .onConflict((oc) => oc.columns(['tree_size', 'time']).doNothing())
        .execute();
      if (beforeCommit) await beforeCommit(trx);
    });
    // Outside the database: an attacker who rewrites the tables must also reach this file.
    const fd = openSync(join(this.#o.dataDir, CHECKPOINT_FILE), 'a', 0o600);
    try {
      appendFileSync(fd, `${JSON.stringify(checkpoint)}\n`);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    this.#lastCheckpointSize = checkpoint.treeSize;
    this.stats.checkpoints++;
    if (this.#o.witnessUrl) this.#sendToWitness(checkpoint);
    return checkpoint;
  }

  #sendToWitness(checkpoint: Checkpoint): void {
    fetch(this.#o.witnessUrl, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ checkpoint, publicKey: this.publicKeyRaw.toString('base64') }),
      signal: AbortSignal.timeout(10_000),
    }).then(
      (res) => {
        if (!res.ok) this.#o.log.warn({ status: res.status }, 'audit: witness refused the checkpoint');
      },
      (error: unknown) => this.#o.log.warn({ err: error }, 'audit: witness unreachable'),
    );
  }

  async latestCheckpoint(): Promise<Checkpoint | null> {
    return (await readDbCheckpoints(this.#o.db)).at(-1) ?? null;
  }

  async inclusionProof(seq: number, treeSize: number): Promise<{ leafHash: Hash; proof: Hash[] }> {
    await this.flush();
    if (treeSize > this.#frontier.size || seq >= treeSize || seq < this.#prunedBefore) {
      throw new RangeError(`no inclusion proof for entry ${seq} in a tree of ${treeSize}`);
    }
    const leaf = await this.#o.db
      .selectFrom('audit_entries')
      .select('leaf_hash')
      .where('seq', '=', seq)
      .executeTakeFirst();
    if (!leaf) throw new RangeError(`entry ${seq} is not stored`);
    return {
      leafHash: asBuffer(leaf.leaf_hash),
      proof: await inclusionProof(seq, treeSize, storedSubtrees(this.#o.db)),
    };
  }

  async consistencyProof(first: number, second: number): Promise<Hash[]> {
    await this.flush();
    if (second > this.#frontier.size) throw new RangeError(`the log has only ${this.#frontier.size} entries`);
    return consistencyProof(first, second, storedSubtrees(this.#o.db));
  }

  async query(q: AuditQuery): Promise<AuditEntryView[]> {
    let query = this.#o.db.selectFrom('audit_entries').selectAll();
    if (q.tenant !== undefined) query = query.where('tenant', '=', q.tenant);
    if (q.actorType) query = query.where('actor_type', '=', q.actorType);
    if (q.actorId) query = query.where('actor_id', '=', q.actorId);
    if (q.type) query = query.where('event_type', '=', q.type);
    if (q.target) query = query.where('target', '=', q.target);
    if (q.result) query = query.where('result', '=', q.result);
    if (q.from !== undefined) query = query.where('time', '>=', q.from);
    if (q.to !== undefined) query = query.where('time', '<', q.to);
    if (q.afterSeq !== undefined) query = query.where('seq', '>', q.afterSeq);
    const rows = await query.orderBy('seq').limit(q.limit).execute();
    const out: AuditEntryView[] = [];
    for (const row of rows) {
      let sourceIp: string | null = null;
      if (row.source_ip && row.ip_epoch) {
        const key = await this.#ipKey(row.ip_epoch, false);
        if (key) sourceIp = openIp(key, row.ip_epoch, asBuffer(row.source_ip));
      }
      out.push({
        seq: Number(row.seq),
        time: row.time,
        actor: { type: row.actor_type, id: row.actor_id },
        tenant: row.tenant,
        type: row.event_type,
        target: row.target,
        result: row.result,
        sourceIp,
        details: JSON.parse(row.details) as Record<string, unknown>,
      });
    }
    return out;
  }

  /**
   * Retention: entries older than retentionDays go, but only together with a signed checkpoint that
   * records the removal (and the subtree roots of the removed prefix), so verification still passes.
   * Source-IP day keys older than ipRetentionDays are destroyed: those IPs become unreadable.
   */
  async applyRetention(): Promise<{ pruned: number; ipKeysDestroyed: number }> {
    await this.flush();
    const now = this.#now();
    const ipCutoff = epochOf(now - this.#o.ipRetentionDays * DAY_MS);
    const destroyed = await this.#o.db
      .updateTable('audit_ip_keys')
      .set({ sealed_key: null, destroyed_at: now })
      .where('epoch', '<', ipCutoff)
      .where('sealed_key', 'is not', null)
      .executeTakeFirst();
    this.#ipKeys.clear();
    this.#sealing = undefined;
    const cutoff = now - this.#o.retentionDays * DAY_MS;
    const firstKept = await this.#o.db
      .selectFrom('audit_entries')
      .select('seq')
      .where('time', '>=', cutoff)
      .orderBy('seq')
      .limit(1)
      .executeTakeFirst();
    // The newest entry always stays: it anchors the tree for the next writer. The boundary is even so
    // that the first kept leaf's sibling (a leaf; leaves live only in audit_entries) is kept too and
    // every kept entry still has an inclusion proof.
    let keepFrom = Math.min(firstKept ? Number(firstKept.seq) : this.#frontier.size, this.#frontier.size - 1);
    keepFrom -= keepFrom % 2;
    let pruned = 0;
    if (keepFrom > this.#prunedBefore) {
      const prefix = await loadFrontier(this.#o.db, keepFrom, { size: this.#prunedBefore, nodes: this.#prefix });
      const prefixHashes = prefix.nodes().map((n) => n.hash);
      const checkpoint = this.signer.sign({
        treeSize: this.#frontier.size,
        rootHash: this.#frontier.root().toString('hex'),
        time: now,
        kind: 'retention',
        prunedBefore: keepFrom,
        prefix: prefixHashes.map((h) => h.toString('hex')),
      });
      await this.#publish(checkpoint, async (trx) => {
        const result = await trx.deleteFrom('audit_entries').where('seq', '<', keepFrom).executeTakeFirst();
        pruned = Number(result.numDeletedRows);
      });
      this.#prunedBefore = keepFrom;
      this.#prefix = prefixHashes;
    }
    const ipKeysDestroyed = Number(destroyed.numUpdatedRows);
    if (pruned > 0 || ipKeysDestroyed > 0) this.#o.log.info({ pruned, ipKeysDestroyed }, 'audit: retention applied');
    return { pruned, ipKeysDestroyed };
  }

  /** Writes what is queued and a final checkpoint if the log grew since the last one. */
  async close(): Promise<void> {
    for (const t of this.#timers) clearInterval(t);
    await this.flush();
    this.#closed = true;
    if (this.#frontier.size > this.#lastCheckpointSize) await this.checkpoint('shutdown');
  }
}

/** MTH over any range a proof asks for, from stored leaves and interior nodes (cached per resolver). */
export function storedSubtrees(db: Kysely<Database>): SubtreeHash {
  const cache = new Map<string, Hash>();
  return subtreeResolver(async (height, index) => {
    const key = `${height}/${index}`;
    const hit = cache.get(key);
    if (hit) return hit;
    const row =
      height === 0
        ? await db.selectFrom('audit_entries').select('leaf_hash as hash').where('seq', '=', index).executeTakeFirst()
        : await db
            .selectFrom('audit_nodes')
            .select('hash')
            .where('height', '=', height)
            .where('idx', '=', index)
            .executeTakeFirst();
    if (!row) throw new RangeError(`subtree ${height}/${index} is not available (pruned or beyond the log)`);
    const hash = asBuffer(row.hash);
    cache.set(key, hash);
    return hash;
  });
}

function sealIp(key: KeyObject, aad: Buffer, nonce: Buffer, ip: string): Buffer {
  const cipher = createCipheriv('aes-256-gcm', key, nonce);
  cipher.setAAD(aad);
  const body = cipher.update(ip, 'utf8');
  cipher.final(); // GCM adds no bytes at the end; this computes the tag
  return Buffer.concat([nonce, body, cipher.getAuthTag()]);
}

function openIp(key: Buffer, epoch: string, sealed: Buffer): string | null {
  try {
    const decipher = createDecipheriv('aes-256-gcm', key, sealed.subarray(0, 12));
    decipher.setAAD(Buffer.from(`audit-ip:${epoch}`));
    decipher.setAuthTag(sealed.subarray(-16));
    return Buffer.concat([decipher.update(sealed.subarray(12, -16)), decipher.final()]).toString('utf8');
  } catch {
    return null;
  }
}

async function currentSize(db: Kysely<Database>, checkpoints: readonly Checkpoint[]): Promise<number> {
  const row = await db
    .selectFrom('audit_entries')
    .select((eb) => eb.fn.max('seq').as('max'))
    .executeTakeFirst();
  const max = row?.max;
  if (max !== null && max !== undefined) return Number(max) + 1;
  return checkpoints.at(-1)?.treeSize ?? 0;
}

export async function readDbCheckpoints(db: Kysely<Database>): Promise<Checkpoint[]> {
  const rows = await db.selectFrom('audit_checkpoints').select('body').orderBy('tree_size').orderBy('time').execute();
  return rows.map((r) => JSON.parse(r.body) as Checkpoint);
}

export function readFileCheckpoints(dataDir: string): Checkpoint[] | null {
  let text: string;
  try {
    text = readFileSync(join(dataDir, CHECKPOINT_FILE), 'utf8');
  } catch {
    return null;
  }
  return text
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as Checkpoint);
}
