// The tamper-evident audit log (AUD-1, AUD-2): every entry is a leaf of an RFC 9162 Merkle tree;
// signed checkpoints (tree heads) go to the database, to an append-only file in the data directory
// and, if configured, to a witness URL, so that deleting the newest checkpoint together with the
// entries after it is still detected. Appends are batched: many entries share one transaction.
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { appendFileSync, closeSync, fsyncSync, mkdirSync, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { type Kysely, sql } from 'kysely';
import type { Logger } from 'pino';
import { SecretBox } from '../keys/index.ts';
import type { Database, DialectName } from '../store/index.ts';
import { type AuditEvent, entryLeafHash, maskDetails, type StoredEntry } from './audit-entry.ts';
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
  event: AuditEvent;
  time: number;
  resolve(seq: number): void;
  reject(error: unknown): void;
}

export class AuditQueueFullError extends Error {
  constructor() {
    super('audit queue is full');
    this.name = 'AuditQueueFullError';
  }
}

export function epochOf(time: number): string {
  return new Date(time).toISOString().slice(0, 10);
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
    return new Promise<number>((resolve, reject) => {
      this.#queue.push({ event, time: this.#now(), resolve, reject });
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
        const stored = await Promise.all(batch.map((p) => this.#storedForm(p)));
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
          const rows: Database['audit_entries'][] = [];
          const nodes: Database['audit_nodes'][] = [];
          for (const entry of stored) {
            entry.seq = base.size;
            const leaf = entryLeafHash(entry);
            for (const n of base.append(leaf)) nodes.push({ height: n.height, idx: n.index, hash: n.hash });
            rows.push({
              seq: entry.seq,
              time: entry.time,
              actor_type: entry.actorType,
              actor_id: entry.actorId,
              tenant: entry.tenant,
              event_type: entry.eventType,
              target: entry.target,
              result: entry.result,
              ip_epoch: entry.ipEpoch,
              source_ip: entry.sourceIp,
              details: entry.details,
              leaf_hash: leaf,
            });
          }
          for (let i = 0; i < rows.length; i += 400)
            await trx
              .insertInto('audit_entries')
              .values(rows.slice(i, i + 400))
              .execute();
          for (let i = 0; i < nodes.length; i += 1000)
            await trx
              .insertInto('audit_nodes')
              .values(nodes.slice(i, i + 1000))
              .execute();
          return base;
        });
        this.#frontier = frontier;
        this.stats.appended += batch.length;
        this.stats.batches++;
        batch.forEach((p, i) => p.resolve(stored[i]!.seq));
      } catch (error) {
        this.stats.failedBatches++;
        this.#o.log.error({ err: error, entries: batch.length }, 'audit: batch write failed');
        for (const p of batch) p.reject(error);
      }
    }
  }

  async #storedForm(p: Pending): Promise<StoredEntry> {
    const e = p.event;
    let ipEpoch: string | null = null;
    let sourceIp: Buffer | null = null;
    if (e.sourceIp) {
      ipEpoch = epochOf(p.time);
      const key = await this.#ipKey(ipEpoch, true);
      if (key) sourceIp = sealIp(key, ipEpoch, e.sourceIp);
    }
    return {
      seq: -1,
      time: p.time,
      actorType: e.actor.type,
      actorId: e.actor.id,
      tenant: e.tenant ?? null,
      eventType: e.type,
      target: e.target ?? null,
      result: e.result,
      ipEpoch: sourceIp ? ipEpoch : null,
      sourceIp,
      details: JSON.stringify(maskDetails(e.details ?? {})),
    };
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

function sealIp(key: Buffer, epoch: string, ip: string): Buffer {
  const nonce = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', key, nonce);
  cipher.setAAD(Buffer.from(`audit-ip:${epoch}`));
  return Buffer.concat([nonce, cipher.update(ip, 'utf8'), cipher.final(), cipher.getAuthTag()]);
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
