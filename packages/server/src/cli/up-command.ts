// `castellan up`: the whole platform in this process, until SIGTERM/SIGINT, then a graceful stop. With
// cluster.workers > 1 (scale mode) this process is the primary and forks the workers that serve.
import { announceReady, isClusterWorker, runPrimary } from '../cluster/index.ts';
import { loadConfig } from '../config/index.ts';
import { RUNTIME_FILE, startPlatform } from '../platform.ts';
import { runUntilSignal } from './run-until-signal.ts';

export const upHelp = `Usage: castellan up [options]

Runs the platform: HTTPS API (default 8443) and MQTT over TLS (default 8883), embedded SQLite in
./data unless DATABASE_URL points at PostgreSQL. Stops gracefully on SIGTERM or Ctrl-C.
Scale mode (cluster.enabled, PostgreSQL and Redis): cluster.workers processes share the listeners.

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
  if (config.cluster.workers > 1 && !isClusterWorker()) {
    return runPrimary({
      workers: config.cluster.workers,
      dataDir: config.dataDir,
      runtimeFileName: RUNTIME_FILE,
      notice: (message) => process.stderr.write(`${message}\n`),
    });
  }
  const worker = isClusterWorker();
  const platform = await startPlatform(config, worker ? { runtimeFile: false } : {});
  if (worker) {
    announceReady({
      httpUrl: platform.httpUrl,
      mqttUrl: platform.mqttUrl,
      caFile: platform.runtimeCaFile,
      nodeId: platform.cluster?.nodeId ?? null,
    });
  } else {
    process.stderr.write(
      `\n  Castellan is up.\n    HTTPS API:     ${platform.httpUrl}\n    MQTT over TLS: ${platform.mqttUrl}\n` +
        '  Try it: run `npx castellan demo` in a second terminal from this folder. Stop with Ctrl-C.\n\n',
    );
  }
  return runUntilSignal(platform.log, () => platform.close());
}
