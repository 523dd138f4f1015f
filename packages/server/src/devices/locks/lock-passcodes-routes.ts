// Smart-lock passcode routes for people (LOCK-1):
//   POST   /v1/devices/:deviceId/passcodes              issue (owner/admin, recent step-up); code shown once
//   GET    /v1/devices/:deviceId/passcodes              list (no codes)
//   DELETE /v1/devices/:deviceId/passcodes/:passcodeId  revoke; the lock gets its revocation list
// Access is DeviceAccess.authorize(…, 'lock.passcode'): anyone else is answered ERR_DEVICE_NOT_FOUND,
// like a missing device. Revoking needs no step-up: taking access away must never wait for a sign-in.
import type { PasscodeKind } from '@castellan/protocol';
import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import { type AccountsContext, requireRecentAuthentication } from '../../accounts/index.ts';
import type { CastellanError } from '../../errors/index.ts';
import {
  type AuthenticateHook,
  authenticatedErrors,
  bearerSecurity,
  principalOf,
  type RecordAudit,
  StrictObject,
} from '../../http/index.ts';
import type { DeviceAccess } from '../device-access.ts';
import type { Device } from '../devices-service.ts';
import type { LockPasscode, LockPasscodesService } from './lock-passcodes-service.ts';
import { DeviceIdParam, deviceIdOf } from '../device-route-params.ts';

export interface LockPasscodeRoutesOptions {
  passcodes: LockPasscodesService;
  access: DeviceAccess;
  authenticate: AuthenticateHook;
  audit: RecordAudit;
  /** Step-up before issuing (ACC-6: handing out a way to open a door is a sensitive operation). */
  stepUp: Pick<AccountsContext, 'config' | 'now'>;
}

const errorRef = { $ref: 'ErrorResponse#' } as const;
const PasscodeId = Type.String({ minLength: 1, maxLength: 64, pattern: '^lpc_[A-Za-z0-9_-]{22}$' });
const Kind = Type.Union([Type.Literal('one-time'), Type.Literal('time-window')]);
const WholeHour = (description: string) =>
  Type.Integer({ minimum: 0, maximum: 8_640_000_000_000_000, multipleOf: 3_600_000, description });
const NullableTime = Type.Union([Type.Integer(), Type.Null()]);

const PasscodeView = StrictObject({
  id: Type.String(),
  deviceId: Type.String(),
  kind: Kind,
  counter: Type.Integer({ description: "the code's number among codes of the same kind and window" }),
  validFrom: Type.Integer({ description: 'first valid instant, a whole hour (ms since the epoch)' }),
  validUntil: Type.Integer({ description: 'end of the window (exclusive), a whole hour' }),
  label: Type.Union([Type.String(), Type.Null()]),
  issuedBy: Type.String({ description: 'the person who issued it' }),
  createdAt: Type.Integer(),
  status: Type.Union([
    Type.Literal('scheduled'),
    Type.Literal('active'),
    Type.Literal('used'),
    Type.Literal('revoked'),
    Type.Literal('expired'),
  ]),
  revokedAt: NullableTime,
  useCount: Type.Integer({ description: 'uses the lock reported' }),
  lastUsedAt: NullableTime,
});

const presentPasscode = (p: LockPasscode) => ({
  id: p.id,
  deviceId: p.deviceId,
  kind: p.kind,
  counter: p.counter,
  validFrom: p.validFrom,
  validUntil: p.validUntil,
  label: p.label,
  issuedBy: p.issuedBy ?? '',
  createdAt: p.createdAt,
  status: p.status,
  revokedAt: p.revokedAt,
  useCount: p.useCount,
  lastUsedAt: p.lastUsedAt,
});

export async function lockPasscodeRoutes(
  app: FastifyInstance,
  { passcodes, access, authenticate, audit, stepUp }: LockPasscodeRoutesOptions,
) {
  app.post(
    '/v1/devices/:deviceId/passcodes',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Issue an offline passcode for a lock (owner or admin; needs step-up); the code is shown only here',
        tags: ['locks'],
        security: bearerSecurity,
        params: StrictObject({ deviceId: DeviceIdParam }),
        body: StrictObject({
          kind: Kind,
          validFrom: Type.Optional(WholeHour('first valid hour (ms); default: the current hour')),
          validUntil: Type.Optional(
            WholeHour('end of the window (ms): time-window codes 1-24 hours or 2-7 days later; one-time: +6 h'),
          ),
          label: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })),
        }),
        response: {
          201: StrictObject({
            id: Type.String(),
            code: Type.String({ description: '12 digits, typed on the lock keypad; shown once, never stored' }),
            kind: Kind,
            counter: Type.Integer(),
            validFrom: Type.Integer(),
            validUntil: Type.Integer(),
          }),
          ...authenticatedErrors,
          409: errorRef,
        },
      },
    },
    async (request, reply) => {
      const principal = principalOf(request);
      const deviceId = deviceIdOf(request);
      const body = request.body as { kind: PasscodeKind; validFrom?: number; validUntil?: number; label?: string };
      let device: Device | undefined;
      let issued: Awaited<ReturnType<LockPasscodesService['issue']>>;
      try {
        device = await access.authorize(principal, deviceId, 'lock.passcode');
        await passcodes.requireLock(device);
        requireRecentAuthentication(principal, stepUp);
        issued = await passcodes.issue(device, body, principal.id);
      } catch (error) {
        // Refusals are audited too (who tried to get a door code, and why not).
        await audit(request, {
          type: 'lock.passcode.issue',
          tenant: device?.vendorId ?? null,
          target: deviceId,
          result: 'denied',
          details: { kind: body.kind, error: (error as CastellanError).code ?? 'ERR_INTERNAL' },
        });
        throw error;
      }
      const p = issued.passcode;
      // Never the code, never the label (free text about a person).
      await audit(request, {
        type: 'lock.passcode.issue',
        tenant: device.vendorId,
        target: device.id,
        details: {
          passcodeId: p.id,
          kind: p.kind,
          counter: p.counter,
          validFrom: p.validFrom,
          validUntil: p.validUntil,
        },
      });
      return reply.status(201).send({
        id: p.id,
        code: issued.code,
        kind: p.kind,
        counter: p.counter,
        validFrom: p.validFrom,
        validUntil: p.validUntil,
      });
    },
  );

  app.get(
    '/v1/devices/:deviceId/passcodes',
    {
      onRequest: authenticate,
      schema: {
        summary: "A lock's passcodes, newest first (owner or admin); codes are never shown again",
        tags: ['locks'],
        security: bearerSecurity,
        params: StrictObject({ deviceId: DeviceIdParam }),
        response: { 200: StrictObject({ items: Type.Array(PasscodeView) }), ...authenticatedErrors, 409: errorRef },
      },
    },
    async (request) => {
      const device = await access.authorize(principalOf(request), deviceIdOf(request), 'lock.passcode');
      await passcodes.requireLock(device);
      return { items: (await passcodes.list(device.id)).map(presentPasscode) };
    },
  );

  app.delete(
    '/v1/devices/:deviceId/passcodes/:passcodeId',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Revoke a passcode: the lock refuses it once its revocation list reaches it (owner or admin)',
        tags: ['locks'],
        security: bearerSecurity,
        params: StrictObject({ deviceId: DeviceIdParam, passcodeId: PasscodeId }),
        response: { 204: Type.Null(), ...authenticatedErrors, 409: errorRef },
      },
    },
    async (request, reply) => {
      const device = await access.authorize(principalOf(request), deviceIdOf(request), 'lock.passcode');
      await passcodes.requireLock(device);
      const { passcodeId } = request.params as { passcodeId: string };
      const revoked = await passcodes.revoke(device.id, passcodeId);
      await audit(request, {
        type: 'lock.passcode.revoke',
        tenant: device.vendorId,
        target: device.id,
        details: { passcodeId: revoked.id, kind: revoked.kind, counter: revoked.counter },
      });
      return reply.status(204).send();
    },
  );
}
