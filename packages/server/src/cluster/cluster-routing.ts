// Platform-to-device traffic across processes (RES-2). A device is connected to one process; a command,
// a shadow update or a lock's passcode list may start in any. Each such publish is delivered by the local
// broker and sent on the bus; every other process hands it to its own broker with persist: false, so the
// process holding the device delivers it (the others have no subscriber for that device's topics: the
// ACL confines devices to their own namespace) and every process's retained copy stays current, while
// only the publishing process writes the shared store. Disconnect orders (quarantine), credential
// re-checks (revocation, rotation: each process judges its own connections) and takeovers (the device connected again elsewhere: [MQTT-3.1.4-3] one session per client ID) travel the
// same way.
import type { ClusterBus, BusMessage } from './cluster-bus.ts';

/** The broker operations routing needs (MqttBroker's). */
export interface RoutedBroker {
  publishSystem(topic: string, payload: Buffer, options: { retain: boolean; qos?: 0 | 1; persist?: boolean }): void;
  disconnectClient(clientId: string, reasonCode: number): boolean;
  isConnected(clientId: string): boolean;
}

/** MQTT 5 reason code 0x8E Session taken over. */
const SESSION_TAKEN_OVER = 0x8e;

export class ClusterRouting {
  readonly #bus: ClusterBus;
  readonly #broker: RoutedBroker;
  readonly stats = { remotePublishes: 0, remoteDisconnects: 0, takenOver: 0, rechecks: 0 };
  /** Wakes this process's long polls of a command another process settled (CHAN-7). */
  onCommandSettled: ((commandId: string) => void) | undefined;
  /** Re-checks this process's connections of devices whose credentials changed elsewhere (DEV-8). */
  onRecheck: ((deviceIds: readonly string[]) => void) | undefined;

  constructor(bus: ClusterBus, broker: RoutedBroker) {
    this.#bus = bus;
    this.#broker = broker;
  }

  async start(): Promise<void> {
    await this.#bus.subscribe('broker', (message) => this.#receive(message));
  }

  /** Publishes platform → device here and in every other process. */
  publishToDevice(topic: string, payload: Buffer, options: { qos: 0 | 1; retain: boolean }): void {
    this.#broker.publishSystem(topic, payload, options);
    this.#bus.publish('broker', {
      t: 'publish',
      topic,
      payload: payload.toString('base64'),
      qos: options.qos,
      retain: options.retain,
    });
  }

  /** Ends a client's connection wherever it is; true when it was connected to this process. */
  disconnect(clientId: string, reasonCode: number): boolean {
    this.#bus.publish('broker', { t: 'disconnect', clientId, reasonCode });
    return this.#broker.disconnectClient(clientId, reasonCode);
  }

  /** Credentials or status of these devices changed: every other process re-checks its connections. */
  recheck(deviceIds: readonly string[]): void {
    this.#bus.publish('broker', { t: 'recheck', deviceIds: [...deviceIds] });
  }

  /** A command's status changed here: long polls waiting in other processes answer at once. */
  commandSettled(commandId: string): void {
    this.#bus.publish('broker', { t: 'command', commandId });
  }

  /** A client connected here: another process holding a connection with its client ID ends that one. */
  connected(clientId: string): void {
    this.#bus.publish('broker', { t: 'connected', clientId });
  }

  #receive(message: BusMessage): void {
    switch (message.t) {
      case 'publish': {
        const { topic, payload, qos, retain } = message;
        if (typeof topic !== 'string' || typeof payload !== 'string' || (qos !== 0 && qos !== 1)) return;
        this.stats.remotePublishes++;
        this.#broker.publishSystem(topic, Buffer.from(payload, 'base64'), {
          qos,
          retain: retain === true,
          persist: false,
        });
        return;
      }
      case 'disconnect': {
        const { clientId, reasonCode } = message;
        if (typeof clientId !== 'string' || typeof reasonCode !== 'number') return;
        if (this.#broker.disconnectClient(clientId, reasonCode)) this.stats.remoteDisconnects++;
        return;
      }
      case 'connected': {
        const { clientId } = message;
        if (typeof clientId !== 'string' || !this.#broker.isConnected(clientId)) return;
        this.stats.takenOver++;
        this.#broker.disconnectClient(clientId, SESSION_TAKEN_OVER);
        return;
      }
      case 'recheck': {
        const { deviceIds } = message;
        if (!Array.isArray(deviceIds) || !deviceIds.every((id) => typeof id === 'string')) return;
        this.stats.rechecks++;
        this.onRecheck?.(deviceIds);
        return;
      }
      case 'command':
        if (typeof message.commandId === 'string') this.onCommandSettled?.(message.commandId);
        return;
      case 'listeners-changed':
        this.#bus.refreshListeners('events');
        return;
      default:
    }
  }
}
