// Seal + open cost of the secure channel (CHAN-3, CHAN-4) against the bare AEAD it is built on. Per
// suite (intl: AES-128-GCM, sm: SM4-GCM) and payload size, one operation is one message carried one way:
//   channel   SecureChannelSession#seal on the device's session, #open on the platform's (header encoded
//             as associated data, counter nonce, key epochs and their ratchet every 1,000 frames, the
//             timestamp check, the 64-frame replay window)
//   raw       node:crypto createCipheriv / createDecipheriv of the same cipher, 16-byte key, a fresh random
//             12-byte nonce per message, no associated data; nonce ‖ ciphertext ‖ tag, as suite().seal does
// so `channel × raw` is the overhead of the framing and its bookkeeping. Plus the full handshake per suite
// (createHello, parseHandshakeMessage, acceptHello, completeHandshake: both sides' ECDH, HKDF, MACs).
// Runs in this process like the keys measure: synchronous crypto with no I/O; the timing loop yields to
// the event loop every 50 ms so that the runner's watchdog and signal handlers stay live.
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import type { CipherGCMTypes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import {
  acceptHello,
  type ChannelKeyPair,
  completeHandshake,
  createHello,
  generateChannelKeyPair,
  parseHandshakeMessage,
  SecureChannelError,
  type SecureChannelSession,
  type SuiteName,
} from '@castellan/protocol';
import type { CaseResult, Column, Measure, MeasureContext } from '../lib/measure.ts';

interface Plan {
  warmupMs: number;
  /** Per path; split into `windows` parts, channel and raw taking turns, so both see the same machine. */
  measureMs: number;
  windows: number;
}

// Full: 8 rows × 2 paths × 2.3 s + 2 handshake rows ≈ 45 s. Quick: ≈ 1.5 s, a check that the paths work.
const QUICK: Plan = { warmupMs: 15, measureMs: 60, windows: 2 };
const FULL: Plan = { warmupMs: 300, measureMs: 2_000, windows: 10 };

const SUITES: readonly SuiteName[] = ['intl', 'sm'];
const SIZES: readonly { label: string; bytes: number }[] = [
  { label: '64 B', bytes: 64 },
  { label: '256 B', bytes: 256 },
  { label: '1 KiB', bytes: 1024 },
  { label: '16 KiB', bytes: 16 * 1024 },
];
const CIPHERS: Record<SuiteName, { name: string; node: CipherGCMTypes }> = {
  intl: { name: 'AES-128-GCM', node: 'aes-128-gcm' },
  sm: { name: 'SM4-GCM', node: 'sm4-gcm' as CipherGCMTypes },
};
/** Distinct payloads cycled through (a power of two). */
const POOL = 64;
const SLICE_MS = 50;
/** The clock is read about this often inside a slice. */
const CLOCK_CHECK_US = 200;

const COLUMNS: readonly Column[] = [
  { key: 'cipher', label: 'cipher' },
  { key: 'channelBytes', label: 'frame B' },
  { key: 'rawBytes', label: 'raw B' },
  { key: 'channelOps', label: 'channel ops/s' },
  { key: 'channelUs', label: 'channel µs/op', digits: 2 },
  { key: 'rawOps', label: 'raw ops/s' },
  { key: 'rawUs', label: 'raw µs/op', digits: 2 },
  { key: 'ratio', label: 'channel × raw', digits: 2 },
  { key: 'ratioSpread', label: 'ratio p10–p90' },
  { key: 'channelMiBs', label: 'channel MiB/s', digits: 1 },
  { key: 'cpuPct', label: 'process CPU %' },
  { key: 'handshakes', label: 'handshakes/s' },
  { key: 'handshakeUs', label: 'µs/handshake', digits: 0 },
  { key: 'handshakeFailures', label: 'failed handshakes' },
];

const yieldToLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

/** Runs `batch(k)` for about `ms` of busy time in 50 ms slices; operations done and busy ms. */
async function runFor(batch: (n: number) => void, ms: number, k: number): Promise<{ ops: number; ms: number }> {
  let ops = 0;
  let busy = 0;
  while (busy < ms) {
    const start = performance.now();
    const end = start + Math.min(SLICE_MS, ms - busy);
    let now = start;
    while (now < end) {
      batch(k);
      ops += k;
      now = performance.now();
    }
    busy += now - start;
    await yieldToLoop();
  }
  return { ops, ms: busy };
}

/** Operations between clock reads, from a warm-up of `batch`. */
async function warmUp(batch: (n: number) => void, plan: Plan): Promise<number> {
  const warm = await runFor(batch, plan.warmupMs, 1);
  return Math.max(1, Math.min(4_096, Math.floor((CLOCK_CHECK_US / 1000) * (warm.ops / warm.ms))));
}

/** Operations per second of busy time after a warm-up (which also sizes the batches between clock reads). */
async function rate(batch: (n: number) => void, plan: Plan): Promise<number> {
  const k = await warmUp(batch, plan);
  const r = await runFor(batch, plan.measureMs, k);
  return (r.ops * 1000) / r.ms;
}

interface Paired {
  aOps: number;
  bOps: number;
  /** b's rate ÷ a's rate per window pair, sorted. */
  ratios: number[];
  /** Process CPU (user + system) over the measurement ÷ its wall time; 100 = one core. */
  cpuPct: number;
}

/** Rates of two batches measured in alternating windows: noise from other work hits both alike. */
async function paired(a: (n: number) => void, b: (n: number) => void, plan: Plan): Promise<Paired> {
  const ka = await warmUp(a, plan);
  const kb = await warmUp(b, plan);
  const total = { a: { ops: 0, ms: 0 }, b: { ops: 0, ms: 0 } };
  const ratios: number[] = [];
  const cpu0 = process.cpuUsage();
  const wall0 = performance.now();
  for (let w = 0; w < plan.windows; w++) {
    const ra = await runFor(a, plan.measureMs / plan.windows, ka);
    const rb = await runFor(b, plan.measureMs / plan.windows, kb);
    total.a.ops += ra.ops;
    total.a.ms += ra.ms;
    total.b.ops += rb.ops;
    total.b.ms += rb.ms;
    ratios.push(rb.ops / rb.ms / (ra.ops / ra.ms));
  }
  const cpu = process.cpuUsage(cpu0);
  return {
    aOps: (total.a.ops * 1000) / total.a.ms,
    bOps: (total.b.ops * 1000) / total.b.ms,
    ratios: ratios.sort((x, y) => x - y),
    cpuPct: ((cpu.user + cpu.system) / 1000 / (performance.now() - wall0)) * 100,
  };
}

const quantile = (sorted: number[], q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;

/**
 * A key pair whose private key is exactly 32 bytes: node's ECDH#getPrivateKey drops leading zero bytes,
 * so about 1 key in 256 comes out shorter and the channel refuses it ('a private key is 32 bytes').
 */
function platformKeyPair(suite: SuiteName): ChannelKeyPair {
  const pair = generateChannelKeyPair(suite);
  if (pair.privateKey.length === 32) return pair;
  return { ...pair, privateKey: Buffer.concat([Buffer.alloc(32 - pair.privateKey.length), pair.privateKey]) };
}

/** A handshake refused because one side drew a short ephemeral private key (see platformKeyPair). */
const shortKey = (error: unknown) =>
  error instanceof SecureChannelError && error.message === 'a private key is 32 bytes';

/** A session pair, trying again after a short ephemeral key (counted by the handshake rows, not here). */
function sessionPair(suite: SuiteName, deviceId: string, secret: string, platformKey: ChannelKeyPair) {
  for (let attempt = 1; ; attempt++) {
    try {
      return handshake(suite, deviceId, secret, platformKey);
    } catch (error) {
      if (!shortKey(error) || attempt >= 10) throw error;
    }
  }
}

function handshake(suite: SuiteName, deviceId: string, secret: string, platformKey: ChannelKeyPair) {
  const { hello, ephemeral } = createHello({ suite, deviceId, secret });
  const { reply, session: platform } = acceptHello({ hello: parseHandshakeMessage(hello), secret, platformKey });
  const device = completeHandshake({
    suite,
    deviceId,
    secret,
    hello,
    ephemeral,
    reply,
    platformPublicKey: platformKey.publicKey,
  });
  return { device, platform };
}

function rawSeal(cipher: CipherGCMTypes, key: Buffer, plaintext: Buffer): Buffer {
  const nonce = randomBytes(12);
  const c = createCipheriv(cipher, key, nonce, { authTagLength: 16 });
  return Buffer.concat([nonce, c.update(plaintext), c.final(), c.getAuthTag()]);
}

function rawOpen(cipher: CipherGCMTypes, key: Buffer, sealed: Buffer): Buffer {
  const d = createDecipheriv(cipher, key, sealed.subarray(0, 12), { authTagLength: 16 });
  d.setAuthTag(sealed.subarray(sealed.length - 16));
  return Buffer.concat([d.update(sealed.subarray(12, sealed.length - 16)), d.final()]);
}

const round2 = (x: number) => Math.round(x * 100) / 100;

async function sizeCase(
  suite: SuiteName,
  size: { label: string; bytes: number },
  pair: { device: SecureChannelSession; platform: SecureChannelSession },
  plan: Plan,
): Promise<CaseResult> {
  const label = `${suite}, ${size.label}`;
  try {
    const payloads = Array.from({ length: POOL }, () => randomBytes(size.bytes));
    const cipher = CIPHERS[suite].node;
    const key = randomBytes(16);
    let i = 0;
    let last: Buffer = Buffer.alloc(0);
    let expected: Buffer = Buffer.alloc(0);
    const check = (what: string) => {
      if (!last.equals(expected)) throw new Error(`${what}: opened payload differs from the sealed one`);
    };
    const channel = (n: number) => {
      for (let j = 0; j < n; j++) {
        expected = payloads[i++ & (POOL - 1)]!;
        last = pair.platform.open(pair.device.seal(expected));
      }
    };
    const raw = (n: number) => {
      for (let j = 0; j < n; j++) {
        expected = payloads[i++ & (POOL - 1)]!;
        last = rawOpen(cipher, key, rawSeal(cipher, key, expected));
      }
    };
    channel(1);
    check('channel');
    const channelBytes = pair.device.seal(payloads[0]!).length;
    // That frame was never opened: the platform's replay window takes it as a gap, as on a lossy link.
    raw(1);
    check('raw');
    const rawBytes = rawSeal(cipher, key, payloads[0]!).length;
    // raw's rate ÷ channel's rate = channel µs ÷ raw µs.
    const result = await paired(channel, raw, plan);
    check('raw');
    channel(1);
    check('channel');
    const { aOps: channelOps, bOps: rawOps } = result;
    return {
      measure: 'secure-channel',
      case: label,
      ok: true,
      metrics: {
        cipher: CIPHERS[suite].name,
        channelBytes,
        rawBytes,
        channelOps,
        channelUs: 1e6 / channelOps,
        rawOps,
        rawUs: 1e6 / rawOps,
        ratio: round2(rawOps / channelOps),
        ratioSpread: `${quantile(result.ratios, 0.1).toFixed(2)}–${quantile(result.ratios, 0.9).toFixed(2)}`,
        channelMiBs: (channelOps * size.bytes) / 2 ** 20,
        cpuPct: result.cpuPct,
        handshakes: null,
        handshakeUs: null,
        handshakeFailures: null,
      },
      details: {
        payloadBytes: size.bytes,
        windowRatios: result.ratios.map(round2),
        sendEpoch: pair.device.sendEpoch,
        receiveEpoch: pair.platform.receiveEpoch,
      },
    };
  } catch (error) {
    return { measure: 'secure-channel', case: label, ok: false, error: (error as Error).message, metrics: {} };
  }
}

async function handshakeCase(
  suite: SuiteName,
  deviceId: string,
  secret: string,
  platformKey: ChannelKeyPair,
  plan: Plan,
): Promise<CaseResult> {
  const label = `${suite}, handshake`;
  try {
    const check = () => {
      const { device, platform } = sessionPair(suite, deviceId, secret, platformKey);
      const probe = randomBytes(32);
      if (!platform.open(device.seal(probe)).equals(probe)) throw new Error('the handshake keys do not agree');
    };
    check();
    // Refusals for a short ephemeral key are counted, not hidden; any other error fails the case.
    let attempts = 0;
    let failures = 0;
    const attemptsPerSecond = await rate((n) => {
      for (let j = 0; j < n; j++) {
        attempts++;
        try {
          handshake(suite, deviceId, secret, platformKey);
        } catch (error) {
          if (!shortKey(error)) throw error;
          failures++;
        }
      }
    }, plan);
    check();
    // Warm-up included: the share of refused attempts, applied to the measured rate.
    const perSecond = attemptsPerSecond * (1 - failures / attempts);
    return {
      measure: 'secure-channel',
      case: label,
      ok: true,
      metrics: {
        cipher: CIPHERS[suite].name,
        channelBytes: null,
        rawBytes: null,
        channelOps: null,
        channelUs: null,
        rawOps: null,
        rawUs: null,
        ratio: null,
        ratioSpread: null,
        channelMiBs: null,
        cpuPct: null,
        handshakes: perSecond,
        handshakeUs: 1e6 / perSecond,
        handshakeFailures: failures,
      },
      details: { attempts, failures, failureReason: failures > 0 ? 'a private key is 32 bytes' : null },
    };
  } catch (error) {
    return { measure: 'secure-channel', case: label, ok: false, error: (error as Error).message, metrics: {} };
  }
}

export const secureChannelMeasure: Measure = {
  name: 'secure-channel',
  description:
    'Secure channel (CHAN-3) seal on the device session + open on the platform session, one message one way, against raw node:crypto AEAD of the same cipher (fresh random nonce, no AAD); handshake = createHello + acceptHello + completeHandshake, both sides in one thread',
  columns: COLUMNS,
  async run(context: MeasureContext) {
    const plan = context.quick ? QUICK : FULL;
    const deviceId = `01${randomBytes(11).toString('hex')}`;
    const secret = randomBytes(24).toString('base64url');
    const results: CaseResult[] = [];
    for (const suite of SUITES) {
      context.progress(`secure-channel: ${suite}`);
      const platformKey = platformKeyPair(suite);
      const pair = sessionPair(suite, deviceId, secret, platformKey);
      for (const size of SIZES) results.push(await sizeCase(suite, size, pair, plan));
      results.push(await handshakeCase(suite, deviceId, secret, platformKey, plan));
    }
    return results;
  },
};
