// `castellan keys …`: the key lifecycle (KEY-2) through the running platform's administrator API, so
// every operation is authorised and audited in one place.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { RUNTIME_FILE, type RuntimeInfo } from '../platform.ts';
import { ApiClient } from './api-client.ts';
import { DEMO_ADMIN_TOKEN_FILE } from './demo-command.ts';

export const keysHelp = `Usage: castellan keys <command> [options]

Commands:
  list                     key versions (never their material); --tenant to filter
  create --tenant <t> [--suite intl|sm] [--user <u>]
                           a new pre-active version of a tenant's key (or of one user's key)
  rotate --tenant <t> [--suite intl|sm] [--user <u>]
                           a new active version; the previous one only decrypts from now on
  shred --tenant <t> [--user <u>]
                           crypto-shred: destroy every version of the user's key, or of the tenant's
                           key and all its users' keys
  activate|suspend|deactivate|compromise|destroy --key <id>
                           move a key version through its lifecycle (destroy makes its data unreadable)
  backup --out <file>      back up the key store, sealed by the active backup key (not included)
  restore --in <file> [--escrow <file> --private-key <pem-file>]
                           restore key versions missing from the store (destroyed ones stay destroyed)
  backup-keys              list backup keys
  backup-key-rotate        a new active backup key; the old one is retired
  backup-key-destroy --key <id>          every backup sealed by it becomes unreadable
  backup-key-escrow --key <id> --recipient <public-pem-file> --out <file>
                           seal a backup key to a recipient P-256 key for disaster recovery
  distribute --key <id> --recipient <public-pem-file> --out <file>
                           seal a key version to a recipient P-256 key (e.g. a gateway or an HSM)

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
  user?: string;
  out?: string;
  in?: string;
  escrow?: string;
  'private-key'?: string;
  recipient?: string;
  json?: boolean;
}

interface KeyView {
  id: string;
  tenant: string;
  user: string | null;
  version: number;
  state: string;
  suite: string;
  stateChangedAt: number;
}

const OPERATIONS = new Set(['activate', 'suspend', 'deactivate', 'compromise', 'destroy']);
const BACKUP_COMMANDS = new Set([
  'backup',
  'restore',
  'backup-keys',
  'backup-key-rotate',
  'backup-key-destroy',
  'backup-key-escrow',
  'distribute',
]);

export async function keysCommand(
  sub: string | undefined,
  options: KeysOptions,
  out = (l: string) => process.stdout.write(`${l}\n`),
): Promise<number> {
  const usage = (message: string) => {
    process.stderr.write(`castellan: ${message}\n\n${keysHelp}\n`);
    return 2;
  };
  if (
    !sub ||
    !(
      sub === 'list' ||
      sub === 'create' ||
      sub === 'rotate' ||
      sub === 'shred' ||
      OPERATIONS.has(sub) ||
      BACKUP_COMMANDS.has(sub)
    )
  ) {
    return usage(`unknown keys command '${sub ?? ''}'`);
  }
  const sealsToRecipient = sub === 'backup-key-escrow' || sub === 'distribute';
  if ((sub === 'backup' || sealsToRecipient) && !options.out) return usage(`keys ${sub} needs --out`);
  if (sub === 'restore' && !options.in) return usage('keys restore needs --in');
  if ((sub === 'backup-key-destroy' || sealsToRecipient) && !options.key) return usage(`keys ${sub} needs --key`);
  if (sealsToRecipient && !options.recipient) return usage(`keys ${sub} needs --recipient`);
  if (options.suite !== undefined && options.suite !== 'intl' && options.suite !== 'sm')
    return usage(`--suite must be intl or sm, not '${options.suite}'`);
  if ((sub === 'create' || sub === 'rotate' || sub === 'shred') && !options.tenant)
    return usage(`keys ${sub} needs --tenant`);
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
  if (BACKUP_COMMANDS.has(sub)) return backupCommand(api, sub, options, out);
  let result: KeyView | KeyView[];
  if (sub === 'list') {
    result = (
      await api.request<{ items: KeyView[] }>(
        'GET',
        `/v1/keys${options.tenant ? `?tenant=${encodeURIComponent(options.tenant)}` : ''}`,
      )
    ).items;
  } else if (sub === 'shred') {
    result = (
      await api.request<{ items: KeyView[] }>('POST', '/v1/keys/shred', {
        tenant: options.tenant,
        ...(options.user ? { user: options.user } : {}),
      })
    ).items;
  } else if (sub === 'create' || sub === 'rotate') {
    result = await api.request<KeyView>('POST', sub === 'create' ? '/v1/keys' : '/v1/keys/rotate', {
      tenant: options.tenant,
      ...(options.suite ? { suite: options.suite } : {}),
      ...(options.user ? { user: options.user } : {}),
    });
  } else {
    result = await api.request<KeyView>('POST', `/v1/keys/${encodeURIComponent(options.key!)}/${sub}`);
  }
  if (options.json) out(JSON.stringify(result, null, 2));
  else {
    for (const k of Array.isArray(result) ? result : [result]) {
      out(
        `${k.id}  tenant ${k.tenant}${k.user ? `  user ${k.user}` : ''}  v${k.version}  ${k.suite}  ${k.state}  (since ${new Date(k.stateChangedAt).toISOString()})`,
      );
    }
  }
  return 0;
}

async function backupCommand(
  api: ApiClient,
  sub: string,
  options: KeysOptions,
  out: (line: string) => void,
): Promise<number> {
  const write = (file: string, value: unknown) =>
    writeFileSync(resolve(file), `${JSON.stringify(value, null, 2)}\n`, { mode: 0o600 });
  const read = (file: string): unknown => JSON.parse(readFileSync(resolve(file), 'utf8'));
  let result: unknown;
  if (sub === 'backup') {
    const backup = await api.request<{ backupKeyId: string; keys: unknown[] }>('POST', '/v1/keys/backups');
    write(options.out!, backup);
    result = { file: resolve(options.out!), backupKeyId: backup.backupKeyId, keys: backup.keys.length };
  } else if (sub === 'restore') {
    result = await api.request('POST', '/v1/keys/restore', {
      backup: read(options.in!),
      ...(options.escrow ? { escrow: read(options.escrow) } : {}),
      ...(options['private-key'] ? { privateKeyPem: readFileSync(resolve(options['private-key']), 'utf8') } : {}),
    });
  } else if (sub === 'backup-keys') {
    result = (await api.request<{ items: unknown[] }>('GET', '/v1/keys/backup-keys')).items;
  } else if (sub === 'backup-key-rotate') {
    result = await api.request('POST', '/v1/keys/backup-keys/rotate');
  } else if (sub === 'backup-key-destroy') {
    await api.request('POST', `/v1/keys/backup-keys/${encodeURIComponent(options.key!)}/destroy`);
    result = { id: options.key, state: 'destroyed' };
  } else if (sub === 'distribute') {
    const distributed = await api.request('POST', `/v1/keys/${encodeURIComponent(options.key!)}/distribute`, {
      recipientPublicKeyPem: readFileSync(resolve(options.recipient!), 'utf8'),
    });
    write(options.out!, distributed);
    result = { file: resolve(options.out!), keyId: options.key };
  } else {
    const escrow = await api.request('POST', `/v1/keys/backup-keys/${encodeURIComponent(options.key!)}/escrow`, {
      recipientPublicKeyPem: readFileSync(resolve(options.recipient!), 'utf8'),
    });
    write(options.out!, escrow);
    result = { file: resolve(options.out!), backupKeyId: options.key };
  }
  out(JSON.stringify(result, null, options.json ? 2 : undefined));
  return 0;
}
