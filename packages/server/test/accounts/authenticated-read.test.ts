// The authenticated device read on both databases (GET /v1/devices/:id with a person's session): the
// session, the person and their memberships are one query and the device, the access check and the
// presence another, so these tests pin down that nothing read once per request is stale: a removed
// membership, a disabled person and a revoked session are refused at the next request (SESS-3), and
// the joined presence is the same as the operator's separate read.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { dialectCases } from '../helpers/dialects.ts';
import { connectDevice, endClient, publishOutcome } from '../helpers/mqtt-clients.ts';
import {
  provisionTenant,
  request,
  startTestPlatform,
  type Tenant,
  type TestPlatform,
} from '../helpers/test-platform.ts';

for (const dialect of await dialectCases()) {
  describe(`authenticated device read on ${dialect.name}`, { skip: dialect.skip }, () => {
    let tp: TestPlatform;
    let a: Tenant;
    let b: Tenant;
    let count = 0;

    before(async () => {
      tp = await startTestPlatform(dialect.name);
      a = await provisionTenant(tp, 3);
      b = await provisionTenant(tp, 1, a.adminToken);
    });
    after(() => tp?.close());

    /** A signed-in person, a member of `vendorId` in `role` when given; returns their ID and token. */
    async function person(vendorId?: string, role: 'owner' | 'admin' | 'viewer' = 'viewer') {
      const ctx = tp.platform.accountsContext;
      const user = await ctx.users.create({
        identifier: { kind: 'email', value: `reader-${++count}@example.com` },
        kind: 'developer',
        status: 'active',
        passwordHash: null,
      });
      if (vendorId) {
        await ctx.db
          .insertInto('organisation_members')
          .values({ vendor_id: vendorId, user_id: user.id, role, created_at: Date.now() })
          .execute();
      }
      const session = await ctx.sessions.create({
        principalKind: 'user',
        principalId: user.id,
        level: 'full',
        persistent: false,
        ip: '127.0.0.1',
      });
      return { id: user.id, sessionId: session.session.id, token: session.token };
    }

    const read = (deviceId: string, token: NonNullable<Parameters<typeof request>[3]>['token']) =>
      request(tp.platform, 'GET', `/v1/devices/${deviceId}`, { token });

    test('[ORG-1] a member sees the device and the same presence as the operator (never connected, online with unwritten activity, offline)', async () => {
      const viewer = await person(a.vendorId, 'viewer');
      const d = a.devices[0]!;
      const same = async (what: string) => {
        const mine = await read(d.id, viewer.token);
        const operator = await read(d.id, a.vendorToken);
        assert.equal(mine.status, 200, `${what}: ${mine.text}`);
        assert.deepEqual(mine.body, operator.body, what);
        return mine.body;
      };
      const never = await same('never connected');
      assert.deepEqual(never.presence, {
        online: false,
        lastSeenAt: null,
        lastConnectedAt: null,
        lastDisconnectedAt: null,
        lastDisconnectReason: null,
      });
      assert.equal(never.vendorId, a.vendorId);

      const client = await connectDevice(tp.platform, d, 5);
      const online = (await same('online')).presence;
      assert.equal(online.online, true);
      await sleep(5);
      // Activity is kept in memory until the next flush: the joined read folds it in as get() does.
      assert.equal(await publishOutcome(client, `devices/${d.id}/telemetry`, '{"w":1}', 1), 0);
      const active = (await same('after a message')).presence;
      assert.ok(active.lastSeenAt > online.lastConnectedAt);
      await endClient(client);
      for (let i = 0; i < 100 && (await read(d.id, a.vendorToken)).body.presence.online; i++) await sleep(20);
      const offline = (await same('offline')).presence;
      assert.equal(offline.online, false);
      assert.equal(offline.lastDisconnectReason, 'client');
    });

    test('[ORG-3] deny by default: without a membership or a relation, a device of another tenant is not found', async () => {
      const stranger = await person();
      const otherOrg = await person(b.vendorId, 'owner');
      for (const token of [stranger.token, otherOrg.token]) {
        const res = await read(a.devices[1]!.id, token);
        assert.equal(res.status, 404);
        assert.equal(res.body.error.code, 'ERR_DEVICE_NOT_FOUND');
      }
      // Their own organisation's device is readable with the same session.
      assert.equal((await read(b.devices[0]!.id, otherOrg.token)).status, 200);
    });

    test('[SESS-3] a removed membership, a disabled person and a revoked session are refused at the next request', async () => {
      const ctx = tp.platform.accountsContext;
      const d = a.devices[2]!;
      const member = await person(a.vendorId, 'admin');
      assert.equal((await read(d.id, member.token)).status, 200);
      await ctx.db
        .deleteFrom('organisation_members')
        .where('user_id', '=', member.id)
        .where('vendor_id', '=', a.vendorId)
        .execute();
      const removed = await read(d.id, member.token);
      assert.equal(removed.status, 404);
      assert.equal(removed.body.error.code, 'ERR_DEVICE_NOT_FOUND');

      const disabled = await person(a.vendorId, 'viewer');
      assert.equal((await read(d.id, disabled.token)).status, 200);
      await ctx.db.updateTable('users').set({ status: 'disabled' }).where('id', '=', disabled.id).execute();
      const refused = await read(d.id, disabled.token);
      assert.equal(refused.status, 401);
      assert.equal(refused.body.error.code, 'ERR_AUTH_INVALID');

      const loggedOut = await person(a.vendorId, 'owner');
      assert.equal((await read(d.id, loggedOut.token)).status, 200);
      await ctx.sessions.revoke(loggedOut.sessionId);
      const revoked = await read(d.id, loggedOut.token);
      assert.equal(revoked.status, 401);
      assert.equal(revoked.body.error.code, 'ERR_AUTH_INVALID');
    });
  });
}
