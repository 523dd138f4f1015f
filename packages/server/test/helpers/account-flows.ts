// Account flows through the real API for tests: solving the registration proof-of-work, reading
// codes from the development outbox, registering and activating a person, signing in.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { type Challenge, solveChallenge } from 'altcha-lib';
import { deriveKey } from 'altcha-lib/algorithms/sha';
import { OUTBOX_DIR } from '../../src/accounts/index.ts';
import { request, type TestPlatform } from './test-platform.ts';

export interface OutboxMessage {
  channel: string;
  to: string;
  subject: string;
  text: string;
  purpose: string;
}

export function outbox(tp: TestPlatform, to: string, purpose?: string): OutboxMessage[] {
  let files: string[];
  try {
    files = readdirSync(join(tp.dataDir, OUTBOX_DIR)).sort();
  } catch {
    return [];
  }
  return files
    .map((f) => JSON.parse(readFileSync(join(tp.dataDir, OUTBOX_DIR, f), 'utf8')) as OutboxMessage)
    .filter((m) => m.to === to && (purpose === undefined || m.purpose === purpose));
}

/** The code of the latest message of a purpose (delivery is not awaited by the server: poll). */
export async function latestCode(tp: TestPlatform, to: string, purpose: string, count = 1): Promise<string> {
  for (let i = 0; i < 100; i++) {
    const messages = outbox(tp, to, purpose);
    if (messages.length >= count) {
      const match = /\b(\d{8})\b/.exec(messages.at(-1)!.text);
      assert.ok(match, 'the message carries an 8-digit code');
      return match[1]!;
    }
    await sleep(20);
  }
  assert.fail(`no ${purpose} message #${count} arrived`);
}

export async function solvedChallenge(tp: TestPlatform, localAddress?: string): Promise<string> {
  const res = await request<Challenge>(tp.platform, 'POST', '/v1/auth/challenge', { localAddress });
  assert.equal(res.status, 200, res.text);
  const solution = await solveChallenge({ challenge: res.body, deriveKey, timeout: 10_000 });
  assert.ok(solution, 'the challenge is solvable');
  return Buffer.from(JSON.stringify({ challenge: res.body, solution })).toString('base64');
}

export async function register(
  tp: TestPlatform,
  body: Record<string, unknown>,
  options: { localAddress?: string; altcha?: string } = {},
) {
  const altcha = options.altcha ?? (await solvedChallenge(tp, options.localAddress));
  return request(tp.platform, 'POST', '/v1/auth/register', {
    body: { ...body, altcha },
    localAddress: options.localAddress,
  });
}

/** Registers, reads the activation code from the outbox and activates; returns the user ID. */
export async function registerAndActivate(
  tp: TestPlatform,
  identifier: string,
  password: string,
  kind: 'consumer' | 'developer' = 'consumer',
): Promise<string> {
  const registered = await register(tp, { identifier, password, kind });
  assert.equal(registered.status, 202, registered.text);
  const code = await latestCode(tp, identifier, 'activation');
  const activated = await request(tp.platform, 'POST', '/v1/auth/activate', {
    body: { identifier, code, password },
  });
  assert.equal(activated.status, 200, activated.text);
  const rows = await tp.query<{ id: string }>("select id from users where status = 'active' order by created_at desc");
  return rows[0]!.id;
}

/** Signs in as an app and returns the session token. */
export async function signIn(tp: TestPlatform, identifier: string, password: string): Promise<string> {
  const res = await request(tp.platform, 'POST', '/v1/auth/login', {
    headers: { 'x-castellan-client': 'app' },
    body: { identifier, password },
  });
  assert.equal(res.status, 200, res.text);
  return res.body.token as string;
}
