// Push (BIND-4) over Server-Sent Events on both databases, devices through the SDK (DeviceClient): a
// vendor's stream of one device and people's streams of their devices receive presence, state and events
// in order; nothing of another person's device ever arrives (several people, BIND-2); a revoked or
// expired share and an unbind stop the events at once; Last-Event-ID resume; the per-principal limit;
// heartbeats and sign-out; a client that stops reading is disconnected; listeners return to zero. The hub
// itself is checked property-based against an oracle of who may see what, with fake sources and sinks.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import type { ClientRequest } from 'node:http';
import https from 'node:https';
import { after, afterEach, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import tls from 'node:tls';
import type { DeviceClient } from '@castellan/device';
import { deviceTopic, signRequest } from '@castellan/protocol';
import fc from 'fast-check';
import pino from 'pino';
import { type DeviceRole } from '../../src/devices/device-access.ts';
import { DeviceEvents } from '../../src/devices/device-events.ts';
import { PresenceEvents } from '../../src/devices/presence-events.ts';
import { PushHub } from '../../src/devices/push/push-hub.ts';
import type { SseSink } from '../../src/devices/push/push-stream.ts';
import { dialectCases } from '../helpers/dialects.ts';
import { bindDevice, newConsumer, shareDevice, sdkDevice } from '../helpers/device-flows.ts';
import {
  type OperatorKey,
  provisionTenant,
  request,
  startTestPlatform,
  type Tenant,
  type TestPlatform,
} from '../helpers/test-platform.ts';

interface SseEvent {
  id?: string;
  event: string;
  // biome-ignore lint/suspicious/noExplicitAny: tests read event data loosely and assert on it.
  data: any;
}

/** A Server-Sent Events client over HTTPS pinned to the platform CA. */
class SseClient {
  readonly events: SseEvent[] = [];
  comments = 0;
  text = '';
  closed = false;
  #buffer = '';
  #waiters: (() => void)[] = [];
  readonly status: number;
  readonly body: unknown;
  readonly #req: ClientRequest;
  constructor(status: number, body: unknown, req: ClientRequest) {
    this.status = status;
    this.body = body;
    this.#req = req;
  }

  static open(
    tp: TestPlatform,
    path: string,
    options: { token: string | OperatorKey; lastEventId?: string },
  ): Promise<SseClient> {
    const url = new URL(path, tp.platform.httpUrl);
    const auth =
      typeof options.token === 'string'
        ? { authorization: `Bearer ${options.token}` }
        : { host: url.host, ...signRequest({ key: options.token, method: 'GET', target: path, host: url.host }) };
    return new Promise((resolve, reject) => {
      const req = https.request(url, {
        method: 'GET',
        ca: tp.platform.caPem,
        agent: false,
        headers: {
          accept: 'text/event-stream',
          ...auth,
          ...(options.lastEventId ? { 'last-event-id': options.lastEventId } : {}),
        },
      });
      req.on('response', (res) => {
        res.setEncoding('utf8');
        if (res.statusCode !== 200) {
          let text = '';
          res.on('data', (c: string) => (text += c));
          res.on('end', () => resolve(new SseClient(res.statusCode ?? 0, JSON.parse(text), req)));
          return;
        }
        assert.match(String(res.headers['content-type']), /^text\/event-stream/);
        const client = new SseClient(200, null, req);
        res.on('data', (chunk: string) => client.#feed(chunk));
        res.on('close', () => {
          client.closed = true;
          client.#wake();
        });
        resolve(client);
      });
      req.on('error', reject);
      req.end();
    });
  }

  #feed(chunk: string): void {
    this.text += chunk;
    this.#buffer += chunk;
    let end: number;
    while ((end = this.#buffer.indexOf('\n\n')) >= 0) {
      const block = this.#buffer.slice(0, end);
      this.#buffer = this.#buffer.slice(end + 2);
      const event: Partial<SseEvent> & { lines: string[] } = { lines: [] };
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) this.comments++;
        else if (line.startsWith('id: ')) event.id = line.slice(4);
        else if (line.startsWith('event: ')) event.event = line.slice(7);
        else if (line.startsWith('data: ')) event.lines.push(line.slice(6));
      }
      if (event.event) this.events.push({ id: event.id, event: event.event, data: JSON.parse(event.lines.join('\n')) });
    }
    this.#wake();
  }

  #wake(): void {
    for (const w of this.#waiters.splice(0)) w();
  }

  /** Device events (not the stream's own control frames). */
  get deviceEvents(): SseEvent[] {
    return this.events.filter((e) => ['presence', 'state', 'event', 'change', 'telemetry'].includes(e.event));
  }

  async waitFor(predicate: (e: SseEvent) => boolean, what: string, timeoutMs = 8000): Promise<SseEvent> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.events.find(predicate);
      if (found) return found;
      if (this.closed) assert.fail(`stream closed while waiting for ${what}`);
      const left = deadline - Date.now();
      if (left <= 0)
        assert.fail(`timed out waiting for ${what}; got ${JSON.stringify(this.events.map((e) => e.event))}`);
      await Promise.race([new Promise<void>((r) => this.#waiters.push(r)), sleep(Math.min(left, 200))]);
    }
  }

  async waitClosed(timeoutMs = 8000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed) {
      if (Date.now() > deadline) assert.fail('stream did not close');
      await sleep(20);
    }
  }

  close(): void {
    this.#req.destroy();
  }
}

const hasMarker = (marker: string) => (e: SseEvent) => JSON.stringify(e.data).includes(marker);

for (const dialect of await dialectCases()) {
  describe(`push (SSE) on ${dialect.name}`, { skip: dialect.skip }, () => {
    let tp: TestPlatform;
    let tenant: Tenant;
    const clients: DeviceClient[] = [];
    const streams: SseClient[] = [];

    before(async () => {
      tp = await startTestPlatform(dialect.name, {
        accounts: { stepUpMinutes: 60 },
        devices: { pushStreamsPerPrincipal: 3, pushHeartbeatSeconds: 1, pushBufferBytes: 65536 },
      });
      tenant = await provisionTenant(tp, 8);
    });
    after(async () => {
      for (const s of streams) s.close();
      for (const client of clients) await client.close().catch(() => {});
      await tp?.close();
    });

    const sdk = (device: { id: string; secret: string }) => sdkDevice(tp, device, clients);
    const open = async (path: string, token: string | OperatorKey, lastEventId?: string) => {
      const stream = await SseClient.open(tp, path, { token, ...(lastEventId ? { lastEventId } : {}) });
      streams.push(stream);
      if (stream.status === 200) await stream.waitFor((e) => e.event === 'ready', 'ready');
      return stream;
    };
    const sendEvent = (client: DeviceClient, body: Record<string, unknown>) =>
      client.publish(deviceTopic.events(client.deviceId), JSON.stringify(body), 1);
    afterEach(() => closeAll());
    const closeAll = async () => {
      for (const s of streams.splice(0)) s.close();
      for (let i = 0; i < 100 && tp.platform.push.streamCount > 0; i++) await sleep(20);
    };

    test("[BIND-4] a vendor's stream of one device gets presence, state and events in order; telemetry when asked", async () => {
      const device = tenant.devices[0]!;
      const path = `/v1/devices/${device.id}/events/stream`;
      const main = await open(path, tenant.vendorToken);
      const telemetry = await open(`${path}?types=presence,telemetry`, tenant.vendorToken);
      assert.deepEqual(main.events[0]!.data, { resumed: false, devices: 1, heartbeatSeconds: 1 });
      const client = await sdk(device);
      // Presence is pushed once stored, messages once accepted: the two sources are ordered each on its
      // own, so the device speaks after the platform has recorded it online.
      await main.waitFor((e) => e.event === 'presence' && e.data.online === true, 'online');
      await client.reportState({ power: true, level: 3 });
      await sendEvent(client, { type: 'button', press: 'long', marker: 'ev-1' });
      await client.publishTelemetry({ temp: 21.25, marker: 'tm-1' });
      await sendEvent(client, { type: 'button', press: 'short', marker: 'ev-2' });
      await client.close();
      await main.waitFor((e) => e.event === 'presence' && e.data.online === false, 'offline');
      const seen = main.deviceEvents.filter((e) => e.event !== 'change');
      assert.deepEqual(
        seen.map((e) => [e.event, e.data.online ?? e.data.payload?.marker ?? e.data.payload?.state?.power]),
        [
          ['presence', true],
          ['state', true],
          ['event', 'ev-1'],
          ['event', 'ev-2'],
          ['presence', false],
        ],
      );
      assert.equal(seen[4]!.data.reason, 'client');
      // The SDK reports state in the shadow's envelope.
      assert.deepEqual(seen[1]!.data.deviceId, device.id);
      assert.deepEqual(seen[1]!.data.payload.state, { power: true, level: 3 });
      assert.equal(seen[1]!.data.path, '');
      // Platform changes too (the shadow took the report), and every id is larger than the one before.
      assert.ok(main.events.some((e) => e.event === 'change' && e.data.kind === 'shadow.reported'));
      const seqs = main.deviceEvents.map((e) => Number(e.id!.split('-')[1]));
      assert.deepEqual(
        seqs,
        [...seqs].sort((a, b) => a - b),
      );
      assert.ok(!main.text.includes('tm-1'), 'telemetry is opt-in');
      await telemetry.waitFor((e) => e.event === 'presence' && e.data.online === false, 'offline');
      assert.deepEqual(
        telemetry.deviceEvents.map((e) => e.event),
        ['presence', 'telemetry', 'presence'],
      );
      assert.deepEqual(telemetry.deviceEvents[1]!.data.payload, { temp: 21.25, marker: 'tm-1' });
      // Another tenant's operator, a consumer, a missing device: the same 404, nothing streamed.
      const otherTenant = await provisionTenant(tp, 0, tenant.adminToken);
      const stranger = await newConsumer(tp, 'stranger');
      for (const token of [otherTenant.vendorToken, stranger.userToken]) {
        const refused = await SseClient.open(tp, path, { token });
        assert.equal(refused.status, 404);
        assert.equal((refused.body as { error: { code: string } }).error.code, 'ERR_DEVICE_NOT_FOUND');
      }
      await closeAll();
    });

    test('[BIND-4] [BIND-2] several people: each stream gets exactly its own devices, nothing of anyone else', async () => {
      const [d1, d2, d3] = [tenant.devices[1]!, tenant.devices[2]!, tenant.devices[3]!];
      const a = await bindDevice(tp, d1);
      const b = await bindDevice(tp, d2);
      const c = await shareDevice(tp, a.userToken, d1.id, 'guest');
      const b2 = await shareDevice(tp, b.userToken, d2.id, 'member');
      const nobody = await newConsumer(tp, 'nobody');
      await bindDevice(tp, d3, b2); // b2 owns d3 and shares d2
      const people = { a, b, c, b2, nobody };
      const expected: Record<keyof typeof people, string[]> = {
        a: [d1.id],
        b: [d2.id],
        c: [d1.id],
        b2: [d2.id, d3.id].sort(),
        nobody: [],
      };
      const opened: Record<string, SseClient> = {};
      for (const [name, who] of Object.entries(people)) {
        opened[name] = await open('/v1/me/events', who.userToken);
        assert.equal(opened[name].events[0]!.data.devices, expected[name as keyof typeof people].length);
      }
      const filtered = await open(`/v1/me/events?deviceId=${d1.id}`, a.userToken);
      const notMine = await SseClient.open(tp, `/v1/me/events?deviceId=${d2.id}`, { token: a.userToken });
      assert.equal(notMine.status, 404);
      assert.equal((notMine.body as { error: { code: string } }).error.code, 'ERR_DEVICE_NOT_FOUND');

      const devices = [d1, d2, d3];
      const sdks = await Promise.all(devices.map((d) => sdk(d)));
      for (let round = 0; round < 3; round++) {
        for (const [i, client] of sdks.entries()) {
          await client.reportState({ round, marker: `st-${i}-${round}` });
          await sendEvent(client, { marker: `ev-${i}-${round}` });
        }
      }
      for (const client of sdks) await client.close();
      // Everyone who should has everything; then nobody has anything else.
      for (const [name, ids] of Object.entries(expected)) {
        for (const id of ids) {
          const i = devices.findIndex((d) => d.id === id);
          await opened[name]!.waitFor(hasMarker(`ev-${i}-2`), `${name} gets device ${i}`);
          await opened[name]!.waitFor(
            (e) => e.event === 'presence' && e.data.deviceId === id && e.data.online === false,
            `${name} sees device ${i} go offline`,
          );
        }
      }
      await filtered.waitFor(hasMarker('ev-0-2'), 'filtered stream');
      await sleep(300);
      for (const [name, ids] of Object.entries(expected)) {
        const stream = opened[name]!;
        const got = [...new Set(stream.deviceEvents.map((e) => e.data.deviceId as string))].sort();
        assert.deepEqual(got, ids, `${name} receives exactly its devices`);
        for (const other of devices.filter((d) => !ids.includes(d.id))) {
          assert.ok(!stream.text.includes(other.id), `${name} never sees ${other.id}`);
        }
        // Per device, in the order published.
        for (const id of ids) {
          const i = devices.findIndex((d) => d.id === id);
          const markers = stream.deviceEvents
            .filter((e) => e.data.deviceId === id && (e.event === 'event' || e.event === 'state'))
            .map((e) => e.data.payload.marker ?? e.data.payload.state?.marker);
          assert.deepEqual(
            markers,
            [0, 1, 2].flatMap((r) => [`st-${i}-${r}`, `ev-${i}-${r}`]),
            name,
          );
        }
      }
      assert.deepEqual([...new Set(filtered.deviceEvents.map((e) => e.data.deviceId))], [d1.id]);
      await closeAll();
    });

    test('[BIND-4] [BIND-2] [BIND-3] revoking or expiring a share and unbinding stop the events at once', async () => {
      const [device] = [tenant.devices[4]!];
      const owner = await bindDevice(tp, device);
      const guest = await shareDevice(tp, owner.userToken, device.id, 'guest');
      const vendor = await open(`/v1/devices/${device.id}/events/stream`, tenant.vendorToken);
      const ownerStream = await open('/v1/me/events', owner.userToken);
      const guestStream = await open('/v1/me/events', guest.userToken);
      const client = await sdk(device);
      await sendEvent(client, { marker: 'mk-e1' });
      await guestStream.waitFor(hasMarker('mk-e1'), 'guest gets mk-e1');

      const revoke = await request(tp.platform, 'DELETE', `/v1/devices/${device.id}/shares/${guest.shareId}`, {
        token: owner.userToken,
      });
      assert.equal(revoke.status, 204);
      await guestStream.waitFor((e) => e.event === 'access' && e.data.access === 'revoked', 'revocation notice');
      await sendEvent(client, { marker: 'mk-e2' });
      await ownerStream.waitFor(hasMarker('mk-e2'), 'owner gets mk-e2');
      await vendor.waitFor(hasMarker('mk-e2'), 'vendor gets mk-e2');
      await sleep(200);
      assert.ok(!guestStream.text.includes('mk-e2'), 'the revoked guest gets nothing more');
      assert.ok(!guestStream.events.some((e) => e.event === 'change' && e.data.kind === 'share.revoked'));

      // A new share reaches a stream that is already open, from the share on.
      const later = await newConsumer(tp, 'later');
      const laterStream = await open('/v1/me/events', later.userToken);
      assert.equal(laterStream.events[0]!.data.devices, 0);
      const expiresAt = Date.now() + 1500;
      await shareDevice(tp, owner.userToken, device.id, 'guest', { to: later, expiresAt });
      await laterStream.waitFor((e) => e.event === 'access' && e.data.access === 'granted', 'grant notice');
      await sendEvent(client, { marker: 'mk-e3' });
      await laterStream.waitFor(hasMarker('mk-e3'), 'new guest gets mk-e3');
      // Expiry raises no event: the per-event re-check (answers cached at most 2 s) stops it.
      await sleep(Math.max(0, expiresAt - Date.now()) + 2100);
      await sendEvent(client, { marker: 'mk-e4' });
      await vendor.waitFor(hasMarker('mk-e4'), 'vendor gets mk-e4');
      await sleep(200);
      assert.ok(!laterStream.text.includes('mk-e4'), 'the expired share gets nothing more');

      const unbind = await request(tp.platform, 'DELETE', `/v1/devices/${device.id}/binding`, {
        token: owner.userToken,
      });
      assert.equal(unbind.status, 200, unbind.text);
      await ownerStream.waitFor((e) => e.event === 'access' && e.data.access === 'revoked', 'unbind notice');
      await sendEvent(client, { marker: 'mk-e5' });
      await vendor.waitFor(hasMarker('mk-e5'), 'vendor gets mk-e5');
      await sleep(200);
      assert.ok(!ownerStream.text.includes('mk-e5'), 'the previous owner gets nothing more');
      await client.close();
      await closeAll();
    });

    test('[BIND-4] Last-Event-ID resumes what a reconnecting client missed; an unknown ID gets a reset', async () => {
      const device = tenant.devices[5]!;
      const path = `/v1/devices/${device.id}/events/stream`;
      const keeper = await open(path, tenant.vendorToken);
      const first = await open(path, tenant.vendorToken);
      const client = await sdk(device);
      await sendEvent(client, { marker: 'r1' });
      const r1 = await first.waitFor(hasMarker('r1'), 'r1');
      first.close();
      await sendEvent(client, { marker: 'r2' });
      await sendEvent(client, { marker: 'r3' });
      await keeper.waitFor(hasMarker('r3'), 'r3');
      const resumed = await open(path, tenant.vendorToken, r1.id);
      assert.equal(resumed.events[0]!.data.resumed, true);
      await resumed.waitFor(hasMarker('r3'), 'replayed r3');
      assert.deepEqual(
        resumed.deviceEvents.filter((e) => e.event === 'event').map((e) => e.data.payload.marker),
        ['r2', 'r3'],
      );
      const unknown = await open(path, tenant.vendorToken, '0123456789ab-5');
      await unknown.waitFor((e) => e.event === 'reset', 'reset');
      assert.equal(unknown.events[0]!.data.resumed, false);
      await client.close();
      await closeAll();
    });

    test('[BIND-4] per-principal limit, heartbeats, sign-out ends the streams, listeners return to zero', async () => {
      await closeAll();
      assert.equal(tp.platform.push.streamCount, 0);
      const baseline = {
        message: tp.platform.deviceEvents.listenerCount('message'),
        change: tp.platform.deviceEvents.listenerCount('change'),
        presence: tp.platform.devices.presence.events.listenerCount('change'),
      };
      const owner = await bindDevice(tp, tenant.devices[6]!);
      const mine = [];
      for (let i = 0; i < 3; i++) mine.push(await open('/v1/me/events', owner.userToken));
      assert.equal(tp.platform.push.listenerCount, 3);
      assert.equal(tp.platform.deviceEvents.listenerCount('message'), baseline.message + 1);
      const fourth = await SseClient.open(tp, '/v1/me/events', { token: owner.userToken });
      assert.equal(fourth.status, 429);
      assert.deepEqual(
        (fourth.body as { error: { code: string; message: string } }).error.code,
        'ERR_PUSH_TOO_MANY_STREAMS',
      );
      assert.equal(
        (fourth.body as { error: { message: string } }).error.message,
        'Too many open event streams for this account',
      );
      // Heartbeats (1 s here) keep proxies from closing an idle stream.
      const before = mine[0]!.comments;
      for (let i = 0; i < 60 && mine[0]!.comments === before; i++) await sleep(50);
      assert.ok(mine[0]!.comments > before, 'a heartbeat arrived');
      // Signing out ends the session's streams at the next heartbeat.
      const logout = await request(tp.platform, 'POST', '/v1/auth/logout', { token: owner.userToken });
      assert.ok(logout.status < 300, logout.text);
      for (const stream of mine) {
        await stream.waitFor((e) => e.event === 'end', 'end');
        assert.deepEqual(stream.events.at(-1)!.data, { reason: 'unauthenticated' });
        await stream.waitClosed();
      }
      for (let i = 0; i < 100 && tp.platform.push.streamCount > 0; i++) await sleep(20);
      assert.equal(tp.platform.push.streamCount, 0);
      assert.equal(tp.platform.push.listenerCount, 0);
      assert.deepEqual(
        {
          message: tp.platform.deviceEvents.listenerCount('message'),
          change: tp.platform.deviceEvents.listenerCount('change'),
          presence: tp.platform.devices.presence.events.listenerCount('change'),
        },
        baseline,
      );
    });

    test('[BIND-4] a client that stops reading is disconnected; memory does not grow', async () => {
      const device = tenant.devices[7]!;
      const owner = await bindDevice(tp, device);
      const dropped = tp.platform.push.stats.slowClientsDropped;
      // A raw TLS client that sends the request and never reads the response.
      const socket = tls.connect({
        host: '127.0.0.1',
        port: tp.platform.httpPort,
        ca: tp.platform.caPem,
        servername: 'localhost',
      });
      await once(socket, 'secureConnect');
      socket.write(
        `GET /v1/me/events HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ${owner.userToken}\r\nAccept: text/event-stream\r\n\r\n`,
      );
      for (let i = 0; i < 100 && tp.platform.push.streamCount === 0; i++) await sleep(20);
      assert.equal(tp.platform.push.streamCount, 1);
      socket.pause();
      const blob = 'x'.repeat(16_000);
      for (let i = 0; i < 4000 && tp.platform.push.stats.slowClientsDropped === dropped; i++) {
        tp.platform.deviceEvents.emit('change', {
          deviceId: device.id,
          vendorId: tenant.vendorId,
          kind: 'test.bulk',
          at: Date.now(),
          data: { i, blob },
        });
        if (i % 20 === 0) await new Promise((r) => setImmediate(r));
      }
      assert.equal(tp.platform.push.stats.slowClientsDropped, dropped + 1, 'the slow client was cut off');
      assert.equal(tp.platform.push.streamCount, 0);
      socket.destroy();
    });

    test('[BIND-4] shutting down ends open streams with a reason instead of hanging', async () => {
      const stream = await open(`/v1/devices/${tenant.devices[0]!.id}/events/stream`, tenant.vendorToken);
      const started = Date.now();
      await tp.platform.close();
      assert.ok(Date.now() - started < 5000, 'close did not wait for the stream');
      await stream.waitClosed();
      assert.deepEqual(stream.events.at(-1), { id: undefined, event: 'end', data: { reason: 'shutdown' } });
    });
  });
}

describe('push hub (fake sources): routing against an oracle', () => {
  class FakeSink implements SseSink {
    frames: string[] = [];
    writableLength = 0;
    ended = false;
    destroyed = false;
    readonly #close: (() => void)[] = [];
    readonly stalls: boolean;
    constructor(stalls = false) {
      this.stalls = stalls;
    }
    write(chunk: string): boolean {
      this.frames.push(chunk);
      if (this.stalls) this.writableLength += chunk.length;
      return !this.stalls;
    }
    end(): void {
      this.ended = true;
      for (const c of this.#close.splice(0)) c();
    }
    destroy(): void {
      this.destroyed = true;
      for (const c of this.#close.splice(0)) c();
    }
    once(_event: 'close', listener: () => void): this {
      this.#close.push(listener);
      return this;
    }
    events(): { event: string; deviceId: string; marker?: number }[] {
      return this.frames
        .map((f) => /^(?:id: .*\n)?event: (\w+)\ndata: (.*)\n\n$/s.exec(f))
        .filter((m): m is RegExpExecArray => m !== null && !['ready', 'access', 'reset', 'end'].includes(m[1]!))
        .map((m) => {
          const data = JSON.parse(m[2]!) as { deviceId: string; payload?: { marker?: number } };
          return { event: m[1]!, deviceId: data.deviceId, marker: data.payload?.marker };
        });
    }
  }

  const USERS = ['u0', 'u1', 'u2', 'u3'];
  const DEVICES = ['d0', 'd1', 'd2'];
  const ROLES: (DeviceRole | null)[] = [null, 'owner', 'admin', 'member', 'guest'];

  const setup = (overrides: { bufferBytes?: number } = {}) => {
    const roles = new Map<string, DeviceRole | null>();
    const deviceEvents = new DeviceEvents();
    const presence = new PresenceEvents();
    const hub = new PushHub({
      deviceEvents,
      presence,
      access: {
        roleOf: async (u, d) => roles.get(`${u}/${d}`) ?? null,
        devicesOf: async (u) => DEVICES.filter((d) => roles.get(`${u}/${d}`)),
      },
      log: pino({ level: 'silent' }),
      streamsPerPrincipal: 5,
      maxStreams: 100,
      bufferBytes: overrides.bufferBytes ?? 1 << 20,
      heartbeatMs: 60_000,
      maxStreamMs: 600_000,
      resumeEvents: 100,
    });
    return { roles, deviceEvents, presence, hub };
  };
  const settle = async () => {
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
  };

  test('[BIND-4] [BIND-2] property: a person receives a device event exactly when they may view the device then', async () => {
    let delivered = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(fc.constantFrom(...USERS), fc.constantFrom(...DEVICES), fc.constantFrom(...ROLES)), {
          maxLength: 8,
        }),
        fc.array(
          fc.oneof(
            fc.record({ op: fc.constant('event' as const), device: fc.constantFrom(...DEVICES) }),
            fc.record({
              op: fc.constant('role' as const),
              user: fc.constantFrom(...USERS),
              device: fc.constantFrom(...DEVICES),
              role: fc.constantFrom(...ROLES),
            }),
          ),
          { minLength: 1, maxLength: 30 },
        ),
        async (initial, ops) => {
          const { roles, deviceEvents, hub } = setup();
          for (const [u, d, r] of initial) roles.set(`${u}/${d}`, r);
          const sinks = new Map<string, FakeSink>();
          for (const user of USERS) {
            const sink = new FakeSink();
            sinks.set(user, sink);
            hub.open({
              principalKey: user,
              scope: { kind: 'person', userId: user, deviceId: null },
              types: new Set(['state', 'change']),
              devices: await hub.initialDevices(user, null),
              sink,
              start() {},
            });
          }
          const expected = new Map<string, number[]>(USERS.map((u) => [u, []]));
          let marker = 0;
          for (const op of ops) {
            if (op.op === 'event') {
              marker++;
              for (const u of USERS) if (roles.get(`${u}/${op.device}`)) expected.get(u)!.push(marker);
              deviceEvents.emit('message', {
                deviceId: op.device,
                vendorId: 'vnd',
                productId: 'prd',
                channel: 'state',
                rest: [],
                payload: Buffer.from(JSON.stringify({ marker })),
                receivedAt: marker,
              });
            } else {
              roles.set(`${op.user}/${op.device}`, op.role);
              deviceEvents.emit('change', {
                deviceId: op.device,
                vendorId: 'vnd',
                kind: op.role ? 'share.created' : 'share.revoked',
                at: 0,
                data: {},
              });
            }
            await settle();
          }
          for (const user of USERS) {
            delivered += expected.get(user)!.length;
            const got = sinks
              .get(user)!
              .events()
              .filter((e) => e.event === 'state')
              .map((e) => e.marker);
            assert.deepEqual(got, expected.get(user), user);
            for (const e of sinks.get(user)!.events()) {
              if (e.event === 'change') assert.ok(roles.has(`${user}/${e.deviceId}`), 'changes only of known devices');
            }
          }
          void hub.close();
          assert.equal(hub.listenerCount, 0);
          assert.equal(deviceEvents.listenerCount('message'), 0);
          assert.equal(deviceEvents.listenerCount('change'), 0);
        },
      ),
      { numRuns: 150 },
    );
    assert.ok(delivered > 100, `the runs delivered events (${delivered})`);
  });

  test('[BIND-4] a sink that never drains is destroyed at the buffer bound, and its listeners go', async () => {
    const { roles, deviceEvents, presence, hub } = setup({ bufferBytes: 8192 });
    roles.set('u0/d0', 'owner');
    const sink = new FakeSink(true);
    hub.open({
      principalKey: 'u0',
      scope: { kind: 'person', userId: 'u0', deviceId: null },
      types: new Set(['state']),
      devices: ['d0'],
      sink,
      start() {},
    });
    assert.equal(deviceEvents.listenerCount('message'), 1);
    assert.equal(presence.listenerCount('change'), 1);
    for (let i = 0; i < 200 && !sink.destroyed; i++) {
      deviceEvents.emit('message', {
        deviceId: 'd0',
        vendorId: 'vnd',
        productId: 'prd',
        channel: 'state',
        rest: [],
        payload: Buffer.from(JSON.stringify({ i, pad: 'p'.repeat(500) })),
        receivedAt: i,
      });
      await settle();
    }
    assert.equal(sink.destroyed, true);
    assert.ok(sink.writableLength <= 8192 + 1024, `buffer stayed bounded (${sink.writableLength})`);
    assert.equal(hub.stats.slowClientsDropped, 1);
    assert.equal(hub.streamCount, 0);
    assert.equal(deviceEvents.listenerCount('message'), 0);
    assert.equal(presence.listenerCount('change'), 0);
  });
});
