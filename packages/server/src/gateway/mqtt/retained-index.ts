// Retained messages indexed by topic level, so a new subscription finds its retained messages by walking
// the filter's levels instead of testing every retained topic: a device subscribing to
// `devices/{id}/commands/#` costs the size of its own subtree, not the size of the whole broker.
// (qlobber matches a topic against stored filters; here it is the other way round.)
import type { StoredMessage } from './broker-store.ts';

interface Level {
  readonly children: Map<string, Level>;
  message: StoredMessage | undefined;
}

const newLevel = (): Level => ({ children: new Map(), message: undefined });

export class RetainedIndex {
  readonly #byTopic = new Map<string, StoredMessage>();
  readonly #root = newLevel();

  get size(): number {
    return this.#byTopic.size;
  }

  has(topic: string): boolean {
    return this.#byTopic.has(topic);
  }

  get(topic: string): StoredMessage | undefined {
    return this.#byTopic.get(topic);
  }

  set(topic: string, message: StoredMessage): void {
    this.#byTopic.set(topic, message);
    let level = this.#root;
    for (const name of topic.split('/')) {
      let child = level.children.get(name);
      if (!child) {
        child = newLevel();
        level.children.set(name, child);
      }
      level = child;
    }
    level.message = message;
  }

  delete(topic: string): boolean {
    if (!this.#byTopic.delete(topic)) return false;
    const names = topic.split('/');
    const path: Level[] = [this.#root];
    for (const name of names) path.push(path[path.length - 1]!.children.get(name)!);
    path[path.length - 1]!.message = undefined;
    // Prune levels left with neither a message nor children.
    for (let i = names.length; i > 0; i--) {
      const level = path[i]!;
      if (level.message !== undefined || level.children.size > 0) break;
      path[i - 1]!.children.delete(names[i - 1]!);
    }
    return true;
  }

  values(): IterableIterator<StoredMessage> {
    return this.#byTopic.values();
  }

  /**
   * Retained messages whose topic matches `filter` (a valid filter: checkTopicFilter). Topics starting
   * with '$' are not matched by a filter starting with a wildcard [MQTT-4.7.2-1].
   */
  match(filter: string): StoredMessage[] {
    const out: StoredMessage[] = [];
    this.#walk(this.#root, filter.split('/'), 0, out);
    return out;
  }

  #walk(level: Level, names: readonly string[], depth: number, out: StoredMessage[]): void {
    if (depth === names.length) {
      if (level.message) out.push(level.message);
      return;
    }
    const name = names[depth]!;
    if (name === '#') {
      // '#' matches the parent level too: "a/#" matches "a" [MQTT-4.7.1-2].
      if (depth > 0 && level.message) out.push(level.message);
      this.#collect(level, depth === 0, out);
      return;
    }
    if (name === '+') {
      for (const [childName, child] of level.children) {
        if (depth === 0 && childName.startsWith('$')) continue;
        this.#walk(child, names, depth + 1, out);
      }
      return;
    }
    const child = level.children.get(name);
    if (child) this.#walk(child, names, depth + 1, out);
  }

  /** Every message below `level`. */
  #collect(level: Level, skipDollar: boolean, out: StoredMessage[]): void {
    for (const [childName, child] of level.children) {
      if (skipDollar && childName.startsWith('$')) continue;
      if (child.message) out.push(child.message);
      this.#collect(child, false, out);
    }
  }
}
