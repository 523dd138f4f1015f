// The MQTT over TLS listener (8883 by default; no plain listener exists). TLS 1.2+ with AEAD suites only.
import { type AddressInfo, isIP } from 'node:net';
import tls from 'node:tls';
import type { Logger } from 'pino';
import { CastellanError } from '../../errors/index.ts';
import { isConformanceHooks } from './conformance-hooks.ts';
import {
  type AdmissionOptions,
  adviseRetriesFor,
  ConnectionAdmission,
  DEFAULT_ADMISSION,
} from './connection-admission.ts';
import type { MqttBroker } from './mqtt-broker.ts';
import { AEAD_CIPHERS, LITE_CIPHERS } from '../../lib/tls-ciphers.ts';
import { assertLiteCertificate, type TicketKeySource, TicketKeyRotation } from './tls-lite-profile.ts';

export interface TlsServerOptions {
  cert: string;
  key: string;
  minVersion: 'TLSv1.2' | 'TLSv1.3';
  /** tls.groups (CHAN-8): key-exchange groups, most preferred first; OpenSSL's default when absent. */
  groups?: string;
  /** mqtt.tlsProfile (CHAN-2): 'lite' restricts suites and certificate, and rotates ticket keys. */
  profile?: 'standard' | 'lite';
  /** mqtt.ticketKeyRotationMinutes (lite profile; 720 when absent). */
  ticketKeyRotationMinutes?: number;
  /** Scale mode (RES-2): ticket keys shared by every process, so resumption works on any (either profile). */
  ticketKeySource?: TicketKeySource | null;
}

export { AEAD_CIPHERS };

export function tlsServerOptions(options: TlsServerOptions, handshakeTimeoutMs: number): tls.TlsOptions {
  const lite = options.profile === 'lite';
  if (lite) assertLiteCertificate(options.cert, options.key);
  return {
    cert: options.cert,
    key: options.key,
    minVersion: options.minVersion,
    ciphers: lite ? LITE_CIPHERS : AEAD_CIPHERS,
    ...(options.groups ? { ecdhCurve: options.groups } : {}),
    // Lite or shared keys: a ticket lives as long as the key that sealed it (TicketKeyRotation).
    ...(lite || options.ticketKeySource ? { sessionTimeout: (options.ticketKeyRotationMinutes ?? 720) * 60 } : {}),
    honorCipherOrder: true,
    // Node derives the default from process.argv, so processes started differently would refuse each
    // other's tickets; one fixed context lets every process of a scale deployment resume (RES-2).
    sessionIdContext: 'castellan-mqtt',
    handshakeTimeout: handshakeTimeoutMs,
    // Mutual TLS for devices (DEV-5): a client certificate is asked for but not required, and OpenSSL
    // does not judge it; the authenticate hook verifies it against the platform's records.
    requestCert: true,
    rejectUnauthorized: false,
  };
}

export interface MqttListener {
  readonly server: tls.Server;
  /** The pre-TLS gate (connection-admission.ts). */
  readonly admission: ConnectionAdmission;
  /** Session-ticket keys of the lite profile (CHAN-2) or shared ones (scale mode); null otherwise. */
  readonly ticketKeys: TicketKeyRotation | null;
  address(): AddressInfo;
  close(): Promise<void>;
}

export async function startMqttListener(
  broker: MqttBroker,
  options: TlsServerOptions & {
    host: string;
    port: number;
    maxConnections: number;
    /** Allow/deny lists, IP blocks, connect limits, handshake cap; the schema's defaults otherwise. */
    admission?: Partial<AdmissionOptions>;
  },
  log: Logger,
): Promise<MqttListener> {
  // [CHAN-6] anonymous access never reaches a production listener: fail closed before binding.
  if (broker.conformance || isConformanceHooks(broker.hooks)) {
    throw new CastellanError('ERR_BROKER_CONFORMANCE_HOOKS_REFUSED', {
      message:
        'The MQTT over TLS listener refuses a broker built with the anonymous conformance hooks; ' +
        'they are for `castellan broker --conformance` on loopback only',
    });
  }
  const server = tls.createServer(tlsServerOptions(options, broker.limits.connectTimeoutMs), (socket) => {
    socket.setNoDelay(true);
    broker.handle(socket, socket.remoteAddress ?? 'unknown');
  });
  server.maxConnections = options.maxConnections;
  const ticketKeys =
    options.profile === 'lite' || options.ticketKeySource
      ? new TicketKeyRotation(
          server,
          options.ticketKeyRotationMinutes ?? 720,
          options.ticketKeySource ?? null,
          (error) => log.warn({ err: error }, 'mqtt: shared TLS ticket key unavailable; the previous key stays'),
        )
      : null;
  await ticketKeys?.ready;
  // Before the TLS layer sees a socket (CHAN-5, issue 6): refused ones are closed without a TLS byte.
  const admission = new ConnectionAdmission({ ...DEFAULT_ADMISSION, ...options.admission }, broker.stats, log);
  admission.attach(server);
  adviseRetriesFor(broker, admission);
  // A refused handshake (old TLS version, no shared cipher, plain TCP) is the client's problem, not ours.
  // Node reports a handshake timeout here without closing the socket: destroy it, or a client that
  // connects and never sends a ClientHello holds a connection slot (maxConnections) for ever.
  server.on('tlsClientError', (error, socket) => {
    log.debug({ code: (error as NodeJS.ErrnoException).code }, 'mqtt: TLS handshake refused');
    socket.destroy();
  });
  // The rotation timer is unref'd; stopped here so a failed start leaves nothing behind.
  server.once('error', () => ticketKeys?.stop());
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) =>
      reject(
        new CastellanError('ERR_LISTEN_FAILED', {
          message: `Cannot listen for MQTT on ${formatHostPort(options.host, options.port)} (mqtt.host, mqtt.port): ${error.code ?? error.message}`,
          cause: error,
        }),
      ),
    );
    server.listen(options.port, options.host, () => {
      server.removeAllListeners('error');
      // After start-up (e.g. EMFILE on accept) an error is logged; the listener keeps serving.
      server.on('error', (error) => log.error({ err: error }, 'mqtt: listener error'));
      resolve();
    });
  });
  return {
    server,
    admission,
    ticketKeys,
    address: () => server.address() as AddressInfo,
    close: () =>
      new Promise<void>((resolve) => {
        ticketKeys?.stop();
        server.close(() => resolve());
      }),
  };
}

export function formatHostPort(host: string, port: number): string {
  return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
}
