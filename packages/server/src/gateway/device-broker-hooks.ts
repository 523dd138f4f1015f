// Binds the broker's hooks to devices: a device authenticates with its own ID and secret, may use only
// its own `devices/{id}/` topics (CHAN-6) and read its tenant's `$SYS/tenants/{vendorId}/` subtree, is
// held to its product's report-rate limits (RATE-1), and its telemetry is stored durably before QoS 1 is
// acked. Connects, disconnects, takeovers, failures and refusals feed the audit log (AUD-1), intrusion
// detection (IDS-1) and device presence.
import { isDeviceId, isWithinDeviceNamespace, parseDeviceTopic } from '@castellan/protocol';
import type { Logger } from 'pino';
import type { AuditEvent } from '../audit/index.ts';
import type { DeviceEvents } from '../devices/device-events.ts';
import type { Device, DeviceAuthMethod, DevicesService } from '../devices/devices-service.ts';
import { checkTelemetryPayload } from '../devices/telemetry-payload.ts';
import { TelemetryQueueFullError } from '../devices/telemetry-writer.ts';
import { type GuardService, normaliseIp } from '../guard/index.ts';
import { type AuthenticateResult, type BrokerHooks, type ClientIdentity, PublishRefusedError } from './mqtt/index.ts';
import { isTopicLevel, sysTenantPrefix } from './sys-topics-publisher.ts';

const DEVICE_PUBLISH_CHANNELS = new Set(['telemetry', 'state', 'events', 'acks']);

/** A device as the broker knows it after CONNECT. */
export interface ConnectedDevice {
  readonly id: string;
  readonly vendorId: string;
  readonly productId: string;
}

/**
 * Handles an accepted message on one device channel before QoS 1 is acknowledged; may refuse it by
 * throwing PublishRefusedError (e.g. `payload-invalid`). Registered by the devices subsystem's parts
 * (shadow for `state`, commands for `acks`, posture for `events`).
 */
export type DeviceChannelHandler = (
  device: ConnectedDevice,
  message: { rest: readonly string[]; payload: Buffer; receivedAt: number },
) => Promise<void> | void;

export interface DeviceBrokerHooksOptions {
  devices: DevicesService;
  guard: GuardService;
  /** Records an audit event without waiting (the connect path stays fast). */
  audit: (event: AuditEvent) => void;
  log: Logger;
  /** Accepted messages are emitted here after their handler (push, webhooks). */
  events?: DeviceEvents;
  /** Per-channel handlers, run in order; telemetry is stored by the hooks themselves. */
  channels?: Partial<Record<'telemetry' | 'state' | 'events' | 'acks', DeviceChannelHandler[]>>;
  /** Verifies TLS client certificates (DEV-5 mutual TLS); without it a presented certificate is ignored. */
  certificates?: {
    authenticate(
      der: Uint8Array,
      claimedDeviceId: string | undefined,
    ): Promise<{ ok: true; device: Device; certificate: { fingerprint: string } } | { ok: false; reason: string }>;
  };
  /** Verifies a device token (`cas_dvt_…`, DEV-6) presented as the MQTT password; null refuses. */
  deviceTokens?: { verify(deviceId: string, token: string): Promise<Device | null> };
}

/** Device tokens start with this; a password that does not is a device secret. */
const DEVICE_TOKEN_PREFIX = Buffer.from('cas_dvt_');

const RESOURCES = ['cpuPercent', 'memoryPercent', 'storagePercent'] as const;

/** `{"type":"resources","cpuPercent":…,"memoryPercent":…,"storagePercent":…}` on the events topic. */
function resourceUsage(payload: Buffer): Record<string, number> | null {
  if (payload.length > 4096) return null;
  let value: unknown;
  try {
    value = JSON.parse(payload.toString('utf8'));
  } catch {
    return null;
  }
  if (typeof value !== 'object' || value === null || (value as { type?: unknown }).type !== 'resources') return null;
  const usage: Record<string, number> = {};
  for (const key of RESOURCES) {
    const v = (value as Record<string, unknown>)[key];
    if (typeof v === 'number' && Number.isFinite(v) && v >= 0 && v <= 100) usage[key.replace('Percent', '')] = v;
  }
  return usage;
}

/** A device's tenant, when it is usable as a `$SYS` topic level. */
function tenantOf(identity: ClientIdentity): string | null {
  const vendorId = identity.attributes.vendorId;
  return vendorId !== undefined && isTopicLevel(vendorId) ? vendorId : null;
}

/**
 * A connected device's identity. Its attributes are what the credential sweep re-checks (DEV-8): how
 * and when the device authenticated, and with which credential; every listener builds it here.
 */
export function deviceIdentity(
  device: Pick<Device, 'id' | 'vendorId' | 'productId'>,
  method: DeviceAuthMethod,
  authenticatedAt: number,
  extra: Readonly<Record<string, string>> = {},
): ClientIdentity {
  return {
    principalId: device.id,
    kind: 'device',
    clientId: device.id,
    attributes: {
      ...extra,
      vendorId: device.vendorId,
      productId: device.productId,
      authMethod: method,
      authenticatedAt: String(authenticatedAt),
    },
  };
}

export function deviceBrokerHooks({
  devices,
  guard,
  audit,
  log,
  events,
  channels = {},
  certificates,
  deviceTokens,
}: DeviceBrokerHooksOptions): BrokerHooks {
  const refuse = (ip: string, deviceId: string | undefined, reason: string, extra: Record<string, unknown> = {}) => {
    const known = deviceId !== undefined && isDeviceId(deviceId);
    audit({
      actor: { type: 'device', id: known ? deviceId : 'unknown' },
      type: 'device.connect',
      target: known ? deviceId : null,
      sourceIp: ip,
      result: 'failure',
      details: { reason, ...extra },
    });
  };

  /** A device that proved who it is: the admission checks (status, auth modes, lifecycle) decide. */
  const admitted = async (
    device: Device,
    method: DeviceAuthMethod,
    ip: string,
    credential?: string,
  ): Promise<AuthenticateResult> => {
    const refusal = await devices.admit(device, method);
    if (refusal !== null) {
      audit({
        actor: { type: 'device', id: device.id },
        tenant: device.vendorId,
        type: 'device.connect',
        target: device.id,
        sourceIp: ip,
        result: 'denied',
        details: { reason: refusal, method },
      });
      return { ok: false, reason: refusal === 'quarantined' ? 'banned' : 'not-authorized' };
    }
    // The successful connect is audited in onConnected: CONNACK can still fail after this point.
    // How and when it authenticated lets the credential sweep re-check the connection (DEV-8).
    return {
      ok: true,
      identity: deviceIdentity(device, method, Date.now(), credential === undefined ? {} : { credential }),
    };
  };

  /** An audit event about a connected (authenticated) device, from the address it connected from. */
  const auditDevice = (
    identity: ClientIdentity,
    remoteAddress: string,
    event: Pick<AuditEvent, 'type' | 'result' | 'details'>,
  ) =>
    audit({
      actor: { type: 'device', id: identity.principalId },
      tenant: identity.attributes.vendorId || null,
      target: identity.principalId,
      sourceIp: normaliseIp(remoteAddress),
      ...event,
    });

  return {
    async authenticate(request) {
      const ip = normaliseIp(request.remoteAddress);
      if (await guard.blocks.isBlocked(ip)) return { ok: false, reason: 'banned' };
      if (!(await guard.connectAttempt(ip))) {
        guard.auditSampled(`connect-rate:${ip}`, {
          actor: { type: 'system', id: 'guard' },
          type: 'guard.rate-limited',
          target: ip,
          sourceIp: ip,
          result: 'denied',
          details: { dimension: 'mqtt-connect-ip' },
        });
        return { ok: false, reason: 'rate-limited' };
      }
      // Mutual TLS (DEV-5): a presented client certificate decides on its own (the username, when
      // given, must be the device it names); one that does not verify is refused, never skipped.
      const claimed = request.username === undefined || request.username === '' ? undefined : request.username;
      if (certificates && request.peerCertificate && (claimed === undefined || isDeviceId(claimed))) {
        const verdict = await certificates.authenticate(request.peerCertificate, claimed);
        if (!verdict.ok) {
          log.info({ deviceId: claimed ?? null, reason: verdict.reason }, 'mqtt: device certificate refused');
          refuse(ip, claimed, 'bad-credentials', { certificate: verdict.reason });
          await guard.authFailure(ip, claimed === undefined ? null : { kind: 'device', id: claimed });
          return { ok: false, reason: 'bad-credentials' };
        }
        return admitted(verdict.device, 'certificate', ip, verdict.certificate.fingerprint);
      }
      // The device ID alone is never a credential (DEV-3): a secret must be presented and match.
      if (!isDeviceId(request.username) || !request.password || request.password.length === 0) {
        refuse(ip, request.username, 'bad-credentials');
        await guard.authFailure(ip, null);
        return { ok: false, reason: 'bad-credentials' };
      }
      // A device token as the password (SM2 devices after a signed challenge, DEV-5/DEV-6).
      if (deviceTokens && request.password.subarray(0, DEVICE_TOKEN_PREFIX.length).equals(DEVICE_TOKEN_PREFIX)) {
        const device = await deviceTokens.verify(request.username, request.password.toString('utf8'));
        if (!device) {
          log.info({ deviceId: request.username }, 'mqtt: device token refused');
          refuse(ip, request.username, 'bad-credentials', { method: 'token' });
          await guard.authFailure(ip, { kind: 'device', id: request.username });
          return { ok: false, reason: 'bad-credentials' };
        }
        return admitted(device, 'token', ip);
      }
      const device = await devices.authenticateDevice(request.username, request.password);
      if (!device) {
        // No source IP in the log line: logs are not the place for personal data (PRIV-4); the audit
        // entry keeps it encrypted under a day key.
        log.info({ deviceId: request.username }, 'mqtt: device authentication failed');
        refuse(ip, request.username, 'bad-credentials');
        await guard.authFailure(ip, { kind: 'device', id: request.username });
        return { ok: false, reason: 'bad-credentials' };
      }
      return admitted(device, 'secret', ip);
    },

    authorizePublish(identity, topic) {
      // `$` topics belong to the broker [MQTT-4.7.2-1]: a client never publishes to `$SYS/...`.
      if (topic.startsWith('$')) return false;
      if (identity.kind !== 'device' || !isWithinDeviceNamespace(identity.principalId, topic)) return false;
      const parsed = parseDeviceTopic(topic);
      return (
        parsed !== null &&
        parsed.deviceId === identity.principalId &&
        DEVICE_PUBLISH_CHANNELS.has(parsed.channel) &&
        // Telemetry has exactly one topic, the one that is stored; an ack names exactly one command.
        (parsed.channel !== 'telemetry' || parsed.rest.length === 0) &&
        (parsed.channel !== 'acks' || parsed.rest.length === 1)
      );
    },

    authorizeSubscribe(identity, filter) {
      if (identity.kind !== 'device') return false;
      if (filter.startsWith('$')) {
        // Read-only `$SYS`, per tenant: only filters that start literally with the device's own
        // tenant subtree (no wildcard at or above the tenant level), with something below it.
        const tenant = tenantOf(identity);
        if (tenant === null) return false;
        const prefix = sysTenantPrefix(tenant);
        return filter.startsWith(prefix) && filter.length > prefix.length;
      }
      return isWithinDeviceNamespace(identity.principalId, filter);
    },

    async onPublish(identity, message) {
      const deviceId = identity.principalId;
      const parsed = parseDeviceTopic(message.topic);
      if (message.retain === true && message.payload.length > 0) {
        // Each device may keep one retained message, its last state: retained topics of its own
        // choosing would let one device fill the broker's retained store (mqtt.maxRetainedMessages)
        // for everyone. Clearing (empty payload) is always allowed.
        if (parsed?.channel !== 'state' || parsed.rest.length > 0) {
          throw new PublishRefusedError('quota-exceeded', 'only devices/{id}/state may be retained');
        }
      }
      // Presence: remembered in memory only, written at most every flush interval.
      devices.presence.activity(deviceId, message.receivedAt);
      const tenant = identity.attributes.vendorId ?? null;
      const productId = identity.attributes.productId ?? '';
      const verdict = await guard.deviceMessage(
        { id: deviceId, productId, tenant },
        await devices.productLimits(productId),
      );
      if (!verdict.allowed) {
        throw new PublishRefusedError('rate-limited', 'device report rate exceeded', {
          disconnect: verdict.disconnect,
        });
      }
      if (parsed?.channel === 'state') await guard.stateChange(deviceId, tenant);
      if (parsed?.channel === 'events') {
        const usage = resourceUsage(message.payload);
        if (usage) await guard.resourceReport(deviceId, tenant, usage);
      }
      if (parsed === null || parsed.channel === 'commands' || parsed.channel === 'shadow') return;
      const device = { id: deviceId, vendorId: tenant ?? '', productId };
      const body = { rest: parsed.rest, payload: message.payload, receivedAt: message.receivedAt };
      if (parsed.channel === 'telemetry') {
        const check = checkTelemetryPayload(message.payload);
        if (!check.ok) throw new PublishRefusedError('payload-invalid', check.reason);
      }
      for (const handle of channels[parsed.channel] ?? []) await handle(device, body);
      if (parsed.channel === 'telemetry') {
        try {
          await devices.recordTelemetry(deviceId, message.payload, message.receivedAt);
        } catch (error) {
          if (error instanceof TelemetryQueueFullError) throw new PublishRefusedError('quota-exceeded', error.message);
          throw new PublishRefusedError('unavailable', 'telemetry could not be stored');
        }
      }
      events?.emit('message', {
        deviceId,
        vendorId: device.vendorId,
        productId,
        channel: parsed.channel,
        ...body,
      });
    },

    onConnectRefused(identity, info) {
      auditDevice(identity, info.remoteAddress, {
        type: 'device.connect',
        result: 'denied',
        details: { reason: info.reason, reasonCode: info.reasonCode },
      });
    },

    onConnected(identity, info) {
      if (identity.kind !== 'device') return;
      const vendorId = identity.attributes.vendorId ?? '';
      auditDevice(identity, info.remoteAddress, {
        type: 'device.connect',
        result: 'success',
        details: {
          protocolVersion: info.protocolVersion,
          sessionPresent: info.sessionPresent,
          keepAliveSeconds: info.keepAliveSeconds,
          method: identity.attributes.authMethod ?? null,
        },
      });
      devices.presence.connected(
        { id: identity.principalId, vendorId },
        {
          protocolVersion: info.protocolVersion,
          sessionPresent: info.sessionPresent,
          remoteAddress: info.remoteAddress,
        },
      );
    },

    onDisconnected(identity, info) {
      if (identity.kind !== 'device') return;
      const connection = devices.presence.disconnected(identity.principalId, {
        reason: info.reason,
        connectedForMs: info.connectedForMs,
        remoteAddress: info.remoteAddress,
        ...(info.reasonCode === undefined ? {} : { reasonCode: info.reasonCode }),
      });
      auditDevice(identity, info.remoteAddress, {
        type: 'device.disconnect',
        // Only a DISCONNECT from the device is an orderly end; everything else is worth a look.
        result: info.reason === 'client' ? 'success' : 'failure',
        details: {
          reason: info.reason,
          reasonCode: info.reasonCode ?? null,
          connectedForMs: info.connectedForMs,
          protocolVersion: connection?.protocolVersion ?? null,
          sessionPresent: connection?.sessionPresent ?? null,
        },
      });
      guard
        .connectionChurn(identity.principalId, identity.attributes.vendorId ?? null)
        .catch((error: unknown) => log.warn({ err: error }, 'guard: signal failed'));
    },

    onTakeover(identity, addresses) {
      const previous = normaliseIp(addresses.previous);
      const next = normaliseIp(addresses.next);
      // One entry holds one source IP (encrypted under the day key, PRIV-4): this one the new
      // connection's; the taken-over connection's is on its `device.disconnect` (reason takeover).
      auditDevice(identity, addresses.next, {
        type: 'device.session-takeover',
        result: 'success',
        details: { sameAddress: previous === next },
      });
      guard
        .sessionTakeover(identity.principalId, identity.attributes.vendorId ?? null, { previous, next })
        .catch((error: unknown) => log.warn({ err: error }, 'guard: signal failed'));
    },

    onViolation(violation) {
      const ip = normaliseIp(violation.remoteAddress);
      const deviceId = violation.identity?.principalId;
      guard.auditSampled(`violation:${violation.what}:${deviceId ?? ip}`, {
        actor: deviceId ? { type: 'device', id: deviceId } : { type: 'system', id: 'unknown' },
        tenant: violation.identity?.attributes.vendorId ?? null,
        type: `device.${violation.what}`,
        target: deviceId ?? null,
        sourceIp: ip,
        result: 'denied',
      });
      guard
        .invalidRequest(ip, violation.what)
        .catch((error: unknown) => log.warn({ err: error }, 'guard: signal failed'));
    },
  };
}
