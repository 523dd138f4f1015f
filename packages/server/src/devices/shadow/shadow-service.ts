// The device shadow (CHAN-7), after AWS IoT Device Shadow: `reported` is what the device last said
// about itself (devices/{id}/state), `desired` what apps and operators want it to be. One document
// per device with a version that grows on every change; apps update `desired` with optimistic
// concurrency (a stale expectedVersion is refused with the current version), and every desired change
// is published retained at QoS 1 on devices/{id}/shadow/desired, so a device that connects later
// still gets the latest. A report carries the version of the desired document the device last saw;
// one based on an older desired version is stale (it crossed a newer desired change) and is ignored
// and counted: the device receives the newer desired state and reports again.
import { deviceTopic } from '@castellan/protocol';
import type { Kysely } from 'kysely';
import type { Logger } from 'pino';
import { CastellanError } from '../../errors/index.ts';
import { type ConnectedDevice, PublishRefusedError } from '../../gateway/index.ts';
import type { Database } from '../../store/index.ts';
import type { DeviceEvents } from '../device-events.ts';
import type { Device } from '../devices-service.ts';
import {
  checkDocument,
  deltaOf,
  isJsonObject,
  type JsonObject,
  jsonEqual,
  mergeDocument,
  parseStoredObject,
} from './json-document.ts';

/** Per top-level key, when it last changed (ms since the epoch). */
export interface ShadowMetadata {
  readonly desired: Readonly<Record<string, number>>;
  readonly reported: Readonly<Record<string, number>>;
}

export interface Shadow {
  readonly deviceId: string;
  readonly desired: JsonObject;
  readonly reported: JsonObject;
  /** What desired asks for that reported does not show yet. */
  readonly delta: JsonObject;
  /** 0 for a device without a shadow; grows on every change. */
  readonly version: number;
  /** The version of the last desired change. */
  readonly desiredVersion: number;
  readonly metadata: ShadowMetadata;
  readonly desiredUpdatedAt: number | null;
  readonly reportedUpdatedAt: number | null;
  /** Reports ignored as stale since the shadow was created. */
  readonly staleReports: number;
}

/**
 * Validates a desired update against the device's product (the product's data-point schema, when it
 * has one); throws a CastellanError saying what is wrong.
 */
export type DesiredStateCheck = (device: Device, state: JsonObject) => Promise<void> | void;

export interface ShadowServiceOptions {
  db: Kysely<Database>;
  /** Publishes platform → device (the broker's publishSystem). */
  publish: (topic: string, payload: Buffer, options: { qos: 0 | 1; retain: boolean }) => void;
  log: Logger;
  events?: DeviceEvents;
  checkDesired?: DesiredStateCheck;
  now?: () => number;
}

/** Counters since start, for operators (stale and refused reports are expected, but not often). */
export interface ShadowStats {
  reportsApplied: number;
  reportsUnchanged: number;
  reportsStale: number;
  reportsRefused: number;
  desiredUpdates: number;
  versionConflicts: number;
}

type Row = Database['device_shadows'];

/** Compare-and-set attempts before a busy shadow gives up (each loses only to a real change). */
const CAS_ATTEMPTS = 8;

const EMPTY_METADATA: ShadowMetadata = { desired: {}, reported: {} };

export class ShadowService {
  readonly stats: ShadowStats = {
    reportsApplied: 0,
    reportsUnchanged: 0,
    reportsStale: 0,
    reportsRefused: 0,
    desiredUpdates: 0,
    versionConflicts: 0,
  };
  readonly #db: Kysely<Database>;
  readonly #publish: ShadowServiceOptions['publish'];
  readonly #log: Logger;
  readonly #events: DeviceEvents | undefined;
  readonly #checkDesired: DesiredStateCheck | undefined;
  readonly #now: () => number;
  /** The newest desired version published per device: concurrent updates never publish out of order. */
  readonly #published = new Map<string, number>();

  constructor(options: ShadowServiceOptions) {
    this.#db = options.db;
    this.#publish = options.publish;
    this.#log = options.log;
    this.#events = options.events;
    this.#checkDesired = options.checkDesired;
    this.#now = options.now ?? Date.now;
  }

  async get(deviceId: string): Promise<Shadow> {
    const row = await this.#row(deviceId);
    return row ? toShadow(row) : emptyShadow(deviceId);
  }

  /**
   * Merges `state` into the desired document (null deletes a key). With `expectedVersion`, only if the
   * shadow is still at that version (0: no shadow yet): otherwise ERR_SHADOW_VERSION_CONFLICT with the
   * current version, and nothing is stored. The new desired document is published to the device.
   */
  async setDesired(device: Device, state: unknown, expectedVersion?: number): Promise<Shadow> {
    const problem = checkDocument(state);
    if (problem !== null) {
      throw new CastellanError('ERR_SHADOW_STATE_INVALID', {
        message: `Desired state ${problem}`,
        details: { field: 'state' },
      });
    }
    const update = state as JsonObject;
    await this.#checkDesired?.(device, update);
    for (let attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
      const row = await this.#row(device.id);
      const current = row?.version ?? 0;
      if (expectedVersion !== undefined && expectedVersion !== current) throw this.#conflict(current);
      const before = parseStoredObject(row?.desired);
      const desired = mergeDocument(before, update);
      if (jsonEqual(desired, before)) return row ? toShadow(row) : emptyShadow(device.id);
      const merged = checkDocument(desired);
      if (merged !== null) {
        throw new CastellanError('ERR_SHADOW_STATE_INVALID', {
          message: `The desired document after this update ${merged}`,
          details: { field: 'state' },
        });
      }
      const now = this.#now();
      const metadata = touched(row, 'desired', update, desired, now);
      const next = {
        version: current + 1,
        desired_version: current + 1,
        desired: JSON.stringify(desired),
        metadata: JSON.stringify(metadata),
        desired_updated_at: now,
      };
      const written = await this.#write(device, row, next);
      if (!written) continue;
      this.stats.desiredUpdates++;
      this.#publishDesired(device.id, desired, next.version, now);
      this.#events?.emit('change', {
        deviceId: device.id,
        vendorId: device.vendorId,
        kind: 'shadow.desired',
        at: now,
        data: { version: written.version, state: update },
      });
      return toShadow(written);
    }
    // Only reachable when the shadow changes on every attempt (a device reporting in a tight loop).
    if (expectedVersion !== undefined) throw this.#conflict((await this.#row(device.id))?.version ?? 0);
    throw new CastellanError('ERR_SHADOW_BUSY');
  }

  /**
   * The `state` channel handler: `{"state": {...}, "version"?: n}` merges into `reported`; a plain
   * JSON object without that envelope is the reported state itself (simple devices); an empty payload
   * only clears the retained message. Anything else is refused with 0x99 (payload format invalid).
   */
  readonly handleReport = async (
    device: ConnectedDevice,
    message: { rest: readonly string[]; payload: Buffer; receivedAt: number },
  ): Promise<void> => {
    if (message.rest.length > 0 || message.payload.length === 0) return;
    const report = parseReport(message.payload);
    if (typeof report === 'string') {
      this.stats.reportsRefused++;
      throw new PublishRefusedError('payload-invalid', report);
    }
    for (let attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
      const row = await this.#row(device.id);
      if (row && report.version !== undefined && report.version < row.desired_version) {
        // Crossed a newer desired change: the device gets that one and reports again.
        this.stats.reportsStale++;
        await this.#db
          .updateTable('device_shadows')
          .set((eb) => ({ stale_reports: eb('stale_reports', '+', 1) }))
          .where('device_id', '=', device.id)
          .execute();
        this.#log.debug(
          { deviceId: device.id, reportVersion: report.version, desiredVersion: row.desired_version },
          'shadow: stale report ignored',
        );
        return;
      }
      const before = parseStoredObject(row?.reported);
      const reported = mergeDocument(before, report.state);
      if (jsonEqual(reported, before) && row) {
        this.stats.reportsUnchanged++;
        return;
      }
      const merged = checkDocument(reported);
      if (merged !== null) {
        this.stats.reportsRefused++;
        throw new PublishRefusedError('payload-invalid', `the reported document after this report ${merged}`);
      }
      const now = message.receivedAt;
      const current = row?.version ?? 0;
      const next = {
        version: current + 1,
        reported: JSON.stringify(reported),
        metadata: JSON.stringify(touched(row, 'reported', report.state, reported, now)),
        reported_updated_at: now,
      };
      const written = await this.#write(device, row, next);
      if (!written) continue;
      this.stats.reportsApplied++;
      this.#events?.emit('change', {
        deviceId: device.id,
        vendorId: device.vendorId,
        kind: 'shadow.reported',
        at: now,
        data: { version: written.version, state: report.state },
      });
      return;
    }
    throw new PublishRefusedError('unavailable', 'the shadow is changing too fast; report again');
  };

  /**
   * Deletes the device's shadow and clears its retained desired message (unbind, factory reset).
   * Returns whether there was one.
   */
  async clear(deviceId: string): Promise<boolean> {
    const result = await this.#db.deleteFrom('device_shadows').where('device_id', '=', deviceId).executeTakeFirst();
    this.#published.delete(deviceId);
    // An empty retained message removes the retained one [MQTT-3.3.1-6]; subscribers get it as "cleared".
    this.#publish(deviceTopic.shadowDesired(deviceId), Buffer.alloc(0), { qos: 1, retain: true });
    return Number(result.numDeletedRows) > 0;
  }

  #conflict(version: number): CastellanError {
    this.stats.versionConflicts++;
    return new CastellanError('ERR_SHADOW_VERSION_CONFLICT', {
      message: `The shadow is at version ${version}: read it again and retry with that expectedVersion`,
      details: { version },
    });
  }

  #row(deviceId: string): Promise<Row | undefined> {
    return this.#db.selectFrom('device_shadows').selectAll().where('device_id', '=', deviceId).executeTakeFirst();
  }

  /**
   * Compare-and-set: inserts the first row, or updates only if the version is still the one read.
   * Returns the written row, or undefined when someone else changed the shadow first.
   */
  async #write(
    device: Pick<Device, 'id' | 'vendorId'>,
    row: Row | undefined,
    next: Partial<Row>,
  ): Promise<Row | undefined> {
    if (!row) {
      const fresh: Row = {
        device_id: device.id,
        vendor_id: device.vendorId,
        version: 0,
        desired_version: 0,
        desired: '{}',
        reported: '{}',
        metadata: JSON.stringify(EMPTY_METADATA),
        desired_updated_at: null,
        reported_updated_at: null,
        stale_reports: 0,
        ...next,
      };
      const inserted = await this.#db
        .insertInto('device_shadows')
        .values(fresh)
        .onConflict((oc) => oc.column('device_id').doNothing())
        .returning('device_id')
        .executeTakeFirst();
      return inserted ? fresh : undefined;
    }
    const updated = await this.#db
      .updateTable('device_shadows')
      .set(next)
      .where('device_id', '=', device.id)
      .where('version', '=', row.version)
      .executeTakeFirst();
    return Number(updated.numUpdatedRows) > 0 ? { ...row, ...next } : undefined;
  }

  #publishDesired(deviceId: string, desired: JsonObject, version: number, at: number): void {
    // Two updates that committed close together may reach here out of order: never let the older one
    // become the retained message.
    if ((this.#published.get(deviceId) ?? 0) >= version) return;
    this.#published.set(deviceId, version);
    const payload = Buffer.from(JSON.stringify({ state: desired, version, timestamp: at }));
    this.#publish(deviceTopic.shadowDesired(deviceId), payload, { qos: 1, retain: true });
  }
}

/** A device's report: the state update and the desired version it is based on, or why it is refused. */
function parseReport(payload: Buffer): { state: JsonObject; version?: number } | string {
  let value: unknown;
  try {
    value = JSON.parse(payload.toString('utf8'));
  } catch {
    return 'state must be JSON: {"state": {...}, "version": n}';
  }
  if (!isJsonObject(value)) return 'state must be a JSON object: {"state": {...}, "version": n}';
  const enveloped = isJsonObject(value.state) && Object.keys(value).every((k) => k === 'state' || k === 'version');
  if (!enveloped) {
    const problem = checkDocument(value);
    return problem === null ? { state: value } : `state ${problem}`;
  }
  const version = value.version;
  if (version !== undefined && (typeof version !== 'number' || !Number.isSafeInteger(version) || version < 0)) {
    return 'version must be a non-negative integer';
  }
  const problem = checkDocument(value.state);
  if (problem !== null) return `state ${problem}`;
  return { state: value.state as JsonObject, ...(version === undefined ? {} : { version }) };
}

/** Metadata with the top-level keys of `update` stamped `now` (or dropped when they were deleted). */
function touched(
  row: Row | undefined,
  side: 'desired' | 'reported',
  update: JsonObject,
  document: JsonObject,
  now: number,
): ShadowMetadata {
  const metadata = parseMetadata(row?.metadata);
  const stamps: Record<string, number> = { ...metadata[side] };
  for (const key of Object.keys(update)) {
    if (key === '__proto__') continue;
    if (Object.hasOwn(document, key)) stamps[key] = now;
    else delete stamps[key];
  }
  return { ...metadata, [side]: stamps };
}

function parseMetadata(text: string | undefined): ShadowMetadata {
  const value = parseStoredObject(text);
  const side = (v: unknown) => (isJsonObject(v) ? (v as Record<string, number>) : {});
  return { desired: side(value.desired), reported: side(value.reported) };
}

function toShadow(row: Row): Shadow {
  const desired = parseStoredObject(row.desired);
  const reported = parseStoredObject(row.reported);
  return {
    deviceId: row.device_id,
    desired,
    reported,
    delta: deltaOf(desired, reported),
    version: Number(row.version),
    desiredVersion: Number(row.desired_version),
    metadata: parseMetadata(row.metadata),
    desiredUpdatedAt: row.desired_updated_at,
    reportedUpdatedAt: row.reported_updated_at,
    staleReports: Number(row.stale_reports),
  };
}

function emptyShadow(deviceId: string): Shadow {
  return {
    deviceId,
    desired: {},
    reported: {},
    delta: {},
    version: 0,
    desiredVersion: 0,
    metadata: EMPTY_METADATA,
    desiredUpdatedAt: null,
    reportedUpdatedAt: null,
    staleReports: 0,
  };
}
