// Long-running commands (`up`, `broker`) serve until SIGTERM or Ctrl-C, then stop gracefully; a second
// signal exits at once. Resolves with the process exit code.
import type { Logger } from 'pino';

export function runUntilSignal(log: Logger, close: () => Promise<void>): Promise<number> {
  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) {
        process.stderr.write('castellan: second signal, exiting now\n');
        process.exit(1);
      }
      stopping = true;
      log.info({ signal }, 'shutting down');
      close().then(
        () => resolve(0),
        (error: unknown) => {
          log.error({ err: error }, 'shutdown failed');
          resolve(1);
        },
      );
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
  });
}
