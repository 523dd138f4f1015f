// People read their organisation's audit trail and alerts by naming it, as far as their role allows
// (ORG-1 roles, ORG-3 isolation, AUD-1): admins and owners read, viewers do not, another organisation
// is refused, and nothing is answered without naming one.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { normaliseIdentifier, type OrgRole } from '../../src/accounts/index.ts';
import { dialectCases } from '../helpers/dialects.ts';
import {
  provisionTenant,
  request,
  startTestPlatform,
  type Tenant,
  type TestPlatform,
} from '../helpers/test-platform.ts';

for (const dialect of await dialectCases()) {
  describe(`members reading audit entries and alerts on ${dialect.name}`, { skip: dialect.skip }, () => {
    let tp: TestPlatform;
    let a: Tenant;
    let b: Tenant;
    const tokens: Partial<Record<OrgRole, string>> = {};

    before(async () => {
      tp = await startTestPlatform(dialect.name);
      a = await provisionTenant(tp, 1);
      b = await provisionTenant(tp, 1, a.adminToken);
      const ctx = tp.platform.accountsContext;
      for (const role of ['owner', 'admin', 'viewer'] as const) {
        const user = await ctx.users.create({
          identifier: normaliseIdentifier(`${role}-member@example.com`),
          kind: 'developer',
          status: 'active',
          passwordHash: null,
        });
        await ctx.db
          .insertInto('organisation_members')
          .values({ vendor_id: a.vendorId, user_id: user.id, role, created_at: Date.now() })
          .execute();
        tokens[role] = (
          await ctx.sessions.create({
            principalKind: 'user',
            principalId: user.id,
            level: 'full',
            persistent: false,
            ip: '127.0.0.1',
          })
        ).token;
      }
      await tp.platform.audit.flush();
    });
    after(() => tp?.close());

    test('[ORG-1] [AUD-1] owners and admins read their organisation’s audit entries, without source IPs', async () => {
      for (const role of ['owner', 'admin'] as const) {
        const res = await request(tp.platform, 'GET', `/v1/audit/entries?limit=100&tenant=${a.vendorId}`, {
          token: tokens[role]!,
        });
        assert.equal(res.status, 200, res.text);
        assert.ok(res.body.items.length > 0);
        for (const e of res.body.items) {
          assert.equal(e.tenant, a.vendorId);
          assert.equal(e.sourceIp, null);
        }
        assert.ok(!res.text.includes(b.vendorId));
      }
    });

    test('[ORG-3] a viewer, another organisation, or no organisation named: refused, nothing returned', async () => {
      const cases = [
        [tokens.viewer!, `tenant=${a.vendorId}`],
        [tokens.admin!, `tenant=${b.vendorId}`],
        [tokens.admin!, ''],
      ] as const;
      for (const [token, query] of cases) {
        const res = await request(tp.platform, 'GET', `/v1/audit/entries?limit=100&${query}`, { token });
        assert.equal(res.status, 403, `${query}: ${res.text}`);
        assert.equal(res.body.error.code, 'ERR_AUTH_FORBIDDEN');
        assert.ok(!res.text.includes('"items"'));
      }
    });

    test('[ORG-1] [ORG-3] alerts: admins of the organisation read them; viewers and other organisations are refused', async () => {
      const ok = await request(tp.platform, 'GET', `/v1/guard/alerts?vendorId=${a.vendorId}`, { token: tokens.admin! });
      assert.equal(ok.status, 200, ok.text);
      for (const [token, vendorId] of [
        [tokens.viewer!, a.vendorId],
        [tokens.owner!, b.vendorId],
      ] as const) {
        const res = await request(tp.platform, 'GET', `/v1/guard/alerts?vendorId=${vendorId}`, { token });
        assert.equal(res.status, 403, res.text);
      }
      const operatorElsewhere = await request(tp.platform, 'GET', `/v1/guard/alerts?vendorId=${a.vendorId}`, {
        token: b.vendorToken,
      });
      assert.equal(operatorElsewhere.status, 403, 'an operator naming another tenant is refused');
    });
  });
}
