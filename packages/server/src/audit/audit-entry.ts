// What an audit entry is, and the exact bytes its Merkle leaf covers. The leaf covers the STORED form
// (the encrypted source IP, the masked details), so shredding a key later leaves every entry
// verifiable while the personal data becomes unreadable (PRIV-4, KEY-6).
import { asBufferOrNull } from '../lib/bytes.ts';
import type { AuditEntryTable } from '../store/index.ts';
import { leafHash } from './merkle-tree.ts';

/** `factory`: a factory station's credential (DEV-7). */
export type ActorType = 'admin' | 'operator' | 'user' | 'device' | 'factory' | 'system';
export type AuditResult = 'success' | 'failure' | 'denied';

export interface AuditEvent {
  readonly actor: { readonly type: ActorType; readonly id: string };
  /** The tenant (vendor ID) the event belongs to; null for platform-wide events. */
  readonly tenant?: string | null;
  /** Dotted event name, e.g. `device.connect`, `vendor.create`, `guard.ip-blocked`. */
  readonly type: string;
  /** What was acted on, e.g. a device ID. */
  readonly target?: string | null;
  readonly sourceIp?: string | null;
  readonly result: AuditResult;
  /** Extra context; masked before storage (no secrets, tokens or passwords survive). */
  readonly details?: Record<string, unknown>;
}

/** An entry as stored; every field here is covered by the leaf hash. */
export interface StoredEntry {
  seq: number;
  time: number;
  actorType: string;
  actorId: string;
  tenant: string | null;
  eventType: string;
  target: string | null;
  result: string;
  ipEpoch: string | null;
  sourceIp: Buffer | null;
  details: string;
}

const LEAF_PREFIX = 'castellan-audit-entry/v1';

/** An audit_entries row in its stored form (what the leaf covers). */
export function storedEntryOf(row: Omit<AuditEntryTable, 'leaf_hash'>): StoredEntry {
  return {
    seq: Number(row.seq),
    time: Number(row.time),
    actorType: row.actor_type,
    actorId: row.actor_id,
    tenant: row.tenant,
    eventType: row.event_type,
    target: row.target,
    result: row.result,
    ipEpoch: row.ip_epoch,
    sourceIp: asBufferOrNull(row.source_ip),
    details: row.details,
  };
}

/** The canonical leaf bytes: a JSON array in fixed field order (deterministic for strings/numbers/null). */
export function leafBytes(entry: StoredEntry, seq = entry.seq): Buffer {
  return Buffer.from(
    JSON.stringify([
      LEAF_PREFIX,
      seq,
      entry.time,
      entry.actorType,
      entry.actorId,
      entry.tenant,
      entry.eventType,
      entry.target,
      entry.result,
      entry.ipEpoch,
      entry.sourceIp ? entry.sourceIp.toString('base64') : null,
      entry.details,
    ]),
    'utf8',
  );
}

export function entryLeafHash(entry: StoredEntry, seq = entry.seq): Buffer {
  return leafHash(leafBytes(entry, seq));
}

// Keys whose values are secrets: matched at the end of the name, so `setupToken` and `clientSecret`
// are masked while identifiers such as `credentialId` or `tokenCount` are kept.
const SECRET_KEY = /(pass(word|wd)?|secret|token|authorization|cookie|api[-_]?key|private[-_]?key|signature|seed)$/i;
const MAX_STRING = 256;
const MAX_DEPTH = 4;

/** Masks details: secret-looking keys are replaced, long strings truncated, depth bounded. */
export function maskDetails(value: unknown, depth = 0): unknown {
  if (value === null || typeof value === 'number' || typeof value === 'boolean') return value;
  if (typeof value === 'string') return value.length > MAX_STRING ? `${value.slice(0, MAX_STRING)}…` : value;
  if (depth >= MAX_DEPTH) return '[truncated]';
  if (Array.isArray(value)) return value.slice(0, 50).map((v) => maskDetails(v, depth + 1));
  if (typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value as Record<string, unknown>).sort(([a], [b]) =>
      a < b ? -1 : a > b ? 1 : 0,
    )) {
      out[k] = SECRET_KEY.test(k) ? '[masked]' : maskDetails(v, depth + 1);
    }
    return out;
  }
  return `[${typeof value}]`;
}
