// What the bench's peer brokers (lib/mosquitto-broker.ts, lib/aedes-broker.ts) have in common: the handle
// a measure gets back, the device accounts they are given, a free loopback port, a bounded TLS readiness
// probe, and CPU and memory read from /proc for a process the runner does not own through IPC.
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import tls from 'node:tls';

/** A running peer broker. Every method is cheap and safe to call after stop(). */
export interface PeerBroker {
  /** TLS port on 127.0.0.1. */
  readonly port: number;
  /** The CA that signed the broker's certificate (clients pin it). */
  readonly caPem: string;
  readonly pid: number;
  /** Resident set of the broker process (VmRSS), 0 once it is gone. */
  rssBytes(): number;
  /** User + system CPU of the broker process since it started, microseconds (0 once it is gone). */
  cpuMicros(): number;
  /** SIGTERM (or a polite stop), then SIGKILL after 3 s; removes its temporary files. Idempotent. */
  stop(): Promise<void>;
}

/** An MQTT account: a device (username = device ID) or the consumer. */
export interface PeerAccount {
  username: string;
  password: string;
}

/** `count` device accounts with random secrets, IDs shaped like `bench-0001`. */
export function peerDevices(count: number): PeerAccount[] {
  return Array.from({ length: count }, (_, i) => ({
    username: `bench-${String(i + 1).padStart(4, '0')}`,
    password: randomBytes(18).toString('base64url'),
  }));
}

/** A port that was free a moment ago on 127.0.0.1 (bind port 0, read it, close); callers retry on EADDRINUSE. */
export function freeLoopbackPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

/** One TLS handshake against the port, pinning `caPem`: true once it completes within `ms`. */
function tlsProbe(port: number, caPem: string, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = tls.connect({ host: '127.0.0.1', port, ca: caPem, servername: 'localhost' });
    const done = (ok: boolean) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), ms);
    socket.once('secureConnect', () => done(true));
    socket.once('error', () => done(false));
  });
}

/** Polls until the broker completes a TLS handshake; false after `timeoutMs` or once `gone()` says it died. */
export async function waitForTls(
  port: number,
  caPem: string,
  timeoutMs: number,
  gone: () => boolean,
): Promise<boolean> {
  const deadline = performance.now() + timeoutMs;
  while (performance.now() < deadline && !gone()) {
    if (await tlsProbe(port, caPem, 1_000)) return true;
    await sleep(50);
  }
  return false;
}

const CLOCK_TICKS_PER_SECOND = 100;

/** utime + stime of a process from /proc/<pid>/stat, microseconds; 0 when it is gone. */
export function procCpuMicros(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name (which may hold spaces) start at "state": utime and stime are 14 and 15.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(fields[11]) + Number(fields[12])) * 1e6) / CLOCK_TICKS_PER_SECOND;
  } catch {
    return 0;
  }
}

/** VmRSS of a process from /proc/<pid>/status, bytes; 0 when it is gone. */
export function procRssBytes(pid: number): number {
  try {
    const match = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return match ? Number(match[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}
