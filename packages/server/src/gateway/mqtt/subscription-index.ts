// Topic-filter matching with qlobber (a maintained trie matcher) configured for MQTT wildcards, plus
// shared subscriptions (MQTT 5 4.8.2): a `$share/{group}/{filter}` group sits in the trie once and each
// matching message goes to one of its members, round robin.
import qlobber from 'qlobber';

export interface SubscriptionEntry {
  readonly clientId: string;
  /** As subscribed (the identity of the subscription), e.g. `a/+` or `$share/g/a/+`. */
  readonly filter: string;
  /** The part that matches topics: `filter` without a `$share/{group}/` prefix. */
  readonly topicFilter: string;
  /** Share name of a shared subscription; undefined otherwise. */
  readonly group: string | undefined;
  readonly qos: 0 | 1 | 2;
  /** MQTT 5 No Local: do not send the client its own messages [MQTT-3.8.3-3]. */
  readonly noLocal: boolean;
  /** MQTT 5 Retain As Published: keep the publisher's RETAIN flag when forwarding [MQTT-3.3.1-12]. */
  readonly retainAsPublished: boolean;
  readonly retainHandling: 0 | 1 | 2;
  /** MQTT 5 Subscription Identifier, 1..268435455. */
  readonly subscriptionIdentifier: number | undefined;
  /** [subscriptionIdentifier] or undefined, so a single match needs no allocation. */
  readonly identifiers: readonly number[] | undefined;
}

/** What one client gets for one message: the aggregate of its matching (non-shared) subscriptions. */
export interface SubscriptionMatch {
  readonly clientId: string;
  readonly qos: 0 | 1 | 2;
  readonly noLocal: boolean;
  readonly retainAsPublished: boolean;
  /** Identifiers of every matching subscription of this client [MQTT-3.3.4-3]. */
  readonly identifiers: readonly number[] | undefined;
}

interface SharedGroup {
  readonly shared: true;
  readonly key: string;
  readonly topicFilter: string;
  readonly members: SubscriptionEntry[];
  next: number;
}

type Slot = SubscriptionEntry | SharedGroup;

function isGroup(slot: Slot): slot is SharedGroup {
  return (slot as SharedGroup).shared === true;
}

export function subscriptionEntry(
  fields: Omit<SubscriptionEntry, 'identifiers' | 'topicFilter' | 'group'> & {
    topicFilter?: string;
    group?: string | undefined;
  },
): SubscriptionEntry {
  return {
    ...fields,
    topicFilter: fields.topicFilter ?? fields.filter,
    group: fields.group,
    identifiers: fields.subscriptionIdentifier === undefined ? undefined : [fields.subscriptionIdentifier],
  };
}

export class SubscriptionIndex {
  readonly #matcher = new qlobber.Qlobber<Slot>({
    separator: '/',
    wildcard_one: '+',
    wildcard_some: '#',
    match_empty_levels: true,
  });
  // clientId → filter → entry, so an entry can be replaced or removed by identity.
  readonly #byClient = new Map<string, Map<string, SubscriptionEntry>>();
  readonly #groups = new Map<string, SharedGroup>();

  /** Adds or replaces a client's subscription; returns the entry it replaced. */
  add(entry: SubscriptionEntry): SubscriptionEntry | undefined {
    let filters = this.#byClient.get(entry.clientId);
    if (!filters) {
      filters = new Map();
      this.#byClient.set(entry.clientId, filters);
    }
    const previous = filters.get(entry.filter);
    if (previous) this.#unindex(previous);
    filters.set(entry.filter, entry);
    this.#index(entry);
    return previous;
  }

  #index(entry: SubscriptionEntry): void {
    if (entry.group === undefined) {
      this.#matcher.add(entry.topicFilter, entry);
      return;
    }
    const key = `${entry.group}\u0000${entry.topicFilter}`;
    let group = this.#groups.get(key);
    if (!group) {
      group = { shared: true, key, topicFilter: entry.topicFilter, members: [], next: 0 };
      this.#groups.set(key, group);
      this.#matcher.add(entry.topicFilter, group);
    }
    group.members.push(entry);
  }

  #unindex(entry: SubscriptionEntry): void {
    if (entry.group === undefined) {
      this.#matcher.remove(entry.topicFilter, entry);
      return;
    }
    const group = this.#groups.get(`${entry.group}\u0000${entry.topicFilter}`);
    if (!group) return;
    const at = group.members.indexOf(entry);
    if (at >= 0) group.members.splice(at, 1);
    if (group.members.length === 0) {
      this.#groups.delete(group.key);
      this.#matcher.remove(group.topicFilter, group);
    }
  }

  remove(clientId: string, filter: string): boolean {
    const filters = this.#byClient.get(clientId);
    const entry = filters?.get(filter);
    if (!filters || !entry) return false;
    this.#unindex(entry);
    filters.delete(filter);
    if (filters.size === 0) this.#byClient.delete(clientId);
    return true;
  }

  removeClient(clientId: string): void {
    const filters = this.#byClient.get(clientId);
    if (!filters) return;
    for (const entry of filters.values()) this.#unindex(entry);
    this.#byClient.delete(clientId);
  }

  countFor(clientId: string): number {
    return this.#byClient.get(clientId)?.size ?? 0;
  }

  has(clientId: string, filter: string): boolean {
    return this.#byClient.get(clientId)?.has(filter) ?? false;
  }

  get(clientId: string, filter: string): SubscriptionEntry | undefined {
    return this.#byClient.get(clientId)?.get(filter);
  }

  /** A client's subscriptions (e.g. to write a session to the store). */
  entriesFor(clientId: string): Iterable<SubscriptionEntry> {
    return this.#byClient.get(clientId)?.values() ?? [];
  }

  /**
   * Recipients of `topic`: per client, one match with the highest QoS of its matching subscriptions
   * [MQTT-3.3.4-2] and all their identifiers [MQTT-3.3.4-3]; per shared group, one member chosen round
   * robin, preferring members that `online` says are connected (MQTT 5 4.8.2). Topics beginning with
   * '$' are not matched by filters starting with a wildcard [MQTT-4.7.2-1].
   */
  match(topic: string, online: (clientId: string) => boolean): SubscriptionMatch[] {
    const slots = this.#matcher.match(topic);
    const out: SubscriptionMatch[] = [];
    if (slots.length === 0) return out;
    const dollar = topic.charCodeAt(0) === 0x24;
    // Client → index in `out` of its aggregate; only needed when several slots match.
    let seen: Map<string, number> | undefined;
    for (const slot of slots) {
      if (dollar) {
        const first = slot.topicFilter.charCodeAt(0);
        if (first === 0x2b || first === 0x23) continue;
      }
      if (isGroup(slot)) {
        const member = pickMember(slot, online);
        if (member) out.push(member);
        continue;
      }
      if (slots.length === 1) {
        out.push(slot);
        break;
      }
      seen ??= new Map();
      const at = seen.get(slot.clientId);
      if (at === undefined) {
        seen.set(slot.clientId, out.length);
        out.push(slot);
        continue;
      }
      const prior = out[at]!;
      const ids =
        prior.identifiers && slot.identifiers
          ? [...prior.identifiers, ...slot.identifiers]
          : (prior.identifiers ?? slot.identifiers);
      out[at] = {
        clientId: slot.clientId,
        qos: slot.qos > prior.qos ? slot.qos : prior.qos,
        // Deliver if any matching subscription allows local delivery / keeps the retain flag.
        noLocal: prior.noLocal && slot.noLocal,
        retainAsPublished: prior.retainAsPublished || slot.retainAsPublished,
        identifiers: ids,
      };
    }
    return out;
  }
}

function pickMember(group: SharedGroup, online: (clientId: string) => boolean): SubscriptionEntry | undefined {
  const members = group.members;
  const n = members.length;
  if (n === 0) return undefined;
  const start = group.next % n;
  for (let i = 0; i < n; i++) {
    const member = members[(start + i) % n]!;
    if (online(member.clientId)) {
      group.next = (start + i + 1) % n;
      return member;
    }
  }
  // Nobody connected: the next member's session keeps it (queued, as for any offline session).
  group.next = (start + 1) % n;
  return members[start];
}
