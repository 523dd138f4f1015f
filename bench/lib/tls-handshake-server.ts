// Worker thread of the tls-handshakes measure: one TLS server built with the MQTT listener's own option
// builder (tlsServerOptions), so its CPU can be read per thread (process.threadCpuUsage) apart from the
// clients', which run in the runner's main thread.
import tls from 'node:tls';
import { parentPort, workerData } from 'node:worker_threads';
import { type TlsServerOptions, tlsServerOptions } from '../../packages/server/src/gateway/mqtt/mqtt-listener.ts';
import { TicketKeyRotation } from '../../packages/server/src/gateway/mqtt/tls-lite-profile.ts';

export interface HandshakeServerData {
  options: TlsServerOptions;
}

export type HandshakeServerReply = { port: number } | { cpuMicros: number };

const { options } = workerData as HandshakeServerData;
const server = tls.createServer(tlsServerOptions(options, 10_000), (socket) => {
  socket.on('error', () => {});
  socket.resume();
});
server.on('tlsClientError', (_error, socket) => socket.destroy());
// The lite listener's ticket keys, as startMqttListener sets them; the standard one keeps Node's own.
const ticketKeys =
  options.profile === 'lite' ? new TicketKeyRotation(server, options.ticketKeyRotationMinutes ?? 720) : null;
server.listen(0, '127.0.0.1', () => {
  parentPort!.postMessage({ port: (server.address() as { port: number }).port } satisfies HandshakeServerReply);
});
parentPort!.on('message', (message: 'cpu' | 'stop') => {
  if (message === 'cpu') {
    const usage = process.threadCpuUsage();
    parentPort!.postMessage({ cpuMicros: usage.user + usage.system } satisfies HandshakeServerReply);
  } else {
    ticketKeys?.stop();
    server.close();
    parentPort!.close();
  }
});
