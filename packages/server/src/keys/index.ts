export { generateDevPki, loadTlsMaterial, type TlsConfig, type TlsMaterial } from './dev-pki.ts';
export { type LoadedRootKey, loadRootKey, ROOT_KEY_BYTES, type RootKeyConfig } from './root-key.ts';
export { SecretBox } from './secret-box.ts';
