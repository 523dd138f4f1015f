// Platform staff (OPS-2): a mandatory second factor, least-privilege roles, every action audited.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { totpCode } from '../../src/accounts/index.ts';
import { dialectCases } from '../helpers/dialects.ts';
import {
  request,
  setupStaff,
  startTestPlatform,
  TEST_STAFF_PASSWORD,
  type TestPlatform,
} from '../helpers/test-platform.ts';

/** A code for the next TOTP step: each code is accepted once per 30-second step. */
const nextCode = (secret: string) => totpCode(secret, Date.now() + 30_000);

for (const dialect of await dialectCases()) {
  describe(`staff accounts on ${dialect.name}`, { skip: dialect.skip }, () => {
    let tp: TestPlatform;
    let superToken: string;
    const p = () => tp.platform;

    before(async () => {
      tp = await startTestPlatform(dialect.name, { accounts: { loginFailuresPerAccount: 3 } });
    });
    after(() => tp?.close());

    test('[OPS-2] the setup credential can do nothing until its TOTP factor is confirmed', async () => {
      const setup = await request(p(), 'POST', '/v1/setup', {
        body: {
          setupToken: p().setupToken,
          adminName: 'First Admin',
          username: 'root-admin',
          password: TEST_STAFF_PASSWORD,
        },
      });
      assert.equal(setup.status, 201);
      assert.match(setup.body.totp.uri, /^otpauth:\/\/totp\//);
      const token = setup.body.credential.token as string;
      const before = await request(p(), 'POST', '/v1/vendors', { token, body: { name: 'Too Early' } });
      assert.equal(before.status, 403);
      assert.equal(before.body.error.code, 'ERR_AUTH_FORBIDDEN');
      assert.equal((await tp.query('select id from vendors')).length, 0, 'no vendor was created');
      const wrong = await request(p(), 'POST', '/v1/staff/mfa/totp/confirm', { token, body: { code: '000000' } });
      assert.equal(wrong.status, 401);
      assert.equal(wrong.body.error.code, 'ERR_MFA_CODE_INVALID');
      const ok = await request(p(), 'POST', '/v1/staff/mfa/totp/confirm', {
        token,
        body: { code: totpCode(setup.body.totp.secret) },
      });
      assert.equal(ok.status, 200);
      const vendor = await request(p(), 'POST', '/v1/vendors', { token, body: { name: 'Now Allowed' } });
      assert.equal(vendor.status, 201);
      superToken = token;
      // The staff username is stored only as a blind index.
      const rows = await tp.query<Record<string, unknown>>('select * from admins');
      assert.ok(!JSON.stringify(rows).includes('root-admin'));
    });

    test('[OPS-2] a weak setup password is refused and the setup token stays unused', async (t) => {
      const other = await startTestPlatform(dialect.name);
      t.after(() => other.close());
      const res = await request(other.platform, 'POST', '/v1/setup', {
        body: { setupToken: other.platform.setupToken, adminName: 'A', username: 'admin', password: 'password123' },
      });
      assert.equal(res.status, 400);
      assert.equal(res.body.error.code, 'ERR_PASSWORD_WEAK');
      assert.equal((await other.query('select id from admins')).length, 0);
      assert.ok(await setupStaff(other.platform), 'the token still works after the refusal');
    });

    test('[OPS-2] a new staff member enrols with a one-time token, signs in only with password and TOTP, and gets least privilege', async () => {
      const created = await request(p(), 'POST', '/v1/staff', {
        token: superToken,
        body: { name: 'Audrey Auditor', username: 'audrey', roles: ['auditor'] },
      });
      assert.equal(created.status, 201);
      const enrolmentToken = created.body.enrolmentToken as string;
      const enrol = await request(p(), 'POST', '/v1/staff/enrol', {
        body: { enrolmentToken, password: 'lantern orchard velvet 93' },
      });
      assert.equal(enrol.status, 200);
      const secret = enrol.body.totp.secret as string;
      // Before the factor is confirmed, sign-in fails.
      const early = await request(p(), 'POST', '/v1/staff/login', {
        body: { username: 'audrey', password: 'lantern orchard velvet 93', code: totpCode(secret) },
      });
      assert.equal(early.status, 401);
      assert.equal(early.body.error.code, 'ERR_AUTH_INVALID');
      const confirm = await request(p(), 'POST', '/v1/staff/enrol/confirm', {
        body: { enrolmentToken, code: totpCode(secret) },
      });
      assert.equal(confirm.status, 200);
      const reuse = await request(p(), 'POST', '/v1/staff/enrol', {
        body: { enrolmentToken, password: 'another fine passphrase 7' },
      });
      assert.equal(reuse.status, 401, 'the enrolment token is spent');

      // Password alone (wrong code) is not enough, and creates no session.
      const sessionsBefore = (await tp.query('select id from sessions')).length;
      const noCode = await request(p(), 'POST', '/v1/staff/login', {
        body: { username: 'audrey', password: 'lantern orchard velvet 93', code: '123456' },
      });
      assert.equal(noCode.status, 401);
      assert.equal(noCode.body.error.message, 'Invalid credentials');
      assert.equal((await tp.query('select id from sessions')).length, sessionsBefore);

      const login = await request(p(), 'POST', '/v1/staff/login', {
        headers: { 'x-castellan-client': 'app' },
        body: { username: 'AUDREY', password: 'lantern orchard velvet 93', code: nextCode(secret) },
      });
      assert.equal(login.status, 200, login.text);
      const session = login.body.token as string;
      assert.match(session, /^cas_ses_/);
      // An auditor reads the audit log …
      const entries = await request(p(), 'GET', '/v1/audit/entries?limit=5', { token: session });
      assert.equal(entries.status, 200);
      // … but cannot create vendors, manage keys or staff.
      for (const [method, path, body] of [
        ['POST', '/v1/vendors', { name: 'Nope' }],
        ['GET', '/v1/keys', undefined],
        ['GET', '/v1/staff', undefined],
      ] as const) {
        const res = await request(p(), method, path, { token: session, ...(body ? { body } : {}) });
        assert.equal(res.status, 403, `${method} ${path}`);
        assert.equal(res.body.error.code, 'ERR_AUTH_FORBIDDEN');
      }
      // A credential cannot be minted by a credential, only by a session, and only with a fresh TOTP
      // code: a stolen session alone does not become a standing credential.
      const viaCredential = await request(p(), 'POST', '/v1/staff/credentials', {
        token: superToken,
        body: { label: 'ci', code: totpCode(secret) },
      });
      assert.equal(viaCredential.status, 403);
      const wrongCode = await request(p(), 'POST', '/v1/staff/credentials', {
        token: session,
        body: { label: 'ci', code: '000000' },
      });
      assert.equal(wrongCode.status, 401);
      assert.equal(wrongCode.body.error.code, 'ERR_MFA_CODE_INVALID');
      // The sign-in spent this step's code; let the clock move on (each step is accepted once).
      await p()
        .accountsContext.db.updateTable('mfa_totp')
        .set({ last_step: 0 })
        .where('principal_id', '=', created.body.id)
        .execute();
      const minted = await request(p(), 'POST', '/v1/staff/credentials', {
        token: session,
        body: { label: 'ci', code: totpCode(secret), expiresInDays: 7 },
      });
      assert.equal(minted.status, 201, minted.text);
      assert.ok(Math.abs(minted.body.expiresAt - (Date.now() + 7 * 86_400_000)) < 60_000);
      assert.equal((await request(p(), 'GET', '/v1/audit/entries?limit=1', { token: minted.body.token })).status, 200);
      // Once expired, the credential is refused.
      await p()
        .accountsContext.db.updateTable('api_credentials')
        .set({ expires_at: Date.now() - 1 })
        .where('id', '=', minted.body.id)
        .execute();
      const expired = await request(p(), 'GET', '/v1/audit/entries?limit=1', { token: minted.body.token });
      assert.equal(expired.status, 401);
      assert.equal(expired.body.error.code, 'ERR_AUTH_INVALID');

      // A role change ends the person's sessions (SESS-1 rotation on privilege change).
      const promote = await request(p(), 'PATCH', `/v1/staff/${created.body.id}`, {
        token: superToken,
        body: { roles: ['security'] },
      });
      assert.equal(promote.status, 200);
      const after = await request(p(), 'GET', '/v1/audit/entries?limit=5', { token: session });
      assert.equal(after.status, 401);

      // Every staff action is audited, reads included.
      await p().audit.flush();
      const audited = await tp.query<{ details: string }>(
        "select details from audit_entries where event_type = 'staff.request' and actor_id = $1",
        [created.body.id],
      );
      assert.ok(
        audited.some((e) => e.details.includes('"GET"')),
        'the GET of the audit log was audited',
      );
      assert.ok(
        audited.some((e) => e.details.includes('403')),
        'the refused requests were audited',
      );
    });

    test('[OPS-2] [ACC-4] repeated wrong staff passwords lock the account, even for the right password', async () => {
      for (let i = 0; i < 3; i++) {
        const res = await request(p(), 'POST', '/v1/staff/login', {
          body: { username: 'root-admin', password: `wrong password ${i} here`, code: '000000' },
        });
        assert.equal(res.status, 401);
      }
      const locked = await request(p(), 'POST', '/v1/staff/login', {
        body: { username: 'root-admin', password: TEST_STAFF_PASSWORD, code: '000000' },
      });
      assert.equal(locked.status, 429);
      assert.equal(locked.body.error.code, 'ERR_AUTH_LOCKED');
      assert.ok(Number(locked.headers['retry-after']) > 0);
    });

    test('[OPS-2] the last superadmin cannot be demoted or disabled', async () => {
      const staff = await request(p(), 'GET', '/v1/staff', { token: superToken });
      const superadmin = staff.body.items.find((s: { roles: string[] }) => s.roles.includes('superadmin'));
      const demote = await request(p(), 'PATCH', `/v1/staff/${superadmin.id}`, {
        token: superToken,
        body: { roles: ['auditor'] },
      });
      assert.equal(demote.status, 409);
      assert.equal(demote.body.error.code, 'ERR_STAFF_LAST_SUPERADMIN');
      const roles = await tp.query<{ roles: string }>('select roles from admins where id = $1', [superadmin.id]);
      assert.equal(roles[0]!.roles, '["superadmin"]');
    });
  });
}
