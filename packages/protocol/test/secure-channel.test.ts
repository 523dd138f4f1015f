import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import {
  acceptHello,
  type ChannelKeyPair,
  channelEcdh,
  channelPsk,
  channelPublicKey,
  completeHandshake,
  createHello,
  generateChannelKeyPair,
  parseFrameHeader,
  parseHandshakeMessage,
  ratchetChannelKey,
  SecureChannelError,
  type SecureChannelRefusal,
  type SecureChannelSession,
  type SessionOptions,
  type SuiteName,
} from '../src/index.ts';

// Known-answer vectors of docs/protocol.md ("Secure channel"). Regenerate with
// CASTELLAN_UPDATE_VECTORS=1 after a deliberate format change (then re-run scripts/check-protocol-vectors.py).
const VECTORS_URL = new URL('../vectors/secure-channel.json', import.meta.url);

const FIXED = {
  deviceId: '01abcdef1234560a1b2c3d00',
  secret: Buffer.from([...Array(32).keys()]).toString('base64url'),
  helloTs: 1748779200000,
  replyTs: 1748779200250,
  deviceEphemeralPrivate: Buffer.alloc(32, 0x11),
  platformStaticPrivate: Buffer.alloc(32, 0x22),
  platformEphemeralPrivate: Buffer.alloc(32, 0x33),
  rotateAfterFrames: 2,
};

const pairOf = (suite: SuiteName, privateKey: Buffer): ChannelKeyPair => ({
  privateKey,
  publicKey: channelPublicKey(suite, privateKey),
});

interface FrameVector {
  direction: 'device-to-platform' | 'platform-to-device';
  epoch: number;
  seq: number;
  ts: number;
  key: string;
  plaintext_utf8: string;
  frame: string;
}

function buildVectors(suite: SuiteName) {
  const options: SessionOptions = { rotateAfterFrames: FIXED.rotateAfterFrames };
  const deviceEphemeral = pairOf(suite, FIXED.deviceEphemeralPrivate);
  const platformStatic = pairOf(suite, FIXED.platformStaticPrivate);
  const platformEphemeral = pairOf(suite, FIXED.platformEphemeralPrivate);
  const { hello } = createHello({
    suite,
    deviceId: FIXED.deviceId,
    secret: FIXED.secret,
    now: FIXED.helloTs,
    ephemeral: deviceEphemeral,
  });
  const accepted = acceptHello({
    hello: parseHandshakeMessage(hello),
    secret: FIXED.secret,
    platformKey: platformStatic,
    now: FIXED.replyTs,
    ephemeral: platformEphemeral,
    options,
  });
  const device = completeHandshake({
    suite,
    deviceId: FIXED.deviceId,
    secret: FIXED.secret,
    hello,
    ephemeral: deviceEphemeral,
    reply: accepted.reply,
    platformPublicKey: platformStatic.publicKey,
    now: FIXED.replyTs + 50,
    options,
  });
  const platform = accepted.session;
  const psk = channelPsk(suite, FIXED.secret);
  // The session keys, recomputed here from the documented key schedule (the session keeps them private).
  const z1 = channelEcdh(suite, deviceEphemeral.privateKey, platformStatic.publicKey);
  const z2 = channelEcdh(suite, deviceEphemeral.privateKey, platformEphemeral.publicKey);
  const frames: FrameVector[] = [];
  const send = (from: SecureChannelSession, to: SecureChannelSession, text: string, ts: number) => {
    const frame = from.seal(Buffer.from(text), ts);
    const header = parseFrameHeader(frame);
    assert.equal(to.open(frame, ts + 20).toString(), text);
    frames.push({
      direction: header.direction,
      epoch: header.epoch,
      seq: Number(header.seq),
      ts,
      key: '',
      plaintext_utf8: text,
      frame: frame.toString('hex'),
    });
  };
  send(device, platform, '{"temperature":21.5}', FIXED.helloTs + 1000);
  send(platform, device, '{"accepted":true}', FIXED.helloTs + 1100);
  send(device, platform, '{"temperature":21.6}', FIXED.helloTs + 2000);
  send(device, platform, '{"temperature":21.7}', FIXED.helloTs + 3000); // epoch 1: rotateAfterFrames = 2
  return { psk, z1, z2, hello, reply: accepted.reply, frames, platformStatic, deviceEphemeral, platformEphemeral };
}

function vectorsFor(suite: SuiteName) {
  const v = buildVectors(suite);
  return {
    suite,
    deviceId: FIXED.deviceId,
    secret_utf8: FIXED.secret,
    helloTs: FIXED.helloTs,
    replyTs: FIXED.replyTs,
    rotateAfterFrames: FIXED.rotateAfterFrames,
    deviceEphemeralPrivate: v.deviceEphemeral.privateKey.toString('hex'),
    deviceEphemeralPublic: v.deviceEphemeral.publicKey.toString('hex'),
    platformStaticPrivate: v.platformStatic.privateKey.toString('hex'),
    platformStaticPublic: v.platformStatic.publicKey.toString('hex'),
    platformEphemeralPrivate: v.platformEphemeral.privateKey.toString('hex'),
    platformEphemeralPublic: v.platformEphemeral.publicKey.toString('hex'),
    psk: v.psk.toString('hex'),
    hello: v.hello.toString('hex'),
    z1: v.z1.toString('hex'),
    z2: v.z2.toString('hex'),
    reply: v.reply.toString('hex'),
    frames: v.frames,
  };
}

/** Frame keys: direction key of epoch 0, ratcheted per epoch (recomputed from the documented schedule). */
function withKeys(suite: SuiteName, vector: ReturnType<typeof vectorsFor>, okm: { d2p: Buffer; p2d: Buffer }) {
  for (const frame of vector.frames) {
    let key = frame.direction === 'device-to-platform' ? okm.d2p : okm.p2d;
    for (let e = 0; e < frame.epoch; e++) key = ratchetChannelKey(suite, key);
    frame.key = key.toString('hex');
  }
  return vector;
}

async function sessionKeys(suite: SuiteName, v: ReturnType<typeof vectorsFor>) {
  const { createHash, hkdfSync } = await import('node:crypto');
  const hash = suite === 'intl' ? 'sha256' : 'sm3';
  const hello = Buffer.from(v.hello, 'hex');
  const replyBody = Buffer.from(v.reply, 'hex').subarray(0, 88);
  const th = createHash(hash).update(hello).update(replyBody).digest();
  const okm = Buffer.from(
    hkdfSync(
      hash,
      Buffer.concat([Buffer.from(v.z1, 'hex'), Buffer.from(v.z2, 'hex')]),
      Buffer.from(v.psk, 'hex'),
      Buffer.concat([Buffer.from('castellan secure channel v1'), th]),
      64,
    ),
  );
  return { d2p: okm.subarray(0, 16), p2d: okm.subarray(16, 32), th, confirmKey: okm.subarray(32) };
}

const SUITES: SuiteName[] = ['intl', 'sm'];

async function expectedVectors() {
  const out: Record<string, unknown> = {
    description:
      'Known-answer vectors of the secure channel (docs/protocol.md, "Secure channel"). Hex unless the name ends in ' +
      '_utf8; timestamps in ms since the epoch. Checked by packages/protocol/test/secure-channel.test.ts and, for the ' +
      'intl suite, by scripts/check-protocol-vectors.py.',
  };
  for (const suite of SUITES) {
    const v = vectorsFor(suite);
    const keys = await sessionKeys(suite, v);
    out[suite] = {
      ...withKeys(suite, v, keys),
      transcriptHash: keys.th.toString('hex'),
      deviceToPlatformKey: keys.d2p.toString('hex'),
      platformToDeviceKey: keys.p2d.toString('hex'),
      confirmKey: keys.confirmKey.toString('hex'),
    };
  }
  return out;
}

interface Pair {
  device: SecureChannelSession;
  platform: SecureChannelSession;
}

const T0 = 1_800_000_000_000;

function handshake(
  suite: SuiteName,
  options: SessionOptions = {},
  deviceId = FIXED.deviceId,
  deviceOptions: SessionOptions = options,
): Pair {
  const now = T0;
  const platformKey = generateChannelKeyPair(suite);
  const { hello, ephemeral } = createHello({ suite, deviceId, secret: 'device secret', now });
  const { reply, session } = acceptHello({
    hello: parseHandshakeMessage(hello),
    secret: 'device secret',
    platformKey,
    now,
    options,
  });
  const device = completeHandshake({
    suite,
    deviceId,
    secret: 'device secret',
    hello,
    ephemeral,
    reply,
    platformPublicKey: platformKey.publicKey,
    now,
    options: deviceOptions,
  });
  return { device, platform: session };
}

function refusal(fn: () => unknown): SecureChannelRefusal {
  try {
    fn();
  } catch (error) {
    assert.ok(error instanceof SecureChannelError, `not a SecureChannelError: ${String(error)}`);
    return error.reason;
  }
  assert.fail('expected a refusal');
}

describe('secure channel known-answer vectors', () => {
  test('[CHAN-3] vectors/secure-channel.json is reproduced exactly for both suites', async () => {
    const expected = await expectedVectors();
    if (process.env.CASTELLAN_UPDATE_VECTORS === '1') {
      writeFileSync(VECTORS_URL, `${JSON.stringify(expected, null, 2)}\n`);
    }
    const stored = JSON.parse(readFileSync(VECTORS_URL, 'utf8')) as Record<string, ReturnType<typeof vectorsFor>>;
    assert.deepEqual(stored, expected);
    for (const suite of SUITES) {
      const v = stored[suite]!;
      assert.equal(v.frames.filter((f: FrameVector) => f.epoch === 1).length, 1, 'one frame after rotation');
      assert.equal(
        channelPublicKey(suite, Buffer.from(v.platformStaticPrivate, 'hex')).toString('hex'),
        v.platformStaticPublic,
      );
    }
  });

  test('[CHAN-3] the session opens a frame from the stored hex and refuses it a second time', () => {
    const v = JSON.parse(readFileSync(VECTORS_URL, 'utf8')).intl;
    const options = { rotateAfterFrames: v.rotateAfterFrames };
    const platformKey = pairOf('intl', Buffer.from(v.platformStaticPrivate, 'hex'));
    const { session } = acceptHello({
      hello: parseHandshakeMessage(Buffer.from(v.hello, 'hex')),
      secret: v.secret_utf8,
      platformKey,
      now: v.replyTs,
      ephemeral: pairOf('intl', Buffer.from(v.platformEphemeralPrivate, 'hex')),
      options,
    });
    const first = Buffer.from(v.frames[0].frame, 'hex');
    assert.equal(session.open(first, v.frames[0].ts).toString(), v.frames[0].plaintext_utf8);
    assert.equal(
      refusal(() => session.open(first, v.frames[0].ts)),
      'replayed',
    );
  });
});

describe('secure channel handshake', () => {
  test('[CHAN-3] intl: a generated private key whose top byte is zero is still 32 bytes and handshakes (getPrivateKey drops leading zeros)', () => {
    // About 1 key in 256 has a zero top byte; 5,000 draws miss one with probability ~3e-9.
    let found: ChannelKeyPair | undefined;
    for (let i = 0; i < 5_000 && !found; i++) {
      const pair = generateChannelKeyPair('intl');
      assert.equal(pair.privateKey.length, 32);
      if (pair.privateKey[0] === 0) found = pair;
    }
    assert.ok(found, 'a key with a zero top byte');
    assert.deepEqual(channelPublicKey('intl', found.privateKey), found.publicKey);
    const platformKey = generateChannelKeyPair('intl');
    const { hello, ephemeral } = createHello({
      suite: 'intl',
      deviceId: FIXED.deviceId,
      secret: 's1',
      now: T0,
      ephemeral: found,
    });
    const { reply, session } = acceptHello({ hello: parseHandshakeMessage(hello), secret: 's1', platformKey, now: T0 });
    const device = completeHandshake({
      suite: 'intl',
      deviceId: FIXED.deviceId,
      secret: 's1',
      hello,
      ephemeral,
      reply,
      platformPublicKey: platformKey.publicKey,
      now: T0,
    });
    assert.deepEqual(session.open(device.seal(Buffer.from('hi'), T0), T0), Buffer.from('hi'));
  });

  for (const suite of SUITES) {
    test(`[CHAN-3] ${suite}: a wrong secret, a wrong platform key and a stale hello are refused`, () => {
      const platformKey = generateChannelKeyPair(suite);
      const { hello, ephemeral } = createHello({ suite, deviceId: FIXED.deviceId, secret: 's1', now: T0 });
      const parsed = parseHandshakeMessage(hello);
      assert.equal(parsed.deviceId, FIXED.deviceId);
      assert.equal(parsed.suite, suite);
      assert.equal(
        refusal(() => acceptHello({ hello: parsed, secret: 's2', platformKey, now: T0 })),
        'forged',
      );
      assert.equal(
        refusal(() => acceptHello({ hello: parsed, secret: 's1', platformKey, now: T0 + 300_001 })),
        'stale',
      );
      const { reply } = acceptHello({ hello: parsed, secret: 's1', platformKey, now: T0 });
      const base = { suite, deviceId: FIXED.deviceId, secret: 's1', hello, ephemeral, reply, now: T0 };
      // An impostor without the pinned static key cannot produce the confirmation.
      const impostor = generateChannelKeyPair(suite).publicKey;
      assert.equal(
        refusal(() => completeHandshake({ ...base, platformPublicKey: impostor })),
        'forged',
      );
      assert.equal(
        refusal(() => completeHandshake({ ...base, secret: 's2', platformPublicKey: platformKey.publicKey })),
        'forged',
      );
      assert.equal(
        refusal(() =>
          completeHandshake({
            ...base,
            deviceId: '01abcdef1234560a1b2c3d01',
            platformPublicKey: platformKey.publicKey,
          }),
        ),
        'wrong-device',
      );
      const device = completeHandshake({ ...base, platformPublicKey: platformKey.publicKey });
      assert.equal(device.suite, suite);
      // A correctly MACed hello whose public key is not a curve point is refused as malformed, not thrown raw.
      const notOnCurve = Buffer.concat([Buffer.from([4]), Buffer.alloc(64, 0x01)]);
      const bad = createHello({
        suite,
        deviceId: FIXED.deviceId,
        secret: 's1',
        now: T0,
        ephemeral: { privateKey: ephemeral.privateKey, publicKey: notOnCurve },
      });
      assert.equal(
        refusal(() => acceptHello({ hello: parseHandshakeMessage(bad.hello), secret: 's1', platformKey, now: T0 })),
        'malformed',
      );
    });
  }
});

describe('secure channel frames', () => {
  for (const suite of SUITES) {
    test(`[CHAN-3] ${suite}: open(seal(x)) = x in both directions`, () => {
      const { device, platform } = handshake(suite, { rotateAfterFrames: 7 });
      let now = T0;
      fc.assert(
        fc.property(fc.uint8Array({ maxLength: 512 }), fc.boolean(), (bytes, up) => {
          now += 10;
          const [from, to] = up ? [device, platform] : [platform, device];
          assert.deepEqual(to.open(from.seal(bytes, now), now), Buffer.from(bytes));
        }),
        { numRuns: 200 },
      );
      assert.ok(device.sendEpoch > 3, 'keys rotated along the way');
    });

    test(`[CHAN-3] [CHAN-4] ${suite}: any single-bit flip is refused with a reason`, () => {
      const { device, platform } = handshake(suite);
      const frame = device.seal(Buffer.from('{"temperature":21.5}'), T0);
      fc.assert(
        fc.property(fc.nat({ max: frame.length * 8 - 1 }), (bit) => {
          const copy = Buffer.from(frame);
          copy[bit >> 3] = (copy[bit >> 3] ?? 0) ^ (1 << (bit & 7));
          refusal(() => platform.open(copy, T0));
        }),
        { numRuns: 500 },
      );
      // The intact frame still opens: no refused frame moved the window.
      assert.equal(platform.open(frame, T0).toString(), '{"temperature":21.5}');
    });

    test(`[CHAN-3] ${suite}: random bytes never crash the parsers`, () => {
      const { platform } = handshake(suite);
      const header = device35(suite);
      fc.assert(
        fc.property(
          fc.oneof(
            fc.uint8Array({ maxLength: 200 }),
            fc.uint8Array({ minLength: 16, maxLength: 120 }).map((tail) => Buffer.concat([header, tail])),
            fc.uint8Array({ minLength: 120, maxLength: 120 }),
          ),
          (bytes) => {
            refusal(() => platform.open(bytes, T0));
            try {
              parseHandshakeMessage(bytes);
            } catch (error) {
              assert.ok(error instanceof SecureChannelError);
            }
          },
        ),
        { numRuns: 1000 },
      );
      assert.equal(
        refusal(() => platform.open('not bytes' as unknown as Uint8Array, T0)),
        'malformed',
      );
    });
  }

  test('[CHAN-3] replayed, reordered-beyond-window, stale and forged frames are refused; reordering within the window is fine', () => {
    const { device, platform } = handshake('intl', { rotateAfterFrames: 10_000 });
    const frames = Array.from({ length: 80 }, (_, i) => device.seal(Buffer.from(`m${i}`), T0 + i));
    assert.equal(platform.open(frames[5]!, T0).toString(), 'm5');
    assert.equal(
      refusal(() => platform.open(frames[5]!, T0)),
      'replayed',
    );
    assert.equal(platform.open(frames[2]!, T0).toString(), 'm2', 'out of order inside the window');
    assert.equal(
      refusal(() => platform.open(frames[2]!, T0)),
      'replayed',
    );
    assert.equal(platform.open(frames[70]!, T0).toString(), 'm70');
    assert.equal(
      refusal(() => platform.open(frames[6]!, T0)),
      'too-old',
      '64 behind: outside the window',
    );
    assert.equal(platform.open(frames[7]!, T0).toString(), 'm7', '63 behind: still inside');
    assert.equal(
      refusal(() => platform.open(frames[71]!, T0 + 300_072)),
      'stale',
    );
    assert.equal(
      refusal(() => platform.open(frames[71]!, T0 - 300_000)),
      'stale',
    );
    const forged = Buffer.from(frames[72]!);
    forged[forged.length - 1] = (forged[forged.length - 1] ?? 0) ^ 0x80;
    assert.equal(
      refusal(() => platform.open(forged, T0)),
      'forged',
    );
    // Refusals left the window untouched: the genuine frames still open.
    assert.equal(platform.open(frames[71]!, T0).toString(), 'm71');
    assert.equal(platform.open(frames[72]!, T0).toString(), 'm72');
    // A frame sent back to its sender is refused (directions never share keys or types).
    assert.equal(
      refusal(() => device.open(frames[73]!, T0)),
      'malformed',
    );
  });

  test('[CHAN-4] a frame of another device is refused as cross-device, rewritten IDs do not authenticate', () => {
    const a = handshake('intl', {}, '01abcdef1234560a1b2c3d00');
    const b = handshake('intl', {}, '01abcdef1234560a1b2c3d01');
    const fromB = b.device.seal(Buffer.from('{"unlock":true}'), T0);
    assert.equal(
      refusal(() => a.platform.open(fromB, T0)),
      'wrong-device',
    );
    // Rewriting B's frame to carry A's ID: the ID is in the AAD, so it no longer authenticates anywhere.
    const rewritten = Buffer.from(fromB);
    Buffer.from('01abcdef1234560a1b2c3d00', 'hex').copy(rewritten, 3);
    assert.equal(
      refusal(() => a.platform.open(rewritten, T0)),
      'forged',
    );
    assert.equal(
      refusal(() => b.platform.open(rewritten, T0)),
      'wrong-device',
    );
    assert.equal(b.platform.open(fromB, T0).toString(), '{"unlock":true}');
  });

  test('[CHAN-3] keys rotate mid-stream after N frames and after T ms; the old epoch has a short grace window', () => {
    const options = { rotateAfterFrames: 3, rotateAfterMs: 60_000, graceMs: 5_000 };
    const { device, platform } = handshake('sm', options);
    const seal = (text: string, ts: number) => device.seal(Buffer.from(text), ts);
    const e0 = [seal('a', T0), seal('b', T0), seal('c', T0)];
    const e1first = seal('d', T0 + 1);
    assert.equal(parseFrameHeader(e1first).epoch, 1, 'rotated after 3 frames');
    assert.equal(platform.open(e0[0]!, T0).toString(), 'a');
    assert.equal(platform.open(e1first, T0 + 1).toString(), 'd');
    assert.equal(platform.receiveEpoch, 1);
    assert.equal(platform.open(e0[1]!, T0 + 5_001).toString(), 'b', 'previous epoch within grace');
    assert.equal(
      refusal(() => platform.open(e0[2]!, T0 + 5_002)),
      'expired-epoch',
      'after grace',
    );
    // Time-based rotation: a minute later the next frame is in epoch 2.
    const late = seal('e', T0 + 61_000);
    assert.equal(parseFrameHeader(late).epoch, 2);
    assert.equal(platform.open(late, T0 + 61_000).toString(), 'e');
    // Frames two epochs ahead cannot be opened (no skipping the ratchet).
    const ahead = Buffer.from(late);
    ahead.writeUInt32BE(4, 15);
    assert.equal(
      refusal(() => platform.open(ahead, T0 + 61_000)),
      'unknown-epoch',
    );
    // A sender that keeps its key past the budget is refused (dynamic keys are enforced by the receiver).
    const lax = handshake('intl', { rotateAfterFrames: 2 }, FIXED.deviceId, { rotateAfterFrames: 1_000_000 });
    const strict = lax.platform;
    const frames = [0, 1, 2].map((i) => lax.device.seal(Buffer.from(`x${i}`), T0));
    assert.equal(parseFrameHeader(frames[2]!).epoch, 0, 'the lax sender did not rotate');
    assert.equal(strict.open(frames[0]!, T0).toString(), 'x0');
    assert.equal(strict.open(frames[1]!, T0).toString(), 'x1');
    assert.equal(
      refusal(() => strict.open(frames[2]!, T0)),
      'key-expired',
    );
  });
});

/** A 35-byte device→platform header of the fixed device, for the fuzzer's structured inputs. */
function device35(suite: SuiteName): Buffer {
  const b = Buffer.alloc(35);
  b[0] = 1;
  b[1] = 3;
  b[2] = suite === 'intl' ? 1 : 2;
  Buffer.from(FIXED.deviceId, 'hex').copy(b, 3);
  b.writeBigUInt64BE(BigInt(T0), 27);
  return b;
}
