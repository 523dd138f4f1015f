// Command routes (CHAN-7, DEV-9): send a command (device.control; reboot, factory-reset and wipe need
// device.admin-command), read one (optionally waiting for its outcome) and page the history
// (device.view). Every request asks DeviceAccess; a refusal is ERR_DEVICE_NOT_FOUND (BIND-2).
import type { FastifyInstance, FastifyReply } from 'fastify';
import { Type } from 'typebox';
import {
  type AuthenticateHook,
  authenticatedErrors,
  bearerSecurity,
  principalOf,
  type RecordAudit,
  StrictObject,
} from '../../http/index.ts';
import { CastellanError } from '../../errors/index.ts';
import type { DeviceAccess } from '../device-access.ts';
import { DeviceIdParam, deviceIdOf } from '../device-route-params.ts';
import { COMMAND_ID_PATTERN, COMMAND_NAME_PATTERN, COMMAND_STATUSES, isBuiltinCommand } from './command-payloads.ts';
import {
  type Command,
  type CommandsService,
  DEFAULT_TIMEOUT_SECONDS,
  MAX_TIMEOUT_SECONDS,
} from './commands-service.ts';

export interface CommandsRoutesOptions {
  commands: CommandsService;
  access: DeviceAccess;
  authenticate: AuthenticateHook;
  audit: RecordAudit;
}

const errorRef = { $ref: 'ErrorResponse#' } as const;
const NullableTime = Type.Union([Type.Integer(), Type.Null()]);
const CommandId = Type.String({ minLength: 1, maxLength: 64, pattern: COMMAND_ID_PATTERN });

const CommandView = StrictObject({
  id: Type.String(),
  deviceId: Type.String(),
  name: Type.String(),
  params: Type.Object({}, { additionalProperties: true }),
  status: Type.Union(
    COMMAND_STATUSES.map((s) => Type.Literal(s)),
    {
      description:
        'pending (stored), delivered (handed to the device connection), succeeded | failed | rejected (the ' +
        "device's acknowledgement), timed-out (delivered, no acknowledgement by the deadline), expired (never delivered)",
    },
  ),
  result: Type.Unknown({ description: 'what the device returned (any JSON); null when nothing' }),
  error: Type.Union([Type.String(), Type.Null()], { description: "the device's error message, if it gave one" }),
  issuedBy: Type.Union(
    [Type.Literal('user'), Type.Literal('operator'), Type.Literal('admin'), Type.Literal('system')],
    {
      description: 'the kind of caller that sent it (the audit log names who)',
    },
  ),
  issuedAt: Type.Integer(),
  expiresAt: Type.Integer({ description: 'the deadline for the acknowledgement' }),
  deliveredAt: NullableTime,
  completedAt: NullableTime,
});

const ISSUER_KINDS = new Set(['user', 'operator', 'admin']);

const present = (c: Command) => ({
  id: c.id,
  deviceId: c.deviceId,
  name: c.name,
  params: c.params,
  status: c.status,
  result: c.result,
  error: c.error,
  issuedBy: (ISSUER_KINDS.has(c.issuedBy.type) ? c.issuedBy.type : 'system') as
    'user' | 'operator' | 'admin' | 'system',
  issuedAt: c.issuedAt,
  expiresAt: c.expiresAt,
  deliveredAt: c.deliveredAt,
  completedAt: c.completedAt,
});

/** Runs a long poll that stops when the response closes before it was sent (the caller went away). */
async function waitUntilEnded(
  reply: FastifyReply,
  wait: (signal: AbortSignal) => Promise<Command | null>,
): Promise<Command | null> {
  const gone = new AbortController();
  const onClose = () => gone.abort();
  reply.raw.once('close', onClose);
  try {
    return await wait(gone.signal);
  } finally {
    reply.raw.off('close', onClose);
  }
}

export async function commandsRoutes(
  app: FastifyInstance,
  { commands, access, authenticate, audit }: CommandsRoutesOptions,
) {
  app.post(
    '/v1/devices/:deviceId/commands',
    {
      onRequest: authenticate,
      schema: {
        summary:
          'Send a command to a connected device; with wait=true, answers when it has ended (at most its deadline), else poll it',
        tags: ['devices'],
        security: bearerSecurity,
        params: StrictObject({ deviceId: DeviceIdParam }),
        querystring: StrictObject({ wait: Type.Optional(Type.Boolean({ default: false })) }),
        body: StrictObject({
          name: Type.String({
            minLength: 1,
            maxLength: 64,
            pattern: COMMAND_NAME_PATTERN,
            description: "the product's command, or the built-ins reboot, factory-reset, wipe (owner or vendor only)",
          }),
          params: Type.Optional(
            Type.Object({}, { additionalProperties: true, description: 'at most 8 KiB and 4 levels deep' }),
          ),
          timeoutSeconds: Type.Optional(
            Type.Integer({
              minimum: 1,
              maximum: MAX_TIMEOUT_SECONDS,
              default: DEFAULT_TIMEOUT_SECONDS,
              description: 'how long the device has to acknowledge',
            }),
          ),
        }),
        response: { 200: CommandView, 202: CommandView, ...authenticatedErrors, 409: errorRef, 429: errorRef },
      },
    },
    async (request, reply) => {
      const principal = principalOf(request);
      const body = request.body as { name: string; params?: Record<string, unknown>; timeoutSeconds?: number };
      const builtin = isBuiltinCommand(body.name);
      const device = await access.authorize(
        principal,
        deviceIdOf(request),
        builtin ? 'device.admin-command' : 'device.control',
      );
      const command = await commands.issue(device, body, { type: principal.kind, id: principal.id }, (issued) =>
        audit(request, {
          type: 'device.command.issue',
          tenant: device.vendorId,
          target: device.id,
          // Parameter keys only: a custom command's values may hold personal data (PRIV-1).
          details: {
            commandId: issued.id,
            name: issued.name,
            builtin,
            paramKeys: Object.keys(issued.params).slice(0, 50),
            timeoutSeconds: Math.round((issued.expiresAt - issued.issuedAt) / 1000),
          },
        }),
      );
      if (!(request.query as { wait?: boolean }).wait) return reply.status(202).send(present(command));
      // One request instead of POST + GET ?wait=true: the same wait, from the command just issued.
      const ended = await waitUntilEnded(reply, (signal) => commands.waitForOutcome(device.id, command.id, signal));
      return reply.status(200).send(present(ended ?? command));
    },
  );

  app.get(
    '/v1/devices/:deviceId/commands/:commandId',
    {
      onRequest: authenticate,
      schema: {
        summary: 'A command and its outcome; with wait=true, answers when it has ended (at most its deadline)',
        tags: ['devices'],
        security: bearerSecurity,
        params: StrictObject({ deviceId: DeviceIdParam, commandId: CommandId }),
        querystring: StrictObject({ wait: Type.Optional(Type.Boolean({ default: false })) }),
        response: { 200: CommandView, ...authenticatedErrors },
      },
    },
    async (request, reply) => {
      const device = await access.authorize(principalOf(request), deviceIdOf(request), 'device.view');
      const { commandId } = request.params as { commandId: string };
      let command: Command | null;
      if ((request.query as { wait?: boolean }).wait) {
        command = await waitUntilEnded(reply, (signal) => commands.waitForOutcome(device.id, commandId, signal));
      } else {
        command = await commands.get(device.id, commandId);
      }
      if (!command) throw new CastellanError('ERR_COMMAND_NOT_FOUND');
      return present(command);
    },
  );

  app.get(
    '/v1/devices/:deviceId/commands',
    {
      onRequest: authenticate,
      schema: {
        summary: "A device's commands, newest first; page with before (the last ID of the previous page)",
        tags: ['devices'],
        security: bearerSecurity,
        params: StrictObject({ deviceId: DeviceIdParam }),
        querystring: StrictObject({
          limit: Type.Integer({ minimum: 1, maximum: 200, default: 50 }),
          before: Type.Optional(CommandId),
        }),
        response: {
          200: StrictObject({ items: Type.Array(CommandView), next: Type.Union([Type.String(), Type.Null()]) }),
          ...authenticatedErrors,
        },
      },
    },
    async (request) => {
      const device = await access.authorize(principalOf(request), deviceIdOf(request), 'device.view');
      const { limit, before } = request.query as { limit: number; before?: string };
      const items = await commands.list(device.id, { limit, ...(before ? { before } : {}) });
      return { items: items.map(present), next: items.length === limit ? items.at(-1)!.id : null };
    },
  );
}
