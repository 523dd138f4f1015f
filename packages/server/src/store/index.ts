export { type DialectName, type OpenStoreOptions, openStore, type Store } from './database.ts';
export { type FsyncFunction, WalSyncer } from './sqlite-durable-driver.ts';
export { migrateToLatest } from './migrations.ts';
export type * from './schema.ts';
