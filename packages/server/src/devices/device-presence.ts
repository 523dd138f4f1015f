// Device presence: online/offline and when a device was last seen, kept in the devices subsystem's own
// table (device_presence). Connects and disconnects are written when they happen, in order per device;
// activity in between (every PUBLISH) only touches memory and is written at most every
// `activityFlushMs`, so a chatty device costs no database write per message. A process that crashed
// leaves its devices marked online: `start()` sets them offline (reason `platform-restart`).
// Scale mode (RES-2): each row names the process (node) that wrote the device's last connect. A process
// writes a disconnect only over its own connect (a device that moved to another process stays online),
// and `start()` leaves alone the devices of processes that are still alive.
import type { Kysely } from 'kysely';
import { sql } from 'kysely';
import type { Database } from '../store/index.ts';
import { type DevicePresence, type DisconnectReason, type PresenceChange, PresenceEvents } from './presence-events.ts';

/** The stored columns a presence is made of (qualified: joinable to a device read). See fromRow(). */
export const PRESENCE_COLUMNS = [
  'device_presence.online',
  'device_presence.last_seen_at',
  'device_presence.last_connected_at',
  'device_presence.last_disconnected_at',
  'device_presence.last_disconnect_reason',
] as const;

/** PRESENCE_COLUMNS as read; NULL throughout from a left join when the device never connected. */
export interface PresenceRow {
  online: number | null;
  last_seen_at: number | null;
  last_connected_at: number | null;
  last_disconnected_at: number | null;
  last_disconnect_reason: string | null;
}

export interface PresenceTrackerOptions {
  db: Kysely<Database>;
  log?: { warn(object: object, message: string): void; info(object: object, message: string): void };
  now?: () => number;
  /** How often remembered activity is written (default 30 s). */
  activityFlushMs?: number;
  /**
   * After a takeover ended a connection, how long the device stays online without a new connection
   * before it is marked offline (the new connection's CONNACK can still fail).
   */
  takeoverGraceMs?: number;
  /** This process's cluster node ID (scale mode); connects are stamped with it. */
  nodeId?: string;
  /** The other processes alive on this database (scale mode); none by default (one process). */
  liveNodes?: () => Promise<string[]>;
}

export interface ConnectedInfo {
  readonly protocolVersion: 4 | 5;
  readonly sessionPresent: boolean;
  readonly remoteAddress: string;
}

export interface DisconnectedInfo {
  readonly reason: Exclude<DisconnectReason, 'platform-restart'>;
  readonly reasonCode?: number;
  readonly connectedForMs: number;
  readonly remoteAddress: string;
}

/** What the tracker remembers of one live connection (in memory only). */
export interface LiveConnection {
  readonly connectedAt: number;
  readonly protocolVersion: 4 | 5;
  readonly sessionPresent: boolean;
  readonly remoteAddress: string;
}

interface LiveDevice {
  vendorId: string;
  /** At most one once a takeover has completed; two only between a takeover's two halves. */
  connections: LiveConnection[];
  lastActivity: number;
  /** Set while a takeover waits for its new connection: marks the device offline if none comes. */
  takeover: { timer: NodeJS.Timeout; settle: () => void } | undefined;
}

const CHUNK = 200;
const noLog = { warn() {}, info() {} };

export class PresenceTracker {
  readonly events = new PresenceEvents();
  readonly #db: Kysely<Database>;
  readonly #log: NonNullable<PresenceTrackerOptions['log']>;
  readonly #now: () => number;
  readonly #flushMs: number;
  readonly #graceMs: number;
  readonly #nodeId: string | null;
  readonly #liveNodes: () => Promise<string[]>;
  readonly #live = new Map<string, LiveDevice>();
  /** deviceId → last activity not yet written. */
  readonly #dirty = new Map<string, number>();
  /** Writes per device, in the order the events happened. */
  readonly #chains = new Map<string, Promise<void>>();
  #timer: NodeJS.Timeout | undefined;
  #flushing: Promise<void> = Promise.resolve();
  #closed = false;

  constructor(options: PresenceTrackerOptions) {
    this.#db = options.db;
    this.#log = options.log ?? noLog;
    this.#now = options.now ?? Date.now;
    this.#flushMs = options.activityFlushMs ?? 30_000;
    this.#graceMs = options.takeoverGraceMs ?? 2_000;
    this.#nodeId = options.nodeId ?? null;
    this.#liveNodes = options.liveNodes ?? (async () => []);
  }

  /**
   * Sets offline every device a previous process left online (it stopped without recording the
   * disconnects), then starts the activity flush. Returns how many devices were set offline. In scale
   * mode the devices of processes still alive (heartbeat, cluster/) are left alone.
   */
  async start(): Promise<number> {
    const stale = await this.releaseStale();
    this.#timer = setInterval(() => void this.flush(), this.#flushMs);
    this.#timer.unref();
    return stale;
  }

  /**
   * Sets offline the devices marked online by a process that is gone (in scale mode the cluster's
   * heartbeats tell which are alive; called at start and periodically, so a crashed worker's devices
   * do not stay online). Returns how many.
   */
  async releaseStale(): Promise<number> {
    const alive = (await this.#liveNodes()).filter((node) => node !== this.#nodeId);
    const result = await this.#db
      .updateTable('device_presence')
      .set({
        online: 0,
        // The crash time is unknown; the last time the device was seen is the best bound there is.
        last_disconnected_at: sql<number>`coalesce(last_seen_at, last_connected_at)`,
        last_disconnect_reason: 'platform-restart',
      })
      .where('online', '=', 1)
      .$if(this.#nodeId !== null, (qb) => qb.where('node_id', 'is distinct from', this.#nodeId))
      .$if(alive.length > 0, (qb) =>
        qb.where((eb) => eb.or([eb('node_id', 'is', null), eb('node_id', 'not in', alive)])),
      )
      .executeTakeFirst();
    const stale = Number(result.numUpdatedRows);
    if (stale > 0) this.#log.info({ devices: stale }, 'presence: devices left online by a stopped process set offline');
    return stale;
  }

  /** A device's CONNACK was sent. */
  connected(device: { id: string; vendorId: string }, info: ConnectedInfo): void {
    if (this.#closed) return;
    const at = this.#now();
    let live = this.#live.get(device.id);
    if (!live) {
      live = { vendorId: device.vendorId, connections: [], lastActivity: at, takeover: undefined };
      this.#live.set(device.id, live);
    }
    clearTimeout(live.takeover?.timer);
    live.takeover = undefined;
    live.connections.push({
      connectedAt: at,
      protocolVersion: info.protocolVersion,
      sessionPresent: info.sessionPresent,
      remoteAddress: info.remoteAddress,
    });
    live.lastActivity = Math.max(live.lastActivity, at);
    this.#dirty.delete(device.id);
    const change: PresenceChange = {
      type: 'connected',
      deviceId: device.id,
      vendorId: device.vendorId,
      at,
      online: true,
      protocolVersion: info.protocolVersion,
      sessionPresent: info.sessionPresent,
    };
    const node_id = this.#nodeId;
    this.#write(device.id, change, async () => {
      await this.#db
        .insertInto('device_presence')
        .values({ device_id: device.id, online: 1, last_seen_at: at, last_connected_at: at, node_id })
        .onConflict((oc) =>
          oc.column('device_id').doUpdateSet({ online: 1, last_seen_at: at, last_connected_at: at, node_id }),
        )
        .execute();
      return true;
    });
  }

  /**
   * A device's connection ended. Returns what was known of that connection (for the audit entry), or
   * undefined when the tracker never saw it connect.
   */
  disconnected(deviceId: string, info: DisconnectedInfo): LiveConnection | undefined {
    if (this.#closed) return undefined;
    const live = this.#live.get(deviceId);
    if (!live) return undefined;
    const at = this.#now();
    const connection = takeMatching(live.connections, at - info.connectedForMs, info.remoteAddress);
    // Seen: at its DISCONNECT if it sent one, otherwise at its last message or its CONNECT.
    const seenAt = Math.max(live.lastActivity, connection?.connectedAt ?? 0, info.reason === 'client' ? at : 0);
    this.#dirty.delete(deviceId);
    // A takeover's new connection is already there, or its CONNACK follows at once.
    const online = live.connections.length > 0 || info.reason === 'takeover';
    if (live.connections.length === 0 && !online) this.#live.delete(deviceId);
    const change: PresenceChange = {
      type: 'disconnected',
      deviceId,
      vendorId: live.vendorId,
      at,
      online,
      protocolVersion: connection?.protocolVersion ?? null,
      reason: info.reason,
      reasonCode: info.reasonCode ?? null,
      connectedForMs: info.connectedForMs,
    };
    this.#write(deviceId, change, () => this.#upsertDisconnect(deviceId, online, at, info.reason, seenAt));
    if (online && live.connections.length === 0) {
      // Should the new connection never complete (its CONNACK can still fail), the device is offline.
      clearTimeout(live.takeover?.timer);
      const settle = () => {
        clearTimeout(timer);
        live.takeover = undefined;
        if (this.#live.get(deviceId) !== live || live.connections.length > 0) return;
        this.#live.delete(deviceId);
        this.#write(deviceId, { ...change, at: this.#now(), online: false }, () =>
          this.#upsertDisconnect(deviceId, false, at, info.reason, seenAt),
        );
      };
      const timer = setTimeout(settle, this.#graceMs);
      timer.unref();
      live.takeover = { timer, settle };
    }
    return connection;
  }

  /** A device sent a message: remembered in memory, written by the next flush. */
  activity(deviceId: string, at: number): void {
    const live = this.#live.get(deviceId);
    if (!live || live.connections.length === 0) return;
    if (at > live.lastActivity) live.lastActivity = at;
    this.#dirty.set(deviceId, live.lastActivity);
  }

  /** Devices connected to this process, counted per tenant (vendor ID). */
  connectedByTenant(): Map<string, number> {
    const counts = new Map<string, number>();
    for (const live of this.#live.values()) {
      if (live.connections.length > 0) counts.set(live.vendorId, (counts.get(live.vendorId) ?? 0) + 1);
    }
    return counts;
  }

  /** A device's presence: the stored row, with activity not yet written folded in. */
  async get(deviceId: string): Promise<DevicePresence> {
    const row = await this.#db
      .selectFrom('device_presence')
      .select(PRESENCE_COLUMNS)
      .where('device_id', '=', deviceId)
      .executeTakeFirst();
    return this.fromRow(deviceId, row);
  }

  /**
   * get() from PRESENCE_COLUMNS read by another query (a device read left-joins them, so that reading
   * a device with its presence is one round trip); no row or NULL columns: never connected.
   */
  fromRow(deviceId: string, row: Partial<PresenceRow> | undefined): DevicePresence {
    const pending = this.#dirty.get(deviceId);
    const stored = row?.last_seen_at ?? null;
    return {
      online: row?.online === 1,
      lastSeenAt: pending !== undefined && (stored === null || pending > stored) ? pending : stored,
      lastConnectedAt: row?.last_connected_at ?? null,
      lastDisconnectedAt: row?.last_disconnected_at ?? null,
      lastDisconnectReason: (row?.last_disconnect_reason as DisconnectReason | null | undefined) ?? null,
    };
  }

  /** Writes remembered activity: one statement per chunk of devices, never moving last_seen_at back. */
  flush(): Promise<void> {
    this.#flushing = this.#flushing.then(async () => {
      if (this.#dirty.size === 0) return;
      const batch = [...this.#dirty];
      this.#dirty.clear();
      for (let i = 0; i < batch.length; i += CHUNK) {
        const chunk = batch.slice(i, i + CHUNK);
        const seen = sql<number>`case device_id ${sql.join(
          chunk.map(([id, at]) => sql`when ${id} then cast(${at} as bigint)`),
          sql` `,
        )} end`;
        try {
          await this.#db
            .updateTable('device_presence')
            .set({
              last_seen_at: sql<number>`case when last_seen_at is null or last_seen_at < ${seen} then ${seen} else last_seen_at end`,
            })
            .where(
              'device_id',
              'in',
              chunk.map(([id]) => id),
            )
            .execute();
        } catch (error) {
          this.#log.warn({ err: error, devices: chunk.length }, 'presence: activity not written');
        }
      }
    });
    return this.#flushing;
  }

  /** Stops the flush, writes what is remembered and waits for every pending write. */
  async close(): Promise<void> {
    if (this.#closed) return;
    clearInterval(this.#timer);
    // Takeovers still waiting for their new connection: the broker is closed, none will come.
    for (const live of [...this.#live.values()]) live.takeover?.settle();
    this.#closed = true;
    await this.flush();
    while (this.#chains.size > 0) await Promise.all(this.#chains.values());
  }

  /**
   * Stores a disconnect; false when the row belongs to another process's later connect (the device
   * moved there: it is not offline, and nothing is written or told).
   */
  async #upsertDisconnect(
    deviceId: string,
    online: boolean,
    at: number,
    reason: DisconnectReason,
    seenAt: number,
  ): Promise<boolean> {
    const values = {
      online: online ? 1 : 0,
      last_disconnected_at: at,
      last_disconnect_reason: reason,
    };
    const nodeId = this.#nodeId;
    const result = await this.#db
      .insertInto('device_presence')
      .values({ device_id: deviceId, ...values, last_seen_at: seenAt, node_id: nodeId })
      .onConflict((oc) => {
        const update = oc.column('device_id').doUpdateSet({
          ...values,
          last_seen_at: sql<number>`case when device_presence.last_seen_at is null or device_presence.last_seen_at < ${seenAt} then cast(${seenAt} as bigint) else device_presence.last_seen_at end`,
        });
        return nodeId === null
          ? update
          : update.where((eb) =>
              eb.or([eb('device_presence.node_id', 'is', null), eb('device_presence.node_id', '=', nodeId)]),
            );
      })
      .executeTakeFirst();
    return Number(result.numInsertedOrUpdatedRows ?? 1n) > 0;
  }

  /**
   * Runs a device's writes one after another (a disconnect never overtakes its connect), then tells
   * listeners unless the write said nothing changed.
   */
  #write(deviceId: string, change: PresenceChange, write: () => Promise<boolean>): void {
    const previous = this.#chains.get(deviceId) ?? Promise.resolve();
    const next = previous
      .then(write)
      .catch((error: unknown) => {
        this.#log.warn({ err: error, deviceId }, 'presence: change not stored');
        return true;
      })
      .then((changed) => {
        if (changed) this.#emit(change);
      });
    this.#chains.set(deviceId, next);
    void next.then(() => {
      if (this.#chains.get(deviceId) === next) this.#chains.delete(deviceId);
    });
  }

  #emit(change: PresenceChange): void {
    for (const listener of this.events.listeners('change')) {
      try {
        listener(change);
      } catch (error) {
        this.#log.warn({ err: error, deviceId: change.deviceId }, 'presence: listener failed');
      }
    }
  }
}

/** Removes and returns the connection that ended: same address first, then the closest connect time. */
function takeMatching(
  connections: LiveConnection[],
  connectedAt: number,
  remoteAddress: string,
): LiveConnection | undefined {
  const distance = (c: LiveConnection) =>
    (c.remoteAddress === remoteAddress ? 0 : Number.MAX_SAFE_INTEGER / 2) + Math.abs(c.connectedAt - connectedAt);
  let best = -1;
  for (let i = 0; i < connections.length; i++) {
    if (best < 0 || distance(connections[i]!) < distance(connections[best]!)) best = i;
  }
  return best < 0 ? undefined : connections.splice(best, 1)[0];
}
