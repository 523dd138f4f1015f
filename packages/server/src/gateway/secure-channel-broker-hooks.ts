// The secure channel over MQTT (CHAN-3, CHAN-4; docs/protocol.md "Secure channel", "Over MQTT"): the
// profile of the plain-TCP listener. A CONNECT carries MQTT 5 Authentication Method `castellan-sc-v1`
// and the 120-byte hello as Authentication Data; the CONNACK answers with the 120-byte reply. Then every
// PUBLISH payload in either direction is a frame of that connection's session: opened before the ACL,
// limits, checks and durable hook see it, sealed at delivery. The rest (ACL, storage, presence, audit
// of connects) is the device hooks', unchanged: the identity is the same as over TLS.
//
// Every refused hello gets the same CONNACK 0x87 whatever the reason (unknown device, bad MAC, stale,
// replayed, certificate-only product): no oracle. A hello is single-use across processes (its MAC in the
// nonce store the device HTTPS authentication and the HTTP transport share). Every refused hello or
// frame is counted by the guard (guard.secureChannelRefusal, transport 'mqtt').
import { createHash } from 'node:crypto';
import {
  acceptHello,
  type ChannelKeyPair,
  parseHandshakeMessage,
  SecureChannelError,
  type SecureChannelSession,
  type SessionOptions,
  type SuiteName,
} from '@castellan/protocol';
import type { Logger } from 'pino';
import type { AuditEvent } from '../audit/index.ts';
import type { Device, DevicesService } from '../devices/devices-service.ts';
import { type GuardService, normaliseIp } from '../guard/index.ts';
import type { EnhancedAuthenticateResult, ListenerProfile, PayloadCodec } from './mqtt/listener-profile.ts';
import { deviceIdentity } from './device-broker-hooks.ts';

/** The MQTT 5 Authentication Method of the secure channel. */
export const SECURE_CHANNEL_MQTT_METHOD = 'castellan-sc-v1';
/** Refused frames on one connection before it is ended (DISCONNECT 0x99); mqtt.secureChannelMaxRefusals. */
export const DEFAULT_SECURE_CHANNEL_MAX_REFUSALS = 10;

/** Why a CONNECT or frame was refused: the library's reasons plus the platform's own. */
export type SecureChannelMqttRefusal = SecureChannelError['reason'] | 'unknown-device' | 'not-admitted';

export interface SecureChannelProfileOptions {
  devices: Pick<DevicesService, 'secureChannelPsk' | 'admit'>;
  guard: Pick<GuardService, 'blocks' | 'connectAttempt' | 'secureChannelRefusal' | 'auditSampled'>;
  /** The platform's static key pairs (PlatformChannelKeys). */
  channelKeys: { keyPair(suite: SuiteName): ChannelKeyPair };
  /** The cross-process single-use store (DeviceHttpAuth.useNonce): false when already used. */
  useNonce: (subject: string, nonce: string, expiresAt: number) => Promise<boolean>;
  /** Records an audit event without waiting. */
  audit: (event: AuditEvent) => void;
  log: Logger;
  /** Key rotation (secureChannel.rotateAfterFrames, rotateAfterMinutes). */
  sessionOptions: SessionOptions;
  /** Refused frames before the connection ends (mqtt.secureChannelMaxRefusals). */
  maxRefusals?: number;
  now?: () => number;
}

/** Opens and seals one connection's payloads with its session. */
class SessionCodec implements PayloadCodec {
  readonly #session: SecureChannelSession;
  readonly #refused: (reason: SecureChannelMqttRefusal) => void;
  readonly #maxRefusals: number;
  readonly #now: () => number;
  #refusals = 0;

  constructor(
    session: SecureChannelSession,
    refused: (reason: SecureChannelMqttRefusal) => void,
    maxRefusals: number,
    now: () => number,
  ) {
    this.#session = session;
    this.#refused = refused;
    this.#maxRefusals = maxRefusals;
    this.#now = now;
  }

  get exhausted(): boolean {
    return this.#refusals >= this.#maxRefusals;
  }

  open(payload: Buffer): Buffer | null {
    try {
      return this.#session.open(payload, this.#now());
    } catch (error) {
      // open() throws SecureChannelError only; anything else is a bug, refused all the same.
      this.#refusals++;
      this.#refused(error instanceof SecureChannelError ? error.reason : 'malformed');
      return null;
    }
  }

  seal(payload: Buffer): Buffer | null {
    try {
      return this.#session.seal(payload, this.#now());
    } catch {
      // Larger than a frame holds, or the session's sequence space is spent: never delivered.
      return null;
    }
  }
}

/** The nonce a hello occupies: the same as over HTTP, so a hello is single-use across transports too. */
function helloNonce(mac: Buffer): string {
  return createHash('sha256').update(mac).digest('base64url');
}

export function secureChannelProfile(options: SecureChannelProfileOptions): ListenerProfile {
  const { devices, guard, channelKeys, useNonce, audit, log, sessionOptions } = options;
  const maxRefusals = options.maxRefusals ?? DEFAULT_SECURE_CHANNEL_MAX_REFUSALS;
  const now = options.now ?? Date.now;

  const count = (ip: string, deviceId: string | null, reason: SecureChannelMqttRefusal): void => {
    guard
      .secureChannelRefusal({ ip, deviceId, reason, transport: 'mqtt' })
      .catch((error: unknown) => log.warn({ err: error }, 'guard: signal failed'));
  };

  /** One fixed answer for every refused hello (CONNACK 0x87); the reason goes to the guard and audit. */
  const refuse = (
    ip: string,
    deviceId: string | null,
    reason: SecureChannelMqttRefusal,
    device?: Device | null,
  ): EnhancedAuthenticateResult => {
    count(ip, deviceId, reason);
    audit({
      actor: { type: 'device', id: deviceId ?? 'unknown' },
      tenant: device?.vendorId ?? null,
      type: 'device.connect',
      target: deviceId,
      sourceIp: ip,
      result: device ? 'denied' : 'failure',
      details: { reason, transport: 'secure-channel-mqtt' },
    });
    return { ok: false, reason: 'not-authorized' };
  };

  return {
    authenticationMethod: SECURE_CHANNEL_MQTT_METHOD,

    async authenticate(request) {
      const ip = normaliseIp(request.remoteAddress);
      // The same first line as over TLS: known blocks and the per-address connect rate.
      if (await guard.blocks.isBlocked(ip)) return { ok: false, reason: 'banned' };
      if (!(await guard.connectAttempt(ip))) return { ok: false, reason: 'rate-limited' };
      let hello;
      try {
        hello = parseHandshakeMessage(request.authenticationData ?? Buffer.alloc(0));
      } catch (error) {
        return refuse(ip, null, error instanceof SecureChannelError ? error.reason : 'malformed');
      }
      // The username names the device, as over TLS; a password or a will would cross the network in
      // clear, outside what the hello authenticates (CHAN-4): such a CONNECT is not this method's.
      if (hello.type !== 'hello' || request.password !== undefined || request.hasWill) {
        return refuse(ip, hello.deviceId, 'malformed');
      }
      if (request.username !== hello.deviceId) return refuse(ip, hello.deviceId, 'wrong-device');
      const at = now();
      // An unknown device gets a psk of no device: the MAC check runs and fails the same way.
      const { device, psk } = await devices.secureChannelPsk(hello.deviceId, hello.suite);
      let accepted;
      try {
        accepted = acceptHello({
          hello,
          psk,
          platformKey: channelKeys.keyPair(hello.suite),
          now: at,
          options: sessionOptions,
        });
      } catch (error) {
        const reason = error instanceof SecureChannelError ? error.reason : 'malformed';
        return refuse(ip, hello.deviceId, device ? reason : 'unknown-device', device);
      }
      if (!device) return refuse(ip, hello.deviceId, 'unknown-device');
      // The product must allow the secret: an L2/L3 certificate-only product refuses it (DEV-5).
      if ((await devices.admit(device, 'secret')) !== null) return refuse(ip, device.id, 'not-admitted', device);
      // Only an authentic hello occupies a nonce (else anyone could burn a device's hellos); it is kept
      // for as long as its timestamp is acceptable.
      const expiresAt = hello.ts + accepted.session.options.toleranceMs + 1;
      if (!(await useNonce(`secure-channel:${device.id}`, helloNonce(hello.mac), expiresAt))) {
        return refuse(ip, device.id, 'replayed', device);
      }
      const refused = (reason: SecureChannelMqttRefusal) => {
        count(ip, device.id, reason);
        guard.auditSampled(`secure-channel-frame:${device.id}:${reason}`, {
          actor: { type: 'device', id: device.id },
          tenant: device.vendorId,
          type: 'device.secure-channel',
          target: device.id,
          sourceIp: ip,
          result: 'denied',
          details: { reason, transport: 'mqtt' },
        });
      };
      return {
        ok: true,
        // As over TLS: the credential sweep re-checks `secret` connections when the secret is replaced (DEV-8).
        identity: deviceIdentity(device, 'secret', at, { channel: 'secure-channel' }),
        authenticationData: accepted.reply,
        codec: new SessionCodec(accepted.session, refused, maxRefusals, now),
      };
    },
  };
}
