// Per-tenant `$SYS` topics: every interval, for each tenant with devices connected to this process,
// the broker publishes that tenant's own figures under `$SYS/tenants/{vendorId}/broker/...` (retained,
// QoS 0). A tenant only ever sees its own subtree (the subscribe ACL in device-broker-hooks.ts), so
// nothing here may mix tenants: each message carries one tenant's count and broker-wide facts that say
// nothing about other tenants (uptime, version). Clients can never publish to `$` topics.
import type { MqttBroker } from './mqtt/index.ts';

export const SYS_TENANTS_ROOT = '$SYS/tenants';

/** The subtree of one tenant; a device may subscribe only to filters below it. */
export function sysTenantPrefix(vendorId: string): string {
  return `${SYS_TENANTS_ROOT}/${vendorId}/`;
}

export const sysTopic = {
  connectedClients: (vendorId: string) => `${sysTenantPrefix(vendorId)}broker/clients/connected`,
  uptime: (vendorId: string) => `${sysTenantPrefix(vendorId)}broker/uptime`,
  version: (vendorId: string) => `${sysTenantPrefix(vendorId)}broker/version`,
};

export interface SysTopicsPublisherOptions {
  broker: Pick<MqttBroker, 'publishSystem'>;
  /** Devices connected to this process per tenant (vendor ID → count). */
  connectedByTenant: () => ReadonlyMap<string, number>;
  version: string;
  /** Default 10 s. */
  intervalMs?: number;
  now?: () => number;
}

export class SysTopicsPublisher {
  readonly #o: SysTopicsPublisherOptions;
  readonly #now: () => number;
  readonly #startedAt: number;
  /** Tenants published last time: one whose last device left gets a final count of 0. */
  #published = new Set<string>();
  #timer: NodeJS.Timeout | undefined;

  constructor(options: SysTopicsPublisherOptions) {
    this.#o = options;
    this.#now = options.now ?? Date.now;
    this.#startedAt = this.#now();
  }

  start(): void {
    if (this.#timer) return;
    this.#timer = setInterval(() => this.publishNow(), this.#o.intervalMs ?? 10_000);
    this.#timer.unref();
  }

  /** Publishes every tenant's figures now (also called by the timer). */
  publishNow(): void {
    const counts = this.#o.connectedByTenant();
    const uptime = Buffer.from(String(Math.floor((this.#now() - this.#startedAt) / 1000)));
    const version = Buffer.from(this.#o.version);
    const publish = (topic: string, payload: Buffer) =>
      this.#o.broker.publishSystem(topic, payload, { retain: true, qos: 0 });
    for (const [vendorId, count] of counts) {
      if (count <= 0 || !isTopicLevel(vendorId)) continue;
      publish(sysTopic.connectedClients(vendorId), Buffer.from(String(count)));
      publish(sysTopic.uptime(vendorId), uptime);
      publish(sysTopic.version(vendorId), version);
    }
    for (const vendorId of this.#published) {
      if (!((counts.get(vendorId) ?? 0) > 0)) publish(sysTopic.connectedClients(vendorId), Buffer.from('0'));
    }
    this.#published = new Set([...counts].filter(([id, n]) => n > 0 && isTopicLevel(id)).map(([id]) => id));
  }

  stop(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }
}

/** A vendor ID usable as one topic level: no separator or wildcard could widen the subtree. */
export function isTopicLevel(value: string): boolean {
  return value.length > 0 && !/[/+#]/.test(value) && !value.includes('\u0000');
}
