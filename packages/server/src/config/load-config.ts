// Configuration: defaults < file < environment < explicit overrides; validated synchronously against
// the schema, errors name the dotted key, then the result is deep-frozen.
import { existsSync, readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { resolve } from 'node:path';
import type { TSchema } from 'typebox';
import { Value } from 'typebox/value';
import { CastellanError } from '../errors/index.ts';
import { assertTlsGroups } from '../lib/tls-groups.ts';
import {
  type CastellanConfig,
  ConfigSchema,
  ENV_ALIASES,
  SECRET_CONFIG_KEYS,
  SECRET_KEY_RULES,
} from './config-schema.ts';

export interface LoadConfigOptions {
  /** Explicit config file path; otherwise CASTELLAN_CONFIG, then ./castellan.config.json if present. */
  file?: string;
  env?: NodeJS.ProcessEnv;
  /** Programmatic overrides (tests, CLI flags), as a partial config object. */
  overrides?: DeepPartial<CastellanConfig>;
  cwd?: string;
}

export type DeepPartial<T> = { [K in keyof T]?: T[K] extends object ? DeepPartial<T[K]> : T[K] };

interface LeafInfo {
  path: string;
  type: string;
}

function leaves(schema: TSchema, prefix = ''): LeafInfo[] {
  const s = schema as { type?: string; properties?: Record<string, TSchema>; anyOf?: TSchema[] };
  if (s.type === 'object' && s.properties) {
    return Object.entries(s.properties).flatMap(([k, v]) => leaves(v, prefix ? `${prefix}.${k}` : k));
  }
  const type = s.type ?? (s.anyOf ? 'string' : 'string');
  return [{ path: prefix, type }];
}

/** Every configuration key with its environment variable name. */
export const CONFIG_KEYS: readonly (LeafInfo & { env: string })[] = leaves(ConfigSchema).map((l) => ({
  ...l,
  env: `CASTELLAN_${l.path
    .replace(/\./g, '_')
    .replace(/([a-z0-9])([A-Z])/g, '$1_$2')
    .toUpperCase()}`,
}));

const ENV_TO_PATH = new Map<string, LeafInfo>([
  ...CONFIG_KEYS.map((k) => [k.env, k] as const),
  ...Object.entries(ENV_ALIASES).map(([env, path]) => [env, CONFIG_KEYS.find((k) => k.path === path)!] as const),
]);

// Environment variables that configure the launcher or tooling, not the platform.
const NON_CONFIG_ENV = new Set(['CASTELLAN_CONFIG', 'CASTELLAN_WORKER_INDEX']);

function invalid(path: string, reason: string): CastellanError {
  return new CastellanError('ERR_CONFIG_INVALID', {
    message: `Invalid configuration: ${path || '(root)'} ${reason}`,
  });
}

function setPath(target: Record<string, unknown>, path: string, value: unknown): void {
  const parts = path.split('.');
  let node = target;
  for (const part of parts.slice(0, -1)) {
    if (typeof node[part] !== 'object' || node[part] === null) node[part] = {};
    node = node[part] as Record<string, unknown>;
  }
  node[parts.at(-1)!] = value;
}

function fromEnv(env: NodeJS.ProcessEnv): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [alias, path] of Object.entries(ENV_ALIASES)) {
    const canonical = CONFIG_KEYS.find((k) => k.path === path)!.env;
    if (env[alias] !== undefined && env[canonical] !== undefined && env[alias] !== env[canonical]) {
      throw invalid(path, `is set differently by ${alias} and ${canonical}; set only one`);
    }
  }
  for (const [name, raw] of Object.entries(env)) {
    if (raw === undefined) continue;
    const leaf = ENV_TO_PATH.get(name);
    if (!leaf) {
      if (name.startsWith('CASTELLAN_') && !NON_CONFIG_ENV.has(name)) {
        throw invalid(name, 'is not a known configuration variable (see docs/configuration.md)');
      }
      continue;
    }
    let value: unknown = raw;
    if (leaf.type === 'integer' || leaf.type === 'number') {
      if (!/^-?\d+(\.\d+)?$/.test(raw.trim())) throw invalid(leaf.path, `must be a number (from ${name})`);
      value = Number(raw);
    } else if (leaf.type === 'array' && arrayOfObjects(leaf.path)) {
      // Lists of objects (accounts.oidcProviders) are JSON. The parser's message is not repeated: it
      // quotes the text, which may hold a secret.
      try {
        value = JSON.parse(raw) as unknown;
      } catch {
        throw invalid(leaf.path, `must be a JSON array of objects (from ${name})`);
      }
      if (!Array.isArray(value)) throw invalid(leaf.path, `must be a JSON array of objects (from ${name})`);
    } else if (leaf.type === 'array') {
      value = raw
        .split(',')
        .map((part) => part.trim())
        .filter((part) => part !== '');
    } else if (leaf.type === 'boolean') {
      if (!['true', 'false', '1', '0'].includes(raw)) throw invalid(leaf.path, `must be true or false (from ${name})`);
      value = raw === 'true' || raw === '1';
    }
    setPath(out, leaf.path, value);
  }
  return out;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function merge(base: Record<string, unknown>, over: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(over)) {
    if (v === undefined) continue;
    out[k] = isPlainObject(v) && isPlainObject(out[k]) ? merge(out[k], v) : v;
  }
  return out;
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object') {
    for (const v of Object.values(value)) deepFreeze(v);
    Object.freeze(value);
  }
  return value;
}

function emptySkeleton(): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const k of CONFIG_KEYS) {
    const parts = k.path.split('.');
    if (parts.length > 1) setPath(out, parts.slice(0, -1).join('.'), {});
  }
  return out;
}

function isCidr(value: string): boolean {
  const [address, bits, extra] = value.split('/');
  const family = isIP(address ?? '');
  if (family === 0 || extra !== undefined) return false;
  if (bits === undefined) return true;
  return /^\d{1,3}$/.test(bits) && Number(bits) <= (family === 4 ? 32 : 128);
}

function arrayOfObjects(path: string): boolean {
  let node = ConfigSchema as unknown as { properties?: Record<string, unknown>; items?: { type?: string } };
  for (const part of path.split('.')) {
    const next = node.properties?.[part];
    if (!next) return false;
    node = next;
  }
  return node.items?.type === 'object';
}

function literalsAt(path: string): string[] | null {
  let node = ConfigSchema as unknown as {
    properties?: Record<string, unknown>;
    anyOf?: { const?: unknown }[];
  };
  for (const part of path.split('.')) {
    const next = node.properties?.[part];
    if (!next) return null;
    node = next;
  }
  return node.anyOf?.every((s) => s.const !== undefined) ? node.anyOf.map((s) => String(s.const)) : null;
}

/** Loads, validates and freezes the configuration. Throws ERR_CONFIG_INVALID naming the key. */
export function loadConfig(options: LoadConfigOptions = {}): Readonly<CastellanConfig> {
  const env = options.env ?? process.env;
  const cwd = options.cwd ?? process.cwd();
  let fileValue: Record<string, unknown> = {};
  const explicit = options.file ?? env.CASTELLAN_CONFIG;
  const file = explicit ? resolve(cwd, explicit) : resolve(cwd, 'castellan.config.json');
  if (explicit || existsSync(file)) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (error) {
      throw invalid('(file)', `cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? 'error'}`);
    }
    try {
      fileValue = JSON.parse(text) as Record<string, unknown>;
    } catch (error) {
      throw invalid('(file)', `${file} is not valid JSON: ${(error as Error).message}`);
    }
    if (!isPlainObject(fileValue)) throw invalid('(file)', `${file} must hold a JSON object`);
  }
  const merged = merge(merge(merge(emptySkeleton(), fileValue), fromEnv(env)), options.overrides ?? {});
  // Secrets are checked first and against a stated rule, so their values never reach a message.
  for (const [path, { pattern, rule }] of Object.entries(SECRET_KEY_RULES)) {
    const value = path
      .split('.')
      .reduce<unknown>((node, part) => (isPlainObject(node) ? node[part] : undefined), merged);
    if (value !== undefined && (typeof value !== 'string' || !pattern.test(value))) throw invalid(path, rule);
  }
  const withDefaults = Value.Default(ConfigSchema, merged) as Record<string, unknown>;
  const first =
    [...Value.Errors(ConfigSchema, withDefaults)].find((e) => e.keyword !== 'boolean') ??
    [...Value.Errors(ConfigSchema, withDefaults)][0];
  if (first) {
    // Array elements are named as in JavaScript: accounts.oidcProviders[0].issuer.
    const path = first.instancePath
      .slice(1)
      .replace(/\//g, '.')
      .replace(/\.(\d+)(?=\.|$)/g, '[$1]');
    const params = first.params as { additionalProperties?: string[] };
    if (first.keyword === 'additionalProperties' && params.additionalProperties?.length) {
      const key = path ? `${path}.${params.additionalProperties[0]}` : params.additionalProperties[0]!;
      throw invalid(key, 'is not a known configuration key');
    }
    // Never echo a secret's value back, even when it is wrong.
    if (SECRET_CONFIG_KEYS.has(path.replace(/\[\d+\]/g, '[]'))) throw invalid(path, 'is invalid');
    const allowed = literalsAt(path.replace(/\[\d+\]/g, ''));
    throw invalid(path, allowed ? `must be one of: ${allowed.join(', ')}` : first.message);
  }
  for (const listener of ['http', 'mqtt'] as const) {
    for (const list of ['allow', 'deny'] as const) {
      const entries = (withDefaults[listener] as Record<string, string[]>)[list]!;
      entries.forEach((entry, i) => {
        if (!isCidr(entry)) throw invalid(`${listener}.${list}[${i}]`, `is not an IP address or CIDR range: ${entry}`);
      });
    }
  }
  for (const list of ['httpAllow', 'httpDeny'] as const) {
    (withDefaults.secureChannel as CastellanConfig['secureChannel'])[list].forEach((entry, i) => {
      if (!isCidr(entry)) throw invalid(`secureChannel.${list}[${i}]`, `is not an IP address or CIDR range: ${entry}`);
    });
  }
  checkOidcProviders((withDefaults.accounts as CastellanConfig['accounts']).oidcProviders);
  assertTlsGroups((withDefaults.tls as CastellanConfig['tls']).groups);
  checkCluster(withDefaults as unknown as CastellanConfig);
  return deepFreeze(withDefaults as CastellanConfig);
}

/** Scale mode (RES-2) shares state through PostgreSQL and Redis: both must be configured. */
function checkCluster(config: CastellanConfig): void {
  if (config.cluster.workers > 1 && !config.cluster.enabled) {
    throw invalid('cluster.workers', 'above 1 needs cluster.enabled (scale mode)');
  }
  if (!config.cluster.enabled) return;
  if (!/^postgres(ql)?:\/\//.test(config.database.url)) {
    throw invalid('cluster.enabled', 'needs a PostgreSQL database.url (processes share one database)');
  }
  if (!config.redis.url) throw invalid('cluster.enabled', 'needs redis.url (processes share one Redis)');
}

/**
 * An issuer is an https URL without query or fragment (OpenID Connect Discovery 1.0 section 2): over
 * plain HTTP anyone on the path could substitute the keys that sign ID tokens. IDs name routes, so
 * they are unique.
 */
function checkOidcProviders(providers: CastellanConfig['accounts']['oidcProviders']): void {
  const seen = new Set<string>();
  providers.forEach((provider, i) => {
    const at = `accounts.oidcProviders[${i}]`;
    let url: URL | null = null;
    try {
      url = new URL(provider.issuer);
    } catch {
      // reported below
    }
    if (!url || url.protocol !== 'https:' || url.search || url.hash || url.username || url.password) {
      throw invalid(`${at}.issuer`, 'must be an https:// URL without query, fragment or credentials');
    }
    if (seen.has(provider.id)) throw invalid(`${at}.id`, `repeats the id ${provider.id}; ids must be unique`);
    seen.add(provider.id);
  });
}

/** The configuration with secrets replaced, safe to print. */
export function redactConfig(config: CastellanConfig): Record<string, unknown> {
  const copy = structuredClone(config) as unknown as Record<string, unknown>;
  // `name[]` in a secret's path stands for every element of the array `name`.
  const redact = (node: Record<string, unknown>, parts: string[]): void => {
    const [head, ...rest] = parts;
    if (!head || !isPlainObject(node)) return;
    if (head.endsWith('[]')) {
      const list = node[head.slice(0, -2)];
      if (Array.isArray(list)) for (const item of list) redact(item as Record<string, unknown>, rest);
    } else if (rest.length > 0) {
      redact(node[head] as Record<string, unknown>, rest);
    } else if (node[head]) {
      node[head] = '[redacted]';
    }
  };
  for (const path of SECRET_CONFIG_KEYS) redact(copy, path.split('.'));
  return copy;
}

/** The `mqtt.*` section with every default: the broker limits of a broker started without a config file. */
export function defaultMqttConfig(): CastellanConfig['mqtt'] {
  return Value.Default(ConfigSchema.properties.mqtt, {}) as CastellanConfig['mqtt'];
}
