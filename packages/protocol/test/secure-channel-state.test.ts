// Session state export/import (CHAN-3): a platform keeps sessions in its database between frames and
// serves consecutive frames from different processes, so a session rebuilt from exportState() must
// behave exactly like the one that was never serialised: same frames, same refusals, same rotation.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  acceptHello,
  channelPsk,
  completeHandshake,
  createHello,
  generateChannelKeyPair,
  parseHandshakeMessage,
  SecureChannelError,
  SecureChannelSession,
  type SecureChannelSessionState,
  type SessionOptions,
  type SuiteName,
} from '../src/index.ts';

const DEVICE = '01abcdef1234560a1b2c3d00';
const SECRET = Buffer.from([...Array(32).keys()]).toString('base64url');
const T0 = 1_748_779_200_000;

function pair(suite: SuiteName, options: SessionOptions = {}) {
  const platformKey = generateChannelKeyPair(suite);
  const { hello, ephemeral } = createHello({ suite, deviceId: DEVICE, secret: SECRET, now: T0 });
  const { reply, session: platform } = acceptHello({
    hello: parseHandshakeMessage(hello),
    secret: SECRET,
    platformKey,
    now: T0,
    options,
  });
  const device = completeHandshake({
    suite,
    deviceId: DEVICE,
    secret: SECRET,
    hello,
    ephemeral,
    reply,
    platformPublicKey: platformKey.publicKey,
    now: T0,
    options,
  });
  return { platform, device, hello, platformKey };
}

/** Through JSON, as a database column would carry it. */
const roundTrip = (session: SecureChannelSession) =>
  SecureChannelSession.fromState(JSON.parse(JSON.stringify(session.exportState())) as SecureChannelSessionState);

const reasonOf = (fn: () => unknown): string => {
  try {
    fn();
  } catch (error) {
    assert.ok(error instanceof SecureChannelError);
    return error.reason;
  }
  return 'accepted';
};

for (const suite of ['intl', 'sm'] as const) {
  describe(`secure channel session state (${suite})`, () => {
    test('[CHAN-3] a session rebuilt from its exported state after every frame seals and opens like the original', () => {
      const { platform, device } = pair(suite, { rotateAfterFrames: 3 });
      let p = platform;
      let d = device;
      // A twin pair never serialised: both must produce byte-identical frames.
      const twin = pair(suite, { rotateAfterFrames: 3 });
      for (let i = 0; i < 10; i++) {
        const now = T0 + 1000 + i;
        const frame = d.seal(Buffer.from(`m${i}`), now);
        p = roundTrip(p);
        assert.equal(p.open(frame, now).toString(), `m${i}`);
        p = roundTrip(p);
        const answer = p.seal(Buffer.from(`a${i}`), now);
        d = roundTrip(d);
        assert.equal(d.open(answer, now).toString(), `a${i}`);
        d = roundTrip(d);
        twin.device.seal(Buffer.from('x'), now);
      }
      // Ten frames with rotateAfterFrames 3: both directions moved to epoch 3 across the round trips.
      assert.equal(d.sendEpoch, 3);
      assert.equal(p.receiveEpoch, 3);
      assert.equal(p.sendEpoch, 3);
      assert.equal(twin.device.sendEpoch, 3);
    });

    test('[CHAN-3] the replay window, epochs and previous key survive the round trip', () => {
      const { platform, device } = pair(suite, { rotateAfterFrames: 2, graceMs: 10_000 });
      const frames = Array.from({ length: 5 }, (_, i) => device.seal(Buffer.from(`f${i}`), T0 + 10 * i));
      // Accept 0, 1, 3 (epoch 1: the previous key is kept for graceMs), then round trip.
      platform.open(frames[0]!, T0 + 100);
      platform.open(frames[1]!, T0 + 100);
      platform.open(frames[3]!, T0 + 100);
      const restored = roundTrip(platform);
      assert.equal(restored.receiveEpoch, 1);
      assert.equal(
        reasonOf(() => restored.open(frames[1]!, T0 + 200)),
        'replayed',
      );
      assert.equal(
        reasonOf(() => restored.open(frames[3]!, T0 + 200)),
        'replayed',
      );
      // Frame 2 (epoch 1, not yet seen) and frame 4 (epoch 2) still open after the round trip.
      assert.equal(restored.open(frames[2]!, T0 + 200).toString(), 'f2');
      assert.equal(
        roundTrip(restored)
          .open(frames[4]!, T0 + 200)
          .toString(),
        'f4',
      );
      // The exported state is plain JSON: no Buffer or bigint inside.
      const state = restored.exportState();
      assert.deepEqual(JSON.parse(JSON.stringify(state)), state);
      assert.equal(typeof state.top, 'string');
      assert.match(state.receiveKey, /^[0-9a-f]{32}$/);
    });

    test('[CHAN-3] a frame refused after a round trip changes no state, like before it', () => {
      const { platform, device } = pair(suite);
      const frame = device.seal(Buffer.from('once'), T0 + 1);
      platform.open(frame, T0 + 2);
      const before = JSON.stringify(platform.exportState());
      const restored = roundTrip(platform);
      const forged = Buffer.from(device.seal(Buffer.from('two'), T0 + 3));
      forged[forged.length - 1]! ^= 0x01;
      assert.equal(
        reasonOf(() => restored.open(forged, T0 + 4)),
        'forged',
      );
      assert.equal(
        reasonOf(() => restored.open(frame, T0 + 4)),
        'replayed',
      );
      assert.equal(JSON.stringify(restored.exportState()), before);
    });
  });
}

test('[CHAN-3] fromState refuses a malformed state with reason malformed', () => {
  const { platform } = pair('intl');
  const good = platform.exportState();
  const cases: Array<Partial<Record<keyof SecureChannelSessionState, unknown>>> = [
    { v: 2 },
    { role: 'peer' },
    { suite: 'rsa' },
    { deviceId: 'xyz' },
    { sendKey: 'zz' },
    { receiveKey: '00' },
    { sendEpoch: -1 },
    { sendSeq: '1.5' },
    { top: '-2' },
    { seen: 'g' },
    { seen: '1'.repeat(17) },
    { options: { ...good.options, rotateAfterFrames: 'many' } },
  ];
  for (const patch of cases) {
    const state = { ...good, ...patch } as SecureChannelSessionState;
    assert.equal(
      reasonOf(() => SecureChannelSession.fromState(state)),
      'malformed',
      JSON.stringify(patch),
    );
  }
});

test('[CHAN-3] acceptHello takes a derived psk instead of the secret, with the same result', () => {
  const platformKey = generateChannelKeyPair('intl');
  const ephemeral = generateChannelKeyPair('intl');
  const { hello } = createHello({ suite: 'intl', deviceId: DEVICE, secret: SECRET, now: T0 });
  const parsed = parseHandshakeMessage(hello);
  const bySecret = acceptHello({ hello: parsed, secret: SECRET, platformKey, ephemeral, now: T0 });
  const byPsk = acceptHello({ hello: parsed, psk: channelPsk('intl', SECRET), platformKey, ephemeral, now: T0 });
  assert.deepEqual(byPsk.reply, bySecret.reply);
  const wrong = channelPsk('intl', 'another secret');
  assert.equal(
    reasonOf(() => acceptHello({ hello: parsed, psk: wrong, platformKey, now: T0 })),
    'forged',
  );
});
