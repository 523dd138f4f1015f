// Posture routes (DEV-10): vendors set golden values per product and firmware version, read a
// device's latest posture with its deviations, and list a product's postures, e.g. the devices not yet
// on a post-quantum TLS key exchange (CHAN-8). Another tenant's product or device answers exactly like
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
  isPostQuantumGroup,
  MAX_CORE_FILES,
  type PostureDeviation,
  type PostureTls,
  SECURITY_LEVELS,
  type SecurityLevel,
  TLS_GROUP_PATTERN,
} from './posture-report.ts';
import type { DevicePosture, FirmwareGolden, PostureService } from './posture-service.ts';
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
  StrictObject({
    kind: Type.Literal('classical-key-exchange'),
    group: Type.String(),
    required: Type.String({ description: 'the level that asks for a post-quantum key exchange (L3)' }),
  }),
]);

const TlsView = StrictObject(
  {
    group: Type.String({ description: 'key-exchange group, TLS name: X25519MLKEM768, X25519, P-256, …' }),
    version: Type.String({ description: 'TLSv1.2 or TLSv1.3' }),
    cipher: Type.String({ description: 'cipher suite, e.g. TLS_AES_128_GCM_SHA256' }),
  },
  { description: "what the device's TLS connection negotiated, as the device saw it (CHAN-8)" },
);

const ReportedView = StrictObject({
  firmwareVersion: Type.String(),
  securityLevel: Type.String(),
  digests: Digests,
  tls: Type.Union([TlsView, Type.Null()], { description: 'null when the report did not say' }),
});

const PostureView = StrictObject({
  deviceId: Type.String(),
  reported: ReportedView,
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

const presentTls = (t: PostureTls | undefined) => (t ? { group: t.group, version: t.version, cipher: t.cipher } : null);

const presentReported = (p: DevicePosture) => ({
  firmwareVersion: p.reported.firmwareVersion,
  securityLevel: p.reported.securityLevel,
  digests: { ...p.reported.digests },
  tls: presentTls(p.reported.tls),
});

const PostureListItem = StrictObject({
  deviceId: Type.String(),
  reported: ReportedView,
  reportedAt: Type.Integer(),
  postQuantum: Type.Boolean({ description: 'the reported TLS group is a hybrid ML-KEM group (CHAN-8)' }),
  deviations: Type.Array(DeviationView),
  compliant: Type.Boolean(),
  checkedAt: Type.Integer(),
});

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
        reported: presentReported(latest),
        reportedAt: latest.reportedAt,
        golden: golden ? presentGolden(golden) : null,
        deviations: latest.deviations.map(presentDeviation),
        compliant: latest.compliant,
        checkedAt: latest.checkedAt,
      };
    },
  );
  app.get(
    '/v1/products/:productId/posture',
    {
      onRequest: authenticate,
      schema: {
        summary:
          "The latest posture of a product's devices, ordered by device ID; filter by the TLS group reported, e.g. postQuantum=false for the devices not yet on X25519MLKEM768 (CHAN-8)",
        tags: ['devices'],
        security: bearerSecurity,
        params: StrictObject({ productId: ProductId }),
        querystring: StrictObject({
          limit: Type.Integer({ minimum: 1, maximum: 1000, default: 100 }),
          after: Type.Optional(Type.String({ pattern: '^[0-9a-f]{24}$' })),
          tlsGroup: Type.Optional(
            Type.String({ pattern: TLS_GROUP_PATTERN, description: 'only devices that reported this group' }),
          ),
          postQuantum: Type.Optional(
            Type.Boolean({
              description: 'true: a hybrid ML-KEM group; false: a classical group or no TLS parameters reported',
            }),
          ),
        }),
        response: {
          200: StrictObject({
            items: Type.Array(PostureListItem),
            next: Type.Union([Type.String(), Type.Null()]),
          }),
          ...authenticatedErrors,
        },
      },
    },
    async (request) => {
      const product = await ownedProduct(request, 'device.list');
      const query = request.query as { limit: number; after?: string; tlsGroup?: string; postQuantum?: boolean };
      const items = await posture.listPostures(product.id, query);
      return {
        items: items.map((p) => ({
          deviceId: p.deviceId,
          reported: presentReported(p),
          reportedAt: p.reportedAt,
          postQuantum: p.reported.tls !== undefined && isPostQuantumGroup(p.reported.tls.group),
          deviations: p.deviations.map(presentDeviation),
          compliant: p.compliant,
          checkedAt: p.checkedAt,
        })),
        next: items.length === query.limit ? items.at(-1)!.deviceId : null,
      };
    },
  );
}
