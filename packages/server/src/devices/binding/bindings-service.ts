// Bindings and shares (BIND-1/2/3/5): who owns a device, who it is shared with and in which role, and
// the one place every device request asks "may this principal do this to this device?" (DeviceAccess).
//
// Vendor side of the authorisation (BIND-2), mapped onto accounts' tenant rules:
//   device.view                          → 'device.read'    (operators with devices:read, org viewers+)
//   device.control, device.admin-command → 'device.command' (operators with devices:write, org admins+)
//   device.share, device.unbind, lock.passcode → never for vendors (they concern the household).
// Staff reach no consumer device through these routes. Every refusal is ERR_DEVICE_NOT_FOUND, exactly
// like a missing device (ORG-3), so device IDs cannot be probed.
import type { Kysely, SelectQueryBuilder } from 'kysely';
import {
  type Action,
  can,
  isUniqueViolation,
  normaliseIdentifier,
  type Principal,
  type UserDirectory,
  type UserRecord,
} from '../../accounts/index.ts';
import type { AuditEvent } from '../../audit/index.ts';
import { CastellanError } from '../../errors/index.ts';
import { newId } from '../../lib/random-ids.ts';
import type { Logger } from '../../logging/index.ts';
import type { Database } from '../../store/index.ts';
import {
  type DeviceAccess,
  type DeviceAction,
  type DeviceRole,
  type DeviceView,
  deviceRoleAllows,
  mayGrant,
} from '../device-access.ts';
import { PRESENCE_COLUMNS } from '../device-presence.ts';
import type { DeviceEvents } from '../device-events.ts';
import { type Device, type DeviceRow, type DevicesService, toDevice } from '../devices-service.ts';
import type { DevicePresence } from '../presence-events.ts';
import { BindingTokenStore, type IssuedBindingToken, type BindingTokenView } from './binding-token-store.ts';

/** The vendor-side action standing for a device action; null: never for vendors. */
const VENDOR_ACTION: Readonly<Record<DeviceAction, Action | null>> = {
  'device.view': 'device.read',
  'device.control': 'device.command',
  'device.admin-command': 'device.command',
  'device.share': null,
  'device.unbind': null,
  'lock.passcode': null,
};

export type ShareRole = Exclude<DeviceRole, 'owner'>;

export interface Share {
  readonly id: string;
  readonly deviceId: string;
  readonly userId: string;
  readonly role: ShareRole;
  readonly createdBy: string;
  readonly createdAt: number;
  readonly expiresAt: number | null;
}

export interface UserDevice {
  readonly device: Device;
  readonly role: DeviceRole;
  /** Bound (owner) or shared (others) at. */
  readonly since: number;
  /** When the share ends; null for the owner and for shares without expiry. */
  readonly expiresAt: number | null;
}

export interface BindResult {
  readonly userId: string;
  readonly boundAt: number;
  /** The device was already bound to this same person (re-provisioned): nothing changed but the token. */
  readonly alreadyBound: boolean;
}

export type UnbindWiper = (deviceId: string, previousOwner: string) => Promise<void>;

export interface Actor {
  readonly type: 'user' | 'device' | 'operator' | 'admin' | 'system';
  readonly id: string;
  readonly sourceIp?: string | undefined;
}

export interface BindingsServiceOptions {
  db: Kysely<Database>;
  devices: Pick<DevicesService, 'getDevice' | 'deviceQuery' | 'presence'>;
  /** Accounts' directory of people (lookups by blind index; never its tables). */
  users: Pick<UserDirectory, 'get' | 'findByIdentifier'>;
  events: DeviceEvents;
  record: (event: AuditEvent) => void;
  log: Logger;
  tokenTtlMs: number;
  tokensPerUser: number;
  now?: () => number;
}

const notFound = () => new CastellanError('ERR_DEVICE_NOT_FOUND');

/** The person's role from a #withRelation() row: the binding's owner, else their unexpired share's role. */
function roleFrom(
  row: { owner_id?: string | null; share_role?: DeviceRole | null },
  userId: string,
): DeviceRole | null {
  return row.owner_id === userId ? 'owner' : (row.share_role ?? null);
}

export class BindingsService implements DeviceAccess {
  readonly tokens: BindingTokenStore;
  readonly #db: Kysely<Database>;
  readonly #devices: Pick<DevicesService, 'getDevice' | 'deviceQuery' | 'presence'>;
  readonly #users: Pick<UserDirectory, 'get' | 'findByIdentifier'>;
  readonly #events: DeviceEvents;
  readonly #record: (event: AuditEvent) => void;
  readonly #log: Logger;
  readonly #now: () => number;
  readonly #wipers: UnbindWiper[] = [];

  constructor(options: BindingsServiceOptions) {
    this.#db = options.db;
    this.#devices = options.devices;
    this.#users = options.users;
    this.#events = options.events;
    this.#record = options.record;
    this.#log = options.log;
    this.#now = options.now ?? Date.now;
    this.tokens = new BindingTokenStore({
      db: options.db,
      ttlMs: options.tokenTtlMs,
      perUser: options.tokensPerUser,
      now: this.#now,
    });
  }

  // ---- DeviceAccess ----

  async roleOf(userId: string, deviceId: string): Promise<DeviceRole | null> {
    const row = await this.#withRelation(this.#devices.deviceQuery(deviceId), userId).executeTakeFirst();
    return row ? roleFrom(row, userId) : null;
  }

  /** A device read joined to the person's relation to it: their binding and their unexpired share. */
  #withRelation(query: SelectQueryBuilder<Database, 'devices', DeviceRow>, userId: string) {
    return query
      .leftJoin('device_bindings', 'device_bindings.device_id', 'devices.id')
      .leftJoin('device_shares', (join) =>
        join
          .onRef('device_shares.device_id', '=', 'devices.id')
          .on('device_shares.user_id', '=', userId)
          // Expiry is enforced here, at every check, not only by the purge.
          .on((eb) =>
            eb.or([eb('device_shares.expires_at', 'is', null), eb('device_shares.expires_at', '>', this.#now())]),
          ),
      )
      .select(['device_bindings.user_id as owner_id', 'device_shares.role as share_role']);
  }

  async authorize(principal: Principal | undefined, deviceId: string, action: DeviceAction): Promise<Device> {
    return (await this.#authorize(principal, deviceId, action, false)).device;
  }

  async authorizeView(principal: Principal | undefined, deviceId: string): Promise<DeviceView> {
    const { device, presence } = await this.#authorize(principal, deviceId, 'device.view', true);
    return { device, presence: presence! };
  }

  /**
   * One round trip: the device, a person's relation to it (as roleOf() reads it) and, when
   * asked, its presence; the decision is then made in memory, deny by default.
   */
  async #authorize(
    principal: Principal | undefined,
    deviceId: string,
    action: DeviceAction,
    withPresence: boolean,
  ): Promise<{ device: Device; presence: DevicePresence | undefined }> {
    if (!principal || (principal.kind !== 'user' && principal.kind !== 'operator')) throw notFound();
    const userId = principal.kind === 'user' ? principal.id : null;
    const row = await this.#devices
      .deviceQuery(deviceId)
      .$if(userId !== null, (qb) => this.#withRelation(qb, userId!))
      .$if(withPresence, (qb) =>
        qb.leftJoin('device_presence', 'device_presence.device_id', 'devices.id').select(PRESENCE_COLUMNS),
      )
      .executeTakeFirst();
    if (!row) throw notFound();
    const allowed = () => {
      if (userId !== null) {
        if (deviceRoleAllows(roleFrom(row, userId), action)) return true;
      }
      const vendorAction = VENDOR_ACTION[action];
      return vendorAction !== null && can(principal, vendorAction, { vendorId: row.vendor_id });
    };
    if (!allowed()) throw notFound();
    return {
      device: toDevice(row),
      presence: withPresence ? this.#devices.presence.fromRow(deviceId, row) : undefined,
    };
  }

  async devicesOf(userId: string): Promise<string[]> {
    return (await this.listUserDevices(userId)).map((d) => d.device.id);
  }

  onUnbind(wiper: UnbindWiper): void {
    this.#wipers.push(wiper);
  }

  // ---- Binding tokens (the person's side) ----

  issueToken(userId: string): Promise<IssuedBindingToken> {
    return this.tokens.issue(userId);
  }

  /** ERR_BINDING_TOKEN_NOT_FOUND for a missing token and for another person's alike. */
  async tokenStatus(userId: string, tokenId: string): Promise<BindingTokenView> {
    const view = await this.tokens.view(userId, tokenId);
    if (!view) throw new CastellanError('ERR_BINDING_TOKEN_NOT_FOUND');
    return view;
  }

  async cancelToken(userId: string, tokenId: string): Promise<void> {
    if (!(await this.tokens.cancel(userId, tokenId))) throw new CastellanError('ERR_BINDING_TOKEN_NOT_FOUND');
  }

  // ---- Binding (the device's side) ----

  /**
   * The device presents a binding token at activation: it is bound to the token's issuer (never to
   * anyone else). Refusals (unknown, used, expired, inactive issuer → ERR_BINDING_TOKEN_INVALID with
   * one message; bound to someone else → ERR_DEVICE_ALREADY_BOUND) are audited and leave the token
   * unused; the check and the single-use mark happen in one transaction.
   */
  async bind(device: Device, token: string, sourceIp?: string): Promise<BindResult> {
    const refuse = (
      reason: string,
      code: 'ERR_BINDING_TOKEN_INVALID' | 'ERR_DEVICE_ALREADY_BOUND',
      tokenId?: string,
    ) => {
      this.#record({
        actor: { type: 'device', id: device.id },
        tenant: device.vendorId,
        type: 'device.bind',
        target: device.id,
        sourceIp: sourceIp ?? null,
        result: 'denied',
        details: { reason, ...(tokenId ? { tokenId } : {}) },
      });
      return new CastellanError(code);
    };
    const now = this.#now();
    let outcome: BindResult & { tokenId: string };
    try {
      outcome = await this.#db.transaction().execute(async (trx) => {
        const found = await this.tokens.find(trx, token);
        if (typeof found === 'string') throw refuse(found, 'ERR_BINDING_TOKEN_INVALID');
        const issuer = await this.#users.get(found.userId, trx);
        if (issuer?.status !== 'active') throw refuse('issuer-inactive', 'ERR_BINDING_TOKEN_INVALID', found.id);
        const existing = await trx
          .selectFrom('device_bindings')
          .select(['user_id', 'bound_at'])
          .where('device_id', '=', device.id)
          .executeTakeFirst();
        if (existing && existing.user_id !== found.userId) {
          throw refuse('bound-to-another-user', 'ERR_DEVICE_ALREADY_BOUND', found.id);
        }
        if (!(await this.tokens.consume(trx, found.id, device.id))) {
          throw refuse('used', 'ERR_BINDING_TOKEN_INVALID', found.id);
        }
        if (existing) {
          return { userId: found.userId, boundAt: Number(existing.bound_at), alreadyBound: true, tokenId: found.id };
        }
        await trx
          .insertInto('device_bindings')
          .values({
            device_id: device.id,
            user_id: found.userId,
            vendor_id: device.vendorId,
            bound_at: now,
            token_id: found.id,
          })
          .execute();
        return { userId: found.userId, boundAt: now, alreadyBound: false, tokenId: found.id };
      });
    } catch (error) {
      // Two tokens of different people raced for one unbound device: the primary key kept one owner.
      if (isUniqueViolation(error)) throw refuse('bound-to-another-user', 'ERR_DEVICE_ALREADY_BOUND');
      throw error;
    }
    this.#record({
      actor: { type: 'device', id: device.id },
      tenant: device.vendorId,
      type: 'device.bind',
      target: device.id,
      sourceIp: sourceIp ?? null,
      result: 'success',
      details: { userId: outcome.userId, tokenId: outcome.tokenId, alreadyBound: outcome.alreadyBound },
    });
    if (!outcome.alreadyBound) {
      this.#emit(device, 'binding.bound', { userId: outcome.userId });
    }
    return { userId: outcome.userId, boundAt: outcome.boundAt, alreadyBound: outcome.alreadyBound };
  }

  async ownerOf(deviceId: string): Promise<string | null> {
    const row = await this.#db
      .selectFrom('device_bindings')
      .select('user_id')
      .where('device_id', '=', deviceId)
      .executeTakeFirst();
    return row?.user_id ?? null;
  }

  /** The devices a person owns or has a current share of, owned first, then by device ID. */
  async listUserDevices(userId: string): Promise<UserDevice[]> {
    const owned = await this.#db
      .selectFrom('device_bindings')
      .select(['device_id', 'bound_at'])
      .where('user_id', '=', userId)
      .orderBy('device_id')
      .execute();
    const shared = await this.#db
      .selectFrom('device_shares')
      .select(['device_id', 'role', 'created_at', 'expires_at'])
      .where('user_id', '=', userId)
      .where((eb) => eb.or([eb('expires_at', 'is', null), eb('expires_at', '>', this.#now())]))
      .orderBy('device_id')
      .execute();
    const out: UserDevice[] = [];
    for (const row of owned) {
      const device = await this.#devices.getDevice(row.device_id);
      if (device) out.push({ device, role: 'owner', since: Number(row.bound_at), expiresAt: null });
    }
    for (const row of shared) {
      const device = await this.#devices.getDevice(row.device_id);
      if (device) {
        out.push({
          device,
          role: row.role,
          since: Number(row.created_at),
          expiresAt: row.expires_at === null ? null : Number(row.expires_at),
        });
      }
    }
    return out;
  }

  // ---- Sharing (BIND-3) ----

  /**
   * Shares a device (the caller passed authorize(…, 'device.share')). The granter's role must allow
   * the role given (mayGrant), also for replacing an existing share of the invitee: an admin cannot
   * change another admin's share. One share per person and device: a second share replaces the first.
   */
  async share(
    granterId: string,
    device: Device,
    input: { invitee: { email: string } | { userId: string }; role: ShareRole; expiresAt: number | null },
  ): Promise<Share> {
    const granterRole = await this.roleOf(granterId, device.id);
    if (granterRole === null || !mayGrant(granterRole, input.role)) {
      throw new CastellanError('ERR_SHARE_ROLE_FORBIDDEN');
    }
    const now = this.#now();
    if (input.expiresAt !== null && input.expiresAt <= now) {
      throw new CastellanError('ERR_VALIDATION_FAILED', { message: 'expiresAt must be in the future' });
    }
    let invitee: UserRecord | null;
    if ('email' in input.invitee) {
      invitee = await this.#users.findByIdentifier(normaliseIdentifier(input.invitee.email));
    } else {
      invitee = await this.#users.get(input.invitee.userId);
    }
    const owner = await this.ownerOf(device.id);
    if (!invitee || invitee.status !== 'active' || invitee.id === granterId || invitee.id === owner) {
      throw new CastellanError('ERR_SHARE_INVITEE_NOT_FOUND');
    }
    const inviteeId = invitee.id;
    const share = await this.#db.transaction().execute(async (trx) => {
      const existing = await trx
        .selectFrom('device_shares')
        .select(['id', 'role', 'expires_at'])
        .where('device_id', '=', device.id)
        .where('user_id', '=', inviteeId)
        .executeTakeFirst();
      if (existing) {
        // An expired share (not yet purged) is no share: anyone who may grant the new role replaces it.
        const current = existing.expires_at === null || Number(existing.expires_at) > now;
        if (current && !mayGrant(granterRole, existing.role)) throw new CastellanError('ERR_SHARE_ROLE_FORBIDDEN');
        await trx
          .updateTable('device_shares')
          .set({ role: input.role, expires_at: input.expiresAt, created_by: granterId, created_at: now })
          .where('id', '=', existing.id)
          .execute();
        return existing.id;
      }
      const id = newId('shr');
      await trx
        .insertInto('device_shares')
        .values({
          id,
          device_id: device.id,
          user_id: inviteeId,
          role: input.role,
          created_by: granterId,
          created_at: now,
          expires_at: input.expiresAt,
        })
        .execute();
      return id;
    });
    const created: Share = {
      id: share,
      deviceId: device.id,
      userId: inviteeId,
      role: input.role,
      createdBy: granterId,
      createdAt: now,
      expiresAt: input.expiresAt,
    };
    this.#emit(device, 'share.created', { shareId: created.id, role: created.role, expiresAt: created.expiresAt });
    return created;
  }

  /** Current (unexpired) shares of a device. */
  async listShares(deviceId: string): Promise<Share[]> {
    const rows = await this.#db
      .selectFrom('device_shares')
      .selectAll()
      .where('device_id', '=', deviceId)
      .where((eb) => eb.or([eb('expires_at', 'is', null), eb('expires_at', '>', this.#now())]))
      .orderBy('created_at')
      .orderBy('id')
      .execute();
    return rows.map(toShare);
  }

  /**
   * Revokes a share, effective at once (the row is gone; the next check finds no role). The owner
   * revokes any share, an admin member and guest shares, and anyone their own share (leaving). Every
   * other caller, and a share of another device, gets ERR_SHARE_NOT_FOUND or ERR_DEVICE_NOT_FOUND.
   */
  async revokeShare(
    principal: Principal | undefined,
    deviceId: string,
    shareId: string,
  ): Promise<{ share: Share; device: Device }> {
    if (principal?.kind !== 'user') throw notFound();
    const device = await this.#devices.getDevice(deviceId);
    if (!device) throw notFound();
    const row = await this.#db
      .selectFrom('device_shares')
      .selectAll()
      .where('id', '=', shareId)
      .where('device_id', '=', deviceId)
      // An expired share is gone already, as in listShares (the purge deletes the row later).
      .where((eb) => eb.or([eb('expires_at', 'is', null), eb('expires_at', '>', this.#now())]))
      .executeTakeFirst();
    const role = await this.roleOf(principal.id, deviceId);
    const own = row?.user_id === principal.id;
    if (!own && !deviceRoleAllows(role, 'device.share')) throw notFound();
    if (!row) throw new CastellanError('ERR_SHARE_NOT_FOUND');
    if (!own && (role === null || !mayGrant(role, row.role))) throw new CastellanError('ERR_SHARE_ROLE_FORBIDDEN');
    await this.#db.deleteFrom('device_shares').where('id', '=', row.id).execute();
    this.#emit(device, 'share.revoked', { shareId: row.id });
    return { share: toShare(row), device };
  }

  // ---- Unbinding (BIND-5) ----

  /**
   * Unbinds a device: every registered wiper first (telemetry, shadow, passcodes… held for the owner),
   * then shares, binding tokens and the binding in one transaction. A failing wiper fails the unbind
   * with nothing removed from the binding (ERR_DEVICE_UNBIND_FAILED), so it can be retried: wipers are
   * idempotent deletes. Returns false when the device was not bound.
   */
  async unbind(device: Device, actor: Actor, reason: 'owner' | 'factory-reset'): Promise<boolean> {
    const owner = await this.ownerOf(device.id);
    if (owner === null) return false;
    for (const wiper of this.#wipers) {
      try {
        await wiper(device.id, owner);
      } catch (error) {
        this.#log.error({ err: error, deviceId: device.id }, 'bindings: an unbind wiper failed; the binding is kept');
        this.#record({
          actor: { type: actor.type, id: actor.id },
          tenant: device.vendorId,
          type: 'device.unbind',
          target: device.id,
          sourceIp: actor.sourceIp ?? null,
          result: 'failure',
          details: { reason, previousOwner: owner, failure: 'wiper' },
        });
        throw new CastellanError('ERR_DEVICE_UNBIND_FAILED', { cause: error });
      }
    }
    const removed = await this.#db.transaction().execute(async (trx) => {
      await trx.deleteFrom('device_shares').where('device_id', '=', device.id).execute();
      await this.tokens.forgetDevice(trx, device.id);
      const result = await trx
        .deleteFrom('device_bindings')
        .where('device_id', '=', device.id)
        .where('user_id', '=', owner)
        .executeTakeFirst();
      return Number(result.numDeletedRows) > 0;
    });
    if (!removed) return false;
    this.#record({
      actor: { type: actor.type, id: actor.id },
      tenant: device.vendorId,
      type: 'device.unbind',
      target: device.id,
      sourceIp: actor.sourceIp ?? null,
      result: 'success',
      details: { reason, previousOwner: owner },
    });
    this.#emit(device, 'binding.unbound', { reason });
    return true;
  }

  /** Deletes expired shares and old binding tokens (data minimisation; checks never rely on it). */
  async purgeExpired(): Promise<{ shares: number; tokens: number }> {
    const result = await this.#db.deleteFrom('device_shares').where('expires_at', '<=', this.#now()).executeTakeFirst();
    return { shares: Number(result.numDeletedRows), tokens: await this.tokens.purge() };
  }

  #emit(device: Device, kind: string, data: Record<string, unknown>): void {
    this.#events.emit('change', { deviceId: device.id, vendorId: device.vendorId, kind, at: this.#now(), data });
  }
}

function toShare(row: Database['device_shares']): Share {
  return {
    id: row.id,
    deviceId: row.device_id,
    userId: row.user_id,
    role: row.role,
    createdBy: row.created_by,
    createdAt: Number(row.created_at),
    expiresAt: row.expires_at === null ? null : Number(row.expires_at),
  };
}
