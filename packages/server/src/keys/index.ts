export { generateDevPki, loadTlsMaterial, type TlsConfig, type TlsMaterial } from './dev-pki.ts';
export { type LoadedRootKey, loadRootKey, ROOT_KEY_BYTES, type RootKeyConfig } from './root-key.ts';
export {
  canDecrypt,
  canEncrypt,
  KEY_OPERATIONS,
  KEY_STATES,
  type KeyOperation,
  type KeyState,
  nextState,
} from './key-lifecycle.ts';
export {
  type BackupKeyEscrow,
  type DistributedKey,
  type KeyAuditEvent,
  type KeyScope,
  KeyService,
  type KeyServiceOptions,
  type KeyStoreBackup,
  type KeyVersion,
  openDistributedKey,
} from './key-service.ts';
export { keyRoutes } from './key-routes.ts';
export { SecretBox } from './secret-box.ts';
