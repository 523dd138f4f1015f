// The root key: 32 bytes from configuration (base64 value or key file), or, in development only,
// generated into the data directory with 0600 permissions. Everything else is derived from it (HKDF);
// the key-system issue puts tenant keys and an HSM option beneath/around it.
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { CastellanError } from '../errors/index.ts';
import { loadRootKeyFromHsm } from './pkcs11-root-key.ts';

export const ROOT_KEY_BYTES = 32;

export interface RootKeyConfig {
  environment: 'development' | 'production';
  dataDir: string;
  rootKey: {
    file: string;
    base64: string;
    pkcs11Module?: string;
    pkcs11Token?: string;
    pkcs11Pin?: string;
    pkcs11KeyLabel?: string;
    pkcs11SealedFile?: string;
  };
}

export interface LoadedRootKey {
  key: Buffer;
  source: 'config' | 'file' | 'generated' | 'hsm';
  file?: string;
}

function decodeKey(text: string, what: string): Buffer {
  const trimmed = text.trim();
  const key = /^[A-Za-z0-9+/=_-]+$/.test(trimmed) ? Buffer.from(trimmed, 'base64') : Buffer.alloc(0);
  if (key.length !== ROOT_KEY_BYTES) {
    throw new CastellanError('ERR_KEY_ROOT_INVALID', {
      message: `${what} must hold exactly ${ROOT_KEY_BYTES} bytes, base64-encoded`,
    });
  }
  return key;
}

/** Loads the root key; `create: false` (read-only tools) never generates one. */
export function loadRootKey(config: RootKeyConfig, options: { create?: boolean } = {}): LoadedRootKey {
  const hsm = config.rootKey;
  if (hsm.pkcs11Module) {
    const sealedFile = resolve(hsm.pkcs11SealedFile || join(config.dataDir, 'root.key.hsm'));
    if (options.create === false && !existsSync(sealedFile)) {
      throw new CastellanError('ERR_KEY_ROOT_INVALID', { message: `No sealed root key at ${sealedFile}` });
    }
    mkdirSync(dirname(sealedFile), { recursive: true, mode: 0o700 });
    const key = loadRootKeyFromHsm({
      module: hsm.pkcs11Module,
      tokenLabel: hsm.pkcs11Token ?? 'castellan',
      pin: hsm.pkcs11Pin ?? '',
      keyLabel: hsm.pkcs11KeyLabel ?? 'castellan-root-kek',
      sealedFile,
    });
    return { key, source: 'hsm', file: sealedFile };
  }
  if (config.rootKey.base64) {
    return { key: decodeKey(config.rootKey.base64, 'rootKey.base64'), source: 'config' };
  }
  if (config.environment === 'production' && !config.rootKey.file) {
    // Production never falls back to the development key in the data directory.
    throw new CastellanError('ERR_KEY_ROOT_INVALID', {
      message: 'Production must supply the root key through rootKey.file or rootKey.base64',
    });
  }
  const file = resolve(config.rootKey.file || join(config.dataDir, 'root.key'));
  if (existsSync(file)) {
    return { key: decodeKey(readFileSync(file, 'utf8'), `root key file ${file}`), source: 'file', file };
  }
  if (options.create === false) {
    throw new CastellanError('ERR_KEY_ROOT_INVALID', {
      message: `No root key at ${file}: point --data-dir at the platform's data directory, or pass --public-key`,
    });
  }
  if (config.rootKey.file || config.environment === 'production') {
    throw new CastellanError('ERR_KEY_ROOT_INVALID', {
      message: `Root key file ${file} does not exist; production must supply rootKey.file or rootKey.base64`,
    });
  }
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  const key = randomBytes(ROOT_KEY_BYTES);
  // 'wx' fails rather than overwrite a key another process wrote in the meantime.
  writeFileSync(file, `${key.toString('base64')}\n`, { mode: 0o600, flag: 'wx' });
  chmodSync(file, 0o600);
  return { key, source: 'generated', file };
}
