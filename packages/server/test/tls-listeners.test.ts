// Transport policy on both listeners (CHAN-1, CHAN-5): TLS 1.2+ with AEAD suites only, nothing served
// in plain text, and no port open besides the HTTPS API and MQTT over TLS.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import tls from 'node:tls';
import mqttPacket from 'mqtt-packet';
import { startTestPlatform, type TestPlatform } from './helpers/test-platform.ts';

interface HandshakeResult {
  ok: boolean;
  protocol?: string | null;
  cipher?: string;
  error?: string;
}

function handshake(port: number, ca: string, options: tls.ConnectionOptions): Promise<HandshakeResult> {
  return new Promise((resolve) => {
    const socket = tls.connect({ host: '127.0.0.1', port, ca, servername: 'localhost', ...options }, () => {
      resolve({ ok: true, protocol: socket.getProtocol(), cipher: socket.getCipher().name });
      socket.destroy();
    });
    socket.on('error', (error: NodeJS.ErrnoException) =>
      resolve({ ok: false, error: `${error.code} ${error.message}` }),
    );
  });
}

/** TCP ports this process listens on, from /proc (Linux). */
function listeningPorts(): number[] {
  const inodes = new Set<string>();
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/self/fd/${fd}`));
      if (m) inodes.add(m[1]!);
    } catch {
      // the descriptor closed meanwhile
    }
  }
  const ports: number[] = [];
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    for (const line of readFileSync(table, 'utf8').split('\n').slice(1)) {
      const cols = line.trim().split(/\s+/);
      // cols[3] is the state (0A = LISTEN); cols[9] the inode.
      if (cols[3] === '0A' && inodes.has(cols[9]!)) ports.push(Number.parseInt(cols[1]!.split(':')[1]!, 16));
    }
  }
  return ports.sort((a, b) => a - b);
}

describe('TLS policy on the HTTPS and MQTT listeners', () => {
  let tp: TestPlatform;
  before(async () => {
    tp = await startTestPlatform('sqlite');
  });
  after(() => tp?.close());

  const listeners = () =>
    [
      ['HTTPS', tp.platform.httpPort],
      ['MQTT', tp.platform.mqttPort],
    ] as const;

  test('[CHAN-1] a TLS 1.1 client is refused by both listeners', async () => {
    for (const [name, port] of listeners()) {
      // SECLEVEL=0 lets this client really offer TLS 1.1, so the refusal is the server's.
      const result = await handshake(port, tp.platform.caPem, {
        minVersion: 'TLSv1.1',
        maxVersion: 'TLSv1.1',
        ciphers: 'DEFAULT@SECLEVEL=0',
      });
      assert.equal(result.ok, false, name);
      // The error names an alert received from the server, so the refusal is the server's.
      assert.match(result.error!, /ALERT_PROTOCOL_VERSION/, `${name}: ${result.error}`);
    }
  });

  test('[CHAN-1] TLS 1.2 with a non-AEAD (CBC) suite is refused by both listeners', async () => {
    for (const [name, port] of listeners()) {
      const result = await handshake(port, tp.platform.caPem, {
        minVersion: 'TLSv1.2',
        maxVersion: 'TLSv1.2',
        ciphers: 'ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA:ECDHE-ECDSA-AES128-SHA',
      });
      assert.equal(result.ok, false, name);
      assert.match(result.error!, /ALERT_HANDSHAKE_FAILURE/, `${name}: ${result.error}`);
    }
  });

  test('[CHAN-1] TLS 1.2 with AEAD and TLS 1.3 are accepted by both listeners', async () => {
    for (const [name, port] of listeners()) {
      const v12 = await handshake(port, tp.platform.caPem, { minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2' });
      assert.deepEqual([v12.ok, v12.protocol], [true, 'TLSv1.2'], name);
      assert.match(v12.cipher!, /GCM|CHACHA20/, name);
      const v13 = await handshake(port, tp.platform.caPem, { minVersion: 'TLSv1.3' });
      assert.deepEqual([v13.ok, v13.protocol], [true, 'TLSv1.3'], name);
    }
  });

  test('[CHAN-1] the API is not served over plain HTTP', async () => {
    const outcome = await new Promise<string>((resolve) => {
      const req = http.get({ host: '127.0.0.1', port: tp.platform.httpPort, path: '/healthz', timeout: 3000 }, (res) =>
        resolve(`HTTP ${res.statusCode}`),
      );
      req.on('error', (error: NodeJS.ErrnoException) => resolve(`error ${error.code}`));
      req.on('timeout', () => req.destroy(new Error('timeout')));
    });
    assert.match(outcome, /^error /, `plain HTTP got: ${outcome}`);
  });

  test('[CHAN-1] MQTT without TLS gets no CONNACK', async () => {
    const socket = net.connect({ host: '127.0.0.1', port: tp.platform.mqttPort });
    await once(socket, 'connect');
    const received: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => received.push(chunk));
    socket.on('error', () => {});
    socket.write(
      mqttPacket.generate({
        cmd: 'connect',
        protocolId: 'MQTT',
        protocolVersion: 4,
        clientId: 'plain',
        clean: true,
        keepalive: 10,
      }),
    );
    await once(socket, 'close');
    // Whatever came back is a TLS alert (content type 0x15), never an MQTT CONNACK (0x20).
    const first = Buffer.concat(received)[0];
    assert.ok(first === undefined || first === 0x15, `unexpected first byte ${first}`);
  });

  test('[CHAN-5] only the HTTPS and MQTT-over-TLS ports listen, plus the admin port on loopback', () => {
    const admin = new URL(tp.platform.adminUrl!);
    assert.equal(admin.hostname, '127.0.0.1', 'the plain-HTTP admin listener is loopback-only');
    assert.deepEqual(
      listeningPorts(),
      [tp.platform.httpPort, tp.platform.mqttPort, Number(admin.port)].sort((a, b) => a - b),
    );
  });
});
