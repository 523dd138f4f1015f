// Starts a real platform for a test: ports 0 on 127.0.0.1, a temporary data directory, SQLite or a
// fresh PostgreSQL schema, and every log line captured so tests can search them.
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import https from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { Writable } from 'node:stream';
import tls from 'node:tls';
import type { CastellanConfig } from '../../src/config/index.ts';
import { type DeepPartial, loadConfig } from '../../src/config/index.ts';
import { type AccessKey, signRequest } from '@castellan/protocol';
import { totpCode } from '../../src/accounts/index.ts';
import { type Platform, startPlatform } from '../../src/platform.ts';
import { type DialectName, dropSchema, POSTGRES_URL, pgQuery, uniqueSchema } from './dialects.ts';

export interface CapturedLogs {
  readonly lines: string[];
  text(): string;
}

export function captureLogs(): { stream: Writable; logs: CapturedLogs } {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk, _encoding, callback) {
      for (const line of String(chunk).split('\n')) if (line) lines.push(line);
      callback();
    },
  });
  return { stream, logs: { lines, text: () => lines.join('\n') } };
}

export interface TestPlatform {
  platform: Platform;
  dialect: DialectName;
  dataDir: string;
  schema: string | undefined;
  logs: CapturedLogs;
  notices: string[];
  /** Runs a SELECT directly against the store, bypassing the platform's code. */
  query<T = Record<string, unknown>>(sql: string, values?: unknown[]): Promise<T[]>;
  close(): Promise<void>;
}

export async function startTestPlatform(
  dialect: DialectName,
  overrides: DeepPartial<CastellanConfig> = {},
): Promise<TestPlatform> {
  const dataDir = mkdtempSync(join(tmpdir(), 'castellan-test-'));
  const schema = dialect === 'postgres' ? uniqueSchema() : undefined;
  const config = loadConfig({
    env: {},
    cwd: dataDir,
    overrides: {
      ...overrides,
      dataDir,
      log: { level: 'debug', ...overrides.log },
      http: { host: '127.0.0.1', port: 0, ...overrides.http },
      // Every test client shares 127.0.0.1: the per-address connect limiter before TLS is opened wide
      // (admission tests set their own).
      mqtt: {
        host: '127.0.0.1',
        port: 0,
        connectTimeoutMs: 5000,
        connectsPerIpPerSecond: 1_000_000,
        connectBurstPerIp: 1_000_000,
        ...overrides.mqtt,
      },
      admin: { port: 0, ...overrides.admin },
      // Generous guard thresholds: every test client shares 127.0.0.1, so one test's failures must not
      // block the next. Guard tests set their own.
      guard: {
        httpPerIpPerMinute: 1_000_000,
        httpPerCredentialPerMinute: 1_000_000,
        httpWritesPerCredentialPerMinute: 1_000_000,
        mqttConnectsPerIpPerMinute: 1_000_000,
        deviceMessagesPerSecond: 100_000,
        deviceMessagesPerDay: 100_000_000,
        productMessagesPerSecond: 10_000_000,
        authFailuresPerIp: 100_000,
        authFailuresPerDevice: 100_000,
        invalidRequestsPerIp: 1_000_000,
        deviceStateChangesPerMinute: 1_000_000,
        ...overrides.guard,
      },
      database:
        dialect === 'postgres' ? { url: POSTGRES_URL, schema, ...overrides.database } : { ...overrides.database },
    },
  });
  const { stream, logs } = captureLogs();
  const notices: string[] = [];
  const platform = await startPlatform(config, { logDestination: stream, notice: (m) => notices.push(m) });
  return {
    platform,
    dialect,
    dataDir,
    schema,
    logs,
    notices,
    async query<T>(sql: string, values: unknown[] = []): Promise<T[]> {
      if (dialect === 'postgres') return pgQuery<T>(schema!, sql, values);
      // A second, read-only connection: sees only what the platform committed.
      const db = new DatabaseSync(join(dataDir, 'castellan.db'), { readOnly: true });
      try {
        const pgToSqlite = sql.replace(/\$(\d+)/g, '?');
        return db.prepare(pgToSqlite).all(...(values as never[])) as T[];
      } finally {
        db.close();
      }
    },
    async close() {
      await platform.close();
      if (schema) {
        await dropSchema(schema);
        await dropSchema(`${schema}_keys`);
      }
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

export interface HttpResult<T = unknown> {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: T;
  text: string;
}

/** A raw HTTPS request pinned to the platform CA; never throws on HTTP error statuses. */
// biome-ignore lint/suspicious/noExplicitAny: tests read response bodies loosely and assert on them.
export function request<T = any>(
  platform: Pick<Platform, 'httpUrl' | 'caPem'>,
  method: string,
  path: string,
  options: {
    /** Loopback source address (127.x.y.z) to appear as another client. */
    localAddress?: string;
    /** A bearer token, or an operator access key: then the request is signed (docs/api-signing.md). */
    token?: string | OperatorKey;
    body?: unknown;
    rawBody?: string | Buffer;
    contentType?: string;
    headers?: Record<string, string>;
  } = {},
): Promise<HttpResult<T>> {
  const payload =
    options.rawBody !== undefined
      ? Buffer.from(options.rawBody)
      : options.body !== undefined
        ? Buffer.from(JSON.stringify(options.body))
        : undefined;
  const url = new URL(path, platform.httpUrl);
  const credentials =
    typeof options.token === 'string'
      ? { authorization: `Bearer ${options.token}` }
      : options.token
        ? {
            host: url.host,
            ...signRequest({ key: options.token, method, target: path, host: url.host, body: payload }),
          }
        : {};
  return new Promise((resolve, reject) => {
    const req = https.request(
      url,
      {
        method,
        ca: platform.caPem,
        agent: false,
        ...(options.localAddress ? { localAddress: options.localAddress } : {}),
        headers: {
          ...(payload
            ? { 'content-type': options.contentType ?? 'application/json', 'content-length': payload.length }
            : {}),
          ...credentials,
          ...options.headers,
        },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let body: unknown = text;
          try {
            body = text ? JSON.parse(text) : null;
          } catch {
            // not JSON: the raw text is in `text`
          }
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: body as T, text });
        });
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

/** A TLS connection to one of the platform's listeners, verified against its CA. */
export async function openTls(platform: Platform, port: number): Promise<tls.TLSSocket> {
  const socket = tls.connect({ host: '127.0.0.1', port, ca: platform.caPem, servername: 'localhost' });
  await once(socket, 'secureConnect');
  return socket;
}

/** Sends raw bytes over TLS to the API and returns the raw response (for requests HTTP clients won't send). */
export async function rawHttps(platform: Platform, bytes: string): Promise<string> {
  const socket = await openTls(platform, platform.httpPort);
  const chunks: Buffer[] = [];
  socket.on('data', (c: Buffer) => chunks.push(c));
  socket.on('error', () => {});
  socket.write(bytes);
  await once(socket, 'close');
  return Buffer.concat(chunks).toString('utf8');
}

export interface Tenant {
  adminToken: string;
  vendorId: string;
  vendorCode: string;
  /** The vendor's operator access key (ORG-2); request() signs with it. */
  vendorToken: OperatorKey;
  productId: string;
  productCode: string;
  devices: { id: string; secret: string }[];
}

/** Walks the foundation path through the API: setup (once) → vendor → access key → product → devices. */
export const TEST_STAFF_PASSWORD = 'staple battery horse correct 42';

/**
 * Completes first-run setup (superadmin with password and TOTP) and confirms the TOTP factor, so the
 * returned staff credential can act (OPS-2).
 */
export async function setupStaff(p: Pick<Platform, 'httpUrl' | 'caPem' | 'setupToken'>): Promise<string> {
  const setup = await request(p, 'POST', '/v1/setup', {
    body: { setupToken: p.setupToken, adminName: 'test admin', username: 'admin', password: TEST_STAFF_PASSWORD },
  });
  if (setup.status !== 201) throw new Error(`setup failed: ${setup.text}`);
  const token = setup.body.credential.token as string;
  const confirm = await request(p, 'POST', '/v1/staff/mfa/totp/confirm', {
    token,
    body: { code: totpCode(setup.body.totp.secret as string) },
  });
  if (confirm.status !== 200) throw new Error(`TOTP confirmation failed: ${confirm.text}`);
  return token;
}

/** An operator access key as issued: ID and secret (ORG-2). */
export type OperatorKey = AccessKey;

/** Issues an operator access key for a vendor with a staff token (all scopes unless given). */
export async function issueAccessKey(
  p: Pick<Platform, 'httpUrl' | 'caPem'>,
  staffToken: string,
  vendorId: string,
  body: { label?: string; scopes?: string[]; allowedCidrs?: string[] } = {},
): Promise<OperatorKey> {
  const issued = await request(p, 'POST', `/v1/vendors/${vendorId}/access-keys`, {
    token: staffToken,
    body: { label: 'tests', ...body },
  });
  if (issued.status !== 201) throw new Error(`access key issue failed: ${issued.text}`);
  return { id: issued.body.id as string, secret: issued.body.secret as string };
}

export async function provisionTenant(tp: TestPlatform, deviceCount = 2, adminToken?: string): Promise<Tenant> {
  const p = tp.platform;
  let admin = adminToken;
  if (!admin) {
    admin = await setupStaff(p);
  }
  const vendor = await request(p, 'POST', '/v1/vendors', { token: admin, body: { name: 'Test Vendor' } });
  const vendorToken = await issueAccessKey(p, admin, vendor.body.id);
  const product = await request(p, 'POST', '/v1/products', {
    token: vendorToken,
    body: { name: 'Test Plug', category: 'plug' },
  });
  if (deviceCount === 0) {
    return {
      adminToken: admin,
      vendorId: vendor.body.id,
      vendorCode: vendor.body.code,
      vendorToken,
      productId: product.body.id,
      productCode: product.body.code,
      devices: [],
    };
  }
  const devices = await request(p, 'POST', `/v1/products/${product.body.id}/devices`, {
    token: vendorToken,
    body: { count: deviceCount },
  });
  if (devices.status !== 201) throw new Error(`device creation failed: ${devices.text}`);
  return {
    adminToken: admin,
    vendorId: vendor.body.id,
    vendorCode: vendor.body.code,
    vendorToken,
    productId: product.body.id,
    productCode: product.body.code,
    devices: devices.body.devices,
  };
}
