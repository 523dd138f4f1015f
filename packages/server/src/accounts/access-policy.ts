// The one authorisation policy (deny by default): every route names an action and the resource's
// owner; anything not listed here is denied. Object-level refusals surface as "not found" so that IDs
// of other tenants cannot be probed (ORG-3).
//
// Who may do what:
//   staff      by role (OPS-2): superadmin everything staff can do; security keys, blocks, releases,
//              audit; auditor reads audit and alerts; support vendors and access keys for them.
//   operators  their own tenant only, by the scopes on the access key (ORG-2).
//   people     a vendor organisation's resources by their role in it (ORG-1); key material (device
//              secrets shown at creation, access keys) is for owners only.
import { CastellanError } from '../errors/index.ts';
import { type OperatorScope, type OrgRole, type Principal, roleAtLeast, type StaffRole } from './principal.ts';

export type Action =
  | 'vendor.create'
  | 'vendor.list'
  | 'vendor.access-key.issue'
  | 'staff.manage'
  | 'org.read'
  | 'org.members.manage'
  | 'org.access-keys.manage'
  | 'product.create'
  | 'product.list'
  | 'product.read'
  | 'device.create'
  | 'device.list'
  | 'device.read'
  | 'device.command'
  | 'telemetry.read'
  | 'audit.read'
  | 'audit.read-all'
  | 'audit.checkpoint'
  | 'guard.alerts.read'
  | 'guard.alerts.read-all'
  | 'guard.blocks.manage'
  | 'device.release'
  | 'keys.manage'
  | 'webhook.read'
  | 'webhook.manage'
  | 'posture.golden.manage'
  | 'device.credentials.manage'
  | 'product.update'
  | 'product.hardware-ids.manage'
  | 'product.secret.issue';

export interface ResourceScope {
  /** The vendor (tenant) that owns the resource. */
  readonly vendorId?: string | undefined;
}

type Rule = (principal: Principal, scope: ResourceScope) => boolean;

const staff =
  (...roles: StaffRole[]): Rule =>
  (p) =>
    p.kind === 'admin' && p.roles.some((role) => role === 'superadmin' || roles.includes(role));

/** A tenant's resource: its operators with `scope`, its members with at least `role`. */
const tenant =
  (scope: OperatorScope | null, role: OrgRole): Rule =>
  (p, s) => {
    if (s.vendorId === undefined) return false;
    if (p.kind === 'operator') return scope !== null && p.id === s.vendorId && p.scopes.includes(scope);
    if (p.kind === 'user')
      return Object.hasOwn(p.memberships, s.vendorId) && roleAtLeast(p.memberships[s.vendorId], role);
    return false;
  };

const either =
  (...rules: Rule[]): Rule =>
  (p, s) =>
    rules.some((rule) => rule(p, s));

const RULES: Readonly<Record<Action, Rule>> = {
  'vendor.create': staff('support'),
  'vendor.list': staff('support', 'auditor', 'security'),
  'vendor.access-key.issue': staff('support'),
  'staff.manage': staff(),
  'org.read': tenant(null, 'viewer'),
  'org.members.manage': tenant(null, 'admin'),
  // Access keys are key material (ORG-1): owners only; operators never mint keys.
  'org.access-keys.manage': tenant(null, 'owner'),
  'product.create': tenant('products:write', 'admin'),
  'product.list': tenant('products:read', 'viewer'),
  'product.read': tenant('products:read', 'viewer'),
  // The response carries the new devices' secrets (shown once): owners only among people.
  'device.create': tenant('devices:write', 'owner'),
  'device.list': tenant('devices:read', 'viewer'),
  'device.read': tenant('devices:read', 'viewer'),
  // Commands and desired state on the tenant's devices (BIND-2's vendor side; bindings/device-access.ts).
  'device.command': tenant('devices:write', 'admin'),
  'telemetry.read': tenant('telemetry:read', 'viewer'),
  'audit.read': either(staff('auditor', 'security'), tenant('audit:read', 'admin')),
  'audit.read-all': staff('auditor', 'security'),
  'audit.checkpoint': staff('auditor', 'security'),
  'guard.alerts.read': either(staff('auditor', 'security'), tenant('alerts:read', 'admin')),
  'guard.alerts.read-all': staff('auditor', 'security'),
  'guard.blocks.manage': staff('security'),
  'device.release': either(staff('security'), tenant('devices:release', 'admin')),
  'keys.manage': staff('security'),
  // Webhooks (issue 7): deliveries carry device data, so reading needs devices:read; endpoints send the
  // tenant's device data elsewhere and their secret is shown once, so managing them needs an admin.
  'webhook.read': tenant('devices:read', 'admin'),
  'webhook.manage': tenant('devices:write', 'admin'),
  // Golden firmware values (DEV-10) are product definitions.
  'posture.golden.manage': tenant('products:write', 'admin'),
  // Device certificates, vendor CAs, secret rotation, revocation, disable and decommission (DEV-5, DEV-8): a
  // rotated secret is shown once, so owners only among people, as for issuing devices.
  'device.credentials.manage': tenant('devices:write', 'owner'),
  // Products v2 (DEV-2): schema, limits, retention, level and modes; registered hardware IDs (DEV-4). The
  // product secret is shown once and lets listed hardware register: owners only among people.
  'product.update': tenant('products:write', 'admin'),
  'product.hardware-ids.manage': tenant('products:write', 'admin'),
  'product.secret.issue': tenant('products:write', 'owner'),
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
