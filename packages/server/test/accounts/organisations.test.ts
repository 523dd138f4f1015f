// Vendor organisations (ORG-1, ORG-3): personal and enterprise organisations, roles owner / admin /
// viewer, invitations by e-mail, members acting on their organisation's products and devices, key
// material for owners only, and isolation between organisations. Every refusal is checked by code and
// by what did not happen (no row written, no data of another organisation returned).
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { FastifyRequest } from 'fastify';
import { can, hashPassword, normaliseIdentifier, OUTBOX_DIR } from '../../src/accounts/index.ts';
import { createPersonalOrganisation } from '../../src/accounts/organisations-service.ts';
import { dialectCases } from '../helpers/dialects.ts';
import { request, startTestPlatform, type TestPlatform } from '../helpers/test-platform.ts';

interface Person {
  id: string;
  email: string;
  token: string;
  personal: string;
}

for (const dialect of await dialectCases()) {
  describe(`organisations on ${dialect.name}`, { skip: dialect.skip }, () => {
    let tp: TestPlatform;
    let passwordHash: string;
    const p = () => tp.platform;
    const ctx = () => tp.platform.accountsContext;

    async function person(email: string, kind: 'developer' | 'consumer' = 'developer'): Promise<Person> {
      const user = await ctx().users.create({
        identifier: normaliseIdentifier(email),
        kind,
        status: 'active',
        passwordHash,
      });
      const personal = kind === 'developer' ? (await createPersonalOrganisation(ctx(), user.id)).vendorId : '';
      const issued = await ctx().sessions.create({
        principalKind: 'user',
        principalId: user.id,
        level: 'full',
        persistent: false,
        ip: '127.0.0.1',
      });
      return { id: user.id, email, token: issued.token, personal };
    }

    /** The newest outbox message to `to` (the development sender writes one JSON file each). */
    function lastMessageTo(to: string): { to: string; text: string; purpose: string; subject: string } | undefined {
      const dir = join(tp.dataDir, OUTBOX_DIR);
      const files = readdirSync(dir)
        .filter((f) => f.endsWith('.json'))
        .sort();
      const messages = files.map((f) => JSON.parse(readFileSync(join(dir, f), 'utf8')));
      return messages.filter((m) => m.to === to).at(-1);
    }

    async function invite(inviter: Person, vendorId: string, email: string, role: string) {
      return request(p(), 'POST', `/v1/orgs/${vendorId}/invitations`, { token: inviter.token, body: { email, role } });
    }

    /** Invites `member` in `role` and accepts with the token from the e-mail. */
    async function join_(inviter: Person, vendorId: string, member: Person, role: string): Promise<void> {
      const sent = await invite(inviter, vendorId, member.email, role);
      assert.equal(sent.status, 201, sent.text);
      const token = /cas_inv_[A-Za-z0-9_-]+/.exec(lastMessageTo(member.email)!.text)![0];
      const accepted = await request(p(), 'POST', '/v1/invitations/accept', { token: member.token, body: { token } });
      assert.equal(accepted.status, 200, accepted.text);
    }

    async function createOrg(owner: Person, name: string): Promise<string> {
      const res = await request(p(), 'POST', '/v1/orgs', { token: owner.token, body: { name } });
      assert.equal(res.status, 201, res.text);
      return res.body.id as string;
    }

    async function count(table: string, where = '', values: unknown[] = []): Promise<number> {
      const rows = await tp.query<{ n: number }>(`select count(*) as n from ${table} ${where}`, values);
      return Number(rows[0]!.n);
    }

    /** The principal the platform resolves for a session token (the real request authenticator). */
    async function principalFor(token: string) {
      const fake = { headers: { authorization: `Bearer ${token}` }, ip: '127.0.0.1', cookies: {} };
      const principal = await ctx().authenticator.resolve(fake as unknown as FastifyRequest);
      assert.ok(principal);
      return principal;
    }

    before(async () => {
      tp = await startTestPlatform(dialect.name);
      passwordHash = await hashPassword('correct horse battery staple 7');
    });
    after(() => tp?.close());

    test('[ORG-1] a developer has exactly one personal organisation, owned by them', async () => {
      const dev = await person('personal@example.com');
      const list = await request(p(), 'GET', '/v1/orgs', { token: dev.token });
      assert.equal(list.status, 200);
      assert.equal(list.body.items.length, 1);
      const [org] = list.body.items;
      assert.equal(org.id, dev.personal);
      assert.equal(org.kind, 'personal');
      assert.equal(org.role, 'owner');
      assert.equal(org.name, 'Personal');
      assert.match(org.code, /^[0-9a-f]{6}$/);
      // Idempotent, also when called concurrently.
      const again = await Promise.all([1, 2, 3].map(() => createPersonalOrganisation(ctx(), dev.id)));
      for (const r of again) assert.equal(r.vendorId, dev.personal);
      assert.equal(
        await count(
          'vendors v join organisation_members m on m.vendor_id = v.id',
          `where m.user_id = $1 and v.kind = 'personal'`,
          [dev.id],
        ),
        1,
      );
      const members = await tp.query<{ user_id: string; role: string }>(
        'select user_id, role from organisation_members where vendor_id = $1',
        [dev.personal],
      );
      assert.deepEqual(
        members.map((m) => ({ ...m })),
        [{ user_id: dev.id, role: 'owner' }],
      );
    });

    test('[ORG-1] a developer creates an enterprise organisation and owns it; a consumer cannot', async () => {
      const dev = await person('founder@example.com');
      const created = await request(p(), 'POST', '/v1/orgs', { token: dev.token, body: { name: 'Acme Devices' } });
      assert.equal(created.status, 201);
      assert.equal(created.body.kind, 'enterprise');
      assert.equal(created.body.role, 'owner');
      assert.equal(created.body.name, 'Acme Devices');
      const list = await request(p(), 'GET', '/v1/orgs', { token: dev.token });
      assert.deepEqual(
        list.body.items.map((o: { id: string; role: string }) => [o.id, o.role]),
        [
          [dev.personal, 'owner'],
          [created.body.id, 'owner'],
        ],
      );
      const read = await request(p(), 'GET', `/v1/orgs/${created.body.id}`, { token: dev.token });
      assert.equal(read.status, 200);
      assert.equal(read.body.code, created.body.code);

      const consumer = await person('consumer@example.com', 'consumer');
      const vendorsBefore = await count('vendors');
      const refused = await request(p(), 'POST', '/v1/orgs', { token: consumer.token, body: { name: 'Nope' } });
      assert.equal(refused.status, 403);
      assert.equal(refused.body.error.code, 'ERR_AUTH_FORBIDDEN');
      assert.equal(await count('vendors'), vendorsBefore, 'no organisation was created');
      assert.equal(await count('organisation_members', 'where user_id = $1', [consumer.id]), 0);
    });

    test('[ORG-1] an invitation is e-mailed, accepted once, and only by the invited person', async () => {
      const owner = await person('owner-inv@example.com');
      const invitee = await person('invitee@example.com');
      const stranger = await person('stranger@example.com');
      const org = await createOrg(owner, 'Invite Co');

      const sent = await invite(owner, org, 'Invitee@Example.com', 'admin');
      assert.equal(sent.status, 201);
      assert.equal(sent.body.role, 'admin');
      assert.equal(sent.body.vendorId, org);
      assert.equal(sent.body.expiresAt - sent.body.createdAt, 7 * 24 * 3600 * 1000);
      assert.doesNotMatch(sent.text, /cas_inv_/, 'the response carries no token');
      const mail = lastMessageTo('invitee@example.com');
      assert.ok(mail, 'the invitation landed in the outbox, to the normalised address');
      assert.equal(mail.purpose, 'invitation');
      assert.match(mail.subject, /Invite Co/);
      const token = /cas_inv_[A-Za-z0-9_-]{43}/.exec(mail.text)![0];
      const stored = await tp.query<{ token_hash: Uint8Array; email_index: Uint8Array }>(
        'select token_hash, email_index from organisation_invitations where id = $1',
        [sent.body.id],
      );
      assert.equal(stored.length, 1);
      assert.equal(Buffer.from(stored[0]!.token_hash).includes(Buffer.from(token)), false, 'only a hash is stored');
      assert.equal(Buffer.from(stored[0]!.email_index).includes(Buffer.from('invitee')), false);
      const audit = await tp.query<{ details: string }>(
        `select details from audit_entries where event_type = 'org.invite'`,
      );
      assert.ok(audit.length >= 1);
      for (const row of audit) {
        assert.doesNotMatch(String(row.details), /invitee|example\.com|cas_inv_/, 'no e-mail or token in the audit');
      }

      // The wrong person: refused, and nothing changes.
      const wrong = await request(p(), 'POST', '/v1/invitations/accept', { token: stranger.token, body: { token } });
      assert.equal(wrong.status, 400);
      assert.equal(wrong.body.error.code, 'ERR_ORG_INVITATION_INVALID');
      assert.equal(wrong.body.error.message, 'The invitation is invalid, expired or already used');
      assert.equal(await count('organisation_members', 'where vendor_id = $1 and user_id = $2', [org, stranger.id]), 0);
      assert.equal(await count('organisation_invitations', 'where id = $1 and accepted_at is null', [sent.body.id]), 1);

      const ok = await request(p(), 'POST', '/v1/invitations/accept', { token: invitee.token, body: { token } });
      assert.equal(ok.status, 200);
      assert.equal(ok.body.id, org);
      assert.equal(ok.body.role, 'admin');
      // A personal account joins an enterprise and keeps its own organisation.
      const list = await request(p(), 'GET', '/v1/orgs', { token: invitee.token });
      assert.deepEqual(
        list.body.items.map((o: { id: string; kind: string; role: string }) => [o.id, o.kind, o.role]),
        [
          [invitee.personal, 'personal', 'owner'],
          [org, 'enterprise', 'admin'],
        ],
      );

      // Single use.
      const twice = await request(p(), 'POST', '/v1/invitations/accept', { token: stranger.token, body: { token } });
      assert.equal(twice.status, 400);
      assert.equal(twice.body.error.code, 'ERR_ORG_INVITATION_INVALID');
      assert.equal(await count('organisation_members', 'where vendor_id = $1', [org]), 2);
      const failed = await tp.query(
        `select seq from audit_entries where event_type = 'org.invitation-accept' and result = 'failure' and actor_id = $1`,
        [stranger.id],
      );
      assert.equal(failed.length, 2, 'each refused acceptance is audited');

      // Expired invitations are refused.
      const late = await person('late@example.com');
      assert.equal((await invite(owner, org, late.email, 'viewer')).status, 201);
      const lateToken = /cas_inv_[A-Za-z0-9_-]{43}/.exec(lastMessageTo(late.email)!.text)![0];
      await ctx()
        .db.updateTable('organisation_invitations')
        .set({ expires_at: Date.now() - 1 })
        .where('accepted_at', 'is', null)
        .execute();
      const expired = await request(p(), 'POST', '/v1/invitations/accept', {
        token: late.token,
        body: { token: lateToken },
      });
      assert.equal(expired.status, 400);
      assert.equal(expired.body.error.code, 'ERR_ORG_INVITATION_INVALID');
      assert.equal(await count('organisation_members', 'where vendor_id = $1 and user_id = $2', [org, late.id]), 0);
    });

    test('[ORG-1] only owners invite owners; members list shows roles with masked contacts', async () => {
      const owner = await person('owner-roles@example.com');
      const admin = await person('admin-roles@example.com');
      const org = await createOrg(owner, 'Roles Co');
      await join_(owner, org, admin, 'admin');
      const before = await count('organisation_invitations', 'where vendor_id = $1', [org]);
      const refused = await invite(admin, org, 'newowner@example.com', 'owner');
      assert.equal(refused.status, 403);
      assert.equal(refused.body.error.code, 'ERR_AUTH_FORBIDDEN');
      assert.equal(await count('organisation_invitations', 'where vendor_id = $1', [org]), before);
      assert.equal(lastMessageTo('newowner@example.com'), undefined, 'no e-mail was sent');

      const members = await request(p(), 'GET', `/v1/orgs/${org}/members`, { token: admin.token });
      assert.equal(members.status, 200);
      assert.deepEqual(
        members.body.items.map((m: { userId: string; role: string; contact: string }) => [m.userId, m.role, m.contact]),
        [
          [owner.id, 'owner', 'o***@example.com'],
          [admin.id, 'admin', 'a***@example.com'],
        ],
      );
      assert.doesNotMatch(members.text, /owner-roles@|admin-roles@/, 'no contact in clear');
    });

    test('[ORG-1] viewers read, admins create products but get no device secrets or access keys, owners do', async () => {
      const owner = await person('owner-keys@example.com');
      const admin = await person('admin-keys@example.com');
      const viewer = await person('viewer-keys@example.com');
      const org = await createOrg(owner, 'Keys Co');
      await join_(owner, org, admin, 'admin');
      await join_(owner, org, viewer, 'viewer');

      // Viewer: may list, may not create.
      const productsBefore = await count('products');
      const viewerCreate = await request(p(), 'POST', '/v1/products', {
        token: viewer.token,
        body: { vendorId: org, name: 'Viewer Plug', category: 'plug' },
      });
      assert.equal(viewerCreate.status, 403);
      assert.equal(viewerCreate.body.error.code, 'ERR_AUTH_FORBIDDEN');
      assert.equal(await count('products'), productsBefore, 'no product was created');
      const viewerList = await request(p(), 'GET', `/v1/products?vendorId=${org}`, { token: viewer.token });
      assert.equal(viewerList.status, 200);
      assert.deepEqual(viewerList.body.items, []);

      // A person must name the organisation.
      const unnamed = await request(p(), 'GET', '/v1/products', { token: viewer.token });
      assert.equal(unnamed.status, 400);
      assert.equal(unnamed.body.error.code, 'ERR_VALIDATION_FAILED');
      assert.equal(unnamed.body.error.message, 'vendorId is required: name the organisation to act for');

      // Admin: creates products, but device creation (secrets shown once) is owner-only.
      const product = await request(p(), 'POST', '/v1/products', {
        token: admin.token,
        body: { vendorId: org, name: 'Admin Plug', category: 'plug' },
      });
      assert.equal(product.status, 201);
      assert.equal(product.body.vendorId, org);
      const adminDevices = await request(p(), 'POST', `/v1/products/${product.body.id}/devices`, {
        token: admin.token,
        body: { count: 1 },
      });
      assert.equal(adminDevices.status, 404);
      assert.equal(adminDevices.body.error.code, 'ERR_PRODUCT_NOT_FOUND');
      assert.equal(await count('devices', 'where product_id = $1', [product.body.id]), 0, 'no device was issued');

      // Owner: issues devices with their secrets.
      const issued = await request(p(), 'POST', `/v1/products/${product.body.id}/devices`, {
        token: owner.token,
        body: { count: 2 },
      });
      assert.equal(issued.status, 201);
      assert.equal(issued.body.devices.length, 2);
      assert.match(issued.body.devices[0].secret, /^[A-Za-z0-9_-]{43}$/);

      // Every member reads products and devices; no secret is ever in a read.
      for (const member of [viewer, admin, owner]) {
        const list = await request(p(), 'GET', `/v1/products/${product.body.id}/devices`, { token: member.token });
        assert.equal(list.status, 200);
        assert.equal(list.body.items.length, 2);
        const device = await request(p(), 'GET', `/v1/devices/${issued.body.devices[0].id}`, { token: member.token });
        assert.equal(device.status, 200);
        assert.equal(device.body.vendorId, org);
        assert.doesNotMatch(list.text + device.text, new RegExp(issued.body.devices[0].secret));
      }

      // Access keys (key material): owners only, as the platform resolves each person.
      assert.equal(can(await principalFor(owner.token), 'org.access-keys.manage', { vendorId: org }), true);
      assert.equal(can(await principalFor(admin.token), 'org.access-keys.manage', { vendorId: org }), false);
      assert.equal(can(await principalFor(viewer.token), 'org.access-keys.manage', { vendorId: org }), false);
      assert.equal(can(await principalFor(owner.token), 'org.access-keys.manage', { vendorId: admin.personal }), false);
    });

    test('[ORG-3] a member of one organisation sees nothing of another', async () => {
      const ownerA = await person('owner-a@example.com');
      const memberA = await person('member-a@example.com');
      const ownerB = await person('owner-b@example.com');
      const orgA = await createOrg(ownerA, 'Alpha');
      const orgB = await createOrg(ownerB, 'Bravo Secret Works');
      await join_(ownerA, orgA, memberA, 'admin');
      const productB = await request(p(), 'POST', '/v1/products', {
        token: ownerB.token,
        body: { vendorId: orgB, name: 'Bravo Hidden Plug', category: 'plug' },
      });
      assert.equal(productB.status, 201);
      const devicesB = await request(p(), 'POST', `/v1/products/${productB.body.id}/devices`, {
        token: ownerB.token,
        body: { count: 1 },
      });
      assert.equal(devicesB.status, 201);
      const deviceB = devicesB.body.devices[0].id as string;

      const probes: [string, string, number, string][] = [
        ['GET', `/v1/products/${productB.body.id}`, 404, 'ERR_PRODUCT_NOT_FOUND'],
        ['GET', `/v1/products/${productB.body.id}/devices`, 404, 'ERR_PRODUCT_NOT_FOUND'],
        ['GET', `/v1/devices/${deviceB}`, 404, 'ERR_DEVICE_NOT_FOUND'],
        ['GET', `/v1/devices/${deviceB}/telemetry`, 404, 'ERR_DEVICE_NOT_FOUND'],
        ['GET', `/v1/products?vendorId=${orgB}`, 403, 'ERR_AUTH_FORBIDDEN'],
        ['GET', `/v1/orgs/${orgB}`, 404, 'ERR_ORG_NOT_FOUND'],
        ['GET', `/v1/orgs/${orgB}/members`, 404, 'ERR_ORG_NOT_FOUND'],
      ];
      for (const member of [memberA, ownerA]) {
        for (const [method, path, status, code] of probes) {
          const res = await request(p(), method, path, { token: member.token });
          assert.equal(res.status, status, `${method} ${path}`);
          assert.equal(res.body.error.code, code, `${method} ${path}`);
          assert.doesNotMatch(res.text, /Bravo|owner-b|usr_/, `${method} ${path} returned none of B's data`);
        }
      }
      // A non-member's view of an organisation is the same as of one that does not exist.
      const missing = await request(p(), 'GET', `/v1/orgs/vnd_AAAAAAAAAAAAAAAAAAAAAA`, { token: memberA.token });
      assert.equal(missing.status, 404);
      assert.equal(missing.body.error.code, 'ERR_ORG_NOT_FOUND');

      // Writes into B are refused and leave B untouched.
      const productsB = await count('products', 'where vendor_id = $1', [orgB]);
      const write = await request(p(), 'POST', '/v1/products', {
        token: memberA.token,
        body: { vendorId: orgB, name: 'Intruder', category: 'plug' },
      });
      assert.equal(write.status, 403);
      assert.equal(write.body.error.code, 'ERR_AUTH_FORBIDDEN');
      const issue = await request(p(), 'POST', `/v1/products/${productB.body.id}/devices`, {
        token: ownerA.token,
        body: { count: 1 },
      });
      assert.equal(issue.status, 404);
      assert.equal(issue.body.error.code, 'ERR_PRODUCT_NOT_FOUND');
      const inviteB = await invite(ownerA, orgB, 'intruder@example.com', 'owner');
      assert.equal(inviteB.status, 404);
      assert.equal(inviteB.body.error.code, 'ERR_ORG_NOT_FOUND');
      const kick = await request(p(), 'DELETE', `/v1/orgs/${orgB}/members/${ownerB.id}`, { token: ownerA.token });
      assert.equal(kick.status, 404);
      assert.equal(kick.body.error.code, 'ERR_ORG_NOT_FOUND');
      assert.equal(await count('products', 'where vendor_id = $1', [orgB]), productsB);
      assert.equal(await count('devices', 'where product_id = $1', [productB.body.id]), 1);
      assert.equal(await count('organisation_invitations', 'where vendor_id = $1', [orgB]), 0);
      assert.equal(await count('organisation_members', 'where vendor_id = $1', [orgB]), 1);
      // A's own listing holds only A's products.
      const listA = await request(p(), 'GET', `/v1/products?vendorId=${orgA}`, { token: memberA.token });
      assert.equal(listA.status, 200);
      assert.doesNotMatch(listA.text, /Bravo/);
    });

    test('[ORG-1] role changes: owners only for owner, the last owner stays, changes apply at the next request', async () => {
      const owner = await person('owner-last@example.com');
      const admin = await person('admin-last@example.com');
      const viewer = await person('viewer-last@example.com');
      const org = await createOrg(owner, 'Last Owner Co');
      await join_(owner, org, admin, 'admin');
      await join_(owner, org, viewer, 'viewer');
      const roleOf = async (userId: string) =>
        (
          await tp.query<{ role: string }>(
            'select role from organisation_members where vendor_id = $1 and user_id = $2',
            [org, userId],
          )
        )[0]?.role;

      // The last owner cannot leave nor be demoted.
      const leave = await request(p(), 'DELETE', `/v1/orgs/${org}/members/${owner.id}`, { token: owner.token });
      assert.equal(leave.status, 409);
      assert.equal(leave.body.error.code, 'ERR_ORG_LAST_OWNER');
      assert.equal(leave.body.error.message, 'An organisation must keep at least one owner');
      const demote = await request(p(), 'PATCH', `/v1/orgs/${org}/members/${owner.id}`, {
        token: owner.token,
        body: { role: 'admin' },
      });
      assert.equal(demote.status, 409);
      assert.equal(demote.body.error.code, 'ERR_ORG_LAST_OWNER');
      assert.equal(await roleOf(owner.id), 'owner');

      // An admin may not grant or take away 'owner', nor manage anything as a viewer.
      const grant = await request(p(), 'PATCH', `/v1/orgs/${org}/members/${viewer.id}`, {
        token: admin.token,
        body: { role: 'owner' },
      });
      assert.equal(grant.status, 403);
      assert.equal(grant.body.error.code, 'ERR_AUTH_FORBIDDEN');
      const removeOwner = await request(p(), 'DELETE', `/v1/orgs/${org}/members/${owner.id}`, { token: admin.token });
      assert.equal(removeOwner.status, 403);
      const viewerManages = await request(p(), 'PATCH', `/v1/orgs/${org}/members/${admin.id}`, {
        token: viewer.token,
        body: { role: 'viewer' },
      });
      assert.equal(viewerManages.status, 403);
      assert.equal(viewerManages.body.error.code, 'ERR_AUTH_FORBIDDEN');
      assert.equal(await roleOf(viewer.id), 'viewer');
      assert.equal(await roleOf(owner.id), 'owner');
      assert.equal(await roleOf(admin.id), 'admin');

      // Demoting the admin takes effect at their next request, on the same session.
      const canCreate = await request(p(), 'POST', '/v1/products', {
        token: admin.token,
        body: { vendorId: org, name: 'Before', category: 'plug' },
      });
      assert.equal(canCreate.status, 201);
      const toViewer = await request(p(), 'PATCH', `/v1/orgs/${org}/members/${admin.id}`, {
        token: owner.token,
        body: { role: 'viewer' },
      });
      assert.equal(toViewer.status, 200);
      assert.equal(toViewer.body.role, 'viewer');
      const cannot = await request(p(), 'POST', '/v1/products', {
        token: admin.token,
        body: { vendorId: org, name: 'After', category: 'plug' },
      });
      assert.equal(cannot.status, 403);
      assert.equal(await count('products', `where vendor_id = $1 and name = 'After'`, [org]), 0);

      // With a second owner, the first may leave; a removed member loses access at once.
      const promote = await request(p(), 'PATCH', `/v1/orgs/${org}/members/${viewer.id}`, {
        token: owner.token,
        body: { role: 'owner' },
      });
      assert.equal(promote.status, 200);
      const remove = await request(p(), 'DELETE', `/v1/orgs/${org}/members/${admin.id}`, { token: viewer.token });
      assert.equal(remove.status, 204);
      const gone = await request(p(), 'GET', `/v1/products?vendorId=${org}`, { token: admin.token });
      assert.equal(gone.status, 403);
      const left = await request(p(), 'DELETE', `/v1/orgs/${org}/members/${owner.id}`, { token: owner.token });
      assert.equal(left.status, 204);
      assert.equal(await roleOf(owner.id), undefined);
      const lastNow = await request(p(), 'DELETE', `/v1/orgs/${org}/members/${viewer.id}`, { token: viewer.token });
      assert.equal(lastNow.status, 409);
      assert.equal(lastNow.body.error.code, 'ERR_ORG_LAST_OWNER');
      assert.equal(await roleOf(viewer.id), 'owner');
      const audited = await tp.query<{ event_type: string; result: string }>(
        `select event_type, result from audit_entries where tenant = $1 and event_type in ('org.leave', 'org.member-remove', 'org.member-role') order by seq`,
        [org],
      );
      assert.ok(audited.some((e) => e.event_type === 'org.leave' && e.result === 'success'));
      assert.ok(audited.some((e) => e.event_type === 'org.member-role' && e.result === 'denied'));
      assert.ok(audited.some((e) => e.event_type === 'org.leave' && e.result === 'failure'));
    });

    /** Sends an invitation and returns its ID and the token from the e-mail (not yet accepted). */
    async function pending(inviter: Person, vendorId: string, email: string, role: string) {
      const sent = await invite(inviter, vendorId, email, role);
      assert.equal(sent.status, 201, sent.text);
      return { id: sent.body.id as string, token: /cas_inv_[A-Za-z0-9_-]{43}/.exec(lastMessageTo(email)!.text)![0] };
    }

    async function assertAcceptRefused(invitee: Person, vendorId: string, token: string) {
      const res = await request(p(), 'POST', '/v1/invitations/accept', { token: invitee.token, body: { token } });
      assert.equal(res.status, 400, res.text);
      assert.equal(res.body.error.code, 'ERR_ORG_INVITATION_INVALID');
      assert.equal(res.body.error.message, 'The invitation is invalid, expired or already used');
      assert.equal(
        await count('organisation_members', 'where vendor_id = $1 and user_id = $2', [vendorId, invitee.id]),
        0,
        'no membership was created',
      );
    }

    test('[ORG-1] an invitation is only as good as its inviter’s standing when it is accepted', async () => {
      const owner = await person('owner-standing@example.com');
      const admin = await person('admin-standing@example.com');
      const coOwner = await person('coowner-standing@example.com');
      const org = await createOrg(owner, 'Standing Co');
      await join_(owner, org, admin, 'admin');
      await join_(owner, org, coOwner, 'owner');
      const [x1, x2, x3, x4, x5] = await Promise.all([1, 2, 3, 4, 5].map((i) => person(`standing-${i}@example.com`)));
      const fromAdminAsAdmin = await pending(admin, org, x1!.email, 'admin');
      const fromAdminAsViewer = await pending(admin, org, x2!.email, 'viewer');
      const fromCoOwnerAsOwner = await pending(coOwner, org, x3!.email, 'owner');
      const fromCoOwnerAsViewer = await pending(coOwner, org, x4!.email, 'viewer');

      // The admin is demoted to viewer (who may invite no one); the co-owner to admin (who may not
      // grant 'owner' but may still invite viewers).
      for (const [member, role] of [
        [admin, 'viewer'],
        [coOwner, 'admin'],
      ] as const) {
        const res = await request(p(), 'PATCH', `/v1/orgs/${org}/members/${member.id}`, {
          token: owner.token,
          body: { role },
        });
        assert.equal(res.status, 200, res.text);
      }
      await assertAcceptRefused(x1!, org, fromAdminAsAdmin.token);
      await assertAcceptRefused(x2!, org, fromAdminAsViewer.token);
      await assertAcceptRefused(x3!, org, fromCoOwnerAsOwner.token);
      for (const id of [fromAdminAsAdmin.id, fromAdminAsViewer.id, fromCoOwnerAsOwner.id]) {
        assert.equal(await count('organisation_invitations', 'where id = $1 and accepted_at is null', [id]), 1);
      }
      const stillValid = await request(p(), 'POST', '/v1/invitations/accept', {
        token: x4!.token,
        body: { token: fromCoOwnerAsViewer.token },
      });
      assert.equal(stillValid.status, 200, stillValid.text);
      assert.equal(stillValid.body.role, 'viewer');

      // An inviter who is no longer a member at all (here removed behind the service's back, so the
      // withdrawal on removal does not hide the check) cannot bring anyone in either.
      const fromGone = await pending(coOwner, org, x5!.email, 'viewer');
      await ctx()
        .db.deleteFrom('organisation_members')
        .where('vendor_id', '=', org)
        .where('user_id', '=', coOwner.id)
        .execute();
      await assertAcceptRefused(x5!, org, fromGone.token);
      const refused = await tp.query<{ actor_id: string }>(
        `select actor_id from audit_entries where event_type = 'org.invitation-accept' and result = 'failure' and actor_id in ($1, $2, $3, $4)`,
        [x1!.id, x2!.id, x3!.id, x5!.id],
      );
      assert.equal(refused.length, 4, 'each refusal is audited');
    });

    test('[ORG-1] a member who is removed or leaves takes their pending invitations along', async () => {
      const owner = await person('owner-withdraw@example.com');
      const admin = await person('admin-withdraw@example.com');
      const leaver = await person('leaver-withdraw@example.com');
      const org = await createOrg(owner, 'Withdraw Co');
      const adminOwn = await createOrg(admin, 'Admin Own Co');
      await join_(owner, org, admin, 'admin');
      await join_(owner, org, leaver, 'admin');
      const [y1, y2, y3, y4, y5] = await Promise.all([1, 2, 3, 4, 5].map((i) => person(`withdraw-${i}@example.com`)));
      const byAdmin = [await pending(admin, org, y1!.email, 'viewer'), await pending(admin, org, y2!.email, 'admin')];
      const byOwner = await pending(owner, org, y3!.email, 'viewer');
      const byAdminElsewhere = await pending(admin, adminOwn, y4!.email, 'viewer');
      const byLeaver = await pending(leaver, org, y5!.email, 'viewer');
      const pendingBy = (userId: string, vendorId = org) =>
        count('organisation_invitations', 'where vendor_id = $1 and invited_by = $2 and accepted_at is null', [
          vendorId,
          userId,
        ]);
      assert.equal(await pendingBy(admin.id), 2);

      const removed = await request(p(), 'DELETE', `/v1/orgs/${org}/members/${admin.id}`, { token: owner.token });
      assert.equal(removed.status, 204, removed.text);
      assert.equal(await pendingBy(admin.id), 0, "the removed admin's invitations are gone");
      for (const { id } of byAdmin) assert.equal(await count('organisation_invitations', 'where id = $1', [id]), 0);
      await assertAcceptRefused(y1!, org, byAdmin[0]!.token);
      // Other inviters, accepted invitations and the admin's own organisation are untouched.
      assert.equal(await count('organisation_invitations', 'where id = $1 and accepted_at is null', [byOwner.id]), 1);
      assert.equal(
        await count('organisation_invitations', 'where vendor_id = $1 and accepted_at is not null', [org]),
        2,
      );
      assert.equal(await pendingBy(admin.id, adminOwn), 1);
      const elsewhere = await request(p(), 'POST', '/v1/invitations/accept', {
        token: y4!.token,
        body: { token: byAdminElsewhere.token },
      });
      assert.equal(elsewhere.status, 200, elsewhere.text);

      const left = await request(p(), 'DELETE', `/v1/orgs/${org}/members/${leaver.id}`, { token: leaver.token });
      assert.equal(left.status, 204, left.text);
      assert.equal(await count('organisation_invitations', 'where id = $1', [byLeaver.id]), 0);
      await assertAcceptRefused(y5!, org, byLeaver.token);

      const audited = await tp.query<{ event_type: string; details: unknown }>(
        `select event_type, details from audit_entries where tenant = $1 and event_type in ('org.member-remove', 'org.leave') and result = 'success' order by seq`,
        [org],
      );
      assert.deepEqual(
        audited.map((e) => {
          const details = typeof e.details === 'string' ? JSON.parse(e.details) : e.details;
          return [e.event_type, details.invitationsWithdrawn];
        }),
        [
          ['org.member-remove', 2],
          ['org.leave', 1],
        ],
      );
    });

    test('[ORG-1] a failing mail relay does not fail an invitation that was created; it is audited', async () => {
      const owner = await person('owner-smtp@example.com');
      const org = await createOrg(owner, 'Smtp Co');
      const sender = ctx().sender as { send: (message: unknown) => Promise<void> };
      sender.send = () =>
        Promise.reject(Object.assign(new Error('550 <unreachable-smtp@example.com>'), { code: 'EENVELOPE' }));
      let sent: Awaited<ReturnType<typeof invite>>;
      try {
        sent = await invite(owner, org, 'unreachable-smtp@example.com', 'viewer');
      } finally {
        delete (sender as { send?: unknown }).send; // back to the class's method
      }
      assert.equal(sent.status, 201, sent.text);
      assert.equal(lastMessageTo('unreachable-smtp@example.com'), undefined, 'nothing was delivered');
      assert.equal(await count('organisation_invitations', 'where id = $1', [sent.body.id]), 1);
      const audited = await tp.query<{ result: string }>(
        `select result from audit_entries where event_type = 'org.invite' and target = $1`,
        [sent.body.id],
      );
      assert.deepEqual(
        audited.map((r) => r.result),
        ['success'],
      );
      for (let i = 0; i < 50 && !tp.logs.text().includes('message delivery failed'); i++) {
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      const logs = tp.logs.text();
      assert.ok(logs.includes('message delivery failed'), 'the failure is logged');
      assert.equal(logs.includes('unreachable-smtp'), false, 'without the recipient');
    });

    test('[ORG-1] a personal organisation has no other members, and its owner cannot leave it', async () => {
      const dev = await person('solo@example.com');
      const friend = await person('friend@example.com');
      const refused = await invite(dev, dev.personal, friend.email, 'viewer');
      assert.equal(refused.status, 409);
      assert.equal(refused.body.error.code, 'ERR_ORG_PERSONAL');
      assert.equal(
        refused.body.error.message,
        'A personal organisation has no other members; create an enterprise organisation',
      );
      assert.equal(await count('organisation_invitations', 'where vendor_id = $1', [dev.personal]), 0);
      assert.equal(lastMessageTo(friend.email), undefined, 'no e-mail was sent');
      const leave = await request(p(), 'DELETE', `/v1/orgs/${dev.personal}/members/${dev.id}`, { token: dev.token });
      assert.equal(leave.status, 409);
      assert.equal(leave.body.error.code, 'ERR_ORG_LAST_OWNER');
      assert.equal(await count('organisation_members', 'where vendor_id = $1', [dev.personal]), 1);
      // The personal organisation works like any other for its owner.
      const product = await request(p(), 'POST', '/v1/products', {
        token: dev.token,
        body: { vendorId: dev.personal, name: 'Hobby Plug', category: 'plug' },
      });
      assert.equal(product.status, 201);
      assert.equal(product.body.vendorId, dev.personal);
    });
  });
}
