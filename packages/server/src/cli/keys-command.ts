// `castellan keys …`: the key lifecycle (KEY-2) through the running platform's administrator API, so
// every operation is authorised and audited in one place.
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { RUNTIME_FILE, type RuntimeInfo } from '../platform.ts';
import { ApiClient } from './api-client.ts';
import { DEMO_ADMIN_TOKEN_FILE } from './demo-command.ts';

export const keysHelp = `Usage: castellan keys <command> [options]

Commands:
  list                     key versions (never their material); --tenant to filter
  create --tenant <t> [--suite intl|sm]   a new pre-active version of a tenant's key
  rotate --tenant <t> [--suite intl|sm]   a new active version; the previous one only decrypts from now on
  activate|suspend|deactivate|compromise|destroy --key <id>
                           move a key version through its lifecycle (destroy makes its data unreadable)

Options:
  --data-dir <dir>         the running platform's data directory (default ./data)
  --url <https-url>        API address (default from runtime.json)
  --ca <file>              CA certificate to pin (default from runtime.json)
  --token-file <file>      administrator credential (default <data-dir>/${DEMO_ADMIN_TOKEN_FILE})
  --json                   print JSON
  -h, --help               show this help`;

export interface KeysOptions {
  'data-dir'?: string;
  url?: string;
  ca?: string;
  'token-file'?: string;
  tenant?: string;
  key?: string;
  suite?: string;
  json?: boolean;
}

interface KeyView {
  id: string;
  tenant: string;
  version: number;
  state: string;
  suite: string;
  stateChangedAt: number;
}

const OPERATIONS = new Set(['activate', 'suspend', 'deactivate', 'compromise', 'destroy']);

export async function keysCommand(
  sub: string | undefined,
  options: KeysOptions,
  out = (l: string) => process.stdout.write(`${l}\n`),
): Promise<number> {
  const usage = (message: string) => {
    process.stderr.write(`castellan: ${message}\n\n${keysHelp}\n`);
    return 2;
  };
  if (!sub || !(sub === 'list' || sub === 'create' || sub === 'rotate' || OPERATIONS.has(sub)))
    return usage(`unknown keys command '${sub ?? ''}'`);
  if ((sub === 'create' || sub === 'rotate') && !options.tenant) return usage(`keys ${sub} needs --tenant`);
  if (OPERATIONS.has(sub) && !options.key) return usage(`keys ${sub} needs --key`);
  const dataDir = resolve(options['data-dir'] ?? 'data');
  const runtimePath = join(dataDir, RUNTIME_FILE);
  const runtime: Partial<RuntimeInfo> = existsSync(runtimePath)
    ? (JSON.parse(readFileSync(runtimePath, 'utf8')) as Partial<RuntimeInfo>)
    : {};
  const url = options.url ?? runtime.httpUrl;
  const caFile = options.ca ?? runtime.caFile ?? join(dataDir, 'pki', 'ca.crt');
  const tokenFile = options['token-file'] ?? join(dataDir, DEMO_ADMIN_TOKEN_FILE);
  if (!url) throw new Error(`no running platform found (${runtimePath} is missing); pass --url`);
  if (!existsSync(caFile)) throw new Error(`CA certificate ${caFile} not found; pass --ca`);
  if (!existsSync(tokenFile)) throw new Error(`administrator credential ${tokenFile} not found; pass --token-file`);
  const api = new ApiClient(url, readFileSync(caFile, 'utf8'), readFileSync(tokenFile, 'utf8').trim());
  let result: KeyView | KeyView[];
  if (sub === 'list') {
    result = (
      await api.request<{ items: KeyView[] }>(
        'GET',
        `/v1/keys${options.tenant ? `?tenant=${encodeURIComponent(options.tenant)}` : ''}`,
      )
    ).items;
  } else if (sub === 'create' || sub === 'rotate') {
    result = await api.request<KeyView>('POST', sub === 'create' ? '/v1/keys' : '/v1/keys/rotate', {
      tenant: options.tenant,
    });
  } else {
    result = await api.request<KeyView>('POST', `/v1/keys/${encodeURIComponent(options.key!)}/${sub}`);
  }
  if (options.json) out(JSON.stringify(result, null, 2));
  else {
    for (const k of Array.isArray(result) ? result : [result]) {
      out(
        `${k.id}  tenant ${k.tenant}  v${k.version}  ${k.suite}  ${k.state}  (since ${new Date(k.stateChangedAt).toISOString()})`,
      );
    }
  }
  return 0;
}
