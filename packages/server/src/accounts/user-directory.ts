// Finding and creating people by e-mail or phone without storing either in clear (ACC-1, PRIV-1):
// the identifier is normalised, looked up through a keyed blind index, and kept only encrypted under
// the person's own key (shredding that key erases it everywhere, backups included).
import type { Kysely } from 'kysely';
import { CastellanError } from '../errors/index.ts';
import { newId } from '../lib/random-ids.ts';
import type { Database } from '../store/index.ts';
import type { AccountsKeys } from './accounts-context.ts';
import type { UserKind } from './principal.ts';
import { isUniqueViolation } from './accounts-service.ts';

export type IdentifierKind = 'email' | 'phone';

export interface Identifier {
  readonly kind: IdentifierKind;
  /** Normalised value: lower-case NFKC e-mail, or E.164 phone. */
  readonly value: string;
}

export interface UserRecord {
  readonly id: string;
  readonly kind: UserKind;
  readonly status: 'pending' | 'active' | 'disabled';
  readonly passwordHash: string | null;
  readonly createdAt: number;
  readonly hasEmail: boolean;
  readonly hasPhone: boolean;
}

// Deliberately simple (RFC 5321 local@domain, no quoted forms): the one-time code proves the address.
const EMAIL =
  /^[^\s@<>()[\]\\,;:"]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)+$/;
const PHONE = /^\+[1-9][0-9]{6,14}$/;

/** Normalises an e-mail address or E.164 phone number; throws ERR_ACCOUNT_IDENTIFIER_INVALID. */
export function normaliseIdentifier(raw: string): Identifier {
  const value = raw.normalize('NFKC').trim();
  if (value.startsWith('+')) {
    const phone = value.replace(/[\s-]/g, '');
    if (PHONE.test(phone)) return { kind: 'phone', value: phone };
  } else if (value.length <= 254 && EMAIL.test(value)) {
    return { kind: 'email', value: value.toLowerCase() };
  }
  throw new CastellanError('ERR_ACCOUNT_IDENTIFIER_INVALID');
}

export function identifierIndex(keys: Pick<AccountsKeys, 'blindIndex'>, id: Identifier): Buffer {
  return keys.blindIndex('platform', id.kind, id.value);
}

type UserRow = Database['users'];

function toRecord(row: UserRow): UserRecord {
  return {
    id: row.id,
    kind: row.kind,
    status: row.status,
    passwordHash: row.password_hash,
    createdAt: Number(row.created_at),
    hasEmail: row.email_ciphertext !== null,
    hasPhone: row.phone_ciphertext !== null,
  };
}

export class UserDirectory {
  readonly #db: Kysely<Database>;
  readonly #keys: AccountsKeys;
  readonly #now: () => number;

  constructor(options: { db: Kysely<Database>; keys: AccountsKeys; now?: () => number }) {
    this.#db = options.db;
    this.#keys = options.keys;
    this.#now = options.now ?? Date.now;
  }

  async findByIdentifier(id: Identifier, db: Kysely<Database> = this.#db): Promise<UserRecord | null> {
    const column = id.kind === 'email' ? 'email_index' : 'phone_index';
    const row = await db
      .selectFrom('users')
      .selectAll()
      .where(column, '=', identifierIndex(this.#keys, id))
      .executeTakeFirst();
    return row ? toRecord(row) : null;
  }

  async get(userId: string, db: Kysely<Database> = this.#db): Promise<UserRecord | null> {
    const row = await db.selectFrom('users').selectAll().where('id', '=', userId).executeTakeFirst();
    return row ? toRecord(row) : null;
  }

  /**
   * Creates a person. The identifier is encrypted under a new per-user key before the insert; a
   * unique-index collision (the identifier is taken) gives ERR_ACCOUNT_EXISTS, which callers must not
   * reveal to the public (no enumeration, ACC-4).
   */
  async create(input: {
    identifier: Identifier;
    kind: UserKind;
    status: UserRecord['status'];
    passwordHash: string | null;
  }): Promise<UserRecord> {
    const id = newId('usr');
    const now = this.#now();
    const sealed = await this.#keys.encrypt(
      'platform',
      Buffer.from(input.identifier.value, 'utf8'),
      `users.${input.identifier.kind}:${id}`,
      { user: id },
    );
    const index = identifierIndex(this.#keys, input.identifier);
    const row: UserRow = {
      id,
      kind: input.kind,
      email_index: input.identifier.kind === 'email' ? index : null,
      phone_index: input.identifier.kind === 'phone' ? index : null,
      email_ciphertext: input.identifier.kind === 'email' ? sealed : null,
      phone_ciphertext: input.identifier.kind === 'phone' ? sealed : null,
      password_hash: input.passwordHash,
      status: input.status,
      created_at: now,
      activated_at: input.status === 'active' ? now : null,
      password_changed_at: input.passwordHash ? now : null,
    };
    try {
      await this.#db.insertInto('users').values(row).execute();
    } catch (error) {
      if (isUniqueViolation(error)) {
        throw new CastellanError('ERR_ACCOUNT_EXISTS');
      }
      throw error;
    }
    return toRecord(row);
  }

  /** The person's contact (decrypted), preferring e-mail; null when none is stored. */
  async contactOf(userId: string): Promise<Identifier | null> {
    const row = await this.#db
      .selectFrom('users')
      .select(['email_ciphertext', 'phone_ciphertext'])
      .where('id', '=', userId)
      .executeTakeFirst();
    if (!row) return null;
    for (const kind of ['email', 'phone'] as const) {
      const sealed = kind === 'email' ? row.email_ciphertext : row.phone_ciphertext;
      if (sealed) {
        const value = await this.#keys.decrypt('platform', sealed, `users.${kind}:${userId}`, { user: userId });
        return { kind, value: value.toString('utf8') };
      }
    }
    return null;
  }

  async setStatus(userId: string, status: UserRecord['status']): Promise<void> {
    await this.#db
      .updateTable('users')
      .set({ status, ...(status === 'active' ? { activated_at: this.#now() } : {}) })
      .where('id', '=', userId)
      .execute();
  }

  async setPasswordHash(userId: string, passwordHash: string): Promise<void> {
    await this.#db
      .updateTable('users')
      .set({ password_hash: passwordHash, password_changed_at: this.#now() })
      .where('id', '=', userId)
      .execute();
  }
}
