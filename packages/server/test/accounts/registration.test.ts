// Self-service registration end to end: the proof-of-work challenge and its single use (ACC-2),
// activation by a one-time code read from the development outbox (ACC-1), the password policy and
// the stored hash (ACC-3), forgot/reset without enumeration and with every session ended (ACC-4),
// and schema strictness (ACC-5). Clients pick loopback source addresses (127.0.0.x) where a test
// needs its own per-IP quota.
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import type { Challenge } from 'altcha-lib';
import { normaliseIdentifier } from '../../src/accounts/index.ts';
import { dialectCases } from '../helpers/dialects.ts';
import { latestCode, outbox, register, solvedChallenge } from '../helpers/account-flows.ts';
import { type HttpResult, request, startTestPlatform, type TestPlatform } from '../helpers/test-platform.ts';

const STRONG = 'Tangerine-Quokka-Lighthouse-47';
const OTHER_STRONG = 'Marmalade-Penguin-Orchestra-93';
const REGISTRATIONS_PER_IP = 40;
const FAILURES_PER_ACCOUNT = 8;

let serial = 0;
const newEmail = () => `person${++serial}.${process.pid}.${Date.now().toString(36)}@example.com`;

async function userCount(tp: TestPlatform): Promise<number> {
  const rows = await tp.query<{ n: number | string }>('select count(*) as n from users');
  return Number(rows[0]!.n);
}

async function userOf(tp: TestPlatform, identifier: string) {
  const user = await tp.platform.accountsContext.users.findByIdentifier(normaliseIdentifier(identifier));
  if (!user) return null;
  const rows = await tp.query<{ status: string; password_hash: string; kind: string }>(
    'select status, password_hash, kind from users where id = $1',
    [user.id],
  );
  return { id: user.id, ...rows[0]! };
}

function activate(tp: TestPlatform, identifier: string, code: string, password = STRONG) {
  return request(tp.platform, 'POST', '/v1/auth/activate', { body: { identifier, code, password } });
}

function signIn(tp: TestPlatform, identifier: string, password: string) {
  return request(tp.platform, 'POST', '/v1/auth/login', {
    headers: { 'x-castellan-client': 'app' },
    body: { identifier, password },
  });
}

async function activeAccount(tp: TestPlatform, identifier = newEmail(), password = STRONG) {
  assert.equal((await register(tp, { identifier, password })).status, 202);
  const code = await latestCode(tp, identifier, 'activation');
  const res = await activate(tp, identifier, code, password);
  assert.equal(res.status, 200, res.text);
  return (await userOf(tp, identifier))!;
}

for (const dialect of await dialectCases()) {
  describe(`registration on ${dialect.name}`, { skip: dialect.skip }, () => {
    let tp: TestPlatform;

    before(async () => {
      tp = await startTestPlatform(dialect.name, {
        accounts: {
          powDifficulty: 1000,
          registrationsPerIpPerHour: REGISTRATIONS_PER_IP,
          loginFailuresPerAccount: FAILURES_PER_ACCOUNT,
        },
      });
    });
    after(async () => {
      await tp?.close();
    });

    test('[ACC-2] registration without a solved challenge is refused and creates no user', async () => {
      const before = await userCount(tp);
      const identifier = newEmail();
      const missing = await request(tp.platform, 'POST', '/v1/auth/register', {
        body: { identifier, password: STRONG },
      });
      assert.equal(missing.status, 400);
      assert.equal(missing.body.error.code, 'ERR_AUTH_CHALLENGE_REQUIRED');
      assert.equal(
        missing.body.error.message,
        'Solve the proof-of-work challenge (POST /v1/auth/challenge) and send it as altcha',
      );

      // A fetched but unsolved challenge, a forged solution, and garbage are all the same refusal.
      const challenge = (await request<Challenge>(tp.platform, 'POST', '/v1/auth/challenge')).body;
      assert.equal(challenge.parameters.algorithm, 'SHA-256');
      assert.ok(challenge.parameters.expiresAt! * 1000 <= Date.now() + 10 * 60_000 + 1000, 'expires in 10 minutes');
      const forged = Buffer.from(
        JSON.stringify({ challenge, solution: { counter: 1, derivedKey: '00'.repeat(32) } }),
      ).toString('base64');
      const solved = JSON.parse(Buffer.from(await solvedChallenge(tp), 'base64').toString('utf8'));
      solved.challenge.parameters.expiresAt += 3600; // tampered parameters break the signature
      const tampered = Buffer.from(JSON.stringify(solved)).toString('base64');
      for (const altcha of [forged, tampered, 'not-base64-json']) {
        const res = await register(tp, { identifier, password: STRONG }, { altcha });
        assert.equal(res.status, 400);
        assert.equal(res.body.error.code, 'ERR_AUTH_CHALLENGE_INVALID');
        assert.equal(
          res.body.error.message,
          'The proof-of-work solution is invalid, expired or already used; solve a new challenge',
        );
      }
      assert.equal(await userCount(tp), before, 'no user row was created');
      assert.equal(outbox(tp, identifier).length, 0, 'no message was sent');
      assert.equal(await userOf(tp, identifier), null);
    });

    test('[ACC-2] a replayed challenge solution is refused', async () => {
      const altcha = await solvedChallenge(tp);
      const first = newEmail();
      const second = newEmail();
      assert.equal((await register(tp, { identifier: first, password: STRONG }, { altcha })).status, 202);
      const before = await userCount(tp);
      const replay = await register(tp, { identifier: second, password: STRONG }, { altcha });
      assert.equal(replay.status, 400);
      assert.equal(replay.body.error.code, 'ERR_AUTH_CHALLENGE_INVALID');
      assert.equal(await userCount(tp), before, 'the replay created nothing');
      assert.equal(await userOf(tp, second), null);
      const used = await tp.query("select expires_at from auth_challenges where purpose = 'altcha-used'");
      assert.ok(used.length >= 1, 'used solutions are remembered until they expire');
    });

    test('[ACC-1] register → code from the outbox → activate: the account becomes active', async () => {
      const identifier = newEmail();
      const res = await register(tp, { identifier, password: STRONG });
      assert.equal(res.status, 202);
      assert.deepEqual(res.body, { status: 'pending', next: 'activate' });
      const pending = await userOf(tp, identifier);
      assert.equal(pending?.status, 'pending');
      assert.equal(pending?.kind, 'consumer');
      const code = await latestCode(tp, identifier, 'activation');
      const [message] = outbox(tp, identifier, 'activation');
      assert.equal(message!.channel, 'email');

      const activated = await activate(tp, identifier, code);
      assert.equal(activated.status, 200, activated.text);
      assert.deepEqual(activated.body, { status: 'active' });
      assert.equal((await userOf(tp, identifier))?.status, 'active');

      const again = await activate(tp, identifier, code);
      assert.equal(again.status, 400, 'a code works once');
      assert.equal(again.body.error.code, 'ERR_ACCOUNT_CODE_INVALID');

      // Codes are stored only as keyed hashes.
      const rows = await tp.query<{ code_hash: Uint8Array }>(
        'select code_hash from verification_codes where user_id = $1',
        [pending.id],
      );
      assert.equal(rows.length, 1);
      assert.notEqual(Buffer.from(rows[0]!.code_hash).toString('utf8'), code);
      assert.ok(!Buffer.from(rows[0]!.code_hash).includes(Buffer.from(code)));

      await tp.platform.audit.flush();
      const entries = await tp.platform.audit.query({ type: 'user.activate', limit: 50 });
      const mine = entries.find((e) => e.target === pending.id);
      assert.equal(mine?.result, 'success');
      assert.ok(!JSON.stringify(entries).includes(identifier), 'the identifier never enters the audit log');
      const logs = tp.logs.text();
      for (const secret of [identifier, code, STRONG]) assert.ok(!logs.includes(secret), 'nor the log');
    });

    test('[ACC-1] [ORG-1] a developer registers by phone: code by SMS, personal organisation on activation', async () => {
      const identifier = `+4915${String(Date.now()).slice(-8)}`;
      assert.equal((await register(tp, { identifier, password: STRONG, kind: 'developer' })).status, 202);
      const code = await latestCode(tp, identifier, 'activation');
      assert.equal(outbox(tp, identifier, 'activation')[0]!.channel, 'sms');
      const pending = await userOf(tp, identifier);
      assert.equal(pending?.kind, 'developer');
      const membershipsOf = () =>
        tp.query<{ role: string; kind: string }>(
          'select m.role, v.kind from organisation_members m join vendors v on v.id = m.vendor_id where m.user_id = $1',
          [pending.id],
        );
      assert.deepEqual(await membershipsOf(), [], 'no organisation before activation');
      const res = await activate(tp, identifier, code);
      assert.equal(res.status, 200, res.text);
      assert.deepEqual(
        (await membershipsOf()).map((m) => ({ ...m })),
        [{ role: 'owner', kind: 'personal' }],
      );
    });

    test('[ACC-1] five wrong codes void the code; a new one works', async () => {
      const identifier = newEmail();
      assert.equal((await register(tp, { identifier, password: STRONG })).status, 202);
      const code = await latestCode(tp, identifier, 'activation');
      const wrong = code === '00000000' ? '11111111' : '00000000';
      for (let i = 0; i < 5; i++) {
        const res = await activate(tp, identifier, wrong);
        assert.equal(res.status, 400);
        assert.equal(res.body.error.code, 'ERR_ACCOUNT_CODE_INVALID');
        assert.equal(res.body.error.message, 'The code is invalid or expired');
      }
      const voided = await activate(tp, identifier, code);
      assert.equal(voided.status, 400, 'the right code no longer works');
      assert.equal(voided.body.error.code, 'ERR_ACCOUNT_CODE_INVALID');
      assert.equal((await userOf(tp, identifier))?.status, 'pending');

      const resend = await request(tp.platform, 'POST', '/v1/auth/activate/resend', { body: { identifier } });
      assert.equal(resend.status, 202);
      assert.deepEqual(resend.body, { status: 'sent-if-registered' });
      const fresh = await latestCode(tp, identifier, 'activation', 2);
      const ok = await activate(tp, identifier, fresh);
      assert.equal(ok.status, 200, ok.text);
      assert.equal((await userOf(tp, identifier))?.status, 'active');
    });

    // These register from their own loopback addresses: the per-IP registration quota is shared.
    test('[ACC-1] [ACC-4] re-registering a pending address cannot take over the account its owner activates', async () => {
      const identifier = newEmail();
      const victim = STRONG;
      const attacker = OTHER_STRONG;
      assert.equal((await register(tp, { identifier, password: victim }, { localAddress: '127.0.0.71' })).status, 202);
      await latestCode(tp, identifier, 'activation', 1);
      const attacked = await register(tp, { identifier, password: attacker }, { localAddress: '127.0.0.70' });
      assert.equal(attacked.status, 202, 'the attacker gets the same answer');
      assert.deepEqual(attacked.body, { status: 'pending', next: 'activate' });
      // The attacker's registration voided the victim's first code; the victim uses the newest one.
      const latest = await latestCode(tp, identifier, 'activation', 2);
      const attackerHash = (await userOf(tp, identifier))!.password_hash;

      const refused = await activate(tp, identifier, latest, victim);
      assert.equal(refused.status, 400);
      assert.equal(refused.body.error.code, 'ERR_ACCOUNT_CODE_INVALID');
      assert.equal(refused.body.error.message, 'The code is invalid or expired');
      let stored = await userOf(tp, identifier);
      assert.equal(stored?.status, 'pending', "the attacker's password was not activated");
      assert.equal(stored?.password_hash, attackerHash);

      // The attacker never receives the code: their guess is refused like any wrong code.
      const guess = latest === '00000000' ? '11111111' : '00000000';
      const attackerTry = await activate(tp, identifier, guess, attacker);
      assert.equal(attackerTry.status, 400);
      assert.equal(attackerTry.body.error.code, 'ERR_ACCOUNT_CODE_INVALID');
      assert.equal((await userOf(tp, identifier))?.status, 'pending');

      // The victim registers again: their password is stored and a new code is sent.
      assert.equal((await register(tp, { identifier, password: victim }, { localAddress: '127.0.0.71' })).status, 202);
      const fresh = await latestCode(tp, identifier, 'activation', 3);
      const ok = await activate(tp, identifier, fresh, victim);
      assert.equal(ok.status, 200, ok.text);
      assert.deepEqual(ok.body, { status: 'active' });
      stored = await userOf(tp, identifier);
      assert.equal(stored?.status, 'active');
      assert.notEqual(stored?.password_hash, attackerHash);

      const attackerLogin = await signIn(tp, identifier, attacker);
      assert.equal(attackerLogin.status, 401);
      assert.equal(attackerLogin.body.error.code, 'ERR_AUTH_INVALID');
      const sessions = await tp.query('select id from sessions where principal_id = $1', [stored.id]);
      assert.equal(sessions.length, 0, "the attacker's password created no session");
      const victimLogin = await signIn(tp, identifier, victim);
      assert.equal(victimLogin.status, 200, victimLogin.text);
      assert.equal(typeof victimLogin.body.token, 'string');

      await tp.platform.audit.flush();
      const entries = await tp.platform.audit.query({ type: 'user.activate', limit: 200 });
      assert.ok(entries.some((e) => e.target === stored.id && e.result === 'success'));
      const logs = tp.logs.text();
      for (const secret of [identifier, latest, fresh, victim, attacker]) assert.ok(!logs.includes(secret));
    });

    test('[ACC-1] [ACC-4] the right code with a wrong password leaves the account pending and the code usable', async () => {
      const identifier = newEmail();
      assert.equal((await register(tp, { identifier, password: STRONG }, { localAddress: '127.0.0.72' })).status, 202);
      const code = await latestCode(tp, identifier, 'activation');
      const user = (await userOf(tp, identifier))!;
      const attempts = async () => {
        const rows = await tp.query<{ attempts: number | string }>(
          "select attempts from verification_codes where user_id = $1 and purpose = 'activate' and used_at is null",
          [user.id],
        );
        return rows.map((r) => Number(r.attempts));
      };

      const wrongPassword = await activate(tp, identifier, code, OTHER_STRONG);
      assert.equal(wrongPassword.status, 400);
      assert.equal(wrongPassword.body.error.code, 'ERR_ACCOUNT_CODE_INVALID');
      assert.equal(wrongPassword.body.error.message, 'The code is invalid or expired');
      assert.equal((await userOf(tp, identifier))?.status, 'pending');
      assert.deepEqual(await attempts(), [1], 'counted as a guess against the live code, which it did not use');

      // An unknown identifier gets the same answer.
      const unknown = await activate(tp, newEmail(), code, STRONG);
      assert.equal(unknown.status, wrongPassword.status);
      assert.deepEqual(
        { code: unknown.body.error.code, message: unknown.body.error.message },
        { code: wrongPassword.body.error.code, message: wrongPassword.body.error.message },
      );

      // The owner retries with the right password and the same code.
      const ok = await activate(tp, identifier, code, STRONG);
      assert.equal(ok.status, 200, ok.text);
      assert.equal((await userOf(tp, identifier))?.status, 'active');
    });

    test('[ACC-1] [ACC-4] wrong passwords count toward the code attempt limit like wrong codes', async () => {
      const identifier = newEmail();
      assert.equal((await register(tp, { identifier, password: STRONG }, { localAddress: '127.0.0.72' })).status, 202);
      const code = await latestCode(tp, identifier, 'activation');
      for (let i = 0; i < 5; i++) {
        const res = await activate(tp, identifier, code, OTHER_STRONG);
        assert.equal(res.status, 400);
        assert.equal(res.body.error.code, 'ERR_ACCOUNT_CODE_INVALID');
      }
      const voided = await activate(tp, identifier, code, STRONG);
      assert.equal(voided.status, 400, 'the code is void after codeMaxAttempts guesses');
      assert.equal(voided.body.error.code, 'ERR_ACCOUNT_CODE_INVALID');
      assert.equal((await userOf(tp, identifier))?.status, 'pending');
    });

    test('[ACC-1] registering a taken identifier answers the same and tells the owner instead', async () => {
      const owner = await activeAccount(tp);
      const identifier = (await tp.platform.accountsContext.users.contactOf(owner.id))!.value;
      const free = newEmail();
      const before = await userCount(tp);
      const taken = await register(tp, { identifier, password: OTHER_STRONG });
      const fresh = await register(tp, { identifier: free, password: STRONG });
      assert.equal(taken.status, fresh.status);
      assert.deepEqual(taken.body, fresh.body);
      assert.equal(await userCount(tp), before + 1, 'only the free identifier got a row');
      const after = await userOf(tp, identifier);
      assert.equal(after?.password_hash, owner.password_hash, "the owner's password is unchanged");
      assert.equal(after?.status, 'active');
      await latestCode(tp, free, 'activation');
      for (let i = 0; i < 100 && outbox(tp, identifier, 'registration-attempt').length === 0; i++) await sleep(20);
      const notice = outbox(tp, identifier, 'registration-attempt');
      assert.equal(notice.length, 1, 'the owner is told someone tried to register');
      assert.doesNotMatch(notice[0]!.text, /\b\d{8}\b/, 'the notice carries no code');
    });

    test('[ACC-3] a weak or common password is refused with ERR_PASSWORD_WEAK; the hash is argon2id', async () => {
      const before = await userCount(tp);
      const cases: [string, string][] = [
        ['short1', 'Password is too short: use at least 10 characters (a passphrase of several words works well)'],
        ['qwertyuiop', 'Password is on the list of common or breached passwords; choose another'],
      ];
      for (const [password, message] of cases) {
        const identifier = newEmail();
        const res = await register(tp, { identifier, password });
        assert.equal(res.status, 400);
        assert.equal(res.body.error.code, 'ERR_PASSWORD_WEAK');
        assert.equal(res.body.error.message, message);
        assert.equal(await userOf(tp, identifier), null);
      }
      assert.equal(await userCount(tp), before, 'no user row was created');

      const identifier = newEmail();
      assert.equal((await register(tp, { identifier, password: STRONG })).status, 202);
      const stored = await userOf(tp, identifier);
      assert.match(stored!.password_hash, /^\$argon2id\$v=19\$m=19456,t=2,p=1\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+$/);
      assert.ok(!stored!.password_hash.includes(STRONG));
    });

    test('[ACC-4] forgot-password answers the same for unknown and known identifiers', async () => {
      const known = await activeAccount(tp);
      const knownIdentifier = (await tp.platform.accountsContext.users.contactOf(known.id))!.value;
      const unknownIdentifier = newEmail();
      const a = await request(tp.platform, 'POST', '/v1/auth/password/forgot', {
        body: { identifier: knownIdentifier },
      });
      const b = await request(tp.platform, 'POST', '/v1/auth/password/forgot', {
        body: { identifier: unknownIdentifier },
      });
      assert.equal(a.status, 202);
      assert.equal(b.status, a.status);
      assert.deepEqual(a.body, { status: 'sent-if-registered' });
      assert.deepEqual(b.body, a.body);
      await latestCode(tp, knownIdentifier, 'password-reset');
      assert.equal(outbox(tp, unknownIdentifier).length, 0, 'nothing is sent to an unknown identifier');

      // A wrong code for a known identifier and any code for an unknown one: the same refusal.
      const wrongKnown = await request(tp.platform, 'POST', '/v1/auth/password/reset', {
        body: { identifier: knownIdentifier, code: '12345678', newPassword: OTHER_STRONG },
      });
      const wrongUnknown = await request(tp.platform, 'POST', '/v1/auth/password/reset', {
        body: { identifier: unknownIdentifier, code: '12345678', newPassword: OTHER_STRONG },
      });
      assert.equal(wrongKnown.status, 400);
      assert.equal(wrongUnknown.status, wrongKnown.status);
      assert.deepEqual(
        { code: wrongUnknown.body.error.code, message: wrongUnknown.body.error.message },
        { code: wrongKnown.body.error.code, message: wrongKnown.body.error.message },
      );
      assert.equal(wrongKnown.body.error.code, 'ERR_ACCOUNT_CODE_INVALID');
      assert.equal((await userOf(tp, knownIdentifier))?.password_hash, known.password_hash, 'nothing changed');
    });

    test('[ACC-4] reset with the code sets the password and ends every existing session', async () => {
      const user = await activeAccount(tp);
      const identifier = (await tp.platform.accountsContext.users.contactOf(user.id))!.value;
      const { token } = await tp.platform.accountsContext.sessions.create({
        principalKind: 'user',
        principalId: user.id,
        level: 'full',
        persistent: false,
        ip: '127.0.0.1',
      });
      // Authenticated but not allowed: proves the token works before the reset.
      assert.equal((await request(tp.platform, 'GET', '/v1/vendors', { token })).status, 403);

      await request(tp.platform, 'POST', '/v1/auth/password/forgot', { body: { identifier } });
      const code = await latestCode(tp, identifier, 'password-reset');
      const weak = await request(tp.platform, 'POST', '/v1/auth/password/reset', {
        body: { identifier, code, newPassword: 'qwertyuiop' },
      });
      assert.equal(weak.status, 400);
      assert.equal(weak.body.error.code, 'ERR_PASSWORD_WEAK', 'the policy applies to the new password');
      const res = await request(tp.platform, 'POST', '/v1/auth/password/reset', {
        body: { identifier, code, newPassword: OTHER_STRONG },
      });
      assert.equal(res.status, 200, res.text);
      assert.deepEqual(res.body, { status: 'reset', next: 'sign-in' });

      const after = await userOf(tp, identifier);
      assert.notEqual(after!.password_hash, user.password_hash);
      assert.match(after!.password_hash, /^\$argon2id\$v=19\$m=19456,t=2,p=1\$/);
      const denied = await request(tp.platform, 'GET', '/v1/vendors', { token });
      assert.equal(denied.status, 401, 'the old session stopped working');
      assert.equal(denied.body.error.code, 'ERR_AUTH_INVALID');
      const live = await tp.query('select id from sessions where principal_id = $1 and revoked_at is null', [user.id]);
      assert.equal(live.length, 0);

      const replay = await request(tp.platform, 'POST', '/v1/auth/password/reset', {
        body: { identifier, code, newPassword: STRONG },
      });
      assert.equal(replay.status, 400, 'a reset code works once');
      assert.equal((await userOf(tp, identifier))!.password_hash, after!.password_hash);

      await tp.platform.audit.flush();
      const entries = await tp.platform.audit.query({ type: 'user.password-reset', limit: 50 });
      assert.ok(entries.some((e) => e.target === user.id && e.result === 'success'));
      assert.ok(!JSON.stringify(entries).includes(identifier));
      const logs = tp.logs.text();
      for (const secret of [identifier, code, OTHER_STRONG])
        assert.ok(!logs.includes(secret), 'nothing secret is logged');
    });

    test('[ACC-4] repeated forgot-password requests for one identifier lock with Retry-After', async () => {
      const identifier = newEmail();
      const statuses: number[] = [];
      let locked: HttpResult<{ error: { code: string } }> | undefined;
      for (let i = 0; i < FAILURES_PER_ACCOUNT + 2; i++) {
        const res = await request(tp.platform, 'POST', '/v1/auth/password/forgot', {
          body: { identifier },
          localAddress: `127.0.0.${100 + i}`,
        });
        statuses.push(res.status);
        if (res.status === 429) locked = res;
      }
      assert.deepEqual(statuses, [...Array(FAILURES_PER_ACCOUNT).fill(202), 429, 429]);
      assert.equal(locked!.body.error.code, 'ERR_AUTH_LOCKED');
      assert.match(String(locked!.headers['retry-after']), /^\d+$/);
      const other = await request(tp.platform, 'POST', '/v1/auth/password/forgot', {
        body: { identifier: newEmail() },
        localAddress: '127.0.0.120',
      });
      assert.equal(other.status, 202, 'another identifier is not locked');
    });

    test('[ACC-5] an unknown field is refused and nothing is created', async () => {
      const before = await userCount(tp);
      const identifier = newEmail();
      const res = await register(tp, { identifier, password: STRONG, status: 'active' });
      assert.equal(res.status, 400);
      assert.equal(res.body.error.code, 'ERR_VALIDATION_UNKNOWN_FIELD');
      assert.equal(res.body.error.message, 'Unknown field body/status');
      assert.equal(await userCount(tp), before);
      const reset = await request(tp.platform, 'POST', '/v1/auth/password/forgot', {
        body: { identifier, extra: 1 },
      });
      assert.equal(reset.body.error.code, 'ERR_VALIDATION_UNKNOWN_FIELD');
    });

    test('[ACC-2] the per-IP registration limit answers 429 before anything is parsed', async () => {
      const ip = '127.0.0.60';
      // The quota is shared by challenges, registrations and code requests; spend it cheaply.
      for (let i = 0; i < REGISTRATIONS_PER_IP; i++) {
        const res = await request(tp.platform, 'POST', '/v1/auth/register', { body: {}, localAddress: ip });
        assert.equal(res.status, 400);
      }
      const identifier = newEmail();
      const altcha = await solvedChallenge(tp, '127.0.0.61');
      const before = await userCount(tp);
      const refused = await register(tp, { identifier, password: STRONG }, { altcha, localAddress: ip });
      assert.equal(refused.status, 429);
      assert.equal(refused.body.error.code, 'ERR_RATE_LIMITED');
      assert.match(String(refused.headers['retry-after']), /^\d+$/);
      assert.equal(await userCount(tp), before, 'the refused registration created nothing');
      // The refused request did not burn the solution: it still works from another address.
      const ok = await register(tp, { identifier, password: STRONG }, { altcha, localAddress: '127.0.0.61' });
      assert.equal(ok.status, 202);
    });
  });
}
