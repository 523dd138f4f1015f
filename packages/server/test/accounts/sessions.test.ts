// Sign-in and sessions end to end: brute-force limits without enumeration (ACC-4), new-device and
// new-network alerts (ACC-6), passwords only in bodies (ACC-8), and the session lifecycle (SESS-1..5):
// hashed 256-bit tokens, rotation, IP binding, logout, timeouts, refresh rotation with reuse
// detection, cookie flags, and no token in any log line.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { normaliseIdentifier, totpCode } from '../../src/accounts/index.ts';
import { hashPassword, passwordVerifications } from '../../src/accounts/password-hasher.ts';
import { dialectCases } from '../helpers/dialects.ts';
import {
  type HttpResult as Result,
  request,
  setupStaff,
  startTestPlatform,
  type TestPlatform,
} from '../helpers/test-platform.ts';

/** A response as the helper returns it (bodies read loosely, asserted on). */
type HttpResult = Result<any>;

const PASSWORD = 'lantern orchard velvet 1987';
const NEW_PASSWORD = 'granite puffin harbour 2031';
const APP = { 'x-castellan-client': 'app' };
const INVALID = { code: 'ERR_AUTH_INVALID', message: 'Invalid credentials' };
const LOCKED = { code: 'ERR_AUTH_LOCKED', message: 'Too many failed attempts; retry later' };

let passwordHash: string;
before(async () => {
  passwordHash = await hashPassword(PASSWORD);
});

function errorOf(res: HttpResult): { code: string; message: string } {
  return { code: res.body.error.code, message: res.body.error.message };
}

/** Rows as text, binary columns as latin1, so a search for a token or an address covers every byte. */
function dumpRows(rows: unknown[]): string {
  return JSON.stringify(rows, (_k, v: unknown) => {
    if (v instanceof Uint8Array) return Buffer.from(v).toString('latin1');
    const b = v as { type?: string; data?: number[] } | null;
    return b?.type === 'Buffer' && Array.isArray(b.data) ? Buffer.from(b.data).toString('latin1') : v;
  });
}

function setCookies(res: HttpResult): string[] {
  const raw = res.headers['set-cookie'];
  return raw === undefined ? [] : Array.isArray(raw) ? raw : [raw];
}

function cookieValue(res: HttpResult, name: string): string | undefined {
  const line = setCookies(res).find((c) => c.startsWith(`${name}=`));
  return line?.slice(name.length + 1).split(';')[0];
}

for (const dialect of await dialectCases()) {
  describe(`sign-in and sessions on ${dialect.name}`, { skip: dialect.skip }, () => {
    let tp: TestPlatform;
    /** Every token and refresh token handed out in this describe: none may reach a log line (SESS-5). */
    const issued: string[] = [];
    let userCount = 0;

    before(async () => {
      tp = await startTestPlatform(dialect.name, {
        accounts: { bindSessionToIp: true, loginFailuresPerAccount: 5, loginFailuresPerIp: 12 },
      });
    });
    after(async () => {
      await tp?.close();
    });

    async function createUser(status: 'active' | 'pending' = 'active') {
      const email = `person${++userCount}@example.com`;
      const user = await tp.platform.accountsContext.users.create({
        identifier: normaliseIdentifier(email),
        kind: 'consumer',
        status,
        passwordHash,
      });
      return { id: user.id, email };
    }

    async function login(
      identifier: string,
      password: string,
      options: { localAddress?: string; headers?: Record<string, string>; keepSignedIn?: boolean } = {},
    ): Promise<HttpResult> {
      const res = await request(tp.platform, 'POST', '/v1/auth/login', {
        body: { identifier, password, ...(options.keepSignedIn ? { keepSignedIn: true } : {}) },
        headers: options.headers ?? APP,
        ...(options.localAddress ? { localAddress: options.localAddress } : {}),
      });
      for (const t of [res.body?.token, res.body?.refreshToken, res.body?.mfaToken]) if (t) issued.push(t);
      for (const name of ['__Host-castellan_session', '__Host-castellan_refresh']) {
        const value = cookieValue(res, name);
        if (value) issued.push(value);
      }
      return res;
    }

    const me = (token: string, localAddress?: string) =>
      request(tp.platform, 'GET', '/v1/me', { token, ...(localAddress ? { localAddress } : {}) });

    async function sessionRows(userId: string) {
      return tp.query<{ id: string; revoked_at: unknown; level: string }>(
        'select id, revoked_at, level from sessions where principal_id = $1',
        [userId],
      );
    }

    function outboxAlerts(to: string): unknown[] {
      let files: string[];
      try {
        files = readdirSync(join(tp.dataDir, 'outbox'));
      } catch {
        return [];
      }
      return files
        .map((f) => JSON.parse(readFileSync(join(tp.dataDir, 'outbox', f), 'utf8')) as { to: string; purpose: string })
        .filter((m) => m.to === to && m.purpose === 'sign-in-alert');
    }

    test('[ACC-4] five wrong passwords lock the account: the sixth attempt, even right, computes no hash', async () => {
      const alice = await createUser();
      const from = { localAddress: '127.0.0.3' };
      let lastElapsed = 0;
      for (let i = 0; i < 5; i++) {
        const started = Date.now();
        const res = await login(alice.email, `wrong guess ${i}`, from);
        lastElapsed = Date.now() - started;
        assert.equal(res.status, 401);
        assert.deepEqual(errorOf(res), INVALID);
      }
      assert.ok(lastElapsed >= 900, `the fifth failure is answered after a progressive delay (${lastElapsed} ms)`);

      const hashesBefore = passwordVerifications.count;
      const locked = await login(alice.email, PASSWORD, from);
      assert.equal(locked.status, 429);
      assert.deepEqual(errorOf(locked), LOCKED);
      assert.match(String(locked.headers['retry-after']), /^[1-9]\d*$/);
      assert.ok(Number(locked.headers['retry-after']) <= 15 * 60);
      // The lock is the account's: another address and another client are refused as well.
      const elsewhere = await login(alice.email, PASSWORD, { localAddress: '127.0.0.4' });
      assert.deepEqual(errorOf(elsewhere), LOCKED);
      assert.equal(passwordVerifications.count, hashesBefore, 'no password hash computed while locked');
      assert.deepEqual(await sessionRows(alice.id), [], 'no session was created');

      await tp.platform.audit.flush();
      const entries = await tp.platform.audit.query({ type: 'user.login', target: alice.id, limit: 20 });
      assert.deepEqual(
        entries.map((e) => e.result),
        ['failure', 'failure', 'failure', 'failure', 'failure', 'denied', 'denied'],
      );
      assert.equal(entries.at(-1)!.details.reason, 'locked');
      assert.ok(!JSON.stringify(entries).includes(alice.email), 'no e-mail address in the audit log');
    });

    test('[ACC-4] a burst of parallel guesses gets no more password checks than the account limit', async () => {
      const bob = await createUser();
      const from = { localAddress: '127.0.0.6' };
      const hashesBefore = passwordVerifications.count;
      // 20 at once: each attempt reserves its point before its hash is computed.
      const answers = await Promise.all(
        Array.from({ length: 20 }, (_, i) => login(bob.email, i === 19 ? PASSWORD : `parallel guess ${i}`, from)),
      );
      const statuses = answers.map((a) => a.status);
      assert.ok(
        passwordVerifications.count - hashesBefore <= 5,
        `${passwordVerifications.count - hashesBefore} hashes for 20 parallel attempts`,
      );
      assert.ok(statuses.filter((s) => s === 429).length >= 15, statuses.join(','));
      assert.ok(statuses.every((s) => [401, 429, 200].includes(s)));
    });

    test('[ACC-4] no enumeration: unknown account, wrong password and pending account answer alike', async () => {
      const bob = await createUser();
      const carol = await createUser('pending');
      const from = { localAddress: '127.0.0.5' };
      const answers: HttpResult[] = [];
      for (const [identifier, password] of [
        ['nobody-here@example.com', PASSWORD],
        [bob.email, 'not the password'],
        [carol.email, PASSWORD],
      ] as const) {
        const hashes = passwordVerifications.count;
        const res = await login(identifier, password, from);
        assert.equal(passwordVerifications.count, hashes + 1, 'one hash computed (the decoy for unknown accounts)');
        answers.push(res);
      }
      const shape = (res: HttpResult) => {
        const { requestId, ...rest } = res.body.error;
        assert.match(requestId, /^[0-9a-f-]{36}$/);
        return { status: res.status, error: rest, authenticate: res.headers['www-authenticate'] };
      };
      assert.deepEqual(shape(answers[0]!), { status: 401, error: INVALID, authenticate: 'Bearer realm="castellan"' });
      assert.deepEqual(shape(answers[1]!), shape(answers[0]!));
      assert.deepEqual(shape(answers[2]!), shape(answers[0]!));
      assert.deepEqual(await sessionRows(carol.id), [], 'a pending account gets no session');
      // Unknown accounts lock exactly like known ones, so the lock reveals nothing either.
      for (let i = 0; i < 4; i++) await login('nobody-here@example.com', 'x', from);
      assert.deepEqual(errorOf(await login('nobody-here@example.com', 'x', from)), LOCKED);
    });

    test('[ACC-4] per-IP limit: one address failing on many accounts is locked out, other addresses are not', async () => {
      const dave = await createUser();
      const from = { localAddress: '127.0.0.9' };
      for (let i = 0; i < 12; i++) {
        assert.deepEqual(errorOf(await login(`spray${i}@example.com`, 'Summer2024!', from)), INVALID);
      }
      const hashes = passwordVerifications.count;
      assert.deepEqual(errorOf(await login(dave.email, PASSWORD, from)), LOCKED);
      assert.equal(passwordVerifications.count, hashes);
      const other = await login(dave.email, PASSWORD, { localAddress: '127.0.0.11' });
      assert.equal(other.status, 200);
      assert.equal(other.body.mfaRequired, false);
    });

    test('[ACC-4] per-client limit: a device cookie failing on many accounts is locked out', async () => {
      const erin = await createUser();
      const first = await login('client0@example.com', 'nope', { localAddress: '127.0.0.10' });
      const device = cookieValue(first, '__Host-castellan_device');
      assert.match(device!, /^[A-Za-z0-9_-]{43}$/, 'a client without a device cookie gets one');
      const headers = { ...APP, cookie: `__Host-castellan_device=${device}` };
      for (let i = 1; i < 10; i++) {
        const res = await login(`client${i}@example.com`, 'nope', { localAddress: '127.0.0.10', headers });
        assert.deepEqual(errorOf(res), INVALID);
      }
      assert.deepEqual(errorOf(await login(erin.email, PASSWORD, { localAddress: '127.0.0.12', headers })), LOCKED);
      // The same account from another client signs in.
      assert.equal((await login(erin.email, PASSWORD, { localAddress: '127.0.0.12' })).status, 200);
    });

    test('[SESS-1] 256-bit tokens stored only as hashes; reauthentication rotates the token', async () => {
      const frank = await createUser();
      const res = await login(frank.email, PASSWORD);
      assert.equal(res.status, 200);
      const token = res.body.token as string;
      assert.match(token, /^cas_ses_[A-Za-z0-9_-]{43}$/, '32 random bytes (256 bits), base64url');
      assert.equal(res.body.refreshToken, undefined, 'no refresh token without keepSignedIn');
      const rows = await tp.query<Record<string, unknown>>('select * from sessions where principal_id = $1', [
        frank.id,
      ]);
      assert.equal(rows.length, 1);
      assert.equal(rows[0]!.id, res.body.sessionId);
      assert.deepEqual(
        Buffer.from(rows[0]!.token_hash as Uint8Array),
        createHash('sha256').update(token, 'utf8').digest(),
      );
      const all = await tp.query<Record<string, unknown>>('select * from sessions');
      const dump = dumpRows(all);
      assert.ok(!dump.includes(token) && !dump.includes(token.slice(8)), 'the token is nowhere in the sessions table');

      assert.equal((await me(token)).status, 200);
      const step = await request(tp.platform, 'POST', '/v1/auth/reauthenticate', {
        token,
        headers: APP,
        body: { password: PASSWORD },
      });
      assert.equal(step.status, 200);
      issued.push(step.body.token);
      assert.notEqual(step.body.token, token);
      assert.notEqual(step.body.sessionId, res.body.sessionId);
      const old = await me(token);
      assert.equal(old.status, 401);
      assert.deepEqual(errorOf(old), INVALID);
      assert.equal((await me(step.body.token)).status, 200);

      const wrong = await request(tp.platform, 'POST', '/v1/auth/reauthenticate', {
        token: step.body.token,
        headers: APP,
        body: { password: 'not it at all' },
      });
      assert.deepEqual(errorOf(wrong), INVALID);
      assert.equal((await me(step.body.token)).status, 200, 'a failed step-up does not rotate or end the session');
    });

    test('[SESS-2] with bindSessionToIp a token presented from another address is refused', async () => {
      const gina = await createUser();
      const res = await login(gina.email, PASSWORD);
      const token = res.body.token as string;
      const refused = await me(token, '127.0.0.2');
      assert.equal(refused.status, 401);
      assert.deepEqual(errorOf(refused), INVALID);
      assert.equal((await me(token, '127.0.0.1')).status, 200, 'the session itself is not ended');
      const [row] = await tp.query<{ ip_hash: Uint8Array }>('select ip_hash from sessions where id = $1', [
        res.body.sessionId,
      ]);
      assert.equal(Buffer.from(row!.ip_hash).length, 32, 'a keyed hash, not the address');
    });

    test('[SESS-3] logout makes the token useless; logout-all ends every session', async () => {
      const hana = await createUser();
      const a = (await login(hana.email, PASSWORD)).body;
      const b = (await login(hana.email, PASSWORD)).body;
      const c = (await login(hana.email, PASSWORD)).body;
      const out = await request(tp.platform, 'POST', '/v1/auth/logout', { token: a.token });
      assert.equal(out.status, 204);
      assert.deepEqual(errorOf(await me(a.token)), INVALID);
      const [row] = await tp.query<{ revoked_at: unknown }>('select revoked_at from sessions where id = $1', [
        a.sessionId,
      ]);
      assert.notEqual(row!.revoked_at, null, 'ended on the server, not just forgotten by the client');
      assert.equal((await me(b.token)).status, 200, 'logout ends only this session');

      const all = await request(tp.platform, 'POST', '/v1/auth/logout-all', { token: b.token });
      assert.equal(all.status, 200);
      assert.equal(all.body.sessionsEnded, 2);
      assert.deepEqual(errorOf(await me(b.token)), INVALID);
      assert.deepEqual(errorOf(await me(c.token)), INVALID);
      assert.ok((await sessionRows(hana.id)).every((r) => r.revoked_at !== null));
    });

    test('[SESS-4] idle and absolute timeouts end sessions; purge deletes expired rows', async () => {
      const ivan = await createUser();
      const idle = (await login(ivan.email, PASSWORD)).body;
      const absolute = (await login(ivan.email, PASSWORD)).body;
      const live = (await login(ivan.email, PASSWORD)).body;
      const db = tp.platform.store.db;
      const idleMs = tp.platform.accountsContext.config.sessionIdleMinutes * 60_000;
      await db
        .updateTable('sessions')
        .set({ last_seen_at: Date.now() - idleMs - 1000 })
        .where('id', '=', idle.sessionId)
        .execute();
      await db
        .updateTable('sessions')
        .set({ absolute_expires_at: Date.now() - 1000 })
        .where('id', '=', absolute.sessionId)
        .execute();
      assert.deepEqual(errorOf(await me(idle.token)), INVALID);
      assert.deepEqual(errorOf(await me(absolute.token)), INVALID);
      assert.equal((await me(live.token)).status, 200);

      await tp.platform.accountsContext.sessions.purgeExpired();
      const left = (await sessionRows(ivan.id)).map((r) => r.id);
      assert.deepEqual(left, [live.sessionId], 'expired rows are deleted, the live one stays');
    });

    test('[SESS-4] keep me signed in: refresh rotates both tokens; a reused refresh token revokes the family', async () => {
      const june = await createUser();
      const first = (await login(june.email, PASSWORD, { keepSignedIn: true })).body;
      assert.match(first.refreshToken, /^cas_rft_[A-Za-z0-9_-]{43}$/);
      const refresh = async (refreshToken: string) => {
        const res = await request(tp.platform, 'POST', '/v1/auth/refresh', { headers: APP, body: { refreshToken } });
        for (const t of [res.body?.token, res.body?.refreshToken]) if (t) issued.push(t);
        return res;
      };
      const second = await refresh(first.refreshToken);
      assert.equal(second.status, 200);
      assert.notEqual(second.body.token, first.token);
      assert.notEqual(second.body.refreshToken, first.refreshToken);
      assert.deepEqual(errorOf(await me(first.token)), INVALID, 'the previous session token stops working');
      const third = await refresh(second.body.refreshToken);
      assert.equal((await me(third.body.token)).status, 200);

      // The first refresh token comes back: theft. The newest session of the family ends too.
      const reuse = await refresh(first.refreshToken);
      assert.equal(reuse.status, 401);
      assert.deepEqual(errorOf(reuse), INVALID);
      assert.deepEqual(errorOf(await me(third.body.token)), INVALID);
      assert.deepEqual(errorOf(await refresh(third.body.refreshToken)), INVALID, 'the unused refresh token is void');
      await tp.platform.audit.flush();
      const alerts = await tp.platform.audit.query({ type: 'session.refresh-reuse', target: june.id, limit: 5 });
      // Both presentations of a voided token are reported: the reused one and the revoked newest one.
      assert.deepEqual(
        alerts.map((a) => a.result),
        ['denied', 'denied'],
      );
      const revoked = await tp.platform.audit.query({ type: 'session.family-revoked', target: june.id, limit: 5 });
      assert.equal(revoked.length, 2);
      assert.equal(revoked[0]!.details.reason, 'refresh-token-reuse');
      const without = await refresh('cas_rft_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA');
      assert.deepEqual(errorOf(without), INVALID);
    });

    test('[SESS-4] step-up rotation retires the old refresh token of a persistent session', async () => {
      const kim = await createUser();
      const s = (await login(kim.email, PASSWORD, { keepSignedIn: true })).body;
      const step = await request(tp.platform, 'POST', '/v1/auth/reauthenticate', {
        token: s.token,
        headers: APP,
        body: { password: PASSWORD },
      });
      issued.push(step.body.token, step.body.refreshToken);
      assert.match(step.body.refreshToken, /^cas_rft_/);
      const stale = await request(tp.platform, 'POST', '/v1/auth/refresh', {
        headers: APP,
        body: { refreshToken: s.refreshToken },
      });
      assert.deepEqual(errorOf(stale), INVALID);
    });

    test('[SESS-1] browsers get __Host- cookies: HttpOnly, Secure, SameSite=Strict, Path=/, no Domain', async () => {
      const liam = await createUser();
      const res = await login(liam.email, PASSWORD, { headers: {}, keepSignedIn: true });
      assert.equal(res.status, 200);
      assert.equal(res.body.token, undefined, 'no token in the body of a browser response');
      assert.equal(res.body.refreshToken, undefined);
      for (const name of ['__Host-castellan_session', '__Host-castellan_refresh', '__Host-castellan_device']) {
        const line = setCookies(res).find((c) => c.startsWith(`${name}=`));
        assert.ok(line, `${name} is set`);
        const attributes = line
          .split(';')
          .slice(1)
          .map((a) => a.trim().toLowerCase());
        assert.ok(attributes.includes('httponly'), `${name} HttpOnly`);
        assert.ok(attributes.includes('secure'), `${name} Secure`);
        assert.ok(attributes.includes('samesite=strict'), `${name} SameSite=Strict`);
        assert.ok(attributes.includes('path=/'), `${name} Path=/`);
        assert.ok(!attributes.some((a) => a.startsWith('domain')), `${name} has no Domain`);
      }
      const session = cookieValue(res, '__Host-castellan_session')!;
      const viaCookie = await request(tp.platform, 'GET', '/v1/me', {
        headers: { cookie: `__Host-castellan_session=${session}` },
      });
      assert.equal(viaCookie.status, 200);
      assert.equal(viaCookie.body.id, liam.id);
      const refreshed = await request(tp.platform, 'POST', '/v1/auth/refresh', {
        headers: { cookie: `__Host-castellan_refresh=${cookieValue(res, '__Host-castellan_refresh')}` },
      });
      assert.equal(refreshed.status, 200);
      const next = cookieValue(refreshed, '__Host-castellan_session')!;
      issued.push(next, cookieValue(refreshed, '__Host-castellan_refresh')!);
      assert.notEqual(next, session);
      const out = await request(tp.platform, 'POST', '/v1/auth/logout', {
        headers: { cookie: `__Host-castellan_session=${next}` },
      });
      assert.equal(out.status, 204);
      assert.ok(
        setCookies(out).some((c) => /^__Host-castellan_session=;/.test(c)),
        'logout clears the session cookie',
      );
    });

    test('[ACC-6] a sign-in from a new device or network sends an alert; a known one does not; no IP is stored', async () => {
      const mia = await createUser();
      const first = await login(mia.email, PASSWORD);
      assert.equal(first.status, 200);
      assert.equal(outboxAlerts(mia.email).length, 1, 'first sign-in from this device and network');
      const device = cookieValue(first, '__Host-castellan_device')!;
      const headers = { ...APP, cookie: `__Host-castellan_device=${device}` };
      assert.equal((await login(mia.email, PASSWORD, { headers })).status, 200);
      assert.equal(outboxAlerts(mia.email).length, 1, 'the same device and network: no alert');
      // 127.0.0.2 is in the same /24: the same network.
      assert.equal((await login(mia.email, PASSWORD, { headers, localAddress: '127.0.0.2' })).status, 200);
      assert.equal(outboxAlerts(mia.email).length, 1);
      assert.equal((await login(mia.email, PASSWORD, { headers, localAddress: '127.0.1.7' })).status, 200);
      const alerts = outboxAlerts(mia.email) as { text: string; channel: string }[];
      assert.equal(alerts.length, 2, 'a new network');
      assert.equal(alerts[1]!.channel, 'email');
      assert.match(alerts[1]!.text, /a new network/);
      assert.ok(!alerts.some((a) => a.text.includes('127.0.')), 'the alert names no address');

      const rows = await tp.query<Record<string, unknown>>('select * from known_sign_ins where principal_id = $1', [
        mia.id,
      ]);
      assert.equal(rows.length, 2);
      const dump = dumpRows(rows);
      for (const needle of ['127.0.0', '127.0.1', device]) assert.ok(!dump.includes(needle), `no ${needle} stored`);
      for (const r of rows) assert.equal(Buffer.from(r.network_hash as Uint8Array).length, 32);
    });

    test('[ACC-6] with a second factor, the password alone yields only an MFA token, not a session', async () => {
      const noah = await createUser();
      const enrolment = await tp.platform.accountsContext.totp.enrol(noah.id, noah.email);
      assert.ok(await tp.platform.accountsContext.totp.verify(noah.id, totpCode(enrolment.secret), { confirm: true }));
      const res = await login(noah.email, PASSWORD);
      assert.equal(res.status, 200);
      assert.equal(res.body.mfaRequired, true);
      assert.deepEqual(res.body.methods, ['totp']);
      assert.equal(res.body.token, undefined);
      assert.match(res.body.mfaToken, /^cas_ses_/);
      assert.deepEqual(errorOf(await me(res.body.mfaToken)), INVALID, 'the MFA token is not a session');
      assert.deepEqual(
        (await sessionRows(noah.id)).map((r) => r.level),
        ['mfa-pending'],
      );
      assert.equal(outboxAlerts(noah.email).length, 0, 'no alert before the sign-in is complete');
    });

    test('[ACC-6] password change needs a recent authentication; ends other sessions; rotates this one', async () => {
      const olga = await createUser();
      const mine = (await login(olga.email, PASSWORD)).body;
      const other = (await login(olga.email, PASSWORD)).body;
      const db = tp.platform.store.db;
      await db
        .updateTable('sessions')
        .set({ authenticated_at: Date.now() - 10 * 60_000 })
        .where('id', '=', mine.sessionId)
        .execute();
      const change = (token: string, currentPassword: string, newPassword: string) =>
        request(tp.platform, 'POST', '/v1/me/password', {
          token,
          headers: APP,
          body: { currentPassword, newPassword },
        });
      const stale = await change(mine.token, PASSWORD, NEW_PASSWORD);
      assert.equal(stale.status, 401);
      assert.equal(stale.body.error.code, 'ERR_AUTH_STEP_UP_REQUIRED');
      const [unchanged] = await tp.query<{ password_hash: string }>('select password_hash from users where id = $1', [
        olga.id,
      ]);
      assert.equal(unchanged!.password_hash, passwordHash, 'the password did not change');

      const step = await request(tp.platform, 'POST', '/v1/auth/reauthenticate', {
        token: mine.token,
        headers: APP,
        body: { password: PASSWORD },
      });
      issued.push(step.body.token);
      const weak = await change(step.body.token, PASSWORD, 'password1');
      assert.equal(weak.body.error.code, 'ERR_PASSWORD_WEAK');
      const wrongCurrent = await change(step.body.token, 'not the current one', NEW_PASSWORD);
      assert.deepEqual(errorOf(wrongCurrent), INVALID);
      const done = await change(step.body.token, PASSWORD, NEW_PASSWORD);
      assert.equal(done.status, 200);
      issued.push(done.body.token);
      assert.deepEqual(errorOf(await me(other.token)), INVALID, 'other sessions ended');
      assert.deepEqual(errorOf(await me(step.body.token)), INVALID, 'this session was rotated');
      assert.equal((await me(done.body.token)).status, 200);
      assert.deepEqual(errorOf(await login(olga.email, PASSWORD, { localAddress: '127.0.0.13' })), INVALID);
      assert.equal((await login(olga.email, NEW_PASSWORD, { localAddress: '127.0.0.13' })).status, 200);
    });

    test('[ACC-6] account deletion needs step-up, ends sessions, removes personal data and shreds the key', async () => {
      const pia = await createUser();
      const s = (await login(pia.email, PASSWORD)).body;
      await tp.platform.store.db
        .updateTable('sessions')
        .set({ authenticated_at: Date.now() - 10 * 60_000 })
        .where('id', '=', s.sessionId)
        .execute();
      const refused = await request(tp.platform, 'DELETE', '/v1/me', { token: s.token });
      assert.equal(refused.body.error.code, 'ERR_AUTH_STEP_UP_REQUIRED');
      const [still] = await tp.query<{ status: string }>('select status from users where id = $1', [pia.id]);
      assert.equal(still!.status, 'active', 'nothing deleted without a recent authentication');

      const step = await request(tp.platform, 'POST', '/v1/auth/reauthenticate', {
        token: s.token,
        headers: APP,
        body: { password: PASSWORD },
      });
      issued.push(step.body.token);
      const gone = await request(tp.platform, 'DELETE', '/v1/me', { token: step.body.token });
      assert.equal(gone.status, 204);
      const [row] = await tp.query<Record<string, unknown>>('select * from users where id = $1', [pia.id]);
      assert.equal(row!.status, 'disabled');
      for (const column of ['email_index', 'email_ciphertext', 'password_hash']) assert.equal(row![column], null);
      assert.deepEqual(errorOf(await me(step.body.token)), INVALID);
      assert.deepEqual(errorOf(await login(pia.email, PASSWORD, { localAddress: '127.0.0.14' })), INVALID);
      await tp.platform.audit.flush();
      const [entry] = await tp.platform.audit.query({
        type: 'user.delete',
        target: pia.id,
        result: 'success',
        limit: 1,
      });
      assert.ok(Number(entry!.details.keysDestroyed) >= 1, "the person's key was destroyed");
    });

    test('[ORG-1] the last owner of an enterprise organisation cannot delete their account until it has another owner', async () => {
      const rae = await createUser();
      const db = tp.platform.store.db;
      const org = await tp.platform.accounts.createVendor('Rae Works', 'enterprise');
      await db
        .insertInto('organisation_members')
        .values({ vendor_id: org.id, user_id: rae.id, role: 'owner', created_at: Date.now() })
        .execute();
      const s = (await login(rae.email, PASSWORD)).body;
      const refused = await request(tp.platform, 'DELETE', '/v1/me', { token: s.token });
      assert.equal(refused.status, 409);
      assert.equal(refused.body.error.code, 'ERR_ORG_LAST_OWNER');
      assert.equal(
        refused.body.error.message,
        'You are the last owner of an organisation: make someone else its owner before deleting your account',
      );
      const [still] = await tp.query<{ status: string }>('select status from users where id = $1', [rae.id]);
      assert.equal(still!.status, 'active', 'nothing was deleted');
      assert.equal((await me(s.token)).status, 200, 'the session still works');

      const sam = await createUser();
      await db
        .insertInto('organisation_members')
        .values({ vendor_id: org.id, user_id: sam.id, role: 'owner', created_at: Date.now() })
        .execute();
      const gone = await request(tp.platform, 'DELETE', '/v1/me', { token: s.token });
      assert.equal(gone.status, 204);
      const members = await tp.query<{ user_id: string }>(
        'select user_id from organisation_members where vendor_id = $1',
        [org.id],
      );
      assert.deepEqual(
        members.map((m) => m.user_id),
        [sam.id],
        "the deleted person's membership is gone; the organisation keeps its owner",
      );
    });

    test('[SESS-3] /v1/me masks the contact; /v1/me/sessions lists sessions without tokens; staff are refused', async () => {
      const quinn = await createUser();
      const a = (await login(quinn.email, PASSWORD)).body;
      const b = (await login(quinn.email, PASSWORD)).body;
      const who = await me(a.token);
      assert.deepEqual(who.body, {
        id: quinn.id,
        kind: 'consumer',
        status: 'active',
        contact: `p***@example.com`,
        mfa: { totp: false, webauthn: false },
      });
      const list = await request(tp.platform, 'GET', '/v1/me/sessions', { token: a.token });
      assert.equal(list.status, 200);
      assert.deepEqual(
        list.body.items.map((s: { id: string; current: boolean }) => [s.id, s.current]),
        [
          [a.sessionId, true],
          [b.sessionId, false],
        ],
      );
      assert.ok(!list.text.includes('cas_ses_') && !list.text.includes(a.token.slice(8)));
      const staff = await setupStaff(tp.platform);
      const forbidden = await me(staff);
      assert.equal(forbidden.status, 403);
      assert.equal(forbidden.body.error.code, 'ERR_AUTH_FORBIDDEN');
    });

    test('[SESS-5] [ACC-8] no session token, refresh token or password in any log line or URL', async () => {
      assert.ok(issued.length > 20, `tokens were issued during this run (${issued.length})`);
      await tp.platform.audit.flush();
      const logs = tp.logs.text();
      assert.ok(logs.length > 0);
      for (const token of issued) {
        assert.ok(!logs.includes(token), 'a token leaked into the logs');
        assert.ok(!logs.includes(token.slice(8)), 'a token body leaked into the logs');
      }
      for (const password of [PASSWORD, NEW_PASSWORD, 'wrong guess 0', 'not the password']) {
        assert.ok(!logs.includes(password), 'a password leaked into the logs');
      }
      const urls = tp.logs.lines.flatMap((l) => {
        try {
          const url = (JSON.parse(l) as { req?: { url?: string } }).req?.url;
          return url ? [url] : [];
        } catch {
          return [];
        }
      });
      assert.ok(urls.length > 0, 'request URLs are logged');
      assert.ok(
        urls.every((u) => !/cas_(ses|rft)_|[?&]password/i.test(u)),
        'no token or password in any URL',
      );
      const audit = await tp.platform.audit.query({ limit: 10_000 });
      const auditText = JSON.stringify(audit);
      for (const token of issued) assert.ok(!auditText.includes(token.slice(8)), 'a token in the audit log');
    });
  });
}
