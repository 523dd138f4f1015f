// The factory credential (DEV-7): `Authorization: Bearer cas_fac_…`, accepted on /v1/factory/* only
// (this hook is registered there and nowhere else; the general authenticator knows no cas_fac_ token,
// so it answers 401 on every other route). Fixed 401s that say nothing about which check failed.
import type { FastifyReply, FastifyRequest } from 'fastify';
import { CastellanError } from '../../errors/index.ts';
import type { FactoryStation, ManufacturingService } from './manufacturing-service.ts';

declare module 'fastify' {
  interface FastifyRequest {
    /** The factory station behind a /v1/factory/* request. */
    factoryStation: FactoryStation | undefined;
  }
}

export type FactoryAuthenticateHook = (request: FastifyRequest, reply: FastifyReply) => Promise<void>;

export function createFactoryAuthenticate(manufacturing: ManufacturingService): FactoryAuthenticateHook {
  return async function factoryAuthenticate(request) {
    const header = request.headers.authorization;
    if (header === undefined) throw new CastellanError('ERR_AUTH_REQUIRED');
    const station = header.startsWith('Bearer ')
      ? await manufacturing.authenticateStation(header.slice('Bearer '.length))
      : null;
    if (!station) throw new CastellanError('ERR_AUTH_INVALID');
    request.factoryStation = station;
  };
}

/** The station behind a request that passed factoryAuthenticate. */
export function stationOf(request: FastifyRequest): FactoryStation {
  if (!request.factoryStation) throw new CastellanError('ERR_AUTH_REQUIRED');
  return request.factoryStation;
}
