// Product data-point schemas (DEV-2, S 8.1.1): typed properties, commands and events a product declares,
// the strict validation of a schema itself, and the pure checks every device message and every command
// goes through (telemetry over MQTT and HTTPS, desired state, commands, events). The checks return null
// when a value is acceptable, otherwise a short reason naming the data point (shown to the vendor or
// device, never containing more than the offending code and the rule it broke).

export type DataPointType = 'bool' | 'integer' | 'number' | 'string' | 'enum';
export const DATA_POINT_TYPES: readonly DataPointType[] = ['bool', 'integer', 'number', 'string', 'enum'];

export interface DataPointField {
  readonly code: string;
  readonly type: DataPointType;
  /** integer/number only. */
  readonly min?: number;
  readonly max?: number;
  /** integer/number only: values are min (or 0) plus a whole multiple of step. */
  readonly step?: number;
  /** string only: at most this many Unicode code points. */
  readonly maxLength?: number;
  /** enum only: the allowed values. */
  readonly values?: readonly string[];
  /** integer/number only, display unit such as "°C". */
  readonly unit?: string;
}

export interface DataPointProperty extends DataPointField {
  /** ro: reported by the device only; rw: also settable through the desired state. */
  readonly access: 'ro' | 'rw';
}

export interface DataPointCommand {
  readonly code: string;
  readonly params: readonly DataPointField[];
}

export interface DataPointEvent {
  readonly code: string;
  readonly params: readonly DataPointField[];
}

export interface DataPointSchema {
  readonly properties: readonly DataPointProperty[];
  readonly commands: readonly DataPointCommand[];
  readonly events: readonly DataPointEvent[];
}

/** What the checks need of a product. */
export interface SchemaHolder {
  readonly dataPoints: DataPointSchema | null;
}

export const DATA_POINT_CODE = /^[a-z][a-z0-9_]{0,31}$/;
export const MAX_SCHEMA_ENTRIES = 200;
export const MAX_PARAMS = 64;
const MAX_ENUM_VALUES = 100;
const MAX_STRING_LENGTH = 65_535;
const MAX_UNIT_LENGTH = 16;

export class ProductSchemaError extends Error {}

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function onlyKeys(where: string, value: Record<string, unknown>, allowed: readonly string[]): void {
  for (const key of Object.keys(value)) {
    if (!allowed.includes(key)) throw new ProductSchemaError(`${where}: unknown field '${key}'`);
  }
}

function finite(where: string, name: string, v: unknown, integer: boolean): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || (integer && !Number.isSafeInteger(v))) {
    throw new ProductSchemaError(`${where}.${name} must be ${integer ? 'a safe integer' : 'a finite number'}`);
  }
  return v;
}

function parseField(where: string, raw: unknown, withAccess: boolean): DataPointProperty | DataPointField {
  if (!isRecord(raw)) throw new ProductSchemaError(`${where} must be an object`);
  const common = ['code', 'type', 'min', 'max', 'step', 'maxLength', 'values', 'unit'];
  onlyKeys(where, raw, withAccess ? [...common, 'access'] : common);
  const { code, type } = raw;
  if (typeof code !== 'string' || !DATA_POINT_CODE.test(code)) {
    throw new ProductSchemaError(`${where}.code must match ${DATA_POINT_CODE.source}`);
  }
  if (typeof type !== 'string' || !(DATA_POINT_TYPES as readonly string[]).includes(type)) {
    throw new ProductSchemaError(`${where} ('${code}'): type must be one of ${DATA_POINT_TYPES.join(', ')}`);
  }
  const at = `${where} ('${code}')`;
  const numeric = type === 'integer' || type === 'number';
  const field: Record<string, unknown> = { code, type };
  for (const name of ['min', 'max', 'step'] as const) {
    if (raw[name] === undefined) continue;
    if (!numeric) throw new ProductSchemaError(`${at}: ${name} applies only to integer and number`);
    field[name] = finite(at, name, raw[name], type === 'integer');
  }
  if (field.min !== undefined && field.max !== undefined && (field.min as number) > (field.max as number)) {
    throw new ProductSchemaError(`${at}: min must not exceed max`);
  }
  if (field.step !== undefined && (field.step as number) <= 0) {
    throw new ProductSchemaError(`${at}: step must be greater than 0`);
  }
  if (raw.unit !== undefined) {
    if (!numeric) throw new ProductSchemaError(`${at}: unit applies only to integer and number`);
    if (typeof raw.unit !== 'string' || raw.unit.length < 1 || raw.unit.length > MAX_UNIT_LENGTH) {
      throw new ProductSchemaError(`${at}: unit must be 1-${MAX_UNIT_LENGTH} characters`);
    }
    field.unit = raw.unit;
  }
  if (raw.maxLength !== undefined) {
    if (type !== 'string') throw new ProductSchemaError(`${at}: maxLength applies only to string`);
    const n = raw.maxLength;
    if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > MAX_STRING_LENGTH) {
      throw new ProductSchemaError(`${at}: maxLength must be an integer from 1 to ${MAX_STRING_LENGTH}`);
    }
    field.maxLength = n;
  }
  if (type === 'enum') {
    const values = raw.values;
    if (
      !Array.isArray(values) ||
      values.length < 1 ||
      values.length > MAX_ENUM_VALUES ||
      !values.every((v) => typeof v === 'string' && v.length >= 1 && v.length <= 64)
    ) {
      throw new ProductSchemaError(`${at}: values must list 1-${MAX_ENUM_VALUES} strings of 1-64 characters`);
    }
    if (new Set(values).size !== values.length) throw new ProductSchemaError(`${at}: values must be unique`);
    field.values = [...(values as string[])];
  } else if (raw.values !== undefined) {
    throw new ProductSchemaError(`${at}: values applies only to enum`);
  }
  if (withAccess) {
    if (raw.access !== 'ro' && raw.access !== 'rw') throw new ProductSchemaError(`${at}: access must be ro or rw`);
    field.access = raw.access;
  }
  return field as unknown as DataPointField;
}

function parseList<T extends { code: string }>(
  where: string,
  raw: unknown,
  max: number,
  parse: (where: string, item: unknown) => T,
): T[] {
  if (raw === undefined) return [];
  if (!Array.isArray(raw)) throw new ProductSchemaError(`${where} must be an array`);
  if (raw.length > max) throw new ProductSchemaError(`${where} may hold at most ${max} entries`);
  const seen = new Set<string>();
  return raw.map((item, i) => {
    const parsed = parse(`${where}[${i}]`, item);
    if (seen.has(parsed.code)) throw new ProductSchemaError(`${where}[${i}]: duplicate code '${parsed.code}'`);
    seen.add(parsed.code);
    return parsed;
  });
}

function parseAction(where: string, raw: unknown): DataPointCommand {
  if (!isRecord(raw)) throw new ProductSchemaError(`${where} must be an object`);
  onlyKeys(where, raw, ['code', 'params']);
  if (typeof raw.code !== 'string' || !DATA_POINT_CODE.test(raw.code)) {
    throw new ProductSchemaError(`${where}.code must match ${DATA_POINT_CODE.source}`);
  }
  const params = parseList(`${where}.params`, raw.params, MAX_PARAMS, (w, item) => parseField(w, item, false));
  return { code: raw.code, params };
}

/**
 * Validates a data-point schema strictly (unknown fields, bad codes, duplicates, type-specific fields,
 * more than 200 entries per list) and returns it in canonical form; throws ProductSchemaError saying
 * which entry is wrong.
 */
export function parseDataPointSchema(raw: unknown): DataPointSchema {
  if (!isRecord(raw)) throw new ProductSchemaError('dataPoints must be an object');
  onlyKeys('dataPoints', raw, ['properties', 'commands', 'events']);
  return {
    properties: parseList('properties', raw.properties, MAX_SCHEMA_ENTRIES, (w, item) =>
      parseField(w, item, true),
    ) as DataPointProperty[],
    commands: parseList('commands', raw.commands, MAX_SCHEMA_ENTRIES, parseAction),
    events: parseList('events', raw.events, MAX_SCHEMA_ENTRIES, parseAction),
  };
}

/** Null when `value` fits the field, else why not. */
export function checkValue(field: DataPointField, value: unknown): string | null {
  const name = `'${field.code}'`;
  switch (field.type) {
    case 'bool':
      return typeof value === 'boolean' ? null : `${name} must be a boolean`;
    case 'string': {
      if (typeof value !== 'string') return `${name} must be a string`;
      if (field.maxLength !== undefined && [...value].length > field.maxLength) {
        return `${name} must be at most ${field.maxLength} characters`;
      }
      return null;
    }
    case 'enum':
      return typeof value === 'string' && field.values?.includes(value)
        ? null
        : `${name} must be one of ${(field.values ?? []).join(', ')}`;
    case 'integer':
    case 'number': {
      const integer = field.type === 'integer';
      if (typeof value !== 'number' || !Number.isFinite(value) || (integer && !Number.isSafeInteger(value))) {
        return `${name} must be ${integer ? 'an integer' : 'a number'}`;
      }
      if ((field.min !== undefined && value < field.min) || (field.max !== undefined && value > field.max)) {
        return `${name} must be from ${field.min ?? '-∞'} to ${field.max ?? '∞'}`;
      }
      if (field.step !== undefined) {
        const steps = (value - (field.min ?? 0)) / field.step;
        // Decimal steps (0.1) are inexact in binary: a relative tolerance accepts 20.3 for step 0.1.
        if (Math.abs(steps - Math.round(steps)) > 1e-9 * Math.max(1, Math.abs(steps))) {
          return `${name} must be a multiple of ${field.step}${field.min !== undefined ? ` from ${field.min}` : ''}`;
        }
      }
      return null;
    }
  }
}

function checkObject(
  what: string,
  fields: readonly DataPointField[],
  values: object,
  allowNull: boolean,
): string | null {
  if (typeof values !== 'object' || values === null || Array.isArray(values)) return `${what} must be a JSON object`;
  const byCode = new Map(fields.map((f) => [f.code, f]));
  for (const [code, value] of Object.entries(values)) {
    const field = byCode.get(code);
    if (!field) return `unknown data point '${code.slice(0, 64)}'`;
    if (allowNull && value === null) continue;
    const reason = checkValue(field, value);
    if (reason !== null) return reason;
  }
  return null;
}

/**
 * Telemetry (and reported state): every data point must be a declared property (ro or rw) with a value
 * of its type. A product with no declared properties accepts any JSON object (the behaviour before
 * schemas existed).
 */
export function checkTelemetry(product: SchemaHolder, payload: object): string | null {
  const properties = product.dataPoints?.properties ?? [];
  if (properties.length === 0) {
    return typeof payload === 'object' && payload !== null && !Array.isArray(payload)
      ? null
      : 'telemetry must be a JSON object';
  }
  return checkObject('telemetry', properties, payload, false);
}

/**
 * A desired state set by an app or operator: only rw properties; null clears a key. No declared
 * properties: any object.
 */
export function checkDesiredState(product: SchemaHolder, state: object): string | null {
  const properties = product.dataPoints?.properties ?? [];
  if (properties.length === 0) {
    return typeof state === 'object' && state !== null && !Array.isArray(state) ? null : 'state must be a JSON object';
  }
  const known = new Map(properties.map((p) => [p.code, p]));
  if (typeof state === 'object' && state !== null && !Array.isArray(state)) {
    for (const code of Object.keys(state)) {
      if (known.get(code)?.access === 'ro') return `data point '${code}' is read-only`;
    }
  }
  return checkObject(
    'state',
    properties.filter((p) => p.access === 'rw'),
    state,
    true,
  );
}

function checkAction(
  kind: 'command' | 'event',
  declared: readonly DataPointCommand[],
  name: string,
  params: unknown,
): string | null {
  if (declared.length === 0) {
    return params === undefined || (typeof params === 'object' && params !== null && !Array.isArray(params))
      ? null
      : `${kind} parameters must be a JSON object`;
  }
  const action = declared.find((a) => a.code === name);
  if (!action) return `unknown ${kind} '${String(name).slice(0, 64)}'`;
  // Declared parameters are optional; those present must fit, unknown ones are refused.
  return checkObject(`${kind} parameters`, action.params, params ?? {}, false);
}

/** A command to a device: declared (when the product declares any), with parameters of their types. */
export function checkCommand(product: SchemaHolder, name: string, params: unknown): string | null {
  return checkAction('command', product.dataPoints?.commands ?? [], name, params);
}

/** An event from a device: declared (when the product declares any), with parameters of their types. */
export function checkEvent(product: SchemaHolder, name: string, params: unknown): string | null {
  return checkAction('event', product.dataPoints?.events ?? [], name, params);
}
