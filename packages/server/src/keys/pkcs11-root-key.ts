// The root key in an HSM (KEY-1, option c) over PKCS#11 (pkcs11js, tested with SoftHSM2). The HSM holds
// a non-extractable AES-256 key-encryption key; the platform's 32-byte root key exists on disk only
// sealed by it (AES-GCM inside the token) and is unsealed into memory at start. Stealing the data
// directory without the token yields nothing.
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import type * as Pkcs11 from 'pkcs11js';
import { CastellanError } from '../errors/index.ts';

export interface Pkcs11RootKeyOptions {
  module: string;
  tokenLabel: string;
  pin: string;
  keyLabel: string;
  /** The root key sealed by the HSM key (created on first use). */
  sealedFile: string;
}

const AAD = Buffer.from('castellan/v1/root-key');
const fail = (message: string, cause?: unknown) =>
  new CastellanError('ERR_KEY_ROOT_INVALID', {
    message: `PKCS#11 root key: ${message}`,
    ...(cause === undefined ? {} : { cause }),
  });

type Pkcs11Module = typeof Pkcs11;

function loadPkcs11(): Pkcs11Module {
  try {
    // Optional dependency, loaded only when an HSM is configured.
    return createRequire(import.meta.url)('pkcs11js') as Pkcs11Module;
  } catch (error) {
    throw fail('the optional package pkcs11js is not installed (npm install pkcs11js)', error);
  }
}

export function loadRootKeyFromHsm(options: Pkcs11RootKeyOptions): Buffer {
  const P = loadPkcs11();
  const p11 = new P.PKCS11();
  try {
    p11.load(options.module);
  } catch (error) {
    throw fail(`cannot load the module ${options.module}`, error);
  }
  p11.C_Initialize({ flags: P.CKF_OS_LOCKING_OK });
  try {
    const slot = p11.C_GetSlotList(true).find((s) => p11.C_GetTokenInfo(s).label.trim() === options.tokenLabel);
    if (!slot) throw fail(`no token labelled "${options.tokenLabel}"`);
    const session = p11.C_OpenSession(slot, P.CKF_SERIAL_SESSION | P.CKF_RW_SESSION);
    try {
      try {
        p11.C_Login(session, P.CKU_USER, options.pin);
      } catch (error) {
        if ((error as { code?: number }).code !== P.CKR_USER_ALREADY_LOGGED_IN)
          throw fail('login refused (check the PIN)', error);
      }
      const kek = findOrCreateKey(P, p11, session, options.keyLabel);
      const gcm = (iv: Buffer) => ({
        mechanism: P.CKM_AES_GCM,
        parameter: { type: P.CK_PARAMS_GCM, iv, ivBits: 96, aad: AAD, tagBits: 128 },
      });
      if (existsSync(options.sealedFile)) {
        const sealed = Buffer.from(readFileSync(options.sealedFile, 'utf8').trim(), 'base64');
        if (sealed.length !== 12 + 32 + 16) throw fail(`${options.sealedFile} is not a sealed root key`);
        try {
          p11.C_DecryptInit(session, gcm(sealed.subarray(0, 12)), kek);
          return Buffer.from(p11.C_Decrypt(session, sealed.subarray(12), Buffer.alloc(sealed.length)));
        } catch (error) {
          throw fail(`the token's key "${options.keyLabel}" cannot open ${options.sealedFile}`, error);
        }
      }
      const root = randomBytes(32);
      const iv = randomBytes(12);
      p11.C_EncryptInit(session, gcm(iv), kek);
      const ct = Buffer.from(p11.C_Encrypt(session, root, Buffer.alloc(root.length + 16)));
      writeFileSync(options.sealedFile, `${Buffer.concat([iv, ct]).toString('base64')}\n`, { mode: 0o600, flag: 'wx' });
      chmodSync(options.sealedFile, 0o600);
      return root;
    } finally {
      try {
        p11.C_Logout(session);
      } catch {
        // already logged out
      }
      p11.C_CloseSession(session);
    }
  } finally {
    p11.C_Finalize();
  }
}

function findOrCreateKey(
  P: Pkcs11Module,
  p11: InstanceType<Pkcs11Module['PKCS11']>,
  session: Buffer,
  label: string,
): Buffer {
  p11.C_FindObjectsInit(session, [
    { type: P.CKA_CLASS, value: P.CKO_SECRET_KEY },
    { type: P.CKA_LABEL, value: label },
  ]);
  const found = p11.C_FindObjects(session, 2);
  p11.C_FindObjectsFinal(session);
  if (found.length > 1) throw fail(`more than one key labelled "${label}"`);
  if (found[0]) return found[0];
  // Generated inside the token: sensitive, never extractable.
  return p11.C_GenerateKey(session, { mechanism: P.CKM_AES_KEY_GEN }, [
    { type: P.CKA_CLASS, value: P.CKO_SECRET_KEY },
    { type: P.CKA_KEY_TYPE, value: P.CKK_AES },
    { type: P.CKA_VALUE_LEN, value: 32 },
    { type: P.CKA_LABEL, value: label },
    { type: P.CKA_TOKEN, value: true },
    { type: P.CKA_PRIVATE, value: true },
    { type: P.CKA_SENSITIVE, value: true },
    { type: P.CKA_EXTRACTABLE, value: false },
    { type: P.CKA_MODIFIABLE, value: false },
    { type: P.CKA_ENCRYPT, value: true },
    { type: P.CKA_DECRYPT, value: true },
  ]);
}
