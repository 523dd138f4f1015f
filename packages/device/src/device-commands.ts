// The device side of commands (CHAN-7, DEV-9). Commands arrive at QoS 1 on
// devices/{id}/commands/{name} as `{id, name, params, issuedAt, expiresAt}`; the SDK runs the handler
// registered for the name (or '*') and acknowledges on devices/{id}/acks/{commandId} with
// `{"status": "succeeded", "result"}`, `{"status": "failed", "error"}` when the handler threw, or
// `{"status": "rejected"}` when nothing handles the name or the handler threw CommandRejectedError.
// A QoS 1 redelivery of a command already handled is acknowledged once only.
import { deviceTopic } from '@castellan/protocol';
import type { MqttClient } from 'mqtt';
import { DeviceSubscription } from './device-subscription.ts';

export interface DeviceCommand {
  readonly id: string;
  readonly name: string;
  readonly params: Record<string, unknown>;
  readonly issuedAt: number;
  readonly expiresAt: number;
  /** Runs `action` once the acknowledgement was sent (a reboot acknowledges, then restarts). */
  afterAck(action: () => void | Promise<void>): void;
}

/** Returns the command's result (any JSON, or undefined for none). */
export type CommandHandler = (command: DeviceCommand) => unknown;

/** Thrown by a handler that refuses the command (acknowledged as `rejected`). */
export class CommandRejectedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CommandRejectedError';
  }
}

/** What DeviceCommands needs from the client. */
export interface CommandTransport {
  readonly deviceId: string;
  readonly mqtt: MqttClient;
  publish(topic: string, payload: string | Buffer, qos: 0 | 1): Promise<void>;
}

/** The platform accepts error messages of up to 512 characters. */
const MAX_ERROR_LENGTH = 512;
/** Command IDs remembered against QoS 1 redelivery. */
const REMEMBERED = 256;

export class DeviceCommands {
  readonly #t: CommandTransport;
  readonly #handlers = new Map<string, CommandHandler>();
  readonly #seen = new Set<string>();
  readonly #prefix: string;
  readonly #subscription: DeviceSubscription;
  /** Called when an acknowledgement could not be sent (the connection dropped, the platform refused it). */
  onAckError: ((error: unknown, command: DeviceCommand) => void) | undefined;

  constructor(transport: CommandTransport) {
    this.#t = transport;
    this.#prefix = deviceTopic.command(transport.deviceId, '');
    this.#subscription = new DeviceSubscription(transport.mqtt, deviceTopic.commands(transport.deviceId), 'commands');
    transport.mqtt.on('message', (topic: string, payload: Buffer) => {
      if (topic.startsWith(this.#prefix)) void this.#dispatch(topic.slice(this.#prefix.length), payload);
    });
  }

  /** Handles commands named `name` ('*': every name without a handler of its own); subscribes on first use. */
  async on(name: string, handler: CommandHandler): Promise<void> {
    this.#handlers.set(name, handler);
    await this.#subscription.ensure();
  }

  /** Subscribes again after a new connection (clean start): resolves once the platform confirmed it. */
  renew(): Promise<void> {
    return this.#subscription.renew();
  }

  off(name: string): void {
    this.#handlers.delete(name);
  }

  async #dispatch(name: string, payload: Buffer): Promise<void> {
    let message: Partial<Record<'id' | 'name' | 'params' | 'issuedAt' | 'expiresAt', unknown>>;
    try {
      message = JSON.parse(payload.toString('utf8')) as typeof message;
    } catch {
      return;
    }
    const id = message.id;
    // Not a command the platform sent: nothing to acknowledge.
    if (typeof id !== 'string' || !/^cmd_[A-Za-z0-9_-]{22}$/.test(id) || message.name !== name) return;
    if (this.#seen.has(id)) return;
    this.#seen.add(id);
    if (this.#seen.size > REMEMBERED) this.#seen.delete(this.#seen.values().next().value as string);
    const after: Array<() => void | Promise<void>> = [];
    const command: DeviceCommand = {
      id,
      name,
      params:
        typeof message.params === 'object' && message.params !== null
          ? (message.params as Record<string, unknown>)
          : {},
      issuedAt: typeof message.issuedAt === 'number' ? message.issuedAt : 0,
      expiresAt: typeof message.expiresAt === 'number' ? message.expiresAt : 0,
      afterAck: (action) => {
        after.push(action);
      },
    };
    const handler = this.#handlers.get(name) ?? this.#handlers.get('*');
    let ack: { status: 'succeeded' | 'failed' | 'rejected'; result?: unknown; error?: string };
    if (!handler) {
      ack = { status: 'rejected', error: `unknown command: ${name}` };
    } else {
      try {
        const result = await handler(command);
        ack = result === undefined ? { status: 'succeeded' } : { status: 'succeeded', result };
      } catch (error) {
        const text = (error instanceof Error ? error.message : String(error)).slice(0, MAX_ERROR_LENGTH);
        ack = { status: error instanceof CommandRejectedError ? 'rejected' : 'failed', error: text };
      }
    }
    const topic = deviceTopic.ack(this.#t.deviceId, id);
    try {
      await this.#t.publish(topic, JSON.stringify(ack), 1);
    } catch (error) {
      // A result the platform refused (too large, too deep): the command still gets an outcome.
      if (ack.status !== 'succeeded' || ack.result === undefined) {
        this.onAckError?.(error, command);
        return;
      }
      try {
        await this.#t.publish(topic, JSON.stringify({ status: 'failed', error: 'the result was refused' }), 1);
      } catch (again) {
        this.onAckError?.(again, command);
        return;
      }
    }
    for (const action of after) {
      try {
        await action();
      } catch (error) {
        this.onAckError?.(error, command);
      }
    }
  }
}

/** The application's part of the built-in commands; the SDK does the rest. */
export interface BuiltinCommandHooks {
  /** Before the connection is dropped and re-established. */
  onReboot?: () => void | Promise<void>;
  /** Once connected again with its subscriptions renewed (or with why that failed). */
  onRebooted?: (error?: unknown) => void;
  /** Clear local data and settings; the SDK forgets its shadow state. */
  onFactoryReset?: () => void | Promise<void>;
  /** Erase local user data; the SDK forgets its shadow state. */
  onWipe?: () => void | Promise<void>;
}

/** What the built-in handlers act on (a DeviceClient). */
export interface BuiltinTarget {
  onCommand(name: string, handler: CommandHandler): Promise<void>;
  restart(): Promise<void>;
  readonly shadow: { reset(): void };
}

/**
 * Handles the platform's built-in commands (DEV-9) the way a simulator does: `reboot` acknowledges,
 * waits `delaySeconds`, then drops and re-establishes the connection; `factory-reset` and `wipe`
 * run the application's hook, forget local shadow state and acknowledge.
 */
export async function useBuiltinCommands(target: BuiltinTarget, hooks: BuiltinCommandHooks = {}): Promise<void> {
  await target.onCommand('reboot', (command) => {
    const delay = command.params.delaySeconds;
    command.afterAck(async () => {
      if (typeof delay === 'number' && delay > 0) await new Promise((resolve) => setTimeout(resolve, delay * 1000));
      await hooks.onReboot?.();
      try {
        await target.restart();
      } catch (error) {
        hooks.onRebooted?.(error);
        throw error;
      }
      hooks.onRebooted?.();
    });
    return { rebooting: true };
  });
  await target.onCommand('factory-reset', async () => {
    await hooks.onFactoryReset?.();
    target.shadow.reset();
    return { reset: true };
  });
  await target.onCommand('wipe', async () => {
    await hooks.onWipe?.();
    target.shadow.reset();
    return { wiped: true };
  });
}
