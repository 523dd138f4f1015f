// Platform staff (OPS-2, the "bastion" requirement at application level): every staff account has a
// password and a mandatory TOTP factor; sign-in needs both. Roles are least-privilege
// (principal.ts STAFF_ROLES); only a superadmin manages staff. New staff get a one-time enrolment
// token (shown once to the superadmin, handed over out of band), set their own password and enrol
// TOTP with it. A role change or disabling ends the person's sessions and credentials at once.
// Every staff request is audited (platform.ts records `staff.request` for each one).
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { Kysely } from 'kysely';
import { Type } from 'typebox';
import { CastellanError } from '../errors/index.ts';
import {
  authenticatedErrors,
  bearerSecurity,
  DisplayName,
  principalOf,
  publicErrors,
  StrictObject,
} from '../http/index.ts';
import { hashToken, newId, newToken } from '../lib/random-ids.ts';
import type { Database } from '../store/index.ts';
import { assertCan } from './access-policy.ts';
import type { AccountsContext } from './accounts-context.ts';
import { type AccountsService, usernameIndex } from './accounts-service.ts';
import { hashPassword, verifyPassword } from './password-hasher.ts';
import { checkPasswordPolicy } from './password-policy.ts';
import { STAFF_ROLES, type StaffRole } from './principal.ts';
import { parseRoles } from './request-authenticator.ts';
import { clearSessionCookies, deliverSession } from './session-delivery.ts';
import { refuseWithRetryAfter } from '../http/retry-after.ts';
import { clientNetworkOf } from '../guard/index.ts';
import { isUniqueViolation } from './accounts-service.ts';

const ENROLMENT_TTL_MS = 72 * 3_600_000;
const ENROLMENT_PURPOSE = 'staff-enrolment';

const Username = Type.String({ minLength: 3, maxLength: 64, pattern: '^[A-Za-z0-9][A-Za-z0-9._-]*$' });
const Password = Type.String({ minLength: 1, maxLength: 256 });
const Code = Type.String({ pattern: '^[0-9]{6}$' });
const Roles = Type.Array(Type.Union(STAFF_ROLES.map((r) => Type.Literal(r))), {
  minItems: 1,
  maxItems: 4,
  uniqueItems: true,
});
const AdminId = Type.String({ pattern: '^adm_[A-Za-z0-9_-]{22}$' });
const SessionView = StrictObject({
  sessionId: Type.String(),
  expiresAt: Type.Integer(),
  token: Type.Optional(Type.String({ description: 'Only for X-Castellan-Client: app' })),
});
const StaffView = StrictObject({
  id: Type.String(),
  roles: Type.Array(Type.String()),
  disabled: Type.Boolean(),
  secondFactor: Type.Boolean(),
  createdAt: Type.Integer(),
});

function enrolmentId(token: string): string {
  return `enr_${hashToken(token).toString('base64url')}`;
}

const tooMany = (reply: FastifyReply, retryAfterMs: number): CastellanError =>
  refuseWithRetryAfter(reply, retryAfterMs, 'ERR_AUTH_LOCKED');

/** Enabled superadmins other than `except` who can act (their TOTP factor is confirmed). */
async function superadminCount(db: Kysely<Database>, except: string): Promise<number> {
  const rows = await db
    .selectFrom('admins')
    .innerJoin('mfa_totp', 'mfa_totp.principal_id', 'admins.id')
    .select(['admins.id', 'admins.roles'])
    .where('admins.disabled_at', 'is', null)
    .where('mfa_totp.confirmed_at', 'is not', null)
    .where('admins.id', '!=', except)
    .execute();
  return rows.filter((r) => parseRoles(r.roles).includes('superadmin')).length;
}

export async function staffRoutes(app: FastifyInstance, options: { ctx: AccountsContext; accounts: AccountsService }) {
  const { ctx, accounts } = options;
  const { db, authenticate } = ctx;
  const windowSeconds = ctx.config.loginFailureWindowMinutes * 60;
  const policy = { minLength: ctx.config.passwordMinLength, minScore: ctx.config.passwordMinScore };

  app.post(
    '/v1/staff/login',
    {
      schema: {
        summary: 'Staff sign-in: username, password and TOTP code together (OPS-2)',
        tags: ['staff'],
        body: StrictObject({ username: Username, password: Password, code: Code }),
        response: { 200: SessionView, ...publicErrors, 429: { $ref: 'ErrorResponse#' } },
      },
    },
    async (request, reply) => {
      const body = request.body as { username: string; password: string; code: string };
      const index = usernameIndex(ctx.keys, body.username);
      const accountKey = index.toString('hex');
      // Each attempt reserves its point before any hash is computed (ACC-4): a locked account or
      // address is refused without one, and parallel guesses get no more checks than sequential ones.
      const ip = clientNetworkOf(request.ip);
      const counters = [
        { dimension: 'staff-login-account', key: accountKey, points: ctx.config.loginFailuresPerAccount },
        { dimension: 'staff-login-ip', key: ip, points: ctx.config.loginFailuresPerIp },
      ];
      let wait = 0;
      for (const c of counters) {
        const state = await ctx.limits.consume(c.dimension, c.key, c.points, windowSeconds);
        if (!state.allowed) wait = Math.max(wait, state.retryAfterMs, 1);
      }
      if (wait > 0) {
        await ctx.audit(request, { type: 'staff.login', result: 'denied', details: { reason: 'locked' } });
        throw tooMany(reply, wait);
      }
      const admin = await db
        .selectFrom('admins')
        .select(['id', 'password_hash', 'disabled_at'])
        .where('username_index', '=', index)
        .executeTakeFirst();
      const passwordOk = await verifyPassword(admin?.password_hash, body.password);
      const ok =
        admin !== undefined && admin.disabled_at === null && passwordOk && (await ctx.totp.verify(admin.id, body.code));
      if (!ok) {
        await ctx.audit(request, { type: 'staff.login', target: admin?.id ?? null, result: 'failure' });
        throw new CastellanError('ERR_AUTH_INVALID');
      }
      await ctx.limits.reset('staff-login-account', accountKey, ctx.config.loginFailuresPerAccount, windowSeconds);
      await ctx.limits.refund('staff-login-ip', ip, ctx.config.loginFailuresPerIp, windowSeconds);
      const issued = await ctx.sessions.create({
        principalKind: 'staff',
        principalId: admin.id,
        level: 'full',
        persistent: false,
        ip: request.ip,
      });
      await ctx.audit(request, { type: 'staff.login', target: admin.id, details: { sessionId: issued.session.id } });
      return deliverSession(request, reply, issued);
    },
  );

  app.post(
    '/v1/staff/logout',
    {
      onRequest: authenticate,
      schema: {
        summary: "End the calling staff member's session",
        tags: ['staff'],
        security: bearerSecurity,
        response: { 204: Type.Null(), ...authenticatedErrors },
      },
    },
    async (request, reply) => {
      const principal = principalOf(request);
      if (principal.kind !== 'admin' || principal.via !== 'session') throw new CastellanError('ERR_AUTH_FORBIDDEN');
      await ctx.sessions.revoke(principal.credentialId);
      clearSessionCookies(reply);
      await ctx.audit(request, { type: 'staff.logout', target: principal.id });
      return reply.status(204).send();
    },
  );

  app.post(
    '/v1/staff',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Add a staff member (superadmin); returns a one-time enrolment token, shown once',
        tags: ['staff'],
        security: bearerSecurity,
        body: StrictObject({ name: DisplayName, username: Username, roles: Roles }),
        response: {
          201: StrictObject({ id: Type.String(), enrolmentToken: Type.String(), expiresAt: Type.Integer() }),
          ...authenticatedErrors,
          409: { $ref: 'ErrorResponse#' },
        },
      },
    },
    async (request, reply) => {
      assertCan(principalOf(request), 'staff.manage');
      const body = request.body as { name: string; username: string; roles: StaffRole[] };
      const id = newId('adm');
      const sealedName = (
        await ctx.keys.encrypt('platform', Buffer.from(body.name, 'utf8'), `admins.name:${id}`)
      ).toString('base64');
      const token = newToken('cas_enr');
      const now = ctx.now();
      try {
        await db.transaction().execute(async (trx) => {
          await trx
            .insertInto('admins')
            .values({
              id,
              name: sealedName,
              created_at: now,
              username_index: usernameIndex(ctx.keys, body.username),
              password_hash: null,
              roles: JSON.stringify(body.roles),
              disabled_at: null,
            })
            .execute();
          await trx
            .insertInto('auth_challenges')
            .values({
              id: enrolmentId(token),
              principal_id: id,
              purpose: ENROLMENT_PURPOSE,
              payload: '{}',
              created_at: now,
              expires_at: now + ENROLMENT_TTL_MS,
            })
            .execute();
        });
      } catch (error) {
        if (isUniqueViolation(error)) {
          throw new CastellanError('ERR_STAFF_USERNAME_TAKEN');
        }
        throw error;
      }
      await ctx.audit(request, { type: 'staff.create', target: id, details: { roles: body.roles } });
      return reply.status(201).send({ id, enrolmentToken: token, expiresAt: now + ENROLMENT_TTL_MS });
    },
  );

  async function enrolment(token: string): Promise<string> {
    const row = await db
      .selectFrom('auth_challenges')
      .select(['principal_id', 'expires_at'])
      .where('id', '=', enrolmentId(token))
      .where('purpose', '=', ENROLMENT_PURPOSE)
      .executeTakeFirst();
    if (!row?.principal_id || Number(row.expires_at) <= ctx.now()) throw new CastellanError('ERR_AUTH_INVALID');
    return row.principal_id;
  }

  app.post(
    '/v1/staff/enrol',
    {
      schema: {
        summary: 'New staff member: set a password and start the TOTP enrolment with the enrolment token',
        tags: ['staff'],
        body: StrictObject({ enrolmentToken: Type.String({ minLength: 1, maxLength: 256 }), password: Password }),
        response: {
          200: StrictObject({ totp: StrictObject({ secret: Type.String(), uri: Type.String() }) }),
          ...publicErrors,
        },
      },
    },
    async (request) => {
      const body = request.body as { enrolmentToken: string; password: string };
      const adminId = await enrolment(body.enrolmentToken);
      checkPasswordPolicy(body.password, policy);
      await db
        .updateTable('admins')
        .set({ password_hash: await hashPassword(body.password) })
        .where('id', '=', adminId)
        .execute();
      await ctx.totp.remove(adminId);
      const totp = await ctx.totp.enrol(adminId, adminId);
      await ctx.audit(request, { type: 'staff.enrol', target: adminId });
      return { totp };
    },
  );

  app.post(
    '/v1/staff/enrol/confirm',
    {
      schema: {
        summary: 'New staff member: confirm the TOTP factor; the enrolment token is then spent',
        tags: ['staff'],
        body: StrictObject({ enrolmentToken: Type.String({ minLength: 1, maxLength: 256 }), code: Code }),
        response: { 200: StrictObject({ confirmed: Type.Boolean() }), ...publicErrors },
      },
    },
    async (request) => {
      const body = request.body as { enrolmentToken: string; code: string };
      const adminId = await enrolment(body.enrolmentToken);
      const ok = await ctx.totp.verify(adminId, body.code, { confirm: true });
      await ctx.audit(request, { type: 'staff.mfa-confirm', target: adminId, result: ok ? 'success' : 'failure' });
      if (!ok) throw new CastellanError('ERR_MFA_CODE_INVALID');
      await db.deleteFrom('auth_challenges').where('id', '=', enrolmentId(body.enrolmentToken)).execute();
      return { confirmed: true };
    },
  );

  app.get(
    '/v1/staff',
    {
      onRequest: authenticate,
      schema: {
        summary: 'List staff members (superadmin)',
        tags: ['staff'],
        security: bearerSecurity,
        response: { 200: StrictObject({ items: Type.Array(StaffView) }), ...authenticatedErrors },
      },
    },
    async (request) => {
      assertCan(principalOf(request), 'staff.manage');
      const rows = await db
        .selectFrom('admins')
        .select(['id', 'roles', 'disabled_at', 'created_at'])
        .orderBy('created_at')
        .execute();
      const confirmed = new Set(
        (await db.selectFrom('mfa_totp').select('principal_id').where('confirmed_at', 'is not', null).execute()).map(
          (r) => r.principal_id,
        ),
      );
      return {
        items: rows.map((r) => ({
          id: r.id,
          roles: parseRoles(r.roles),
          disabled: r.disabled_at !== null,
          secondFactor: confirmed.has(r.id),
          createdAt: Number(r.created_at),
        })),
      };
    },
  );

  /** Ends every session and API credential of a staff member (privilege change, disabling). */
  async function cutOff(adminId: string): Promise<void> {
    await ctx.sessions.revokeAll(adminId);
    await db
      .updateTable('api_credentials')
      .set({ revoked_at: ctx.now() })
      .where('principal_id', '=', adminId)
      .where('revoked_at', 'is', null)
      .execute();
  }

  app.patch(
    '/v1/staff/:adminId',
    {
      onRequest: authenticate,
      schema: {
        summary: "Change a staff member's roles (superadmin); their sessions and credentials end",
        tags: ['staff'],
        security: bearerSecurity,
        params: StrictObject({ adminId: AdminId }),
        body: StrictObject({ roles: Roles }),
        response: { 200: StaffView, ...authenticatedErrors, 409: { $ref: 'ErrorResponse#' } },
      },
    },
    async (request) => {
      assertCan(principalOf(request), 'staff.manage');
      const { adminId } = request.params as { adminId: string };
      const { roles } = request.body as { roles: StaffRole[] };
      const row = await db
        .selectFrom('admins')
        .select(['id', 'created_at', 'disabled_at'])
        .where('id', '=', adminId)
        .executeTakeFirst();
      if (!row) throw new CastellanError('ERR_STAFF_NOT_FOUND');
      if (!roles.includes('superadmin') && (await superadminCount(db, adminId)) === 0) {
        throw new CastellanError('ERR_STAFF_LAST_SUPERADMIN');
      }
      await db
        .updateTable('admins')
        .set({ roles: JSON.stringify(roles) })
        .where('id', '=', adminId)
        .execute();
      // SESS-1: a privilege change starts new sessions (old tokens and credentials stop working).
      await cutOff(adminId);
      await ctx.audit(request, { type: 'staff.roles-change', target: adminId, details: { roles } });
      return {
        id: adminId,
        roles,
        disabled: row.disabled_at !== null,
        secondFactor: await ctx.totp.isEnrolled(adminId),
        createdAt: Number(row.created_at),
      };
    },
  );

  app.delete(
    '/v1/staff/:adminId',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Disable a staff member (superadmin): sessions and credentials end at once',
        tags: ['staff'],
        security: bearerSecurity,
        params: StrictObject({ adminId: AdminId }),
        response: { 204: Type.Null(), ...authenticatedErrors, 409: { $ref: 'ErrorResponse#' } },
      },
    },
    async (request, reply) => {
      assertCan(principalOf(request), 'staff.manage');
      const { adminId } = request.params as { adminId: string };
      const row = await db.selectFrom('admins').select(['id', 'roles']).where('id', '=', adminId).executeTakeFirst();
      if (!row) throw new CastellanError('ERR_STAFF_NOT_FOUND');
      if (parseRoles(row.roles).includes('superadmin') && (await superadminCount(db, adminId)) === 0) {
        throw new CastellanError('ERR_STAFF_LAST_SUPERADMIN');
      }
      await db.updateTable('admins').set({ disabled_at: ctx.now() }).where('id', '=', adminId).execute();
      await cutOff(adminId);
      await ctx.audit(request, { type: 'staff.disable', target: adminId });
      return reply.status(204).send();
    },
  );

  app.post(
    '/v1/staff/credentials',
    {
      onRequest: authenticate,
      schema: {
        summary:
          'Issue an API credential for the calling staff member (signed-in session and a current TOTP code); shown once; expires',
        tags: ['staff'],
        security: bearerSecurity,
        body: StrictObject({
          label: DisplayName,
          code: Code,
          expiresInDays: Type.Optional(Type.Integer({ minimum: 1, maximum: 365, default: 90 })),
        }),
        response: {
          201: StrictObject({
            id: Type.String(),
            label: Type.String(),
            token: Type.String(),
            expiresAt: Type.Integer(),
          }),
          ...authenticatedErrors,
        },
      },
    },
    async (request, reply) => {
      const principal = principalOf(request);
      // A credential cannot mint credentials, and a stolen session alone cannot either: only a session
      // that passed password + TOTP, with a fresh TOTP code now.
      if (principal.kind !== 'admin' || principal.via !== 'session' || !principal.secondFactor) {
        throw new CastellanError('ERR_AUTH_FORBIDDEN');
      }
      const body = request.body as { label: string; code: string; expiresInDays?: number };
      if (!(await ctx.totp.verify(principal.id, body.code))) {
        await ctx.audit(request, { type: 'staff.credential-issue', target: principal.id, result: 'failure' });
        throw new CastellanError('ERR_MFA_CODE_INVALID');
      }
      const ttlMs = (body.expiresInDays ?? 90) * 86_400_000;
      const credential = await accounts.insertStaffCredential(db, principal.id, body.label, ttlMs);
      await ctx.audit(request, {
        type: 'staff.credential-issue',
        target: credential.id,
        details: { expiresInDays: body.expiresInDays ?? 90 },
      });
      return reply.status(201).send({
        id: credential.id,
        label: credential.label,
        token: credential.token,
        expiresAt: ctx.now() + ttlMs,
      });
    },
  );
}
