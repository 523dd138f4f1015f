// What an audit entry is, and the exact bytes its Merkle leaf covers. The leaf covers the STORED form
// (the encrypted source IP, the masked details), so shredding a key later leaves every entry
// verifiable while the personal data becomes unreadable (PRIV-4, KEY-6).
import { asBuffer, asBufferOrNull } from '../lib/bytes.ts';
import type { AuditEntryTable } from '../store/index.ts';
import { leafHashBinary } from './merkle-tree.ts';

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

/** The canonical leaf text: a JSON array in fixed field order (deterministic for strings/numbers/null). */
function leafText(
  seq: number,
  time: number,
  actorType: string,
  actorId: string,
  tenant: string | null,
  eventType: string,
  target: string | null,
  result: string,
  ipEpoch: string | null,
  sourceIp: Uint8Array | null,
  details: string,
): string {
  return JSON.stringify([
    LEAF_PREFIX,
    seq,
    time,
    actorType,
    actorId,
    tenant,
    eventType,
    target,
    result,
    ipEpoch,
    sourceIp ? asBuffer(sourceIp).toString('base64') : null,
    details,
  ]);
}

/** The canonical leaf bytes (UTF-8 of the leaf text). */
export function leafBytes(entry: StoredEntry, seq = entry.seq): Buffer {
  return Buffer.from(entryLeafText(entry, seq), 'utf8');
}

function entryLeafText(e: StoredEntry, seq: number): string {
  return leafText(
    seq,
    e.time,
    e.actorType,
    e.actorId,
    e.tenant,
    e.eventType,
    e.target,
    e.result,
    e.ipEpoch,
    e.sourceIp,
    e.details,
  );
}

export function entryLeafHash(entry: StoredEntry, seq = entry.seq): Buffer {
  return Buffer.from(leafHashBinary(entryLeafText(entry, seq)), 'latin1');
}

/** The leaf hash as a binary string (one char per byte): the append path's form. */
export function entryLeafHashBinary(entry: StoredEntry, seq = entry.seq): string {
  return leafHashBinary(entryLeafText(entry, seq));
}

/**
 * The leaf hash of a stored row, as a binary string, straight from the row: the verifier's hot path
 * (no StoredEntry or Buffer per row). Same bytes as entryLeafHash(storedEntryOf(row)).
 */
export function rowLeafHashBinary(row: Omit<AuditEntryTable, 'leaf_hash'>, seq: number): string {
  return leafHashBinary(
    leafText(
      seq,
      Number(row.time),
      row.actor_type,
      row.actor_id,
      row.tenant,
      row.event_type,
      row.target,
      row.result,
      row.ip_epoch,
      row.source_ip,
      row.details,
    ),
  );
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
    const record = value as Record<string, unknown>;
    const keys = Object.keys(record);
    // Details are usually written in key order already: sort only when they are not.
    for (let i = 1; i < keys.length; i++) {
      if (keys[i - 1]! > keys[i]!) {
        keys.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
        break;
      }
    }
    const out: Record<string, unknown> = {};
    for (const k of keys) out[k] = SECRET_KEY.test(k) ? '[masked]' : maskDetails(record[k], depth + 1);
    return out;
  }
  return `[${typeof value}]`;
}
