// ACC-7: sign-in with an outside OpenID Connect provider, against a real oidc-provider over HTTPS
// with a private CA of its own (given to the platform through `caFile`).
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { after, before, describe, test } from 'node:test';
import { normaliseIdentifier, totpCode, type UserRecord } from '../../src/accounts/index.ts';
import { accountForIdentity, subjectIndex } from '../../src/accounts/oidc-login.ts';
import { loadConfig, redactConfig } from '../../src/config/index.ts';
import { hashToken } from '../../src/lib/random-ids.ts';
import { dialectCases } from '../helpers/dialects.ts';
import { type OidcTestProvider, startOidcTestProvider, TestBrowser } from '../helpers/oidc-test-provider.ts';
import { request, startTestPlatform, type TestPlatform } from '../helpers/test-platform.ts';

const CLIENT_ID = 'castellan-test';
// Generated per run: the tree holds no secrets, not even test ones (KEY-5).
const CLIENT_SECRET = randomBytes(24).toString('base64url');
const OIDC_COOKIE = '__Host-castellan_oidc';
const SESSION_COOKIE = '__Host-castellan_session';

function setCookies(headers: Record<string, string | string[] | undefined>): string[] {
  const raw = headers['set-cookie'];
  return raw === undefined ? [] : Array.isArray(raw) ? raw : [raw];
}

function configError(fn: () => unknown): string {
  try {
    fn();
  } catch (error) {
    assert.equal((error as { code?: string }).code, 'ERR_CONFIG_INVALID');
    return (error as Error).message;
  }
  assert.fail('expected ERR_CONFIG_INVALID');
}

describe('OIDC provider configuration', () => {
  const provider = { id: 'corp', issuer: 'https://id.example.com', clientId: 'castellan' };

  test('[ACC-7] an http:// issuer is refused at load, naming the element', () => {
    const message = configError(() =>
      loadConfig({
        env: {},
        cwd: tmpdir(),
        overrides: {
          accounts: { oidcProviders: [provider, { ...provider, id: 'plain', issuer: 'http://id.example.com' }] },
        },
      }),
    );
    assert.equal(
      message,
      'Invalid configuration: accounts.oidcProviders[1].issuer must be an https:// URL without query, fragment or credentials',
    );
    const duplicate = configError(() =>
      loadConfig({ env: {}, cwd: tmpdir(), overrides: { accounts: { oidcProviders: [provider, provider] } } }),
    );
    assert.equal(
      duplicate,
      'Invalid configuration: accounts.oidcProviders[1].id repeats the id corp; ids must be unique',
    );
  });

  test('[ACC-7] the environment takes a JSON array; the client secret is never printed or echoed', () => {
    const secret = randomBytes(16).toString('base64url');
    const env = {
      CASTELLAN_ACCOUNTS_OIDC_PROVIDERS: JSON.stringify([{ ...provider, clientSecret: secret }]),
      CASTELLAN_HTTP_ALLOW: '10.0.0.0/8, 192.168.0.0/16',
    };
    const config = loadConfig({ env, cwd: tmpdir() });
    assert.deepEqual(config.accounts.oidcProviders, [
      { ...provider, clientSecret: secret, scopes: 'openid email', caFile: '' },
    ]);
    assert.deepEqual(config.http.allow, ['10.0.0.0/8', '192.168.0.0/16']);
    const printed = JSON.stringify(redactConfig(config));
    assert.equal(printed.includes(secret), false);
    assert.match(printed, /"clientSecret":"\[redacted\]"/);
    // A wrongly typed secret is reported without its value, and so is text that is not JSON.
    const wrongType = configError(() =>
      loadConfig({
        env: { CASTELLAN_ACCOUNTS_OIDC_PROVIDERS: JSON.stringify([{ ...provider, clientSecret: [secret] }]) },
        cwd: tmpdir(),
      }),
    );
    assert.equal(wrongType, 'Invalid configuration: accounts.oidcProviders[0].clientSecret is invalid');
    const notJson = configError(() =>
      loadConfig({ env: { CASTELLAN_ACCOUNTS_OIDC_PROVIDERS: `[{"clientSecret":"${secret}"` }, cwd: tmpdir() }),
    );
    assert.equal(
      notJson,
      'Invalid configuration: accounts.oidcProviders must be a JSON array of objects (from CASTELLAN_ACCOUNTS_OIDC_PROVIDERS)',
    );
  });
});

for (const { name: dialect, skip } of await dialectCases()) {
  describe(`OIDC sign-in (${dialect})`, { skip }, () => {
    let idp: OidcTestProvider;
    let tp: TestPlatform;
    let callbackUrl: string;

    before(async () => {
      // The provider listens first (its issuer URL goes into the platform's config); it learns the
      // platform's redirect URI once the platform is up. Discovery is lazy, so the order works.
      idp = await startOidcTestProvider();
      tp = await startTestPlatform(dialect, {
        accounts: {
          oidcProviders: [
            { id: 'corp', issuer: idp.issuer, clientId: CLIENT_ID, clientSecret: CLIENT_SECRET, caFile: idp.caFile },
            // The same issuer without its CA: the system trust store does not know the private CA.
            { id: 'untrusted', issuer: idp.issuer, clientId: CLIENT_ID, clientSecret: CLIENT_SECRET },
          ],
        },
      });
      callbackUrl = `${tp.platform.httpUrl}/v1/auth/oidc/corp/callback`;
      idp.configure({
        clientId: CLIENT_ID,
        clientSecret: CLIENT_SECRET,
        redirectUris: [callbackUrl],
        accounts: {
          alice: { email: 'Alice@Example.org', emailVerified: true },
          mallory: { email: 'alice@example.org', emailVerified: true },
          bob: { email: 'bob@example.org', emailVerified: false },
          mfa: { email: 'mfa@example.org', emailVerified: true },
        },
      });
    });

    after(async () => {
      await tp?.close();
      await idp?.close();
    });

    const newBrowser = () => new TestBrowser([tp.platform.caPem, idp.caPem]);
    // Plain objects (SQLite rows have a null prototype) for deepEqual.
    const rows = async <T>(sql: string, values: unknown[] = []): Promise<T[]> =>
      (await tp.query<T>(sql, values)).map((r) => ({ ...r }));
    const count = async (table: string): Promise<number> =>
      Number((await tp.query<{ n: number }>(`SELECT COUNT(*) AS n FROM ${table}`))[0]!.n);

    /** start → provider login and consent → the callback URL the provider sends the browser to. */
    async function reachCallback(browser: TestBrowser, login: string): Promise<URL> {
      const start = await browser.request('GET', `${tp.platform.httpUrl}/v1/auth/oidc/corp/start`);
      assert.equal(start.status, 302, start.text);
      const location = String(start.headers.location);
      assert.ok(location.startsWith(`${idp.issuer}/`), location);
      const back = await browser.signInAtProvider(location, idp.issuer, login);
      assert.equal(`${back.origin}${back.pathname}`, callbackUrl);
      return back;
    }

    test('[ACC-7] a new person signs in through the provider: account, link and full session', async () => {
      const users = await count('users');
      const browser = newBrowser();
      const start = await browser.request('GET', `${tp.platform.httpUrl}/v1/auth/oidc/corp/start`);
      assert.equal(start.status, 302);
      // PKCE S256, state and nonce on the way out (RFC 9700 section 2.1.1).
      const auth = new URL(String(start.headers.location));
      assert.equal(auth.searchParams.get('code_challenge_method'), 'S256');
      assert.match(auth.searchParams.get('code_challenge') ?? '', /^[A-Za-z0-9_-]{43}$/);
      assert.match(auth.searchParams.get('state') ?? '', /^[A-Za-z0-9_-]{20,}$/);
      assert.match(auth.searchParams.get('nonce') ?? '', /^[A-Za-z0-9_-]{20,}$/);
      assert.equal(auth.searchParams.get('redirect_uri'), callbackUrl);
      const attempt = setCookies(start.headers).find((c) => c.startsWith(`${OIDC_COOKIE}=`));
      assert.ok(attempt);
      assert.match(attempt, /; Max-Age=600/);
      assert.match(attempt, /; Path=\//);
      assert.match(attempt, /; HttpOnly/);
      assert.match(attempt, /; Secure/);
      assert.match(attempt, /; SameSite=Lax/);
      const stored = await rows<{ purpose: string; principal_id: string | null }>(
        'SELECT purpose, principal_id FROM auth_challenges WHERE id = $1',
        [browser.cookie(tp.platform.httpUrl, OIDC_COOKIE)],
      );
      assert.deepEqual(stored, [{ purpose: 'oidc', principal_id: null }]);

      const back = await browser.signInAtProvider(auth.href, idp.issuer, 'alice');
      const code = back.searchParams.get('code')!;
      assert.ok(code);
      const done = await browser.request('GET', back.href);
      assert.equal(done.status, 303, done.text);
      assert.equal(done.headers.location, `${tp.platform.httpUrl}/`);
      const token = browser.cookie(tp.platform.httpUrl, SESSION_COOKIE);
      assert.ok(token?.startsWith('cas_ses_'));
      assert.equal(browser.cookie(tp.platform.httpUrl, OIDC_COOKIE), undefined, 'the attempt cookie is cleared');

      const me = await request(tp.platform, 'GET', '/v1/me', { token });
      assert.equal(me.status, 200, me.text);
      assert.equal(me.body.status, 'active');
      assert.equal(me.body.kind, 'consumer');
      assert.notEqual(me.body.contact, null);
      assert.equal(await count('users'), users + 1);
      const [user] = await rows<{ password_hash: string | null; status: string }>(
        'SELECT password_hash, status FROM users WHERE id = $1',
        [me.body.id],
      );
      assert.deepEqual(user, { password_hash: null, status: 'active' });
      // The session is full, for this person, stored only as a hash.
      const sessions = await rows<{ level: string; principal_id: string }>(
        'SELECT level, principal_id FROM sessions WHERE token_hash = $1',
        [hashToken(token!)],
      );
      assert.deepEqual(sessions, [{ level: 'full', principal_id: me.body.id }]);
      // The provider's subject is stored only as a keyed blind index.
      const links = await rows<{ provider: string; user_id: string; subject_index: Uint8Array }>(
        'SELECT provider, user_id, subject_index FROM oidc_identities WHERE user_id = $1',
        [me.body.id],
      );
      assert.equal(links.length, 1);
      assert.equal(links[0]!.provider, 'corp');
      assert.equal(Buffer.from(links[0]!.subject_index).includes('alice'), false);
      // The attempt is gone: the same callback cannot be replayed.
      assert.equal(await count("auth_challenges WHERE purpose = 'oidc'"), 0);
      const replay = await browser.request('GET', back.href);
      assert.equal(replay.status, 401);
      assert.equal(JSON.parse(replay.text).error.code, 'ERR_OIDC_FAILED');
      // No token, code or address in the logs.
      const logs = tp.logs.text();
      assert.equal(logs.includes(code), false);
      assert.equal(logs.includes(token!), false);
      assert.equal(logs.toLowerCase().includes('alice@example.org'), false);
      assert.equal(logs.includes(CLIENT_SECRET), false);
    });

    test('[ACC-7] the next sign-in of the same identity reaches the same account (app client)', async () => {
      const browser = newBrowser();
      const back = await reachCallback(browser, 'alice');
      const users = await count('users');
      const done = await browser.request('GET', back.href, { headers: { 'x-castellan-client': 'app' } });
      assert.equal(done.status, 200, done.text);
      const body = JSON.parse(done.text);
      assert.equal(body.created, false);
      assert.match(body.token, /^cas_ses_/);
      assert.equal(browser.cookie(tp.platform.httpUrl, SESSION_COOKIE), undefined, 'apps get no cookie');
      assert.equal(await count('users'), users);
      const me = await request(tp.platform, 'GET', '/v1/me', { token: body.token });
      assert.equal(me.status, 200);
      const [link] = await rows<{ user_id: string }>('SELECT user_id FROM oidc_identities');
      assert.equal(me.body.id, link!.user_id);
    });

    test('[ACC-7] a callback with a wrong state is refused and creates no session', async () => {
      const browser = newBrowser();
      const back = await reachCallback(browser, 'alice');
      back.searchParams.set('state', 'forged-state-value-0123456789');
      const sessions = await count('sessions');
      const res = await browser.request('GET', back.href);
      assert.equal(res.status, 401);
      const { error } = JSON.parse(res.text);
      assert.deepEqual(
        { code: error.code, message: error.message },
        { code: 'ERR_OIDC_FAILED', message: 'Sign-in with the provider failed; start again' },
      );
      assert.equal(browser.cookie(tp.platform.httpUrl, SESSION_COOKIE), undefined);
      assert.equal(await count('sessions'), sessions);
      // The internal reason is in the debug log only.
      assert.match(tp.logs.text(), /oidc: callback refused/);
    });

    test('[ACC-7] a callback in a browser that did not start the attempt is refused (login CSRF)', async () => {
      const attacker = newBrowser();
      const back = await reachCallback(attacker, 'alice');
      const victim = newBrowser();
      const sessions = await count('sessions');
      const res = await victim.request('GET', back.href);
      assert.equal(res.status, 401);
      assert.equal(JSON.parse(res.text).error.code, 'ERR_OIDC_FAILED');
      assert.equal(victim.cookie(tp.platform.httpUrl, SESSION_COOKIE), undefined);
      assert.equal(await count('sessions'), sessions);
    });

    test('[ACC-7] a provider error (access denied) is refused with the same answer', async () => {
      const browser = newBrowser();
      const start = await browser.request('GET', `${tp.platform.httpUrl}/v1/auth/oidc/corp/start`);
      const state = new URL(String(start.headers.location)).searchParams.get('state')!;
      const sessions = await count('sessions');
      const res = await browser.request(
        'GET',
        `${callbackUrl}?error=access_denied&state=${state}&iss=${encodeURIComponent(idp.issuer)}`,
      );
      assert.equal(res.status, 401);
      assert.equal(JSON.parse(res.text).error.code, 'ERR_OIDC_FAILED');
      assert.equal(await count('sessions'), sessions);
    });

    test('[ACC-7] a provider whose certificate the platform does not trust is never used', async () => {
      const challenges = await count('auth_challenges');
      const res = await request(tp.platform, 'GET', '/v1/auth/oidc/untrusted/start');
      assert.equal(res.status, 401);
      assert.equal(res.body.error.code, 'ERR_OIDC_FAILED');
      assert.equal(res.headers.location, undefined);
      assert.equal(await count('auth_challenges'), challenges);
      assert.match(tp.logs.text(), /oidc: provider discovery failed/);
    });

    test('[ACC-7] an unknown provider is 404 on start and callback', async () => {
      for (const path of ['/v1/auth/oidc/nope/start', '/v1/auth/oidc/nope/callback?code=x&state=y']) {
        const res = await request(tp.platform, 'GET', path);
        assert.equal(res.status, 404, path);
        assert.equal(res.body.error.code, 'ERR_OIDC_PROVIDER_UNKNOWN');
        assert.equal(res.body.error.message, 'No such sign-in provider');
      }
    });

    test('[ACC-7] another identity asserting an existing account\u2019s e-mail is not linked to it', async () => {
      const users = await count('users');
      const links = await count('oidc_identities');
      const browser = newBrowser();
      const back = await reachCallback(browser, 'mallory');
      const res = await browser.request('GET', back.href);
      assert.equal(res.status, 409);
      assert.deepEqual(
        { code: JSON.parse(res.text).error.code, message: JSON.parse(res.text).error.message },
        {
          code: 'ERR_OIDC_ACCOUNT_EXISTS',
          message:
            'An account with this e-mail address already exists; sign in with your password and link the provider in your settings',
        },
      );
      assert.equal(browser.cookie(tp.platform.httpUrl, SESSION_COOKIE), undefined);
      assert.equal(await count('users'), users);
      assert.equal(await count('oidc_identities'), links);
    });

    test('[ACC-7] without a verified e-mail no account is created', async () => {
      const users = await count('users');
      const sessions = await count('sessions');
      const browser = newBrowser();
      const back = await reachCallback(browser, 'bob');
      const res = await browser.request('GET', back.href);
      assert.equal(res.status, 400);
      assert.equal(JSON.parse(res.text).error.code, 'ERR_OIDC_EMAIL_REQUIRED');
      assert.equal(await count('users'), users);
      assert.equal(await count('sessions'), sessions);
    });

    /**
     * The accounts context with users.create wrapped: `between` runs after the account row is written
     * and before accountForIdentity writes the link (where a concurrent callback could interleave).
     */
    function interleaved(between: (user: UserRecord) => Promise<void>, db = tp.platform.accountsContext.db) {
      const ctx = tp.platform.accountsContext;
      const users = {
        get: (id: string) => ctx.users.get(id),
        findByIdentifier: (identifier: Parameters<typeof ctx.users.findByIdentifier>[0]) =>
          ctx.users.findByIdentifier(identifier),
        create: async (input: Parameters<typeof ctx.users.create>[0]) => {
          const user = await ctx.users.create(input);
          await between(user);
          return user;
        },
      } as unknown as typeof ctx.users;
      return { db, keys: ctx.keys, users, now: () => ctx.now() };
    }

    /** The sealed e-mail of a user, checked readable now (so that unreadable later means shredded). */
    async function sealedEmailOf(user: UserRecord): Promise<() => Promise<Buffer>> {
      const ctx = tp.platform.accountsContext;
      const [row] = await tp.query<{ email_ciphertext: Uint8Array }>(
        'SELECT email_ciphertext FROM users WHERE id = $1',
        [user.id],
      );
      const open = () =>
        ctx.keys.decrypt('platform', row!.email_ciphertext, `users.email:${user.id}`, { user: user.id });
      assert.ok((await open()).length > 0);
      return open;
    }

    test('[ACC-7] when a concurrent callback links the subject first, the half-made account is undone', async () => {
      const ctx = tp.platform.accountsContext;
      const identity = {
        provider: 'corp',
        subject: `race-${randomBytes(8).toString('hex')}`,
        email: 'race@example.org',
      };
      // The account the other callback made (under another address, so both creates succeed).
      const winner = await ctx.users.create({
        identifier: normaliseIdentifier('race-winner@example.org'),
        kind: 'consumer',
        status: 'active',
        passwordHash: null,
      });
      let loser: UserRecord | undefined;
      let openLoser: (() => Promise<Buffer>) | undefined;
      const racing = interleaved(async (user) => {
        loser = user;
        openLoser = await sealedEmailOf(user);
        await ctx.db
          .insertInto('oidc_identities')
          .values({
            provider: identity.provider,
            subject_index: subjectIndex(ctx, identity.provider, identity.subject),
            user_id: winner.id,
            created_at: Date.now(),
          })
          .execute();
      });
      const result = await accountForIdentity(racing, identity);
      assert.deepEqual([result.user.id, result.created], [winner.id, false], 'the request that linked first won');
      assert.ok(loser && openLoser);
      assert.equal((await rows('SELECT id FROM users WHERE id = $1', [loser.id])).length, 0, 'no half-made account');
      await assert.rejects(openLoser(), 'its key was shredded');
      // The person is not stuck: the next sign-in reaches the same account.
      const again = await accountForIdentity(ctx, identity);
      assert.deepEqual([again.user.id, again.created], [winner.id, false]);
    });

    test('[ACC-7] a link that cannot be written leaves no account behind; the next sign-in creates it', async () => {
      const ctx = tp.platform.accountsContext;
      const identity = {
        provider: 'corp',
        subject: `flaky-${randomBytes(8).toString('hex')}`,
        email: 'flaky@example.org',
      };
      const users = await count('users');
      // A database that loses the connection exactly when the link is written.
      const failing = new Proxy(ctx.db, {
        get(target, property) {
          if (property === 'insertInto') {
            return (table: string) => {
              if (table === 'oidc_identities') throw new Error('connection lost');
              return target.insertInto(table as 'users');
            };
          }
          const value = Reflect.get(target, property, target) as unknown;
          return typeof value === 'function' ? value.bind(target) : value;
        },
      });
      let openLoser: (() => Promise<Buffer>) | undefined;
      const attempt = interleaved(async (user) => {
        openLoser = await sealedEmailOf(user);
      }, failing);
      await assert.rejects(accountForIdentity(attempt, identity), { message: 'connection lost' });
      assert.equal(await count('users'), users, 'the account was undone');
      await assert.rejects(openLoser!(), 'its key was shredded');
      // Before the fix this answered ERR_OIDC_ACCOUNT_EXISTS for good: an account without a link.
      const next = await accountForIdentity(ctx, identity);
      assert.equal(next.created, true);
      assert.equal(await count('users'), users + 1);
      const again = await accountForIdentity(ctx, identity);
      assert.deepEqual([again.user.id, again.created], [next.user.id, false]);
    });

    test('[ACC-7] a person with a second factor gets only an MFA-pending session', async () => {
      // First sign-in creates the account; then the person sets up TOTP.
      const first = newBrowser();
      const done = await first.request('GET', (await reachCallback(first, 'mfa')).href, {
        headers: { 'x-castellan-client': 'app' },
      });
      assert.equal(done.status, 200, done.text);
      assert.equal(JSON.parse(done.text).created, true);
      const me = await request(tp.platform, 'GET', '/v1/me', { token: JSON.parse(done.text).token });
      const totp = tp.platform.accountsContext.totp;
      const enrolment = await totp.enrol(me.body.id, 'test');
      assert.equal(await totp.verify(me.body.id, totpCode(enrolment.secret), { confirm: true }), true);

      const browser = newBrowser();
      const res = await browser.request('GET', (await reachCallback(browser, 'mfa')).href);
      assert.equal(res.status, 200, res.text);
      const body = JSON.parse(res.text);
      assert.deepEqual(Object.keys(body).sort(), ['methods', 'mfaRequired', 'mfaToken']);
      assert.equal(body.mfaRequired, true);
      assert.deepEqual(body.methods, ['totp']);
      assert.equal(browser.cookie(tp.platform.httpUrl, SESSION_COOKIE), undefined);
      const [row] = await rows<{ level: string; principal_id: string }>(
        'SELECT level, principal_id FROM sessions WHERE token_hash = $1',
        [hashToken(body.mfaToken)],
      );
      assert.deepEqual(row, { level: 'mfa-pending', principal_id: me.body.id });
      const refused = await request(tp.platform, 'GET', '/v1/me', { token: body.mfaToken });
      assert.equal(refused.status, 401);
    });
  });
}
