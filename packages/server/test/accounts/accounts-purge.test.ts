// Housekeeping of accounts data (ORG-2 replay memory): a remembered request nonce outlives the
// verifier's acceptance window by a clock-skew margin, and only then is it purged.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { NONCE_PURGE_MARGIN_MS, purgeExpiredAccountsData } from '../../src/accounts/accounts-purge.ts';
import { dialectCases } from '../helpers/dialects.ts';
import { startTestPlatform, type TestPlatform } from '../helpers/test-platform.ts';

for (const dialect of await dialectCases()) {
  describe(`accounts purge on ${dialect.name}`, { skip: dialect.skip }, () => {
    let tp: TestPlatform;

    before(async () => {
      tp = await startTestPlatform(dialect.name);
    });
    after(() => tp?.close());

    test('[ORG-2] a nonce is kept until a minute after its request could last be accepted', async () => {
      const ctx = tp.platform.accountsContext;
      const now = Date.UTC(2025, 5, 1, 12);
      const nonces = {
        // The verifier accepts a date up to the window edge: expires_at === now is still acceptable.
        'at-edge': now,
        // Another process whose clock runs up to a minute behind may still accept these.
        'skewed-late': now - 1,
        'skewed-margin': now - NONCE_PURGE_MARGIN_MS,
        // Out of every process's reach: forgotten.
        'long-gone': now - NONCE_PURGE_MARGIN_MS - 1,
        ancient: now - 24 * 3600_000,
      };
      await ctx.db
        .insertInto('request_nonces')
        .values(Object.entries(nonces).map(([nonce, expires]) => ({ key_id: 'opk_purge', nonce, expires_at: expires })))
        .execute();
      await purgeExpiredAccountsData(ctx.db, ctx.sessions, now);
      const kept = await tp.query<{ nonce: string }>(
        "select nonce from request_nonces where key_id = 'opk_purge' order by nonce",
      );
      assert.deepEqual(
        kept.map((r) => r.nonce),
        ['at-edge', 'skewed-late', 'skewed-margin'],
      );
      assert.equal(NONCE_PURGE_MARGIN_MS, 60_000);
    });
  });
}
