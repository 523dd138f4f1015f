// Binds the broker's hooks to devices: a device authenticates with its own ID and secret, may use only
// its own `devices/{id}/` topics (CHAN-6), and its telemetry is stored durably before QoS 1 is acked.
import { isDeviceId, isWithinDeviceNamespace, parseDeviceTopic } from '@castellan/protocol';
import type { Logger } from 'pino';
import type { DevicesService } from '../devices/devices-service.ts';
import { checkTelemetryPayload } from '../devices/telemetry-payload.ts';
import { TelemetryQueueFullError } from '../devices/telemetry-writer.ts';
import { type BrokerHooks, PublishRefusedError } from './mqtt/index.ts';

const DEVICE_PUBLISH_CHANNELS = new Set(['telemetry', 'state', 'events']);

export function deviceBrokerHooks(devices: DevicesService, log: Logger): BrokerHooks {
  return {
    async authenticate(request) {
      // The device ID alone is never a credential (DEV-3): a secret must be presented and match.
      if (!isDeviceId(request.username) || !request.password || request.password.length === 0) {
        return { ok: false, reason: 'bad-credentials' };
      }
      const device = await devices.authenticateDevice(request.username, request.password);
      if (!device) {
        // No source IP: logs are not the place for personal data (PRIV-4); the audit log (a later
        // issue) keeps it encrypted under a short-lived key.
        log.info({ deviceId: request.username }, 'mqtt: device authentication failed');
        return { ok: false, reason: 'bad-credentials' };
      }
      if (device.status !== 'active') return { ok: false, reason: 'not-authorized' };
      return {
        ok: true,
        identity: {
          principalId: device.id,
          kind: 'device',
          clientId: device.id,
          attributes: { vendorId: device.vendorId, productId: device.productId },
        },
      };
    },

    authorizePublish(identity, topic) {
      if (identity.kind !== 'device' || !isWithinDeviceNamespace(identity.principalId, topic)) return false;
      const parsed = parseDeviceTopic(topic);
      return (
        parsed !== null &&
        parsed.deviceId === identity.principalId &&
        DEVICE_PUBLISH_CHANNELS.has(parsed.channel) &&
        // Telemetry has exactly one topic, the one that is stored.
        (parsed.channel !== 'telemetry' || parsed.rest.length === 0)
      );
    },

    authorizeSubscribe(identity, filter) {
      return identity.kind === 'device' && isWithinDeviceNamespace(identity.principalId, filter);
    },

    async onPublish(identity, message) {
      const parsed = parseDeviceTopic(message.topic);
      if (parsed?.channel !== 'telemetry' || parsed.rest.length > 0) return;
      const check = checkTelemetryPayload(message.payload);
      if (!check.ok) throw new PublishRefusedError('payload-invalid', check.reason);
      try {
        await devices.recordTelemetry(identity.principalId, message.payload, message.receivedAt);
      } catch (error) {
        if (error instanceof TelemetryQueueFullError) throw new PublishRefusedError('quota-exceeded', error.message);
        throw new PublishRefusedError('unavailable', 'telemetry could not be stored');
      }
    },
  };
}
