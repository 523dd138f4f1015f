// Vendor organisations for signed-in people (ORG-1): create enterprise organisations, list one's own,
// manage members and invitations. Each route: limiter (where it sends mail or checks a secret) →
// authenticate → validate → authorise (policy; a non-member gets "not found", ORG-3) → service →
// response schema with only declared fields.
//
// Role changes and removals need no session revocation: the request authenticator reloads the
// person's memberships on every request, so the change applies from their next request.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { Type } from 'typebox';
import { CastellanError } from '../errors/index.ts';
import { authenticatedErrors, bearerSecurity, DisplayName, principalOf, StrictObject } from '../http/index.ts';
import { type Action, can } from './access-policy.ts';
import type { AccountsContext } from './accounts-context.ts';
import { type Member, type Membership, type Organisation, OrganisationsService } from './organisations-service.ts';
import { ORG_ROLES, type OrgRole, type UserPrincipal } from './principal.ts';
import { type Identifier, normaliseIdentifier } from './user-directory.ts';
import { refuseWithRetryAfter } from '../http/retry-after.ts';

/** Invitations sent per inviting person per hour, and acceptance attempts per person per hour. */
const INVITES_PER_HOUR = 20;
const ACCEPTS_PER_HOUR = 20;

const VendorId = Type.String({ minLength: 1, maxLength: 64, pattern: '^vnd_[A-Za-z0-9_-]{22}$' });
const UserId = Type.String({ minLength: 1, maxLength: 64, pattern: '^usr_[A-Za-z0-9_-]{22}$' });
const Role = Type.Union(ORG_ROLES.map((r) => Type.Literal(r)));
const InvitationToken = Type.String({ minLength: 16, maxLength: 128, pattern: '^cas_inv_[A-Za-z0-9_-]+$' });

const OrganisationView = StrictObject({
  id: Type.String(),
  code: Type.String({ description: '6 hex digits, part of every device ID of this organisation' }),
  name: Type.String(),
  kind: Type.Union([Type.Literal('personal'), Type.Literal('enterprise')]),
  createdAt: Type.Integer(),
  role: Type.Union([Role, Type.Null()], { description: "the caller's role in it" }),
});

const MemberView = StrictObject({
  userId: Type.String(),
  role: Role,
  joinedAt: Type.Integer(),
  contact: Type.Union([Type.String(), Type.Null()], {
    description: 'masked e-mail or phone (e.g. d***@example.com), null when none is readable',
  }),
});

const InvitationView = StrictObject({
  id: Type.String(),
  vendorId: Type.String(),
  role: Role,
  createdAt: Type.Integer(),
  expiresAt: Type.Integer(),
});

const orgParams = StrictObject({ vendorId: VendorId });
const memberParams = StrictObject({ vendorId: VendorId, userId: UserId });
const conflict = { 409: { $ref: 'ErrorResponse#' } } as const;
const limited = { 429: { $ref: 'ErrorResponse#' } } as const;

const presentOrganisation = (o: Organisation, role: OrgRole | null) => ({
  id: o.id,
  code: o.code,
  name: o.name,
  kind: o.kind,
  createdAt: o.createdAt,
  role,
});

/** Shows enough of a contact to recognise a colleague, not enough to harvest it. */
export function maskContact(contact: Identifier): string {
  if (contact.kind === 'phone') return `${'*'.repeat(Math.max(0, contact.value.length - 2))}${contact.value.slice(-2)}`;
  const at = contact.value.lastIndexOf('@');
  return `${contact.value.slice(0, 1)}***${contact.value.slice(at)}`;
}

/** Only people act through organisations; staff and operators have their own routes. */
function personOf(request: FastifyRequest): UserPrincipal {
  const principal = principalOf(request);
  if (principal.kind !== 'user') throw new CastellanError('ERR_AUTH_FORBIDDEN');
  return principal;
}

/**
 * Authorises `action` on an organisation: a non-member learns nothing (404, ORG-3); a member without
 * the role gets 403 (they can see the organisation exists).
 */
function authorise(person: UserPrincipal, vendorId: string, action: Action): OrgRole {
  if (!Object.hasOwn(person.memberships, vendorId)) throw new CastellanError('ERR_ORG_NOT_FOUND');
  if (!can(person, action, { vendorId })) throw new CastellanError('ERR_AUTH_FORBIDDEN');
  return person.memberships[vendorId]!;
}

const tooMany = (reply: FastifyReply, retryAfterMs: number): CastellanError =>
  refuseWithRetryAfter(reply, retryAfterMs, 'ERR_RATE_LIMITED');

export async function organisationRoutes(app: FastifyInstance, ctx: AccountsContext): Promise<void> {
  const orgs = new OrganisationsService(ctx);

  async function presentMember(m: Member) {
    let contact: string | null;
    try {
      const c = await ctx.users.contactOf(m.userId);
      contact = c ? maskContact(c) : null;
    } catch {
      // The person's key was shredded (erasure): nothing readable to show.
      contact = null;
    }
    return { userId: m.userId, role: m.role, joinedAt: m.joinedAt, contact };
  }

  app.post(
    '/v1/orgs',
    {
      onRequest: ctx.authenticate,
      schema: {
        summary: 'Create an enterprise organisation; the caller (a developer) becomes its owner',
        tags: ['organisations'],
        security: bearerSecurity,
        body: StrictObject({ name: DisplayName }),
        response: { 201: OrganisationView, ...authenticatedErrors, ...conflict },
      },
    },
    async (request, reply) => {
      const person = personOf(request);
      if (person.userKind !== 'developer') throw new CastellanError('ERR_AUTH_FORBIDDEN');
      const org = await orgs.createEnterprise(person.id, (request.body as { name: string }).name);
      await ctx.audit(request, {
        type: 'org.create',
        tenant: org.id,
        target: org.id,
        details: { code: org.code, kind: org.kind },
      });
      return reply.status(201).send(presentOrganisation(org, 'owner'));
    },
  );

  app.get(
    '/v1/orgs',
    {
      onRequest: ctx.authenticate,
      schema: {
        summary: "The caller's organisations, with the caller's role in each",
        tags: ['organisations'],
        security: bearerSecurity,
        response: { 200: StrictObject({ items: Type.Array(OrganisationView) }), ...authenticatedErrors },
      },
    },
    async (request) => {
      const person = personOf(request);
      const items = await orgs.listFor(person.id);
      return { items: items.map((m: Membership) => presentOrganisation(m, m.role)) };
    },
  );

  app.get(
    '/v1/orgs/:vendorId',
    {
      onRequest: ctx.authenticate,
      schema: {
        summary: 'Read an organisation (members)',
        tags: ['organisations'],
        security: bearerSecurity,
        params: orgParams,
        response: { 200: OrganisationView, ...authenticatedErrors },
      },
    },
    async (request) => {
      const person = personOf(request);
      const { vendorId } = request.params as { vendorId: string };
      const role = authorise(person, vendorId, 'org.read');
      const org = await orgs.get(vendorId);
      if (!org) throw new CastellanError('ERR_ORG_NOT_FOUND');
      return presentOrganisation(org, role);
    },
  );

  app.get(
    '/v1/orgs/:vendorId/members',
    {
      onRequest: ctx.authenticate,
      schema: {
        summary: "An organisation's members and their roles (contacts masked)",
        tags: ['organisations'],
        security: bearerSecurity,
        params: orgParams,
        response: { 200: StrictObject({ items: Type.Array(MemberView) }), ...authenticatedErrors },
      },
    },
    async (request) => {
      const person = personOf(request);
      const { vendorId } = request.params as { vendorId: string };
      authorise(person, vendorId, 'org.read');
      const members = await orgs.members(vendorId);
      return { items: await Promise.all(members.map(presentMember)) };
    },
  );

  app.patch(
    '/v1/orgs/:vendorId/members/:userId',
    {
      onRequest: ctx.authenticate,
      schema: {
        summary: "Change a member's role (admins; only owners grant or take away 'owner')",
        tags: ['organisations'],
        security: bearerSecurity,
        params: memberParams,
        body: StrictObject({ role: Role }),
        response: { 200: MemberView, ...authenticatedErrors, ...conflict },
      },
    },
    async (request) => {
      const person = personOf(request);
      const { vendorId, userId } = request.params as { vendorId: string; userId: string };
      const { role } = request.body as { role: OrgRole };
      authorise(person, vendorId, 'org.members.manage');
      let member: Member;
      try {
        member = await orgs.changeRole(vendorId, person.id, userId, role);
      } catch (error) {
        await ctx.audit(request, {
          type: 'org.member-role',
          tenant: vendorId,
          target: userId,
          result: error instanceof CastellanError && error.code === 'ERR_AUTH_FORBIDDEN' ? 'denied' : 'failure',
          details: { role, code: error instanceof CastellanError ? error.code : 'ERR_INTERNAL' },
        });
        throw error;
      }
      await ctx.audit(request, { type: 'org.member-role', tenant: vendorId, target: userId, details: { role } });
      return presentMember(member);
    },
  );

  app.delete(
    '/v1/orgs/:vendorId/members/:userId',
    {
      onRequest: ctx.authenticate,
      schema: {
        summary: 'Remove a member (admins; owners for owners), or leave the organisation (any member)',
        tags: ['organisations'],
        security: bearerSecurity,
        params: memberParams,
        response: { 204: Type.Null(), ...authenticatedErrors, ...conflict },
      },
    },
    async (request, reply) => {
      const person = personOf(request);
      const { vendorId, userId } = request.params as { vendorId: string; userId: string };
      const leaving = userId === person.id;
      authorise(person, vendorId, leaving ? 'org.read' : 'org.members.manage');
      const type = leaving ? 'org.leave' : 'org.member-remove';
      let removed: Awaited<ReturnType<OrganisationsService['removeMember']>>;
      try {
        removed = await orgs.removeMember(vendorId, person.id, userId);
      } catch (error) {
        await ctx.audit(request, {
          type,
          tenant: vendorId,
          target: userId,
          result: error instanceof CastellanError && error.code === 'ERR_AUTH_FORBIDDEN' ? 'denied' : 'failure',
          details: { code: error instanceof CastellanError ? error.code : 'ERR_INTERNAL' },
        });
        throw error;
      }
      await ctx.audit(request, {
        type,
        tenant: vendorId,
        target: userId,
        details: { role: removed.role, invitationsWithdrawn: removed.invitationsWithdrawn },
      });
      return reply.status(204).send();
    },
  );

  app.post(
    '/v1/orgs/:vendorId/invitations',
    {
      onRequest: ctx.authenticate,
      schema: {
        summary: 'Invite someone by e-mail (admins; only owners invite owners); the token goes only by e-mail',
        tags: ['organisations'],
        security: bearerSecurity,
        params: orgParams,
        body: StrictObject({ email: Type.String({ minLength: 3, maxLength: 254 }), role: Role }),
        response: { 201: InvitationView, ...authenticatedErrors, ...conflict, ...limited },
      },
    },
    async (request, reply) => {
      const person = personOf(request);
      const { vendorId } = request.params as { vendorId: string };
      const body = request.body as { email: string; role: OrgRole };
      authorise(person, vendorId, 'org.members.manage');
      const email = normaliseIdentifier(body.email);
      if (email.kind !== 'email') throw new CastellanError('ERR_ACCOUNT_IDENTIFIER_INVALID');
      // Each invitation sends an e-mail to an address the caller chose: bound it (no mail cannon).
      const limit = await ctx.limits.consume('org-invite', person.id, INVITES_PER_HOUR, 3600);
      if (!limit.allowed) throw tooMany(reply, limit.retryAfterMs);
      let created: Awaited<ReturnType<OrganisationsService['invite']>>;
      try {
        created = await orgs.invite(vendorId, person.id, email, body.role);
      } catch (error) {
        await ctx.audit(request, {
          type: 'org.invite',
          tenant: vendorId,
          target: vendorId,
          result: error instanceof CastellanError && error.code === 'ERR_AUTH_FORBIDDEN' ? 'denied' : 'failure',
          details: { role: body.role, code: error instanceof CastellanError ? error.code : 'ERR_INTERNAL' },
        });
        throw error;
      }
      const { invitation, token, organisation } = created;
      // The invitation exists from here on, so it is audited before anything else can fail. The e-mail
      // is then sent without holding up or failing the request (as registration does): an SMTP outage
      // must not answer 500 for an invitation that was in fact created and recorded. If delivery
      // fails, nobody ever holds the token, so the row is inert until it expires (and is purged); the
      // inviter simply invites again. Rolling back instead would make the inviter wait on SMTP and
      // still race a mail that was accepted by the relay but reported as failed.
      await ctx.audit(request, {
        type: 'org.invite',
        tenant: vendorId,
        target: invitation.id,
        details: { role: invitation.role, expiresAt: invitation.expiresAt },
      });
      ctx.sender
        .send({
          channel: 'email',
          to: email.value,
          subject: `Invitation to join ${organisation.name} on Castellan`,
          text: [
            `You are invited to join the organisation "${organisation.name}" on Castellan as ${invitation.role}.`,
            '',
            'Sign in with a developer account registered to this e-mail address and accept the invitation',
            `(POST ${ctx.publicUrl()}/v1/invitations/accept) with this token:`,
            '',
            token,
            '',
            `It is valid for 7 days and can be used once. If you did not expect it, ignore this message.`,
          ].join('\n'),
          purpose: 'invitation',
        })
        .catch((error: unknown) => {
          // Only the error's code: delivery errors can quote the recipient's address.
          ctx.log.warn(
            { purpose: 'invitation', invitationId: invitation.id, errorCode: (error as { code?: unknown }).code },
            'message delivery failed',
          );
        });
      return reply.status(201).send({
        id: invitation.id,
        vendorId: invitation.vendorId,
        role: invitation.role,
        createdAt: invitation.createdAt,
        expiresAt: invitation.expiresAt,
      });
    },
  );

  app.post(
    '/v1/invitations/accept',
    {
      onRequest: ctx.authenticate,
      schema: {
        summary: "Accept an invitation sent to the signed-in developer's e-mail address; joins the organisation",
        tags: ['organisations'],
        security: bearerSecurity,
        body: StrictObject({ token: InvitationToken }),
        response: { 200: OrganisationView, ...authenticatedErrors, ...conflict, ...limited },
      },
    },
    async (request, reply) => {
      const person = personOf(request);
      // Vendor organisations are for developer accounts (ORG-1).
      if (person.userKind !== 'developer') throw new CastellanError('ERR_AUTH_FORBIDDEN');
      const limit = await ctx.limits.consume('org-invite-accept', person.id, ACCEPTS_PER_HOUR, 3600);
      if (!limit.allowed) throw tooMany(reply, limit.retryAfterMs);
      let accepted: Awaited<ReturnType<OrganisationsService['accept']>>;
      try {
        accepted = await orgs.accept(person.id, (request.body as { token: string }).token);
      } catch (error) {
        await ctx.audit(request, {
          type: 'org.invitation-accept',
          target: person.id,
          result: 'failure',
          details: { code: error instanceof CastellanError ? error.code : 'ERR_INTERNAL' },
        });
        throw error;
      }
      await ctx.audit(request, {
        type: 'org.invitation-accept',
        tenant: accepted.vendorId,
        target: accepted.invitationId,
        details: { role: accepted.role },
      });
      const org = await orgs.get(accepted.vendorId);
      if (!org) throw new CastellanError('ERR_ORG_NOT_FOUND');
      return presentOrganisation(org, accepted.role);
    },
  );
}
