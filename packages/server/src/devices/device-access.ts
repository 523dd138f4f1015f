// Who may do what with one device (BIND-2), the consumer side of the access policy. People reach a
// device through a binding (the owner) or a share (a role, optionally until an expiry); vendors reach
// their own fleet through the tenant rules of accounts/access-policy.ts. Deny by default: an action
// not in a role's list is refused, and a refusal looks exactly like a missing device.
import type { Principal } from '../accounts/index.ts';
import type { Device } from './devices-service.ts';
import type { DevicePresence } from './presence-events.ts';

/** A person's relation to a device, strongest first. */
export const DEVICE_ROLES = ['owner', 'admin', 'member', 'guest'] as const;
export type DeviceRole = (typeof DEVICE_ROLES)[number];

export type DeviceAction =
  /** Read the device, its presence, shadow, telemetry and events; receive push. */
  | 'device.view'
  /** Send ordinary commands and set desired state. */
  | 'device.control'
  /** Reboot, factory reset, wipe (DEV-9). */
  | 'device.admin-command'
  /** Create, list and revoke shares. */
  | 'device.share'
  /** Unbind (BIND-5). */
  | 'device.unbind'
  /** Issue and revoke smart-lock passcodes (LOCK-1; also needs a recent step-up). */
  | 'lock.passcode';

const ALLOWED: Readonly<Record<DeviceRole, ReadonlySet<DeviceAction>>> = {
  owner: new Set([
    'device.view',
    'device.control',
    'device.admin-command',
    'device.share',
    'device.unbind',
    'lock.passcode',
  ]),
  admin: new Set(['device.view', 'device.control', 'device.share', 'lock.passcode']),
  member: new Set(['device.view', 'device.control']),
  guest: new Set(['device.view']),
};

/** The role matrix: true when `role` may perform `action`. */
export function deviceRoleAllows(role: DeviceRole | null, action: DeviceAction): boolean {
  return role !== null && ALLOWED[role].has(action);
}

/** Roles an owner or admin may grant: never owner (ownership moves only by unbind and bind). */
export function mayGrant(granter: DeviceRole, role: DeviceRole): boolean {
  if (role === 'owner') return false;
  if (granter === 'owner') return true;
  return granter === 'admin' && (role === 'member' || role === 'guest');
}

/** A device as shown to someone who may view it, with its presence. */
export interface DeviceView {
  readonly device: Device;
  readonly presence: DevicePresence;
}

/**
 * Implemented by the bindings service. Every device route, the push channel and the command path ask
 * it; nothing reads the binding tables directly.
 */
export interface DeviceAccess {
  /** The person's current role on the device; null when none (an expired share is none). */
  roleOf(userId: string, deviceId: string): Promise<DeviceRole | null>;
  /**
   * The device when `principal` may perform `action` on it: a person by role, a vendor's operator or
   * member by the tenant rules. Otherwise throws ERR_DEVICE_NOT_FOUND (the same as a missing device).
   */
  authorize(principal: Principal | undefined, deviceId: string, action: DeviceAction): Promise<Device>;
  /** authorize() for 'device.view', with the device's presence read in the same round trip. */
  authorizeView(principal: Principal | undefined, deviceId: string): Promise<DeviceView>;
  /** IDs of the devices the person may view (owned and currently shared). */
  devicesOf(userId: string): Promise<string[]>;
  /**
   * Registers work to run when a device is unbound (BIND-5): each subsystem part that keeps data
   * about the device for its owner deletes it here (telemetry, shares, passcodes, shadow, schedules).
   * Wipers run before the unbind is reported done; one that fails fails the unbind.
   */
  onUnbind(wiper: (deviceId: string, previousOwner: string) => Promise<void>): void;
}
