// The plain-TCP MQTT listener for devices without TLS (CHAN-3, CHAN-4; mqtt.secureChannelEnabled, off by
// default). It serves the secure channel only: its profile refuses every CONNECT without the secure
// channel's Authentication Method (0x8C) and MQTT 3.1.1 (0x01), so nothing on it ever runs as plain MQTT;
// payloads are sealed frames both ways (listener-profile.ts, secure-channel-broker-hooks.ts).
//
// The same admission gate as the TLS listener (connection-admission.ts: CIDR lists, IP blocks, the
// per-network connect limiter, the cap on handshakes in progress). Here the handshake in progress is
// the CONNECT carrying the hello: its slot is released once the CONNECT is decided (or the socket
// closes), where the TLS listener releases it when TLS completes.
import net, { type AddressInfo, type Socket } from 'node:net';
import type { Logger } from 'pino';
import { CastellanError } from '../../errors/index.ts';
import { isConformanceHooks } from './conformance-hooks.ts';
import { type AdmissionOptions, ConnectionAdmission, DEFAULT_ADMISSION } from './connection-admission.ts';
import type { ListenerProfile } from './listener-profile.ts';
import type { MqttBroker } from './mqtt-broker.ts';
import { formatHostPort } from './mqtt-listener.ts';

export interface SecureChannelListener {
  readonly server: net.Server;
  readonly admission: ConnectionAdmission;
  address(): AddressInfo;
  /** Stops accepting connections (the broker's close() ends the open ones). */
  close(): Promise<void>;
}

export async function startSecureChannelListener(
  broker: MqttBroker,
  profile: ListenerProfile,
  options: {
    host: string;
    port: number;
    maxConnections: number;
    admission?: Partial<AdmissionOptions>;
  },
  log: Logger,
): Promise<SecureChannelListener> {
  if (broker.conformance || isConformanceHooks(broker.hooks)) {
    throw new CastellanError('ERR_BROKER_CONFORMANCE_HOOKS_REFUSED', {
      message:
        'The secure-channel MQTT listener refuses a broker built with the anonymous conformance hooks; ' +
        'they are for `castellan broker --conformance` on loopback only',
    });
  }
  const server = net.createServer((socket: Socket) => {
    socket.setNoDelay(true);
    // ConnectionAdmission frees a pending slot on 'secureConnection' (the TLS listener's end of the
    // handshake); this listener's handshake ends when the CONNECT is decided.
    const settled = () => server.emit('secureConnection', socket);
    const perSocket: ListenerProfile = {
      authenticationMethod: profile.authenticationMethod,
      authenticate: (request) => profile.authenticate(request).finally(settled),
    };
    broker.handle(socket, socket.remoteAddress ?? 'unknown', perSocket);
  });
  server.maxConnections = options.maxConnections;
  const admission = new ConnectionAdmission({ ...DEFAULT_ADMISSION, ...options.admission }, broker.stats, log);
  admission.attach(server);
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) =>
      reject(
        new CastellanError('ERR_LISTEN_FAILED', {
          message: `Cannot listen for secure-channel MQTT on ${formatHostPort(options.host, options.port)} (mqtt.secureChannelHost, mqtt.secureChannelPort): ${error.code ?? error.message}`,
          cause: error,
        }),
      ),
    );
    server.listen(options.port, options.host, () => {
      server.removeAllListeners('error');
      server.on('error', (error) => log.error({ err: error }, 'mqtt: secure-channel listener error'));
      resolve();
    });
  });
  return {
    server,
    admission,
    address: () => server.address() as AddressInfo,
    // Stops accepting at once; the connections are the broker's, its close() ends them (the server's
    // own 'close' follows the last one).
    close: async () => {
      server.close();
    },
  };
}
