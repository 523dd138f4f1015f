// How route handlers record what they did, without depending on the audit subsystem: the platform
// passes a recorder bound to the audit log (audit/audit-request.ts).
import type { FastifyRequest } from 'fastify';

export interface RequestAuditEvent {
  type: string;
  result?: 'success' | 'failure' | 'denied';
  tenant?: string | null;
  target?: string | null;
  details?: Record<string, unknown>;
}

/** Records an operation and settles once it is committed to the audit log. */
export type RecordAudit = (request: FastifyRequest, event: RequestAuditEvent) => Promise<unknown>;
