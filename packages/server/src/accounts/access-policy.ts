// The one authorisation policy: every route names an action and the resource's owner; anything not
// listed here is denied. Object-level refusals surface as "not found" so that IDs of other tenants
// cannot be probed.
import { CastellanError } from '../errors/index.ts';
import type { Principal } from './accounts-service.ts';

export type Action =
  | 'vendor.create'
  | 'vendor.list'
  | 'vendor-credential.create'
  | 'product.create'
  | 'product.list'
  | 'product.read'
  | 'device.create'
  | 'device.list'
  | 'device.read'
  | 'telemetry.read'
  | 'audit.read'
  | 'audit.read-all'
  | 'audit.checkpoint'
  | 'guard.alerts.read'
  | 'guard.alerts.read-all'
  | 'guard.blocks.manage'
  | 'device.release'
  | 'keys.manage';

export interface ResourceScope {
  /** The vendor (tenant) that owns the resource. */
  readonly vendorId?: string;
}

type Rule = (principal: Principal, scope: ResourceScope) => boolean;

const isAdmin: Rule = (p) => p.kind === 'admin';
const isOwningVendor: Rule = (p, s) => p.kind === 'vendor' && s.vendorId !== undefined && p.id === s.vendorId;

const RULES: Readonly<Record<Action, Rule>> = {
  'vendor.create': isAdmin,
  'vendor.list': isAdmin,
  'vendor-credential.create': isAdmin,
  'product.create': isOwningVendor,
  'product.list': isOwningVendor,
  'product.read': isOwningVendor,
  'device.create': isOwningVendor,
  'device.list': isOwningVendor,
  'device.read': isOwningVendor,
  'telemetry.read': isOwningVendor,
  // Vendors read their own tenant's entries; administrators read everything, source IPs included.
  'audit.read': (p, s) => isAdmin(p, s) || isOwningVendor(p, s),
  'audit.read-all': isAdmin,
  'audit.checkpoint': isAdmin,
  'guard.alerts.read': (p, s) => isAdmin(p, s) || isOwningVendor(p, s),
  'guard.alerts.read-all': isAdmin,
  'guard.blocks.manage': isAdmin,
  'device.release': (p, s) => isAdmin(p, s) || isOwningVendor(p, s),
  // Key lifecycle is platform security staff's work (the accounts issue narrows it to a role).
  'keys.manage': isAdmin,
};

export function can(principal: Principal | undefined, action: Action, scope: ResourceScope = {}): boolean {
  if (!principal) return false;
  const rule = Object.hasOwn(RULES, action) ? RULES[action] : undefined;
  return rule ? rule(principal, scope) : false;
}

/** Throws ERR_AUTH_FORBIDDEN unless allowed (for actions whose target is not a hidden object). */
export function assertCan(principal: Principal | undefined, action: Action, scope: ResourceScope = {}): void {
  if (!can(principal, action, scope)) throw new CastellanError('ERR_AUTH_FORBIDDEN');
}
