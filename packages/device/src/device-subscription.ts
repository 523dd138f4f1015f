// One topic filter the SDK keeps subscribed at QoS 1 (commands, desired state): subscribed once on
// first use, again after a reconnect (clean start), and a refusal leaves it unsubscribed so the next
// use retries.
import type { MqttClient } from 'mqtt';

export class DeviceSubscription {
  readonly #mqtt: Pick<MqttClient, 'subscribeAsync'>;
  readonly #filter: string;
  readonly #what: string;
  #pending: Promise<void> | undefined;

  /** `what` names the subscription in the error when the platform refuses it. */
  constructor(mqtt: Pick<MqttClient, 'subscribeAsync'>, filter: string, what: string) {
    this.#mqtt = mqtt;
    this.#filter = filter;
    this.#what = what;
  }

  /** True once a subscription was asked for (it may still be in flight). */
  get requested(): boolean {
    return this.#pending !== undefined;
  }

  /** Subscribes unless already subscribed; resolves once the platform granted it. */
  ensure(): Promise<void> {
    this.#pending ??= this.#mqtt
      .subscribeAsync(this.#filter, { qos: 1 })
      .then((granted) => {
        if (granted.some((g) => g.qos > 1)) throw new Error(`subscription to ${this.#what} refused`);
      })
      .catch((error: unknown) => {
        this.#pending = undefined;
        throw error;
      });
    return this.#pending;
  }

  /** Subscribes again after a new connection, if it was subscribed before. */
  async renew(): Promise<void> {
    if (this.#pending === undefined) return;
    this.#pending = undefined;
    await this.ensure();
  }
}
