// Posture routes (DEV-10): vendors set golden values per product and firmware version and read a
// device's latest posture with its deviations. Another tenant's product or device answers exactly like
// a missing one.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { Type } from 'typebox';
import { type Action } from '../../accounts/index.ts';
import { CastellanError } from '../../errors/index.ts';
import {
  type AuthenticateHook,
  authenticatedErrors,
  bearerSecurity,
  type RecordAudit,
  StrictObject,
} from '../../http/index.ts';
import type { DevicesService } from '../devices-service.ts';
import {
  checkDigests,
  FIRMWARE_VERSION_PATTERN,
  MAX_CORE_FILES,
  type PostureDeviation,
  SECURITY_LEVELS,
  type SecurityLevel,
} from './posture-report.ts';
import type { FirmwareGolden, PostureService } from './posture-service.ts';
import { DeviceIdParam, deviceFor, productFor } from '../device-route-params.ts';

export interface PostureRoutesOptions {
  posture: PostureService;
  devices: DevicesService;
  authenticate: AuthenticateHook;
  audit: RecordAudit;
}

const ProductId = Type.String({ minLength: 1, maxLength: 64, pattern: '^prd_[A-Za-z0-9_-]{22}$' });
const FirmwareVersion = Type.String({ pattern: FIRMWARE_VERSION_PATTERN, description: 'e.g. 1.4.2 or 2024.06-rc1' });
const Level = Type.Union(
  SECURITY_LEVELS.map((l) => Type.Literal(l)),
  { description: 'L1 < L2 < L3' },
);
const Digests = Type.Record(Type.String(), Type.String(), {
  description: 'core file path → SHA-256 as 64 lower-case hex digits',
});

const GoldenView = StrictObject({
  productId: Type.String(),
  firmwareVersion: Type.String(),
  securityLevel: Type.String(),
  digests: Digests,
  updatedAt: Type.Integer(),
});

const DeviationView = Type.Union([
  StrictObject({ kind: Type.Literal('unknown-firmware'), firmwareVersion: Type.String() }),
  StrictObject({ kind: Type.Literal('security-level'), reported: Type.String(), required: Type.String() }),
  StrictObject({ kind: Type.Literal('digest-mismatch'), path: Type.String() }),
  StrictObject({ kind: Type.Literal('missing-file'), path: Type.String() }),
]);

const PostureView = StrictObject({
  deviceId: Type.String(),
  reported: StrictObject({ firmwareVersion: Type.String(), securityLevel: Type.String(), digests: Digests }),
  reportedAt: Type.Integer(),
  golden: Type.Union([GoldenView, Type.Null()], {
    description: 'the golden values now set for the reported firmware; null when none are',
  }),
  deviations: Type.Array(DeviationView, { description: 'found when the report was checked; empty: compliant' }),
  compliant: Type.Boolean(),
  checkedAt: Type.Integer(),
});

const presentGolden = (g: FirmwareGolden) => ({
  productId: g.productId,
  firmwareVersion: g.firmwareVersion,
  securityLevel: g.securityLevel,
  digests: { ...g.digests },
  updatedAt: g.updatedAt,
});

const presentDeviation = (d: PostureDeviation) => ({ ...d });

export async function postureRoutes(
  app: FastifyInstance,
  { posture, devices, authenticate, audit }: PostureRoutesOptions,
) {
  const ownedProduct = (request: FastifyRequest, action: Action) => productFor(request, devices, action);

  const goldenParams = StrictObject({ productId: ProductId, version: FirmwareVersion });

  app.put(
    '/v1/products/:productId/firmware/:version/golden',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Set the golden posture of a firmware version: its security level and core file digests (DEV-10)',
        tags: ['devices'],
        security: bearerSecurity,
        params: goldenParams,
        body: StrictObject({
          securityLevel: Level,
          digests: Type.Record(Type.String(), Type.String(), {
            minProperties: 1,
            maxProperties: MAX_CORE_FILES,
            description: 'core file path (1-256 characters, no control characters) → SHA-256, 64 lower-case hex digits',
          }),
        }),
        response: { 200: GoldenView, ...authenticatedErrors },
      },
    },
    async (request) => {
      const product = await ownedProduct(request, 'posture.golden.manage');
      const { version } = request.params as { version: string };
      const body = request.body as { securityLevel: SecurityLevel; digests: Record<string, string> };
      const problem = checkDigests(body.digests);
      if (problem)
        throw new CastellanError('ERR_VALIDATION_FAILED', { message: problem, details: { field: 'digests' } });
      const golden = await posture.setGolden(product.id, product.vendorId, version, body);
      await audit(request, {
        type: 'product.firmware-golden',
        tenant: product.vendorId,
        target: product.id,
        details: {
          firmwareVersion: version,
          securityLevel: golden.securityLevel,
          files: Object.keys(golden.digests).length,
        },
      });
      return presentGolden(golden);
    },
  );

  app.get(
    '/v1/products/:productId/firmware/:version/golden',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Read the golden posture of a firmware version',
        tags: ['devices'],
        security: bearerSecurity,
        params: goldenParams,
        response: { 200: GoldenView, ...authenticatedErrors },
      },
    },
    async (request) => {
      const product = await ownedProduct(request, 'product.read');
      const golden = await posture.getGolden(product.id, (request.params as { version: string }).version);
      if (!golden) throw new CastellanError('ERR_FIRMWARE_GOLDEN_NOT_FOUND');
      return presentGolden(golden);
    },
  );

  app.get(
    '/v1/devices/:deviceId/posture',
    {
      onRequest: authenticate,
      schema: {
        summary: "A device's latest posture report, the golden values it was compared with, and its deviations",
        tags: ['devices'],
        security: bearerSecurity,
        params: StrictObject({ deviceId: DeviceIdParam }),
        response: { 200: PostureView, ...authenticatedErrors },
      },
    },
    async (request) => {
      const device = await deviceFor(request, devices, 'device.read');
      const latest = await posture.getPosture(device.id);
      if (!latest) throw new CastellanError('ERR_POSTURE_NOT_FOUND');
      const golden = await posture.getGolden(latest.productId, latest.reported.firmwareVersion);
      return {
        deviceId: device.id,
        reported: {
          firmwareVersion: latest.reported.firmwareVersion,
          securityLevel: latest.reported.securityLevel,
          digests: { ...latest.reported.digests },
        },
        reportedAt: latest.reportedAt,
        golden: golden ? presentGolden(golden) : null,
        deviations: latest.deviations.map(presentDeviation),
        compliant: latest.compliant,
        checkedAt: latest.checkedAt,
      };
    },
  );
}
