// Liveness, readiness and the OpenAPI document.
import type { FastifyInstance } from 'fastify';
import { Type } from 'typebox';
import { CastellanError } from '../errors/index.ts';

export interface HealthRoutesOptions {
  /** Rejects when a dependency (storage, listeners) is not ready. */
  readiness(): Promise<Record<string, 'ok'>>;
}

const Status = Type.Object({ status: Type.String() }, { additionalProperties: false });
const Ready = Type.Object(
  { status: Type.String(), checks: Type.Record(Type.String(), Type.String()) },
  { additionalProperties: false },
);

export async function healthRoutes(app: FastifyInstance, options: HealthRoutesOptions): Promise<void> {
  app.get(
    '/healthz',
    {
      schema: {
        summary: 'Liveness: the process serves requests',
        tags: ['operations'],
        response: { 200: Status },
      },
    },
    async () => ({ status: 'ok' }),
  );
  app.get(
    '/readyz',
    {
      schema: {
        summary: 'Readiness: storage and listeners are up',
        tags: ['operations'],
        response: { 200: Ready, 503: { $ref: 'ErrorResponse#' } },
      },
    },
    async (request) => {
      try {
        return { status: 'ready', checks: await options.readiness() };
      } catch (error) {
        request.log.warn({ err: error }, 'readiness check failed');
        throw new CastellanError('ERR_NOT_READY', { message: `Not ready to serve: ${(error as Error).message}` });
      }
    },
  );
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
}
