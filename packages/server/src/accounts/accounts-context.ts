// Everything the accounts routes share, built once by the platform. Each accounts feature (sign-in,
// registration, MFA, OIDC, organisations, operator keys, staff) is a Fastify plugin that receives
// this context.
import type { Kysely } from 'kysely';
import type { Logger } from 'pino';
import type { AuditEvent } from '../audit/index.ts';
import type { CastellanConfig } from '../config/index.ts';
import type { RateLimits } from '../guard/index.ts';
import type { AuthenticateHook, RecordAudit } from '../http/index.ts';
import type { KeyScope } from '../keys/index.ts';
import type { Database } from '../store/index.ts';
import type { MessageSender } from './message-sender.ts';
import type { RequestAuthenticator } from './request-authenticator.ts';
import type { SessionStore } from './session-store.ts';
import type { TotpService } from './totp-service.ts';
import type { UserDirectory } from './user-directory.ts';

/** The key service's operations the accounts subsystem uses (personal data, secrets, blind indexes). */
export interface AccountsKeys {
  encrypt(tenant: string, plaintext: Uint8Array, context: string, scope?: KeyScope): Promise<Buffer>;
  decrypt(tenant: string, sealed: Uint8Array, context: string, scope?: KeyScope): Promise<Buffer>;
  blindIndex(tenant: string, purpose: string, value: string): Buffer;
  /** Re-encrypts under the tenant's active key version; null when already current (after a rotation). */
  rewrap(tenant: string, sealed: Uint8Array, context: string): Promise<Buffer | null>;
  shred(tenant: string, scope?: KeyScope): Promise<unknown>;
}

export interface AccountsContext {
  readonly db: Kysely<Database>;
  readonly config: Readonly<CastellanConfig['accounts']>;
  /** The public HTTPS origin (accounts.publicUrl or the listener's URL). */
  readonly publicUrl: () => string;
  readonly dataDir: string;
  readonly keys: AccountsKeys;
  readonly sessions: SessionStore;
  readonly totp: TotpService;
  readonly users: UserDirectory;
  readonly authenticator: RequestAuthenticator;
  readonly authenticate: AuthenticateHook;
  readonly limits: RateLimits;
  readonly sender: MessageSender;
  /** Records a request's operation and waits for the commit. */
  readonly audit: RecordAudit;
  /** Records a platform event (no request), without waiting. */
  readonly record: (event: AuditEvent) => void;
  readonly log: Logger;
  readonly now: () => number;
}
