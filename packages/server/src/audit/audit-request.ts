// Records an API operation: the actor is the authenticated principal, the source IP the request's.
import type { FastifyRequest } from 'fastify';
import { CastellanError } from '../errors/index.ts';
import type { RequestAuditEvent } from '../http/index.ts';
import type { AuditEvent, AuditResult } from './audit-entry.ts';
import { type AuditLog, AuditQueueFullError } from './audit-log.ts';

export type RequestEvent = RequestAuditEvent & { result?: AuditResult };

export function requestEvent(request: FastifyRequest, event: RequestEvent): AuditEvent {
  const principal = request.principal;
  return {
    actor: principal ? { type: principal.kind, id: principal.id } : { type: 'system', id: 'anonymous' },
    tenant: event.tenant ?? (principal?.kind === 'operator' ? principal.id : null),
    type: event.type,
    target: event.target ?? null,
    sourceIp: request.ip,
    result: event.result ?? 'success',
    details: {
      ...event.details,
      requestId: request.id,
      ...(principal ? { credentialId: principal.credentialId } : {}),
    },
  };
}

/** Records and waits for the commit: an operation that cannot be audited is not reported as done. */
export async function auditRequest(audit: AuditLog, request: FastifyRequest, event: RequestEvent): Promise<number> {
  try {
    return await audit.record(requestEvent(request, event));
  } catch (error) {
    if (error instanceof AuditQueueFullError) throw new CastellanError('ERR_AUDIT_UNAVAILABLE');
    throw error;
  }
}
