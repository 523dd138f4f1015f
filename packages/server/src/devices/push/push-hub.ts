// The push channel's hub (BIND-4): turns device messages, platform changes and presence into SSE events
// once, and routes each to the streams of the people (and vendors) who may read that device. Access is
// checked again for every event a person's stream is about to receive (answers cached at most
// ACCESS_CACHE_MS, dropped at once when a binding or share of the device changes), so a revoked, expired
// or unbound person stops receiving that device's events (BIND-2). Listeners on the event sources exist
// only while at least one stream is open.
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import { CastellanError } from '../../errors/index.ts';
import { type DeviceAccess, deviceRoleAllows } from '../device-access.ts';
import type { DeviceChange, DeviceEvents, DeviceMessage } from '../device-events.ts';
import type { PresenceChange, PresenceEvents } from '../presence-events.ts';
import {
  fromChange,
  fromMessage,
  fromPresence,
  type PushEvent,
  type PushEventBody,
  type PushEventType,
  sseFrame,
} from './push-events.ts';
import { type PushScope, PushStream, type SseSink, type StreamEndReason } from './push-stream.ts';

/** The longest a cached "may view" answer is trusted (a share that expires silently stops within this). */
export const ACCESS_CACHE_MS = 2000;
/** Fallback resynchronisation of people's device lists (changes are normally applied from events). */
const REFRESH_MS = 60_000;
const CACHE_MAX_ENTRIES = 100_000;
/** How long shutdown waits for the streams' end frames to reach their connections. */
const SHUTDOWN_FLUSH_MS = 1_000;

export interface PushHubOptions {
  deviceEvents: DeviceEvents;
  presence: PresenceEvents;
  access: Pick<DeviceAccess, 'roleOf' | 'devicesOf'>;
  log: Logger;
  streamsPerPrincipal: number;
  maxStreams: number;
  bufferBytes: number;
  heartbeatMs: number;
  maxStreamMs: number;
  resumeEvents: number;
  accessCacheMs?: number;
  refreshMs?: number;
  now?: () => number;
}

export interface OpenStreamOptions {
  /** Whose stream this is, for the per-principal limit (a person, a staff member, an access key). */
  principalKey: string;
  scope: PushScope;
  types: ReadonlySet<PushEventType>;
  /** The devices routed to the stream at the start (a person's: initialDevices). */
  devices: readonly string[];
  lastEventId?: string;
  sink: SseSink;
  reauthenticate?: () => Promise<boolean>;
  /** Called once the stream is admitted, before its first frame: write the response head here. */
  start(): void;
}

interface CachedAnswer {
  allowed: boolean;
  until: number;
  generation: number;
}

export class PushHub {
  readonly #o: PushHubOptions;
  readonly #now: () => number;
  readonly #cacheMs: number;
  /** Event IDs are `{epoch}-{seq}`: an ID from another process or an earlier start is recognised as such. */
  readonly #epoch = randomBytes(6).toString('hex');
  #seq = 0;
  #ring: PushEvent[] = [];
  #nextStreamId = 1;
  readonly #streams = new Set<PushStream>();
  readonly #byDevice = new Map<string, Set<PushStream>>();
  readonly #people = new Map<string, Set<PushStream>>();
  readonly #perPrincipal = new Map<string, number>();
  readonly #cache = new Map<string, CachedAnswer>();
  /** Bumped when a device's bindings or shares change: older cached answers no longer count. */
  readonly #generation = new Map<string, number>();
  #attached = false;
  #refreshTimer: NodeJS.Timeout | undefined;
  #closing = false;
  readonly stats = { opened: 0, slowClientsDropped: 0, eventsPublished: 0 };

  constructor(options: PushHubOptions) {
    this.#o = options;
    this.#now = options.now ?? Date.now;
    this.#cacheMs = Math.min(options.accessCacheMs ?? ACCESS_CACHE_MS, ACCESS_CACHE_MS);
  }

  get streamCount(): number {
    return this.#streams.size;
  }

  /** Listeners the hub holds on its event sources (zero when no stream is open). */
  get listenerCount(): number {
    return this.#attached ? 3 : 0;
  }

  /**
   * The devices a person's stream starts with: one device (checked; ERR_DEVICE_NOT_FOUND when the person
   * may not view it, exactly like a missing one) or all they own or share.
   */
  async initialDevices(userId: string, deviceId: string | null): Promise<string[]> {
    if (deviceId === null) return this.#o.access.devicesOf(userId);
    if (!(await this.mayView(userId, deviceId))) throw new CastellanError('ERR_DEVICE_NOT_FOUND');
    return [deviceId];
  }

  /** Whether the person may view the device now (role owner/admin/member/guest), cached briefly. */
  async mayView(userId: string, deviceId: string): Promise<boolean> {
    const key = `${userId}\u0000${deviceId}`;
    const now = this.#now();
    const generation = this.#generation.get(deviceId) ?? 0;
    const hit = this.#cache.get(key);
    if (hit && hit.until > now && hit.generation === generation) return hit.allowed;
    const allowed = deviceRoleAllows(await this.#o.access.roleOf(userId, deviceId), 'device.view');
    // An answer computed across a change of the device's access is not kept.
    if ((this.#generation.get(deviceId) ?? 0) === generation) {
      if (this.#cache.size >= CACHE_MAX_ENTRIES) this.#pruneCache(now);
      this.#cache.set(key, { allowed, until: now + this.#cacheMs, generation });
    }
    return allowed;
  }

  /** Admits and starts a stream; throws (before anything is written) when a limit is reached. */
  open(options: OpenStreamOptions): PushStream {
    if (this.#closing) throw new CastellanError('ERR_HTTP_SHUTTING_DOWN');
    if (this.#streams.size >= this.#o.maxStreams) throw new CastellanError('ERR_PUSH_UNAVAILABLE');
    const held = this.#perPrincipal.get(options.principalKey) ?? 0;
    if (held >= this.#o.streamsPerPrincipal) {
      throw new CastellanError('ERR_PUSH_TOO_MANY_STREAMS', {
        details: { limit: this.#o.streamsPerPrincipal },
      });
    }
    const scope = options.scope;
    const stream = new PushStream({
      id: this.#nextStreamId++,
      principalKey: options.principalKey,
      scope,
      types: options.types,
      sink: options.sink,
      bufferBytes: this.#o.bufferBytes,
      heartbeatMs: this.#o.heartbeatMs,
      maxStreamMs: this.#o.maxStreamMs,
      mayView: (deviceId) => (scope.kind === 'person' ? this.mayView(scope.userId, deviceId) : Promise.resolve(false)),
      ...(options.reauthenticate ? { reauthenticate: options.reauthenticate } : {}),
      onClose: (s, reason) => this.#closed(s, reason),
    });
    this.#perPrincipal.set(options.principalKey, held + 1);
    this.#streams.add(stream);
    this.stats.opened++;
    if (scope.kind === 'person') {
      let mine = this.#people.get(scope.userId);
      if (!mine) this.#people.set(scope.userId, (mine = new Set()));
      mine.add(stream);
    }
    for (const deviceId of options.devices) this.#route(stream, deviceId);
    this.#attach();
    try {
      // A client that left while the stream was being set up: nothing to start.
      if (options.sink.destroyed) throw new CastellanError('ERR_HTTP_BAD_REQUEST');
      options.start();
    } catch (error) {
      stream.close('client');
      throw error;
    }
    // Resume: what was missed since Last-Event-ID, if this process still holds it; otherwise the client
    // is told to reload its state. Replayed events are checked like live ones.
    const missed = options.lastEventId === undefined ? [] : this.#since(options.lastEventId);
    stream.send(
      `retry: 2000\n${sseFrame('ready', {
        resumed: missed !== null && options.lastEventId !== undefined,
        devices: stream.devices.size,
        heartbeatSeconds: Math.round(this.#o.heartbeatMs / 1000),
      })}`,
    );
    if (missed === null) stream.send(sseFrame('reset', { reason: 'events since Last-Event-ID are no longer held' }));
    else for (const event of missed) stream.enqueue(event);
    return stream;
  }

  /**
   * Ends every stream (platform shutdown) and waits, at most SHUTDOWN_FLUSH_MS, until their end frames
   * are handed to the connections: the HTTP server then drops idle connections, and a socket dropped
   * before the frame was written left the client without the reason (flaky [BIND-4] test on CI).
   */
  async close(): Promise<void> {
    this.#closing = true;
    const streams = [...this.#streams];
    for (const stream of streams) stream.end('shutdown');
    this.#detach();
    if (streams.length === 0) return;
    await Promise.race([
      Promise.all(streams.map((s) => s.finished)),
      sleep(SHUTDOWN_FLUSH_MS, undefined, { ref: false }),
    ]);
  }

  // ---- routing ----

  #route(stream: PushStream, deviceId: string): void {
    if (stream.closed || stream.devices.has(deviceId)) return;
    stream.devices.add(deviceId);
    let holders = this.#byDevice.get(deviceId);
    if (!holders) this.#byDevice.set(deviceId, (holders = new Set()));
    holders.add(stream);
  }

  #unroute(stream: PushStream, deviceId: string): void {
    stream.devices.delete(deviceId);
    const holders = this.#byDevice.get(deviceId);
    holders?.delete(stream);
    if (holders?.size === 0) this.#byDevice.delete(deviceId);
  }

  #closed(stream: PushStream, reason: StreamEndReason): void {
    this.#streams.delete(stream);
    for (const deviceId of [...stream.devices]) this.#unroute(stream, deviceId);
    if (stream.scope.kind === 'person') {
      const mine = this.#people.get(stream.scope.userId);
      mine?.delete(stream);
      if (mine?.size === 0) this.#people.delete(stream.scope.userId);
    }
    const held = (this.#perPrincipal.get(stream.principalKey) ?? 1) - 1;
    if (held > 0) this.#perPrincipal.set(stream.principalKey, held);
    else this.#perPrincipal.delete(stream.principalKey);
    if (reason === 'slow-client') {
      this.stats.slowClientsDropped++;
      this.#o.log.info({ stream: stream.id }, 'push: slow client disconnected (buffer full)');
    }
    if (this.#streams.size === 0) this.#detach();
  }

  // ---- event sources ----

  readonly #onMessage = (message: DeviceMessage): void => {
    const body = fromMessage(message);
    if (body) this.#publish(body);
  };

  readonly #onChange = (change: DeviceChange): void => {
    const accessChange = change.kind.startsWith('binding.') || change.kind.startsWith('share.');
    // Cached answers are void before the change itself is routed: it reaches only who may still see it.
    if (accessChange) this.#generation.set(change.deviceId, (this.#generation.get(change.deviceId) ?? 0) + 1);
    const event = this.#publish(fromChange(change));
    if (accessChange) this.#accessChanged(change.deviceId, event);
  };

  readonly #onPresence = (change: PresenceChange): void => {
    this.#publish(fromPresence(change));
  };

  #attach(): void {
    if (this.#attached) return;
    this.#attached = true;
    this.#o.deviceEvents.on('message', this.#onMessage);
    this.#o.deviceEvents.on('change', this.#onChange);
    this.#o.presence.on('change', this.#onPresence);
    this.#refreshTimer = setInterval(() => {
      this.#refresh().catch((error: unknown) => this.#o.log.warn({ err: error }, 'push: refresh failed'));
    }, this.#o.refreshMs ?? REFRESH_MS);
    this.#refreshTimer.unref();
  }

  #detach(): void {
    if (!this.#attached) return;
    this.#attached = false;
    this.#o.deviceEvents.off('message', this.#onMessage);
    this.#o.deviceEvents.off('change', this.#onChange);
    this.#o.presence.off('change', this.#onPresence);
    clearInterval(this.#refreshTimer);
    this.#refreshTimer = undefined;
    // Events happen unseen from now on: no earlier ID may claim that nothing was missed.
    this.#ring = [];
    this.#seq++;
    this.#cache.clear();
    this.#generation.clear();
  }

  #publish(body: PushEventBody): PushEvent {
    const seq = ++this.#seq;
    const event: PushEvent = {
      seq,
      type: body.type,
      deviceId: body.deviceId,
      vendorId: body.vendorId,
      frame: sseFrame(body.type, body.data, `${this.#epoch}-${seq}`),
    };
    this.stats.eventsPublished++;
    if (this.#o.resumeEvents > 0) {
      this.#ring.push(event);
      if (this.#ring.length > this.#o.resumeEvents) this.#ring.shift();
    }
    for (const stream of this.#byDevice.get(body.deviceId) ?? []) stream.enqueue(event);
    return event;
  }

  /** Events after `lastEventId`, or null when they are not all held any more. */
  #since(lastEventId: string): PushEvent[] | null {
    const match = /^([0-9a-f]{12})-(\d{1,15})$/.exec(lastEventId);
    if (!match || match[1] !== this.#epoch) return null;
    const last = Number(match[2]);
    if (last > this.#seq) return null;
    if (last === this.#seq) return [];
    const first = this.#ring[0];
    if (!first || first.seq > last + 1) return null;
    return this.#ring.filter((e) => e.seq > last);
  }

  // ---- access changes ----

  /**
   * A binding or share of the device changed (cached answers already dropped): streams that lost the device
   * stop receiving it (and are told); people connected who gained it start receiving it, beginning with
   * this change.
   */
  #accessChanged(deviceId: string, event: PushEvent): void {
    this.#recheck(deviceId, event).catch((error: unknown) =>
      this.#o.log.warn({ err: error, deviceId }, 'push: access re-check failed'),
    );
  }

  async #recheck(deviceId: string, event: PushEvent | null): Promise<void> {
    for (const stream of [...(this.#byDevice.get(deviceId) ?? [])]) {
      if (stream.scope.kind !== 'person') continue;
      if (await this.mayView(stream.scope.userId, deviceId)) continue;
      this.#revoke(stream, deviceId);
    }
    for (const [userId, streams] of [...this.#people]) {
      const waiting = () =>
        [...streams].filter(
          (s) =>
            !s.closed &&
            !s.devices.has(deviceId) &&
            s.scope.kind === 'person' &&
            (s.scope.deviceId === null || s.scope.deviceId === deviceId),
        );
      if (waiting().length === 0 || !(await this.mayView(userId, deviceId))) continue;
      for (const stream of waiting()) this.#grant(stream, deviceId, event);
    }
  }

  #grant(stream: PushStream, deviceId: string, event: PushEvent | null): void {
    this.#route(stream, deviceId);
    stream.send(sseFrame('access', { deviceId, access: 'granted' }));
    if (event) stream.enqueue(event);
  }

  #revoke(stream: PushStream, deviceId: string): void {
    if (!stream.devices.has(deviceId)) return;
    this.#unroute(stream, deviceId);
    stream.send(sseFrame('access', { deviceId, access: 'revoked' }));
  }

  /** Fallback: each connected person's device list from the store (e.g. a share that expired silently). */
  async #refresh(): Promise<void> {
    for (const [userId, streams] of [...this.#people]) {
      const current = new Set(await this.#o.access.devicesOf(userId));
      for (const stream of streams) {
        if (stream.closed || stream.scope.kind !== 'person') continue;
        const filter = stream.scope.deviceId;
        for (const deviceId of [...stream.devices]) if (!current.has(deviceId)) this.#revoke(stream, deviceId);
        for (const deviceId of current) {
          if (!stream.devices.has(deviceId) && (filter === null || filter === deviceId)) {
            this.#grant(stream, deviceId, null);
          }
        }
      }
    }
  }

  #pruneCache(now: number): void {
    for (const [key, answer] of this.#cache) if (answer.until <= now) this.#cache.delete(key);
    if (this.#cache.size >= CACHE_MAX_ENTRIES) this.#cache.clear();
  }
}
