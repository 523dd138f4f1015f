// A real OpenID Connect provider for tests (oidc-provider), served over HTTPS on 127.0.0.1 with a
// private CA of its own (not the platform's), so the platform can reach it only through the
// provider's `caFile` option. A tiny cookie-keeping "browser" walks its development login and
// consent pages with plain HTTP requests.
import { mkdtempSync, rmSync } from 'node:fs';
import https from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
// @ts-expect-error oidc-provider ships no type declarations
import Provider from 'oidc-provider';
import { generateDevPki } from '../../src/keys/index.ts';

export interface TestAccount {
  email?: string;
  emailVerified?: boolean;
}

export interface OidcTestProvider {
  /** https://127.0.0.1:<port> */
  readonly issuer: string;
  /** PEM file of the provider's private CA. */
  readonly caFile: string;
  readonly caPem: string;
  /**
   * Starts answering as an OpenID provider with one confidential client. Called once the platform
   * is up, because the redirect URI names the platform's port.
   */
  configure(options: {
    clientId: string;
    clientSecret: string;
    redirectUris: string[];
    accounts: Record<string, TestAccount>;
  }): void;
  close(): Promise<void>;
}

export async function startOidcTestProvider(): Promise<OidcTestProvider> {
  const dir = mkdtempSync(join(tmpdir(), 'castellan-oidc-'));
  const pki = await generateDevPki(dir);
  let handler: (req: IncomingMessage, res: ServerResponse) => void = (_req, res) => {
    res.statusCode = 503;
    res.end('not configured');
  };
  const server = https.createServer({ cert: pki.cert, key: pki.key }, (req, res) => handler(req, res));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const issuer = `https://127.0.0.1:${(server.address() as { port: number }).port}`;
  return {
    issuer,
    caFile: join(dir, 'ca.crt'),
    caPem: pki.ca,
    configure({ clientId, clientSecret, redirectUris, accounts }) {
      const provider = new Provider(issuer, {
        clients: [
          {
            client_id: clientId,
            client_secret: clientSecret,
            redirect_uris: redirectUris,
            response_types: ['code'],
            grant_types: ['authorization_code'],
            token_endpoint_auth_method: 'client_secret_basic',
          },
        ],
        claims: { openid: ['sub'], email: ['email', 'email_verified'] },
        cookies: { keys: ['test-cookie-key-not-secret'] },
        // Only the developer login/consent pages: no refresh tokens, no other features needed.
        features: { devInteractions: { enabled: true } },
        findAccount: (_ctx: unknown, sub: string) => {
          const account = accounts[sub];
          if (!account) return undefined;
          return {
            accountId: sub,
            claims: () => ({
              sub,
              ...(account.email !== undefined ? { email: account.email, email_verified: account.emailVerified } : {}),
            }),
          };
        },
      });
      handler = provider.callback();
    },
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

export interface BrowserResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
}

/** A cookie-keeping client: one cookie jar per origin (paths and expiry are ignored). */
export class TestBrowser {
  readonly #jars = new Map<string, Map<string, string>>();
  readonly #ca: string[];

  constructor(caPems: string[]) {
    this.#ca = caPems;
  }

  cookie(origin: string, name: string): string | undefined {
    return this.#jars.get(origin)?.get(name);
  }

  setCookie(origin: string, name: string, value: string): void {
    const jar = this.#jars.get(origin) ?? new Map<string, string>();
    jar.set(name, value);
    this.#jars.set(origin, jar);
  }

  async request(
    method: string,
    url: string,
    options: { form?: Record<string, string>; headers?: Record<string, string> } = {},
  ): Promise<BrowserResponse> {
    const target = new URL(url);
    const jar = this.#jars.get(target.origin) ?? new Map<string, string>();
    this.#jars.set(target.origin, jar);
    const body = options.form ? Buffer.from(new URLSearchParams(options.form).toString()) : undefined;
    return new Promise((resolve, reject) => {
      const req = https.request(
        target,
        {
          method,
          ca: this.#ca,
          agent: false,
          headers: {
            ...(jar.size > 0 ? { cookie: [...jar].map(([k, v]) => `${k}=${v}`).join('; ') } : {}),
            ...(body ? { 'content-type': 'application/x-www-form-urlencoded', 'content-length': body.length } : {}),
            ...options.headers,
          },
        },
        (res) => {
          for (const line of res.headers['set-cookie'] ?? []) {
            const [pair] = line.split(';');
            const at = pair!.indexOf('=');
            const name = pair!.slice(0, at).trim();
            const value = pair!.slice(at + 1).trim();
            if (value === '' || /max-age=0|expires=thu, 01 jan 1970/i.test(line)) jar.delete(name);
            else jar.set(name, value);
          }
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () =>
            resolve({
              status: res.statusCode ?? 0,
              headers: res.headers,
              text: Buffer.concat(chunks).toString('utf8'),
            }),
          );
        },
      );
      req.on('error', reject);
      req.end(body);
    });
  }

  /**
   * Follows the provider's redirects from an authorization URL, submitting its development login
   * form (as `login`) and consent form, until it redirects to a URL outside the issuer. Returns
   * that URL (the platform callback with code and state) without requesting it.
   */
  async signInAtProvider(authorizationUrl: string, issuer: string, login: string): Promise<URL> {
    let next = new URL(authorizationUrl);
    for (let step = 0; step < 20; step++) {
      if (next.origin !== new URL(issuer).origin) return next;
      let res = await this.request('GET', next.href);
      if (res.status === 200) {
        const prompt = /name="prompt" value="(\w+)"/.exec(res.text)?.[1];
        if (!prompt) throw new Error(`unexpected provider page: ${res.text.slice(0, 300)}`);
        const form: Record<string, string> = prompt === 'login' ? { prompt, login, password: 'any' } : { prompt };
        res = await this.request('POST', next.href, { form });
      }
      const location = res.headers.location;
      if (res.status < 300 || res.status >= 400 || typeof location !== 'string') {
        throw new Error(`provider answered ${res.status}: ${res.text.slice(0, 300)}`);
      }
      next = new URL(location, next);
    }
    throw new Error('too many redirects at the provider');
  }
}
