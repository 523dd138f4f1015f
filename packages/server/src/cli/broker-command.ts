// `castellan broker --conformance`: only the MQTT broker core, with the anonymous conformance hooks, on
// the plain-TCP loopback conformance listener. No database, no HTTP API, no devices. For third-party
// conformance suites and fuzzers; the production broker runs inside `castellan up`.
import { defaultMqttConfig } from '../config/index.ts';
import { conformanceHooks, MqttBroker, startConformanceListener } from '../gateway/mqtt/index.ts';
import { createLogger } from '../logging/index.ts';
import { runUntilSignal } from './run-until-signal.ts';

export const brokerHelp = `Usage: castellan broker --conformance --port <n> [--host <loopback address>]

Runs only the MQTT broker core (the same parser, handlers, QoS, session and subscription code as
\`castellan up\`) for MQTT conformance suites and fuzzers: plain TCP, ANONYMOUS and OPEN (no
authentication, every topic allowed), loopback only. No database and no HTTP API. Prints
\`listening on mqtt://HOST:PORT\` on stdout; stops gracefully on SIGTERM or Ctrl-C.

Options:
  --conformance     required: acknowledges the anonymous, open conformance mode
  --port <n>        TCP port (0 picks a free port)
  --host <address>  a loopback address: 127.0.0.0/8, ::1 or localhost (default 127.0.0.1);
                    any other address is refused
  -h, --help        show this help
The production broker (MQTT over TLS, device authentication) runs inside \`castellan up\`.`;

export async function brokerCommand(values: { conformance?: boolean; port?: string; host?: string }): Promise<number> {
  if (!values.conformance) {
    process.stderr.write(
      'castellan: `castellan broker` runs only the anonymous conformance broker and needs --conformance; ' +
        'the production broker (MQTT over TLS) runs inside `castellan up`.\n' +
        'Run `castellan broker --help` for usage.\n',
    );
    return 2;
  }
  if (values.port === undefined || !/^\d{1,5}$/.test(values.port) || Number(values.port) > 65535) {
    process.stderr.write('castellan: broker --conformance needs --port <n> with 0 <= n <= 65535\n');
    return 2;
  }
  const port = Number(values.port);
  const host = values.host ?? '127.0.0.1';
  // Logs go to stderr: stdout carries only the listening address, for scripts to read.
  const log = createLogger({ level: 'info', destination: process.stderr }).child({ component: 'mqtt-conformance' });
  // The same limits as the production broker's defaults (config-schema.ts, mqtt.*).
  const broker = new MqttBroker({ hooks: conformanceHooks(), limits: defaultMqttConfig(), log });
  // Throws ERR_BROKER_CONFORMANCE_NOT_LOOPBACK for a non-loopback host (main.ts prints it, exit 1).
  const listener = await startConformanceListener(broker, { host, port }, log);
  process.stderr.write(`\n  ${listener.warning}\n\n`);
  process.stdout.write(`listening on ${listener.url()}\n`);
  return runUntilSignal(log, async () => {
    await broker.close();
    await listener.close();
  });
}
