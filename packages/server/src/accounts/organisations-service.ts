// Vendor organisations of developers (ORG-1): every developer has one personal organisation (owner,
// no other members) and may create or join any number of enterprise organisations, in the roles
// owner / admin / viewer. Members are invited by e-mail: the invitation keeps only the blind index of
// the address and the hash of a single-use token (the token travels only in the e-mail).
//
// Membership changes take effect at the invitee's or member's next request: the request
// authenticator reads memberships on every request, so no session has to be revoked.
//
// Changes to an organisation's members run in a transaction that first locks the vendor row, so two
// owners demoting each other at the same time cannot leave the organisation without an owner.
import { generateCode } from '@castellan/protocol';
import type { Kysely } from 'kysely';
import { CastellanError } from '../errors/index.ts';
import { constantTimeEqual, hashToken, newId, newToken } from '../lib/random-ids.ts';
import type { Database } from '../store/index.ts';
import type { AccountsContext } from './accounts-context.ts';
import { isUniqueViolation } from './accounts-service.ts';
import type { OrgRole } from './principal.ts';
import { type Identifier, identifierIndex } from './user-directory.ts';

export type OrganisationKind = 'personal' | 'enterprise';

export interface Organisation {
  readonly id: string;
  readonly code: string;
  readonly name: string;
  readonly kind: OrganisationKind;
  readonly createdAt: number;
}

export interface Membership extends Organisation {
  readonly role: OrgRole;
}

export interface Member {
  readonly userId: string;
  readonly role: OrgRole;
  readonly joinedAt: number;
}

export interface Invitation {
  readonly id: string;
  readonly vendorId: string;
  readonly role: OrgRole;
  readonly createdAt: number;
  readonly expiresAt: number;
}

export const PERSONAL_ORGANISATION_NAME = 'Personal';
export const INVITATION_TOKEN_PREFIX = 'cas_inv';
export const INVITATION_TTL_MS = 7 * 24 * 60 * 60 * 1000;
const CODE_ATTEMPTS = 16;

type Ctx = Pick<AccountsContext, 'db' | 'now'>;

/**
 * Inserts a vendor (a fresh 6-hex code) and its first owner in one transaction. A code collision
 * aborts the whole transaction (PostgreSQL cannot continue one after a failed statement), so the
 * retry repeats the transaction. `before` runs first inside it and may return an existing result.
 */
async function insertOrganisation(
  ctx: Ctx,
  name: string,
  kind: OrganisationKind,
  ownerId: string,
  before?: (trx: Kysely<Database>) => Promise<Organisation | null>,
): Promise<Organisation> {
  for (let attempt = 0; attempt < CODE_ATTEMPTS; attempt++) {
    try {
      return await ctx.db.transaction().execute(async (trx) => {
        const existing = before ? await before(trx) : null;
        if (existing) return existing;
        const now = ctx.now();
        const org: Organisation = { id: newId('vnd'), code: generateCode(), name, kind, createdAt: now };
        await trx.insertInto('vendors').values({ id: org.id, code: org.code, name, kind, created_at: now }).execute();
        await trx
          .insertInto('organisation_members')
          .values({ vendor_id: org.id, user_id: ownerId, role: 'owner', created_at: now })
          .execute();
        return org;
      });
    } catch (error) {
      if (!isUniqueViolation(error)) throw error;
    }
  }
  throw new CastellanError('ERR_VENDOR_CODE_EXHAUSTED');
}

async function personalOrganisationOf(db: Kysely<Database>, userId: string): Promise<Organisation | null> {
  const row = await db
    .selectFrom('organisation_members as m')
    .innerJoin('vendors as v', 'v.id', 'm.vendor_id')
    .select(['v.id', 'v.code', 'v.name', 'v.kind', 'v.created_at'])
    .where('m.user_id', '=', userId)
    .where('m.role', '=', 'owner')
    .where('v.kind', '=', 'personal')
    .executeTakeFirst();
  return row ? { id: row.id, code: row.code, name: row.name, kind: row.kind, createdAt: Number(row.created_at) } : null;
}

/**
 * Creates the developer's personal organisation (owner: the developer). Idempotent: a person has at
 * most one; a second call returns the first. The user row is locked (a no-op UPDATE, portable across
 * SQLite and PostgreSQL) so that concurrent calls cannot create two.
 */
export async function createPersonalOrganisation(
  ctx: Ctx,
  userId: string,
): Promise<{ vendorId: string; code: string }> {
  const org = await insertOrganisation(ctx, PERSONAL_ORGANISATION_NAME, 'personal', userId, async (trx) => {
    const locked = await trx
      .updateTable('users')
      .set((eb) => ({ status: eb.ref('status') }))
      .where('id', '=', userId)
      .executeTakeFirst();
    // A programming error (the caller names a person who does not exist): a plain 500.
    if (Number(locked.numUpdatedRows) !== 1) throw new Error(`createPersonalOrganisation: no user ${userId}`);
    return personalOrganisationOf(trx, userId);
  });
  return { vendorId: org.id, code: org.code };
}

/** Whether a member in role `inviter` may invite someone as `role`: owners for owners, admins otherwise. */
function mayGrant(inviter: OrgRole, role: OrgRole): boolean {
  return role === 'owner' ? inviter === 'owner' : inviter === 'owner' || inviter === 'admin';
}

function toOrganisation(row: Database['vendors']): Organisation {
  return { id: row.id, code: row.code, name: row.name, kind: row.kind, createdAt: Number(row.created_at) };
}

export class OrganisationsService {
  readonly #ctx: Pick<AccountsContext, 'db' | 'now' | 'keys'>;

  constructor(ctx: Pick<AccountsContext, 'db' | 'now' | 'keys'>) {
    this.#ctx = ctx;
  }

  get #db(): Kysely<Database> {
    return this.#ctx.db;
  }

  createEnterprise(ownerId: string, name: string): Promise<Organisation> {
    return insertOrganisation(this.#ctx, name, 'enterprise', ownerId);
  }

  async get(vendorId: string): Promise<Organisation | null> {
    const row = await this.#db.selectFrom('vendors').selectAll().where('id', '=', vendorId).executeTakeFirst();
    return row ? toOrganisation(row) : null;
  }

  /** The organisations a person belongs to, with the role in each. */
  async listFor(userId: string): Promise<Membership[]> {
    const rows = await this.#db
      .selectFrom('organisation_members as m')
      .innerJoin('vendors as v', 'v.id', 'm.vendor_id')
      .select(['v.id', 'v.code', 'v.name', 'v.kind', 'v.created_at', 'm.role'])
      .where('m.user_id', '=', userId)
      .orderBy('v.created_at')
      .orderBy('v.id')
      .execute();
    return rows.map((r) => ({
      id: r.id,
      code: r.code,
      name: r.name,
      kind: r.kind,
      createdAt: Number(r.created_at),
      role: r.role,
    }));
  }

  async members(vendorId: string): Promise<Member[]> {
    const rows = await this.#db
      .selectFrom('organisation_members')
      .select(['user_id', 'role', 'created_at'])
      .where('vendor_id', '=', vendorId)
      .orderBy('created_at')
      .orderBy('user_id')
      .execute();
    return rows.map((r) => ({ userId: r.user_id, role: r.role, joinedAt: Number(r.created_at) }));
  }

  /**
   * Changes a member's role. Only owners grant or take away 'owner'; the last owner keeps the role.
   * The caller's own role is read again inside the locked transaction.
   */
  async changeRole(vendorId: string, actorId: string, userId: string, role: OrgRole): Promise<Member> {
    return this.#db.transaction().execute(async (trx) => {
      const { actor, target } = await this.#lockMembers(trx, vendorId, actorId, userId);
      if ((target.role === 'owner' || role === 'owner') && actor !== 'owner') {
        throw new CastellanError('ERR_AUTH_FORBIDDEN');
      }
      if (target.role === 'owner' && role !== 'owner') await this.#assertNotLastOwner(trx, vendorId);
      await trx
        .updateTable('organisation_members')
        .set({ role })
        .where('vendor_id', '=', vendorId)
        .where('user_id', '=', userId)
        .execute();
      return { userId, role, joinedAt: target.joinedAt };
    });
  }

  /**
   * Removes a member (or lets a member leave: actorId === userId). Same owner rules as changeRole.
   * The pending invitations the member sent for this organisation go too: a departed member must
   * not keep bringing people in (accept() also re-checks the inviter). Returns the removed role and
   * how many invitations were withdrawn.
   */
  async removeMember(
    vendorId: string,
    actorId: string,
    userId: string,
  ): Promise<{ role: OrgRole; invitationsWithdrawn: number }> {
    return this.#db.transaction().execute(async (trx) => {
      const { actor, target } = await this.#lockMembers(trx, vendorId, actorId, userId);
      if (target.role === 'owner' && actor !== 'owner') throw new CastellanError('ERR_AUTH_FORBIDDEN');
      if (target.role === 'owner') await this.#assertNotLastOwner(trx, vendorId);
      await trx
        .deleteFrom('organisation_members')
        .where('vendor_id', '=', vendorId)
        .where('user_id', '=', userId)
        .execute();
      const withdrawn = await trx
        .deleteFrom('organisation_invitations')
        .where('vendor_id', '=', vendorId)
        .where('invited_by', '=', userId)
        .where('accepted_at', 'is', null)
        .executeTakeFirst();
      return { role: target.role, invitationsWithdrawn: Number(withdrawn.numDeletedRows) };
    });
  }

  /**
   * Creates an invitation for an e-mail address; returns it with its token (for the e-mail only).
   * Personal organisations have no other members (ERR_ORG_PERSONAL); only owners invite owners.
   */
  async invite(
    vendorId: string,
    inviterId: string,
    email: Identifier,
    role: OrgRole,
  ): Promise<{ invitation: Invitation; token: string; organisation: Organisation }> {
    const organisation = await this.get(vendorId);
    if (!organisation) throw new CastellanError('ERR_ORG_NOT_FOUND');
    if (organisation.kind === 'personal') throw new CastellanError('ERR_ORG_PERSONAL');
    const inviter = await this.#roleOf(this.#db, vendorId, inviterId);
    if (!inviter) throw new CastellanError('ERR_ORG_NOT_FOUND');
    if (!mayGrant(inviter, role)) throw new CastellanError('ERR_AUTH_FORBIDDEN');
    const token = newToken(INVITATION_TOKEN_PREFIX);
    const now = this.#ctx.now();
    const invitation: Invitation = {
      id: newId('inv'),
      vendorId,
      role,
      createdAt: now,
      expiresAt: now + INVITATION_TTL_MS,
    };
    await this.#db
      .insertInto('organisation_invitations')
      .values({
        id: invitation.id,
        vendor_id: vendorId,
        email_index: identifierIndex(this.#ctx.keys, email),
        role,
        token_hash: hashToken(token),
        invited_by: inviterId,
        created_at: now,
        expires_at: invitation.expiresAt,
        accepted_at: null,
      })
      .execute();
    return { invitation, token, organisation };
  }

  /**
   * Accepts an invitation for the signed-in person: the token must be unused and unexpired, the
   * person's e-mail (its blind index) must be the invited one, and the inviter must still be allowed
   * to grant the role (a member, owner for owner invitations, admin or owner otherwise: an invitation
   * carries its inviter's authority, which ends when they are removed or demoted). Single use: only
   * the UPDATE that sets accepted_at from NULL wins. Every refusal is the same
   * ERR_ORG_INVITATION_INVALID.
   */
  async accept(userId: string, token: string): Promise<{ invitationId: string; vendorId: string; role: OrgRole }> {
    return this.#db.transaction().execute(async (trx) => {
      const now = this.#ctx.now();
      const invitation = await trx
        .selectFrom('organisation_invitations')
        .select(['id', 'vendor_id', 'email_index', 'role', 'invited_by', 'expires_at', 'accepted_at'])
        .where('token_hash', '=', hashToken(token))
        .executeTakeFirst();
      const user = await trx.selectFrom('users').select(['email_index']).where('id', '=', userId).executeTakeFirst();
      if (
        !invitation ||
        invitation.accepted_at !== null ||
        Number(invitation.expires_at) <= now ||
        !user?.email_index ||
        !constantTimeEqual(Buffer.from(user.email_index), Buffer.from(invitation.email_index))
      ) {
        throw new CastellanError('ERR_ORG_INVITATION_INVALID');
      }
      // Read under the vendor lock, so a concurrent removal or demotion of the inviter is either
      // seen here or waits for this acceptance (and then removes a member it can see).
      const organisation = await this.#lockOrganisation(trx, invitation.vendor_id);
      const inviter = await this.#roleOf(trx, invitation.vendor_id, invitation.invited_by);
      if (!inviter || !mayGrant(inviter, invitation.role)) throw new CastellanError('ERR_ORG_INVITATION_INVALID');
      if (organisation.kind === 'personal') throw new CastellanError('ERR_ORG_PERSONAL');
      if (await this.#roleOf(trx, invitation.vendor_id, userId)) throw new CastellanError('ERR_ORG_ALREADY_MEMBER');
      const used = await trx
        .updateTable('organisation_invitations')
        .set({ accepted_at: now })
        .where('id', '=', invitation.id)
        .where('accepted_at', 'is', null)
        .executeTakeFirst();
      if (Number(used.numUpdatedRows) !== 1) throw new CastellanError('ERR_ORG_INVITATION_INVALID');
      await trx
        .insertInto('organisation_members')
        .values({ vendor_id: invitation.vendor_id, user_id: userId, role: invitation.role, created_at: now })
        .execute();
      return { invitationId: invitation.id, vendorId: invitation.vendor_id, role: invitation.role };
    });
  }

  async #roleOf(db: Kysely<Database>, vendorId: string, userId: string): Promise<OrgRole | null> {
    const row = await db
      .selectFrom('organisation_members')
      .select('role')
      .where('vendor_id', '=', vendorId)
      .where('user_id', '=', userId)
      .executeTakeFirst();
    return row?.role ?? null;
  }

  /** Locks the vendor row for the rest of the transaction (a no-op UPDATE: portable row lock). */
  async #lockOrganisation(trx: Kysely<Database>, vendorId: string): Promise<Organisation> {
    await trx
      .updateTable('vendors')
      .set((eb) => ({ name: eb.ref('name') }))
      .where('id', '=', vendorId)
      .execute();
    const row = await trx.selectFrom('vendors').selectAll().where('id', '=', vendorId).executeTakeFirst();
    if (!row) throw new CastellanError('ERR_ORG_NOT_FOUND');
    return toOrganisation(row);
  }

  async #lockMembers(
    trx: Kysely<Database>,
    vendorId: string,
    actorId: string,
    userId: string,
  ): Promise<{ actor: OrgRole; target: Member }> {
    await this.#lockOrganisation(trx, vendorId);
    const actor = await this.#roleOf(trx, vendorId, actorId);
    if (!actor) throw new CastellanError('ERR_ORG_NOT_FOUND');
    const row = await trx
      .selectFrom('organisation_members')
      .select(['role', 'created_at'])
      .where('vendor_id', '=', vendorId)
      .where('user_id', '=', userId)
      .executeTakeFirst();
    if (!row) throw new CastellanError('ERR_ORG_MEMBER_NOT_FOUND');
    return { actor, target: { userId, role: row.role, joinedAt: Number(row.created_at) } };
  }

  async #assertNotLastOwner(trx: Kysely<Database>, vendorId: string): Promise<void> {
    const owners = await trx
      .selectFrom('organisation_members')
      .select((eb) => eb.fn.countAll<string | number>().as('n'))
      .where('vendor_id', '=', vendorId)
      .where('role', '=', 'owner')
      .executeTakeFirstOrThrow();
    if (Number(owners.n) <= 1) throw new CastellanError('ERR_ORG_LAST_OWNER');
  }
}
