// BIND-2 as a property, on both databases, through the real HTTP API: many people, devices bound through
// the SDK, random sequences of shares (some expiring mid-run), revocations and requests (read, control,
// share management) by people and by vendor operators. Every answer is compared with an independent
// model of who holds which role when: nobody ever reads or controls a device without a current role
// that allows it, and everybody who has one is let in.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import fc from 'fast-check';
import { dialectCases } from '../helpers/dialects.ts';
import { bindDevice, type Consumer, newConsumer } from '../helpers/device-flows.ts';
import {
  issueAccessKey,
  type OperatorKey,
  provisionTenant,
  request,
  startTestPlatform,
  type Tenant,
  type TestPlatform,
} from '../helpers/test-platform.ts';

type Role = 'owner' | 'admin' | 'member' | 'guest';
type ShareRole = Exclude<Role, 'owner'>;
type Act = 'view' | 'telemetry' | 'control' | 'shares';

// The model's own matrix (written from the requirement, not imported from the code under test).
const MAY: Record<Role, readonly Act[]> = {
  owner: ['view', 'telemetry', 'control', 'shares'],
  admin: ['view', 'telemetry', 'control', 'shares'],
  member: ['view', 'telemetry', 'control'],
  guest: ['view', 'telemetry'],
};
const GRANTS: Record<Role, readonly ShareRole[]> = {
  owner: ['admin', 'member', 'guest'],
  admin: ['member', 'guest'],
  member: [],
  guest: [],
};
/** Requests this close to a share's expiry are not judged (the clocks of model and server differ a little). */
const MARGIN_MS = 150;

interface ModelShare {
  id: string;
  role: ShareRole;
  expiresAt: number | null;
}

type Op =
  | { kind: 'request'; user: number; device: number; act: Act }
  /** A request by the holder of the `pick`-th share in the model (current or expired), if any. */
  | { kind: 'request-shared'; pick: number; act: Act }
  | { kind: 'operator'; key: number; device: number; act: Act }
  | {
      kind: 'share';
      actor: number;
      device: number;
      invitee: number;
      role: ShareRole;
      expiry: 'none' | 'soon' | 'later';
    }
  | { kind: 'revoke'; actor: number; device: number; invitee: number }
  | { kind: 'wait' };

const USERS = 6;
const DEVICES = 4;
/** Device i is bound to user OWNERS[i]; users 3..5 own nothing. */
const OWNERS = [0, 0, 1, 2];

for (const dialect of await dialectCases()) {
  describe(`device access property on ${dialect.name}`, { skip: dialect.skip }, () => {
    let tp: TestPlatform;
    let tenant: Tenant;
    let users: Consumer[];
    let devices: Tenant['devices'];
    /** [read-write operator of the vendor, read-only operator, another vendor's operator]. */
    let operators: OperatorKey[];
    /** model: device index → invitee index → share */
    let model: Map<number, Map<number, ModelShare>>;
    /** Roles under which requests were judged ('expired': a share whose time had passed). */
    const judged = new Set<string>();

    before(async () => {
      tp = await startTestPlatform(dialect.name, { accounts: { stepUpMinutes: 60 } });
      tenant = await provisionTenant(tp, DEVICES);
      devices = tenant.devices;
      users = [];
      for (let i = 0; i < USERS; i++) users.push(await newConsumer(tp, `p${i}`));
      for (let d = 0; d < DEVICES; d++) await bindDevice(tp, devices[d]!, users[OWNERS[d]!]);
      const other = await provisionTenant(tp, 0, tenant.adminToken);
      operators = [
        tenant.vendorToken,
        await issueAccessKey(tp.platform, tenant.adminToken, tenant.vendorId, { scopes: ['devices:read'] }),
        other.vendorToken,
      ];
    });
    after(() => tp?.close());

    /** The role the model says `user` holds on `device` now; undefined when too close to an expiry to judge. */
    function roleOf(user: number, device: number, now = Date.now()): Role | null | undefined {
      if (OWNERS[device] === user) return 'owner';
      const share = model.get(device)?.get(user);
      if (!share) return null;
      if (share.expiresAt === null) return share.role;
      if (Math.abs(share.expiresAt - now) < MARGIN_MS) return undefined;
      return share.expiresAt > now ? share.role : null;
    }

    function call(token: string | OperatorKey, device: number, act: Act) {
      const id = devices[device]!.id;
      switch (act) {
        case 'view':
          return request(tp.platform, 'GET', `/v1/devices/${id}`, { token });
        case 'telemetry':
          return request(tp.platform, 'GET', `/v1/devices/${id}/telemetry`, { token });
        case 'control':
          return request(tp.platform, 'PUT', `/v1/devices/${id}/shadow/desired`, {
            token,
            body: { state: { power: 'on' } },
          });
        case 'shares':
          return request(tp.platform, 'GET', `/v1/devices/${id}/shares`, { token });
      }
    }

    function assertRefused(res: { status: number; body: { error?: { code: string } } }, what: string) {
      assert.equal(res.status, 404, `${what} must be refused: ${JSON.stringify(res.body)}`);
      assert.equal(res.body.error?.code, 'ERR_DEVICE_NOT_FOUND', what);
    }

    async function run(op: Op): Promise<void> {
      switch (op.kind) {
        case 'request-shared': {
          const pairs = [...model].flatMap(([device, shares]) => [...shares.keys()].map((user) => ({ user, device })));
          if (pairs.length === 0) return;
          const { user, device } = pairs[op.pick % pairs.length]!;
          return run({ kind: 'request', user, device, act: op.act });
        }
        case 'wait': {
          // Until the next share expires (so expiries happen mid-run), or a moment when none is due.
          const now = Date.now();
          const due = [...model.values()]
            .flatMap((shares) => [...shares.values()].map((share) => share.expiresAt ?? Infinity))
            .filter((at) => at > now && at - now < 60_000);
          await sleep(due.length > 0 ? Math.min(...due) - now + MARGIN_MS + 10 : 50);
          return;
        }
        case 'request': {
          const before = roleOf(op.user, op.device);
          const res = await call(users[op.user]!.userToken, op.device, op.act);
          const afterRole = roleOf(op.user, op.device);
          if (before === undefined || afterRole === undefined || before !== afterRole) return;
          const what = `user ${op.user} ${op.act} device ${op.device} as ${before}`;
          judged.add(before === null && model.get(op.device)?.has(op.user) ? 'expired' : String(before));
          if (before !== null && MAY[before].includes(op.act)) {
            assert.ok(res.status < 400, `${what} must be allowed: ${res.status} ${JSON.stringify(res.body)}`);
          } else {
            assertRefused(res, what);
          }
          return;
        }
        case 'operator': {
          const res = await call(operators[op.key]!, op.device, op.act);
          const what = `operator ${op.key} ${op.act} device ${op.device}`;
          // Own vendor: reads with devices:read, control with devices:write; shares never. Others: nothing.
          // (The read-only key has devices:read only, so no telemetry:read either.)
          const allowed = op.key === 0 ? op.act !== 'shares' : op.key === 1 ? op.act === 'view' : false;
          if (allowed)
            assert.ok(res.status < 400, `${what} must be allowed: ${res.status} ${JSON.stringify(res.body)}`);
          else assertRefused(res, what);
          return;
        }
        case 'share': {
          const now = Date.now();
          const actorRole = roleOf(op.actor, op.device, now);
          const existing = model.get(op.device)?.get(op.invitee);
          const existingRole = existing ? roleOf(op.invitee, op.device, now) : null;
          if (actorRole === undefined || existingRole === undefined) return;
          const expiresAt = op.expiry === 'none' ? undefined : now + (op.expiry === 'soon' ? 300 : 3_600_000);
          const res = await request(tp.platform, 'POST', `/v1/devices/${devices[op.device]!.id}/shares`, {
            token: users[op.actor]!.userToken,
            body: { userId: users[op.invitee]!.userId, role: op.role, ...(expiresAt ? { expiresAt } : {}) },
          });
          const what = `user ${op.actor} (${actorRole}) shares device ${op.device} with ${op.invitee} as ${op.role}`;
          if (actorRole === null || !MAY[actorRole].includes('shares')) return assertRefused(res, what);
          if (!GRANTS[actorRole].includes(op.role)) {
            assert.equal(res.body.error?.code, 'ERR_SHARE_ROLE_FORBIDDEN', what);
            return;
          }
          if (op.invitee === op.actor || op.invitee === OWNERS[op.device]) {
            assert.equal(res.body.error?.code, 'ERR_SHARE_INVITEE_NOT_FOUND', what);
            return;
          }
          if (existingRole !== null && existingRole !== 'owner' && !GRANTS[actorRole].includes(existingRole)) {
            assert.equal(res.body.error?.code, 'ERR_SHARE_ROLE_FORBIDDEN', `${what} over a ${existingRole} share`);
            return;
          }
          assert.equal(res.status, 201, `${what}: ${JSON.stringify(res.body)}`);
          let shares = model.get(op.device);
          if (!shares) model.set(op.device, (shares = new Map()));
          shares.set(op.invitee, { id: res.body.id as string, role: op.role, expiresAt: expiresAt ?? null });
          return;
        }
        case 'revoke': {
          const share = model.get(op.device)?.get(op.invitee);
          if (!share) return;
          const now = Date.now();
          const actorRole = roleOf(op.actor, op.device, now);
          const shareRole = roleOf(op.invitee, op.device, now);
          if (actorRole === undefined || shareRole === undefined) return;
          const res = await request(tp.platform, 'DELETE', `/v1/devices/${devices[op.device]!.id}/shares/${share.id}`, {
            token: users[op.actor]!.userToken,
          });
          const what = `user ${op.actor} (${actorRole}) revokes ${op.invitee}'s share of device ${op.device}`;
          const own = op.actor === op.invitee && shareRole !== null;
          if (!own && (actorRole === null || !MAY[actorRole].includes('shares'))) return assertRefused(res, what);
          if (shareRole === null || shareRole === 'owner') {
            assert.equal(res.body.error?.code, 'ERR_SHARE_NOT_FOUND', `${what} (expired)`);
            return;
          }
          if (!own && !GRANTS[actorRole!].includes(shareRole)) {
            assert.equal(res.body.error?.code, 'ERR_SHARE_ROLE_FORBIDDEN', what);
            return;
          }
          assert.equal(res.status, 204, `${what}: ${JSON.stringify(res.body)}`);
          model.get(op.device)!.delete(op.invitee);
          return;
        }
      }
    }

    /** Back to no shares at all: current ones revoked through the API, expired ones purged. */
    async function reset(): Promise<void> {
      for (const [device, shares] of model ?? new Map<number, Map<number, ModelShare>>()) {
        for (const share of shares.values()) {
          await request(tp.platform, 'DELETE', `/v1/devices/${devices[device]!.id}/shares/${share.id}`, {
            token: users[OWNERS[device]!]!.userToken,
          });
        }
      }
      // Shares that had expired were not revocable (they are gone already): the purge deletes their rows.
      await tp.platform.bindings.purgeExpired();
      const left = await tp.query('select id from device_shares');
      assert.equal(left.length, 0, 'reset leaves no share');
      model = new Map();
    }

    const user = fc.integer({ min: 0, max: USERS - 1 });
    const device = fc.integer({ min: 0, max: DEVICES - 1 });
    const act = fc.constantFrom<Act>('view', 'telemetry', 'control', 'shares');
    const op: fc.Arbitrary<Op> = fc.oneof(
      { weight: 4, arbitrary: fc.record({ kind: fc.constant('request' as const), user, device, act }) },
      {
        weight: 4,
        arbitrary: fc.record({ kind: fc.constant('request-shared' as const), pick: fc.nat({ max: 100 }), act }),
      },
      {
        weight: 2,
        arbitrary: fc.record({
          kind: fc.constant('operator' as const),
          key: fc.integer({ min: 0, max: 2 }),
          device,
          act,
        }),
      },
      {
        weight: 4,
        arbitrary: fc.record({
          kind: fc.constant('share' as const),
          // Owners act more often, so that admins exist to act in turn.
          actor: fc.oneof(fc.constantFrom(...OWNERS), user),
          device,
          invitee: user,
          role: fc.constantFrom<ShareRole>('admin', 'member', 'guest'),
          expiry: fc.constantFrom<'none' | 'soon' | 'later'>('none', 'none', 'soon', 'later'),
        }),
      },
      { weight: 2, arbitrary: fc.record({ kind: fc.constant('revoke' as const), actor: user, device, invitee: user }) },
      { weight: 1, arbitrary: fc.constant({ kind: 'wait' as const }) },
    );

    test('[BIND-2] no one reads or controls a device without a current role allowing it (random shares, expiries, revocations)', async () => {
      model = new Map();
      let requests = 0;
      await fc.assert(
        fc.asyncProperty(fc.array(op, { minLength: 10, maxLength: 40 }), async (ops) => {
          await reset();
          for (const o of ops) {
            await run(o);
            if (o.kind !== 'share' && o.kind !== 'revoke' && o.kind !== 'wait') requests++;
          }
        }),
        { numRuns: 30, endOnFailure: true },
      );
      assert.ok(requests > 200, `enough requests judged (${requests})`);
      // Expiry depends on timing: on a loaded machine the random runs may never catch a share just
      // after it expired. Then one directed sequence does (the same run() and model as above).
      for (let attempt = 0; attempt < 5 && !judged.has('expired'); attempt++) {
        await reset();
        await run({ kind: 'share', actor: OWNERS[0]!, device: 0, invitee: 5, role: 'member', expiry: 'soon' });
        await run({ kind: 'wait' });
        await run({ kind: 'request', user: 5, device: 0, act: 'view' });
      }
      // The runs exercised every role, no role, and expired shares.
      for (const role of ['owner', 'admin', 'member', 'guest', 'null', 'expired']) {
        assert.ok(judged.has(role), `requests were judged as ${role}: ${[...judged].join(', ')}`);
      }
    });
  });
}
