// Operator access keys (ORG-2): a public ID (opk_…) and a 256-bit secret shown once. The server must
// recompute request HMACs, so the secret cannot be hashed: it is encrypted under the tenant's key
// (KEY hierarchy; context binds the ciphertext to this key ID) and decrypted only to verify.
import { BlockList, isIPv4, isIPv6 } from 'node:net';
import type { Kysely } from 'kysely';
import { CastellanError } from '../errors/index.ts';
import { newId, newToken } from '../lib/random-ids.ts';
import type { Database } from '../store/index.ts';
import type { AccountsKeys } from './accounts-context.ts';
import { OPERATOR_SCOPES, type OperatorScope } from './principal.ts';

export const OPERATOR_KEY_PREFIX = 'opk';
/** Secrets carry a recognisable prefix so secret scanners can find leaked ones. */
export const OPERATOR_SECRET_PREFIX = 'cas_ops';
export const MAX_ALLOWED_CIDRS = 32;

/** The encryption context of a key's secret: a ciphertext moved to another row does not decrypt. */
export const secretContext = (keyId: string): string => `operator_keys.secret:${keyId}`;

export interface OperatorKeyView {
  id: string;
  label: string;
  scopes: OperatorScope[];
  allowedCidrs: string[];
  createdAt: number;
  lastUsedAt: number | null;
  revokedAt: number | null;
}

export interface IssuedOperatorKey extends OperatorKeyView {
  /** Shown once; stored only encrypted. */
  secret: string;
}

/** Normalises an IPv4-mapped IPv6 address (::ffff:10.0.0.1) to IPv4. */
export function plainIp(ip: string): string {
  return ip.startsWith('::ffff:') && isIPv4(ip.slice(7)) ? ip.slice(7) : ip;
}

/** Validates a CIDR block (an address alone is a /32 or /128); returns it in a canonical spelling. */
export function parseCidr(value: string): { address: string; prefix: number; family: 'ipv4' | 'ipv6' } | null {
  const [address, bits, extra] = value.split('/');
  if (address === undefined || extra !== undefined) return null;
  const family = isIPv4(address) ? 'ipv4' : isIPv6(address) ? 'ipv6' : null;
  if (!family) return null;
  const max = family === 'ipv4' ? 32 : 128;
  if (bits !== undefined && !/^(0|[1-9][0-9]{0,2})$/.test(bits)) return null;
  const prefix = bits === undefined ? max : Number(bits);
  return prefix <= max ? { address, prefix, family } : null;
}

export function allowListOf(cidrs: readonly string[]): BlockList | null {
  if (cidrs.length === 0) return null;
  const list = new BlockList();
  for (const cidr of cidrs) {
    const parsed = parseCidr(cidr);
    if (parsed) list.addSubnet(parsed.address, parsed.prefix, parsed.family);
  }
  return list;
}

/** True when `ip` may use a key with this allow-list (empty: any address). */
export function addressAllowed(cidrs: readonly string[], ip: string): boolean {
  const list = allowListOf(cidrs);
  if (!list) return true;
  const address = plainIp(ip);
  if (isIPv4(address)) return list.check(address, 'ipv4');
  if (isIPv6(address)) return list.check(address, 'ipv6');
  return false;
}

export function parseJsonList(raw: string): string[] {
  try {
    const value = JSON.parse(raw) as unknown;
    return Array.isArray(value) ? value.filter((v): v is string => typeof v === 'string') : [];
  } catch {
    return [];
  }
}

export interface OperatorKeysServiceOptions {
  db: Kysely<Database>;
  keys: Pick<AccountsKeys, 'encrypt' | 'rewrap'>;
  now: () => number;
}

export class OperatorKeysService {
  readonly #db: Kysely<Database>;
  readonly #keys: Pick<AccountsKeys, 'encrypt' | 'rewrap'>;
  readonly #now: () => number;

  constructor(options: OperatorKeysServiceOptions) {
    this.#db = options.db;
    this.#keys = options.keys;
    this.#now = options.now;
  }

  /**
   * After a rotation of the vendor's key (KEY-2): moves every access-key secret to the active version,
   * so the old version can be destroyed without breaking the keys. Returns how many moved.
   */
  async rewrapSecrets(vendorId: string): Promise<number> {
    let moved = 0;
    const rows = await this.#db
      .selectFrom('operator_keys')
      .select(['id', 'secret_ciphertext'])
      .where('vendor_id', '=', vendorId)
      .where('revoked_at', 'is', null)
      .execute();
    for (const row of rows) {
      const current = Buffer.from(row.secret_ciphertext);
      const rewrapped = await this.#keys.rewrap(vendorId, current, secretContext(row.id));
      if (!rewrapped) continue;
      // Only if unchanged meanwhile.
      const result = await this.#db
        .updateTable('operator_keys')
        .set({ secret_ciphertext: rewrapped })
        .where('id', '=', row.id)
        .where('secret_ciphertext', '=', current)
        .executeTakeFirst();
      moved += Number(result.numUpdatedRows);
    }
    return moved;
  }

  async vendorExists(vendorId: string): Promise<boolean> {
    return (
      (await this.#db.selectFrom('vendors').select('id').where('id', '=', vendorId).executeTakeFirst()) !== undefined
    );
  }

  async issue(
    vendorId: string,
    input: { label: string; scopes?: readonly OperatorScope[]; allowedCidrs?: readonly string[]; createdBy: string },
  ): Promise<IssuedOperatorKey> {
    const scopes = [...new Set(input.scopes ?? OPERATOR_SCOPES)].filter((s) => OPERATOR_SCOPES.includes(s));
    const allowedCidrs: string[] = [];
    for (const cidr of input.allowedCidrs ?? []) {
      const parsed = parseCidr(cidr);
      if (!parsed) throw new CastellanError('ERR_ACCESS_KEY_CIDR_INVALID');
      const canonical = `${parsed.address}/${parsed.prefix}`;
      if (!allowedCidrs.includes(canonical)) allowedCidrs.push(canonical);
    }
    const id = newId(OPERATOR_KEY_PREFIX);
    const secret = newToken(OPERATOR_SECRET_PREFIX);
    const ciphertext = await this.#keys.encrypt(vendorId, Buffer.from(secret, 'utf8'), secretContext(id));
    const createdAt = this.#now();
    await this.#db
      .insertInto('operator_keys')
      .values({
        id,
        vendor_id: vendorId,
        secret_ciphertext: ciphertext,
        scopes: JSON.stringify(scopes),
        allowed_cidrs: JSON.stringify(allowedCidrs),
        label: input.label,
        created_by: input.createdBy,
        created_at: createdAt,
        last_used_at: null,
        revoked_at: null,
      })
      .execute();
    return { id, secret, label: input.label, scopes, allowedCidrs, createdAt, lastUsedAt: null, revokedAt: null };
  }

  async list(vendorId: string): Promise<OperatorKeyView[]> {
    const rows = await this.#db
      .selectFrom('operator_keys')
      .select(['id', 'label', 'scopes', 'allowed_cidrs', 'created_at', 'last_used_at', 'revoked_at'])
      .where('vendor_id', '=', vendorId)
      .orderBy('created_at')
      .orderBy('id')
      .execute();
    return rows.map((r) => ({
      id: r.id,
      label: r.label,
      scopes: parseJsonList(r.scopes) as OperatorScope[],
      allowedCidrs: parseJsonList(r.allowed_cidrs),
      createdAt: Number(r.created_at),
      lastUsedAt: r.last_used_at === null ? null : Number(r.last_used_at),
      revokedAt: r.revoked_at === null ? null : Number(r.revoked_at),
    }));
  }

  /** Revokes a key of this vendor; false when there is no such live key (another tenant's is "none"). */
  async revoke(vendorId: string, keyId: string): Promise<boolean> {
    const result = await this.#db
      .updateTable('operator_keys')
      .set({ revoked_at: this.#now() })
      .where('id', '=', keyId)
      .where('vendor_id', '=', vendorId)
      .where('revoked_at', 'is', null)
      .executeTakeFirst();
    // Remembered nonces of a dead key serve no purpose.
    if (result.numUpdatedRows > 0n) await this.#db.deleteFrom('request_nonces').where('key_id', '=', keyId).execute();
    return result.numUpdatedRows > 0n;
  }
}
