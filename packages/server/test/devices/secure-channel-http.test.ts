// The secure channel over HTTP (CHAN-3, CHAN-4) on both databases: through the plain-HTTP listener a
// device without TLS handshakes against the pinned static key and reaches the device API inside sealed
// frames (telemetry, state, its shadow and commands). Replayed, reordered-beyond-window, stale, forged
// and cross-device frames and replayed hellos are refused with the one 401 and counted by the guard,
// and the harm does not happen; keys rotate mid-stream; a frame sent to two processes at once (two
// concurrent requests, the session in the database) is accepted once; admission is re-checked per frame.
import assert from 'node:assert/strict';
import { request as httpRequest } from 'node:http';
import { after, before, describe, test } from 'node:test';
import { DeviceHttpError, SecureChannelHttpClient } from '@castellan/device';
import {
  completeHandshake,
  createHello,
  generateChannelKeyPair,
  parseFrameHeader,
  SecureChannelError,
  type SecureChannelSession,
  type SuiteName,
} from '@castellan/protocol';
import { startSecureChannelHttpListener } from '../../src/devices/index.ts';
import { dialectCases } from '../helpers/dialects.ts';
import {
  provisionTenant,
  request,
  startTestPlatform,
  type Tenant,
  type TestPlatform,
} from '../helpers/test-platform.ts';

const REFUSED = { code: 'ERR_SECURE_CHANNEL_REFUSED', message: 'Secure channel refused' };
/** Large enough for a 64-frame window inside one epoch, small enough to rotate mid-test. */
const ROTATE_AFTER_FRAMES = 70;
const SESSION_OPTIONS = { rotateAfterFrames: ROTATE_AFTER_FRAMES };

type Device = Tenant['devices'][number];

interface Raw {
  status: number;
  type: string;
  bytes: Buffer;
  json: { error?: { code: string; message: string } } | null;
}

for (const dialect of await dialectCases()) {
  describe(`secure channel over HTTP on ${dialect.name}`, { skip: dialect.skip }, () => {
    let tp: TestPlatform;
    let tenant: Tenant;
    let plainUrl: string;
    let keys: Record<SuiteName, string>;

    before(async () => {
      tp = await startTestPlatform(dialect.name, {
        secureChannel: {
          httpEnabled: true,
          httpHost: '127.0.0.1',
          httpPort: 0,
          rotateAfterFrames: ROTATE_AFTER_FRAMES,
        },
      });
      tenant = await provisionTenant(tp, 14);
      plainUrl = tp.platform.secureChannelHttpUrl!;
      const res = await plain('GET', '/v1/device-api/secure-channel/keys');
      keys = (JSON.parse(res.bytes.toString('utf8')) as { keys: Record<SuiteName, string> }).keys;
    });
    after(() => tp?.close());

    const spare = () => {
      const device = tenant.devices.shift();
      assert.ok(device, 'enough test devices');
      return device;
    };

    async function plain(method: string, path: string, body?: Buffer, contentType = 'application/octet-stream') {
      const res = await fetch(`${plainUrl}${path}`, {
        method,
        ...(body ? { body, headers: { 'content-type': contentType } } : {}),
      });
      const bytes = Buffer.from(await res.arrayBuffer());
      const type = res.headers.get('content-type') ?? '';
      return {
        status: res.status,
        type,
        bytes,
        json: type.startsWith('application/json') ? JSON.parse(bytes.toString('utf8')) : null,
      } as Raw;
    }

    const client = (device: Device, suite: SuiteName = 'intl') =>
      new SecureChannelHttpClient({
        baseUrl: plainUrl,
        deviceId: device.id,
        secret: device.secret,
        platformPublicKey: keys[suite],
        suite,
        sessionOptions: SESSION_OPTIONS,
      });

    /** A handshake done by hand, keeping the session to craft frames with. */
    async function rawSession(device: Device, suite: SuiteName = 'intl') {
      const { hello, ephemeral } = createHello({ suite, deviceId: device.id, secret: device.secret });
      const res = await plain('POST', '/v1/device-api/secure-channel/hello', hello);
      assert.equal(res.status, 200, res.bytes.toString());
      assert.equal(res.type, 'application/octet-stream');
      assert.equal(res.bytes.length, 136, 'reply (120) ‖ session ID (16)');
      const session = completeHandshake({
        suite,
        deviceId: device.id,
        secret: device.secret,
        hello,
        ephemeral,
        reply: res.bytes.subarray(0, 120),
        platformPublicKey: Buffer.from(keys[suite], 'hex'),
        options: SESSION_OPTIONS,
      });
      return { session, sessionId: res.bytes.subarray(120), hello };
    }

    const envelope = (m: string, p: string, b?: unknown) =>
      Buffer.from(JSON.stringify({ m, p, ...(b === undefined ? {} : { b }) }));
    const send = (sessionId: Buffer, frame: Buffer) =>
      plain('POST', '/v1/device-api/secure-channel/request', Buffer.concat([sessionId, frame]));
    const answerOf = (session: SecureChannelSession, res: Raw) => {
      assert.equal(res.status, 200, res.bytes.toString());
      return JSON.parse(session.open(res.bytes).toString('utf8')) as { s: number; b: any };
    };

    const refusals = () => new Map(tp.platform.guard.secureChannelRefusals);
    const counted = (before: Map<string, number>, reason: string) =>
      (tp.platform.guard.secureChannelRefusals.get(reason) ?? 0) - (before.get(reason) ?? 0);
    const assertRefused = (res: Raw, label: string) => {
      assert.equal(res.status, 401, `${label}: ${res.bytes.toString()}`);
      assert.equal(res.json?.error?.code, REFUSED.code, label);
      assert.equal(res.json?.error?.message, REFUSED.message, label);
    };
    const telemetryCount = async (deviceId: string) =>
      Number(
        (await tp.query<{ n: number }>('select count(*) as n from telemetry where device_id = $1', [deviceId]))[0]!.n,
      );
    /** A 202 is answered after the telemetry row is committed (the writer resolves after commit). */
    const flushedCount = telemetryCount;

    test('[CHAN-3] [CHAN-4] over plain HTTP a device handshakes, reports telemetry and state, reads its shadow and commands', async () => {
      const device = spare();
      const keysRes = await plain('GET', '/v1/device-api/secure-channel/keys');
      assert.equal(keysRes.status, 200);
      const published = JSON.parse(keysRes.bytes.toString('utf8'));
      assert.deepEqual(published.keys, tp.platform.secureChannel.publicKeys().keys);
      assert.equal(published.generation, 1);
      assert.match(published.keys.intl, /^04[0-9a-f]{128}$/);
      assert.match(published.keys.sm, /^04[0-9a-f]{128}$/);

      for (const suite of ['intl', 'sm'] as const) {
        const sdk = client(device, suite);
        const sent = await sdk.reportTelemetry({ temperature: suite === 'intl' ? 21.5 : 22.5 });
        assert.equal(sent.status, 202, JSON.stringify(sent.body));
        assert.equal(typeof (sent.body as { receivedAt: number }).receivedAt, 'number');
        const latest = await tp.platform.devices.latestTelemetry(device.id);
        assert.deepEqual(latest?.payload, { temperature: suite === 'intl' ? 21.5 : 22.5 }, `${suite}: it landed`);
      }
      const sdk = client(device);
      const history = await request(tp.platform, 'GET', `/v1/devices/${device.id}/telemetry`, {
        token: tenant.vendorToken,
      });
      assert.equal(history.status, 200, history.text);
      assert.ok(JSON.stringify(history.body).includes('21.5'), 'the telemetry history has it');

      const state = await sdk.reportState({ on: true });
      assert.equal(state.status, 202, JSON.stringify(state.body));
      assert.deepEqual((await tp.platform.shadows.get(device.id)).reported, { on: true });
      const desired = await request(tp.platform, 'PUT', `/v1/devices/${device.id}/shadow/desired`, {
        token: tenant.vendorToken,
        body: { state: { on: false } },
      });
      assert.equal(desired.status, 200, desired.text);
      const shadow = await sdk.request<{ desired: unknown; reported: unknown; delta: unknown }>(
        'GET',
        '/v1/device-api/shadow',
      );
      assert.equal(shadow.status, 200, JSON.stringify(shadow.body));
      assert.deepEqual(shadow.body.desired, { on: false });
      assert.deepEqual(shadow.body.reported, { on: true });
      assert.deepEqual(shadow.body.delta, { on: false });

      // An HTTP-only device is never "online" for the broker: the command is stored as the platform would.
      const commandId = 'cmd_AAAAAAAAAAAAAAAAAAAAAA';
      await tp.platform.store.db
        .insertInto('device_commands')
        .values({
          id: commandId,
          device_id: device.id,
          vendor_id: tenant.vendorId,
          name: 'blink',
          params: JSON.stringify({ times: 3 }),
          status: 'pending',
          result: null,
          error: null,
          issued_by_type: 'vendor',
          issued_by_id: tenant.vendorId,
          issued_at: Date.now(),
          expires_at: Date.now() + 60_000,
          delivered_at: null,
          completed_at: null,
        })
        .execute();
      const commands = await sdk.request<{ commands: Array<{ id: string; name: string; params: unknown }> }>(
        'GET',
        '/v1/device-api/commands',
      );
      assert.equal(commands.status, 200, JSON.stringify(commands.body));
      assert.deepEqual(
        commands.body.commands.map((c) => [c.id, c.name, c.params]),
        [[commandId, 'blink', { times: 3 }]],
      );
      const ack = await sdk.request('POST', '/v1/device-api/acks', { commandId, status: 'succeeded' });
      assert.equal(ack.status, 202, JSON.stringify(ack.body));
      assert.equal((await tp.platform.commands.get(device.id, commandId))?.status, 'succeeded');
      assert.deepEqual((await sdk.request('GET', '/v1/device-api/commands')).body, { commands: [] });
      // A route's own refusal comes back sealed with its status and error body.
      const invalid = await sdk.request<{ error: { code: string } }>('POST', '/v1/device-api/telemetry', [1, 2]);
      assert.equal(invalid.status, 400);
      assert.equal(invalid.body.error.code, 'ERR_VALIDATION_FAILED');
      assert.equal(sdk.handshakes, 1, 'one session served every request');
      const rows = await tp.query<{ n: number }>(
        'select count(*) as n from secure_channel_sessions where device_id = $1',
        [device.id],
      );
      assert.equal(Number(rows[0]!.n), 3, 'one row per session (intl, sm, this one)');
      assert.ok(!tp.logs.text().includes(device.secret), 'the secret is in no log line');
    });

    test('[CHAN-3] a replayed frame is refused with the fixed 401, counted, and stores nothing twice', async () => {
      const device = spare();
      const { session, sessionId } = await rawSession(device);
      const frame = session.seal(envelope('POST', '/v1/device-api/telemetry', { temperature: 1 }));
      const first = await send(sessionId, frame);
      assert.equal(answerOf(session, first).s, 202);
      const before = refusals();
      const count = await flushedCount(device.id);
      assertRefused(await send(sessionId, frame), 'the same frame again');
      assert.equal(counted(before, 'replayed'), 1);
      assert.equal(await flushedCount(device.id), count, 'no second telemetry row');
      // The session goes on.
      const next = session.seal(envelope('GET', '/v1/device-api/time'));
      assert.equal(answerOf(session, await send(sessionId, next)).s, 200);
    });

    test('[CHAN-3] reordering within the window is fine; beyond it the frame is refused as too-old', async () => {
      const device = spare();
      const { session, sessionId } = await rawSession(device);
      const frames = Array.from({ length: 70 }, () => session.seal(envelope('GET', '/v1/device-api/time')));
      assert.equal(answerOf(session, await send(sessionId, frames[69]!)).s, 200);
      assert.equal(answerOf(session, await send(sessionId, frames[10]!)).s, 200, '59 behind: within the window');
      const before = refusals();
      assertRefused(await send(sessionId, frames[2]!), '67 behind');
      assert.equal(counted(before, 'too-old'), 1);
    });

    test('[CHAN-3] stale, forged and unknown-session frames are refused alike; malformed bodies get 400', async () => {
      const device = spare();
      const { session, sessionId } = await rawSession(device);
      const count = await flushedCount(device.id);
      const before = refusals();
      const stale = session.seal(
        envelope('POST', '/v1/device-api/telemetry', { temperature: 2 }),
        Date.now() - 301_000,
      );
      assertRefused(await send(sessionId, stale), 'a frame 301 s old');
      const future = session.seal(
        envelope('POST', '/v1/device-api/telemetry', { temperature: 3 }),
        Date.now() + 301_000,
      );
      assertRefused(await send(sessionId, future), 'a frame 301 s ahead');
      const forged = session.seal(envelope('POST', '/v1/device-api/telemetry', { temperature: 4 }));
      forged[forged.length - 1]! ^= 0x01;
      assertRefused(await send(sessionId, forged), 'a flipped tag byte');
      const tampered = session.seal(envelope('POST', '/v1/device-api/telemetry', { temperature: 5 }));
      tampered[40]! ^= 0x01;
      assertRefused(await send(sessionId, tampered), 'a flipped ciphertext byte');
      const unknown = session.seal(envelope('GET', '/v1/device-api/time'));
      assertRefused(await send(Buffer.alloc(16, 7), unknown), 'an unknown session');
      assert.equal(counted(before, 'stale'), 2);
      assert.equal(counted(before, 'forged'), 2);
      assert.equal(counted(before, 'unknown-session'), 1);
      assert.equal(await flushedCount(device.id), count, 'none of them stored telemetry');

      const malformed = await send(sessionId, Buffer.alloc(10));
      assert.equal(malformed.status, 400);
      assert.deepEqual(
        [malformed.json?.error?.code, malformed.json?.error?.message],
        ['ERR_SECURE_CHANNEL_MALFORMED', 'Not a secure-channel message'],
      );
      const badHello = await plain('POST', '/v1/device-api/secure-channel/hello', Buffer.alloc(120));
      assert.equal(badHello.json?.error?.code, 'ERR_SECURE_CHANNEL_MALFORMED');
      const notBytes = await plain(
        'POST',
        '/v1/device-api/secure-channel/hello',
        Buffer.from('{}'),
        'application/json',
      );
      assert.equal(notBytes.status, 415);
      assert.equal(notBytes.json?.error?.code, 'ERR_HTTP_UNSUPPORTED_MEDIA_TYPE');
      assert.equal(counted(before, 'malformed'), 2);
      // The session was not harmed by any of it.
      assert.equal(
        answerOf(session, await send(sessionId, session.seal(envelope('GET', '/v1/device-api/time')))).s,
        200,
      );
    });

    test("[CHAN-4] another device's frame in this session is refused as cross-device", async () => {
      const [a, b] = [spare(), spare()];
      const sa = await rawSession(a);
      const sb = await rawSession(b);
      const count = await flushedCount(b.id);
      const before = refusals();
      const bFrame = sb.session.seal(envelope('POST', '/v1/device-api/telemetry', { temperature: 6 }));
      assert.equal(parseFrameHeader(bFrame).deviceId, b.id);
      assertRefused(await send(sa.sessionId, bFrame), "b's frame in a's session");
      assert.equal(counted(before, 'wrong-device'), 1);
      assert.equal(await flushedCount(b.id), count);
      assert.equal(await flushedCount(a.id), 0);
    });

    test('[CHAN-3] a replayed hello is refused; an unknown device and a wrong secret get the same answer', async () => {
      const device = spare();
      const { hello } = await rawSession(device);
      const before = refusals();
      assertRefused(await plain('POST', '/v1/device-api/secure-channel/hello', hello), 'the same hello again');
      assert.equal(counted(before, 'replayed'), 1);
      const wrong = createHello({ suite: 'intl', deviceId: device.id, secret: 'not the secret' }).hello;
      assertRefused(await plain('POST', '/v1/device-api/secure-channel/hello', wrong), 'a wrong secret');
      const unknownId = `01${tenant.vendorCode}${tenant.productCode}0000000000`;
      const unknown = createHello({ suite: 'intl', deviceId: unknownId, secret: device.secret }).hello;
      assertRefused(await plain('POST', '/v1/device-api/secure-channel/hello', unknown), 'an unknown device');
      const stale = createHello({
        suite: 'intl',
        deviceId: device.id,
        secret: device.secret,
        now: Date.now() - 301_000,
      });
      assertRefused(await plain('POST', '/v1/device-api/secure-channel/hello', stale.hello), 'a stale hello');
      assert.equal(counted(before, 'forged'), 1);
      assert.equal(counted(before, 'unknown-device'), 1);
      assert.equal(counted(before, 'stale'), 1);
    });

    test('[CHAN-3] keys rotate mid-stream in both directions and the stream keeps working', async () => {
      const device = spare();
      const sdk = client(device);
      const { session, sessionId } = await rawSession(device);
      for (let i = 0; i < 2 * ROTATE_AFTER_FRAMES + 5; i++) {
        const answer = answerOf(session, await send(sessionId, session.seal(envelope('GET', '/v1/device-api/time'))));
        assert.equal(answer.s, 200, `frame ${i}`);
      }
      assert.equal(session.sendEpoch, 2, 'the device rotated twice');
      assert.equal(session.receiveEpoch, 2, 'so did the platform');
      const row = (
        await tp.query<{ state: string }>('select state from secure_channel_sessions where device_id = $1', [device.id])
      )[0]!;
      const stored = JSON.parse(row.state);
      assert.deepEqual([stored.receiveEpoch, stored.sendEpoch], [2, 2]);
      assert.equal(stored.sendKey, undefined, 'the keys are not in the clear state column');
      // The SDK rotates the same way.
      for (let i = 0; i < ROTATE_AFTER_FRAMES + 2; i++) {
        assert.equal((await sdk.request('GET', '/v1/device-api/time')).status, 200);
      }
      assert.equal(sdk.handshakes, 1);
    });

    test('[CHAN-3] the same frame submitted twice at once is accepted exactly once', async () => {
      const device = spare();
      const { session, sessionId } = await rawSession(device);
      const count = await flushedCount(device.id);
      const before = refusals();
      for (let round = 0; round < 3; round++) {
        const frame = session.seal(envelope('POST', '/v1/device-api/telemetry', { temperature: 10 + round }));
        const results = await Promise.all([send(sessionId, frame), send(sessionId, frame), send(sessionId, frame)]);
        assert.deepEqual(
          results.map((r) => r.status).sort(),
          [200, 401, 401],
          `round ${round}: ${results.map((r) => r.bytes.toString()).join(' | ')}`,
        );
      }
      assert.equal(counted(before, 'replayed'), 6);
      assert.equal(await flushedCount(device.id), count + 3, 'one telemetry row per frame');
    });

    test('[CHAN-3] a disabled device is refused at once; a rotated secret ends its sessions', async () => {
      const device = spare();
      const { session, sessionId } = await rawSession(device);
      assert.equal(
        answerOf(session, await send(sessionId, session.seal(envelope('GET', '/v1/device-api/time')))).s,
        200,
      );
      const disabled = await request(tp.platform, 'POST', `/v1/devices/${device.id}/disable`, {
        token: tenant.vendorToken,
      });
      assert.equal(disabled.status, 200, disabled.text);
      const before = refusals();
      const count = await flushedCount(device.id);
      const frame = session.seal(envelope('POST', '/v1/device-api/telemetry', { temperature: 7 }));
      assertRefused(await send(sessionId, frame), 'the next frame of a disabled device');
      assertRefused(
        await plain(
          'POST',
          '/v1/device-api/secure-channel/hello',
          createHello({ suite: 'intl', deviceId: device.id, secret: device.secret }).hello,
        ),
        'a new hello of a disabled device',
      );
      assert.equal(counted(before, 'not-admitted'), 2);
      assert.equal(await flushedCount(device.id), count);
      const enabled = await request(tp.platform, 'POST', `/v1/devices/${device.id}/enable`, {
        token: tenant.vendorToken,
      });
      assert.equal(enabled.status, 200, enabled.text);
      // The refused frame changed nothing: it is still good once the device is back.
      assert.equal(answerOf(session, await send(sessionId, frame)).s, 202);

      const rotated = await request(tp.platform, 'POST', `/v1/devices/${device.id}/credentials/rotate`, {
        token: tenant.vendorToken,
      });
      assert.equal(rotated.status, 200, rotated.text);
      const afterRotation = refusals();
      assertRefused(await send(sessionId, session.seal(envelope('GET', '/v1/device-api/time'))), 'after rotation');
      assert.equal(counted(afterRotation, 'credential-revoked'), 1);
      // The SDK with the new secret handshakes again by itself.
      const sdk = client({ id: device.id, secret: rotated.body.secret as string });
      assert.equal((await sdk.request('GET', '/v1/device-api/time')).status, 200);
    });

    test('[CHAN-3] a product whose authModes exclude the secret (L2, certificate only) refuses the hello', async () => {
      const product = await request(tp.platform, 'POST', '/v1/products', {
        token: tenant.vendorToken,
        body: { name: 'Certificate Lock', category: 'lock', securityLevel: 'L2', authModes: ['certificate'] },
      });
      assert.equal(product.status, 201, product.text);
      const created = await request(tp.platform, 'POST', `/v1/products/${product.body.id}/devices`, {
        token: tenant.vendorToken,
        body: { count: 1 },
      });
      assert.equal(created.status, 201, created.text);
      const device = created.body.devices[0] as Device;
      const before = refusals();
      const res = await plain(
        'POST',
        '/v1/device-api/secure-channel/hello',
        createHello({ suite: 'intl', deviceId: device.id, secret: device.secret }).hello,
      );
      assertRefused(res, 'an L2 device by its secret');
      assert.equal(counted(before, 'not-admitted'), 1);
      await assert.rejects(client(device).request('GET', '/v1/device-api/time'), (error: unknown) => {
        assert.ok(error instanceof DeviceHttpError);
        assert.equal(error.code, REFUSED.code);
        return true;
      });
    });

    test('[CHAN-3] the plain listener serves only the secure-channel paths; the envelope reaches only the device API', async () => {
      for (const [method, path] of [
        ['GET', '/v1/device-api/time'],
        ['GET', '/healthz'],
        ['GET', '/openapi.json'],
        ['POST', '/v1/auth/login'],
        ['GET', '/v1/device-api/secure-channel/hello'],
        ['POST', '/v1/device-api/telemetry'],
        ['GET', '/v1/device-api/secure-channel/keys/../../time'],
      ] as const) {
        const res = await plain(method, path, method === 'POST' ? Buffer.from('{}') : undefined, 'application/json');
        assert.equal(res.status, 404, `${method} ${path}`);
        assert.deepEqual(
          [res.json?.error?.code, res.json?.error?.message],
          ['ERR_SECURE_CHANNEL_NOT_FOUND', 'This listener serves only the secure-channel paths'],
          `${method} ${path}`,
        );
      }
      const device = spare();
      const { session, sessionId } = await rawSession(device);
      for (const [method, path] of [
        ['GET', '/v1/device-api/secure-channel/keys'],
        ['POST', '/v1/device-api/secure-channel/hello'],
        ['POST', '/v1/device-api/secure-channel/request'],
        ['GET', '/v1/vendors'],
        ['GET', `/v1/devices/${device.id}/shadow`],
        ['GET', '/v1/device-api/../vendors'],
        ['GET', '/v1/device-api//secure-channel/keys'],
        ['GET', 'https://example.com/v1/device-api/time'],
        ['GET', '/v1/device-api/Secure-Channel/keys'],
      ] as const) {
        const answer = answerOf(session, await send(sessionId, session.seal(envelope(method, path))));
        assert.equal(answer.s, 404, `${method} ${path}: ${JSON.stringify(answer.b)}`);
        assert.equal(answer.b.error.code, 'ERR_SECURE_CHANNEL_PATH_NOT_ALLOWED', path);
      }
      for (const plaintext of [
        'not json',
        '[]',
        '{"m":"GET"}',
        '{"m":"TRACE","p":"/v1/device-api/time"}',
        '{"m":"GET","p":"/v1/device-api/time","x":1}',
      ]) {
        const answer = answerOf(session, await send(sessionId, session.seal(Buffer.from(plaintext))));
        assert.equal(answer.s, 400, plaintext);
        assert.equal(answer.b.error.code, 'ERR_SECURE_CHANNEL_ENVELOPE_INVALID', plaintext);
      }
      // The in-process dispatch header is worthless from outside, over HTTPS too.
      const forged = await request(tp.platform, 'POST', '/v1/device-api/telemetry', {
        body: { temperature: 1 },
        headers: { 'x-castellan-internal-device': `${device.id}.${'A'.repeat(43)}` },
      });
      assert.equal(forged.status, 401);
      assert.equal(forged.body.error.code, 'ERR_DEVICE_AUTH_FAILED');
    });

    test('[CHAN-3] the same routes are served on the HTTPS API', async () => {
      const device = spare();
      const sdk = new SecureChannelHttpClient({
        baseUrl: tp.platform.httpUrl,
        ca: tp.platform.caPem,
        deviceId: device.id,
        secret: device.secret,
        platformPublicKey: keys.intl,
        sessionOptions: SESSION_OPTIONS,
      });
      const res = await sdk.reportTelemetry({ temperature: 30 });
      assert.equal(res.status, 202, JSON.stringify(res.body));
      assert.deepEqual((await tp.platform.devices.latestTelemetry(device.id))?.payload, { temperature: 30 });
      // Another pinned key: the reply does not confirm, and the device sends no frame.
      const other = new SecureChannelHttpClient({
        baseUrl: plainUrl,
        deviceId: device.id,
        secret: device.secret,
        platformPublicKey: generateChannelKeyPair('intl').publicKey,
      });
      await assert.rejects(other.handshake(), (error: unknown) => {
        assert.ok(error instanceof SecureChannelError);
        assert.equal(error.reason, 'forged');
        return true;
      });
      assert.equal(other.connected, false);
    });

    test('[CHAN-3] [CHAN-5] the plain listener has its own allow/deny lists, a body cap and forwards to the API', async () => {
      const listener = await startSecureChannelHttpListener({
        host: '127.0.0.1',
        port: 0,
        allow: ['127.0.0.0/30'],
        deny: ['127.0.0.2'],
        isBlocked: () => false,
        requestTimeoutMs: 5000,
        app: tp.platform.http,
        log: { debug: () => {}, warn: () => {} },
      });
      try {
        const get = (localAddress: string) =>
          new Promise<number | string>((resolve) => {
            const req = httpRequest(`${listener.url}/v1/device-api/secure-channel/keys`, { localAddress }, (res) => {
              res.resume();
              res.on('end', () => resolve(res.statusCode ?? 0));
            });
            req.on('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? 'error'));
            req.end();
          });
        assert.equal(await get('127.0.0.1'), 200);
        assert.equal(await get('127.0.0.3'), 200);
        assert.notEqual(await get('127.0.0.2'), 200, 'denied');
        assert.notEqual(await get('127.0.0.9'), 200, 'not on the allow list');
        assert.equal(listener.refused(), 2);
        const big = await fetch(`${listener.url}/v1/device-api/secure-channel/request`, {
          method: 'POST',
          headers: { 'content-type': 'application/octet-stream' },
          body: Buffer.alloc(70_000),
        });
        assert.equal(big.status, 413);
        assert.equal(((await big.json()) as { error: { code: string } }).error.code, 'ERR_HTTP_BODY_TOO_LARGE');
      } finally {
        await listener.close();
      }
    });

    test('[CHAN-3] expired sessions are refused and purged', async () => {
      const device = spare();
      const { session, sessionId } = await rawSession(device);
      await tp.platform.store.db
        .updateTable('secure_channel_sessions')
        .set({ expires_at: Date.now() - 1 })
        .where('id', '=', sessionId.toString('hex'))
        .execute();
      const before = refusals();
      assertRefused(await send(sessionId, session.seal(envelope('GET', '/v1/device-api/time'))), 'an expired session');
      assert.equal(counted(before, 'expired-session'), 1);
      // The SDK notices the refusal of its established session, handshakes again once and resends.
      const sdk = client(device);
      assert.equal((await sdk.reportTelemetry({ temperature: 40 })).status, 202);
      await tp.platform.store.db
        .updateTable('secure_channel_sessions')
        .set({ expires_at: Date.now() - 1 })
        .where('device_id', '=', device.id)
        .execute();
      const count = await telemetryCount(device.id);
      assert.equal((await sdk.reportTelemetry({ temperature: 41 })).status, 202);
      assert.equal(sdk.handshakes, 2);
      assert.equal(await telemetryCount(device.id), count + 1, 'sent once: the refused frame had no effect');
      assert.ok((await tp.platform.secureChannel.purgeExpired()) >= 2);
      const left = await tp.query<{ n: number }>('select count(*) as n from secure_channel_sessions where id = $1', [
        sessionId.toString('hex'),
      ]);
      assert.equal(Number(left[0]!.n), 0);
    });
  });
}
