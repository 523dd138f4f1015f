// Device posture reports (DEV-10, S 6.1.5e, S 8.1.4p): the device tells the platform which firmware it
// runs, its security level and the SHA-256 digests of its core files; the platform compares them with
// the vendor's golden values for that product and firmware and alerts on any deviation. Published on
// devices/{id}/events at QoS 1: the promise settles once the platform has checked and stored the
// report, and rejects (MQTT_PUBACK_153, Payload format invalid) if it refused it as malformed.
// Sent over a TLS connection, the report also says what that connection negotiated (`tls`: group,
// version, cipher; CHAN-8): Node gives the platform no way to read the key-exchange group itself.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import type { TLSSocket } from 'node:tls';
import { deviceTopic } from '@castellan/protocol';

export type PostureSecurityLevel = 'L1' | 'L2' | 'L3';

/**
 * One core file: its bytes, a file on disk (streamed, so large images are fine), or a SHA-256 digest
 * computed elsewhere (64 hex digits, e.g. by a secure element that measured the boot image).
 */
export type PostureSource = Uint8Array | { readonly file: string } | { readonly sha256: string };

export interface PostureInput {
  readonly firmwareVersion: string;
  readonly securityLevel: PostureSecurityLevel;
  /** Core file path (as the vendor names it in the golden values) → its content. */
  readonly digests: Readonly<Record<string, PostureSource>>;
}

/** What the device's TLS connection to the platform negotiated (CHAN-8). */
export interface PostureTls {
  /** Key-exchange group, TLS name: 'X25519MLKEM768', 'X25519', 'P-256', … */
  readonly group: string;
  readonly version: 'TLSv1.2' | 'TLSv1.3';
  /** Cipher suite, IANA name (e.g. TLS_AES_128_GCM_SHA256). */
  readonly cipher: string;
}

/** The message sent on the events topic. */
export interface PostureReportMessage {
  readonly type: 'posture';
  readonly firmwareVersion: string;
  readonly securityLevel: PostureSecurityLevel;
  readonly digests: Readonly<Record<string, string>>;
  /** Absent when the connection is not TLS or did not tell (e.g. a TLS 1.2 resumption hides the group). */
  readonly tls?: PostureTls;
}

// The platform's rules (docs/protocol.md, Posture reports): a value outside them would get the whole
// report refused, so the SDK leaves `tls` out instead.
const TLS_GROUP_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$/;
const TLS_CIPHER_RE = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;

function sha256Stream(file: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    createReadStream(file)
      .on('error', reject)
      .on('data', (chunk) => hash.update(chunk))
      .on('end', () => resolve(hash.digest('hex')));
  });
}

/** SHA-256 (lower-case hex) of each source, keyed as given. */
export async function computePostureDigests(
  sources: Readonly<Record<string, PostureSource>>,
): Promise<Record<string, string>> {
  const entries = await Promise.all(
    Object.entries(sources).map(async ([path, source]): Promise<[string, string]> => {
      if (source instanceof Uint8Array) return [path, createHash('sha256').update(source).digest('hex')];
      if ('file' in source) return [path, await sha256Stream(source.file)];
      if (!/^[0-9a-fA-F]{64}$/.test(source.sha256)) {
        throw new TypeError(`the digest of ${JSON.stringify(path)} must be 64 hex digits (SHA-256)`);
      }
      return [path, source.sha256.toLowerCase()];
    }),
  );
  return Object.fromEntries(entries);
}

export async function buildPostureReport(input: PostureInput, tls?: PostureTls | null): Promise<PostureReportMessage> {
  return {
    type: 'posture',
    firmwareVersion: input.firmwareVersion,
    securityLevel: input.securityLevel,
    digests: await computePostureDigests(input.digests),
    ...(tls ? { tls: { group: tls.group, version: tls.version, cipher: tls.cipher } } : {}),
  };
}

/** Anything that can publish as the device (a DeviceClient). */
export interface PosturePublisher {
  readonly deviceId: string;
  publish(topic: string, payload: string | Buffer, qos: 0 | 1): Promise<void>;
  /** The connection's key-exchange group, TLS name (DeviceClient#negotiatedGroup); with `mqtt`, fills `tls`. */
  readonly negotiatedGroup?: string | null;
  /** The MQTT client, whose stream is the TLS socket (DeviceClient#mqtt). */
  readonly mqtt?: { readonly stream?: unknown };
}

/**
 * What the publisher's live connection negotiated, read from its TLS socket; null when it is not TLS,
 * is closed, or any part is unknown or outside the platform's rules.
 */
export function connectionTls(device: PosturePublisher): PostureTls | null {
  const socket = device.mqtt?.stream as Partial<TLSSocket> | undefined;
  if (typeof socket?.getProtocol !== 'function' || typeof socket.getCipher !== 'function') return null;
  const group = device.negotiatedGroup;
  const version = socket.getProtocol();
  const cipher = socket.getCipher() as { name?: string; standardName?: string } | undefined;
  const cipherName = cipher?.standardName ?? cipher?.name;
  if (!group || !TLS_GROUP_RE.test(group)) return null;
  if (version !== 'TLSv1.2' && version !== 'TLSv1.3') return null;
  if (!cipherName || !TLS_CIPHER_RE.test(cipherName)) return null;
  return { group, version, cipher: cipherName };
}

/**
 * Computes the digests and publishes the report, with what the connection negotiated; resolves with
 * what was sent once the platform acked it.
 */
export async function reportPosture(device: PosturePublisher, input: PostureInput): Promise<PostureReportMessage> {
  const report = await buildPostureReport(input, connectionTls(device));
  await device.publish(deviceTopic.events(device.deviceId), JSON.stringify(report), 1);
  return report;
}
