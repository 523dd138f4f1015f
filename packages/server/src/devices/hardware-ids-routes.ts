// Vendor routes of hardware-ID registration (DEV-4): upload MAC/IMEI lists, see how many are used, and
// issue or rotate the product secret (shown once). A product of another tenant answers like a missing one.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { Type } from 'typebox';
import { type Action } from '../accounts/index.ts';
import {
  type AuthenticateHook,
  authenticatedErrors,
  bearerSecurity,
  type RecordAudit,
  StrictObject,
} from '../http/index.ts';
import type { DevicesService } from './devices-service.ts';
import { type HardwareIdsService, MAX_HARDWARE_IDS_PER_UPLOAD } from './hardware-ids-service.ts';
import { productFor } from './device-route-params.ts';

export interface HardwareIdsRoutesOptions {
  devices: DevicesService;
  hardwareIds: HardwareIdsService;
  authenticate: AuthenticateHook;
  audit: RecordAudit;
}

const ProductId = Type.String({ minLength: 1, maxLength: 64, pattern: '^prd_[A-Za-z0-9_-]{22}$' });
const Counts = StrictObject({
  registered: Type.Integer({ description: 'hardware IDs registered for the product' }),
  used: Type.Integer({ description: 'of which a device has registered with' }),
});
const conflict = { 409: { $ref: 'ErrorResponse#' } } as const;

export async function hardwareIdsRoutes(
  app: FastifyInstance,
  { devices, hardwareIds, authenticate, audit }: HardwareIdsRoutesOptions,
) {
  const ownedProduct = (request: FastifyRequest, action: Action) => productFor(request, devices, action);

  app.post(
    '/v1/products/:productId/hardware-ids',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Register MAC addresses / IMEIs that may register as devices of this product (DEV-4)',
        description:
          'Each entry is normalised (MAC-48 in any common notation, IMEI with check digit) and stored only as a keyed blind index. Entries already registered count as duplicates.',
        tags: ['devices'],
        security: bearerSecurity,
        params: StrictObject({ productId: ProductId }),
        body: StrictObject({
          ids: Type.Array(Type.String({ minLength: 1, maxLength: 64 }), {
            minItems: 1,
            maxItems: MAX_HARDWARE_IDS_PER_UPLOAD,
          }),
        }),
        response: {
          201: StrictObject({ added: Type.Integer(), duplicates: Type.Integer(), ...Counts.properties }),
          ...authenticatedErrors,
          ...conflict,
        },
      },
    },
    async (request, reply) => {
      const product = await ownedProduct(request, 'product.hardware-ids.manage');
      const upload = await hardwareIds.upload(product, (request.body as { ids: string[] }).ids);
      await audit(request, {
        type: 'product.hardware-ids.upload',
        tenant: product.vendorId,
        target: product.id,
        details: { added: upload.added, duplicates: upload.duplicates },
      });
      return reply.status(201).send({ ...upload, ...(await hardwareIds.counts(product.id)) });
    },
  );

  app.get(
    '/v1/products/:productId/hardware-ids',
    {
      onRequest: authenticate,
      schema: {
        summary: 'How many hardware IDs the product has registered and how many are used',
        tags: ['devices'],
        security: bearerSecurity,
        params: StrictObject({ productId: ProductId }),
        response: { 200: Counts, ...authenticatedErrors },
      },
    },
    async (request) => hardwareIds.counts((await ownedProduct(request, 'product.read')).id),
  );

  app.post(
    '/v1/products/:productId/secret',
    {
      onRequest: authenticate,
      schema: {
        summary: 'Issue or rotate the product secret of hardware-ID registration; shown only in this response',
        tags: ['devices'],
        security: bearerSecurity,
        params: StrictObject({ productId: ProductId }),
        response: {
          201: StrictObject({ productId: Type.String(), secret: Type.String(), issuedAt: Type.Integer() }),
          ...authenticatedErrors,
          ...conflict,
        },
      },
    },
    async (request, reply) => {
      const product = await ownedProduct(request, 'product.secret.issue');
      const rotated = product.secretIssuedAt !== null;
      const { secret, issuedAt } = await hardwareIds.issueSecret(product);
      await audit(request, {
        type: rotated ? 'product.secret.rotate' : 'product.secret.issue',
        tenant: product.vendorId,
        target: product.id,
        details: { issuedAt },
      });
      return reply.status(201).send({ productId: product.id, secret, issuedAt });
    },
  );
}
