export {
  type ActorType,
  type AuditEvent,
  type AuditResult,
  entryLeafHash,
  maskDetails,
  type StoredEntry,
} from './audit-entry.ts';
export {
  type AuditEntryView,
  AuditLog,
  type AuditLogOptions,
  type AuditQuery,
  AuditQueueFullError,
  CHECKPOINT_FILE,
  readDbCheckpoints,
  readFileCheckpoints,
} from './audit-log.ts';
export { auditRoutes } from './audit-routes.ts';
export { type Problem, type VerifyResult, verifyAuditLog } from './audit-verifier.ts';
export { type Checkpoint, CheckpointSigner, publicKeyFromRaw, verifyCheckpoint } from './checkpoint-signer.ts';
export { leafHash, MerkleFrontier, rootOf, verifyConsistency, verifyInclusion } from './merkle-tree.ts';
export { auditRequest, type RequestEvent, requestEvent } from './audit-request.ts';
export { exportAudit } from './audit-export.ts';
