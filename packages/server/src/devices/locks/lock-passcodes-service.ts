// Smart-lock offline passcodes (LOCK-1). The platform issues 12-digit codes the lock verifies offline
// (@castellan/protocol lock-passcodes): the code is computed from the lock's passcode key (HKDF of the
// device secret, inside DevicesService), shown once and never stored; a row records its window and
// counter so it can be listed, revoked and matched to the lock's use reports. Revocation reaches the
// lock as a retained list on devices/{id}/commands/passcode-revoke (a lock offline at the time gets it
// when it next subscribes). Unbinding (BIND-5) revokes what is still live and clears who issued what;
// the rows stay as the lock's revocation list until their window ends.
import {
  countersFor,
  deviceTopic,
  encodePasscodeRevocations,
  HOUR_MS,
  issuePasscode,
  PASSCODE_REVOKE_COMMAND,
  PasscodeError,
  type PasscodeKind,
  type PasscodeRef,
  parsePasscodeUsed,
  passcodeWindow,
} from '@castellan/protocol';
import type { Kysely } from 'kysely';
import type { Logger } from 'pino';
import type { AuditEvent } from '../../audit/index.ts';
import { CastellanError } from '../../errors/index.ts';
import { type ConnectedDevice, type DeviceChannelHandler, PublishRefusedError } from '../../gateway/index.ts';
import { newId } from '../../lib/random-ids.ts';
import type { Database } from '../../store/index.ts';
import type { DeviceEvents } from '../device-events.ts';
import type { Device, DevicesService } from '../devices-service.ts';

/** The product category whose devices take passcodes. */
export const LOCK_CATEGORY = 'lock';
/** Codes whose window has not ended, per lock (bounds the revocation list a lock must hold). */
export const MAX_LIVE_PASSCODES = 200;
/** How far ahead a window may start. */
export const MAX_LEAD_MS = 366 * 24 * HOUR_MS;
/** Rows whose window ended this long ago are deleted (the audit log keeps issuance and use). */
export const ENDED_RETENTION_MS = 30 * 24 * HOUR_MS;

export type PasscodeStatus = 'scheduled' | 'active' | 'used' | 'revoked' | 'expired';

export interface LockPasscode extends PasscodeRef {
  readonly id: string;
  readonly deviceId: string;
  readonly label: string | null;
  readonly issuedBy: string | null;
  readonly createdAt: number;
  readonly revokedAt: number | null;
  readonly useCount: number;
  readonly lastUsedAt: number | null;
  readonly status: PasscodeStatus;
}

export interface PasscodeInput {
  kind: PasscodeKind;
  validFrom?: number;
  validUntil?: number;
  label?: string;
}

export interface LockPasscodesServiceOptions {
  db: Kysely<Database>;
  devices: Pick<DevicesService, 'getProduct' | 'lockPasscodeKey'>;
  /** Publishes platform → device (the broker's publishSystem, bound once the broker exists). */
  publish: (topic: string, payload: Buffer, options: { qos: 0 | 1; retain: boolean }) => void;
  /** Records an audit event without waiting. */
  audit: (event: AuditEvent) => void;
  log: Logger;
  events?: DeviceEvents;
  now?: () => number;
}

type Row = Database['lock_passcodes'];

export class LockPasscodesService {
  readonly #o: LockPasscodesServiceOptions;
  readonly #now: () => number;

  constructor(options: LockPasscodesServiceOptions) {
    this.#o = options;
    this.#now = options.now ?? Date.now;
  }

  /** Refuses devices whose product is not a lock (ERR_LOCK_NOT_A_LOCK). */
  async requireLock(device: Pick<Device, 'productId'>): Promise<void> {
    const product = await this.#o.devices.getProduct(device.productId);
    if (product?.category !== LOCK_CATEGORY) throw new CastellanError('ERR_LOCK_NOT_A_LOCK');
  }

  /**
   * Issues a code (the caller checked the role and the step-up). Returns the record and the code; the
   * code exists only in this return value.
   */
  async issue(
    device: Device,
    input: PasscodeInput,
    issuedBy: string,
  ): Promise<{ passcode: LockPasscode; code: string }> {
    await this.requireLock(device);
    const now = this.#now();
    const window = this.#window(input, now);
    const key = await this.#o.devices.lockPasscodeKey(device.id);
    if (!key) throw new CastellanError('ERR_LOCK_KEY_UNAVAILABLE');
    const db = this.#o.db;
    await db
      .deleteFrom('lock_passcodes')
      .where('device_id', '=', device.id)
      .where('valid_until', '<', now - ENDED_RETENTION_MS)
      .execute();
    const live = await db
      .selectFrom('lock_passcodes')
      .select((eb) => eb.fn.countAll<number | string>().as('n'))
      .where('device_id', '=', device.id)
      .where('valid_until', '>', now)
      .executeTakeFirstOrThrow();
    if (Number(live.n) >= MAX_LIVE_PASSCODES) {
      throw new CastellanError('ERR_LOCK_PASSCODE_EXHAUSTED', {
        message: `This lock already has ${MAX_LIVE_PASSCODES} passcodes whose window has not ended; revoke or wait`,
      });
    }
    // The lowest counter no code of the same kind and window holds (revoked and wiped ones included:
    // their code is on the lock's revocation list). The unique constraint settles a race.
    const taken = new Set(
      (
        await db
          .selectFrom('lock_passcodes')
          .select('counter')
          .where('device_id', '=', device.id)
          .where('kind', '=', input.kind)
          .where('valid_from', '=', window.validFrom)
          .where('valid_until', '=', window.validUntil)
          .execute()
      ).map((r) => r.counter),
    );
    for (let counter = 0; counter < countersFor(input.kind); counter++) {
      if (taken.has(counter)) continue;
      const row: Row = {
        id: newId('lpc'),
        device_id: device.id,
        kind: input.kind,
        counter,
        valid_from: window.validFrom,
        valid_until: window.validUntil,
        label: input.label ?? null,
        issued_by: issuedBy,
        created_at: now,
        revoked_at: null,
        use_count: 0,
        last_used_at: null,
      };
      const inserted = await db
        .insertInto('lock_passcodes')
        .values(row)
        .onConflict((oc) => oc.columns(['device_id', 'kind', 'valid_from', 'valid_until', 'counter']).doNothing())
        .returning('id')
        .executeTakeFirst();
      if (!inserted) continue;
      const { code } = issuePasscode(key, { kind: input.kind, counter, ...window });
      return { passcode: this.#present(row, now), code };
    }
    throw new CastellanError('ERR_LOCK_PASSCODE_EXHAUSTED');
  }

  /** The lock's codes issued under the current binding (wiped rows are not listed), newest first. */
  async list(deviceId: string): Promise<LockPasscode[]> {
    const now = this.#now();
    const rows = await this.#o.db
      .selectFrom('lock_passcodes')
      .selectAll()
      .where('device_id', '=', deviceId)
      .where('issued_by', 'is not', null)
      .orderBy('created_at', 'desc')
      .orderBy('id', 'desc')
      .execute();
    return rows.map((row) => this.#present(row, now));
  }

  /**
   * Revokes a code and sends the lock its revocation list. Revoking again is harmless (the list is
   * sent again). ERR_LOCK_PASSCODE_NOT_FOUND for a code of another lock, or a wiped one.
   */
  async revoke(deviceId: string, passcodeId: string): Promise<LockPasscode> {
    const now = this.#now();
    await this.#o.db
      .updateTable('lock_passcodes')
      .set({ revoked_at: now })
      .where('id', '=', passcodeId)
      .where('device_id', '=', deviceId)
      .where('issued_by', 'is not', null)
      .where('revoked_at', 'is', null)
      .execute();
    const row = await this.#o.db
      .selectFrom('lock_passcodes')
      .selectAll()
      .where('id', '=', passcodeId)
      .where('device_id', '=', deviceId)
      .where('issued_by', 'is not', null)
      .executeTakeFirst();
    if (!row) throw new CastellanError('ERR_LOCK_PASSCODE_NOT_FOUND');
    await this.publishRevocations(deviceId);
    return this.#present(row, now);
  }

  /**
   * Publishes the lock's full revocation list (revoked codes whose window has not ended), retained at
   * QoS 1: the latest list is what a (re)connecting lock receives.
   */
  async publishRevocations(deviceId: string): Promise<number> {
    const rows = await this.#o.db
      .selectFrom('lock_passcodes')
      .select(['kind', 'counter', 'valid_from', 'valid_until'])
      .where('device_id', '=', deviceId)
      .where('revoked_at', 'is not', null)
      .where('valid_until', '>', this.#now())
      .orderBy('valid_until')
      .execute();
    const refs = rows.map((r) => ({
      kind: r.kind,
      counter: r.counter,
      validFrom: Number(r.valid_from),
      validUntil: Number(r.valid_until),
    }));
    this.#o.publish(deviceTopic.command(deviceId, PASSCODE_REVOKE_COMMAND), encodePasscodeRevocations(refs), {
      qos: 1,
      retain: true,
    });
    return refs.length;
  }

  /**
   * BIND-5 wiper: every live code of the lock is revoked (the previous owner's codes must stop opening
   * it) and the list sent; who issued what, labels and uses are deleted, ended rows removed. What
   * remains (kind, counter, window) is the lock's revocation list, purged when the window ends.
   */
  async wipe(deviceId: string): Promise<void> {
    const now = this.#now();
    const db = this.#o.db;
    const ended = await db
      .deleteFrom('lock_passcodes')
      .where('device_id', '=', deviceId)
      .where('valid_until', '<=', now)
      .executeTakeFirst();
    const live = await db
      .updateTable('lock_passcodes')
      .set({ revoked_at: now })
      .where('device_id', '=', deviceId)
      .where('revoked_at', 'is', null)
      .executeTakeFirst();
    const cleared = await db
      .updateTable('lock_passcodes')
      .set({ issued_by: null, label: null, use_count: 0, last_used_at: null })
      .where('device_id', '=', deviceId)
      .executeTakeFirst();
    const kept = Number(cleared.numUpdatedRows);
    // Every unbind runs this: a device that never had passcodes leaves no trace.
    if (kept === 0 && Number(ended.numDeletedRows) === 0) return;
    if (kept > 0) await this.publishRevocations(deviceId);
    this.#o.audit({
      actor: { type: 'system', id: 'lock-passcodes' },
      type: 'lock.passcode.wipe',
      target: deviceId,
      result: 'success',
      details: { revoked: Number(live.numUpdatedRows), kept, deleted: Number(ended.numDeletedRows) },
    });
  }

  /** Handler for devices/{id}/events: records `passcode-used` reports; other events pass through. */
  readonly eventsHandler: DeviceChannelHandler = async (device, message) => {
    if (message.payload.length > 4096 || !message.payload.includes('passcode-used')) return;
    let value: unknown;
    try {
      value = JSON.parse(message.payload.toString('utf8'));
    } catch {
      return;
    }
    const event = parsePasscodeUsed(value);
    if (event === null) return;
    if (typeof event === 'string') throw new PublishRefusedError('payload-invalid', event);
    await this.#recordUse(device, event, event.at);
  };

  async #recordUse(device: ConnectedDevice, ref: PasscodeRef, at: number): Promise<void> {
    const product = await this.#o.devices.getProduct(device.productId);
    if (product?.category !== LOCK_CATEGORY) {
      throw new PublishRefusedError('payload-invalid', 'passcode-used comes only from locks');
    }
    const db = this.#o.db;
    const row = await db
      .selectFrom('lock_passcodes')
      .select(['id', 'issued_by', 'last_used_at'])
      .where('device_id', '=', device.id)
      .where('kind', '=', ref.kind)
      .where('valid_from', '=', ref.validFrom)
      .where('valid_until', '=', ref.validUntil)
      .where('counter', '=', ref.counter)
      .executeTakeFirst();
    const details = { deviceId: device.id, kind: ref.kind, counter: ref.counter, at };
    if (!row || row.issued_by === null) {
      // A code the platform does not know (or wiped at unbind) opened the lock: worth a look.
      this.#o.log.warn({ deviceId: device.id, kind: ref.kind, counter: ref.counter }, 'lock: unknown passcode used');
      this.#o.audit({
        actor: { type: 'device', id: device.id },
        tenant: device.vendorId || null,
        type: 'lock.passcode.use',
        target: device.id,
        result: 'failure',
        details: { ...details, reason: 'unknown passcode' },
      });
      return;
    }
    // A report sent again (QoS 1 redelivery) carries the same time: counted once.
    if (row.last_used_at !== null && Number(row.last_used_at) === at) return;
    await db
      .updateTable('lock_passcodes')
      .set((eb) => ({ use_count: eb('use_count', '+', 1), last_used_at: at }))
      .where('id', '=', row.id)
      .execute();
    this.#o.audit({
      actor: { type: 'device', id: device.id },
      tenant: device.vendorId || null,
      type: 'lock.passcode.use',
      target: row.id,
      result: 'success',
      details,
    });
    this.#o.events?.emit('change', {
      deviceId: device.id,
      vendorId: device.vendorId,
      kind: 'lock.passcode.used',
      at: this.#now(),
      data: { passcodeId: row.id, kind: ref.kind, usedAt: at },
    });
  }

  /** The whole-hour window of a request, checked against what a code can carry. */
  #window(input: PasscodeInput, now: number): { validFrom: number; validUntil: number } {
    const validFrom = input.validFrom ?? Math.floor(now / HOUR_MS) * HOUR_MS;
    let window: { validFrom: number; validUntil: number };
    try {
      window = passcodeWindow({
        kind: input.kind,
        validFrom,
        ...(input.validUntil !== undefined ? { validUntil: input.validUntil } : {}),
      });
    } catch (error) {
      if (error instanceof PasscodeError) {
        throw new CastellanError('ERR_LOCK_PASSCODE_INVALID', { message: `Passcode window: ${error.message}` });
      }
      throw error;
    }
    if (window.validUntil <= now) {
      throw new CastellanError('ERR_LOCK_PASSCODE_INVALID', { message: 'Passcode window: it has already ended' });
    }
    if (window.validFrom > now + MAX_LEAD_MS) {
      throw new CastellanError('ERR_LOCK_PASSCODE_INVALID', {
        message: 'Passcode window: validFrom may be at most 366 days ahead',
      });
    }
    return window;
  }

  #present(row: Row, now: number): LockPasscode {
    const validFrom = Number(row.valid_from);
    const validUntil = Number(row.valid_until);
    const useCount = Number(row.use_count);
    const status: PasscodeStatus =
      row.revoked_at !== null
        ? 'revoked'
        : row.kind === 'one-time' && useCount > 0
          ? 'used'
          : now >= validUntil
            ? 'expired'
            : now < validFrom
              ? 'scheduled'
              : 'active';
    return {
      id: row.id,
      deviceId: row.device_id,
      kind: row.kind,
      counter: row.counter,
      validFrom,
      validUntil,
      label: row.label,
      issuedBy: row.issued_by,
      createdAt: Number(row.created_at),
      revokedAt: row.revoked_at === null ? null : Number(row.revoked_at),
      useCount,
      lastUsedAt: row.last_used_at === null ? null : Number(row.last_used_at),
      status,
    };
  }
}
