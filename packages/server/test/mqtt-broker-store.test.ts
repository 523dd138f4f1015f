// The broker's durable store (SqlBrokerStore) on both databases: every row shape round-trips (binary
// payloads, MQTT 5 properties with binary correlation data), write-behind batches apply in call order
// and coalesce, a session deletion takes its rows with it, expiry on load and purge, a failed batch is
// kept and written on the next flush, and the backlog limit. The last test prints throughput.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import type {
  KyselyPlugin,
  PluginTransformQueryArgs,
  PluginTransformResultArgs,
  QueryResult,
  RootOperationNode,
  UnknownRow,
} from 'kysely';
import { pino } from 'pino';
import { SqlBrokerStore } from '../src/gateway/mqtt/index.ts';
import type { StoredMessage, StoredPending, StoredSubscription } from '../src/gateway/mqtt/broker-store.ts';
import { openStore, type Store } from '../src/store/index.ts';
import { dialectCases, openTestStore, POSTGRES_URL, type TestStore } from './helpers/dialects.ts';

/** Makes every query fail while `failing` is set: a storage outage on demand, on either database. */
class OutagePlugin implements KyselyPlugin {
  failing = false;
  transformQuery(args: PluginTransformQueryArgs): RootOperationNode {
    if (this.failing) throw new Error('forced storage outage');
    return args.node;
  }
  async transformResult(args: PluginTransformResultArgs): Promise<QueryResult<UnknownRow>> {
    return args.result;
  }
}

function capturingLogger() {
  const lines: Array<{ level: number; msg: string }> = [];
  const stream = new Writable({
    write(chunk, _encoding, callback) {
      for (const line of String(chunk).split('\n')) if (line) lines.push(JSON.parse(line));
      callback();
    },
  });
  return { log: pino({ level: 'info' }, stream), lines };
}

const message = (topic: string, payload: Buffer, extra: Partial<StoredMessage> = {}): StoredMessage => ({
  topic,
  payload,
  qos: 1,
  retain: false,
  expiresAt: null,
  ...extra,
});

const pending = (seq: number, topic = `devices/x/commands/${seq}`): StoredPending => ({
  seq,
  state: 'queued',
  packetId: null,
  message: message(topic, Buffer.from([seq & 0xff, 0x00, 0xff, 0xfe])),
});

const sub = (filter: string, extra: Partial<StoredSubscription> = {}): StoredSubscription => ({
  filter,
  qos: 1,
  noLocal: false,
  retainAsPublished: false,
  retainHandling: 0,
  ...extra,
});

for (const dialect of await dialectCases()) {
  describe(`MQTT broker store on ${dialect.name}`, { skip: dialect.skip }, () => {
    let testStore: TestStore;
    let store: Store;
    let schema: string | undefined;
    let outage: OutagePlugin;
    let nextClient = 0;
    /** A fresh client ID per test, so tests share one database without seeing each other's rows. */
    const clientId = () => `c${++nextClient}-${dialect.name}`;

    const open = (options: { maxWaitingMutations?: number; maxBatchMutations?: number } = {}) => {
      const { log, lines } = capturingLogger();
      const brokerStore = new SqlBrokerStore({ db: store.db.withPlugin(outage), log, ...options });
      return { brokerStore, lines };
    };
    const rowCount = async (
      table: 'broker_sessions' | 'broker_subscriptions' | 'broker_pending' | 'broker_inbound_qos2',
      id: string,
    ) =>
      Number(
        (
          await store.db
            .selectFrom(table)
            .select((eb) => eb.fn.countAll().as('n'))
            .where('client_id', '=', id)
            .executeTakeFirstOrThrow()
        ).n,
      );

    before(async () => {
      testStore = await openTestStore(dialect.name, 'broker-store');
      ({ store, schema } = testStore);
      outage = new OutagePlugin();
    });
    after(() => testStore?.dispose());

    test('a session round-trips: meta, subscriptions, pending in seq order, inbound QoS 2, binary and properties', async () => {
      const { brokerStore } = open();
      const id = clientId();
      const now = Date.now();
      brokerStore.saveSession({
        clientId: id,
        principalId: 'dev-1',
        expiryIntervalSeconds: 3600,
        disconnectedAt: null,
      });
      brokerStore.addSubscription(id, sub('devices/x/commands/#'));
      brokerStore.addSubscription(
        id,
        sub('devices/x/state', {
          qos: 2,
          noLocal: true,
          retainAsPublished: true,
          retainHandling: 2,
          subscriptionIdentifier: 268435455,
        }),
      );
      const properties = {
        payloadFormatIndicator: true,
        contentType: 'application/json',
        responseTopic: 'devices/x/events',
        correlationData: Buffer.from([0, 1, 2, 0xfe, 0xff]),
        userProperties: { a: '1', many: ['x', 'y'] },
      };
      // Added out of order and across batches: loaded in seq order.
      brokerStore.addPending(id, pending(3));
      await brokerStore.flush();
      brokerStore.addPending(id, {
        ...pending(1),
        message: message('devices/x/commands/a', Buffer.alloc(0), {
          qos: 2,
          retain: true,
          properties,
          expiresAt: now + 60_000,
        }),
      });
      brokerStore.addPending(id, { ...pending(2), state: 'sent', packetId: 7 });
      brokerStore.setInboundQos2(id, 42, true);
      brokerStore.setInboundQos2(id, 9, true);
      brokerStore.saveSession({ clientId: id, principalId: 'dev-1', expiryIntervalSeconds: 3600, disconnectedAt: now });
      await brokerStore.flush();

      const loaded = await brokerStore.loadSession(id, now + 1000);
      assert.ok(loaded);
      assert.deepEqual(
        {
          clientId: loaded.clientId,
          principalId: loaded.principalId,
          expiry: loaded.expiryIntervalSeconds,
          at: loaded.disconnectedAt,
        },
        { clientId: id, principalId: 'dev-1', expiry: 3600, at: now },
      );
      assert.deepEqual(loaded.subscriptions, [
        sub('devices/x/commands/#'),
        sub('devices/x/state', {
          qos: 2,
          noLocal: true,
          retainAsPublished: true,
          retainHandling: 2,
          subscriptionIdentifier: 268435455,
        }),
      ]);
      assert.deepEqual(
        loaded.pending.map((p) => p.seq),
        [1, 2, 3],
      );
      assert.deepEqual(loaded.pending[0], {
        seq: 1,
        state: 'queued',
        packetId: null,
        message: {
          topic: 'devices/x/commands/a',
          payload: Buffer.alloc(0),
          qos: 2,
          retain: true,
          properties,
          expiresAt: now + 60_000,
        },
      });
      assert.ok(Buffer.isBuffer(loaded.pending[0].message.properties.correlationData));
      assert.deepEqual(loaded.pending[1], { ...pending(2), state: 'sent', packetId: 7 });
      assert.deepEqual(loaded.pending[2], pending(3));
      assert.ok(Buffer.isBuffer(loaded.pending[2].message.payload));
      assert.deepEqual(loaded.inboundQos2, [9, 42]);
      // The same session through loadSessions.
      const all = await brokerStore.loadSessions(now + 1000);
      assert.deepEqual(
        all.find((s) => s.clientId === id),
        loaded,
      );
      await brokerStore.close();
    });

    test('saving a session keeps its rows; removals and updates land; deleteSession removes every row', async () => {
      const { brokerStore } = open();
      const id = clientId();
      const other = clientId();
      brokerStore.saveSession({ clientId: id, principalId: 'p', expiryIntervalSeconds: 60, disconnectedAt: null });
      brokerStore.saveSession({ clientId: other, principalId: 'q', expiryIntervalSeconds: 60, disconnectedAt: null });
      for (const c of [id, other]) {
        brokerStore.addSubscription(c, sub('a/#'));
        brokerStore.addSubscription(c, sub('b'));
        brokerStore.addPending(c, pending(1));
        brokerStore.addPending(c, pending(2));
        brokerStore.setInboundQos2(c, 5, true);
      }
      await brokerStore.flush();
      brokerStore.saveSession({ clientId: id, principalId: 'p', expiryIntervalSeconds: 120, disconnectedAt: null });
      brokerStore.removeSubscription(id, 'b');
      brokerStore.addSubscription(id, sub('a/#', { qos: 0 })); // replaces [MQTT-3.8.4-3]
      brokerStore.updatePending(id, 1, 'released', 11);
      brokerStore.removePending(id, 2);
      brokerStore.setInboundQos2(id, 5, false);
      await brokerStore.flush();
      const s = (await brokerStore.loadSession(id, Date.now()))!;
      assert.equal(s.expiryIntervalSeconds, 120);
      assert.deepEqual(s.subscriptions, [sub('a/#', { qos: 0 })]);
      assert.deepEqual(s.pending, [{ ...pending(1), state: 'released', packetId: 11 }]);
      assert.deepEqual(s.inboundQos2, []);

      brokerStore.deleteSession(id);
      await brokerStore.flush();
      assert.equal(await brokerStore.loadSession(id, Date.now()), undefined);
      for (const table of [
        'broker_sessions',
        'broker_subscriptions',
        'broker_pending',
        'broker_inbound_qos2',
      ] as const) {
        assert.equal(await rowCount(table, id), 0, `${table} rows of the deleted session`);
      }
      // The other client's rows are untouched.
      assert.equal(await rowCount('broker_subscriptions', other), 2);
      assert.equal(await rowCount('broker_pending', other), 2);
      assert.equal(await rowCount('broker_inbound_qos2', other), 1);
      await brokerStore.close();
    });

    test('mutations apply in call order inside one batch, and concurrent callers share one transaction', async () => {
      const { brokerStore } = open();
      const id = clientId();
      const topic = `retained/${id}`;
      await brokerStore.flush();
      const batchesBefore = brokerStore.stats.batchesWritten;
      // A delete in the middle of a batch wipes what came before it for that client, not what follows.
      brokerStore.saveSession({ clientId: id, principalId: 'old', expiryIntervalSeconds: 10, disconnectedAt: null });
      brokerStore.addSubscription(id, sub('old'));
      brokerStore.addPending(id, pending(1));
      brokerStore.deleteSession(id);
      brokerStore.saveSession({ clientId: id, principalId: 'new', expiryIntervalSeconds: 20, disconnectedAt: null });
      brokerStore.addSubscription(id, sub('new'));
      brokerStore.addPending(id, pending(1, 'fresh'));
      // Added then removed in the same batch: never written.
      brokerStore.addPending(id, pending(2));
      brokerStore.updatePending(id, 2, 'sent', 3);
      brokerStore.removePending(id, 2);
      // An update of a row added in the same batch lands on the added row.
      brokerStore.addPending(id, pending(3));
      brokerStore.updatePending(id, 3, 'sent', 4);
      // Retained: the last of several writes of a topic wins.
      brokerStore.setRetained(topic, message(topic, Buffer.from('1')));
      brokerStore.setRetained(topic, null);
      brokerStore.setRetained(topic, message(topic, Buffer.from('3')));
      const flushes = [brokerStore.flush(), brokerStore.flush()];
      await Promise.all(flushes);
      assert.equal(brokerStore.stats.batchesWritten - batchesBefore, 1, 'one transaction for the whole turn');
      const s = (await brokerStore.loadSession(id, Date.now()))!;
      assert.equal(s.principalId, 'new');
      assert.deepEqual(
        s.subscriptions.map((x) => x.filter),
        ['new'],
      );
      assert.deepEqual(s.pending, [pending(1, 'fresh'), { ...pending(3), state: 'sent', packetId: 4 }]);
      const retained = (await brokerStore.loadRetained()).find((m) => m.topic === topic);
      assert.deepEqual(retained, { ...message(topic, Buffer.from('3')), retain: true });
      // A later batch clears it.
      brokerStore.setRetained(topic, null);
      await brokerStore.flush();
      assert.equal(
        (await brokerStore.loadRetained()).find((m) => m.topic === topic),
        undefined,
      );
      await brokerStore.close();
    });

    test('retained messages round-trip with properties and disappear once expired', async () => {
      const { brokerStore } = open();
      const base = `retained-${clientId()}`;
      const properties = { correlationData: Buffer.from('c0ffee', 'hex'), userProperties: { k: 'v' } };
      brokerStore.setRetained(
        `${base}/a`,
        message(`${base}/a`, Buffer.from([0xff, 0, 1]), { qos: 2, retain: true, properties }),
      );
      brokerStore.setRetained(`${base}/gone`, message(`${base}/gone`, Buffer.from('x'), { expiresAt: Date.now() - 1 }));
      brokerStore.setRetained(
        `${base}/later`,
        message(`${base}/later`, Buffer.from('y'), { expiresAt: Date.now() + 3_600_000 }),
      );
      await brokerStore.flush();
      const mine = (await brokerStore.loadRetained()).filter((m) => m.topic.startsWith(base));
      assert.deepEqual(
        mine.map((m) => m.topic),
        [`${base}/a`, `${base}/later`],
      );
      assert.deepEqual(mine[0], message(`${base}/a`, Buffer.from([0xff, 0, 1]), { qos: 2, retain: true, properties }));
      await brokerStore.close();
    });

    test('loading: expired sessions are left out; one left "connected" by a crash counts as disconnected now', async () => {
      const { brokerStore } = open();
      const t0 = 1_000_000_000_000;
      const [expired, live, crashed, forever] = [clientId(), clientId(), clientId(), clientId()];
      brokerStore.saveSession({ clientId: expired, principalId: 'p', expiryIntervalSeconds: 10, disconnectedAt: t0 });
      brokerStore.saveSession({ clientId: live, principalId: 'p', expiryIntervalSeconds: 100, disconnectedAt: t0 });
      brokerStore.saveSession({ clientId: crashed, principalId: 'p', expiryIntervalSeconds: 10, disconnectedAt: null });
      brokerStore.saveSession({
        clientId: forever,
        principalId: 'p',
        expiryIntervalSeconds: 0xffffffff,
        disconnectedAt: t0,
      });
      brokerStore.addPending(expired, pending(1));
      await brokerStore.flush();
      const now = t0 + 50_000;
      const ids = (await brokerStore.loadSessions(now)).map((s) => s.clientId);
      assert.ok(!ids.includes(expired));
      assert.ok(ids.includes(live) && ids.includes(crashed) && ids.includes(forever));
      assert.equal(await brokerStore.loadSession(expired, now), undefined);
      const c = (await brokerStore.loadSessions(now)).find((s) => s.clientId === crashed)!;
      assert.equal(c.disconnectedAt, now);
      await brokerStore.flush();
      // Stored so: its expiry runs from the load, and a purge after it ends the session.
      const row = await store.db
        .selectFrom('broker_sessions')
        .select(['disconnected_at', 'expires_at'])
        .where('client_id', '=', crashed)
        .executeTakeFirstOrThrow();
      assert.deepEqual({ ...row }, { disconnected_at: now, expires_at: now + 10_000 });
      await brokerStore.close();
    });

    test('purgeExpired removes expired sessions with all their rows and expired retained messages', async () => {
      const { brokerStore } = open();
      const t0 = 2_000_000_000_000;
      const [expired, live] = [clientId(), clientId()];
      for (const [id, expiry] of [
        [expired, 10],
        [live, 1000],
      ] as const) {
        brokerStore.saveSession({ clientId: id, principalId: 'p', expiryIntervalSeconds: expiry, disconnectedAt: t0 });
        brokerStore.addSubscription(id, sub('f'));
        brokerStore.addPending(id, pending(1));
        brokerStore.setInboundQos2(id, 1, true);
      }
      const topic = `purge-${expired}`;
      brokerStore.setRetained(`${topic}/old`, message(`${topic}/old`, Buffer.from('o'), { expiresAt: t0 + 5_000 }));
      brokerStore.setRetained(`${topic}/new`, message(`${topic}/new`, Buffer.from('n'), { expiresAt: t0 + 500_000 }));
      // Handed over without a flush: the purge still comes after these in the write order.
      const removed = await brokerStore.purgeExpired(t0 + 10_000);
      assert.ok(removed >= 1);
      for (const table of [
        'broker_sessions',
        'broker_subscriptions',
        'broker_pending',
        'broker_inbound_qos2',
      ] as const) {
        assert.equal(await rowCount(table, expired), 0, `${table} of the expired session`);
        assert.equal(await rowCount(table, live), 1, `${table} of the live session`);
      }
      const topics = (
        await store.db.selectFrom('broker_retained').select('topic').where('topic', 'like', `${topic}/%`).execute()
      ).map((r) => r.topic);
      assert.deepEqual(topics, [`${topic}/new`]);
      assert.equal(await brokerStore.purgeExpired(t0 + 10_000), 0);
      await brokerStore.close();
    });

    test('a failed batch is logged, rejects flush, is kept and is written, in order, on the next flush', async () => {
      const { brokerStore, lines } = open();
      const id = clientId();
      const topic = `fail-${id}`;
      brokerStore.saveSession({ clientId: id, principalId: 'p', expiryIntervalSeconds: 60, disconnectedAt: null });
      await brokerStore.flush();
      outage.failing = true;
      try {
        brokerStore.addPending(id, pending(1));
        brokerStore.setRetained(topic, message(topic, Buffer.from('first')));
        await assert.rejects(brokerStore.flush(), (error: Error & { code?: string }) => {
          assert.equal(error.code, 'ERR_STORE_UNAVAILABLE');
          assert.match(String((error.cause as Error).message), /forced storage outage/);
          return true;
        });
        assert.ok(lines.some((l) => l.level === 50 && /batch write failed/.test(l.msg)));
        assert.equal(brokerStore.stats.batchesFailed >= 1, true);
        // Mutations are still accepted while storage is down; they follow the failed batch.
        brokerStore.setRetained(topic, message(topic, Buffer.from('second')));
        brokerStore.addPending(id, pending(2));
        assert.equal(brokerStore.backlog, 4);
        // Still failing: the retry fails too, and nothing is lost.
        await assert.rejects(brokerStore.flush(), { code: 'ERR_STORE_UNAVAILABLE' });
        assert.equal(brokerStore.backlog, 4);
        // Retries within a minute are not logged again (every flush retries while storage is down).
        assert.equal(lines.filter((l) => /batch write failed/.test(l.msg)).length, 1);
      } finally {
        outage.failing = false;
      }
      assert.equal(await rowCount('broker_pending', id), 0, 'nothing of the failed batch was committed');
      await brokerStore.flush();
      assert.equal(brokerStore.backlog, 0);
      assert.ok(lines.some((l) => l.level === 30 && /writing again after failures/.test(l.msg)));
      const s = (await brokerStore.loadSession(id, Date.now()))!;
      assert.deepEqual(
        s.pending.map((p) => p.seq),
        [1, 2],
      );
      const retained = (await brokerStore.loadRetained()).find((m) => m.topic === topic);
      assert.equal(retained?.payload.toString(), 'second');
      await brokerStore.close();
    });

    test('a store whose database is closed rejects flush with ERR_STORE_UNAVAILABLE', async () => {
      const dir = mkdtempSync(join(tmpdir(), 'castellan-broker-closed-'));
      const own = await openStore({
        url: dialect.name === 'postgres' ? POSTGRES_URL : '',
        dataDir: dir,
        sqliteFile: 'closed.db',
        poolMax: 2,
        ...(schema ? { schema } : {}),
      });
      try {
        const { log, lines } = capturingLogger();
        const brokerStore = new SqlBrokerStore({ db: own.db, log });
        // (A query first: Kysely only tears down a driver it has started.)
        await own.ping();
        await own.close();
        brokerStore.setRetained('t', message('t', Buffer.from('x')));
        await assert.rejects(brokerStore.flush(), { code: 'ERR_STORE_UNAVAILABLE' });
        await assert.rejects(brokerStore.close(), { code: 'ERR_STORE_UNAVAILABLE' });
        assert.ok(lines.some((l) => /closing with broker state that could not be written/.test(l.msg)));
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    test('above maxWaitingMutations mutations are still accepted, a warning is logged, flush waits for all', async () => {
      const { brokerStore, lines } = open({ maxWaitingMutations: 10, maxBatchMutations: 4 });
      const id = clientId();
      outage.failing = true;
      try {
        brokerStore.saveSession({ clientId: id, principalId: 'p', expiryIntervalSeconds: 60, disconnectedAt: null });
        for (let seq = 1; seq <= 20; seq++) brokerStore.addPending(id, pending(seq));
        await assert.rejects(brokerStore.flush(), { code: 'ERR_STORE_UNAVAILABLE' });
        assert.equal(brokerStore.backlog, 21);
        assert.equal(brokerStore.overloaded, true);
        assert.ok(lines.some((l) => l.level === 40 && /storage is behind/.test(l.msg)));
      } finally {
        outage.failing = false;
      }
      const before = brokerStore.stats.batchesWritten;
      await brokerStore.flush();
      assert.equal(brokerStore.overloaded, false);
      // 21 mutations at most 4 per transaction, written in order.
      assert.equal(brokerStore.stats.batchesWritten - before, 6);
      assert.deepEqual(
        (await brokerStore.loadSession(id, Date.now()))!.pending.map((p) => p.seq),
        Array.from({ length: 20 }, (_, i) => i + 1),
      );
      await brokerStore.close();
    });

    test('throughput: pending inserts and deletes per second in write-behind batches (printed, not asserted)', async (t) => {
      const { brokerStore } = open({ maxBatchMutations: 10_000 });
      const clients = Array.from({ length: 100 }, () => clientId());
      for (const c of clients) {
        brokerStore.saveSession({ clientId: c, principalId: 'p', expiryIntervalSeconds: 60, disconnectedAt: null });
      }
      await brokerStore.flush();
      const perClient = 200;
      const total = clients.length * perClient;
      const payload = Buffer.alloc(64, 7);
      const started = performance.now();
      for (let seq = 1; seq <= perClient; seq++) {
        for (const c of clients) {
          brokerStore.addPending(c, {
            seq,
            state: 'queued',
            packetId: null,
            message: message(`devices/${c}/commands/x`, payload),
          });
        }
      }
      await brokerStore.flush();
      const inserted = performance.now();
      for (let seq = 1; seq <= perClient; seq++) for (const c of clients) brokerStore.removePending(c, seq);
      await brokerStore.flush();
      const deleted = performance.now();
      for (const c of clients) assert.equal(await rowCount('broker_pending', c), 0);
      const rate = (n: number, ms: number) => Math.round((n / ms) * 1000);
      const report =
        `${dialect.name}: ${total} pending inserts in ${(inserted - started).toFixed(0)} ms ` +
        `(${rate(total, inserted - started)}/s), ${total} deletes in ${(deleted - inserted).toFixed(0)} ms ` +
        `(${rate(total, deleted - inserted)}/s), batches of up to 10000`;
      t.diagnostic(report);
      console.log(`[bench] ${report}`);

      // Small transactions, as under light load: each round commits 10 adds, then their move to 'sent',
      // then their removal (three commits, each durable before the next starts).
      const rounds = 100;
      const smallStarted = performance.now();
      for (let round = 0; round < rounds; round++) {
        const c = clients[round % clients.length]!;
        const seqs = Array.from({ length: 10 }, (_, i) => 1_000 + round * 10 + i);
        for (const seq of seqs) {
          brokerStore.addPending(c, { seq, state: 'queued', packetId: null, message: message('x', payload) });
        }
        await brokerStore.flush();
        for (const seq of seqs) brokerStore.updatePending(c, seq, 'sent', (seq % 65535) + 1);
        await brokerStore.flush();
        for (const seq of seqs) brokerStore.removePending(c, seq);
        await brokerStore.flush();
      }
      const smallMs = performance.now() - smallStarted;
      const small =
        `${dialect.name}: ${rounds * 3} transactions of 10 (add, update, remove) in ${smallMs.toFixed(0)} ms ` +
        `(${rate(rounds * 3, smallMs)} commits/s, ${rate(rounds * 30, smallMs)} mutations/s)`;
      t.diagnostic(small);
      console.log(`[bench] ${small}`);
      await brokerStore.close();
    });
  });
}
