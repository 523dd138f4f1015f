// The guard (RATE-1, IDS-1, AUD-3): rate limits in every dimension, intrusion detection fed by
// signals from the listeners and subsystems, and the configured response to a detection: block the
// IP, quarantine the device, or alert only. Every detection is stored, audited, counted and pushed to
// the alert webhook.
import type { Kysely } from 'kysely';
import type { Logger } from 'pino';
import type { AuditEvent } from '../audit/index.ts';
import { newId } from '../lib/random-ids.ts';
import type { Database } from '../store/index.ts';
import type { IpBlocks } from './ip-blocks.ts';
import type { LimitOutcome, RateLimits } from './rate-limits.ts';

export interface GuardConfig {
  httpPerIpPerMinute: number;
  httpPerCredentialPerMinute: number;
  httpWritesPerCredentialPerMinute: number;
  mqttConnectsPerIpPerMinute: number;
  deviceMessagesPerSecond: number;
  deviceMessagesPerDay: number;
  productMessagesPerSecond: number;
  excessBeforeDisconnect: number;
  authFailuresPerIp: number;
  authFailuresPerDevice: number;
  authFailureWindowSeconds: number;
  invalidRequestsPerIp: number;
  deviceStateChangesPerMinute: number;
  takeoversPerHour: number;
  reconnectsPerHour: number;
  resourceThresholdPercent: number;
  ipBlockSeconds: number;
  ipResponse: 'block' | 'alert';
  deviceResponse: 'quarantine' | 'alert';
  alertWebhookUrl: string;
}

export type DetectionKind =
  | 'auth-failure-storm'
  | 'device-auth-failure-storm'
  | 'connection-flood'
  | 'message-flood'
  | 'invalid-request-burst'
  | 'state-flapping'
  | 'credential-shared'
  | 'connection-flapping'
  | 'resource-exhaustion'
  /** A device's posture differs from its golden values (DEV-10; raised by devices/posture). */
  | 'posture-deviation'
  /** Secure-channel frames or hellos refused for one device past the threshold (CHAN-3, CHAN-4). */
  | 'secure-channel-abuse';

export interface Alert {
  id: string;
  time: number;
  kind: DetectionKind;
  sourceIp: string | null;
  target: string;
  tenant: string | null;
  response: 'ip-blocked' | 'device-quarantined' | 'alert-only';
  details: Record<string, unknown>;
}

/** What the guard needs from other subsystems, through their services. */
export interface GuardDependencies {
  db: Kysely<Database>;
  log: Logger;
  limits: RateLimits;
  blocks: IpBlocks;
  record(event: AuditEvent): void;
  /** The vendor owning a device, so its alerts reach that tenant (devices subsystem). */
  tenantOfDevice(deviceId: string): Promise<string | null>;
  /** Quarantines a device (devices subsystem) and ends its live connection (gateway). */
  quarantineDevice(deviceId: string): Promise<{ tenant: string | null } | null>;
  now?: () => number;
}

const MINUTE = 60;
/** How much one detection about a device adds to its risk (capped at three of a kind). */
const RISK_WEIGHTS: Readonly<Record<string, number>> = {
  'credential-shared': 40,
  // Modified firmware or core files (DEV-10): as telling as a cloned credential.
  'posture-deviation': 40,
  'device-auth-failure-storm': 25,
  'message-flood': 20,
  'state-flapping': 15,
  'connection-flapping': 5,
};
const DAY = 86_400;

export class GuardService {
  readonly config: Readonly<GuardConfig>;
  readonly detections = new Map<DetectionKind, number>();
  /** Secure-channel hellos and frames refused, by reason (`castellan_secure_channel_refusals_total`). */
  readonly secureChannelRefusals = new Map<string, number>();
  readonly #d: GuardDependencies;
  readonly #now: () => number;
  /** Last audited breach per key: breaches are audited at most once a minute per key (sampling). */
  readonly #sampled = new Map<string, number>();

  constructor(config: GuardConfig, dependencies: GuardDependencies) {
    this.config = config;
    this.#d = dependencies;
    this.#now = dependencies.now ?? Date.now;
  }

  get blocks(): IpBlocks {
    return this.#d.blocks;
  }

  // ---- rate limits -------------------------------------------------------------------------------

  httpPerIp(ip: string): Promise<LimitOutcome> {
    return this.#d.limits.consume('http-ip', ip, this.config.httpPerIpPerMinute, MINUTE);
  }

  async httpPerCredential(credentialId: string, write: boolean): Promise<LimitOutcome> {
    const all = await this.#d.limits.consume(
      'http-credential',
      credentialId,
      this.config.httpPerCredentialPerMinute,
      MINUTE,
    );
    if (!all.allowed || !write) return all;
    return this.#d.limits.consume('http-write', credentialId, this.config.httpWritesPerCredentialPerMinute, MINUTE);
  }

  mqttConnect(ip: string): Promise<LimitOutcome> {
    return this.#d.limits.consume('mqtt-connect-ip', ip, this.config.mqttConnectsPerIpPerMinute, MINUTE);
  }

  /**
   * One device message against the device's per-second and per-day limits (from its product, else the
   * defaults) and the product's aggregate per-second limit. Returns whether it may pass and whether
   * the device has been refused so often this minute that it should be disconnected.
   */
  async deviceMessage(
    device: { id: string; productId: string; tenant: string | null },
    productLimits: { perSecond: number | null; perDay: number | null },
  ): Promise<{ allowed: boolean; disconnect: boolean }> {
    const perSecond = productLimits.perSecond ?? this.config.deviceMessagesPerSecond;
    const perDay = productLimits.perDay ?? this.config.deviceMessagesPerDay;
    const checks: Array<[string, string, number, number]> = [
      ['device-second', device.id, perSecond, 1],
      ['device-day', device.id, perDay, DAY],
      ['product-second', device.productId, this.config.productMessagesPerSecond, 1],
    ];
    for (const [dimension, key, points, window] of checks) {
      const outcome = await this.#d.limits.consume(dimension, key, points, window);
      if (outcome.allowed) continue;
      const excess = await this.#d.limits.consume(
        'device-excess',
        device.id,
        this.config.excessBeforeDisconnect,
        MINUTE,
      );
      this.#sampledAudit(`limit:${dimension}:${key}`, {
        actor: { type: 'device', id: device.id },
        tenant: device.tenant,
        type: 'guard.rate-limited',
        target: device.id,
        result: 'denied',
        details: { dimension, limit: points, windowSeconds: window, refusedThisMinute: excess.consumed },
      });
      // The first time the excess budget runs out this minute is a message flood.
      if (excess.consumed === this.config.excessBeforeDisconnect + 1) {
        await this.detect('message-flood', {
          target: device.id,
          tenant: device.tenant,
          ip: null,
          details: { dimension },
        });
      }
      return { allowed: false, disconnect: !excess.allowed };
    }
    return { allowed: true, disconnect: false };
  }

  /** Audits at most one event per key per minute (for refusals that can come in floods). */
  auditSampled(key: string, event: AuditEvent): void {
    this.#sampledAudit(key, event);
  }

  #sampledAudit(key: string, event: AuditEvent): void {
    const now = this.#now();
    const last = this.#sampled.get(key);
    if (last !== undefined && now - last < MINUTE * 1000) return;
    this.#sampled.set(key, now);
    if (this.#sampled.size > 100_000) this.#sampled.clear();
    this.#d.record(event);
  }

  // ---- intrusion detection signals ---------------------------------------------------------------

  /** A failed authentication (API credential, device secret, setup token). */
  async authFailure(ip: string, subject: { kind: 'device' | 'credential'; id: string } | null): Promise<void> {
    const window = this.config.authFailureWindowSeconds;
    const byIp = await this.#d.limits.consume('ids-auth-ip', ip, this.config.authFailuresPerIp, window);
    if (byIp.consumed === this.config.authFailuresPerIp + 1) {
      await this.detect('auth-failure-storm', {
        target: ip,
        tenant: null,
        ip,
        details: { failures: byIp.consumed, windowSeconds: window },
      });
    }
    if (subject?.kind === 'device') {
      const byDevice = await this.#d.limits.consume(
        'ids-auth-device',
        subject.id,
        this.config.authFailuresPerDevice,
        window,
      );
      if (byDevice.consumed === this.config.authFailuresPerDevice + 1) {
        await this.detect('device-auth-failure-storm', {
          target: subject.id,
          tenant: null,
          ip,
          details: { failures: byDevice.consumed, windowSeconds: window },
        });
      }
    }
  }

  /**
   * A secure-channel hello or frame was refused (CHAN-3, CHAN-4): replayed, reordered beyond the window,
   * stale, forged, for another device, or malformed. Counted by reason; the source IP counts towards
   * invalid-request-burst; past authFailuresPerDevice refusals for one device within the window, an
   * alert. Alert only: frames naming a device can come from anyone who knows its ID.
   */
  async secureChannelRefusal(about: {
    ip: string | null;
    deviceId: string | null;
    reason: string;
    transport: 'http' | 'mqtt';
  }): Promise<void> {
    this.secureChannelRefusals.set(about.reason, (this.secureChannelRefusals.get(about.reason) ?? 0) + 1);
    if (about.ip) await this.invalidRequest(about.ip, `secure-channel:${about.reason}`);
    if (!about.deviceId) return;
    const window = this.config.authFailureWindowSeconds;
    const byDevice = await this.#d.limits.consume(
      'ids-secure-channel',
      about.deviceId,
      this.config.authFailuresPerDevice,
      window,
    );
    if (byDevice.consumed === this.config.authFailuresPerDevice + 1) {
      await this.detect('secure-channel-abuse', {
        target: about.deviceId,
        tenant: null,
        ip: about.ip,
        details: { refusals: byDevice.consumed, windowSeconds: window, last: about.reason, transport: about.transport },
      });
    }
  }

  /** A connection attempt; returns false when the IP exceeded its connect rate (flood). */
  async connectAttempt(ip: string): Promise<boolean> {
    const outcome = await this.mqttConnect(ip);
    if (outcome.consumed === this.config.mqttConnectsPerIpPerMinute + 1) {
      await this.detect('connection-flood', {
        target: ip,
        tenant: null,
        ip,
        details: { perMinute: this.config.mqttConnectsPerIpPerMinute },
      });
    }
    return outcome.allowed;
  }

  /** A malformed or refused request (validation failure, protocol violation, ACL denial). */
  async invalidRequest(ip: string, what: string): Promise<void> {
    const outcome = await this.#d.limits.consume('ids-invalid-ip', ip, this.config.invalidRequestsPerIp, MINUTE);
    if (outcome.consumed === this.config.invalidRequestsPerIp + 1) {
      await this.detect('invalid-request-burst', { target: ip, tenant: null, ip, details: { last: what } });
    }
  }

  /** A device reported a state change (shadow/state topic). */
  async stateChange(deviceId: string, tenant: string | null): Promise<void> {
    const outcome = await this.#d.limits.consume(
      'ids-state',
      deviceId,
      this.config.deviceStateChangesPerMinute,
      MINUTE,
    );
    if (outcome.consumed === this.config.deviceStateChangesPerMinute + 1) {
      await this.detect('state-flapping', {
        target: deviceId,
        tenant,
        ip: null,
        details: { perMinute: this.config.deviceStateChangesPerMinute },
      });
    }
  }

  /**
   * A device reported its resource use (the events topic, type "resources"). Exhaustion is alerted,
   * at most once an hour per device and resource; it is not the device's fault, so no quarantine.
   */
  async resourceReport(deviceId: string, tenant: string | null, usage: Record<string, number>): Promise<void> {
    for (const [resource, percent] of Object.entries(usage)) {
      if (percent < this.config.resourceThresholdPercent) continue;
      const outcome = await this.#d.limits.consume('ids-resource', `${deviceId}:${resource}`, 1, 3600);
      if (outcome.consumed === 1) {
        await this.detect('resource-exhaustion', {
          target: deviceId,
          tenant,
          ip: null,
          details: { resource, percent, thresholdPercent: this.config.resourceThresholdPercent },
        });
      }
    }
  }

  /**
   * A device's client ID was taken over by a new connection. Now and then is a reconnect; often, from
   * changing addresses, is two devices sharing one credential (a clone) fighting for the session.
   */
  async sessionTakeover(
    deviceId: string,
    tenant: string | null,
    addresses: { previous: string; next: string },
  ): Promise<void> {
    const outcome = await this.#d.limits.consume('ids-takeover', deviceId, this.config.takeoversPerHour, 3600);
    if (outcome.consumed === this.config.takeoversPerHour + 1) {
      await this.detect('credential-shared', {
        target: deviceId,
        tenant,
        ip: addresses.next,
        details: { takeoversPerHour: outcome.consumed, previousAddressDiffers: addresses.previous !== addresses.next },
      });
    }
  }

  /**
   * A device's connection ended (any reason). Devices that reconnect all the time are worth a look (a
   * crash loop, a bad network, or a clone whose twin keeps taking the session over); it is not proof
   * of wrongdoing, so this only alerts, once per window.
   */
  async connectionChurn(deviceId: string, tenant: string | null): Promise<void> {
    const outcome = await this.#d.limits.consume('ids-churn', deviceId, this.config.reconnectsPerHour, 3600);
    if (outcome.consumed === this.config.reconnectsPerHour + 1) {
      await this.detect('connection-flapping', {
        target: deviceId,
        tenant,
        ip: null,
        details: { disconnectsPerHour: outcome.consumed },
      });
    }
  }

  /**
   * Device risk (IDS-2, behaviour and credential hygiene; posture joins with the devices issue): a
   * 0–100 score from the device's recent detections, each weighted by what it suggests.
   */
  async deviceRisk(
    deviceId: string,
    status: string,
  ): Promise<{ score: number; factors: { kind: string; count: number; weight: number }[] }> {
    const since = this.#now() - 7 * 86_400_000;
    const rows = await this.#d.db
      .selectFrom('guard_alerts')
      .select(['kind'])
      .where('target', '=', deviceId)
      .where('time', '>=', since)
      .execute();
    const counts = new Map<string, number>();
    for (const r of rows) counts.set(r.kind, (counts.get(r.kind) ?? 0) + 1);
    const factors = [...counts].map(([kind, count]) => ({ kind, count, weight: RISK_WEIGHTS[kind] ?? 10 }));
    if (status === 'quarantined') factors.push({ kind: 'quarantined', count: 1, weight: 20 });
    const score = Math.min(
      100,
      factors.reduce((sum, f) => sum + f.weight * Math.min(f.count, 3), 0),
    );
    return { score, factors };
  }

  // ---- detections --------------------------------------------------------------------------------

  /** Records a detection: alert row, audit entry, webhook, metrics, and the configured response. */
  async detect(
    kind: DetectionKind,
    about: { target: string; tenant: string | null; ip: string | null; details: Record<string, unknown> },
  ): Promise<Alert> {
    // Only detections that need the device's own secret may quarantine it. Failed logins against a
    // device ID are anyone's doing (IDs are not secret): quarantining on them would hand attackers a
    // switch to turn devices off, so they alert, and the guessing IP is blocked instead.
    const aboutDevice = kind === 'message-flood' || kind === 'state-flapping' || kind === 'credential-shared';
    let response: Alert['response'] = 'alert-only';
    let tenant = about.tenant;
    if (tenant === null && (aboutDevice || kind === 'device-auth-failure-storm' || kind === 'resource-exhaustion')) {
      tenant = await this.#d.tenantOfDevice(about.target);
    }
    if (kind === 'connection-flapping' || kind === 'secure-channel-abuse') {
      tenant ??= await this.#d.tenantOfDevice(about.target);
    }
    if (kind === 'resource-exhaustion' || kind === 'connection-flapping') {
      // Reported by the device itself, or possibly the network's fault: worth an alert, not a punishment.
    } else if (aboutDevice && this.config.deviceResponse === 'quarantine') {
      const quarantined = await this.#d.quarantineDevice(about.target);
      if (quarantined) {
        response = 'device-quarantined';
        tenant ??= quarantined.tenant;
      }
    } else if (!aboutDevice && about.ip && this.config.ipResponse === 'block') {
      await this.#d.blocks.block(about.ip, this.config.ipBlockSeconds);
      response = 'ip-blocked';
    }
    const alert: Alert = {
      id: newId('alr'),
      time: this.#now(),
      kind,
      sourceIp: about.ip,
      target: about.target,
      tenant,
      response,
      details: about.details,
    };
    this.detections.set(kind, (this.detections.get(kind) ?? 0) + 1);
    await this.#d.db
      .insertInto('guard_alerts')
      .values({
        id: alert.id,
        time: alert.time,
        kind,
        source_ip: alert.sourceIp,
        target: alert.target,
        tenant: alert.tenant,
        response,
        details: JSON.stringify(alert.details),
      })
      .execute();
    this.#d.record({
      actor: { type: 'system', id: 'guard' },
      tenant,
      type: `guard.${kind}`,
      target: alert.target,
      sourceIp: alert.sourceIp,
      result: 'denied',
      details: { alertId: alert.id, response, ...alert.details },
    });
    this.#d.log.warn({ alertId: alert.id, kind, target: alert.target, response }, 'guard: detection');
    if (this.config.alertWebhookUrl) this.#push(alert);
    return alert;
  }

  #push(alert: Alert): void {
    fetch(this.config.alertWebhookUrl, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ alert }),
      signal: AbortSignal.timeout(10_000),
    }).then(
      (res) => {
        if (!res.ok) this.#d.log.warn({ status: res.status }, 'guard: alert webhook refused');
      },
      (error: unknown) => this.#d.log.warn({ err: error }, 'guard: alert webhook unreachable'),
    );
  }

  async listAlerts(filter: { tenant?: string; limit: number; beforeTime?: number }): Promise<Alert[]> {
    let query = this.#d.db.selectFrom('guard_alerts').selectAll();
    if (filter.tenant !== undefined) query = query.where('tenant', '=', filter.tenant);
    if (filter.beforeTime !== undefined) query = query.where('time', '<', filter.beforeTime);
    const rows = await query.orderBy('time', 'desc').orderBy('id').limit(filter.limit).execute();
    return rows.map((r) => ({
      id: r.id,
      time: r.time,
      kind: r.kind as DetectionKind,
      sourceIp: r.source_ip,
      target: r.target,
      tenant: r.tenant,
      response: r.response as Alert['response'],
      details: JSON.parse(r.details) as Record<string, unknown>,
    }));
  }

  /** Alerts keep source IPs only for the security-retention period (PRIV-4). */
  async purgeAlertIps(olderThan: number): Promise<number> {
    const result = await this.#d.db
      .updateTable('guard_alerts')
      .set({ source_ip: null })
      .where('time', '<', olderThan)
      .where('source_ip', 'is not', null)
      .executeTakeFirst();
    return Number(result.numUpdatedRows);
  }
}
