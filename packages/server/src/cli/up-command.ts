// `castellan up`: the whole platform in this process, until SIGTERM/SIGINT, then a graceful stop.
import { loadConfig } from '../config/index.ts';
import { startPlatform } from '../platform.ts';
import { runUntilSignal } from './run-until-signal.ts';

export const upHelp = `Usage: castellan up [options]

Runs the platform: HTTPS API (default 8443) and MQTT over TLS (default 8883), embedded SQLite in
./data unless DATABASE_URL points at PostgreSQL. Stops gracefully on SIGTERM or Ctrl-C.

Options:
  --config <file>     configuration file (JSON); default ./castellan.config.json if present
  --data-dir <dir>    data directory (overrides dataDir)
  -h, --help          show this help
Every configuration key can also be set from the environment: see docs/configuration.md.`;

export async function upCommand(values: { config?: string; 'data-dir'?: string }): Promise<number> {
  const config = loadConfig({
    ...(values.config ? { file: values.config } : {}),
    ...(values['data-dir'] ? { overrides: { dataDir: values['data-dir'] } } : {}),
  });
  const platform = await startPlatform(config);
  process.stderr.write(
    `\n  Castellan is up.\n    HTTPS API:     ${platform.httpUrl}\n    MQTT over TLS: ${platform.mqttUrl}\n` +
      '  Try it: run `npx castellan demo` in a second terminal from this folder. Stop with Ctrl-C.\n\n',
  );
  return runUntilSignal(platform.log, () => platform.close());
}
