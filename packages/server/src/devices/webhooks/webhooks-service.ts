// Webhooks for business systems (issue 7): a tenant registers HTTPS endpoints and the event types they
// want; every matching device event (accepted messages, platform-made changes, presence) becomes one
// row per endpoint in an outbox (`webhook_deliveries`) before anything is sent, so a restart loses
// nothing. A worker sends due rows with bounded concurrency, signed (HMAC-SHA256 over id, timestamp
// and body; @castellan/protocol verifyWebhookSignature), retries failures with exponential backoff and
// jitter, and dead-letters a delivery after webhooks.maxAttempts; dead letters can be replayed.
// Outbound requests pass the SSRF guard (outbound-guard.ts) at registration and at every attempt.
// Delivery is at least once: receivers deduplicate on the message ID.
import {
  signWebhook,
  WEBHOOK_ID_HEADER,
  WEBHOOK_SIGNATURE_HEADER,
  WEBHOOK_TIMESTAMP_HEADER,
} from '@castellan/protocol';
import type { Kysely, Selectable } from 'kysely';
import type { Logger } from 'pino';
import type { AuditEvent } from '../../audit/index.ts';
import { CastellanError } from '../../errors/index.ts';
import { asBuffer } from '../../lib/bytes.ts';
import { newId, newToken } from '../../lib/random-ids.ts';
import type { Database } from '../../store/index.ts';
import type { DeviceChange, DeviceEvents, DeviceMessage } from '../device-events.ts';
import type { FieldCipher } from '../devices-service.ts';
import { payloadJson } from '../payload-json.ts';
import type { PresenceChange, PresenceEvents } from '../presence-events.ts';
import { OutboundGuard, OutboundRefusedError } from './outbound-guard.ts';
import { type SendOutcome, sendWebhook } from './webhook-sender.ts';

export const WEBHOOK_EVENT_TYPES = [
  'device.telemetry',
  'device.state',
  'device.event',
  'device.ack',
  'device.presence',
  'device.change',
] as const;
export type WebhookEventType = (typeof WEBHOOK_EVENT_TYPES)[number];

const CHANNEL_TYPES: Readonly<Record<DeviceMessage['channel'], WebhookEventType>> = {
  telemetry: 'device.telemetry',
  state: 'device.state',
  events: 'device.event',
  acks: 'device.ack',
};

export interface WebhookEndpoint {
  readonly id: string;
  readonly vendorId: string;
  /** As normalised by the URL parser (what is called). */
  readonly url: string;
  readonly events: readonly WebhookEventType[];
  readonly description: string | null;
  readonly createdAt: number;
  readonly secretRotatedAt: number;
  /** Until when the secret before the last rotation still signs (alongside the new one). */
  readonly previousSecretExpiresAt: number | null;
}

export type WebhookDeliveryState = 'pending' | 'delivered' | 'dead';

export interface WebhookDelivery {
  readonly seq: number;
  /** The message ID (`castellan-webhook-id`, and `id` in the body): the same on every attempt. */
  readonly id: string;
  readonly endpointId: string;
  readonly vendorId: string;
  readonly eventType: WebhookEventType;
  readonly deviceId: string;
  readonly state: WebhookDeliveryState;
  readonly attempts: number;
  readonly createdAt: number;
  readonly nextAttemptAt: number | null;
  readonly lastAttemptAt: number | null;
  readonly lastStatus: number | null;
  readonly lastError: string | null;
  readonly deliveredAt: number | null;
  readonly deadAt: number | null;
}

export interface WebhooksConfig {
  maxAttempts: number;
  initialBackoffMs: number;
  maxBackoffMs: number;
  timeoutMs: number;
  concurrency: number;
  allowTargets: readonly string[];
}

export interface WebhooksServiceOptions {
  db: Kysely<Database>;
  /** Encrypts endpoint secrets under the tenant's key (the keys subsystem), like device secrets. */
  cipher: FieldCipher;
  config: Readonly<WebhooksConfig>;
  log: Logger;
  record: (event: AuditEvent) => void;
  userAgent: string;
  now?: () => number;
  random?: () => number;
  outbound?: OutboundGuard;
}

/** Endpoints one tenant may register. */
export const MAX_ENDPOINTS_PER_TENANT = 20;
/** How often the worker looks for due rows it was not told about (other processes, expired holds). */
const POLL_MS = 5000;
const DELIVERED_RETENTION_MS = 7 * 86_400_000;
const DEAD_RETENTION_MS = 30 * 86_400_000;
/** How long a tenant's endpoint list is reused for new events (other processes see changes this late). */
const ENDPOINT_CACHE_MS = 5000;
const LONGEST_GRACE_SECONDS = 7 * 86_400;

const secretAad = (id: string) => `webhook_endpoints.secret_ciphertext:${id}`;
const previousSecretAad = (id: string) => `webhook_endpoints.previous_secret_ciphertext:${id}`;

/**
 * The wait after `failures` (≥ 1) failed attempts: exponential (initial·2^(failures-1), capped at
 * max) with equal jitter (uniform between half and all of it), never less than the receiver's
 * Retry-After and never more than max.
 */
export function webhookRetryDelayMs(
  failures: number,
  config: Pick<WebhooksConfig, 'initialBackoffMs' | 'maxBackoffMs'>,
  retryAfterMs: number | null = null,
  random: () => number = Math.random,
): number {
  const ceiling = Math.min(config.maxBackoffMs, config.initialBackoffMs * 2 ** Math.min(Math.max(failures - 1, 0), 40));
  const jittered = Math.floor(ceiling / 2 + random() * (ceiling / 2));
  return Math.min(config.maxBackoffMs, Math.max(jittered, retryAfterMs ?? 0));
}

function toEndpoint(row: Selectable<Database['webhook_endpoints']>): WebhookEndpoint {
  return {
    id: row.id,
    vendorId: row.vendor_id,
    url: row.url,
    events: JSON.parse(row.events) as WebhookEventType[],
    description: row.description,
    createdAt: row.created_at,
    secretRotatedAt: row.secret_rotated_at,
    previousSecretExpiresAt: row.previous_secret_expires_at,
  };
}

function toDelivery(row: Selectable<Database['webhook_deliveries']>): WebhookDelivery {
  return {
    seq: Number(row.seq),
    id: row.id,
    endpointId: row.endpoint_id,
    vendorId: row.vendor_id,
    eventType: row.event_type as WebhookEventType,
    deviceId: row.device_id,
    state: row.state as WebhookDeliveryState,
    attempts: row.attempts,
    createdAt: row.created_at,
    nextAttemptAt: row.next_attempt_at,
    lastAttemptAt: row.last_attempt_at,
    lastStatus: row.last_status,
    lastError: row.last_error,
    deliveredAt: row.delivered_at,
    deadAt: row.dead_at,
  };
}

/** A device message as webhook data: JSON payloads as JSON, anything else as base64. */
function messageData(message: DeviceMessage): Record<string, unknown> {
  const json = payloadJson(message.payload);
  return {
    channel: message.channel,
    subtopic: message.rest.length > 0 ? message.rest.join('/') : null,
    ...(json.ok ? { payload: json.value } : { payloadBase64: message.payload.toString('base64') }),
  };
}

function presenceData(change: PresenceChange): Record<string, unknown> {
  return change.type === 'connected'
    ? { event: 'connected', online: change.online, protocolVersion: change.protocolVersion }
    : {
        event: 'disconnected',
        online: change.online,
        reason: change.reason,
        reasonCode: change.reasonCode,
        connectedForMs: change.connectedForMs,
      };
}

/** The host of a URL, for audit details (paths and queries may hold the receiver's tokens). */
function hostOf(url: string): string {
  try {
    return new URL(url).host;
  } catch {
    return '';
  }
}

export class WebhooksService {
  /** The SSRF guard every registration and every attempt passes (its resolver is replaceable). */
  readonly outbound: OutboundGuard;
  readonly #db: Kysely<Database>;
  readonly #cipher: FieldCipher;
  readonly #config: Readonly<WebhooksConfig>;
  readonly #log: Logger;
  readonly #record: (event: AuditEvent) => void;
  readonly #userAgent: string;
  readonly #now: () => number;
  readonly #random: () => number;
  readonly #endpointCache = new Map<string, { endpoints: Promise<WebhookEndpoint[]>; until: number }>();
  readonly #writes = new Set<Promise<void>>();
  readonly #inFlight = new Set<Promise<void>>();
  readonly #closing = new AbortController();
  readonly #unsubscribe: Array<() => void> = [];
  #timer: NodeJS.Timeout | undefined;
  #timerAt = Infinity;
  #purgeTimer: NodeJS.Timeout | undefined;
  #ticking: Promise<void> | undefined;
  #again = false;
  #closed = false;

  constructor(options: WebhooksServiceOptions) {
    this.#db = options.db;
    this.#cipher = options.cipher;
    this.#config = options.config;
    this.#log = options.log;
    this.#record = options.record;
    this.#userAgent = options.userAgent;
    this.#now = options.now ?? Date.now;
    this.#random = options.random ?? Math.random;
    try {
      this.outbound =
        options.outbound ??
        new OutboundGuard({ allowTargets: options.config.allowTargets, resolveTimeoutMs: options.config.timeoutMs });
    } catch (error) {
      throw new CastellanError('ERR_CONFIG_INVALID', {
        message: `Invalid configuration: webhooks.allowTargets: ${(error as Error).message}`,
      });
    }
  }

  /** Listens to the event sources (this tenant's events only reach this tenant's endpoints) and starts the worker. */
  start(sources: { deviceEvents: DeviceEvents; presence: PresenceEvents }): void {
    const onMessage = (m: DeviceMessage) =>
      this.#enqueue(m.vendorId, CHANNEL_TYPES[m.channel], m.deviceId, m.receivedAt, messageData(m));
    const onChange = (c: DeviceChange) =>
      this.#enqueue(c.vendorId, 'device.change', c.deviceId, c.at, { kind: c.kind, details: c.data });
    const onPresence = (p: PresenceChange) =>
      this.#enqueue(p.vendorId, 'device.presence', p.deviceId, p.at, presenceData(p));
    sources.deviceEvents.on('message', onMessage);
    sources.deviceEvents.on('change', onChange);
    sources.presence.on('change', onPresence);
    this.#unsubscribe.push(
      () => sources.deviceEvents.off('message', onMessage),
      () => sources.deviceEvents.off('change', onChange),
      () => sources.presence.off('change', onPresence),
    );
    this.#purgeTimer = setInterval(() => {
      this.purge().catch((error: unknown) => this.#log.warn({ err: error }, 'webhooks: purge failed'));
    }, 3_600_000);
    this.#purgeTimer.unref();
    // Rows a previous run left pending (or held by an attempt it never finished) are sent now.
    this.#wake(this.#now());
  }

  // ---- endpoints ---------------------------------------------------------------------------------

  async createEndpoint(
    vendorId: string,
    input: { url: string; events: readonly WebhookEventType[]; description?: string | null },
  ): Promise<{ endpoint: WebhookEndpoint; secret: string }> {
    const events = [...new Set(input.events)];
    if (events.length === 0 || events.some((e) => !(WEBHOOK_EVENT_TYPES as readonly string[]).includes(e))) {
      throw new CastellanError('ERR_VALIDATION_FAILED', {
        message: `events must name one or more of: ${WEBHOOK_EVENT_TYPES.join(', ')}`,
        details: { field: 'events' },
      });
    }
    const url = await this.#checkUrl(input.url);
    const existing = await this.#db
      .selectFrom('webhook_endpoints')
      .select((eb) => eb.fn.countAll<number>().as('n'))
      .where('vendor_id', '=', vendorId)
      .executeTakeFirstOrThrow();
    if (Number(existing.n) >= MAX_ENDPOINTS_PER_TENANT) throw new CastellanError('ERR_WEBHOOK_LIMIT');
    const id = newId('whk');
    const secret = newToken('cas_whsec');
    // Outside any transaction: the tenant's first key is created (and audited) on first use.
    await this.#cipher.ensureKey(vendorId);
    const now = this.#now();
    const row = {
      id,
      vendor_id: vendorId,
      url,
      events: JSON.stringify(events),
      description: input.description ?? null,
      secret_ciphertext: await this.#cipher.encrypt(vendorId, Buffer.from(secret, 'utf8'), secretAad(id)),
      previous_secret_ciphertext: null,
      previous_secret_expires_at: null,
      created_at: now,
      secret_rotated_at: now,
    };
    await this.#db.insertInto('webhook_endpoints').values(row).execute();
    this.#endpointCache.delete(vendorId);
    return { endpoint: toEndpoint(row), secret };
  }

  async getEndpoint(id: string): Promise<WebhookEndpoint | null> {
    const row = await this.#db.selectFrom('webhook_endpoints').selectAll().where('id', '=', id).executeTakeFirst();
    return row ? toEndpoint(row) : null;
  }

  async listEndpoints(vendorId: string): Promise<WebhookEndpoint[]> {
    const rows = await this.#db
      .selectFrom('webhook_endpoints')
      .selectAll()
      .where('vendor_id', '=', vendorId)
      .orderBy('created_at')
      .orderBy('id')
      .execute();
    return rows.map(toEndpoint);
  }

  /** Deletes an endpoint with its outbox rows (pending ones are never sent). */
  async deleteEndpoint(id: string): Promise<boolean> {
    const deleted = await this.#db.transaction().execute(async (trx) => {
      await trx.deleteFrom('webhook_deliveries').where('endpoint_id', '=', id).execute();
      return trx.deleteFrom('webhook_endpoints').where('id', '=', id).returning('vendor_id').executeTakeFirst();
    });
    if (deleted) this.#endpointCache.delete(deleted.vendor_id);
    return deleted !== undefined;
  }

  /**
   * A new secret (shown once). With `keepPreviousSeconds` the old one keeps signing alongside it for
   * that long (two `v1=` signatures), so receivers can switch without losing deliveries.
   */
  async rotateSecret(id: string, keepPreviousSeconds = 0): Promise<{ endpoint: WebhookEndpoint; secret: string }> {
    const row = await this.#db.selectFrom('webhook_endpoints').selectAll().where('id', '=', id).executeTakeFirst();
    if (!row) throw new CastellanError('ERR_WEBHOOK_NOT_FOUND');
    const grace = Math.min(Math.max(Math.floor(keepPreviousSeconds), 0), LONGEST_GRACE_SECONDS);
    const now = this.#now();
    const secret = newToken('cas_whsec');
    await this.#cipher.ensureKey(row.vendor_id);
    let previous: Buffer | null = null;
    if (grace > 0) {
      const current = await this.#cipher.decrypt(row.vendor_id, asBuffer(row.secret_ciphertext), secretAad(id));
      previous = await this.#cipher.encrypt(row.vendor_id, current, previousSecretAad(id));
      current.fill(0);
    }
    const update = {
      secret_ciphertext: await this.#cipher.encrypt(row.vendor_id, Buffer.from(secret, 'utf8'), secretAad(id)),
      previous_secret_ciphertext: previous,
      previous_secret_expires_at: previous ? now + grace * 1000 : null,
      secret_rotated_at: now,
    };
    const result = await this.#db
      .updateTable('webhook_endpoints')
      .set(update)
      .where('id', '=', id)
      .where('secret_rotated_at', '=', row.secret_rotated_at)
      .executeTakeFirst();
    // Another rotation won the race: its secret is the one in force, this one was never stored.
    if (Number(result.numUpdatedRows) !== 1) throw new CastellanError('ERR_WEBHOOK_NOT_FOUND');
    return { endpoint: toEndpoint({ ...row, ...update }), secret };
  }

  /**
   * Re-encrypts endpoint secrets under the tenant's current key version (after a key rotation, so the
   * old version can be destroyed). Returns how many moved.
   */
  async rewrapSecrets(vendorId: string): Promise<number> {
    let moved = 0;
    const rows = await this.#db
      .selectFrom('webhook_endpoints')
      .select(['id', 'secret_ciphertext', 'previous_secret_ciphertext'])
      .where('vendor_id', '=', vendorId)
      .execute();
    for (const row of rows) {
      const current = asBuffer(row.secret_ciphertext);
      const rewrapped = await this.#cipher.rewrap(vendorId, current, secretAad(row.id));
      const previous = row.previous_secret_ciphertext ? asBuffer(row.previous_secret_ciphertext) : null;
      const previousRewrapped = previous
        ? await this.#cipher.rewrap(vendorId, previous, previousSecretAad(row.id))
        : null;
      if (!rewrapped && !previousRewrapped) continue;
      const result = await this.#db
        .updateTable('webhook_endpoints')
        .set({
          ...(rewrapped ? { secret_ciphertext: rewrapped } : {}),
          ...(previousRewrapped ? { previous_secret_ciphertext: previousRewrapped } : {}),
        })
        .where('id', '=', row.id)
        .where('secret_ciphertext', '=', current)
        .executeTakeFirst();
      moved += Number(result.numUpdatedRows);
    }
    return moved;
  }

  async #checkUrl(raw: string): Promise<string> {
    try {
      return (await this.outbound.resolve(raw)).url.href;
    } catch (error) {
      if (!(error instanceof OutboundRefusedError)) throw error;
      this.#log.info({ host: hostOf(raw), why: error.detail }, 'webhooks: URL refused');
      if (error.reason === 'url-invalid') {
        throw new CastellanError('ERR_WEBHOOK_URL_INVALID', {
          message: `The webhook URL is not allowed: ${error.message}`,
          details: { field: 'url' },
        });
      }
      throw new CastellanError('ERR_WEBHOOK_URL_REFUSED', { details: { field: 'url' } });
    }
  }

  // ---- deliveries --------------------------------------------------------------------------------

  async listDeliveries(endpointId: string, options: { limit: number; beforeSeq?: number }): Promise<WebhookDelivery[]> {
    let query = this.#db.selectFrom('webhook_deliveries').selectAll().where('endpoint_id', '=', endpointId);
    if (options.beforeSeq !== undefined) query = query.where('seq', '<', options.beforeSeq);
    return (await query.orderBy('seq', 'desc').limit(options.limit).execute()).map(toDelivery);
  }

  async listDeadLetters(vendorId: string, options: { limit: number; beforeSeq?: number }): Promise<WebhookDelivery[]> {
    let query = this.#db
      .selectFrom('webhook_deliveries')
      .selectAll()
      .where('vendor_id', '=', vendorId)
      .where('state', '=', 'dead');
    if (options.beforeSeq !== undefined) query = query.where('seq', '<', options.beforeSeq);
    return (await query.orderBy('seq', 'desc').limit(options.limit).execute()).map(toDelivery);
  }

  async getDelivery(id: string): Promise<WebhookDelivery | null> {
    const row = await this.#db.selectFrom('webhook_deliveries').selectAll().where('id', '=', id).executeTakeFirst();
    return row ? toDelivery(row) : null;
  }

  /** Puts a dead letter back in the outbox with a fresh attempt budget; the message ID stays. */
  async replay(vendorId: string, deliveryId: string): Promise<WebhookDelivery> {
    const now = this.#now();
    const result = await this.#db
      .updateTable('webhook_deliveries')
      .set({ state: 'pending', attempts: 0, next_attempt_at: now, dead_at: null })
      .where('id', '=', deliveryId)
      .where('vendor_id', '=', vendorId)
      .where('state', '=', 'dead')
      .executeTakeFirst();
    if (Number(result.numUpdatedRows) !== 1) throw new CastellanError('ERR_WEBHOOK_DEAD_LETTER_NOT_FOUND');
    // Read before waking the worker: the answer is the replay as queued, not a delivery racing it.
    const queued = (await this.getDelivery(deliveryId))!;
    this.#wake(now);
    return queued;
  }

  /** Deletes delivered rows after 7 days and dead letters after 30; expired previous secrets. */
  async purge(): Promise<void> {
    const now = this.#now();
    await this.#db
      .deleteFrom('webhook_deliveries')
      .where('state', '=', 'delivered')
      .where('delivered_at', '<', now - DELIVERED_RETENTION_MS)
      .execute();
    await this.#db
      .deleteFrom('webhook_deliveries')
      .where('state', '=', 'dead')
      .where('dead_at', '<', now - DEAD_RETENTION_MS)
      .execute();
    await this.#db
      .updateTable('webhook_endpoints')
      .set({ previous_secret_ciphertext: null, previous_secret_expires_at: null })
      .where('previous_secret_expires_at', '<', now)
      .execute();
  }

  // ---- the outbox --------------------------------------------------------------------------------

  #endpointsOf(vendorId: string): Promise<WebhookEndpoint[]> {
    const now = this.#now();
    const hit = this.#endpointCache.get(vendorId);
    if (hit && hit.until > now) return hit.endpoints;
    const endpoints = this.listEndpoints(vendorId);
    this.#endpointCache.set(vendorId, { endpoints, until: now + ENDPOINT_CACHE_MS });
    endpoints.catch(() => this.#endpointCache.delete(vendorId));
    if (this.#endpointCache.size > 10_000) this.#endpointCache.clear();
    return endpoints;
  }

  /** Called synchronously by the event sources: the write runs in the background and is awaited on close. */
  #enqueue(
    vendorId: string,
    type: WebhookEventType,
    deviceId: string,
    occurredAt: number,
    data: Record<string, unknown>,
  ): void {
    if (this.#closed || !vendorId) return;
    const write = this.#write(vendorId, type, deviceId, occurredAt, data).catch((error: unknown) =>
      this.#log.error({ err: error, type, deviceId }, 'webhooks: event could not be queued'),
    );
    this.#writes.add(write);
    void write.then(() => this.#writes.delete(write));
  }

  async #write(
    vendorId: string,
    type: WebhookEventType,
    deviceId: string,
    occurredAt: number,
    data: Record<string, unknown>,
  ): Promise<void> {
    const endpoints = (await this.#endpointsOf(vendorId)).filter((e) => e.events.includes(type));
    if (endpoints.length === 0) return;
    const now = this.#now();
    const rows = endpoints.map((endpoint) => {
      const id = newId('whd');
      return {
        id,
        endpoint_id: endpoint.id,
        vendor_id: vendorId,
        event_type: type,
        device_id: deviceId,
        body: JSON.stringify({ id, type, occurredAt, tenant: vendorId, deviceId, data }),
        state: 'pending',
        attempts: 0,
        created_at: now,
        next_attempt_at: now,
        last_attempt_at: null,
        last_status: null,
        last_error: null,
        delivered_at: null,
        dead_at: null,
      };
    });
    await this.#db.insertInto('webhook_deliveries').values(rows).execute();
    this.#wake(now);
  }

  /** Runs the worker at `at` (or sooner if already due then). */
  #wake(at: number): void {
    if (this.#closed) return;
    if (this.#timer !== undefined && this.#timerAt <= at) return;
    clearTimeout(this.#timer);
    this.#timerAt = at;
    this.#timer = setTimeout(
      () => {
        this.#timer = undefined;
        this.#timerAt = Infinity;
        this.#tick();
      },
      Math.max(0, at - this.#now()),
    );
    this.#timer.unref();
  }

  #tick(): void {
    if (this.#closed) return;
    if (this.#ticking) {
      this.#again = true;
      return;
    }
    this.#ticking = (async () => {
      try {
        do {
          this.#again = false;
          await this.#claimDue();
        } while (this.#again && !this.#closed);
        // Every slot busy: the end of an attempt wakes the worker.
        if (this.#inFlight.size >= this.#config.concurrency) return;
        const next = await this.#db
          .selectFrom('webhook_deliveries')
          .select((eb) => eb.fn.min('next_attempt_at').as('at'))
          .where('state', '=', 'pending')
          .executeTakeFirst();
        const at = next?.at === null || next?.at === undefined ? Infinity : Number(next.at);
        this.#wake(Math.min(at, this.#now() + POLL_MS));
      } catch (error) {
        if (!this.#closed) {
          this.#log.error({ err: error }, 'webhooks: worker failed');
          this.#wake(this.#now() + POLL_MS);
        }
      } finally {
        this.#ticking = undefined;
        // Woken while finishing (a row written after the last look): look again now.
        if (this.#again && !this.#closed) {
          this.#again = false;
          this.#wake(this.#now());
        }
      }
    })();
  }

  /** Claims due rows up to the free concurrency and starts their attempts. */
  async #claimDue(): Promise<void> {
    const free = this.#config.concurrency - this.#inFlight.size;
    if (free <= 0) return;
    const now = this.#now();
    const due = await this.#db
      .selectFrom('webhook_deliveries')
      .select(['id', 'next_attempt_at'])
      .where('state', '=', 'pending')
      .where('next_attempt_at', '<=', now)
      .orderBy('next_attempt_at')
      .limit(free)
      .execute();
    // An attempt holds its row by pushing next_attempt_at past its own longest duration: another
    // process (or this one) picks it up again only if this one died mid-attempt (at least once).
    const hold = now + this.#config.timeoutMs * 2 + 30_000;
    for (const row of due) {
      if (this.#closed) return;
      const claimed = await this.#db
        .updateTable('webhook_deliveries')
        .set({ next_attempt_at: hold })
        .where('id', '=', row.id)
        .where('state', '=', 'pending')
        .where('next_attempt_at', '=', row.next_attempt_at)
        .executeTakeFirst();
      if (Number(claimed.numUpdatedRows) !== 1) continue;
      const attempt: Promise<void> = this.#attempt(row.id)
        .catch((error: unknown) => {
          if (!this.#closed) this.#log.error({ err: error, deliveryId: row.id }, 'webhooks: attempt failed');
        })
        .then(() => {
          this.#inFlight.delete(attempt);
          this.#wake(this.#now());
        });
      this.#inFlight.add(attempt);
    }
    if (due.length === free) this.#again = true;
  }

  async #attempt(id: string): Promise<void> {
    const row = await this.#db.selectFrom('webhook_deliveries').selectAll().where('id', '=', id).executeTakeFirst();
    if (!row || row.state !== 'pending') return;
    const endpoint = await this.#db
      .selectFrom('webhook_endpoints')
      .selectAll()
      .where('id', '=', row.endpoint_id)
      .executeTakeFirst();
    if (!endpoint) {
      await this.#db.deleteFrom('webhook_deliveries').where('id', '=', id).execute();
      return;
    }
    const startedAt = this.#now();
    let outcome: SendOutcome;
    let final = false;
    try {
      const target = await this.outbound.resolve(endpoint.url);
      const secrets = await this.#secretsOf(endpoint, startedAt);
      const timestamp = Math.floor(this.#now() / 1000);
      const signature = signWebhook({ secrets, id: row.id, timestamp, body: row.body });
      for (const secret of secrets) secret.fill(0);
      outcome = await sendWebhook(
        target,
        row.body,
        {
          'user-agent': this.#userAgent,
          [WEBHOOK_ID_HEADER]: row.id,
          [WEBHOOK_TIMESTAMP_HEADER]: String(timestamp),
          [WEBHOOK_SIGNATURE_HEADER]: signature,
        },
        { timeoutMs: this.#config.timeoutMs, signal: this.#closing.signal },
      );
    } catch (error) {
      if (!(error instanceof OutboundRefusedError)) throw error;
      // A name that no longer resolves may again later; one that now points inside never should.
      final = !error.transient;
      outcome = { ok: false, status: null, error: final ? 'address refused' : 'dns', retryAfterMs: null };
      if (final) {
        this.#log.warn({ webhookId: endpoint.id, deliveryId: id, why: error.detail }, 'webhooks: target refused');
        this.#record({
          actor: { type: 'system', id: 'webhooks' },
          tenant: row.vendor_id,
          type: 'webhook.target-refused',
          target: endpoint.id,
          result: 'denied',
          details: { deliveryId: id, host: hostOf(endpoint.url), why: error.detail },
        });
      }
    }
    // Closing: the row stays held and is sent again after the hold (by the next start, or another process).
    if (this.#closing.signal.aborted) return;
    const attempts = row.attempts + 1;
    const now = this.#now();
    const base = { attempts, last_attempt_at: startedAt, last_status: outcome.status, last_error: outcome.error };
    const dead = !outcome.ok && (final || attempts >= this.#config.maxAttempts);
    const next =
      outcome.ok || dead ? null : now + webhookRetryDelayMs(attempts, this.#config, outcome.retryAfterMs, this.#random);
    await this.#db
      .updateTable('webhook_deliveries')
      .set(
        outcome.ok
          ? { ...base, state: 'delivered', delivered_at: now, next_attempt_at: null }
          : dead
            ? { ...base, state: 'dead', dead_at: now, next_attempt_at: null }
            : { ...base, next_attempt_at: next },
      )
      .where('id', '=', id)
      .where('state', '=', 'pending')
      .execute();
    if (dead) {
      this.#log.warn(
        { webhookId: endpoint.id, deliveryId: id, attempts, error: outcome.error },
        'webhooks: dead-lettered',
      );
      this.#record({
        actor: { type: 'system', id: 'webhooks' },
        tenant: row.vendor_id,
        type: 'webhook.dead-letter',
        target: endpoint.id,
        result: 'failure',
        details: {
          deliveryId: id,
          eventType: row.event_type,
          deviceId: row.device_id,
          attempts,
          lastStatus: outcome.status,
          lastError: outcome.error,
        },
      });
    } else if (next !== null) {
      this.#wake(next);
    }
  }

  /** The secrets that sign now: the current one, and the previous one during its grace period. */
  async #secretsOf(row: Selectable<Database['webhook_endpoints']>, now: number): Promise<Buffer[]> {
    const secrets = [await this.#cipher.decrypt(row.vendor_id, asBuffer(row.secret_ciphertext), secretAad(row.id))];
    if (row.previous_secret_ciphertext && (row.previous_secret_expires_at ?? 0) > now) {
      secrets.push(
        await this.#cipher.decrypt(row.vendor_id, asBuffer(row.previous_secret_ciphertext), previousSecretAad(row.id)),
      );
    }
    return secrets;
  }

  /** Deliveries waiting in this process's queue of writes and attempts (tests, shutdown). */
  async idle(): Promise<void> {
    while (this.#writes.size > 0 || this.#inFlight.size > 0 || this.#ticking) {
      await Promise.allSettled([...this.#writes, ...this.#inFlight, this.#ticking]);
    }
  }

  /** Stops listening, finishes queued writes, aborts attempts in flight (their rows are retried later). */
  async close(): Promise<void> {
    if (this.#closed) return;
    for (const off of this.#unsubscribe) off();
    await Promise.allSettled([...this.#writes]);
    this.#closed = true;
    clearTimeout(this.#timer);
    clearInterval(this.#purgeTimer);
    this.#closing.abort();
    await Promise.allSettled([...this.#inFlight, this.#ticking]);
  }
}
