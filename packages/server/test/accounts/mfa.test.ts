// Second factors of people (ACC-6) end to end through the HTTP API: TOTP enrolment and sign-in,
// passkeys (a software authenticator: real P-256 keys, real WebAuthn byte layouts), recovery codes,
// the limits on wrong answers, step-up with a second factor, and what a pending sign-in cannot do.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { normaliseIdentifier, totpCode } from '../../src/accounts/index.ts';
import { hashPassword } from '../../src/accounts/password-hasher.ts';
import { dialectCases } from '../helpers/dialects.ts';
import { SoftwareAuthenticator } from '../helpers/software-authenticator.ts';
import { type HttpResult, request, startTestPlatform, type TestPlatform } from '../helpers/test-platform.ts';

const PASSWORD = 'lantern orchard velvet 1987';
const APP = { 'x-castellan-client': 'app' };
const CODE_INVALID = { code: 'ERR_MFA_CODE_INVALID', message: 'The code is invalid or expired' };
const INVALID = { code: 'ERR_AUTH_INVALID', message: 'Invalid credentials' };

let passwordHash: string;
before(async () => {
  passwordHash = await hashPassword(PASSWORD);
});

function errorOf(res: HttpResult<{ error?: { code: string; message: string } }>): { code?: string; message?: string } {
  return { code: res.body?.error?.code, message: res.body?.error?.message };
}

/** A six-digit string that is not a valid code around now (so a "wrong code" test cannot pass by luck). */
function wrongCode(secret: string): string {
  const valid = new Set([-60_000, -30_000, 0, 30_000, 60_000].map((d) => totpCode(secret, Date.now() + d)));
  return ['000000', '111111', '222222'].find((c) => !valid.has(c))!;
}

for (const dialect of await dialectCases()) {
  describe(`second factors on ${dialect.name}`, { skip: dialect.skip }, () => {
    let tp: TestPlatform;
    let users = 0;
    const p = () => tp.platform;
    const ctx = () => tp.platform.accountsContext;

    before(async () => {
      tp = await startTestPlatform(dialect.name);
    });
    after(() => tp?.close());

    async function newUser(): Promise<{ id: string; email: string }> {
      const email = `person${++users}@example.com`;
      const user = await ctx().users.create({
        identifier: normaliseIdentifier(email),
        kind: 'consumer',
        status: 'active',
        passwordHash,
      });
      return { id: user.id, email };
    }

    async function session(userId: string, level: 'full' | 'mfa-pending', authenticatedAt?: number) {
      const issued = await ctx().sessions.create({
        principalKind: 'user',
        principalId: userId,
        level,
        persistent: false,
        ip: '127.0.0.1',
        ...(authenticatedAt === undefined ? {} : { authenticatedAt }),
      });
      return { token: issued.token, id: issued.session.id };
    }

    async function fullSessionsOf(userId: string): Promise<number> {
      const rows = await tp.query(
        `select id from sessions where principal_id = $1 and level = 'full' and revoked_at is null`,
        [userId],
      );
      return rows.length;
    }

    /** Enrols TOTP with a full session; returns the secret, the code used and the recovery codes. */
    async function enrolTotp(token: string) {
      const start = await request(p(), 'POST', '/v1/me/mfa/totp', { token });
      assert.equal(start.status, 201, start.text);
      const secret = start.body.secret as string;
      const code = totpCode(secret);
      const confirm = await request(p(), 'POST', '/v1/me/mfa/totp/confirm', { token, body: { code } });
      assert.equal(confirm.status, 200, confirm.text);
      return { secret, code, recoveryCodes: confirm.body.recoveryCodes as string[] | undefined, uri: start.body.uri };
    }

    /** Registers a software passkey with a full session. */
    async function registerPasskey(userId: string, token: string) {
      const options = await request(p(), 'POST', '/v1/me/mfa/webauthn/registration-options', { token });
      assert.equal(options.status, 200, options.text);
      const authenticator = SoftwareAuthenticator.for(p().httpUrl);
      const created = await request(p(), 'POST', '/v1/me/mfa/webauthn/registration', {
        token,
        body: { response: authenticator.register(options.body), label: 'Test key' },
      });
      assert.equal(created.status, 201, created.text);
      void userId;
      return { authenticator, options: options.body, created: created.body };
    }

    test('[ACC-6] a passkey registers and then completes a sign-in, end to end through the API', async () => {
      const user = await newUser();
      const { token } = await session(user.id, 'full');
      const { authenticator, options, created } = await registerPasskey(user.id, token);
      const url = new URL(p().httpUrl);
      assert.equal(options.rp.id, url.hostname);
      assert.equal(options.rp.name, 'Castellan');
      assert.equal(options.user.id, Buffer.from(user.id).toString('base64url'));
      assert.equal(options.attestation, 'none');
      assert.deepEqual(options.authenticatorSelection, {
        residentKey: 'preferred',
        userVerification: 'preferred',
        requireResidentKey: false,
      });
      assert.equal(created.passkey.id, authenticator.id);
      assert.equal(created.recoveryCodes.length, 10, 'the first factor comes with ten recovery codes');
      const rows = await tp.query<{ id: string; principal_id: string; counter: unknown }>(
        'select id, principal_id, counter from webauthn_credentials where principal_id = $1',
        [user.id],
      );
      assert.deepEqual(
        rows.map((r) => [r.id, Number(r.counter)]),
        [[authenticator.id, 0]],
      );
      assert.equal(
        (await tp.query('select id from auth_challenges where principal_id = $1', [user.id])).length,
        0,
        'the registration challenge was spent',
      );
      const factors = await request(p(), 'GET', '/v1/me/mfa', { token });
      assert.equal(factors.status, 200);
      assert.deepEqual(factors.body.totp, { enrolled: false, pending: false });
      assert.equal(factors.body.passkeys.length, 1);
      assert.equal(factors.body.recoveryCodesRemaining, 10);
      assert.ok(!('publicKey' in factors.body.passkeys[0]), 'no key material in the list');

      // Excluded from a second registration of the same authenticator.
      const again = await request(p(), 'POST', '/v1/me/mfa/webauthn/registration-options', { token });
      assert.deepEqual(
        again.body.excludeCredentials.map((c: { id: string }) => c.id),
        [authenticator.id],
      );

      const pending = await session(user.id, 'mfa-pending');
      const authOptions = await request(p(), 'POST', '/v1/auth/mfa/webauthn-options', {
        body: { mfaToken: pending.token },
      });
      assert.equal(authOptions.status, 200, authOptions.text);
      assert.deepEqual(
        authOptions.body.allowCredentials.map((c: { id: string }) => c.id),
        [authenticator.id],
      );
      const done = await request(p(), 'POST', '/v1/auth/mfa/webauthn', {
        headers: APP,
        body: { mfaToken: pending.token, response: authenticator.assert(authOptions.body) },
      });
      assert.equal(done.status, 200, done.text);
      assert.match(done.body.token, /^cas_ses_/);
      assert.notEqual(done.body.token, pending.token, 'the session token is rotated (SESS-1)');
      assert.equal((await request(p(), 'GET', '/v1/me/mfa', { token: done.body.token })).status, 200);
      const reuse = await request(p(), 'POST', '/v1/auth/mfa/webauthn-options', { body: { mfaToken: pending.token } });
      assert.deepEqual(errorOf(reuse), INVALID, 'the pending token is spent');
      const [row] = await tp.query<{ counter: unknown }>('select counter from webauthn_credentials where id = $1', [
        authenticator.id,
      ]);
      assert.equal(Number(row!.counter), 1, 'the signature counter was stored');
    });

    test('[ACC-6] a replayed passkey assertion (same challenge) is refused', async () => {
      const user = await newUser();
      const { token } = await session(user.id, 'full');
      const { authenticator } = await registerPasskey(user.id, token);
      const first = await session(user.id, 'mfa-pending');
      const options = await request(p(), 'POST', '/v1/auth/mfa/webauthn-options', { body: { mfaToken: first.token } });
      const assertion = authenticator.assert(options.body);
      const ok = await request(p(), 'POST', '/v1/auth/mfa/webauthn', {
        headers: APP,
        body: { mfaToken: first.token, response: assertion },
      });
      assert.equal(ok.status, 200, ok.text);
      const fullBefore = await fullSessionsOf(user.id);

      const second = await session(user.id, 'mfa-pending');
      const replay = await request(p(), 'POST', '/v1/auth/mfa/webauthn', {
        headers: APP,
        body: { mfaToken: second.token, response: assertion },
      });
      assert.equal(replay.status, 401);
      assert.deepEqual(errorOf(replay), CODE_INVALID);
      // Even freshly signed, with a higher counter: the challenge itself answers only once.
      const resigned = await request(p(), 'POST', '/v1/auth/mfa/webauthn', {
        headers: APP,
        body: { mfaToken: second.token, response: authenticator.assert(options.body) },
      });
      assert.deepEqual(errorOf(resigned), CODE_INVALID);
      assert.equal(await fullSessionsOf(user.id), fullBefore, 'no session was created');
      assert.equal((await request(p(), 'GET', '/v1/me/mfa', { token: second.token })).status, 401);

      // A new challenge for the same pending sign-in works: the refusals were about the replay.
      const fresh = await request(p(), 'POST', '/v1/auth/mfa/webauthn-options', { body: { mfaToken: second.token } });
      const done = await request(p(), 'POST', '/v1/auth/mfa/webauthn', {
        headers: APP,
        body: { mfaToken: second.token, response: authenticator.assert(fresh.body) },
      });
      assert.equal(done.status, 200, done.text);
    });

    test('[ACC-6] an assertion signed by another key is refused and the counter does not move', async () => {
      const user = await newUser();
      const { token } = await session(user.id, 'full');
      const { authenticator } = await registerPasskey(user.id, token);
      const impostor = authenticator.impostor();
      const pending = await session(user.id, 'mfa-pending');
      const options = await request(p(), 'POST', '/v1/auth/mfa/webauthn-options', {
        body: { mfaToken: pending.token },
      });
      const forged = await request(p(), 'POST', '/v1/auth/mfa/webauthn', {
        headers: APP,
        body: { mfaToken: pending.token, response: impostor.assert(options.body, { counter: 50 }) },
      });
      assert.equal(forged.status, 401);
      assert.deepEqual(errorOf(forged), CODE_INVALID);
      const [row] = await tp.query<{ counter: unknown }>('select counter from webauthn_credentials where id = $1', [
        authenticator.id,
      ]);
      assert.equal(Number(row!.counter), 0);
      assert.equal(await fullSessionsOf(user.id), 1, 'only the enrolment session exists');

      // Passwordless sign-in: the impostor is refused, the real key gets a full session.
      const pkOptions = await request(p(), 'POST', '/v1/auth/passkey/options');
      assert.equal(pkOptions.status, 200, pkOptions.text);
      assert.deepEqual(pkOptions.body.options.allowCredentials, []);
      assert.equal(pkOptions.body.options.userVerification, 'required');
      const refused = await request(p(), 'POST', '/v1/auth/passkey', {
        headers: APP,
        body: { challengeId: pkOptions.body.challengeId, response: impostor.assert(pkOptions.body.options) },
      });
      assert.deepEqual(errorOf(refused), INVALID);
      assert.equal(await fullSessionsOf(user.id), 1);
      const pkOptions2 = await request(p(), 'POST', '/v1/auth/passkey/options');
      const signedIn = await request(p(), 'POST', '/v1/auth/passkey', {
        headers: APP,
        body: { challengeId: pkOptions2.body.challengeId, response: authenticator.assert(pkOptions2.body.options) },
      });
      assert.equal(signedIn.status, 200, signedIn.text);
      assert.equal((await request(p(), 'GET', '/v1/me/mfa', { token: signedIn.body.token })).status, 200);
      assert.equal(await fullSessionsOf(user.id), 2);
    });

    test('[ACC-6] TOTP enrolment, then sign-in with a TOTP second step; a code is accepted once', async () => {
      const user = await newUser();
      const { token } = await session(user.id, 'full');
      const { secret, code, recoveryCodes, uri } = await enrolTotp(token);
      assert.match(uri, /^otpauth:\/\/totp\/Castellan:person\d+%40example\.com\?/);
      assert.equal(recoveryCodes?.length, 10);
      assert.equal(new Set(recoveryCodes).size, 10);
      const stored = JSON.stringify(await tp.query('select * from mfa_totp where principal_id = $1', [user.id]));
      assert.ok(!stored.includes(secret), 'the secret is stored encrypted');
      const codes = JSON.stringify(await tp.query('select * from recovery_codes where principal_id = $1', [user.id]));
      for (const c of recoveryCodes ?? []) assert.ok(!codes.includes(c) && !codes.includes(c.replaceAll('-', '')));

      const pending = await session(user.id, 'mfa-pending');
      const reused = await request(p(), 'POST', '/v1/auth/mfa/totp', { body: { mfaToken: pending.token, code } });
      assert.equal(reused.status, 401);
      assert.deepEqual(errorOf(reused), CODE_INVALID, 'the enrolment code cannot be used again');
      assert.equal(await fullSessionsOf(user.id), 1);
      const next = totpCode(secret, Date.now() + 30_000);
      const done = await request(p(), 'POST', '/v1/auth/mfa/totp', {
        headers: APP,
        body: { mfaToken: pending.token, code: next },
      });
      assert.equal(done.status, 200, done.text);
      assert.equal((await request(p(), 'GET', '/v1/me/mfa', { token: done.body.token })).body.totp.enrolled, true);
      const twice = await request(p(), 'POST', '/v1/auth/mfa/totp', {
        body: { mfaToken: (await session(user.id, 'mfa-pending')).token, code: next },
      });
      assert.deepEqual(errorOf(twice), CODE_INVALID, 'a sign-in code cannot be used twice');

      // Through the password sign-in route: it asks for the second factor.
      const login = await request(p(), 'POST', '/v1/auth/login', {
        headers: APP,
        body: { identifier: user.email, password: PASSWORD },
      });
      assert.equal(login.status, 200, login.text);
      assert.equal(login.body.mfaRequired, true);
      assert.deepEqual(login.body.methods, ['totp']);
      assert.equal(login.body.token, undefined, 'no usable session before the second factor');
      assert.equal((await request(p(), 'GET', '/v1/me', { token: login.body.mfaToken })).status, 401);
      const viaRecovery = await request(p(), 'POST', '/v1/auth/mfa/recovery', {
        headers: APP,
        body: { mfaToken: login.body.mfaToken, code: recoveryCodes[0]?.toUpperCase() },
      });
      assert.equal(viaRecovery.status, 200, viaRecovery.text);
      assert.equal((await request(p(), 'GET', '/v1/me', { token: viaRecovery.body.token })).status, 200);
    });

    test('[ACC-6] a recovery code works once', async () => {
      const user = await newUser();
      const { token } = await session(user.id, 'full');
      const { recoveryCodes } = await enrolTotp(token);
      const code = recoveryCodes![3]!;
      const first = await session(user.id, 'mfa-pending');
      const ok = await request(p(), 'POST', '/v1/auth/mfa/recovery', {
        headers: APP,
        body: { mfaToken: first.token, code },
      });
      assert.equal(ok.status, 200, ok.text);
      const second = await session(user.id, 'mfa-pending');
      const again = await request(p(), 'POST', '/v1/auth/mfa/recovery', {
        headers: APP,
        body: { mfaToken: second.token, code },
      });
      assert.equal(again.status, 401);
      assert.deepEqual(errorOf(again), CODE_INVALID);
      assert.equal(await fullSessionsOf(user.id), 2, 'the enrolment session and the one recovery sign-in');
      const left = await request(p(), 'GET', '/v1/me/mfa', { token: ok.body.token });
      assert.equal(left.body.recoveryCodesRemaining, 9);
      // Regenerating (with a recent authentication) voids the old codes.
      const fresh = await request(p(), 'POST', '/v1/me/mfa/recovery-codes', { token: ok.body.token });
      assert.equal(fresh.status, 200, fresh.text);
      const old = await request(p(), 'POST', '/v1/auth/mfa/recovery', {
        body: { mfaToken: second.token, code: recoveryCodes![5]! },
      });
      assert.deepEqual(errorOf(old), CODE_INVALID);
    });

    test('[ACC-6] five wrong codes revoke the pending sign-in', async () => {
      const user = await newUser();
      const { token } = await session(user.id, 'full');
      const { secret } = await enrolTotp(token);
      const pending = await session(user.id, 'mfa-pending');
      const wrong = wrongCode(secret);
      for (let i = 1; i <= 5; i++) {
        const res = await request(p(), 'POST', '/v1/auth/mfa/totp', { body: { mfaToken: pending.token, code: wrong } });
        assert.equal(res.status, 401, `attempt ${i}`);
        assert.deepEqual(errorOf(res), CODE_INVALID);
      }
      const [row] = await tp.query<{ revoked_at: unknown }>('select revoked_at from sessions where id = $1', [
        pending.id,
      ]);
      assert.notEqual(row!.revoked_at, null, 'the pending session is revoked');
      const right = await request(p(), 'POST', '/v1/auth/mfa/totp', {
        headers: APP,
        body: { mfaToken: pending.token, code: totpCode(secret, Date.now() + 30_000) },
      });
      assert.equal(right.status, 401);
      assert.deepEqual(errorOf(right), INVALID, 'even the right code cannot revive it');
      assert.equal(await fullSessionsOf(user.id), 1, 'no session was created');
      const audit = await tp.query<{ result: string; details: string }>(
        `select result, details from audit_entries where target = $1 and event_type = 'user.login' order by seq`,
        [user.id],
      );
      assert.deepEqual(
        audit.map((a) => [a.result, JSON.parse(a.details).revoked]),
        [...Array(4).fill(['failure', false]), ['failure', true]],
        'every wrong code is audited; the fifth revoked the sign-in',
      );
      assert.ok(!JSON.stringify(audit).includes(wrong), 'codes never reach the audit log');
    });

    test("[ACC-6] wrong codes across pending sign-ins lock the person's second step (no endless guessing)", async () => {
      const user = await newUser();
      const { token } = await session(user.id, 'full');
      const { secret } = await enrolTotp(token);
      const wrong = wrongCode(secret);
      // accounts.loginFailuresPerAccount (5) twice over: two pending sign-ins of five wrong codes each.
      for (let round = 0; round < 2; round++) {
        const pending = await session(user.id, 'mfa-pending');
        for (let i = 0; i < 5; i++) {
          const res = await request(p(), 'POST', '/v1/auth/mfa/totp', {
            body: { mfaToken: pending.token, code: wrong },
          });
          assert.deepEqual(errorOf(res), CODE_INVALID);
        }
      }
      const pending = await session(user.id, 'mfa-pending');
      const res = await request(p(), 'POST', '/v1/auth/mfa/totp', {
        body: { mfaToken: pending.token, code: totpCode(secret, Date.now() + 30_000) },
      });
      assert.equal(res.status, 429);
      assert.deepEqual(errorOf(res), { code: 'ERR_AUTH_LOCKED', message: 'Too many failed attempts; retry later' });
      assert.ok(Number(res.headers['retry-after']) > 0);
      assert.equal(await fullSessionsOf(user.id), 1, 'the right code did not get through while locked');
    });

    test('[ACC-6] enrolment and removal need a recent authentication; a second factor renews it', async () => {
      const user = await newUser();
      const stale = await session(user.id, 'full', Date.now() - 60 * 60_000);
      const STEP_UP = 'ERR_AUTH_STEP_UP_REQUIRED';
      const totp = await request(p(), 'POST', '/v1/me/mfa/totp', { token: stale.token });
      assert.equal(totp.status, 401);
      assert.equal(errorOf(totp).code, STEP_UP);
      const options = await request(p(), 'POST', '/v1/me/mfa/webauthn/registration-options', { token: stale.token });
      assert.equal(errorOf(options).code, STEP_UP);
      assert.equal((await tp.query('select * from mfa_totp where principal_id = $1', [user.id])).length, 0);
      assert.equal((await tp.query('select * from auth_challenges where principal_id = $1', [user.id])).length, 0);

      // Enrol with a fresh session, then the stale one cannot remove the factors…
      const fresh = await session(user.id, 'full');
      const { secret } = await enrolTotp(fresh.token);
      const { authenticator } = await registerPasskey(user.id, fresh.token);
      const remove = await request(p(), 'DELETE', '/v1/me/mfa/totp', { token: stale.token });
      assert.equal(errorOf(remove).code, STEP_UP);
      const removeKey = await request(p(), 'DELETE', `/v1/me/mfa/webauthn/${authenticator.id}`, { token: stale.token });
      assert.equal(errorOf(removeKey).code, STEP_UP);
      assert.equal((await tp.query('select * from mfa_totp where principal_id = $1', [user.id])).length, 1);
      assert.equal((await tp.query('select * from webauthn_credentials where principal_id = $1', [user.id])).length, 1);

      // …until it steps up with TOTP (the session token rotates)…
      const stepUp = await request(p(), 'POST', '/v1/auth/reauthenticate/totp', {
        token: stale.token,
        headers: APP,
        body: { code: totpCode(secret, Date.now() + 30_000) },
      });
      assert.equal(stepUp.status, 200, stepUp.text);
      assert.equal((await request(p(), 'GET', '/v1/me/mfa', { token: stale.token })).status, 401);
      const removed = await request(p(), 'DELETE', '/v1/me/mfa/totp', { token: stepUp.body.token });
      assert.equal(removed.status, 204, removed.text);
      assert.equal((await tp.query('select * from mfa_totp where principal_id = $1', [user.id])).length, 0);

      // …or with a passkey (user verification required).
      const stale2 = await session(user.id, 'full', Date.now() - 60 * 60_000);
      const stepOptions = await request(p(), 'POST', '/v1/auth/reauthenticate/webauthn-options', {
        token: stale2.token,
      });
      assert.equal(stepOptions.status, 200, stepOptions.text);
      assert.equal(stepOptions.body.userVerification, 'required');
      const unverified = await request(p(), 'POST', '/v1/auth/reauthenticate/webauthn', {
        token: stale2.token,
        body: { response: authenticator.assert(stepOptions.body, { userVerified: false }) },
      });
      assert.deepEqual(errorOf(unverified), CODE_INVALID, 'presence alone is not a step-up');
      const stepOptions2 = await request(p(), 'POST', '/v1/auth/reauthenticate/webauthn-options', {
        token: stale2.token,
      });
      const stepped = await request(p(), 'POST', '/v1/auth/reauthenticate/webauthn', {
        token: stale2.token,
        headers: APP,
        body: { response: authenticator.assert(stepOptions2.body) },
      });
      assert.equal(stepped.status, 200, stepped.text);
      const other = await newUser();
      const otherSession = await session(other.id, 'full');
      const notTheirs = await request(p(), 'DELETE', `/v1/me/mfa/webauthn/${authenticator.id}`, {
        token: otherSession.token,
      });
      assert.equal(notTheirs.status, 404);
      assert.equal(errorOf(notTheirs).code, 'ERR_MFA_FACTOR_NOT_FOUND');
      const removedKey = await request(p(), 'DELETE', `/v1/me/mfa/webauthn/${authenticator.id}`, {
        token: stepped.body.token,
      });
      assert.equal(removedKey.status, 204, removedKey.text);
      assert.equal(
        (await tp.query('select * from recovery_codes where principal_id = $1', [user.id])).length,
        0,
        'without a factor, recovery codes are dropped',
      );
    });

    test('[ACC-6] an MFA-pending token opens nothing but the second step', async () => {
      const user = await newUser();
      const pending = await session(user.id, 'mfa-pending');
      for (const [method, path] of [
        ['GET', '/v1/me'],
        ['GET', '/v1/me/mfa'],
        ['POST', '/v1/me/mfa/totp'],
        ['POST', '/v1/me/mfa/webauthn/registration-options'],
        ['GET', '/v1/me/sessions'],
        ['POST', '/v1/auth/reauthenticate/webauthn-options'],
      ] as const) {
        const res = await request(p(), method, path, { token: pending.token });
        assert.equal(res.status, 401, `${method} ${path}`);
        assert.deepEqual(errorOf(res), INVALID, `${method} ${path}`);
      }
      assert.equal((await tp.query('select * from mfa_totp where principal_id = $1', [user.id])).length, 0);
      assert.equal((await tp.query('select * from auth_challenges where principal_id = $1', [user.id])).length, 0);
      // A full session's token is not an mfaToken either.
      const full = await session(user.id, 'full');
      const res = await request(p(), 'POST', '/v1/auth/mfa/totp', { body: { mfaToken: full.token, code: '123456' } });
      assert.deepEqual(errorOf(res), INVALID);
    });
  });
}
