// Sharing (BIND-3) on both databases, devices bound through the SDK: roles (admin, member, guest) with
// what each may do, optional expiry enforced at every check, revocation effective at once, who may
// grant what, and the vendor's view of a consumer's device (BIND-2's tenant mapping).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { dialectCases } from '../helpers/dialects.ts';
import { bindDevice, newConsumer, shareDevice } from '../helpers/device-flows.ts';
import {
  issueAccessKey,
  provisionTenant,
  request,
  startTestPlatform,
  type Tenant,
  type TestPlatform,
} from '../helpers/test-platform.ts';

for (const dialect of await dialectCases()) {
  describe(`sharing on ${dialect.name}`, { skip: dialect.skip }, () => {
    let tp: TestPlatform;
    let tenant: Tenant;
    let spare: Tenant['devices'];

    before(async () => {
      tp = await startTestPlatform(dialect.name, { accounts: { stepUpMinutes: 60 } });
      tenant = await provisionTenant(tp, 8);
      spare = [...tenant.devices];
    });
    after(() => tp?.close());

    const nextDevice = () => {
      const device = spare.shift();
      assert.ok(device, 'enough test devices');
      return device;
    };
    const get = (path: string, token: string) => request(tp.platform, 'GET', path, { token });
    const notFound = (res: { status: number; body: { error?: { code: string } } }, what: string) => {
      assert.equal(res.status, 404, `${what}: ${JSON.stringify(res.body)}`);
      assert.equal(res.body.error?.code, 'ERR_DEVICE_NOT_FOUND', what);
    };

    test('[BIND-3] roles: members and guests see the device, only the owner and admins manage shares, only the owner unbinds', async () => {
      const device = nextDevice();
      const owner = await bindDevice(tp, device);
      const admin = await shareDevice(tp, owner.userToken, device.id, 'admin');
      const member = await shareDevice(tp, owner.userToken, device.id, 'member');
      const guest = await shareDevice(tp, admin.userToken, device.id, 'guest');

      const roles = async (token: string) =>
        (await get('/v1/me/devices', token)).body.items.map((d: { id: string; role: string }) => [d.id, d.role]);
      assert.deepEqual(await roles(owner.userToken), [[device.id, 'owner']]);
      assert.deepEqual(await roles(admin.userToken), [[device.id, 'admin']]);
      assert.deepEqual(await roles(member.userToken), [[device.id, 'member']]);
      assert.deepEqual(await roles(guest.userToken), [[device.id, 'guest']]);

      for (const who of [owner, admin, member, guest]) {
        const read = await get(`/v1/devices/${device.id}`, who.userToken);
        assert.equal(read.status, 200, read.text);
      }
      // Share management: owner and admin list; member and guest cannot even see there is a list.
      const listed = await get(`/v1/devices/${device.id}/shares`, admin.userToken);
      assert.equal(listed.status, 200, listed.text);
      assert.deepEqual(
        listed.body.items.map((s: { userId: string; role: string }) => [s.userId, s.role]).sort(),
        [
          [admin.userId, 'admin'],
          [member.userId, 'member'],
          [guest.userId, 'guest'],
        ].sort(),
      );
      for (const who of [member, guest]) {
        notFound(await get(`/v1/devices/${device.id}/shares`, who.userToken), 'list shares');
        const share = await request(tp.platform, 'POST', `/v1/devices/${device.id}/shares`, {
          token: who.userToken,
          body: { userId: owner.userId, role: 'guest' },
        });
        notFound(share, 'share');
        notFound(
          await request(tp.platform, 'DELETE', `/v1/devices/${device.id}/binding`, { token: who.userToken }),
          'unbind',
        );
      }
      notFound(
        await request(tp.platform, 'DELETE', `/v1/devices/${device.id}/binding`, { token: admin.userToken }),
        'admin unbind',
      );
      // An admin grants member and guest, never admin; nor changes another admin's share.
      const stranger = await newConsumer(tp, 'stranger');
      const adminGrantsAdmin = await request(tp.platform, 'POST', `/v1/devices/${device.id}/shares`, {
        token: admin.userToken,
        body: { userId: stranger.userId, role: 'admin' },
      });
      assert.equal(adminGrantsAdmin.status, 403);
      assert.equal(adminGrantsAdmin.body.error.code, 'ERR_SHARE_ROLE_FORBIDDEN');
      assert.equal(adminGrantsAdmin.body.error.message, 'Your role on this device cannot grant this role');
      const secondAdmin = await shareDevice(tp, owner.userToken, device.id, 'admin', { to: stranger });
      const demote = await request(tp.platform, 'POST', `/v1/devices/${device.id}/shares`, {
        token: admin.userToken,
        body: { userId: secondAdmin.userId, role: 'guest' },
      });
      assert.equal(demote.status, 403);
      assert.equal(demote.body.error.code, 'ERR_SHARE_ROLE_FORBIDDEN');
      const revokeAdmin = await request(
        tp.platform,
        'DELETE',
        `/v1/devices/${device.id}/shares/${secondAdmin.shareId}`,
        {
          token: admin.userToken,
        },
      );
      assert.equal(revokeAdmin.status, 403);
      assert.deepEqual(await roles(secondAdmin.userToken), [[device.id, 'admin']], 'still an admin');
      // Re-sharing replaces the role (one share per person).
      const promoted = await request(tp.platform, 'POST', `/v1/devices/${device.id}/shares`, {
        token: owner.userToken,
        body: { userId: guest.userId, role: 'member' },
      });
      assert.equal(promoted.status, 201, promoted.text);
      assert.equal(promoted.body.id, guest.shareId);
      assert.deepEqual(await roles(guest.userToken), [[device.id, 'member']]);
    });

    test('[BIND-3] the invitee must be another active person: unknown e-mail, oneself and the owner are refused', async () => {
      const device = nextDevice();
      const owner = await bindDevice(tp, device);
      const admin = await shareDevice(tp, owner.userToken, device.id, 'admin');
      const cases: Array<[string, Record<string, unknown>]> = [
        ['unknown e-mail', { email: 'nobody-here@example.test', role: 'guest' }],
        ['unknown user ID', { userId: 'usr_AAAAAAAAAAAAAAAAAAAAAA', role: 'guest' }],
        ['the owner', { userId: owner.userId, role: 'guest' }],
      ];
      for (const [label, body] of cases) {
        const res = await request(tp.platform, 'POST', `/v1/devices/${device.id}/shares`, {
          token: admin.userToken,
          body,
        });
        assert.equal(res.status, 404, `${label}: ${res.text}`);
        assert.equal(res.body.error.code, 'ERR_SHARE_INVITEE_NOT_FOUND', label);
        assert.equal(res.body.error.message, 'No active account can receive this share', label);
      }
      const self = await request(tp.platform, 'POST', `/v1/devices/${device.id}/shares`, {
        token: owner.userToken,
        body: { userId: owner.userId, role: 'admin' },
      });
      assert.equal(self.body.error.code, 'ERR_SHARE_INVITEE_NOT_FOUND');
      const both = await request(tp.platform, 'POST', `/v1/devices/${device.id}/shares`, {
        token: owner.userToken,
        body: { userId: admin.userId, email: 'x@example.test', role: 'guest' },
      });
      assert.equal(both.status, 400);
      assert.equal(both.body.error.message, 'Give exactly one of email or userId');
      const past = await request(tp.platform, 'POST', `/v1/devices/${device.id}/shares`, {
        token: owner.userToken,
        body: { userId: admin.userId, role: 'guest', expiresAt: Date.now() - 1000 },
      });
      assert.equal(past.status, 400);
      assert.equal(past.body.error.message, 'expiresAt must be in the future');
      const owners = await tp.query<{ n: number }>('select count(*) as n from device_shares where device_id = $1', [
        device.id,
      ]);
      assert.equal(Number(owners[0]!.n), 1, 'only the admin share exists');
    });

    test('[BIND-3] an expired share gives no access, at every check, before any purge', async () => {
      const device = nextDevice();
      const owner = await bindDevice(tp, device);
      const expiresAt = Date.now() + 1500;
      const guest = await shareDevice(tp, owner.userToken, device.id, 'member', { expiresAt });
      const before = await get(`/v1/devices/${device.id}`, guest.userToken);
      assert.equal(before.status, 200, before.text);
      const mine = await get('/v1/me/devices', guest.userToken);
      assert.equal(mine.body.items[0].expiresAt, expiresAt);
      await sleep(Math.max(0, expiresAt - Date.now()) + 100);
      notFound(await get(`/v1/devices/${device.id}`, guest.userToken), 'after expiry');
      notFound(await get(`/v1/devices/${device.id}/telemetry`, guest.userToken), 'telemetry after expiry');
      assert.deepEqual((await get('/v1/me/devices', guest.userToken)).body.items, []);
      assert.deepEqual((await get(`/v1/devices/${device.id}/shares`, owner.userToken)).body.items, []);
      assert.equal(
        (await tp.query('select id from device_shares where device_id = $1', [device.id])).length,
        1,
        'the row is still there: the check itself enforces expiry',
      );
      assert.deepEqual(await tp.platform.bindings.purgeExpired(), { shares: 1, tokens: 0 });
    });

    test('[BIND-3] revocation takes effect immediately; a person can leave a share; audited', async () => {
      const device = nextDevice();
      const owner = await bindDevice(tp, device);
      const member = await shareDevice(tp, owner.userToken, device.id, 'member');
      const guest = await shareDevice(tp, owner.userToken, device.id, 'guest');
      assert.equal((await get(`/v1/devices/${device.id}`, member.userToken)).status, 200);
      const revoked = await request(tp.platform, 'DELETE', `/v1/devices/${device.id}/shares/${member.shareId}`, {
        token: owner.userToken,
      });
      assert.equal(revoked.status, 204, revoked.text);
      notFound(await get(`/v1/devices/${device.id}`, member.userToken), 'right after revocation');
      const again = await request(tp.platform, 'DELETE', `/v1/devices/${device.id}/shares/${member.shareId}`, {
        token: owner.userToken,
      });
      assert.equal(again.status, 404);
      assert.equal(again.body.error.code, 'ERR_SHARE_NOT_FOUND');
      // The guest leaves on their own; they cannot touch anyone else's share.
      const left = await request(tp.platform, 'DELETE', `/v1/devices/${device.id}/shares/${guest.shareId}`, {
        token: guest.userToken,
      });
      assert.equal(left.status, 204, left.text);
      notFound(await get(`/v1/devices/${device.id}`, guest.userToken), 'after leaving');
      await tp.platform.audit.flush();
      const audited = await tp.query<{ event_type: string; details: string }>(
        "select event_type, details from audit_entries where target = $1 and event_type like 'device.share%' order by seq",
        [device.id],
      );
      assert.deepEqual(
        audited.map((a) => a.event_type),
        ['device.share', 'device.share', 'device.share.revoke', 'device.share.revoke'],
      );
    });

    test('[BIND-3] a share of one device gives nothing on another, and shares die with the binding', async () => {
      const [d1, d2] = [nextDevice(), nextDevice()];
      const owner = await bindDevice(tp, d1);
      await bindDevice(tp, d2, owner);
      const member = await shareDevice(tp, owner.userToken, d1.id, 'member');
      notFound(await get(`/v1/devices/${d2.id}`, member.userToken), 'other device');
      // A share ID of d1 used on d2's path: not found.
      const cross = await request(tp.platform, 'DELETE', `/v1/devices/${d2.id}/shares/${member.shareId}`, {
        token: owner.userToken,
      });
      assert.equal(cross.status, 404);
      assert.equal(cross.body.error.code, 'ERR_SHARE_NOT_FOUND');
      const unbound = await request(tp.platform, 'DELETE', `/v1/devices/${d1.id}/binding`, { token: owner.userToken });
      assert.equal(unbound.status, 200, unbound.text);
      notFound(await get(`/v1/devices/${d1.id}`, member.userToken), 'after unbind');
      assert.equal((await tp.query('select id from device_shares where device_id = $1', [d1.id])).length, 0);
    });

    test("[BIND-2] vendors see their own consumers' devices by tenant rules, never share or unbind them", async () => {
      const device = nextDevice();
      const owner = await bindDevice(tp, device);
      const readOnly = await issueAccessKey(tp.platform, tenant.adminToken, tenant.vendorId, {
        scopes: ['devices:read'],
      });
      const read = await request(tp.platform, 'GET', `/v1/devices/${device.id}`, { token: tenant.vendorToken });
      assert.equal(read.status, 200, read.text);
      assert.equal((await request(tp.platform, 'GET', `/v1/devices/${device.id}`, { token: readOnly })).status, 200);
      notFound(
        await request(tp.platform, 'GET', `/v1/devices/${device.id}/shares`, { token: tenant.vendorToken }),
        'vendor lists shares',
      );
      notFound(
        await request(tp.platform, 'POST', `/v1/devices/${device.id}/shares`, {
          token: tenant.vendorToken,
          body: { userId: owner.userId, role: 'guest' },
        }),
        'vendor shares',
      );
      notFound(
        await request(tp.platform, 'DELETE', `/v1/devices/${device.id}/binding`, { token: tenant.vendorToken }),
        'vendor unbinds',
      );
      const other = await provisionTenant(tp, 0, tenant.adminToken);
      notFound(
        await request(tp.platform, 'GET', `/v1/devices/${device.id}`, { token: other.vendorToken }),
        "another vendor's operator",
      );
      // Staff reach no consumer device through these routes.
      notFound(await get(`/v1/devices/${device.id}/shares`, tenant.adminToken), 'staff lists shares');
      assert.equal(await tp.platform.deviceAccess.roleOf(owner.userId, device.id), 'owner');
      assert.deepEqual(await tp.platform.deviceAccess.devicesOf(owner.userId), [device.id]);
    });
  });
}
