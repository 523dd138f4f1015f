// The MQTT conformance listener: plain TCP, loopback only, anonymous and open. It serves the SAME broker
// core as production (MqttBroker: parser, handlers, QoS, sessions, subscriptions) so that third-party
// conformance suites and fuzzers exercise the real code, but only with the branded conformance hooks
// and never on an address another machine can reach. Production (`castellan up`) never starts it.
import net, { type AddressInfo, BlockList, isIP } from 'node:net';
import type { Logger } from 'pino';
import { CastellanError } from '../../errors/index.ts';
import { isConformanceHooks } from './conformance-hooks.ts';
import type { MqttBroker } from './mqtt-broker.ts';
import { formatHostPort } from './mqtt-listener.ts';

export const CONFORMANCE_WARNING =
  'WARNING: MQTT conformance listener: ANONYMOUS and OPEN (no authentication, every topic allowed, ' +
  'plain TCP without TLS). For conformance suites and fuzzers on this machine only; never for devices ' +
  'or production.';

const loopback = new BlockList();
loopback.addSubnet('127.0.0.0', 8, 'ipv4');
loopback.addAddress('::1', 'ipv6');

/** 127.0.0.0/8, ::1 or the name `localhost`; nothing else (not 0.0.0.0, ::, LAN addresses or other names). */
export function isLoopbackHost(host: string): boolean {
  if (host.toLowerCase() === 'localhost') return true;
  const family = isIP(host);
  if (family === 4) return loopback.check(host, 'ipv4');
  if (family === 6) return loopback.check(host, 'ipv6');
  return false;
}

function notLoopback(host: string): CastellanError {
  return new CastellanError('ERR_BROKER_CONFORMANCE_NOT_LOOPBACK', {
    message:
      `The MQTT conformance listener refuses host '${host}': it is anonymous and open, so it listens only ` +
      'on a loopback address (127.0.0.0/8, ::1 or localhost)',
  });
}

export interface ConformanceListener {
  readonly server: net.Server;
  /** The loud warning, also logged at warn level: print it wherever a person will see it. */
  readonly warning: string;
  address(): AddressInfo;
  /** mqtt://host:port of the bound address. */
  url(): string;
  close(): Promise<void>;
}

export async function startConformanceListener(
  broker: MqttBroker,
  options: { host: string; port: number },
  log: Logger,
): Promise<ConformanceListener> {
  if (!isLoopbackHost(options.host)) throw notLoopback(options.host);
  if (!broker.conformance || !isConformanceHooks(broker.hooks)) {
    throw new CastellanError('ERR_BROKER_CONFORMANCE_HOOKS_REFUSED', {
      message: 'The MQTT conformance listener needs a broker built with conformanceHooks(); it refuses any other hooks',
    });
  }
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    const remote = socket.remoteAddress ?? 'unknown';
    // Bound to loopback, so only this machine can connect; checked again per connection all the same.
    if (!isLoopbackHost(remote.replace(/^::ffff:/, ''))) {
      socket.destroy();
      return;
    }
    socket.setNoDelay(true);
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    broker.handle(socket, remote);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) =>
      reject(
        new CastellanError('ERR_LISTEN_FAILED', {
          message: `Cannot listen for MQTT (conformance) on ${formatHostPort(options.host, options.port)}: ${error.code ?? error.message}`,
          cause: error,
        }),
      ),
    );
    server.listen(options.port, options.host, () => {
      server.removeAllListeners('error');
      server.on('error', (error) => log.error({ err: error }, 'mqtt conformance: listener error'));
      resolve();
    });
  });
  const bound = server.address() as AddressInfo;
  // A name (localhost) is resolved by listen(): make sure it really ended up on loopback.
  if (!isLoopbackHost(bound.address)) {
    await new Promise<void>((resolve) => server.close(() => resolve()));
    throw notLoopback(`${options.host} (bound to ${bound.address})`);
  }
  log.warn({ address: bound.address, port: bound.port, conformance: true }, CONFORMANCE_WARNING);
  return {
    server,
    warning: CONFORMANCE_WARNING,
    address: () => server.address() as AddressInfo,
    url: () => `mqtt://${formatHostPort(bound.address, (server.address() as AddressInfo | null)?.port ?? bound.port)}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        // Connections the broker has not ended yet get a FIN, then are dropped if they linger.
        for (const socket of sockets) {
          socket.end();
          setTimeout(() => socket.destroy(), 1000).unref();
        }
      }),
  };
}
