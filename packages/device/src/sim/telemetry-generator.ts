// Telemetry for simulated devices: values that satisfy a product's data-point schema (the `properties`
// of the product's `dataPoints`: bool, integer, number, string, enum with min/max/step/values/
// maxLength), each property drifting a little per message like a real sensor. Without a schema: a
// temperature, a humidity and a switch.

export interface SimProperty {
  readonly code: string;
  readonly type: 'bool' | 'integer' | 'number' | 'string' | 'enum';
  readonly min?: number;
  readonly max?: number;
  readonly step?: number;
  readonly maxLength?: number;
  readonly values?: readonly string[];
}

export interface TelemetrySchema {
  readonly properties: readonly SimProperty[];
}

export const DEFAULT_TELEMETRY_SCHEMA: TelemetrySchema = {
  properties: [
    { code: 'temperature', type: 'number', min: -20, max: 50, step: 0.1 },
    { code: 'humidity', type: 'integer', min: 0, max: 100 },
    { code: 'switch', type: 'bool' },
  ],
};

const TYPES = new Set(['bool', 'integer', 'number', 'string', 'enum']);
const CODE = /^[a-z][a-z0-9_]{0,31}$/;

export class SchemaFileError extends Error {}

/**
 * Reads a schema: the product's `dataPoints` object, a product (with `dataPoints`), or `{properties}`.
 * Only what generation needs is checked; read-only and read-write properties are both reported.
 */
export function parseTelemetrySchema(value: unknown): TelemetrySchema {
  const holder = value as { dataPoints?: { properties?: unknown } | null; properties?: unknown } | null;
  const list = holder?.dataPoints ? holder.dataPoints.properties : holder?.properties;
  if (!Array.isArray(list) || list.length === 0) {
    throw new SchemaFileError(
      'the schema has no properties (expected {properties: [...]} or a product with dataPoints)',
    );
  }
  const properties = list.map((raw: unknown, i): SimProperty => {
    const p = raw as Partial<Record<keyof SimProperty, unknown>> | null;
    const where = `properties[${i}]`;
    if (typeof p?.code !== 'string' || !CODE.test(p.code))
      throw new SchemaFileError(`${where}.code is missing or invalid`);
    if (typeof p.type !== 'string' || !TYPES.has(p.type)) {
      throw new SchemaFileError(`${where}.type must be one of bool, integer, number, string, enum`);
    }
    const num = (name: 'min' | 'max' | 'step' | 'maxLength') => {
      const v = p[name];
      if (v === undefined) return {};
      if (typeof v !== 'number' || !Number.isFinite(v)) throw new SchemaFileError(`${where}.${name} must be a number`);
      return { [name]: v };
    };
    const values = p.values;
    if (
      p.type === 'enum' &&
      (!Array.isArray(values) || values.length === 0 || !values.every((x) => typeof x === 'string'))
    ) {
      throw new SchemaFileError(`${where}.values must list the enum's strings`);
    }
    return {
      code: p.code,
      type: p.type as SimProperty['type'],
      ...num('min'),
      ...num('max'),
      ...num('step'),
      ...num('maxLength'),
      ...(p.type === 'enum' ? { values: values as string[] } : {}),
    };
  });
  return { properties };
}

/** Decimals of a step (0.1 → 1), so generated values print exactly (20.3, not 20.299999999999997). */
function decimalsOf(step: number): number {
  const text = String(step);
  const dot = text.indexOf('.');
  return dot < 0 ? 0 : Math.min(text.length - dot - 1, 10);
}

/** One device's telemetry stream: each call returns the next message. */
export class TelemetryGenerator {
  readonly #schema: TelemetrySchema;
  readonly #random: () => number;
  readonly #state = new Map<string, number>();
  #count = 0;

  constructor(schema: TelemetrySchema = DEFAULT_TELEMETRY_SCHEMA, random: () => number = Math.random) {
    this.#schema = schema;
    this.#random = random;
  }

  next(): Record<string, unknown> {
    this.#count++;
    const message: Record<string, unknown> = {};
    for (const p of this.#schema.properties) message[p.code] = this.#value(p);
    return message;
  }

  #value(p: SimProperty): unknown {
    switch (p.type) {
      case 'bool':
        return this.#random() < 0.5;
      case 'enum':
        return p.values![Math.floor(this.#random() * p.values!.length)]!;
      case 'string': {
        const text = `sim-${this.#count}`;
        return p.maxLength !== undefined ? text.slice(0, Math.max(0, p.maxLength)) : text;
      }
      case 'integer':
      case 'number': {
        const integer = p.type === 'integer';
        const min = p.min ?? (p.max !== undefined ? p.max - 100 : 0);
        const max = p.max ?? min + 100;
        const step = p.step ?? (integer ? 1 : 0.01);
        const base = p.min ?? 0;
        const steps = Math.max(0, Math.floor((max - base) / step + 1e-9));
        const first = Math.max(0, Math.ceil((min - base) / step - 1e-9));
        // A random walk of a few steps within [first, steps], starting anywhere.
        const previous = this.#state.get(p.code) ?? first + Math.floor(this.#random() * (steps - first + 1));
        const moved = Math.round(previous + (this.#random() - 0.5) * Math.max(2, (steps - first) / 20));
        const k = Math.min(steps, Math.max(first, moved));
        this.#state.set(p.code, k);
        const value = base + k * step;
        return integer ? Math.round(value) : Number(value.toFixed(decimalsOf(step)));
      }
    }
  }
}
