// Resolves the principal behind a request (SESS-2: every authenticated request is checked on the
// server). Three ways in, told apart by the credential's form:
//   Authorization: Bearer cas_adm_…              staff API credential (automation, the CLI)
//   Authorization: Bearer cas_ses_… or cookie    session of a person or a staff member
//   Authorization: CASTELLAN-HMAC-SHA256 …       signed request of an operator access key (ORG-2)
// Every failure is the same null (ERR_AUTH_INVALID): callers learn nothing about which check failed.
import type { FastifyRequest } from 'fastify';
import type { Kysely } from 'kysely';
import { hashToken } from '../lib/random-ids.ts';
import type { Database } from '../store/index.ts';
import type { OperatorPrincipal, OrgRole, Principal, StaffPrincipal, StaffRole } from './principal.ts';
import { sessionTokenOf } from './session-delivery.ts';
import type { SessionStore } from './session-store.ts';

export const SIGNATURE_SCHEME = 'CASTELLAN-HMAC-SHA256';

/** Verifies signed operator requests (operator-request-signing.ts). */
export interface SignedRequestVerifier {
  verify(request: FastifyRequest): Promise<OperatorPrincipal | null>;
}

export interface RequestAuthenticatorOptions {
  db: Kysely<Database>;
  sessions: SessionStore;
  signatures?: SignedRequestVerifier;
}

/** Parses the JSON list of staff roles stored on an administrator. */
export function parseRoles(raw: string): StaffRole[] {
  try {
    const roles = JSON.parse(raw) as unknown;
    return Array.isArray(roles) ? (roles.filter((r) => typeof r === 'string') as StaffRole[]) : [];
  } catch {
    return [];
  }
}

export class RequestAuthenticator {
  readonly #db: Kysely<Database>;
  readonly #sessions: SessionStore;
  #signatures: SignedRequestVerifier | undefined;

  constructor(options: RequestAuthenticatorOptions) {
    this.#db = options.db;
    this.#sessions = options.sessions;
    this.#signatures = options.signatures;
  }

  set signatures(verifier: SignedRequestVerifier) {
    this.#signatures = verifier;
  }

  /** True when the request carries any credential at all (for 401 REQUIRED vs INVALID). */
  hasCredential(request: FastifyRequest): boolean {
    return request.headers.authorization !== undefined || sessionTokenOf(request) !== undefined;
  }

  async resolve(request: FastifyRequest): Promise<Principal | null> {
    const header = request.headers.authorization;
    if (header?.startsWith(`${SIGNATURE_SCHEME} `)) return (await this.#signatures?.verify(request)) ?? null;
    if (header?.startsWith('Bearer cas_adm_')) return this.#staffCredential(header.slice('Bearer '.length));
    if (header !== undefined && !header.startsWith('Bearer cas_ses_')) return null;
    const token = sessionTokenOf(request);
    if (!token) return null;
    return this.#session(token, request.ip);
  }

  /**
   * A session and its principal in one round trip: the session row joined to the person and their
   * memberships (one row per membership; a person without any has one row of NULLs) or to the staff
   * member. The session checks are the store's (accept()), on a row read at every request (SESS-3).
   */
  async #session(token: string, ip: string): Promise<Principal | null> {
    const lookup = this.#sessions.lookup(token);
    if (!lookup) return null;
    const rows = await lookup
      .leftJoin('users', (join) =>
        join.onRef('users.id', '=', 'sessions.principal_id').on('sessions.principal_kind', '=', 'user'),
      )
      .leftJoin('organisation_members', 'organisation_members.user_id', 'users.id')
      .leftJoin('admins', (join) =>
        join.onRef('admins.id', '=', 'sessions.principal_id').on('sessions.principal_kind', '=', 'staff'),
      )
      .selectAll('sessions')
      .select([
        'users.kind as user_kind',
        'users.status as user_status',
        'organisation_members.vendor_id as member_vendor_id',
        'organisation_members.role as member_role',
        'admins.roles as admin_roles',
        'admins.disabled_at as admin_disabled_at',
      ])
      .execute();
    const first = rows[0];
    if (!first) return null;
    const session = await this.#sessions.accept(first, ip);
    // A session between password and second factor authenticates nothing but the MFA step.
    if (!session || session.level !== 'full') return null;
    if (session.principalKind === 'staff') {
      if (first.admin_roles === null) return null;
      return staffPrincipal(session.principalId, session.id, 'session', true, {
        roles: first.admin_roles,
        disabled_at: first.admin_disabled_at,
      });
    }
    if (session.principalKind !== 'user' || first.user_status !== 'active' || first.user_kind === null) return null;
    const memberships: Record<string, OrgRole> = {};
    for (const m of rows) {
      if (m.member_vendor_id !== null && m.member_role !== null) memberships[m.member_vendor_id] = m.member_role;
    }
    return {
      kind: 'user',
      id: session.principalId,
      credentialId: session.id,
      userKind: first.user_kind,
      authenticatedAt: session.authenticatedAt,
      memberships,
    };
  }

  async #staffCredential(token: string): Promise<StaffPrincipal | null> {
    if (token.length < 16 || token.length > 256) return null;
    const row = await this.#db
      .selectFrom('api_credentials')
      .select(['id', 'principal_id'])
      .where('token_hash', '=', hashToken(token))
      .where('kind', '=', 'admin')
      .where('revoked_at', 'is', null)
      .where((eb) => eb.or([eb('expires_at', 'is', null), eb('expires_at', '>', Date.now())]))
      .executeTakeFirst();
    if (!row) return null;
    const mfa = await this.#db
      .selectFrom('mfa_totp')
      .select('confirmed_at')
      .where('principal_id', '=', row.principal_id)
      .executeTakeFirst();
    return this.#staff(row.principal_id, row.id, 'credential', (mfa?.confirmed_at ?? null) !== null);
  }

  async #staff(
    adminId: string,
    credentialId: string,
    via: StaffPrincipal['via'],
    secondFactor: boolean,
  ): Promise<StaffPrincipal | null> {
    const admin = await this.#db
      .selectFrom('admins')
      .select(['roles', 'disabled_at'])
      .where('id', '=', adminId)
      .executeTakeFirst();
    return admin ? staffPrincipal(adminId, credentialId, via, secondFactor, admin) : null;
  }
}

function staffPrincipal(
  adminId: string,
  credentialId: string,
  via: StaffPrincipal['via'],
  secondFactor: boolean,
  admin: { roles: string; disabled_at: number | null },
): StaffPrincipal | null {
  if (admin.disabled_at !== null) return null;
  // OPS-2: until the staff member has a confirmed second factor, the credential can do nothing but
  // confirm one (roles are withheld, so the policy denies everything else).
  return {
    kind: 'admin',
    id: adminId,
    credentialId,
    via,
    roles: secondFactor ? parseRoles(admin.roles) : [],
    secondFactor,
  };
}
