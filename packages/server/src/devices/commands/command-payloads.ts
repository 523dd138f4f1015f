// What travels for a command (CHAN-7, DEV-9): the names a command may have, the built-ins every device
// understands, and the acknowledgement a device publishes on devices/{id}/acks/{commandId}.
import {
  checkDocument,
  DOCUMENT_LIMITS,
  isJsonObject,
  type JsonObject,
  type JsonValue,
} from '../shadow/json-document.ts';

/** Reserved for every product (DEV-9): a product schema cannot define or override them. */
export const BUILTIN_COMMANDS = ['reboot', 'factory-reset', 'wipe'] as const;
export type BuiltinCommand = (typeof BUILTIN_COMMANDS)[number];

export function isBuiltinCommand(name: string): name is BuiltinCommand {
  return (BUILTIN_COMMANDS as readonly string[]).includes(name);
}

export const COMMAND_STATUSES = [
  'pending',
  'delivered',
  'succeeded',
  'failed',
  'rejected',
  'timed-out',
  'expired',
] as const;
export type CommandStatus = (typeof COMMAND_STATUSES)[number];

/** Waiting for the device: an acknowledgement can still change these. */
export const OPEN_STATUSES: readonly CommandStatus[] = ['pending', 'delivered'];

export const ACK_STATUSES = ['succeeded', 'failed', 'rejected'] as const;
export type AckStatus = (typeof ACK_STATUSES)[number];

/** One MQTT topic level: no `/`, `+`, `#` or `$`, so a name cannot reach another topic. */
export const COMMAND_NAME_PATTERN = '^[A-Za-z][A-Za-z0-9_.-]{0,63}$';
const COMMAND_NAME = new RegExp(COMMAND_NAME_PATTERN);
export const COMMAND_ID_PATTERN = '^cmd_[A-Za-z0-9_-]{22}$';
const COMMAND_ID = new RegExp(COMMAND_ID_PATTERN);

export const isCommandName = (name: string): boolean => COMMAND_NAME.test(name);
export const isCommandId = (id: string): boolean => COMMAND_ID.test(id);

const MAX_ERROR_LENGTH = 512;
const MAX_REBOOT_DELAY_SECONDS = 3600;

/** What is wrong with a built-in command's parameters, or null. */
export function checkBuiltinParams(name: BuiltinCommand, params: JsonObject): string | null {
  const keys = Object.keys(params);
  if (name === 'reboot') {
    if (keys.some((k) => k !== 'delaySeconds')) return 'reboot takes only delaySeconds';
    const delay = params.delaySeconds;
    if (
      delay !== undefined &&
      (typeof delay !== 'number' || !Number.isInteger(delay) || delay < 0 || delay > MAX_REBOOT_DELAY_SECONDS)
    ) {
      return `delaySeconds must be an integer from 0 to ${MAX_REBOOT_DELAY_SECONDS}`;
    }
    return null;
  }
  return keys.length === 0 ? null : `${name} takes no parameters`;
}

export interface CommandAck {
  readonly status: AckStatus;
  readonly result?: JsonValue;
  readonly error?: string;
}

/**
 * A device's acknowledgement: `{"status": "succeeded"|"failed"|"rejected", "result"?: any JSON,
 * "error"?: string}`. Returns the ack, or what is wrong with it (refused with 0x99).
 */
export function parseAck(payload: Buffer): CommandAck | string {
  let value: unknown;
  try {
    value = JSON.parse(payload.toString('utf8'));
  } catch {
    return 'an acknowledgement must be JSON: {"status": "succeeded"|"failed"|"rejected", "result"?, "error"?}';
  }
  if (!isJsonObject(value)) return 'an acknowledgement must be a JSON object';
  const unknown = Object.keys(value).find((k) => k !== 'status' && k !== 'result' && k !== 'error');
  if (unknown !== undefined) return `unknown field ${JSON.stringify(unknown.slice(0, 64))} in the acknowledgement`;
  const status = value.status;
  if (typeof status !== 'string' || !(ACK_STATUSES as readonly string[]).includes(status)) {
    return 'status must be "succeeded", "failed" or "rejected"';
  }
  const error = value.error;
  if (error !== undefined && (typeof error !== 'string' || error.length > MAX_ERROR_LENGTH)) {
    return `error must be a string of at most ${MAX_ERROR_LENGTH} characters`;
  }
  if (value.result !== undefined) {
    const problem = checkDocument(value.result, DOCUMENT_LIMITS, { objectRequired: false });
    if (problem !== null) return `result ${problem}`;
  }
  return {
    status: status as AckStatus,
    ...(value.result === undefined ? {} : { result: value.result }),
    ...(error === undefined ? {} : { error }),
  };
}
