// Personal data at rest (PRIV-1, ACC-1, the standard's 6.3.5 c): people register, activate, sign in,
// reset a password, are invited to an organisation; a staff member is set up. Then the e-mail
// addresses, phone numbers and names must appear in none of the SQLite files (data, WAL, key store)
// and in no pg_dump of the data and key-store schemas: not as UTF-8, not as hex (either case), not as
// base64 (at any alignment). They are stored only encrypted under per-person keys or as keyed blind
// indexes.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { latestCode, register, registerAndActivate, signIn } from '../helpers/account-flows.ts';
import { dialectCases, POSTGRES_URL } from '../helpers/dialects.ts';
import { request, setupStaff, startTestPlatform } from '../helpers/test-platform.ts';

const PASSWORD = 'periwinkle harbour sextant 58';

/** The encodings a careless store could leave a value in. */
function needles(value: string): { encoding: string; text: string }[] {
  const bytes = Buffer.from(value, 'utf8');
  const out = [
    { encoding: 'utf-8', text: value },
    { encoding: 'hex', text: bytes.toString('hex') },
    { encoding: 'HEX', text: bytes.toString('hex').toUpperCase() },
  ];
  // Base64 at each of the three byte alignments: keep only the characters that depend on the value
  // alone (drop the group that mixes in the prefix, and the last group that depends on what follows).
  for (const shift of [0, 1, 2]) {
    for (const url of [false, true]) {
      const encoded = Buffer.concat([Buffer.alloc(shift), bytes]).toString(url ? 'base64url' : 'base64');
      const inner = encoded.slice(shift === 0 ? 0 : 4, -4);
      if (inner.length >= 8) out.push({ encoding: `base64${url ? 'url' : ''}+${shift}`, text: inner });
    }
  }
  return out;
}

function findIn(haystack: Buffer, values: string[]): string[] {
  const found: string[] = [];
  const text = haystack.toString('latin1');
  for (const value of values) {
    for (const needle of needles(value)) {
      if (text.includes(needle.text)) found.push(`${value} as ${needle.encoding}`);
    }
  }
  return found;
}

for (const dialect of await dialectCases()) {
  describe(`personal data at rest on ${dialect.name}`, { skip: dialect.skip }, () => {
    test('[ACC-1] [ORG-1] e-mail addresses, phone numbers and names are in neither the database files nor a dump', async () => {
      const tp = await startTestPlatform(dialect.name, { accounts: { powDifficulty: 1000 } });
      try {
        const stamp = Date.now().toString(36);
        const alice = `alice.${stamp}@example.com`;
        const dev = `devon.${stamp}@example.org`;
        const invited = `invitee.${stamp}@example.net`;
        const phone = `+4479${String(Date.now()).slice(-8)}`;
        const staffName = `Zenobia Quartermaine ${stamp}`;

        await registerAndActivate(tp, alice, PASSWORD);
        await registerAndActivate(tp, phone, PASSWORD);
        await registerAndActivate(tp, dev, PASSWORD, 'developer');
        await signIn(tp, alice, PASSWORD);
        await signIn(tp, phone, PASSWORD);
        const devToken = await signIn(tp, dev, PASSWORD);
        // A wrong password and a forgotten one: failures and reset codes must not carry the identifier.
        await request(tp.platform, 'POST', '/v1/auth/login', {
          body: { identifier: alice, password: 'not it at all 1' },
        });
        await request(tp.platform, 'POST', '/v1/auth/password/forgot', { body: { identifier: alice } });
        await latestCode(tp, alice, 'password-reset');
        // A registration attempt for a taken address, and an invitation to an enterprise organisation.
        await register(tp, { identifier: alice, password: PASSWORD });
        const org = await request(tp.platform, 'POST', '/v1/orgs', { token: devToken, body: { name: 'Devon Works' } });
        assert.equal(org.status, 201, org.text);
        const invitation = await request(tp.platform, 'POST', `/v1/orgs/${org.body.id}/invitations`, {
          token: devToken,
          body: { email: invited, role: 'viewer' },
        });
        assert.equal(invitation.status, 201, invitation.text);
        // Staff: the name is personal data too.
        const staffToken = await setupStaff(tp.platform);
        const staff = await request(tp.platform, 'POST', '/v1/staff', {
          token: staffToken,
          body: { name: staffName, username: `zq${stamp}`, roles: ['support'] },
        });
        assert.equal(staff.status, 201, staff.text);
        await tp.platform.audit.flush();

        const values = [alice, dev, invited, phone, phone.slice(1), staffName];
        // The values did reach the platform: the outbox (development delivery) holds messages to them.
        assert.ok(readdirSync(join(tp.dataDir, 'outbox')).length >= 5);

        if (dialect.name === 'sqlite') {
          const scan = () => {
            const files = readdirSync(tp.dataDir).filter((f) => /\.db(-wal|-shm|-journal)?$/.test(f));
            assert.ok(files.includes('castellan.db') && files.includes('keystore.db'), files.join(','));
            return files.flatMap((f) => findIn(readFileSync(join(tp.dataDir, f)), values).map((hit) => `${f}: ${hit}`));
          };
          assert.deepEqual(scan(), [], 'while running (WAL included)');
          await tp.platform.close();
          assert.deepEqual(scan(), [], 'after close (WAL checkpointed)');
        } else {
          const dump = execFileSync(
            'pg_dump',
            ['--dbname', POSTGRES_URL, '--schema', tp.schema!, '--schema', `${tp.schema}_keys`, '--no-owner'],
            { maxBuffer: 256 * 1024 * 1024 },
          );
          assert.ok(dump.includes(Buffer.from('CREATE TABLE')), 'the dump has the tables');
          assert.ok(dump.includes(Buffer.from(`${tp.schema}.users`)), 'the dump has the users table');
          assert.deepEqual(findIn(dump, values), [], 'pg_dump of the data and key-store schemas');
        }
        // The test's own eyes: the scan does find a value that is stored in clear.
        assert.deepEqual(findIn(Buffer.from(`x${Buffer.from(alice).toString('base64')}y`), [alice]).length > 0, true);
      } finally {
        await tp.close();
      }
    });
  });
}
