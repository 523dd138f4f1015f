// Small JSON documents the platform keeps or relays for devices: shadow state (CHAN-7), command
// parameters and results. Bounded in size and depth so that one device or one app cannot make the
// platform store, parse or send arbitrarily large or deep structures; merged the way AWS IoT Device
// Shadow merges updates (objects merge key by key, `null` deletes a key, anything else replaces).

export type JsonObject = { [key: string]: JsonValue };
export type JsonValue = string | number | boolean | null | JsonValue[] | JsonObject;

export interface DocumentLimits {
  /** Largest serialised size in bytes (UTF-8). */
  readonly maxBytes: number;
  /** Deepest nesting: a flat object is depth 1; arrays count as a level. */
  readonly maxDepth: number;
}

/** Shadow documents and command parameters: 8 KiB, depth 4 (AWS IoT allows 8 KiB and depth 6). */
export const DOCUMENT_LIMITS: DocumentLimits = { maxBytes: 8192, maxDepth: 4 };

const MAX_KEY_LENGTH = 64;
// Printable ASCII without quotes, backslash or spaces: keys end up in URLs, logs and UI labels.
const KEY_PATTERN = /^[A-Za-z0-9_][A-Za-z0-9_.:-]*$/;

export function isJsonObject(value: unknown): value is JsonObject {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * Checks a parsed JSON value against the limits; returns what is wrong, or null. `objectRequired`:
 * the top level must be an object (state and parameters are; a command result need not be).
 */
export function checkDocument(
  value: unknown,
  limits: DocumentLimits = DOCUMENT_LIMITS,
  options: { objectRequired?: boolean } = {},
): string | null {
  if ((options.objectRequired ?? true) && !isJsonObject(value)) return 'must be a JSON object';
  const problem = checkValue(value, 1, limits.maxDepth, '');
  if (problem !== null) return problem;
  const bytes = Buffer.byteLength(JSON.stringify(value), 'utf8');
  if (bytes > limits.maxBytes) return `is ${bytes} bytes; at most ${limits.maxBytes} are allowed`;
  return null;
}

function checkValue(value: unknown, depth: number, maxDepth: number, path: string): string | null {
  if (value === null || typeof value === 'string' || typeof value === 'boolean') return null;
  if (typeof value === 'number') return Number.isFinite(value) ? null : `${where(path)}is not a finite number`;
  if (typeof value !== 'object') return `${where(path)}is not a JSON value`;
  if (depth > maxDepth) return `${where(path)}nests deeper than ${maxDepth} levels`;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const problem = checkValue(value[i], depth + 1, maxDepth, `${path}[${i}]`);
      if (problem !== null) return problem;
    }
    return null;
  }
  for (const [key, child] of Object.entries(value)) {
    if (key.length === 0 || key.length > MAX_KEY_LENGTH || !KEY_PATTERN.test(key) || key === '__proto__') {
      return `key ${JSON.stringify(key.slice(0, MAX_KEY_LENGTH))}${path ? ` in ${path}` : ''} is not allowed (1-${MAX_KEY_LENGTH} characters: letters, digits, _ . : -)`;
    }
    const problem = checkValue(child, depth + 1, maxDepth, path ? `${path}.${key}` : key);
    if (problem !== null) return problem;
  }
  return null;
}

const where = (path: string) => (path ? `${path} ` : '');

/**
 * `base` updated by `update`: objects merge recursively, `null` deletes the key, arrays and scalars
 * replace. Neither input is modified; the result never holds `null` at an object key.
 */
export function mergeDocument(base: JsonObject, update: JsonObject): JsonObject {
  const out: JsonObject = { ...base };
  for (const [key, value] of Object.entries(update)) {
    // checkDocument refuses it; never let a key reach the prototype.
    if (key === '__proto__') continue;
    if (value === null) {
      delete out[key];
    } else if (isJsonObject(value)) {
      const current = out[key];
      out[key] = mergeDocument(isJsonObject(current) ? current : {}, value);
    } else {
      out[key] = value;
    }
  }
  return out;
}

/** What `desired` asks for that `reported` does not show yet (AWS IoT's `delta`). */
export function deltaOf(desired: JsonObject, reported: JsonObject): JsonObject {
  const out: JsonObject = {};
  for (const [key, want] of Object.entries(desired)) {
    const have = reported[key];
    if (isJsonObject(want) && isJsonObject(have)) {
      const nested = deltaOf(want, have);
      if (Object.keys(nested).length > 0) out[key] = nested;
    } else if (have === undefined || !jsonEqual(want, have)) {
      out[key] = want;
    }
  }
  return out;
}

/** Structural equality of JSON values (object key order does not matter). */
export function jsonEqual(a: JsonValue | undefined, b: JsonValue | undefined): boolean {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (Array.isArray(a) || Array.isArray(b)) {
    if (!Array.isArray(a) || !Array.isArray(b) || a.length !== b.length) return false;
    return a.every((item, i) => jsonEqual(item, b[i]));
  }
  const keys = Object.keys(a);
  if (keys.length !== Object.keys(b).length) return false;
  return keys.every((key) => Object.hasOwn(b, key) && jsonEqual(a[key], b[key]));
}

/** Parses stored JSON text that the platform wrote itself (an object). */
export function parseStoredObject(text: string | null | undefined): JsonObject {
  if (!text) return {};
  const value = JSON.parse(text) as unknown;
  return isJsonObject(value) ? value : {};
}
