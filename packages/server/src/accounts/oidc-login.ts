// Sign-in with an outside OpenID Connect provider (ACC-7): the authorization code flow with PKCE
// (RFC 7636, S256), `state` (RFC 6749 section 10.12) and `nonce` (OIDC Core 1.0 section 3.1.2.1),
// as the OAuth 2.0 Security BCP (RFC 9700 section 2.1.1) asks of a confidential client.
//
// - The attempt's secrets (state, nonce, code verifier) stay on the server in auth_challenges
//   (purpose 'oidc', 10 minutes, single use); the browser holds only the attempt's random ID in a
//   cookie, so a callback is accepted only in the browser that started it (login CSRF).
// - openid-client checks the authorization response (state, issuer per RFC 9207 when sent) and the
//   ID token (signature against the issuer's JWKS, iss, aud, exp, iat, nonce; OIDC Core 3.1.3.7).
// - Outbound requests go only to the issuer's origin and to the endpoints its own discovery
//   document (fetched from the issuer over TLS) names, over HTTPS, without following redirects.
import { readFileSync } from 'node:fs';
import https from 'node:https';
import * as client from 'openid-client';
import type { CastellanConfig } from '../config/index.ts';
import { CastellanError } from '../errors/index.ts';
import { newId } from '../lib/random-ids.ts';
import type { AccountsContext } from './accounts-context.ts';
import { isUniqueViolation } from './accounts-service.ts';
import { type Identifier, normaliseIdentifier, type UserRecord } from './user-directory.ts';

export type OidcProviderConfig = CastellanConfig['accounts']['oidcProviders'][number];

/** What a successful callback proves about the person at the provider. */
export interface OidcIdentity {
  readonly provider: string;
  readonly subject: string;
  /** Only an address the provider says it verified (`email_verified: true`); otherwise null. */
  readonly email: string | null;
}

export const OIDC_CHALLENGE_PURPOSE = 'oidc';
export const OIDC_CHALLENGE_TTL_MS = 10 * 60_000;
const REQUEST_TIMEOUT_SECONDS = 10;
const MAX_RESPONSE_BYTES = 1024 * 1024;

interface ChallengePayload {
  provider: string;
  state: string;
  nonce: string;
  codeVerifier: string;
}

/** An internal reason for a refused callback: logged at debug level, never sent to the client. */
export class OidcFailure extends Error {
  override readonly name = 'OidcFailure';
}

/**
 * A fetch over node:https that trusts `ca` (or the system store) and refuses any URL `allowed`
 * rejects. openid-client calls it for discovery, JWKS, token and userinfo requests.
 */
export function pinnedFetch(ca: string | undefined, allowed: (url: URL) => boolean): client.CustomFetch {
  return async (url, options) => {
    const target = new URL(url);
    if (target.protocol !== 'https:' || !allowed(target)) {
      throw new OidcFailure(`outbound request refused: ${target.origin}${target.pathname} is not the issuer's`);
    }
    const body = options.body;
    let payload: Buffer | undefined;
    if (typeof body === 'string') payload = Buffer.from(body);
    else if (body instanceof URLSearchParams) payload = Buffer.from(body.toString());
    else if (body instanceof Uint8Array) payload = Buffer.from(body);
    else if (body instanceof ArrayBuffer) payload = Buffer.from(new Uint8Array(body));
    else if (body !== undefined && body !== null) throw new OidcFailure('streamed request bodies are not supported');
    return new Promise<Response>((resolve, reject) => {
      const req = https.request(
        target,
        {
          method: options.method,
          headers: { ...options.headers, ...(payload ? { 'content-length': String(payload.length) } : {}) },
          ...(ca ? { ca } : {}),
          ...(options.signal ? { signal: options.signal } : {}),
          timeout: REQUEST_TIMEOUT_SECONDS * 1000,
        },
        (res) => {
          const chunks: Buffer[] = [];
          let size = 0;
          res.on('data', (chunk: Buffer) => {
            size += chunk.length;
            if (size > MAX_RESPONSE_BYTES) {
              req.destroy(new OidcFailure('response from the provider is too large'));
              return;
            }
            chunks.push(chunk);
          });
          res.on('error', reject);
          res.on('end', () => {
            const headers = new Headers();
            for (const [name, value] of Object.entries(res.headers)) {
              if (Array.isArray(value)) for (const v of value) headers.append(name, v);
              else if (value !== undefined) headers.set(name, value);
            }
            const status = res.statusCode ?? 502;
            const noBody = status === 204 || status === 304 || options.method === 'HEAD';
            resolve(new Response(noBody ? null : Buffer.concat(chunks), { status, headers }));
          });
        },
      );
      req.on('timeout', () => req.destroy(new OidcFailure('the provider did not answer in time')));
      req.on('error', reject);
      req.end(payload);
    });
  };
}

function withoutQuery(url: string): string {
  const u = new URL(url);
  return `${u.origin}${u.pathname}`;
}

/** One configured provider: discovery on first use (then cached), authorization URLs, code exchange. */
class OidcProviderClient {
  readonly config: OidcProviderConfig;
  readonly #issuer: URL;
  readonly #ca: string | undefined;
  /** Endpoints the issuer's discovery document names (path only), besides the issuer's own origin. */
  readonly #endpoints = new Set<string>();
  #configuration: Promise<client.Configuration> | undefined;

  constructor(config: OidcProviderConfig, index: number) {
    this.config = config;
    this.#issuer = new URL(config.issuer);
    if (config.caFile) {
      try {
        this.#ca = readFileSync(config.caFile, 'utf8');
      } catch (error) {
        throw new CastellanError('ERR_CONFIG_INVALID', {
          message: `Invalid configuration: accounts.oidcProviders[${index}].caFile cannot be read: ${(error as NodeJS.ErrnoException).code ?? 'error'}`,
        });
      }
    }
  }

  #allowed = (url: URL): boolean =>
    url.origin === this.#issuer.origin || this.#endpoints.has(`${url.origin}${url.pathname}`);

  /** The discovered configuration; a failed discovery is not cached, so the next attempt retries. */
  configuration(): Promise<client.Configuration> {
    this.#configuration ??= (async () => {
      const { clientId, clientSecret } = this.config;
      const configuration = await client.discovery(
        this.#issuer,
        clientId,
        clientSecret ? { client_secret: clientSecret } : undefined,
        clientSecret ? client.ClientSecretBasic(clientSecret) : client.None(),
        { [client.customFetch]: pinnedFetch(this.#ca, this.#allowed), timeout: REQUEST_TIMEOUT_SECONDS },
      );
      const metadata = configuration.serverMetadata();
      for (const endpoint of [metadata.token_endpoint, metadata.jwks_uri, metadata.userinfo_endpoint]) {
        if (endpoint) this.#endpoints.add(withoutQuery(endpoint));
      }
      return configuration;
    })();
    this.#configuration.catch(() => {
      this.#configuration = undefined;
    });
    return this.#configuration;
  }
}

export class OidcLogin {
  readonly #ctx: AccountsContext;
  readonly #providers = new Map<string, OidcProviderClient>();

  constructor(ctx: AccountsContext) {
    this.#ctx = ctx;
    ctx.config.oidcProviders.forEach((p, i) => this.#providers.set(p.id, new OidcProviderClient(p, i)));
  }

  #provider(id: string): OidcProviderClient {
    const provider = this.#providers.get(id);
    if (!provider) throw new CastellanError('ERR_OIDC_PROVIDER_UNKNOWN');
    return provider;
  }

  /** Throws ERR_OIDC_PROVIDER_UNKNOWN for a provider that is not configured. */
  assertKnown(id: string): void {
    this.#provider(id);
  }

  /** The redirect URI registered at the provider for this deployment. */
  redirectUri(id: string): string {
    return `${this.#ctx.publicUrl().replace(/\/+$/, '')}/v1/auth/oidc/${id}/callback`;
  }

  /** Starts an attempt: stores its secrets and returns the attempt ID and the authorization URL. */
  async start(id: string): Promise<{ challengeId: string; authorizationUrl: string }> {
    const provider = this.#provider(id);
    const configuration = await provider.configuration();
    const payload: ChallengePayload = {
      provider: id,
      state: client.randomState(),
      nonce: client.randomNonce(),
      codeVerifier: client.randomPKCECodeVerifier(),
    };
    const url = client.buildAuthorizationUrl(configuration, {
      redirect_uri: this.redirectUri(id),
      scope: provider.config.scopes,
      code_challenge: await client.calculatePKCECodeChallenge(payload.codeVerifier),
      code_challenge_method: 'S256',
      state: payload.state,
      nonce: payload.nonce,
    });
    const now = this.#ctx.now();
    // 128 CSPRNG bits: the ID is the browser's only handle on the attempt.
    const challengeId = newId('oid');
    await this.#ctx.db
      .insertInto('auth_challenges')
      .values({
        id: challengeId,
        principal_id: null,
        purpose: OIDC_CHALLENGE_PURPOSE,
        payload: JSON.stringify(payload),
        created_at: now,
        expires_at: now + OIDC_CHALLENGE_TTL_MS,
      })
      .execute();
    return { challengeId, authorizationUrl: url.href };
  }

  /**
   * Completes an attempt from the callback's query string. The attempt is consumed first (single
   * use, whatever the outcome). Throws OidcFailure with the internal reason.
   */
  async finish(id: string, challengeId: string | undefined, query: URLSearchParams): Promise<OidcIdentity> {
    const provider = this.#provider(id);
    if (!challengeId) throw new OidcFailure('no attempt cookie');
    const row = await this.#ctx.db
      .deleteFrom('auth_challenges')
      .where('id', '=', challengeId)
      .where('purpose', '=', OIDC_CHALLENGE_PURPOSE)
      .returningAll()
      .executeTakeFirst();
    if (!row) throw new OidcFailure('unknown or already used attempt');
    if (this.#ctx.now() >= Number(row.expires_at)) throw new OidcFailure('attempt expired');
    const payload = JSON.parse(row.payload) as ChallengePayload;
    if (payload.provider !== id) throw new OidcFailure('attempt was started for another provider');
    const configuration = await provider.configuration();
    // openid-client takes the redirect URI from this URL (without the query) for the token request.
    const currentUrl = new URL(this.redirectUri(id));
    for (const [name, value] of query) currentUrl.searchParams.append(name, value);
    let tokens: Awaited<ReturnType<typeof client.authorizationCodeGrant>>;
    try {
      tokens = await client.authorizationCodeGrant(configuration, currentUrl, {
        pkceCodeVerifier: payload.codeVerifier,
        expectedState: payload.state,
        expectedNonce: payload.nonce,
        idTokenExpected: true,
      });
    } catch (error) {
      const e = error as { code?: string; error?: string; message?: string };
      // The provider's error code or the library's check, never a token.
      throw new OidcFailure(`code exchange or ID token check failed: ${e.code ?? ''} ${e.error ?? e.message ?? ''}`);
    }
    const claims = tokens.claims();
    if (!claims || typeof claims.sub !== 'string' || claims.sub === '') throw new OidcFailure('no subject');
    let email = claims.email_verified === true && typeof claims.email === 'string' ? claims.email : null;
    // Providers may put scope claims only in the userinfo response (OIDC Core 5.4); its `sub` must
    // match the ID token's (OIDC Core 5.3.2), which fetchUserInfo checks.
    if (email === null && claims.email === undefined && configuration.serverMetadata().userinfo_endpoint) {
      try {
        const info = await client.fetchUserInfo(configuration, tokens.access_token, claims.sub);
        if (info.email_verified === true && typeof info.email === 'string') email = info.email;
      } catch (error) {
        this.#ctx.log.debug({ provider: id, reason: (error as Error).message }, 'oidc: userinfo unavailable');
      }
    }
    return { provider: id, subject: claims.sub, email };
  }
}

/** The keyed blind index of a provider's subject: the `sub` itself is never stored. */
export function subjectIndex(ctx: Pick<AccountsContext, 'keys'>, provider: string, subject: string): Buffer {
  return ctx.keys.blindIndex('platform', `oidc:${provider}`, subject);
}

/**
 * The account an identity signs in to: the linked one, else a new account for the verified e-mail
 * address. An existing account with that address is never linked here: whoever controls the
 * provider account (or a provider that asserts addresses it does not own) would take it over. The
 * person signs in with the password and links the provider from settings instead.
 *
 * The new account and its link are two writes (users.create seals the address under a key of the
 * person's own, outside any transaction). If the link cannot be written, the account is undone — row
 * deleted, key shredded — so no account without a link is left to answer ERR_OIDC_ACCOUNT_EXISTS
 * forever; when the reason was a concurrent callback that linked the subject first, that request won
 * and this one signs in to its account.
 */
export async function accountForIdentity(
  ctx: Pick<AccountsContext, 'db' | 'keys' | 'users' | 'now'>,
  identity: OidcIdentity,
): Promise<{ user: UserRecord; created: boolean }> {
  const index = subjectIndex(ctx, identity.provider, identity.subject);
  const linked = async (): Promise<UserRecord | null> => {
    const link = await ctx.db
      .selectFrom('oidc_identities')
      .select('user_id')
      .where('provider', '=', identity.provider)
      .where('subject_index', '=', index)
      .executeTakeFirst();
    if (!link) return null;
    const user = await ctx.users.get(link.user_id);
    if (!user || user.status !== 'active') throw new OidcFailure('linked account is missing or not active');
    return user;
  };
  const existing = await linked();
  if (existing) return { user: existing, created: false };
  if (identity.email === null) throw new CastellanError('ERR_OIDC_EMAIL_REQUIRED');
  let identifier: Identifier;
  try {
    identifier = normaliseIdentifier(identity.email);
  } catch {
    throw new CastellanError('ERR_OIDC_EMAIL_REQUIRED');
  }
  if (identifier.kind !== 'email') throw new CastellanError('ERR_OIDC_EMAIL_REQUIRED');
  // Telling that an account exists is no enumeration here: the caller proved control of the address.
  if (await ctx.users.findByIdentifier(identifier)) throw new CastellanError('ERR_OIDC_ACCOUNT_EXISTS');
  let user: UserRecord;
  try {
    user = await ctx.users.create({ identifier, kind: 'consumer', status: 'active', passwordHash: null });
  } catch (error) {
    if (error instanceof CastellanError && error.code === 'ERR_ACCOUNT_EXISTS') {
      throw new CastellanError('ERR_OIDC_ACCOUNT_EXISTS');
    }
    throw error;
  }
  try {
    await ctx.db
      .insertInto('oidc_identities')
      .values({ provider: identity.provider, subject_index: index, user_id: user.id, created_at: ctx.now() })
      .execute();
  } catch (error) {
    // Nothing else refers to the new account yet (no session, no membership): undo it whole.
    await ctx.db.deleteFrom('users').where('id', '=', user.id).execute();
    await ctx.keys.shred('platform', { user: user.id });
    if (!isUniqueViolation(error)) throw error;
    const winner = await linked();
    if (!winner) throw error;
    return { user: winner, created: false };
  }
  return { user, created: true };
}
