// Who is calling. Every authenticated request carries exactly one principal; the access policy
// (access-policy.ts) decides what it may do. Kinds follow the Gizwits paper's user types (001,
// 2.2.1.2): platform staff, operators (business systems of a vendor), and people (consumers and
// developers, who act for vendor organisations through memberships).

/** Least-privilege roles of platform staff (OPS-2). */
export const STAFF_ROLES = ['superadmin', 'security', 'auditor', 'support'] as const;
export type StaffRole = (typeof STAFF_ROLES)[number];

/** Roles in a vendor organisation (ORG-1), strongest first. */
export const ORG_ROLES = ['owner', 'admin', 'viewer'] as const;
export type OrgRole = (typeof ORG_ROLES)[number];

/** What an operator access key may do (ORG-2). */
export const OPERATOR_SCOPES = [
  'products:read',
  'products:write',
  'devices:read',
  'devices:write',
  'telemetry:read',
  'audit:read',
  'alerts:read',
  'devices:release',
] as const;
export type OperatorScope = (typeof OPERATOR_SCOPES)[number];

export type UserKind = 'consumer' | 'developer';

export interface StaffPrincipal {
  readonly kind: 'admin';
  /** Staff member (adm_…). */
  readonly id: string;
  /** API credential (key_…) or session (ses_…) that authenticated the request. */
  readonly credentialId: string;
  /** Empty until the staff member has a confirmed second factor (OPS-2). */
  readonly roles: readonly StaffRole[];
  readonly via: 'credential' | 'session';
  readonly secondFactor: boolean;
}

export interface OperatorPrincipal {
  readonly kind: 'operator';
  /** The vendor (tenant) the key belongs to: an operator sees only this tenant. */
  readonly id: string;
  /** The access key ID (opk_…). */
  readonly credentialId: string;
  readonly scopes: readonly OperatorScope[];
}

export interface UserPrincipal {
  readonly kind: 'user';
  /** The person (usr_…). */
  readonly id: string;
  /** The session (ses_…). */
  readonly credentialId: string;
  readonly userKind: UserKind;
  /** Last full authentication (password, passkey, OIDC) or step-up, for sensitive operations. */
  readonly authenticatedAt: number;
  /** Vendor organisations this person belongs to, and the role in each. */
  readonly memberships: Readonly<Record<string, OrgRole>>;
}

export type Principal = StaffPrincipal | OperatorPrincipal | UserPrincipal;
export type PrincipalKind = Principal['kind'];

/** The tenant a principal acts in by default: an operator's own vendor; none for people and staff. */
export function defaultTenant(principal: Principal): string | undefined {
  return principal.kind === 'operator' ? principal.id : undefined;
}

/** True when `role` is at least `required` (owner > admin > viewer). */
export function roleAtLeast(role: OrgRole | undefined, required: OrgRole): boolean {
  if (!role) return false;
  return ORG_ROLES.indexOf(role) <= ORG_ROLES.indexOf(required);
}
