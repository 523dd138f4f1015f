// Topic name and topic filter rules (MQTT 3.1.1 / 5.0 section 4.7). mqtt-packet decodes but does not
// validate these, so the broker checks them before any side effect.

export interface TopicLimits {
  maxTopicLevels: number;
}

function hasForbiddenChars(value: string): boolean {
  // [MQTT-1.5.4-2] U+0000 must not appear. Ill-formed UTF-8 never gets this far: the packet validator
  // checks the raw bytes (mqtt-packet would have decoded them to U+FFFD, a legitimate character).
  return value.includes('\u0000');
}

/** A concrete topic a client publishes to. Returns a reason when invalid. */
export function checkTopicName(topic: string, limits: TopicLimits): string | null {
  if (topic.length === 0) return 'topic name is empty'; // [MQTT-4.7.3-1]
  if (topic.includes('+') || topic.includes('#')) return 'topic name contains a wildcard'; // [MQTT-3.3.2-2]
  if (hasForbiddenChars(topic)) return 'topic name contains a forbidden character';
  // Counted without splitting: this runs for every PUBLISH.
  let levels = 1;
  for (let i = topic.indexOf('/'); i !== -1; i = topic.indexOf('/', i + 1)) levels++;
  if (levels > limits.maxTopicLevels) return 'topic name has too many levels';
  return null;
}

/** A subscription filter. Returns a reason when invalid. */
export function checkTopicFilter(filter: string, limits: TopicLimits): string | null {
  if (filter.length === 0) return 'topic filter is empty'; // [MQTT-4.7.3-1]
  if (hasForbiddenChars(filter)) return 'topic filter contains a forbidden character';
  const levels = filter.split('/');
  if (levels.length > limits.maxTopicLevels) return 'topic filter has too many levels';
  for (let i = 0; i < levels.length; i++) {
    const level = levels[i]!;
    // [MQTT-4.7.1-2] '#' must be the last character and occupy a whole level.
    if (level.includes('#') && (level !== '#' || i !== levels.length - 1)) return "'#' must be the last level";
    // [MQTT-4.7.1-3] '+' must occupy a whole level.
    if (level.includes('+') && level !== '+') return "'+' must occupy a whole level";
  }
  return null;
}

export function isSharedSubscription(filter: string): boolean {
  return filter.startsWith('$share/');
}

/**
 * `$share/{ShareName}/{filter}` split into its parts; null when the share name is empty or holds '/',
 * '+' or '#', or no filter follows [MQTT-4.8.2-1] [MQTT-4.8.2-2].
 */
export function parseSharedSubscription(filter: string): { group: string; filter: string } | null {
  const slash = filter.indexOf('/', 7);
  if (slash <= 7) return null;
  const group = filter.slice(7, slash);
  if (group.includes('+') || group.includes('#')) return null;
  const rest = filter.slice(slash + 1);
  if (rest.length === 0) return null;
  return { group, filter: rest };
}

/**
 * Does a topic name match a (valid) topic filter (4.7)? Topics beginning with '$' are not matched by
 * filters beginning with a wildcard [MQTT-4.7.2-1]. Used for retained messages at subscribe time.
 */
export function topicMatches(filter: string, topic: string): boolean {
  if (topic.charCodeAt(0) === 0x24 /* $ */) {
    const first = filter.charCodeAt(0);
    if (first === 0x2b /* + */ || first === 0x23 /* # */) return false;
  }
  let f = 0;
  let t = 0;
  const fl = filter.length;
  const tl = topic.length;
  while (f < fl) {
    const c = filter.charCodeAt(f);
    if (c === 0x23 /* # */) return true; // matches the parent level and everything below [MQTT-4.7.1-2]
    if (c === 0x2b /* + */) {
      // One whole level, possibly empty.
      while (t < tl && topic.charCodeAt(t) !== 0x2f) t++;
      f++;
    } else {
      if (t >= tl) {
        // "a/#" also matches "a": the filter ends in "/#" right here.
        return c === 0x2f && f + 2 === fl && filter.charCodeAt(f + 1) === 0x23;
      }
      if (topic.charCodeAt(t) !== c) return false;
      f++;
      t++;
    }
  }
  return t === tl;
}
