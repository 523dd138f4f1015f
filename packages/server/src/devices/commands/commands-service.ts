// Commands to devices (CHAN-7) and the built-in reboot, factory reset and wipe (DEV-9). A command is
// stored with its deadline, published at QoS 1 on devices/{id}/commands/{name}, and ends when the
// device acknowledges it on devices/{id}/acks/{commandId} (succeeded, failed, rejected) or when its
// deadline passes (timed-out once delivered, expired if it never was). The deadline lives in the
// database, so a sweep finds overdue commands after a restart as well; several processes may sweep,
// each status change is a compare-and-set so exactly one of them reports it. Only the addressed device
// can acknowledge (the broker's topic ACL, CHAN-6); unknown, duplicate and late acknowledgements are
// ignored and counted, malformed ones refused with 0x99.
import { setTimeout as sleep } from 'node:timers/promises';
import { deviceTopic } from '@castellan/protocol';
import type { Kysely } from 'kysely';
import type { Logger } from 'pino';
import type { AuditEvent, AuditResult } from '../../audit/index.ts';
import { CastellanError } from '../../errors/index.ts';
import { type ConnectedDevice, PublishRefusedError } from '../../gateway/index.ts';
import { newId } from '../../lib/random-ids.ts';
import type { Database } from '../../store/index.ts';
import type { DeviceEvents } from '../device-events.ts';
import type { Device } from '../devices-service.ts';
import { checkDocument, type JsonObject, type JsonValue } from '../shadow/json-document.ts';
import {
  type AckStatus,
  type BuiltinCommand,
  checkBuiltinParams,
  type CommandStatus,
  isBuiltinCommand,
  isCommandId,
  isCommandName,
  OPEN_STATUSES,
  parseAck,
} from './command-payloads.ts';

export interface Command {
  readonly id: string;
  readonly deviceId: string;
  readonly vendorId: string;
  readonly name: string;
  readonly params: JsonObject;
  readonly status: CommandStatus;
  readonly result: JsonValue | null;
  readonly error: string | null;
  readonly issuedBy: { readonly type: string; readonly id: string };
  readonly issuedAt: number;
  readonly expiresAt: number;
  readonly deliveredAt: number | null;
  readonly completedAt: number | null;
}

export interface CommandInput {
  name: string;
  params?: unknown;
  /** 1..300, default 30. */
  timeoutSeconds?: number;
}

/** Validates a custom command against the device's product schema; throws a CastellanError. */
export type CommandCheck = (device: Device, name: string, params: JsonObject) => Promise<void> | void;

/**
 * Runs after a device acknowledged a factory reset as succeeded (DEV-9): the platform forgets what it
 * kept for the previous owner (shadow, binding). Returns what it did, for the audit entry.
 */
export type FactoryResetHook = (device: Pick<Device, 'id' | 'vendorId'>) => Promise<Record<string, unknown>>;

export interface CommandsServiceOptions {
  db: Kysely<Database>;
  /** Publishes platform → device (the broker's publishSystem). */
  publish: (topic: string, payload: Buffer, options: { qos: 0 | 1; retain: boolean }) => void;
  /** Whether the device has a live MQTT connection (this process's broker; in scale mode, any process's). */
  isOnline: (deviceId: string) => boolean | Promise<boolean>;
  /** Records an audit event without waiting. */
  audit: (event: AuditEvent) => void;
  log: Logger;
  events?: DeviceEvents;
  checkCommand?: CommandCheck;
  onFactoryReset?: FactoryResetHook;
  /** How often overdue commands are looked for (default 1000 ms). */
  sweepIntervalMs?: number;
  /** Commands a device may have open at once (default 16). */
  maxOpenPerDevice?: number;
  now?: () => number;
}

export interface CommandsStats {
  issued: number;
  acksApplied: number;
  acksUnknown: number;
  acksDuplicate: number;
  acksLate: number;
  acksRefused: number;
  timedOut: number;
  expired: number;
}

export const DEFAULT_TIMEOUT_SECONDS = 30;
export const MAX_TIMEOUT_SECONDS = 300;
/** Finished commands are kept this long, then purged (docs: data classification). */
const HISTORY_MS = 90 * 86_400_000;
const PURGE_EVERY_MS = 3_600_000;
const SWEEP_BATCH = 500;

type Row = Database['device_commands'];

const AUDIT_RESULT: Readonly<Record<CommandStatus, AuditResult>> = {
  pending: 'success',
  delivered: 'success',
  succeeded: 'success',
  failed: 'failure',
  rejected: 'denied',
  'timed-out': 'failure',
  expired: 'failure',
};

export class CommandsService {
  readonly stats: CommandsStats = {
    issued: 0,
    acksApplied: 0,
    acksUnknown: 0,
    acksDuplicate: 0,
    acksLate: 0,
    acksRefused: 0,
    timedOut: 0,
    expired: 0,
  };
  readonly #o: CommandsServiceOptions;
  readonly #db: Kysely<Database>;
  readonly #now: () => number;
  /** Long polls waiting for a command to end, by command ID (this process). */
  readonly #waiters = new Map<string, Set<() => void>>();
  /** Factory-reset commands whose follow-up is running, by device. */
  readonly #resetting = new Map<string, string>();
  #timer: NodeJS.Timeout | undefined;
  #sweeping: Promise<void> | undefined;
  #lastPurge = 0;
  #closed = false;

  constructor(options: CommandsServiceOptions) {
    this.#o = options;
    this.#db = options.db;
    this.#now = options.now ?? Date.now;
  }

  /** Starts the timeout sweep (first run at once: commands a stopped process left open end now). */
  start(): void {
    if (this.#timer || this.#closed) return;
    this.#runSweep();
    this.#timer = setInterval(() => this.#runSweep(), this.#o.sweepIntervalMs ?? 1000);
    this.#timer.unref();
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#timer);
    this.#timer = undefined;
    for (const id of [...this.#waiters.keys()]) this.#wake(id);
    await this.#sweeping;
  }

  /**
   * Stores a command and publishes it to the device. `record` runs after the command is stored and
   * before it is sent (the issue is audited before anything reaches the device). Refused with
   * ERR_DEVICE_OFFLINE when the device is not connected: commands are not queued for later.
   */
  async issue(
    device: Device,
    input: CommandInput,
    issuer: { type: string; id: string },
    record?: (command: Command) => Promise<unknown>,
  ): Promise<Command> {
    const { name } = input;
    if (!isCommandName(name)) {
      throw new CastellanError('ERR_COMMAND_INVALID', {
        message: 'Command name must be 1-64 characters: a letter, then letters, digits, _ . -',
        details: { field: 'name' },
      });
    }
    const params = input.params ?? {};
    const problem = checkDocument(params);
    if (problem !== null) {
      throw new CastellanError('ERR_COMMAND_INVALID', { message: `params ${problem}`, details: { field: 'params' } });
    }
    const timeoutSeconds = input.timeoutSeconds ?? DEFAULT_TIMEOUT_SECONDS;
    if (!Number.isInteger(timeoutSeconds) || timeoutSeconds < 1 || timeoutSeconds > MAX_TIMEOUT_SECONDS) {
      throw new CastellanError('ERR_COMMAND_INVALID', {
        message: `timeoutSeconds must be an integer from 1 to ${MAX_TIMEOUT_SECONDS}`,
        details: { field: 'timeoutSeconds' },
      });
    }
    if (isBuiltinCommand(name)) {
      // Built-ins are the platform's, whatever the product schema says (DEV-9).
      const builtin = checkBuiltinParams(name, params as JsonObject);
      if (builtin !== null) {
        throw new CastellanError('ERR_COMMAND_INVALID', { message: builtin, details: { field: 'params' } });
      }
    } else {
      await this.#o.checkCommand?.(device, name, params as JsonObject);
    }
    if (!(await this.#o.isOnline(device.id))) throw new CastellanError('ERR_DEVICE_OFFLINE');
    const open = await this.#db
      .selectFrom('device_commands')
      .select((eb) => eb.fn.countAll<number>().as('n'))
      .where('device_id', '=', device.id)
      .where('status', 'in', OPEN_STATUSES)
      .executeTakeFirstOrThrow();
    const maxOpen = this.#o.maxOpenPerDevice ?? 16;
    if (Number(open.n) >= maxOpen) {
      throw new CastellanError('ERR_COMMAND_LIMIT', {
        message: `This device already has ${maxOpen} commands waiting for an acknowledgement`,
      });
    }
    const issuedAt = this.#now();
    const row: Row = {
      id: newId('cmd'),
      device_id: device.id,
      vendor_id: device.vendorId,
      name,
      params: JSON.stringify(params),
      status: 'pending',
      result: null,
      error: null,
      issued_by_type: issuer.type,
      issued_by_id: issuer.id,
      issued_at: issuedAt,
      expires_at: issuedAt + timeoutSeconds * 1000,
      delivered_at: null,
      completed_at: null,
    };
    await this.#db.insertInto('device_commands').values(row).execute();
    this.stats.issued++;
    const command = toCommand(row);
    await record?.(command);
    const payload = { id: row.id, name, params, issuedAt, expiresAt: row.expires_at };
    this.#o.publish(deviceTopic.command(device.id, name), Buffer.from(JSON.stringify(payload)), {
      qos: 1,
      retain: false,
    });
    // Handed to the device's connection; an acknowledgement may already have ended it.
    const deliveredAt = this.#now();
    const delivered = await this.#db
      .updateTable('device_commands')
      .set({ status: 'delivered', delivered_at: deliveredAt })
      .where('id', '=', row.id)
      .where('status', '=', 'pending')
      .executeTakeFirst();
    if (Number(delivered.numUpdatedRows) > 0) {
      this.#changed(command, 'delivered', deliveredAt);
      return { ...command, status: 'delivered', deliveredAt };
    }
    return (await this.get(device.id, row.id)) ?? command;
  }

  /** A command of the device; one whose deadline passed is reported ended, never still open. */
  async get(deviceId: string, commandId: string): Promise<Command | null> {
    if (!isCommandId(commandId)) return null;
    const row = await this.#db
      .selectFrom('device_commands')
      .selectAll()
      .where('id', '=', commandId)
      .where('device_id', '=', deviceId)
      .executeTakeFirst();
    if (!row) return null;
    if (isOpen(row.status) && row.expires_at <= this.#now()) {
      await this.#expire(row);
      return this.get(deviceId, commandId);
    }
    return toCommand(row);
  }

  /** The device's commands, newest first; `before` is the last ID of the previous page. */
  async list(deviceId: string, options: { limit: number; before?: string }): Promise<Command[]> {
    let query = this.#db.selectFrom('device_commands').selectAll().where('device_id', '=', deviceId);
    if (options.before !== undefined) {
      const cursor = await this.#db
        .selectFrom('device_commands')
        .select(['issued_at', 'id'])
        .where('id', '=', options.before)
        .where('device_id', '=', deviceId)
        .executeTakeFirst();
      if (!cursor) {
        throw new CastellanError('ERR_VALIDATION_FAILED', {
          message: 'before must be the ID of a command of this device',
          details: { field: 'before' },
        });
      }
      query = query.where((eb) =>
        eb.or([
          eb('issued_at', '<', cursor.issued_at),
          eb.and([eb('issued_at', '=', cursor.issued_at), eb('id', '<', cursor.id)]),
        ]),
      );
    }
    const rows = await query.orderBy('issued_at', 'desc').orderBy('id', 'desc').limit(options.limit).execute();
    const now = this.#now();
    return rows.map((row) =>
      isOpen(row.status) && row.expires_at <= now
        ? // The sweep stores it within a second; the answer is already final.
          toCommand({
            ...row,
            status: row.delivered_at === null ? 'expired' : 'timed-out',
            completed_at: row.expires_at,
          })
        : toCommand(row),
    );
  }

  /**
   * Long poll: resolves with the command once it has ended (acknowledged, timed out or expired), or
   * as it is when `signal` aborts. Null when there is no such command.
   */
  async waitForOutcome(deviceId: string, commandId: string, signal?: AbortSignal): Promise<Command | null> {
    for (;;) {
      // The waiter is registered before the read: an acknowledgement landing between the two wakes it.
      let wake!: () => void;
      const woken = new Promise<void>((resolve) => {
        wake = resolve;
      });
      let set = this.#waiters.get(commandId);
      if (!set) {
        set = new Set();
        this.#waiters.set(commandId, set);
      }
      set.add(wake);
      const onAbort = () => wake();
      signal?.addEventListener('abort', onAbort, { once: true });
      const poll = new AbortController();
      try {
        const command = await this.get(deviceId, commandId);
        if (!command || signal?.aborted || this.#closed) return command;
        // A factory reset's row says succeeded before its follow-up (unbinding) has run: a poll landing
        // in between waits for the follow-up's wake, so whoever hears "succeeded" sees the device reset.
        if (!isOpen(command.status) && this.#resetting.get(deviceId) !== command.id) return command;
        const remaining = Math.max(0, command.expiresAt - this.#now());
        // Woken by an acknowledgement in this process; otherwise polls (another process may have it).
        await Promise.race([
          woken,
          sleep(Math.max(10, Math.min(remaining + 5, 1000)), undefined, { signal: poll.signal }),
        ]);
      } finally {
        poll.abort();
        signal?.removeEventListener('abort', onAbort);
        set.delete(wake);
        if (set.size === 0 && this.#waiters.get(commandId) === set) this.#waiters.delete(commandId);
      }
    }
  }

  /** The `acks` channel handler: runs before the device's PUBACK. */
  readonly handleAck = async (
    device: ConnectedDevice,
    message: { rest: readonly string[]; payload: Buffer; receivedAt: number },
  ): Promise<void> => {
    const ack = parseAck(message.payload);
    if (typeof ack === 'string') {
      this.stats.acksRefused++;
      throw new PublishRefusedError('payload-invalid', ack);
    }
    const commandId = message.rest[0] ?? '';
    const row = isCommandId(commandId)
      ? await this.#db
          .selectFrom('device_commands')
          .selectAll()
          .where('id', '=', commandId)
          .where('device_id', '=', device.id)
          .executeTakeFirst()
      : undefined;
    if (!row) {
      this.stats.acksUnknown++;
      this.#o.log.debug({ deviceId: device.id }, 'commands: acknowledgement of an unknown command ignored');
      return;
    }
    if (!isOpen(row.status)) {
      this.stats.acksDuplicate++;
      return;
    }
    if (row.expires_at <= message.receivedAt) {
      this.stats.acksLate++;
      await this.#expire(row);
      return;
    }
    await this.#finish(row, ack.status, {
      result: ack.result === undefined ? null : JSON.stringify(ack.result),
      error: ack.error ?? null,
      at: message.receivedAt,
      actor: { type: 'device', id: device.id },
    });
  };

  /** Ends every open command whose deadline has passed; returns how many this process ended. */
  async sweep(): Promise<number> {
    const now = this.#now();
    const overdue = await this.#db
      .selectFrom('device_commands')
      .selectAll()
      .where('status', 'in', OPEN_STATUSES)
      .where('expires_at', '<=', now)
      .orderBy('expires_at')
      .limit(SWEEP_BATCH)
      .execute();
    let ended = 0;
    for (const row of overdue) if (await this.#expire(row)) ended++;
    if (now - this.#lastPurge >= PURGE_EVERY_MS) {
      this.#lastPurge = now;
      await this.#db
        .deleteFrom('device_commands')
        .where('issued_at', '<', now - HISTORY_MS)
        .where('status', 'not in', OPEN_STATUSES)
        .execute();
    }
    return ended;
  }

  /**
   * Deletes the device's command history (unbind, BIND-5); returns how many were deleted. A factory
   * reset whose follow-up is unbinding the device keeps its own record (no parameters, its outcome is
   * what the caller waits for).
   */
  async deleteForDevice(deviceId: string): Promise<number> {
    let query = this.#db.deleteFrom('device_commands').where('device_id', '=', deviceId);
    const resetting = this.#resetting.get(deviceId);
    if (resetting !== undefined) query = query.where('id', '!=', resetting);
    const result = await query.executeTakeFirst();
    return Number(result.numDeletedRows);
  }

  #runSweep(): void {
    if (this.#sweeping || this.#closed) return;
    this.#sweeping = this.sweep()
      .then(
        () => undefined,
        (error: unknown) => this.#o.log.warn({ err: error }, 'commands: timeout sweep failed'),
      )
      .finally(() => {
        this.#sweeping = undefined;
      });
  }

  /** Timed out (it was delivered) or expired (it never was); false when something else ended it first. */
  async #expire(row: Row): Promise<boolean> {
    const status: CommandStatus = row.delivered_at === null ? 'expired' : 'timed-out';
    const ended = await this.#finish(row, status, {
      result: null,
      error: null,
      at: this.#now(),
      actor: { type: 'system', id: 'commands' },
    });
    if (ended) this.stats[status === 'expired' ? 'expired' : 'timedOut']++;
    return ended;
  }

  /** Compare-and-set from the row's open status to a final one; reports the change exactly once. */
  async #finish(
    row: Row,
    status: AckStatus | 'timed-out' | 'expired',
    outcome: { result: string | null; error: string | null; at: number; actor: AuditEvent['actor'] },
  ): Promise<boolean> {
    // Marked before the update: its commit is readable before its fsync has answered, and a long poll
    // reading it then must still wait for the follow-up (waitForOutcome).
    const resetting = row.name === 'factory-reset' && status === 'succeeded' && this.#o.onFactoryReset !== undefined;
    if (resetting) this.#resetting.set(row.device_id, row.id);
    const updated = await this.#db
      .updateTable('device_commands')
      .set({ status, result: outcome.result, error: outcome.error, completed_at: outcome.at })
      .where('id', '=', row.id)
      .where('status', 'in', OPEN_STATUSES)
      .executeTakeFirst()
      .catch((error: unknown) => {
        if (resetting) this.#resetting.delete(row.device_id);
        throw error;
      });
    if (Number(updated.numUpdatedRows) === 0) {
      if (resetting) this.#resetting.delete(row.device_id);
      if (outcome.actor.type === 'device') this.stats.acksDuplicate++;
      return false;
    }
    if (outcome.actor.type === 'device') this.stats.acksApplied++;
    const command = toCommand({
      ...row,
      status,
      result: outcome.result,
      error: outcome.error,
      completed_at: outcome.at,
    });
    let followUp: Record<string, unknown> | undefined;
    if (command.name === 'factory-reset' && status === 'succeeded' && this.#o.onFactoryReset) {
      // Before anyone hears "succeeded": whoever reads the device next sees it reset.
      this.#resetting.set(row.device_id, row.id);
      try {
        followUp = await this.#o.onFactoryReset({ id: row.device_id, vendorId: row.vendor_id });
      } catch (error) {
        this.#o.log.error({ err: error, deviceId: row.device_id }, 'commands: factory-reset follow-up failed');
        followUp = { followUpFailed: true };
      } finally {
        this.#resetting.delete(row.device_id);
      }
    }
    this.#o.audit({
      actor: outcome.actor,
      tenant: row.vendor_id,
      type: 'device.command.result',
      target: row.device_id,
      result: AUDIT_RESULT[status],
      details: {
        commandId: row.id,
        name: row.name,
        builtin: isBuiltinCommand(row.name),
        status,
        ...(followUp ? { followUp } : {}),
      },
    });
    this.#changed(command, status, outcome.at);
    this.#wake(row.id);
    return true;
  }

  #changed(command: Command, status: CommandStatus, at: number): void {
    this.#o.events?.emit('change', {
      deviceId: command.deviceId,
      vendorId: command.vendorId,
      kind: 'command.status',
      at,
      data: { commandId: command.id, name: command.name, status },
    });
  }

  /** Wakes long polls of a command that ended in another process (scale mode: no 1 s poll to wait for). */
  wake(commandId: string): void {
    this.#wake(commandId);
  }

  #wake(commandId: string): void {
    const set = this.#waiters.get(commandId);
    if (!set) return;
    this.#waiters.delete(commandId);
    for (const wake of set) wake();
  }
}

function isOpen(status: string): boolean {
  return (OPEN_STATUSES as readonly string[]).includes(status);
}

function toCommand(row: Row): Command {
  return {
    id: row.id,
    deviceId: row.device_id,
    vendorId: row.vendor_id,
    name: row.name,
    params: JSON.parse(row.params) as JsonObject,
    status: row.status as CommandStatus,
    result: row.result === null ? null : (JSON.parse(row.result) as JsonValue),
    error: row.error,
    issuedBy: { type: row.issued_by_type, id: row.issued_by_id },
    issuedAt: Number(row.issued_at),
    expiresAt: Number(row.expires_at),
    deliveredAt: row.delivered_at === null ? null : Number(row.delivered_at),
    completedAt: row.completed_at === null ? null : Number(row.completed_at),
  };
}

export type { BuiltinCommand };
