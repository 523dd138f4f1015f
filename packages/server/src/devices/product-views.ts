// Route schemas and presenters of products v2 (DEV-2): security level, authentication modes, the
// data-point schema and telemetry retention. The data-point schema is accepted here as any object and
// validated strictly by parseDataPointSchema, so every schema error carries ERR_PRODUCT_SCHEMA_INVALID
// and names the entry; responses describe it exactly.
import { Type } from 'typebox';
import { StrictObject } from '../http/index.ts';
import type { Product } from './devices-service.ts';
import { DATA_POINT_TYPES } from './product-schema.ts';

const Code = Type.String({ pattern: '^[a-z][a-z0-9_]{0,31}$' });
const FieldView = {
  code: Code,
  type: Type.Union(DATA_POINT_TYPES.map((t) => Type.Literal(t))),
  min: Type.Optional(Type.Number()),
  max: Type.Optional(Type.Number()),
  step: Type.Optional(Type.Number()),
  maxLength: Type.Optional(Type.Integer()),
  values: Type.Optional(Type.Array(Type.String())),
  unit: Type.Optional(Type.String()),
};
const ActionView = StrictObject({ code: Code, params: Type.Array(StrictObject(FieldView)) });

export const DataPointsView = StrictObject(
  {
    properties: Type.Array(
      StrictObject({ ...FieldView, access: Type.Union([Type.Literal('ro'), Type.Literal('rw')]) }),
    ),
    commands: Type.Array(ActionView),
    events: Type.Array(ActionView),
  },
  { description: 'typed properties, commands and events (docs/device-lifecycle.md, Data points)' },
);

export const SecurityLevelSchema = Type.Union([Type.Literal('L1'), Type.Literal('L2'), Type.Literal('L3')], {
  description: 'S 8.1.1 security level; L2 and L3 allow only the certificate mode (DEV-5)',
});
export const AuthModesSchema = Type.Array(
  Type.Union([Type.Literal('secret'), Type.Literal('hardware-id'), Type.Literal('certificate')]),
  { minItems: 1, maxItems: 3, uniqueItems: true, description: 'how devices of the product may authenticate' },
);
const DataPointsInput = Type.Object(
  {},
  {
    additionalProperties: true,
    description:
      '{ properties: [{code, type, min?, max?, step?, maxLength?, values?, unit?, access}], commands: [{code, params}], events: [{code, params}] }',
  },
);
const RetentionDays = Type.Integer({ minimum: 1, maximum: 3650, description: 'days telemetry is kept' });

/** Extra fields of the product view. */
export const productIdentityView = {
  securityLevel: SecurityLevelSchema,
  authModes: AuthModesSchema,
  dataPoints: Type.Union([DataPointsView, Type.Null()]),
  telemetryRetentionDays: Type.Union([Type.Integer(), Type.Null()], { description: 'null: the platform default' }),
  secretIssuedAt: Type.Union([Type.Integer(), Type.Null()], {
    description: 'when the hardware-ID registration secret was last issued; null: never',
  }),
};

/** Extra fields of POST /v1/products. */
export const productIdentityInput = {
  securityLevel: Type.Optional(SecurityLevelSchema),
  authModes: Type.Optional(AuthModesSchema),
  dataPoints: Type.Optional(DataPointsInput),
  telemetryRetentionDays: Type.Optional(RetentionDays),
};

/** The body of PATCH /v1/products/:productId; null resets a field to its default. */
export const ProductPatchBody = Type.Object(
  {
    name: Type.Optional(Type.String({ minLength: 1, maxLength: 200, pattern: '^\\S(.*\\S)?$' })),
    reportLimits: Type.Optional(
      StrictObject({
        perSecond: Type.Optional(Type.Union([Type.Integer({ minimum: 1, maximum: 100000 }), Type.Null()])),
        perDay: Type.Optional(Type.Union([Type.Integer({ minimum: 1, maximum: 100000000 }), Type.Null()])),
      }),
    ),
    securityLevel: Type.Optional(SecurityLevelSchema),
    authModes: Type.Optional(AuthModesSchema),
    dataPoints: Type.Optional(Type.Union([DataPointsInput, Type.Null()])),
    telemetryRetentionDays: Type.Optional(Type.Union([RetentionDays, Type.Null()])),
  },
  { additionalProperties: false, minProperties: 1 },
);

export const presentProductIdentity = (p: Product) => ({
  securityLevel: p.securityLevel,
  authModes: [...p.authModes],
  dataPoints: p.dataPoints,
  telemetryRetentionDays: p.telemetryRetentionDays,
  secretIssuedAt: p.secretIssuedAt,
});
