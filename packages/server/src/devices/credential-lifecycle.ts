// Credential lifecycle (DEV-8, the standard's 6.3.3e): rotate a device's secret, revoke a certificate
// or every credential, disable/enable, decommission. Each change is stored first; then this process
// drops the affected live connection at once, and every process's sweep (devices.credentialSweepSeconds)
// re-checks the devices connected to it, so a connection held by another process goes within seconds
// too. Connect-time checks refuse the revoked credential from then on.
import type { Kysely } from 'kysely';
import type { Logger } from 'pino';
import type { AuditEvent } from '../audit/index.ts';
import { CastellanError } from '../errors/index.ts';
import type { Database } from '../store/index.ts';
import type { DeviceCertificate, DeviceCertificatesService } from './certificates/device-certificates-service.ts';
import type { DeviceEvents } from './device-events.ts';
import type { Device, DevicesService, DeviceStatus } from './devices-service.ts';

/** A live device connection as the broker reports it (identity attributes set at CONNECT). */
export interface LiveDeviceCredential {
  readonly deviceId: string;
  readonly vendorId: string | undefined;
  /** How it authenticated (a DeviceAuthMethod); other values are re-checked by status only. */
  readonly method: string | undefined;
  /** For 'certificate': the SHA-256 fingerprint of the client certificate. */
  readonly credential: string | undefined;
  /** When it authenticated (ms since the epoch). */
  readonly authenticatedAt: number;
}

/** Why a live connection must end: its status (0x98 Administrative action) or its credential (0x87). */
export type DropCause = 'status' | 'credential';

export interface CredentialLifecycleOptions {
  db: Kysely<Database>;
  devices: DevicesService;
  certificates: DeviceCertificatesService;
  events: DeviceEvents;
  /** Records an audit event without waiting (sweeps; routes audit their own actions). */
  audit: (event: AuditEvent) => void;
  log: Logger;
  /** Ends the device's live connection in this process; false when it is not connected here. */
  disconnect: (deviceId: string, cause: DropCause) => boolean;
  /** The device connections of this process. */
  connections: () => Iterable<LiveDeviceCredential>;
  /** Deletes the device's outstanding device tokens (cas_dvt_…); returns how many. */
  revokeTokens?: (deviceId: string) => Promise<number>;
  /** Scale mode: asks the other processes to re-check their connections of these devices now. */
  elsewhere?: (deviceIds: readonly string[]) => void;
  sweepIntervalMs: number;
  now?: () => number;
}

export interface StatusChange {
  readonly device: Device;
  readonly previous: DeviceStatus;
  readonly status: DeviceStatus;
  /** Live connections of this process that were dropped at once. */
  readonly disconnected: number;
}

export class CredentialLifecycle {
  readonly #db: Kysely<Database>;
  readonly #devices: DevicesService;
  readonly #certificates: DeviceCertificatesService;
  readonly #events: DeviceEvents;
  readonly #audit: (event: AuditEvent) => void;
  readonly #log: Logger;
  readonly #disconnect: (deviceId: string, cause: DropCause) => boolean;
  readonly #connections: () => Iterable<LiveDeviceCredential>;
  readonly #revokeTokens: ((deviceId: string) => Promise<number>) | undefined;
  readonly #elsewhere: ((deviceIds: readonly string[]) => void) | undefined;
  readonly #sweepIntervalMs: number;
  readonly #now: () => number;
  #timer: NodeJS.Timeout | undefined;
  #sweeping: Promise<number> | undefined;

  constructor(options: CredentialLifecycleOptions) {
    this.#db = options.db;
    this.#devices = options.devices;
    this.#certificates = options.certificates;
    this.#events = options.events;
    this.#audit = options.audit;
    this.#log = options.log;
    this.#disconnect = options.disconnect;
    this.#connections = options.connections;
    this.#revokeTokens = options.revokeTokens;
    this.#elsewhere = options.elsewhere;
    this.#sweepIntervalMs = options.sweepIntervalMs;
    this.#now = options.now ?? Date.now;
  }

  /** Starts the periodic sweep of this process's connections. */
  start(): void {
    if (this.#timer) return;
    this.#timer = setInterval(() => {
      this.sweep().catch((error: unknown) => this.#log.warn({ err: error }, 'devices: credential sweep failed'));
    }, this.#sweepIntervalMs);
    this.#timer.unref();
  }

  async close(): Promise<void> {
    clearInterval(this.#timer);
    this.#timer = undefined;
    await this.#sweeping?.catch(() => {});
  }

  // ---- operations (the routes authorise and audit) ------------------------------------------------

  /**
   * A new secret (shown once); the old one stops working, and a connection made with it is dropped.
   * The device's tokens end too: they may have been bought with the old secret (a token device answers
   * a fresh challenge).
   */
  async rotateSecret(device: Device): Promise<{ secret: string; tokens: number; disconnected: number }> {
    assertNotDecommissioned(device);
    const secret = await this.#devices.replaceSecret(device.id);
    if (secret === null) throw new CastellanError('ERR_DEVICE_DECOMMISSIONED');
    const now = this.#now();
    const tokens = (await this.#revokeTokens?.(device.id)) ?? 0;
    await this.#markState(device.id, { secret_changed_at: now, tokens_revoked_at: now });
    const disconnected = await this.sweep([device.id]);
    this.#change(device, 'credential.revoked', { credential: 'secret', reason: 'rotated' });
    return { secret, tokens, disconnected };
  }

  /** Revokes the device's certificate (or SM2 key) with this serial; a connection using it is dropped. */
  async revokeCertificate(
    device: Device,
    serial: string,
    reason: string,
  ): Promise<{ revoked: DeviceCertificate[]; disconnected: number }> {
    assertNotDecommissioned(device);
    const revoked = await this.#certificates.revoke(device.id, serial, reason);
    if (revoked.length === 0) throw new CastellanError('ERR_DEVICE_CERT_NOT_FOUND');
    const disconnected = await this.sweep([device.id]);
    for (const certificate of revoked) {
      this.#change(device, 'credential.revoked', {
        credential: certificate.kind === 'sm2-key' ? 'key' : 'certificate',
        serial: certificate.serial,
        reason,
      });
    }
    return { revoked, disconnected };
  }

  /**
   * Revokes every credential of the device: the secret is destroyed (a rotation issues a new one),
   * every certificate and key revoked, every device token deleted. The device stays, with its status.
   */
  async revokeAll(
    device: Device,
    reason: string,
  ): Promise<{ certificates: number; tokens: number; disconnected: number }> {
    assertNotDecommissioned(device);
    const counts = await this.#destroyCredentials(device, reason);
    const disconnected = await this.sweep([device.id]);
    this.#change(device, 'credential.revoked', { credential: 'all', reason });
    return { ...counts, disconnected };
  }

  /** Revokes a CA the vendor uploaded; devices connected with its certificates are dropped. */
  async revokeCa(vendorId: string, caId: string): Promise<{ deviceIds: string[]; disconnected: number }> {
    const result = await this.#certificates.revokeCa(vendorId, caId);
    if (!result) throw new CastellanError('ERR_DEVICE_CA_NOT_FOUND');
    const disconnected = await this.sweep(result.deviceIds);
    const at = this.#now();
    for (const deviceId of result.deviceIds) {
      this.#events.emit('change', {
        deviceId,
        vendorId,
        kind: 'credential.revoked',
        at,
        data: { credential: 'ca', caId },
      });
    }
    return { deviceIds: result.deviceIds, disconnected };
  }

  /** Disables (from active or quarantined) or enables (from disabled) a device. */
  async setEnabled(device: Device, enabled: boolean): Promise<StatusChange> {
    assertNotDecommissioned(device);
    if (enabled && device.status !== 'disabled') throw new CastellanError('ERR_DEVICE_NOT_DISABLED');
    const status: DeviceStatus = enabled ? 'active' : 'disabled';
    if (device.status === status) return { device, previous: device.status, status, disconnected: 0 };
    await this.#devices.setStatus(device.id, status);
    const disconnected = enabled ? 0 : await this.sweep([device.id]);
    this.#change(device, 'status.changed', { status, previous: device.status });
    return { device, previous: device.status, status, disconnected };
  }

  /**
   * Decommissions a device for good: status 'decommissioned' (no status change ever leaves it), every
   * credential destroyed, the live connection dropped. The row stays, so the ID is never issued again.
   */
  async decommission(device: Device, reason: string): Promise<StatusChange & { certificates: number }> {
    assertNotDecommissioned(device);
    await this.#devices.setStatus(device.id, 'decommissioned');
    const counts = await this.#destroyCredentials(device, reason);
    const disconnected = await this.sweep([device.id]);
    this.#change(device, 'status.changed', { status: 'decommissioned', previous: device.status });
    return {
      device,
      previous: device.status,
      status: 'decommissioned',
      disconnected,
      certificates: counts.certificates,
    };
  }

  async #destroyCredentials(device: Device, reason: string): Promise<{ certificates: number; tokens: number }> {
    const now = this.#now();
    await this.#devices.destroySecret(device.id);
    const certificates = await this.#certificates.revokeAll(device.id, reason);
    const tokens = (await this.#revokeTokens?.(device.id)) ?? 0;
    await this.#markState(device.id, { secret_changed_at: now, tokens_revoked_at: now });
    return { certificates, tokens };
  }

  async #markState(deviceId: string, times: { secret_changed_at?: number; tokens_revoked_at?: number }): Promise<void> {
    await this.#db
      .insertInto('device_credential_state')
      .values({
        device_id: deviceId,
        secret_changed_at: times.secret_changed_at ?? null,
        tokens_revoked_at: times.tokens_revoked_at ?? null,
      })
      .onConflict((oc) => oc.column('device_id').doUpdateSet(times))
      .execute();
  }

  #change(device: Device, kind: 'credential.revoked' | 'status.changed', data: Record<string, unknown>): void {
    this.#events.emit('change', { deviceId: device.id, vendorId: device.vendorId, kind, at: this.#now(), data });
  }

  // ---- enforcement on live connections ------------------------------------------------------------

  /**
   * Re-checks the device connections of this process (only those of `deviceIds` when given) against
   * the store: status still active, certificate still unrevoked, valid and from an active CA, secret
   * and device tokens not replaced or revoked since the connection authenticated. Drops the others;
   * returns how many. Concurrent full sweeps share one run.
   */
  sweep(deviceIds?: readonly string[]): Promise<number> {
    if (deviceIds) {
      // Scale mode: the other processes re-check their own connections of these devices (RES-2).
      this.#elsewhere?.(deviceIds);
      return this.#sweep(new Set(deviceIds));
    }
    this.#sweeping ??= this.#sweep(undefined).finally(() => {
      this.#sweeping = undefined;
    });
    return this.#sweeping;
  }

  /** Re-checks this process's connections of these devices only (asked by another process, RES-2). */
  recheck(deviceIds: readonly string[]): Promise<number> {
    return this.#sweep(new Set(deviceIds));
  }

  async #sweep(only: ReadonlySet<string> | undefined): Promise<number> {
    const live = [...this.#connections()].filter((c) => !only || only.has(c.deviceId));
    if (live.length === 0) return 0;
    const ids = [...new Set(live.map((c) => c.deviceId))];
    const statuses = new Map<string, DeviceStatus>();
    const states = new Map<string, { secret: number | null; tokens: number | null }>();
    for (let i = 0; i < ids.length; i += 500) {
      const chunk = ids.slice(i, i + 500);
      const [devices, rows] = await Promise.all([
        this.#db.selectFrom('devices').select(['id', 'status']).where('id', 'in', chunk).execute(),
        this.#db.selectFrom('device_credential_state').selectAll().where('device_id', 'in', chunk).execute(),
      ]);
      for (const d of devices) statuses.set(d.id, d.status);
      for (const r of rows) states.set(r.device_id, { secret: r.secret_changed_at, tokens: r.tokens_revoked_at });
    }
    const fingerprints = live.filter((c) => c.method === 'certificate' && c.credential).map((c) => c.credential!);
    const valid = fingerprints.length > 0 ? await this.#certificates.stillValid(fingerprints) : new Set<string>();
    let dropped = 0;
    for (const connection of live) {
      const verdict = this.#verdict(
        connection,
        statuses.get(connection.deviceId),
        states.get(connection.deviceId),
        valid,
      );
      if (verdict === null) continue;
      if (!this.#disconnect(connection.deviceId, verdict.cause)) continue;
      dropped++;
      this.#log.info({ deviceId: connection.deviceId, reason: verdict.reason }, 'devices: live connection dropped');
      this.#audit({
        actor: { type: 'system', id: 'credential-lifecycle' },
        tenant: connection.vendorId ?? null,
        type: 'device.connection-dropped',
        target: connection.deviceId,
        result: 'success',
        details: { reason: verdict.reason, method: connection.method ?? null },
      });
    }
    return dropped;
  }

  #verdict(
    connection: LiveDeviceCredential,
    status: DeviceStatus | undefined,
    state: { secret: number | null; tokens: number | null } | undefined,
    validCertificates: ReadonlySet<string>,
  ): { cause: DropCause; reason: string } | null {
    if (status === undefined) return { cause: 'status', reason: 'unknown-device' };
    if (status !== 'active') return { cause: 'status', reason: status };
    switch (connection.method) {
      case 'certificate':
        return connection.credential && validCertificates.has(connection.credential)
          ? null
          : { cause: 'credential', reason: 'certificate-revoked' };
      case 'secret':
        return (state?.secret ?? 0) > connection.authenticatedAt
          ? { cause: 'credential', reason: 'secret-replaced' }
          : null;
      case 'token':
        return (state?.tokens ?? 0) > connection.authenticatedAt
          ? { cause: 'credential', reason: 'tokens-revoked' }
          : null;
      default:
        return null;
    }
  }
}

function assertNotDecommissioned(device: Device): void {
  if (device.status === 'decommissioned') throw new CastellanError('ERR_DEVICE_DECOMMISSIONED');
}
