// The broker's durable state on the platform's SQL store (SQLite through node:sqlite, or PostgreSQL),
// behind the BrokerStore contract (broker-store.ts). Tables: broker_sessions, broker_subscriptions,
// broker_pending, broker_inbound_qos2, broker_retained (migration 0006_broker).
//
// Write-behind: every mutation lands in an in-memory batch and returns at once; a single writer applies
// one batch per transaction, strictly in call order. A batch is a net change per row (the last
// operation on a key wins, deleteSession first wipes the client's rows), so concurrent callers share a
// transaction, an addPending/removePending pair of one seq inside a batch costs nothing, and applying a
// batch twice leaves the same rows: a batch whose commit failed (or whose outcome is unknown) is kept
// at the head of the queue and written again on the next flush(), never dropped.
//
// Memory: the store never refuses a mutation (the broker's live state already holds it; refusing
// would make the two disagree). Above `maxWaitingMutations` handed over but not yet committed it logs a
// warning and reports `overloaded`; flush() — which a QoS 1/2 acknowledgement waits for — still
// resolves only once its batch is written, so clients are slowed to the storage's pace and the backlog
// stays bounded by what the broker admits before it stops reading (Receive Maximum, inflight windows).
import type { Kysely, Transaction } from 'kysely';
import type { Logger } from 'pino';
import { CastellanError } from '../../errors/index.ts';
import type { BrokerPendingTable, Database } from '../../store/index.ts';
import type {
  BrokerStore,
  MessageProperties,
  PendingState,
  StoredMessage,
  StoredPending,
  StoredSession,
  StoredSessionMeta,
  StoredSubscription,
} from './broker-store.ts';

/** MQTT 5 3.1.2.11.2: an interval of 0xFFFFFFFF means the session does not expire. */
const NEVER_EXPIRES = 0xffffffff;
/** Bound parameters per statement: below SQLite's 32766 and PostgreSQL's 65535. */
const MAX_PARAMS = 8000;

export interface SqlBrokerStoreOptions {
  db: Kysely<Database>;
  log: Logger;
  /** Mutations handed over but not yet committed above which the store warns and reports `overloaded`. */
  maxWaitingMutations?: number;
  /** Mutations per transaction at most; a longer backlog is written as several batches, in order. */
  maxBatchMutations?: number;
}

export interface SqlBrokerStoreStats {
  batchesWritten: number;
  mutationsWritten: number;
  batchesFailed: number;
}

type PendingOp =
  /** `fresh`: no earlier operation on this seq in the batch, so no row can exist yet (seq is unique). */
  | { kind: 'add'; pending: StoredPending; fresh: boolean }
  | { kind: 'update'; state: PendingState; packetId: number | null }
  | { kind: 'remove' };

/** The net change of one client's rows within a batch. */
interface ClientOps {
  /** deleteSession: remove every row of the client before the batch's other changes. */
  wipe: boolean;
  meta: StoredSessionMeta | undefined;
  subscriptions: Map<string, StoredSubscription | null>;
  pending: Map<number, PendingOp>;
  inbound: Map<number, boolean>;
}

interface Waiter {
  resolve(): void;
  reject(error: Error): void;
}

class Batch {
  readonly clients = new Map<string, ClientOps>();
  readonly retained = new Map<string, { message: StoredMessage | null; at: number }>();
  /** purgeExpired(now) runs after the batch's changes, in the same transaction. */
  purgeAt: number | undefined;
  purged = 0;
  /** Mutations handed over (before coalescing). */
  mutations = 0;
  readonly waiters: Waiter[] = [];

  client(clientId: string): ClientOps {
    let ops = this.clients.get(clientId);
    if (!ops) {
      ops = { wipe: false, meta: undefined, subscriptions: new Map(), pending: new Map(), inbound: new Map() };
      this.clients.set(clientId, ops);
    }
    return ops;
  }
}

function chunks<T>(items: readonly T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

function toBuffer(value: Uint8Array): Buffer {
  return Buffer.isBuffer(value) ? value : Buffer.from(value.buffer, value.byteOffset, value.byteLength);
}

interface PropertiesJson {
  payloadFormatIndicator?: boolean;
  contentType?: string;
  responseTopic?: string;
  /** base64 */
  correlationData?: string;
  userProperties?: Record<string, string | string[]>;
}

function encodeProperties(properties: MessageProperties | undefined): string | null {
  if (properties === undefined) return null;
  const out: PropertiesJson = {};
  if (properties.payloadFormatIndicator !== undefined) out.payloadFormatIndicator = properties.payloadFormatIndicator;
  if (properties.contentType !== undefined) out.contentType = properties.contentType;
  if (properties.responseTopic !== undefined) out.responseTopic = properties.responseTopic;
  // Binary in JSON: base64, decoded back to a Buffer on load.
  if (properties.correlationData !== undefined) out.correlationData = properties.correlationData.toString('base64');
  if (properties.userProperties !== undefined) out.userProperties = { ...properties.userProperties };
  return JSON.stringify(out);
}

function decodeProperties(text: string | null): MessageProperties | undefined {
  if (text === null) return undefined;
  const json = JSON.parse(text) as PropertiesJson;
  return {
    ...(json.payloadFormatIndicator !== undefined ? { payloadFormatIndicator: json.payloadFormatIndicator } : {}),
    ...(json.contentType !== undefined ? { contentType: json.contentType } : {}),
    ...(json.responseTopic !== undefined ? { responseTopic: json.responseTopic } : {}),
    ...(json.correlationData !== undefined ? { correlationData: Buffer.from(json.correlationData, 'base64') } : {}),
    ...(json.userProperties !== undefined ? { userProperties: json.userProperties } : {}),
  };
}

function sessionExpiresAt(meta: StoredSessionMeta): number | null {
  if (meta.disconnectedAt === null || meta.expiryIntervalSeconds >= NEVER_EXPIRES) return null;
  return meta.disconnectedAt + meta.expiryIntervalSeconds * 1000;
}

function pendingRow(clientId: string, p: StoredPending): BrokerPendingTable {
  return {
    client_id: clientId,
    seq: p.seq,
    state: p.state,
    packet_id: p.packetId,
    topic: p.message.topic,
    payload: p.message.payload,
    qos: p.message.qos,
    retain: p.message.retain ? 1 : 0,
    properties: encodeProperties(p.message.properties),
    expires_at: p.message.expiresAt,
  };
}

function pendingFromRow(row: BrokerPendingTable): StoredPending {
  const properties = decodeProperties(row.properties);
  return {
    seq: Number(row.seq),
    state: row.state,
    packetId: row.packet_id,
    message: {
      topic: row.topic,
      payload: toBuffer(row.payload),
      qos: row.qos as 0 | 1 | 2,
      retain: row.retain === 1,
      ...(properties ? { properties } : {}),
      expiresAt: row.expires_at,
    },
  };
}

export class SqlBrokerStore implements BrokerStore {
  readonly #db: Kysely<Database>;
  readonly #log: Logger;
  readonly #maxWaiting: number;
  readonly #maxBatch: number;
  /** Batches in call order; the head is written next (or is being written); the last may be open. */
  readonly #queue: Batch[] = [];
  /** The batch taking new mutations; undefined once sealed (taken by the writer, full, or purging). */
  #open: Batch | undefined;
  #waiting = 0;
  #writing = false;
  /** A batch failed: writing waits for the next flush() (or purgeExpired/close) to retry it. */
  #stalled = false;
  #scheduled: NodeJS.Immediate | undefined;
  #warnedOverload = false;
  /** Failed attempts since the last successful batch, and when one was last logged. */
  #failStreak = 0;
  #failLoggedAt = 0;
  #closed = false;
  #closing: Promise<void> | undefined;
  #droppedAfterClose = 0;
  readonly stats: SqlBrokerStoreStats = { batchesWritten: 0, mutationsWritten: 0, batchesFailed: 0 };

  constructor(options: SqlBrokerStoreOptions) {
    this.#db = options.db;
    this.#log = options.log;
    this.#maxWaiting = options.maxWaitingMutations ?? 100_000;
    this.#maxBatch = options.maxBatchMutations ?? 10_000;
  }

  /** Mutations handed over and not yet committed. */
  get backlog(): number {
    return this.#waiting;
  }

  /** More than `maxWaitingMutations` are waiting: storage is behind the broker. */
  get overloaded(): boolean {
    return this.#waiting > this.#maxWaiting;
  }

  // ---- reads ------------------------------------------------------------------------------------

  async loadRetained(): Promise<StoredMessage[]> {
    await this.flush();
    const now = Date.now();
    const rows = await this.#db
      .selectFrom('broker_retained')
      .selectAll()
      .where((eb) => eb.or([eb('expires_at', 'is', null), eb('expires_at', '>', now)]))
      .orderBy('topic')
      .execute();
    return rows.map((row) => {
      const properties = decodeProperties(row.properties);
      return {
        topic: row.topic,
        payload: toBuffer(row.payload),
        qos: row.qos as 0 | 1 | 2,
        retain: true,
        ...(properties ? { properties } : {}),
        expiresAt: row.expires_at,
      };
    });
  }

  async loadSessions(now: number): Promise<StoredSession[]> {
    const sessions = await this.#load(undefined, now);
    // A session still marked connected was left so by a process that stopped without recording the
    // disconnection (a crash): it counts as disconnected now, and is stored so, so its expiry runs
    // from here and a later purge can end it even if no client ever returns.
    for (const { crashed, meta } of sessions) if (crashed) this.saveSession(meta);
    return sessions.map((s) => s.session);
  }

  async loadSession(clientId: string, now: number): Promise<StoredSession | undefined> {
    return (await this.#load(clientId, now))[0]?.session;
  }

  async #load(
    clientId: string | undefined,
    now: number,
  ): Promise<Array<{ session: StoredSession; meta: StoredSessionMeta; crashed: boolean }>> {
    // Earlier mutations of this process first, so a load never sees older state than it handed over.
    await this.flush();
    // One snapshot for the four reads (SQLite: a read transaction under WAL; PostgreSQL: repeatable read).
    const { sessions, subscriptions, pending, inbound } = await this.#db
      .transaction()
      .setIsolationLevel('repeatable read')
      .execute(async (trx) => {
        // Alive: connected or never expiring (NULL expires_at), or not yet expired at `now`.
        let sessionsQuery = trx
          .selectFrom('broker_sessions as s')
          .selectAll('s')
          .where((eb) => eb.or([eb('s.expires_at', 'is', null), eb('s.expires_at', '>', now)]));
        if (clientId !== undefined) sessionsQuery = sessionsQuery.where('s.client_id', '=', clientId);
        let subsQuery = trx
          .selectFrom('broker_subscriptions as x')
          .innerJoin('broker_sessions as s', 's.client_id', 'x.client_id')
          .selectAll('x')
          .where((eb) => eb.or([eb('s.expires_at', 'is', null), eb('s.expires_at', '>', now)]));
        if (clientId !== undefined) subsQuery = subsQuery.where('x.client_id', '=', clientId);
        let pendingQuery = trx
          .selectFrom('broker_pending as x')
          .innerJoin('broker_sessions as s', 's.client_id', 'x.client_id')
          .selectAll('x')
          .where((eb) => eb.or([eb('s.expires_at', 'is', null), eb('s.expires_at', '>', now)]));
        if (clientId !== undefined) pendingQuery = pendingQuery.where('x.client_id', '=', clientId);
        let inboundQuery = trx
          .selectFrom('broker_inbound_qos2 as x')
          .innerJoin('broker_sessions as s', 's.client_id', 'x.client_id')
          .selectAll('x')
          .where((eb) => eb.or([eb('s.expires_at', 'is', null), eb('s.expires_at', '>', now)]));
        if (clientId !== undefined) inboundQuery = inboundQuery.where('x.client_id', '=', clientId);
        return {
          sessions: await sessionsQuery.orderBy('s.client_id').execute(),
          subscriptions: await subsQuery.orderBy('x.client_id').orderBy('x.filter').execute(),
          pending: await pendingQuery.orderBy('x.client_id').orderBy('x.seq').execute(),
          inbound: await inboundQuery.orderBy('x.client_id').orderBy('x.packet_id').execute(),
        };
      });
    const byClient = new Map<
      string,
      { subscriptions: StoredSubscription[]; pending: StoredPending[]; inboundQos2: number[] }
    >();
    const parts = (id: string) => {
      let p = byClient.get(id);
      if (!p) {
        p = { subscriptions: [], pending: [], inboundQos2: [] };
        byClient.set(id, p);
      }
      return p;
    };
    for (const row of subscriptions) {
      parts(row.client_id).subscriptions.push({
        filter: row.filter,
        qos: row.qos as 0 | 1 | 2,
        noLocal: row.no_local === 1,
        retainAsPublished: row.retain_as_published === 1,
        retainHandling: row.retain_handling as 0 | 1 | 2,
        ...(row.subscription_identifier !== null ? { subscriptionIdentifier: row.subscription_identifier } : {}),
      });
    }
    for (const row of pending) parts(row.client_id).pending.push(pendingFromRow(row));
    for (const row of inbound) parts(row.client_id).inboundQos2.push(row.packet_id);
    return sessions.map((row) => {
      const crashed = row.disconnected_at === null;
      const meta: StoredSessionMeta = {
        clientId: row.client_id,
        principalId: row.principal_id,
        expiryIntervalSeconds: Number(row.expiry_interval_s),
        disconnectedAt: crashed ? now : Number(row.disconnected_at),
      };
      const p = byClient.get(row.client_id) ?? { subscriptions: [], pending: [], inboundQos2: [] };
      return { session: { ...meta, ...p }, meta, crashed };
    });
  }

  // ---- write-behind mutations --------------------------------------------------------------------

  setRetained(topic: string, message: StoredMessage | null): void {
    const batch = this.#take();
    if (!batch) return;
    batch.retained.set(topic, { message, at: Date.now() });
    this.#handed(batch);
  }

  saveSession(meta: StoredSessionMeta): void {
    const batch = this.#take();
    if (!batch) return;
    batch.client(meta.clientId).meta = { ...meta };
    this.#handed(batch);
  }

  deleteSession(clientId: string): void {
    const batch = this.#take();
    if (!batch) return;
    // Whatever the batch held for the client is superseded: the rows go, earlier changes with them.
    batch.clients.set(clientId, {
      wipe: true,
      meta: undefined,
      subscriptions: new Map(),
      pending: new Map(),
      inbound: new Map(),
    });
    this.#handed(batch);
  }

  addSubscription(clientId: string, subscription: StoredSubscription): void {
    const batch = this.#take();
    if (!batch) return;
    batch.client(clientId).subscriptions.set(subscription.filter, { ...subscription });
    this.#handed(batch);
  }

  removeSubscription(clientId: string, filter: string): void {
    const batch = this.#take();
    if (!batch) return;
    batch.client(clientId).subscriptions.set(filter, null);
    this.#handed(batch);
  }

  addPending(clientId: string, pending: StoredPending): void {
    const batch = this.#take();
    if (!batch) return;
    const ops = batch.client(clientId).pending;
    ops.set(pending.seq, { kind: 'add', pending, fresh: !ops.has(pending.seq) });
    this.#handed(batch);
  }

  updatePending(clientId: string, seq: number, state: PendingState, packetId: number | null): void {
    const batch = this.#take();
    if (!batch) return;
    const ops = batch.client(clientId).pending;
    const op = ops.get(seq);
    if (op?.kind === 'add') {
      ops.set(seq, { kind: 'add', pending: { ...op.pending, state, packetId }, fresh: op.fresh });
    } else if (op?.kind !== 'remove') {
      // (An update after a removal concerns a row that is gone: nothing to do.)
      ops.set(seq, { kind: 'update', state, packetId });
    }
    this.#handed(batch);
  }

  removePending(clientId: string, seq: number): void {
    const batch = this.#take();
    if (!batch) return;
    const ops = batch.client(clientId).pending;
    const op = ops.get(seq);
    // Added and removed within one batch (delivered and acknowledged quickly): never written at all.
    if (op?.kind === 'add' && op.fresh) ops.delete(seq);
    else ops.set(seq, { kind: 'remove' });
    this.#handed(batch);
  }

  setInboundQos2(clientId: string, packetId: number, present: boolean): void {
    const batch = this.#take();
    if (!batch) return;
    batch.client(clientId).inbound.set(packetId, present);
    this.#handed(batch);
  }

  /** The open batch for a new mutation; undefined after close (the mutation is counted and logged). */
  #take(): Batch | undefined {
    if (this.#closed) {
      if (this.#droppedAfterClose++ === 0) {
        this.#log.error('mqtt store: a mutation arrived after close and was not written');
      }
      return undefined;
    }
    if (!this.#open) {
      this.#open = new Batch();
      this.#queue.push(this.#open);
    }
    return this.#open;
  }

  #handed(batch: Batch): void {
    batch.mutations++;
    this.#waiting++;
    if (batch.mutations >= this.#maxBatch && this.#open === batch) this.#open = undefined;
    if (this.#waiting > this.#maxWaiting && !this.#warnedOverload) {
      this.#warnedOverload = true;
      this.#log.warn(
        { waiting: this.#waiting, limit: this.#maxWaiting },
        'mqtt store: storage is behind; acknowledgements wait for it',
      );
    }
    this.#schedule();
  }

  // ---- the writer ----------------------------------------------------------------------------------

  /** Starts the writer on the next turn of the event loop, so callers of this turn share a batch. */
  #schedule(): void {
    if (this.#writing || this.#stalled || this.#scheduled || this.#queue.length === 0) return;
    this.#scheduled = setImmediate(() => {
      this.#scheduled = undefined;
      void this.#run();
    });
  }

  async #run(): Promise<void> {
    if (this.#writing) return;
    this.#writing = true;
    try {
      while (this.#queue.length > 0 && !this.#stalled) {
        const batch = this.#queue[0]!;
        // Sealed from here: mutations made while it is written go to the next batch.
        if (this.#open === batch) this.#open = undefined;
        try {
          await this.#write(batch);
        } catch (error) {
          this.#stalled = true;
          this.stats.batchesFailed++;
          // Every flush retries while storage is down: log the first failure, then one line a minute.
          this.#failStreak++;
          const at = Date.now();
          if (this.#failStreak === 1 || at - this.#failLoggedAt >= 60_000) {
            this.#failLoggedAt = at;
            this.#log.error(
              { err: error, mutations: batch.mutations, waiting: this.#waiting, failures: this.#failStreak },
              'mqtt store: batch write failed; kept for retry on the next flush',
            );
          }
          const failure = new CastellanError('ERR_STORE_UNAVAILABLE', {
            message: 'Broker state could not be written',
            cause: error,
          });
          // Nothing from the failed batch on is durable: every waiter is told, none waits forever.
          for (const b of this.#queue) for (const w of b.waiters.splice(0)) w.reject(failure);
          break;
        }
        if (this.#failStreak > 0) {
          this.#log.info({ failures: this.#failStreak }, 'mqtt store: writing again after failures');
          this.#failStreak = 0;
        }
        this.#queue.shift();
        this.#waiting -= batch.mutations;
        if (this.#waiting <= this.#maxWaiting / 2) this.#warnedOverload = false;
        this.stats.batchesWritten++;
        this.stats.mutationsWritten += batch.mutations;
        for (const w of batch.waiters.splice(0)) w.resolve();
        // node:sqlite writes synchronously: let the broker read sockets (and callers join the next batch).
        if (this.#queue.length > 0) await new Promise<void>((resolve) => setImmediate(resolve));
      }
    } finally {
      this.#writing = false;
    }
  }

  async #write(batch: Batch): Promise<void> {
    await this.#db.transaction().execute(async (trx) => {
      await this.#applyClients(trx, batch);
      await this.#applyRetained(trx, batch);
      if (batch.purgeAt !== undefined) batch.purged = await this.#purge(trx, batch.purgeAt);
    });
  }

  async #applyClients(trx: Transaction<Database>, batch: Batch): Promise<void> {
    const wipes: string[] = [];
    const metas: StoredSessionMeta[] = [];
    const subUpserts: Array<{ clientId: string; sub: StoredSubscription }> = [];
    const subRemovals = new Map<string, string[]>();
    const pendingAdds: BrokerPendingTable[] = [];
    const pendingRemovals = new Map<string, number[]>();
    const pendingUpdates: Array<{ clientId: string; seq: number; state: PendingState; packetId: number | null }> = [];
    const inboundAdds: Array<{ client_id: string; packet_id: number }> = [];
    const inboundRemovals = new Map<string, number[]>();
    for (const [clientId, ops] of batch.clients) {
      if (ops.wipe) wipes.push(clientId);
      if (ops.meta) metas.push(ops.meta);
      for (const [filter, sub] of ops.subscriptions) {
        if (sub) subUpserts.push({ clientId, sub });
        else {
          let list = subRemovals.get(clientId);
          if (!list) subRemovals.set(clientId, (list = []));
          list.push(filter);
        }
      }
      for (const [seq, op] of ops.pending) {
        if (op.kind === 'add') pendingAdds.push(pendingRow(clientId, op.pending));
        else if (op.kind === 'update') pendingUpdates.push({ clientId, seq, state: op.state, packetId: op.packetId });
        else {
          let list = pendingRemovals.get(clientId);
          if (!list) pendingRemovals.set(clientId, (list = []));
          list.push(seq);
        }
      }
      for (const [packetId, present] of ops.inbound) {
        if (present) inboundAdds.push({ client_id: clientId, packet_id: packetId });
        else {
          let list = inboundRemovals.get(clientId);
          if (!list) inboundRemovals.set(clientId, (list = []));
          list.push(packetId);
        }
      }
    }

    // Each key carries one net change, so only the wipes need to come first.
    for (const ids of chunks(wipes, MAX_PARAMS)) {
      await trx.deleteFrom('broker_subscriptions').where('client_id', 'in', ids).execute();
      await trx.deleteFrom('broker_pending').where('client_id', 'in', ids).execute();
      await trx.deleteFrom('broker_inbound_qos2').where('client_id', 'in', ids).execute();
      await trx.deleteFrom('broker_sessions').where('client_id', 'in', ids).execute();
    }
    for (const rows of chunks(metas, MAX_PARAMS / 5)) {
      await trx
        .insertInto('broker_sessions')
        .values(
          rows.map((m) => ({
            client_id: m.clientId,
            principal_id: m.principalId,
            expiry_interval_s: m.expiryIntervalSeconds,
            disconnected_at: m.disconnectedAt,
            expires_at: sessionExpiresAt(m),
          })),
        )
        .onConflict((oc) =>
          oc.column('client_id').doUpdateSet((eb) => ({
            principal_id: eb.ref('excluded.principal_id'),
            expiry_interval_s: eb.ref('excluded.expiry_interval_s'),
            disconnected_at: eb.ref('excluded.disconnected_at'),
            expires_at: eb.ref('excluded.expires_at'),
          })),
        )
        .execute();
    }
    for (const [clientId, filters] of subRemovals) {
      for (const list of chunks(filters, MAX_PARAMS)) {
        await trx
          .deleteFrom('broker_subscriptions')
          .where('client_id', '=', clientId)
          .where('filter', 'in', list)
          .execute();
      }
    }
    for (const rows of chunks(subUpserts, MAX_PARAMS / 7)) {
      await trx
        .insertInto('broker_subscriptions')
        .values(
          rows.map(({ clientId, sub }) => ({
            client_id: clientId,
            filter: sub.filter,
            qos: sub.qos,
            no_local: sub.noLocal ? 1 : 0,
            retain_as_published: sub.retainAsPublished ? 1 : 0,
            retain_handling: sub.retainHandling,
            subscription_identifier: sub.subscriptionIdentifier ?? null,
          })),
        )
        .onConflict((oc) =>
          oc.columns(['client_id', 'filter']).doUpdateSet((eb) => ({
            qos: eb.ref('excluded.qos'),
            no_local: eb.ref('excluded.no_local'),
            retain_as_published: eb.ref('excluded.retain_as_published'),
            retain_handling: eb.ref('excluded.retain_handling'),
            subscription_identifier: eb.ref('excluded.subscription_identifier'),
          })),
        )
        .execute();
    }
    for (const [clientId, seqs] of pendingRemovals) {
      for (const list of chunks(seqs, MAX_PARAMS)) {
        await trx.deleteFrom('broker_pending').where('client_id', '=', clientId).where('seq', 'in', list).execute();
      }
    }
    for (const rows of chunks(pendingAdds, MAX_PARAMS / 10)) {
      await trx
        .insertInto('broker_pending')
        .values(rows)
        .onConflict((oc) =>
          oc.columns(['client_id', 'seq']).doUpdateSet((eb) => ({
            state: eb.ref('excluded.state'),
            packet_id: eb.ref('excluded.packet_id'),
            topic: eb.ref('excluded.topic'),
            payload: eb.ref('excluded.payload'),
            qos: eb.ref('excluded.qos'),
            retain: eb.ref('excluded.retain'),
            properties: eb.ref('excluded.properties'),
            expires_at: eb.ref('excluded.expires_at'),
          })),
        )
        .execute();
    }
    for (const u of pendingUpdates) {
      await trx
        .updateTable('broker_pending')
        .set({ state: u.state, packet_id: u.packetId })
        .where('client_id', '=', u.clientId)
        .where('seq', '=', u.seq)
        .execute();
    }
    for (const [clientId, ids] of inboundRemovals) {
      for (const list of chunks(ids, MAX_PARAMS)) {
        await trx
          .deleteFrom('broker_inbound_qos2')
          .where('client_id', '=', clientId)
          .where('packet_id', 'in', list)
          .execute();
      }
    }
    for (const rows of chunks(inboundAdds, MAX_PARAMS / 2)) {
      await trx
        .insertInto('broker_inbound_qos2')
        .values(rows)
        .onConflict((oc) => oc.columns(['client_id', 'packet_id']).doNothing())
        .execute();
    }
  }

  async #applyRetained(trx: Transaction<Database>, batch: Batch): Promise<void> {
    const removals: string[] = [];
    const upserts: Array<{
      topic: string;
      payload: Buffer;
      qos: number;
      properties: string | null;
      expires_at: number | null;
      updated_at: number;
    }> = [];
    for (const [topic, { message, at }] of batch.retained) {
      if (message === null) removals.push(topic);
      else {
        upserts.push({
          topic,
          payload: message.payload,
          qos: message.qos,
          properties: encodeProperties(message.properties),
          expires_at: message.expiresAt,
          updated_at: at,
        });
      }
    }
    for (const list of chunks(removals, MAX_PARAMS)) {
      await trx.deleteFrom('broker_retained').where('topic', 'in', list).execute();
    }
    for (const rows of chunks(upserts, MAX_PARAMS / 6)) {
      await trx
        .insertInto('broker_retained')
        .values(rows)
        .onConflict((oc) =>
          oc.column('topic').doUpdateSet((eb) => ({
            payload: eb.ref('excluded.payload'),
            qos: eb.ref('excluded.qos'),
            properties: eb.ref('excluded.properties'),
            expires_at: eb.ref('excluded.expires_at'),
            updated_at: eb.ref('excluded.updated_at'),
          })),
        )
        .execute();
    }
  }

  async #purge(trx: Transaction<Database>, now: number): Promise<number> {
    const expired = trx.selectFrom('broker_sessions').select('client_id').where('expires_at', '<=', now);
    await trx.deleteFrom('broker_subscriptions').where('client_id', 'in', expired).execute();
    await trx.deleteFrom('broker_pending').where('client_id', 'in', expired).execute();
    await trx.deleteFrom('broker_inbound_qos2').where('client_id', 'in', expired).execute();
    const sessions = await trx.deleteFrom('broker_sessions').where('expires_at', '<=', now).executeTakeFirst();
    await trx.deleteFrom('broker_retained').where('expires_at', '<=', now).execute();
    return Number(sessions.numDeletedRows);
  }

  // ---- flush, purge, close ---------------------------------------------------------------------------

  flush(): Promise<void> {
    const tail = this.#queue.at(-1);
    if (!tail) return Promise.resolve();
    const done = new Promise<void>((resolve, reject) => tail.waiters.push({ resolve, reject }));
    this.#retry();
    return done;
  }

  /** Clears a stall left by a failed batch and starts the writer. */
  #retry(): void {
    this.#stalled = false;
    this.#schedule();
  }

  async purgeExpired(now: number): Promise<number> {
    if (this.#closed) return 0;
    // In the write order: changes handed over before this call are applied first, later ones after.
    const batch = this.#take()!;
    batch.purgeAt = Math.max(batch.purgeAt ?? now, now);
    if (this.#open === batch) this.#open = undefined;
    const done = new Promise<void>((resolve, reject) => batch.waiters.push({ resolve, reject }));
    this.#retry();
    await done;
    return batch.purged;
  }

  close(): Promise<void> {
    this.#closing ??= (async () => {
      try {
        await this.flush();
      } catch (error) {
        this.#log.error(
          { err: error, unwritten: this.#waiting },
          'mqtt store: closing with broker state that could not be written',
        );
        throw error;
      } finally {
        this.#closed = true;
        if (this.#scheduled) clearImmediate(this.#scheduled);
        this.#scheduled = undefined;
      }
    })();
    return this.#closing;
  }
}
