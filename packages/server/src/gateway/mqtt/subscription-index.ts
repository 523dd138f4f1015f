// Topic-filter matching with qlobber (a maintained trie matcher) configured for MQTT wildcards.
import qlobber from 'qlobber';

export interface SubscriptionEntry {
  readonly clientId: string;
  readonly filter: string;
  readonly qos: 0 | 1;
  /** MQTT 5 No Local: do not send the client its own messages [MQTT-3.8.3-3]. */
  readonly noLocal: boolean;
}

export class SubscriptionIndex {
  readonly #matcher = new qlobber.Qlobber<SubscriptionEntry>({
    separator: '/',
    wildcard_one: '+',
    wildcard_some: '#',
    match_empty_levels: true,
  });
  // clientId → filter → entry, so an entry can be replaced or removed by identity.
  readonly #byClient = new Map<string, Map<string, SubscriptionEntry>>();

  add(entry: SubscriptionEntry): void {
    let filters = this.#byClient.get(entry.clientId);
    if (!filters) {
      filters = new Map();
      this.#byClient.set(entry.clientId, filters);
    }
    const previous = filters.get(entry.filter);
    if (previous) this.#matcher.remove(entry.filter, previous);
    filters.set(entry.filter, entry);
    this.#matcher.add(entry.filter, entry);
  }

  remove(clientId: string, filter: string): boolean {
    const filters = this.#byClient.get(clientId);
    const entry = filters?.get(filter);
    if (!filters || !entry) return false;
    this.#matcher.remove(filter, entry);
    filters.delete(filter);
    if (filters.size === 0) this.#byClient.delete(clientId);
    return true;
  }

  removeClient(clientId: string): void {
    const filters = this.#byClient.get(clientId);
    if (!filters) return;
    for (const [filter, entry] of filters) this.#matcher.remove(filter, entry);
    this.#byClient.delete(clientId);
  }

  countFor(clientId: string): number {
    return this.#byClient.get(clientId)?.size ?? 0;
  }

  has(clientId: string, filter: string): boolean {
    return this.#byClient.get(clientId)?.has(filter) ?? false;
  }

  /**
   * Subscribers of `topic`, one entry per client with the highest matching QoS [MQTT-3.3.5-1].
   * Topics beginning with '$' are not matched by filters starting with a wildcard [MQTT-4.7.2-1].
   */
  match(topic: string): Map<string, { qos: 0 | 1; noLocal: boolean }> {
    const dollar = topic.startsWith('$');
    const out = new Map<string, { qos: 0 | 1; noLocal: boolean }>();
    for (const entry of this.#matcher.match(topic)) {
      if (dollar && (entry.filter.startsWith('+') || entry.filter.startsWith('#'))) continue;
      const seen = out.get(entry.clientId);
      if (!seen) out.set(entry.clientId, { qos: entry.qos, noLocal: entry.noLocal });
      else {
        if (entry.qos > seen.qos) seen.qos = entry.qos;
        // Deliver if any matching subscription allows local delivery.
        seen.noLocal = seen.noLocal && entry.noLocal;
      }
    }
    return out;
  }
}
