// Smart-lock offline passcodes (LOCK-1) end to end on both databases: consumers bind locks through the
// SDK, the owner issues codes after a step-up, the SDK's lock simulator verifies them offline with its
// own clock, reports uses over MQTT, and applies revocations it receives; refusals leave nothing
// behind; unbinding (BIND-5) revokes the previous owner's codes on the lock and wipes their records.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { DeviceClient, LockSimulator } from '@castellan/device';
import { deviceTopic, HOUR_MS } from '@castellan/protocol';
import fc from 'fast-check';
import { dialectCases } from '../helpers/dialects.ts';
import { bindDevice, CONSUMER_PASSWORD, newConsumer, shareDevice } from '../helpers/device-flows.ts';
import {
  provisionTenant,
  request,
  startTestPlatform,
  type Tenant,
  type TestPlatform,
} from '../helpers/test-platform.ts';

type Device = { id: string; secret: string };

for (const dialect of await dialectCases()) {
  describe(`lock passcodes on ${dialect.name}`, { skip: dialect.skip }, () => {
    let tp: TestPlatform;
    let tenant: Tenant;
    let locks: Device[];

    before(async () => {
      tp = await startTestPlatform(dialect.name, { accounts: { stepUpMinutes: 10 } });
      tenant = await provisionTenant(tp, 2);
      const product = await request(tp.platform, 'POST', '/v1/products', {
        token: tenant.vendorToken,
        body: { name: 'Test Lock', category: 'lock' },
      });
      assert.equal(product.status, 201, product.text);
      const issued = await request(tp.platform, 'POST', `/v1/products/${product.body.id}/devices`, {
        token: tenant.vendorToken,
        body: { count: 6 },
      });
      assert.equal(issued.status, 201, issued.text);
      locks = issued.body.devices;
    });
    after(() => tp?.close());

    const nextLock = () => {
      const lock = locks.shift();
      assert.ok(lock, 'enough test locks');
      return lock;
    };
    const thisHour = () => Math.floor(Date.now() / HOUR_MS) * HOUR_MS;
    const issue = (token: string, deviceId: string, body: Record<string, unknown>) =>
      request(tp.platform, 'POST', `/v1/devices/${deviceId}/passcodes`, { token, body });
    const list = (token: string, deviceId: string) =>
      request(tp.platform, 'GET', `/v1/devices/${deviceId}/passcodes`, { token });
    const refused = (res: { status: number; body: any }, status: number, code: string, what: string) => {
      assert.equal(res.status, status, `${what}: ${JSON.stringify(res.body)}`);
      assert.equal(res.body.error?.code, code, what);
    };
    const rows = (deviceId: string) =>
      tp.query<Record<string, unknown>>('select * from lock_passcodes where device_id = $1 order by created_at', [
        deviceId,
      ]);
    const auditRows = async (type: string) => {
      await tp.platform.audit.flush();
      return tp.query<{ result: string; details: string; target: string; actor_type: string }>(
        'select result, details, target, actor_type from audit_entries where event_type = $1 order by seq',
        [type],
      );
    };
    const connect = (lock: Device) =>
      DeviceClient.connect({ url: tp.platform.mqttUrl, ca: tp.platform.caPem, deviceId: lock.id, secret: lock.secret });
    /** Polls until `check` passes (reports travel over MQTT and are written asynchronously). */
    const eventually = async (check: () => Promise<void>) => {
      for (let i = 0; ; i++) {
        try {
          return await check();
        } catch (error) {
          if (i >= 100) throw error;
          await sleep(50);
        }
      }
    };

    test('[LOCK-1] the owner issues codes after step-up; the lock verifies them offline in their window only', async () => {
      const lock = nextLock();
      const other = nextLock();
      const owner = await bindDevice(tp, lock);
      await bindDevice(tp, other, owner);
      const hour = thisHour();

      const once = await issue(owner.userToken, lock.id, { kind: 'one-time' });
      assert.equal(once.status, 201, once.text);
      assert.match(once.body.code, /^\d{12}$/);
      // Default window: the current hour (as the platform saw it) and the next five.
      assert.ok([hour, hour + HOUR_MS].includes(once.body.validFrom), 'starts this hour');
      assert.deepEqual(
        { kind: once.body.kind, counter: once.body.counter, length: once.body.validUntil - once.body.validFrom },
        { kind: 'one-time', counter: 0, length: 6 * HOUR_MS },
      );
      const window = { kind: 'time-window', validFrom: hour, validUntil: hour + 48 * HOUR_MS, label: 'guest room' };
      const stay = await issue(owner.userToken, lock.id, window);
      assert.equal(stay.status, 201, stay.text);
      const sibling = await issue(owner.userToken, lock.id, window);
      assert.equal(sibling.status, 201, sibling.text);
      assert.deepEqual([stay.body.counter, sibling.body.counter], [0, 1], 'same window: the next counter');
      assert.notEqual(stay.body.code, sibling.body.code);
      const later = await issue(owner.userToken, lock.id, {
        kind: 'time-window',
        validFrom: hour + 24 * HOUR_MS,
        validUntil: hour + 27 * HOUR_MS,
      });
      assert.equal(later.status, 201, later.text);
      const foreign = await issue(owner.userToken, other.id, { kind: 'one-time' });
      assert.equal(foreign.status, 201, foreign.text);

      // The lock, offline, with its own clock.
      let clock = Date.now();
      const keypad = new LockSimulator({ deviceId: lock.id, secret: lock.secret, now: () => clock });
      const opened = async (code: string) => (await keypad.enter(code)).opened;
      assert.equal(await opened(once.body.code), true, 'one-time code in its window');
      assert.deepEqual(await keypad.enter(once.body.code), { opened: false, reason: 'used' }, 'one-time: only once');
      assert.equal(await opened(stay.body.code), true);
      assert.equal(await opened(stay.body.code), true, 'time-window codes are reusable');
      assert.equal(await opened(sibling.body.code), true);
      assert.deepEqual(await keypad.enter(later.body.code), { opened: false, reason: 'invalid' }, 'not yet valid');
      assert.deepEqual(await keypad.enter(foreign.body.code), { opened: false, reason: 'invalid' }, "another lock's");
      clock = hour + 25 * HOUR_MS;
      assert.equal(await opened(later.body.code), true, 'valid once its window starts');
      clock = hour + 48 * HOUR_MS;
      assert.deepEqual(await keypad.enter(stay.body.code), { opened: false, reason: 'invalid' }, 'expired');
      // The right lock takes the foreign code.
      const otherKeypad = new LockSimulator({ deviceId: other.id, secret: other.secret });
      assert.equal((await otherKeypad.enter(foreign.body.code)).opened, true);

      // Listed without codes; stored without codes; audited without codes or labels.
      const listed = await list(owner.userToken, lock.id);
      assert.equal(listed.status, 200, listed.text);
      assert.equal(listed.body.items.length, 4);
      assert.ok(listed.body.items.every((p: Record<string, unknown>) => !('code' in p)));
      assert.deepEqual(
        listed.body.items
          .map((p: { id: string; status: string; label: string | null }) => [p.id, p.status, p.label])
          .sort(),
        [
          [later.body.id, 'scheduled', null],
          [stay.body.id, 'active', 'guest room'],
          [sibling.body.id, 'active', 'guest room'],
          [once.body.id, 'active', null],
        ].sort(),
      );
      const codes = [once, stay, sibling, later].map((r) => r.body.code as string);
      const stored = JSON.stringify(await rows(lock.id));
      const issuedAudit = await auditRows('lock.passcode.issue');
      for (const code of codes) {
        assert.ok(!listed.text.includes(code), 'no code in the list');
        assert.ok(!stored.includes(code), 'no code in the store');
        assert.ok(!JSON.stringify(issuedAudit).includes(code), 'no code in the audit log');
      }
      const mine = issuedAudit.filter((a) => a.target === lock.id);
      assert.equal(mine.length, 4);
      assert.ok(mine.every((a) => a.result === 'success' && !a.details.includes('guest room')));
    });

    test('[LOCK-1] uses are reported over MQTT and audited; a revoked code fails once the revocation reaches the lock', async () => {
      const lock = nextLock();
      const owner = await bindDevice(tp, lock);
      const hour = thisHour();
      const window = { kind: 'time-window', validFrom: hour, validUntil: hour + 24 * HOUR_MS };
      const a = (await issue(owner.userToken, lock.id, window)).body;
      const b = (await issue(owner.userToken, lock.id, window)).body;
      const c = (await issue(owner.userToken, lock.id, window)).body;

      let client = await connect(lock);
      const keypad = new LockSimulator({ deviceId: lock.id, secret: lock.secret });
      await keypad.attach(client);
      assert.equal((await keypad.enter(a.code)).opened, true);
      const usage = async (id: string) =>
        (await list(owner.userToken, lock.id)).body.items.find((p: { id: string }) => p.id === id);
      await eventually(async () => assert.equal((await usage(a.id)).useCount, 1));
      const used = await auditRows('lock.passcode.use');
      const entry = used.find((u) => u.target === a.id);
      assert.ok(entry, 'the use is audited against the passcode');
      assert.equal(entry.result, 'success');
      assert.equal(entry.actor_type, 'device');
      assert.ok(!entry.details.includes(a.code));

      // Revoked while the lock is connected: the list reaches it and the code fails; siblings still open.
      const seen = keypad.revocationUpdates;
      const revoked = await request(tp.platform, 'DELETE', `/v1/devices/${lock.id}/passcodes/${a.id}`, {
        token: owner.userToken,
      });
      assert.equal(revoked.status, 204, revoked.text);
      await keypad.revocationsApplied(seen + 1);
      assert.deepEqual(await keypad.enter(a.code), { opened: false, reason: 'revoked' });
      assert.equal((await keypad.enter(b.code)).opened, true);
      assert.equal((await usage(a.id)).status, 'revoked');

      // Revoked while the lock is offline: it still opens (nothing reached it), uses are queued; on
      // reconnecting the retained list arrives, the code fails and the queued use is reported.
      keypad.detach();
      await client.close();
      const revokedOffline = await request(tp.platform, 'DELETE', `/v1/devices/${lock.id}/passcodes/${b.id}`, {
        token: owner.userToken,
      });
      assert.equal(revokedOffline.status, 204, revokedOffline.text);
      assert.equal((await keypad.enter(c.code)).opened, true, 'offline use');
      assert.equal(keypad.pendingReports, 1);
      assert.equal((await keypad.enter(b.code)).opened, true, 'the revocation has not reached the lock yet');
      const before = keypad.revocationUpdates;
      client = await connect(lock);
      await keypad.attach(client);
      await keypad.revocationsApplied(before + 1);
      assert.deepEqual(await keypad.enter(b.code), { opened: false, reason: 'revoked' });
      assert.deepEqual(await keypad.enter(a.code), { opened: false, reason: 'revoked' });
      assert.equal(keypad.pendingReports, 0);
      await eventually(async () => assert.equal((await usage(c.id)).useCount, 1));

      // Revoking again is harmless; an unknown passcode is not found.
      const again = await request(tp.platform, 'DELETE', `/v1/devices/${lock.id}/passcodes/${a.id}`, {
        token: owner.userToken,
      });
      assert.equal(again.status, 204, again.text);
      refused(
        await request(tp.platform, 'DELETE', `/v1/devices/${lock.id}/passcodes/lpc_AAAAAAAAAAAAAAAAAAAAAA`, {
          token: owner.userToken,
        }),
        404,
        'ERR_LOCK_PASSCODE_NOT_FOUND',
        'unknown passcode',
      );
      // A malformed use report is refused (0x99 Payload format invalid); other events pass.
      await assert.rejects(
        client.publish(deviceTopic.events(lock.id), JSON.stringify({ type: 'passcode-used', counter: -1 }), 1),
        (error: { code?: unknown }) => error.code === 0x99 || error.code === 'MQTT_PUBACK_153',
      );
      await client.publish(deviceTopic.events(lock.id), JSON.stringify({ type: 'door', open: true }), 1);
      keypad.detach();
      await client.close();
    });

    test('[LOCK-1] without step-up, as a guest, member, stranger or vendor, or for a non-lock: refused, nothing issued', async () => {
      const lock = nextLock();
      const owner = await bindDevice(tp, lock);
      const admin = await shareDevice(tp, owner.userToken, lock.id, 'admin');
      const member = await shareDevice(tp, owner.userToken, lock.id, 'member');
      const guest = await shareDevice(tp, owner.userToken, lock.id, 'guest');
      const stranger = await newConsumer(tp, 'stranger');
      const body = { kind: 'one-time' };

      for (const [who, token] of [
        ['guest', guest.userToken],
        ['member', member.userToken],
        ['stranger', stranger.userToken],
      ] as const) {
        refused(await issue(token, lock.id, body), 404, 'ERR_DEVICE_NOT_FOUND', `${who} issues`);
        refused(await list(token, lock.id), 404, 'ERR_DEVICE_NOT_FOUND', `${who} lists`);
      }
      refused(
        await request(tp.platform, 'POST', `/v1/devices/${lock.id}/passcodes`, { token: tenant.vendorToken, body }),
        404,
        'ERR_DEVICE_NOT_FOUND',
        'the vendor issues',
      );
      assert.equal((await rows(lock.id)).length, 0, 'nothing issued');

      // The owner's sign-in is older than accounts.stepUpMinutes: refused until re-authenticated.
      await tp.platform.store.db
        .updateTable('sessions')
        .set({ authenticated_at: Date.now() - 60 * 60_000 })
        .where('principal_id', '=', owner.userId)
        .execute();
      refused(await issue(owner.userToken, lock.id, body), 401, 'ERR_AUTH_STEP_UP_REQUIRED', 'stale sign-in');
      assert.equal((await rows(lock.id)).length, 0, 'nothing issued without step-up');
      const stepUp = await request(tp.platform, 'POST', '/v1/auth/reauthenticate', {
        token: owner.userToken,
        headers: { 'x-castellan-client': 'app' },
        body: { password: CONSUMER_PASSWORD },
      });
      assert.equal(stepUp.status, 200, stepUp.text);
      const fresh = stepUp.body.token as string;
      const issued = await issue(fresh, lock.id, body);
      assert.equal(issued.status, 201, issued.text);
      const byAdmin = await issue(admin.userToken, lock.id, body);
      assert.equal(byAdmin.status, 201, 'an admin may issue');
      assert.equal(byAdmin.body.counter, 1);

      // Guests cannot revoke either; the code stays valid.
      refused(
        await request(tp.platform, 'DELETE', `/v1/devices/${lock.id}/passcodes/${issued.body.id}`, {
          token: guest.userToken,
        }),
        404,
        'ERR_DEVICE_NOT_FOUND',
        'guest revokes',
      );
      assert.deepEqual(
        (await rows(lock.id)).map((r) => r.revoked_at),
        [null, null],
      );

      // Not a lock: refused with its own code, after the role check.
      const plug = tenant.devices[0]!;
      await bindDevice(tp, plug, { userToken: fresh, userId: owner.userId });
      refused(await issue(fresh, plug.id, body), 409, 'ERR_LOCK_NOT_A_LOCK', 'a plug');
      refused(await list(fresh, plug.id), 409, 'ERR_LOCK_NOT_A_LOCK', 'list on a plug');
      assert.equal((await rows(plug.id)).length, 0);

      // Windows a code cannot carry.
      const hour = thisHour();
      const bad: Array<[Record<string, unknown>, number, string]> = [
        [{ kind: 'time-window', validFrom: hour, validUntil: hour + 25 * HOUR_MS }, 400, 'ERR_LOCK_PASSCODE_INVALID'],
        [{ kind: 'time-window', validFrom: hour }, 400, 'ERR_LOCK_PASSCODE_INVALID'],
        [
          { kind: 'time-window', validFrom: hour - 5 * HOUR_MS, validUntil: hour - HOUR_MS },
          400,
          'ERR_LOCK_PASSCODE_INVALID',
        ],
        [{ kind: 'one-time', validFrom: hour + 400 * 24 * HOUR_MS }, 400, 'ERR_LOCK_PASSCODE_INVALID'],
        [{ kind: 'one-time', validFrom: hour, validUntil: hour + 2 * HOUR_MS }, 400, 'ERR_LOCK_PASSCODE_INVALID'],
        [{ kind: 'one-time', validFrom: hour + 1 }, 400, 'ERR_VALIDATION_FAILED'],
        [{ kind: 'master' }, 400, 'ERR_VALIDATION_FAILED'],
      ];
      for (const [input, status, code] of bad)
        refused(await issue(fresh, lock.id, input), status, code, JSON.stringify(input));
      const invalid = await issue(fresh, lock.id, bad[0]![0]);
      assert.equal(
        invalid.body.error.message,
        'Passcode window: a time window must last 1 to 24 hours or 2 to 7 whole days',
      );
      assert.equal((await rows(lock.id)).length, 2, 'nothing issued for bad windows');

      // Twelve time-window codes can share a window; the thirteenth is refused.
      const shared = { kind: 'time-window', validFrom: hour + 2 * HOUR_MS, validUntil: hour + 3 * HOUR_MS };
      for (let i = 0; i < 12; i++) assert.equal((await issue(fresh, lock.id, shared)).body.counter, i);
      refused(await issue(fresh, lock.id, shared), 409, 'ERR_LOCK_PASSCODE_EXHAUSTED', 'thirteenth code');

      const denied = (await auditRows('lock.passcode.issue')).filter(
        (a) => a.target === lock.id && a.result === 'denied',
      );
      assert.ok(denied.some((a) => a.details.includes('ERR_AUTH_STEP_UP_REQUIRED')));
      assert.ok(denied.some((a) => a.details.includes('ERR_DEVICE_NOT_FOUND')));
    });

    test('[LOCK-1] five wrong codes lock the keypad out, for longer each time; random codes never open it', async () => {
      const lock = nextLock();
      const owner = await bindDevice(tp, lock);
      const code = (
        await issue(owner.userToken, lock.id, {
          kind: 'time-window',
          validFrom: thisHour(),
          validUntil: thisHour() + 2 * HOUR_MS,
        })
      ).body.code as string;
      let clock = Date.now();
      const keypad = new LockSimulator({ deviceId: lock.id, secret: lock.secret, now: () => clock });
      const wrong = code.slice(0, 11) + String((Number(code[11]) + 1) % 10);
      for (let i = 0; i < 4; i++) assert.equal((await keypad.enter(wrong)).opened, false);
      assert.deepEqual(await keypad.enter(wrong), { opened: false, reason: 'invalid' });
      const locked = await keypad.enter(code);
      assert.deepEqual(locked, { opened: false, reason: 'locked-out', retryAt: clock + 5 * 60_000 });
      clock += 5 * 60_000;
      assert.equal((await keypad.enter(code)).opened, true, 'the right code after the pause');
      // A correct code resets the count; two lockouts in a row: the second lasts twice as long.
      for (let i = 0; i < 5; i++) await keypad.enter(wrong);
      clock += 5 * 60_000;
      for (let i = 0; i < 5; i++) await keypad.enter(wrong);
      assert.equal(keypad.lockedUntil, clock + 10 * 60_000);

      // Random 12-digit codes (and random strings) never open it and never throw.
      const guesser = new LockSimulator({
        deviceId: lock.id,
        secret: lock.secret,
        lockout: { maxWrong: Number.MAX_SAFE_INTEGER },
      });
      await fc.assert(
        fc.asyncProperty(fc.oneof(fc.stringMatching(/^\d{12}$/), fc.string()), async (typed) => {
          fc.pre(typed !== code);
          assert.equal((await guesser.enter(typed)).opened, false);
        }),
        { numRuns: 3000 },
      );
    });

    test("[LOCK-1] [BIND-5] unbinding revokes the previous owner's codes on the lock and wipes their records", async () => {
      const lock = nextLock();
      const owner = await bindDevice(tp, lock);
      const hour = thisHour();
      const window = { kind: 'time-window', validFrom: hour, validUntil: hour + 72 * HOUR_MS, label: 'nanny' };
      const code = (await issue(owner.userToken, lock.id, window)).body.code as string;
      const client = await connect(lock);
      const keypad = new LockSimulator({ deviceId: lock.id, secret: lock.secret });
      await keypad.attach(client);
      assert.equal((await keypad.enter(code)).opened, true);
      await eventually(async () => assert.equal((await rows(lock.id))[0]!.use_count, 1));

      const seen = keypad.revocationUpdates;
      const unbound = await request(tp.platform, 'DELETE', `/v1/devices/${lock.id}/binding`, {
        token: owner.userToken,
      });
      assert.equal(unbound.status, 200, unbound.text);
      await keypad.revocationsApplied(seen + 1);
      assert.deepEqual(await keypad.enter(code), { opened: false, reason: 'revoked' }, "the previous owner's code");
      const [kept] = await rows(lock.id);
      assert.equal(kept!.issued_by, null);
      assert.equal(kept!.label, null);
      assert.equal(Number(kept!.use_count), 0);
      assert.equal(kept!.last_used_at, null);
      assert.notEqual(kept!.revoked_at, null);
      const wiped = (await auditRows('lock.passcode.wipe')).filter((a) => a.target === lock.id);
      assert.equal(wiped.length, 1);

      // The new owner sees none of it; a code for the same window gets the next counter and opens.
      keypad.detach();
      await client.close();
      const next = await bindDevice(tp, lock);
      const listed = await list(next.userToken, lock.id);
      assert.deepEqual(listed.body.items, []);
      const fresh = await issue(next.userToken, lock.id, window);
      assert.equal(fresh.status, 201, fresh.text);
      assert.equal(fresh.body.counter, 1);
      assert.equal((await keypad.enter(fresh.body.code)).opened, true);
      refused(await list(owner.userToken, lock.id), 404, 'ERR_DEVICE_NOT_FOUND', 'the previous owner lists');
    });
  });
}
