// Run by store.test.ts as a separate process: opens the store given in argv and migrates it, printing
// the names of the migrations this process applied as JSON.
import { migrateToLatest, openStore } from '../../src/store/index.ts';

const [url = '', dataDir = '', schema = ''] = process.argv.slice(2);
const store = await openStore({ url, dataDir, sqliteFile: 'race.db', poolMax: 2, ...(schema ? { schema } : {}) });
try {
  process.stdout.write(JSON.stringify(await migrateToLatest(store.db, store.dialect)));
} finally {
  await store.close();
}
