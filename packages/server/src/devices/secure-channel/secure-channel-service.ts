// The secure channel over HTTP (CHAN-3, CHAN-4; docs/protocol.md "Secure channel", "Over HTTP"): hellos
// answered with a reply and a session ID, then frames opened and answers sealed. The platform runs as
// several processes behind one port, so consecutive frames of a session reach different processes:
// the session lives in secure_channel_sessions (keys sealed under the vendor's tenant key), and every
// frame moves it on with a compare-and-set on `version`. Two processes opening the same frame at once
// both succeed in memory, but only one commits; the other reloads and finds it `replayed`.
//
// Every refusal is counted by the guard (guard.secureChannelRefusal) and answered alike
// (401 ERR_SECURE_CHANNEL_REFUSED); a body that is no message of the protocol gets 400
// ERR_SECURE_CHANNEL_MALFORMED. A hello is single-use (its MAC is a nonce in device_request_nonces,
// the store the device HTTPS authentication shares across processes), though a replayed hello could
// not produce usable keys anyway: the point is that it costs no session row and shows up as `replayed`.
import { createHash, randomBytes } from 'node:crypto';
import {
  acceptHello,
  parseHandshakeMessage,
  SECURE_CHANNEL_HEADER_BYTES,
  SECURE_CHANNEL_MAX_PLAINTEXT,
  SECURE_CHANNEL_TAG_BYTES,
  SecureChannelError,
  SecureChannelSession,
  type SecureChannelSessionState,
  type SessionOptions,
} from '@castellan/protocol';
import type { Kysely } from 'kysely';
import type { AuditEvent } from '../../audit/index.ts';
import { CastellanError } from '../../errors/index.ts';
import { normaliseIp } from '../../guard/address-filter.ts';
import { asBuffer } from '../../lib/bytes.ts';
import type { Database } from '../../store/index.ts';
import type { Device, DevicesService, FieldCipher } from '../devices-service.ts';
import type { PlatformChannelKeys } from './platform-channel-keys.ts';

/** Random session ID in front of every frame (docs/protocol.md "Over HTTP"). */
export const SECURE_CHANNEL_SESSION_ID_BYTES = 16;
/** The largest request body: session ID ‖ the largest frame. */
export const SECURE_CHANNEL_MAX_REQUEST_BYTES =
  SECURE_CHANNEL_SESSION_ID_BYTES +
  SECURE_CHANNEL_HEADER_BYTES +
  SECURE_CHANNEL_MAX_PLAINTEXT +
  SECURE_CHANNEL_TAG_BYTES;

/** Why a hello or frame was refused: the library's reasons plus the session's own. */
export type SecureChannelHttpRefusal =
  | SecureChannelError['reason']
  | 'unknown-device'
  | 'not-admitted'
  | 'credential-revoked'
  | 'unknown-session'
  | 'expired-session';

/** Compare-and-set attempts before a very busy session gives up (each loss is another frame's win). */
const CAS_ATTEMPTS = 16;

const keysContext = (sessionId: string) => `secure_channel_sessions.keys_ciphertext:${sessionId}`;

interface SessionKeys {
  sendKey: string;
  receiveKey: string;
  previousKey: string | null;
}

type StoredState = Omit<SecureChannelSessionState, keyof SessionKeys>;

function splitState(state: SecureChannelSessionState): { keys: SessionKeys; rest: StoredState } {
  const { sendKey, receiveKey, previousKey, ...rest } = state;
  return { keys: { sendKey, receiveKey, previousKey }, rest };
}

export interface SecureChannelServiceOptions {
  db: Kysely<Database>;
  devices: Pick<DevicesService, 'secureChannelPsk' | 'getDevice' | 'admit'>;
  channelKeys: PlatformChannelKeys;
  /** Seals the session keys under the vendor's tenant key (the key service). */
  cipher: Pick<FieldCipher, 'encrypt' | 'decrypt'>;
  /** The cross-process single-use store (DeviceHttpAuth.useNonce): false when already used. */
  useNonce: (subject: string, nonce: string, expiresAt: number) => Promise<boolean>;
  /** guard.secureChannelRefusal. */
  refusal: (about: { ip: string | null; deviceId: string | null; reason: string; transport: 'http' }) => Promise<void>;
  record?: (event: AuditEvent) => void;
  rotateAfterFrames: number;
  rotateAfterMs: number;
  sessionLifetimeMs: number;
  now?: () => number;
  /** How often expired sessions are purged (ms); 0 disables the timer. */
  purgeIntervalMs?: number;
}

/** An opened frame: its plaintext and the session to answer in. */
export interface OpenedFrame {
  sessionId: string;
  device: Device;
  plaintext: Buffer;
}

export class SecureChannelService {
  readonly #o: SecureChannelServiceOptions;
  readonly #db: Kysely<Database>;
  readonly #now: () => number;
  readonly #options: SessionOptions;
  readonly #timer: NodeJS.Timeout | undefined;

  constructor(options: SecureChannelServiceOptions) {
    this.#o = options;
    this.#db = options.db;
    this.#now = options.now ?? Date.now;
    this.#options = { rotateAfterFrames: options.rotateAfterFrames, rotateAfterMs: options.rotateAfterMs };
    const every = options.purgeIntervalMs ?? 60_000;
    if (every > 0) {
      this.#timer = setInterval(() => {
        this.purgeExpired().catch(() => {});
      }, every);
      this.#timer.unref();
    }
  }

  close(): void {
    if (this.#timer) clearInterval(this.#timer);
  }

  /** The pinned static public keys (hex) by suite and their generation. */
  publicKeys(): { generation: number; keys: Record<'intl' | 'sm', string> } {
    return { generation: this.#o.channelKeys.generation, keys: this.#o.channelKeys.publicKeys() };
  }

  /** Deletes expired sessions; returns how many went. */
  async purgeExpired(): Promise<number> {
    const result = await this.#db
      .deleteFrom('secure_channel_sessions')
      .where('expires_at', '<=', this.#now())
      .executeTakeFirst();
    return Number(result.numDeletedRows);
  }

  /** Ends every session of a device (credential rotation, revocation, decommissioning: DEV-8). */
  async endSessions(deviceId: string): Promise<number> {
    const result = await this.#db
      .deleteFrom('secure_channel_sessions')
      .where('device_id', '=', deviceId)
      .executeTakeFirst();
    return Number(result.numDeletedRows);
  }

  /**
   * After a tenant key rotation (KEY-2): the tenant's sessions are ended rather than re-wrapped, so the
   * old key version can be destroyed; their devices handshake again. Returns how many ended.
   */
  async endTenantSessions(vendorId: string): Promise<number> {
    const result = await this.#db
      .deleteFrom('secure_channel_sessions')
      .where('vendor_id', '=', vendorId)
      .executeTakeFirst();
    return Number(result.numDeletedRows);
  }

  /** Answers a 120-byte hello: the reply (120 bytes) ‖ the session ID (16 bytes). */
  async hello(body: Buffer, ip: string): Promise<Buffer> {
    let parsed;
    try {
      parsed = parseHandshakeMessage(body);
    } catch (error) {
      return this.#refuse(ip, null, error instanceof SecureChannelError ? error.reason : 'malformed');
    }
    if (parsed.type !== 'hello') return this.#refuse(ip, parsed.deviceId, 'malformed');
    const now = this.#now();
    // An unknown device gets a psk of no device: the MAC check runs and fails the same way.
    const { device, psk } = await this.#o.devices.secureChannelPsk(parsed.deviceId, parsed.suite);
    let accepted;
    try {
      accepted = acceptHello({
        hello: parsed,
        psk,
        platformKey: this.#o.channelKeys.keyPair(parsed.suite),
        now,
        options: this.#options,
      });
    } catch (error) {
      const reason = error instanceof SecureChannelError ? error.reason : 'malformed';
      return this.#refuse(ip, parsed.deviceId, device ? reason : 'unknown-device', device ?? undefined);
    }
    if (!device) return this.#refuse(ip, parsed.deviceId, 'unknown-device');
    // The product must allow the secret (an L2 certificate-only product refuses it: DEV-5).
    if ((await this.#o.devices.admit(device, 'secret')) !== null)
      return this.#refuse(ip, device.id, 'not-admitted', device);
    // Only an authentic hello occupies a nonce: otherwise anyone could burn a device's hellos.
    const toleranceMs = accepted.session.options.toleranceMs;
    const nonce = createHash('sha256').update(parsed.mac).digest('base64url');
    if (!(await this.#o.useNonce(`secure-channel:${device.id}`, nonce, parsed.ts + toleranceMs + 1))) {
      return this.#refuse(ip, device.id, 'replayed', device);
    }
    const sessionId = randomBytes(SECURE_CHANNEL_SESSION_ID_BYTES);
    const id = sessionId.toString('hex');
    const { keys, rest } = splitState(accepted.session.exportState());
    await this.#db
      .insertInto('secure_channel_sessions')
      .values({
        id,
        device_id: device.id,
        vendor_id: device.vendorId,
        suite: parsed.suite,
        keys_ciphertext: await this.#sealKeys(device.vendorId, id, keys),
        state: JSON.stringify(rest),
        version: 0,
        created_at: now,
        expires_at: now + this.#o.sessionLifetimeMs,
      })
      .execute();
    this.#o.record?.({
      actor: { type: 'device', id: device.id },
      tenant: device.vendorId,
      type: 'device.secure-channel-session',
      target: device.id,
      sourceIp: normaliseIp(ip),
      result: 'success',
      details: { suite: parsed.suite, transport: 'http', expiresAt: now + this.#o.sessionLifetimeMs },
    });
    return Buffer.concat([accepted.reply, sessionId]);
  }

  /**
   * Opens sessionId ‖ frame. The session's new state is committed before this returns (so the frame can
   * never be accepted twice, whichever processes it reaches); the device's admission is checked first.
   */
  async open(body: Buffer, ip: string): Promise<OpenedFrame> {
    const minimum = SECURE_CHANNEL_SESSION_ID_BYTES + SECURE_CHANNEL_HEADER_BYTES + SECURE_CHANNEL_TAG_BYTES;
    if (body.length < minimum || body.length > SECURE_CHANNEL_MAX_REQUEST_BYTES) {
      return this.#refuse(ip, null, 'malformed');
    }
    const id = body.subarray(0, SECURE_CHANNEL_SESSION_ID_BYTES).toString('hex');
    const frame = body.subarray(SECURE_CHANNEL_SESSION_ID_BYTES);
    for (let attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
      const loaded = await this.#load(id, ip);
      const { row, session, device } = loaded;
      let plaintext: Buffer;
      try {
        plaintext = session.open(frame, this.#now());
      } catch (error) {
        const reason = error instanceof SecureChannelError ? error.reason : 'malformed';
        return this.#refuse(ip, device.id, reason, device);
      }
      if (await this.#commit(row, session)) return { sessionId: id, device, plaintext };
    }
    throw new CastellanError('ERR_STORE_UNAVAILABLE', { message: 'Secure-channel session too busy' });
  }

  /** Seals an answer in the session's platform → device direction and commits the new state. */
  async seal(sessionId: string, plaintext: Buffer, ip: string): Promise<Buffer> {
    for (let attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
      const { row, session } = await this.#load(sessionId, ip);
      // Not sent unless committed: a frame sealed by a losing attempt never leaves the process.
      const sealed = session.seal(plaintext, this.#now());
      if (await this.#commit(row, session)) return sealed;
    }
    throw new CastellanError('ERR_STORE_UNAVAILABLE', { message: 'Secure-channel session too busy' });
  }

  async #load(id: string, ip: string) {
    const row = await this.#db
      .selectFrom('secure_channel_sessions')
      .selectAll()
      .where('id', '=', id)
      .executeTakeFirst();
    if (!row) return this.#refuse(ip, null, 'unknown-session');
    if (Number(row.expires_at) <= this.#now()) return this.#refuse(ip, null, 'expired-session');
    // Re-checked on every frame: a disabled, quarantined or no longer admitted device stops at once.
    const device = await this.#o.devices.getDevice(row.device_id);
    if (!device || (await this.#o.devices.admit(device, 'secret')) !== null) {
      return this.#refuse(ip, row.device_id, 'not-admitted', device ?? undefined);
    }
    // A secret rotated or destroyed since the hello (DEV-8) ends the session it keyed, in every process.
    const credential = await this.#db
      .selectFrom('device_credential_state')
      .select('secret_changed_at')
      .where('device_id', '=', device.id)
      .executeTakeFirst();
    if (
      credential?.secret_changed_at !== null &&
      credential?.secret_changed_at !== undefined &&
      Number(credential.secret_changed_at) >= Number(row.created_at)
    ) {
      return this.#refuse(ip, device.id, 'credential-revoked', device);
    }
    let session: SecureChannelSession;
    try {
      const keys = JSON.parse(
        (await this.#o.cipher.decrypt(row.vendor_id, asBuffer(row.keys_ciphertext), keysContext(id))).toString('utf8'),
      ) as SessionKeys;
      session = SecureChannelSession.fromState({ ...(JSON.parse(row.state) as StoredState), ...keys });
    } catch {
      // The tenant key was destroyed or suspended: the session cannot continue.
      return this.#refuse(ip, null, 'unknown-session');
    }
    return { row, session, device };
  }

  /** Stores the session's new state if nobody else did meanwhile; false when another frame won. */
  async #commit(row: Database['secure_channel_sessions'], session: SecureChannelSession): Promise<boolean> {
    const { keys, rest } = splitState(session.exportState());
    const before = JSON.parse(row.state) as StoredState;
    // The keys change only on rotation: re-seal them only then.
    const rotated =
      before.sendEpoch !== rest.sendEpoch ||
      before.receiveEpoch !== rest.receiveEpoch ||
      before.previousUntil !== rest.previousUntil;
    const result = await this.#db
      .updateTable('secure_channel_sessions')
      .set({
        state: JSON.stringify(rest),
        version: row.version + 1,
        ...(rotated ? { keys_ciphertext: await this.#sealKeys(row.vendor_id, row.id, keys) } : {}),
      })
      .where('id', '=', row.id)
      .where('version', '=', row.version)
      .executeTakeFirst();
    return Number(result.numUpdatedRows) === 1;
  }

  #sealKeys(vendorId: string, sessionId: string, keys: SessionKeys): Promise<Buffer> {
    return this.#o.cipher.encrypt(vendorId, Buffer.from(JSON.stringify(keys), 'utf8'), keysContext(sessionId));
  }

  async #refuse(
    ip: string,
    deviceId: string | null,
    reason: SecureChannelHttpRefusal,
    device?: Device,
  ): Promise<never> {
    const addr = normaliseIp(ip);
    await this.#o.refusal({ ip: addr, deviceId, reason, transport: 'http' });
    this.#o.record?.({
      actor: { type: 'device', id: deviceId ?? 'unknown' },
      tenant: device?.vendorId ?? null,
      type: 'device.secure-channel',
      target: deviceId,
      sourceIp: addr,
      result: 'failure',
      details: { reason, transport: 'http' },
    });
    throw new CastellanError(reason === 'malformed' ? 'ERR_SECURE_CHANNEL_MALFORMED' : 'ERR_SECURE_CHANNEL_REFUSED');
  }
}
