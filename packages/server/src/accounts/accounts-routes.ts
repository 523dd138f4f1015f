// Accounts routes. Each reads as a checklist: authenticate → validate (schema) → authorise (policy)
// → service → presenter (the response schema emits only declared fields).
import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import {
  type AuthenticateHook,
  authenticatedErrors,
  bearerSecurity,
  principalOf,
  publicErrors,
  type RecordAudit,
  StrictObject,
  DisplayName,
} from '../http/index.ts';
import { CastellanError } from '../errors/index.ts';
import { assertCan } from './access-policy.ts';
import type { AccountsService, Vendor } from './accounts-service.ts';
import type { TotpService } from './totp-service.ts';

export interface AccountsRoutesOptions {
  accounts: AccountsService;
  totp: TotpService;
  authenticate: AuthenticateHook;
  audit: RecordAudit;
}

/** A staff sign-in name: letters, digits and . _ - (compared case-insensitively). */
export const StaffUsername = Type.String({ minLength: 3, maxLength: 64, pattern: '^[A-Za-z0-9][A-Za-z0-9._-]*$' });
/** Passwords travel only in request bodies over TLS (ACC-8); the policy checks more than the length. */
export const PasswordField = Type.String({ minLength: 1, maxLength: 256 });
const TotpCode = Type.String({ pattern: '^[0-9]{6}$' });
const TotpView = StrictObject({
  secret: Type.String({ description: 'Base32 TOTP secret, shown only in this response' }),
  uri: Type.String({ description: 'otpauth:// URI for a QR code' }),
});

const VendorView = StrictObject({
  id: Type.String(),
  code: Type.String({ description: '6 hex digits, part of every device ID of this vendor' }),
  name: Type.String(),
  kind: Type.Union([Type.Literal('personal'), Type.Literal('enterprise')]),
  createdAt: Type.Integer(),
});

const CredentialView = StrictObject({
  id: Type.String(),
  kind: Type.String(),
  principalId: Type.String(),
  label: Type.String(),
  token: Type.String({ description: 'Bearer token, shown only in this response' }),
});

const presentVendor = (v: Vendor) => ({ id: v.id, code: v.code, name: v.name, kind: v.kind, createdAt: v.createdAt });

export async function accountsRoutes(
  app: FastifyInstance,
  { accounts, totp, authenticate, audit }: AccountsRoutesOptions,
) {
  app.post(
    '/v1/setup',
    {
      schema: {
        summary:
          'Create the first staff member (superadmin) with the one-time setup token; confirm the returned TOTP factor before the credential can act',
        tags: ['accounts'],
        body: StrictObject({
          setupToken: Type.String({ minLength: 1, maxLength: 256 }),
          adminName: DisplayName,
          username: StaffUsername,
          password: PasswordField,
        }),
        response: {
          201: StrictObject({ adminId: Type.String(), credential: CredentialView, totp: TotpView }),
          ...publicErrors,
        },
      },
    },
    async (request, reply) => {
      const body = request.body as { setupToken: string; adminName: string; username: string; password: string };
      let result: Awaited<ReturnType<AccountsService['completeSetup']>>;
      try {
        accounts.checkPassword(body.password, [body.username, body.adminName]);
        result = await accounts.completeSetup(body);
      } catch (error) {
        await audit(request, { type: 'setup.complete', result: 'failure' });
        throw error;
      }
      await audit(request, {
        type: 'setup.complete',
        target: result.adminId,
        details: { credentialId: result.credential.id },
      });
      request.log.info({ adminId: result.adminId }, 'setup completed: first administrator created');
      return reply.status(201).send(result);
    },
  );

  app.post(
    '/v1/vendors',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Create a vendor organisation (administrators)',
        tags: ['accounts'],
        security: bearerSecurity,
        body: StrictObject({ name: DisplayName }),
        response: { 201: VendorView, ...authenticatedErrors },
      },
    },
    async (request, reply) => {
      assertCan(principalOf(request), 'vendor.create');
      const vendor = await accounts.createVendor((request.body as { name: string }).name);
      await audit(request, {
        type: 'vendor.create',
        tenant: vendor.id,
        target: vendor.id,
        details: { code: vendor.code },
      });
      return reply.status(201).send(presentVendor(vendor));
    },
  );

  app.get(
    '/v1/vendors',
    {
      onRequest: authenticate,
      schema: {
        summary: 'List vendor organisations (administrators)',
        tags: ['accounts'],
        security: bearerSecurity,
        response: { 200: StrictObject({ items: Type.Array(VendorView) }), ...authenticatedErrors },
      },
    },
    async (request) => {
      assertCan(principalOf(request), 'vendor.list');
      return { items: (await accounts.listVendors()).map(presentVendor) };
    },
  );

  app.post(
    '/v1/staff/mfa/totp/confirm',
    {
      onRequest: authenticate,
      schema: {
        summary: "Confirm the calling staff member's TOTP factor (OPS-2: staff can act only after this)",
        tags: ['accounts'],
        security: bearerSecurity,
        body: StrictObject({ code: TotpCode }),
        response: { 200: StrictObject({ confirmed: Type.Boolean() }), ...authenticatedErrors },
      },
    },
    async (request) => {
      const principal = principalOf(request);
      if (principal.kind !== 'admin') throw new CastellanError('ERR_AUTH_FORBIDDEN');
      const ok = await totp.verify(principal.id, (request.body as { code: string }).code, { confirm: true });
      await audit(request, { type: 'staff.mfa-confirm', target: principal.id, result: ok ? 'success' : 'failure' });
      if (!ok) throw new CastellanError('ERR_MFA_CODE_INVALID');
      return { confirmed: true };
    },
  );
}
