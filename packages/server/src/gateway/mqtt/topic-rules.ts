// Topic name and topic filter rules (MQTT 3.1.1 / 5.0 section 4.7). mqtt-packet decodes but does not
// validate these, so the broker checks them before any side effect.

export interface TopicLimits {
  maxTopicLevels: number;
}

function hasForbiddenChars(value: string): boolean {
  // [MQTT-1.5.3-2] U+0000 must not appear; U+FFFD marks bytes that were not valid UTF-8 [MQTT-1.5.3-1].
  return value.includes('\u0000') || value.includes('\uFFFD');
}

/** A concrete topic a client publishes to. Returns a reason when invalid. */
export function checkTopicName(topic: string, limits: TopicLimits): string | null {
  if (topic.length === 0) return 'topic name is empty'; // [MQTT-4.7.3-1]
  if (topic.includes('+') || topic.includes('#')) return 'topic name contains a wildcard'; // [MQTT-3.3.2-2]
  if (hasForbiddenChars(topic)) return 'topic name contains a forbidden character';
  if (topic.split('/').length > limits.maxTopicLevels) return 'topic name has too many levels';
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
