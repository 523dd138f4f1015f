// One process of the connection swarm (lib/connection-swarm.ts): opens idle device connections to an
// MQTT over TLS broker and holds them. Each connection is a real device: TLS (resuming the process's
// latest session ticket where the server allows it), one MQTT CONNECT with the device's ID and secret,
// the CONNACK read, then nothing but a PINGREQ within the keep-alive. No MQTT client library per
// connection: a TLS socket, one generated CONNECT and a parser that is dropped once the CONNACK came, so
// that one process holds ~15,000 of them cheaply. Sources are bound to loopback addresses 127.0.0.2, …
// (chosen by the runner) to get past one address's ephemeral port range.
//   runner → 'connect' {batch} → 'progress'… → 'connected' {batch result}   (may repeat: warm-up, main)
//   runner → 'check' → 'held' {open, dropped}
//   runner → 'stop' (or disconnect) → sockets destroyed → 'stopped', exit.
import type { TcpSocketConnectOpts } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import tls from 'node:tls';
import mqttPacket from 'mqtt-packet';
import type { SwarmBatch, SwarmBatchResult, SwarmChildMessage, SwarmRunnerMessage } from './connection-swarm.ts';

const PROGRESS_EVERY_MS = 1_000;
/** Distinct failure reasons kept per batch (counts per reason). */
const MAX_REASONS = 20;

/** Connections that completed CONNECT and are held. */
const held = new Set<tls.TLSSocket>();
let dropped = 0;
let firstDrop: string | undefined;
/** Latest session ticket seen by this process (each connection resumes from it; refreshed by each). */
let session: Buffer | undefined;
/** Shortest keep-alive the servers granted (s); the ping timer follows it. */
let keepAlive = 0;
let pingTimer: NodeJS.Timeout | undefined;
let stopping = false;

function send(message: SwarmChildMessage): Promise<void> {
  if (!process.connected) return Promise.resolve();
  return new Promise((resolve) => process.send!(message, undefined, undefined, () => resolve()));
}

const PINGREQ = mqttPacket.generate({ cmd: 'pingreq' });

/** Keeps every held connection alive with a PINGREQ at half the granted keep-alive. */
function armPings(seconds: number): void {
  if (seconds <= 0 || (keepAlive > 0 && keepAlive <= seconds)) return;
  keepAlive = seconds;
  clearInterval(pingTimer);
  pingTimer = setInterval(
    () => {
      for (const socket of held) socket.write(PINGREQ);
    },
    (seconds * 1000) / 2,
  );
}

interface Attempt {
  ok: boolean;
  resumed: boolean;
  reason?: string;
  /** TCP + TLS handshake, then CONNECT → CONNACK (ms; NaN when not reached). */
  tlsMs: number;
  connackMs: number;
}

/** One device: TLS, CONNECT, CONNACK. Resolves (never rejects) with how it went. */
function connectOne(batch: SwarmBatch, id: string, secret: string, localAddress: string): Promise<Attempt> {
  return new Promise((resolve) => {
    let settled = false;
    let resumed = false;
    const started = performance.now();
    let secured = Number.NaN;
    // node:tls hands localAddress to net.connect; its option type leaves it out.
    const options: tls.ConnectionOptions & Pick<TcpSocketConnectOpts, 'localAddress'> = {
      host: batch.host,
      port: batch.port,
      localAddress,
      ca: batch.ca,
      servername: batch.servername,
      ...(batch.resume && session ? { session } : {}),
    };
    const socket = tls.connect(options);
    const parser = mqttPacket.parser({ protocolVersion: batch.protocolVersion });
    const timer = setTimeout(() => finish({ ok: false, resumed, reason: 'timeout' }), batch.connectTimeoutMs);
    const finish = (outcome: Omit<Attempt, 'tlsMs' | 'connackMs'>) => {
      if (settled) return;
      const now = performance.now();
      const attempt: Attempt = { ...outcome, tlsMs: secured - started, connackMs: now - secured };
      settled = true;
      clearTimeout(timer);
      parser.removeAllListeners();
      socket.removeAllListeners('data');
      if (attempt.ok) {
        held.add(socket);
        // Anything the server sends now (PINGRESP) is read and dropped; a close is a lost device.
        socket.on('data', () => {});
      } else socket.destroy();
      resolve(attempt);
    };
    if (batch.resume) socket.on('session', (ticket: Buffer) => (session = ticket));
    socket.once('secureConnect', () => {
      resumed = socket.isSessionReused();
      secured = performance.now();
      socket.write(
        mqttPacket.generate(
          {
            cmd: 'connect',
            protocolId: 'MQTT',
            protocolVersion: batch.protocolVersion,
            clean: true,
            clientId: id,
            keepalive: batch.keepAliveSeconds,
            username: id,
            password: Buffer.from(secret, 'utf8'),
          },
          { protocolVersion: batch.protocolVersion },
        ),
      );
    });
    socket.on('data', (chunk: Buffer) => parser.parse(chunk));
    parser.on('packet', (packet) => {
      if (packet.cmd !== 'connack') return finish({ ok: false, resumed, reason: `unexpected ${packet.cmd}` });
      const code = packet.reasonCode ?? packet.returnCode ?? 0;
      if (code !== 0) return finish({ ok: false, resumed, reason: `connack 0x${code.toString(16)}` });
      armPings(packet.properties?.serverKeepAlive ?? batch.keepAliveSeconds);
      finish({ ok: true, resumed });
    });
    parser.on('error', (error) => finish({ ok: false, resumed, reason: `bad packet: ${error.message}` }));
    socket.on('error', (error: NodeJS.ErrnoException) =>
      finish({ ok: false, resumed, reason: error.code ?? error.message }),
    );
    socket.on('close', () => {
      if (!settled) finish({ ok: false, resumed, reason: 'closed before CONNACK' });
      else if (held.delete(socket) && !stopping) {
        dropped++;
        firstDrop ??= `device ${id} was disconnected`;
      }
    });
  });
}

async function runBatch(batch: SwarmBatch): Promise<SwarmBatchResult> {
  const started = performance.now();
  let next = 0;
  let connected = 0;
  let failed = 0;
  let resumed = 0;
  let retries = 0;
  let tlsMs = 0;
  let connackMs = 0;
  const reasons: Record<string, number> = {};
  const progress = setInterval(
    () => void send({ type: 'progress', connected, failed, attempted: next }),
    PROGRESS_EVERY_MS,
  );
  const lane = async () => {
    while (next < batch.devices.length && !stopping) {
      const index = next++;
      const [id, secret] = batch.devices[index]!;
      const localAddress = batch.localAddresses[index]!;
      for (let attempt = 1; ; attempt++) {
        const outcome = await connectOne(batch, id, secret, localAddress);
        if (outcome.ok) {
          connected++;
          tlsMs += outcome.tlsMs;
          connackMs += outcome.connackMs;
          if (outcome.resumed) resumed++;
          break;
        }
        const reason = outcome.reason ?? 'unknown';
        if (reasons[reason] !== undefined || Object.keys(reasons).length < MAX_REASONS)
          reasons[reason] = (reasons[reason] ?? 0) + 1;
        if (attempt >= batch.attempts || stopping) {
          failed++;
          break;
        }
        // Like a device told to come back later: a pause with jitter, then the next attempt.
        retries++;
        await sleep(batch.retryDelayMs * (0.5 + Math.random()));
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(batch.concurrency, batch.devices.length)) }, lane));
  clearInterval(progress);
  return {
    connected,
    failed,
    resumed,
    retries,
    reasons,
    meanTlsMs: connected ? tlsMs / connected : 0,
    meanConnackMs: connected ? connackMs / connected : 0,
    seconds: (performance.now() - started) / 1000,
  };
}

function stop(code: number): void {
  if (stopping) return;
  stopping = true;
  clearInterval(pingTimer);
  for (const socket of held) socket.destroy();
  held.clear();
  void send({ type: 'stopped' }).finally(() => process.exit(code));
}

process.on('message', (message: SwarmRunnerMessage) => {
  switch (message.type) {
    case 'connect':
      runBatch(message.batch).then(
        (result) => send({ type: 'connected', result }),
        (error: unknown) => send({ type: 'failed', message: (error as Error).message ?? String(error) }),
      );
      break;
    case 'check':
      void send({
        type: 'held',
        open: held.size,
        dropped,
        firstDrop: firstDrop ?? null,
        memoryRssBytes: process.memoryUsage.rss(),
      });
      break;
    case 'stop':
      stop(0);
      break;
  }
});
process.on('disconnect', () => stop(1));
process.on('SIGINT', () => stop(130));
process.on('SIGTERM', () => stop(143));
