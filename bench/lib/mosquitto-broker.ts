// Mosquitto as the bench's peer: Debian's /usr/sbin/mosquitto started on a free loopback port with a
// generated configuration in a fresh temporary directory (never the system instance on 1883):
//   - a TLS listener (TLS 1.2 minimum) with a server certificate signed by a generated CA, both ECDSA
//     P-256 like Castellan's development PKI (lib/bench-pki.ts);
//   - `allow_anonymous false` and a password file made with `mosquitto_passwd -U` for every device and
//     the consumer;
//   - an ACL file: each device may write `devices/<id>/telemetry` and read `devices/<id>/commands/#`,
//     the consumer may read `devices/+/telemetry`;
//   - persistence off, in-flight and queue limits raised out of the way, TCP_NODELAY, errors to a log
//     file (read back when the broker fails to start).
//
//   const broker = await startMosquitto({ devices: peerDevices(10), consumer });
//   … connect to mqtts://127.0.0.1:${broker.port} pinning broker.caPem …
//   await broker.stop();
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { generateBenchPki } from './bench-pki.ts';
import {
  freeLoopbackPort,
  type PeerAccount,
  type PeerBroker,
  procCpuMicros,
  procRssBytes,
  waitForTls,
} from './peer-broker.ts';

export const MOSQUITTO_BIN = '/usr/sbin/mosquitto';
const MOSQUITTO_PASSWD_BIN = '/usr/bin/mosquitto_passwd';
const START_TIMEOUT_MS = 10_000;
const KILL_AFTER_MS = 3_000;
const PORT_ATTEMPTS = 5;

export interface MosquittoOptions {
  /** Device accounts (username = device ID): each gets its own ACL entries. */
  devices: readonly PeerAccount[];
  /** The account that reads every device's telemetry. */
  consumer: PeerAccount;
  /** Prefix for the broker's lines on stderr (default "[mosquitto] "). */
  prefix?: string;
}

/** Mosquitto processes not yet stopped: killed if the runner exits first. */
const live = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

/** `mosquitto -h` prints "mosquitto version 2.0.11" first. */
export function mosquittoVersion(): string {
  try {
    const out = execFileSync(MOSQUITTO_BIN, ['-h'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    return /version (\S+)/.exec(out)?.[1] ?? 'unknown';
  } catch (error) {
    // `-h` exits with status 3 on some versions; its output is still there.
    const out = String((error as { stdout?: string }).stdout ?? '');
    return /version (\S+)/.exec(out)?.[1] ?? 'unknown';
  }
}

function writeConfig(dir: string, port: number, options: MosquittoOptions, pki: ReturnType<typeof generateBenchPki>) {
  const lines = [
    // Started as root, Mosquitto would switch to the `mosquitto` user, who cannot read this directory.
    ...(process.getuid?.() === 0 ? ['user root'] : []),
    'per_listener_settings false',
    'allow_anonymous false',
    `password_file ${join(dir, 'passwd')}`,
    `acl_file ${join(dir, 'acl')}`,
    'persistence false',
    // 0 = no limit: the MQTT 5 receive maximum becomes 65535 and nothing is dropped from the queue
    // within a run; the load generator's own window is what bounds the messages in flight.
    'max_inflight_messages 0',
    'max_queued_messages 0',
    'set_tcp_nodelay true',
    `log_dest file ${join(dir, 'mosquitto.log')}`,
    'log_type error',
    'log_type warning',
    'connection_messages false',
    `listener ${port} 127.0.0.1`,
    `cafile ${pki.caFile}`,
    `certfile ${pki.certFile}`,
    `keyfile ${pki.keyFile}`,
    'tls_version tlsv1.2',
  ];
  writeFileSync(join(dir, 'mosquitto.conf'), `${lines.join('\n')}\n`);
}

function writeAccounts(dir: string, options: MosquittoOptions): void {
  const accounts = [...options.devices, options.consumer];
  const passwd = join(dir, 'passwd');
  writeFileSync(passwd, accounts.map((a) => `${a.username}:${a.password}\n`).join(''), { mode: 0o600 });
  // -U hashes every plain-text password of the file in place (sha512-pbkdf2 in 2.0).
  execFileSync(MOSQUITTO_PASSWD_BIN, ['-U', passwd], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 60_000 });
  const acl = [
    `user ${options.consumer.username}`,
    'topic read devices/+/telemetry',
    '',
    ...options.devices.flatMap((d) => [
      `user ${d.username}`,
      `topic write devices/${d.username}/telemetry`,
      `topic read devices/${d.username}/commands/#`,
      '',
    ]),
  ];
  writeFileSync(join(dir, 'acl'), `${acl.join('\n')}\n`, { mode: 0o600 });
}

/**
 * Starts Mosquitto and resolves once it completes a TLS handshake (at most 10 s per attempt); a port
 * taken between choosing and binding it is retried with another one. Rejects with the broker's log.
 */
export async function startMosquitto(options: MosquittoOptions): Promise<PeerBroker> {
  const dir = mkdtempSync(join(tmpdir(), 'castellan-bench-mosquitto-'));
  try {
    const pki = generateBenchPki(dir);
    writeAccounts(dir, options);
    let lastError = '';
    for (let attempt = 0; attempt < PORT_ATTEMPTS; attempt++) {
      const port = await freeLoopbackPort();
      writeConfig(dir, port, options, pki);
      writeFileSync(join(dir, 'mosquitto.log'), '');
      const child = spawn(MOSQUITTO_BIN, ['-c', join(dir, 'mosquitto.conf')], {
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      live.add(child);
      const prefix = options.prefix ?? '[mosquitto] ';
      child.stderr.setEncoding('utf8');
      child.stderr.on('data', (chunk: string) => {
        for (const line of chunk.split('\n')) if (line) process.stderr.write(`${prefix}${line}\n`);
      });
      let exited = false;
      const exit = new Promise<void>((resolve) => {
        child.once('exit', () => {
          exited = true;
          live.delete(child);
          resolve();
        });
        child.once('error', (error) => {
          lastError = error.message;
          exited = true;
          live.delete(child);
          resolve();
        });
      });
      const ready = await waitForTls(port, pki.caPem, START_TIMEOUT_MS, () => exited);
      if (ready && child.pid !== undefined) return handle(child, exit, port, pki.caPem, dir);
      child.kill('SIGKILL');
      await exit;
      const log = readFileSync(join(dir, 'mosquitto.log'), 'utf8').trim();
      lastError = log || lastError || 'it did not accept a TLS handshake in time';
      if (!/address already in use/i.test(log)) break;
    }
    throw new Error(`mosquitto did not start: ${lastError}`);
  } catch (error) {
    rmSync(dir, { recursive: true, force: true });
    throw error;
  }
}

function handle(child: ChildProcess, exit: Promise<void>, port: number, caPem: string, dir: string): PeerBroker {
  const pid = child.pid!;
  let stopping: Promise<void> | undefined;
  let gone = false;
  void exit.then(() => (gone = true));
  return {
    port,
    caPem,
    pid,
    rssBytes: () => (gone ? 0 : procRssBytes(pid)),
    cpuMicros: () => (gone ? 0 : procCpuMicros(pid)),
    stop() {
      stopping ??= (async () => {
        if (!gone) {
          child.kill('SIGTERM');
          const stopped = await Promise.race([exit.then(() => true), sleep(KILL_AFTER_MS, false, { ref: false })]);
          if (!stopped) {
            child.kill('SIGKILL');
            await exit;
          }
        }
        rmSync(dir, { recursive: true, force: true });
      })();
      return stopping;
    },
  };
}
