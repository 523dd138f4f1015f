// The lightweight TLS profile of the MQTT listener (CHAN-2): a 2-level ECDSA P-256 chain, one
// AES-128-GCM suite per TLS version (ECDHE-ECDSA for TLS 1.2), and session resumption by ticket.
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import tls from 'node:tls';
import { loadConfig } from '../src/config/index.ts';
import type { CastellanError } from '../src/errors/index.ts';
import { TICKET_KEY_BYTES } from '../src/gateway/mqtt/tls-lite-profile.ts';
import { startPlatform } from '../src/platform.ts';
import { captureLogs, startTestPlatform, type TestPlatform } from './helpers/test-platform.ts';
import { makeServerChain } from './helpers/tls-chains.ts';

interface Handshake {
  socket: tls.TLSSocket;
  /** The ticket a full handshake received; null after a resumption (the server sends no new one). */
  session: Buffer | null;
}

/** Connects and waits for the handshake and, unless resumed, the ticket (TLS 1.3 sends it after the handshake). */
async function connect(port: number, ca: string, options: tls.ConnectionOptions): Promise<Handshake> {
  const socket = tls.connect({ host: '127.0.0.1', port, ca, servername: 'localhost', ...options });
  socket.on('error', () => {});
  const ticket = once(socket, 'session', { signal: AbortSignal.timeout(5000) }) as Promise<[Buffer]>;
  ticket.catch(() => {});
  await once(socket, 'secureConnect', { signal: AbortSignal.timeout(5000) });
  return { socket, session: socket.isSessionReused() ? null : (await ticket)[0] };
}

/** A handshake expected to fail; the error text (it names the alert the server sent). */
function refusal(port: number, ca: string, options: tls.ConnectionOptions): Promise<string> {
  return new Promise((resolve) => {
    const socket = tls.connect({ host: '127.0.0.1', port, ca, servername: 'localhost', ...options }, () => {
      resolve(`accepted: ${socket.getProtocol()} ${socket.getCipher().name}`);
      socket.destroy();
    });
    socket.on('error', (error: NodeJS.ErrnoException) => resolve(`${error.code} ${error.message}`));
  });
}

/** The chain the client verified, leaf first (getPeerCertificate(true) links each to its issuer). */
function peerChain(socket: tls.TLSSocket): tls.DetailedPeerCertificate[] {
  const chain: tls.DetailedPeerCertificate[] = [];
  for (let cert = socket.getPeerCertificate(true); cert && !chain.includes(cert); cert = cert.issuerCertificate) {
    chain.push(cert);
    if (cert.issuerCertificate === cert) break;
  }
  return chain;
}

describe('The lite TLS profile on the MQTT listener (CHAN-2)', { timeout: 30_000 }, () => {
  let tp: TestPlatform;
  before(async () => {
    tp = await startTestPlatform('sqlite', { mqtt: { tlsProfile: 'lite', ticketKeyRotationMinutes: 60 } });
  });
  after(() => tp?.close());

  const port = () => tp.platform.mqttPort;

  test('[CHAN-2] serves its 2-level ECDSA P-256 chain with the one lite suite of each TLS version', async () => {
    for (const [version, cipher] of [
      ['TLSv1.2', 'ECDHE-ECDSA-AES128-GCM-SHA256'],
      ['TLSv1.3', 'TLS_AES_128_GCM_SHA256'],
    ] as const) {
      const { socket } = await connect(port(), tp.platform.caPem, { minVersion: version, maxVersion: version });
      try {
        assert.equal(socket.getProtocol(), version);
        // Even a client preferring AES-256 or ChaCha20 gets AES-128-GCM: it is all the listener has.
        assert.equal(socket.getCipher().name, cipher);
        const chain = peerChain(socket);
        assert.equal(chain.length, 2, 'leaf + root');
        const [leaf, root] = chain as [tls.DetailedPeerCertificate, tls.DetailedPeerCertificate];
        assert.equal(leaf.issuer.CN, root.subject.CN);
        assert.equal(root.issuer.CN, root.subject.CN, 'the root is self-issued');
        for (const cert of chain) {
          assert.equal(cert.asn1Curve, 'prime256v1');
          assert.equal(cert.nistCurve, 'P-256');
          assert.equal(cert.bits, 256);
        }
        // The client verified it against the pinned root alone.
        assert.equal(socket.authorized, true);
        assert.equal(root.raw.equals(new X509Certificate(tp.platform.caPem).raw), true);
      } finally {
        socket.destroy();
      }
    }
  });

  test('[CHAN-2] refuses a client offering only CBC suites, only RSA-authenticated suites or other TLS 1.3 suites', async () => {
    const ca = tp.platform.caPem;
    const tls12 = { minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2' } as const;
    for (const [what, options] of [
      ['CBC only', { ...tls12, ciphers: 'ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA' }],
      ['RSA authentication only', { ...tls12, ciphers: 'ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384' }],
      ['AES-256 ECDSA', { ...tls12, ciphers: 'ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305' }],
      [
        'TLS 1.3 without AES-128-GCM',
        { minVersion: 'TLSv1.3', ciphers: 'TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256' },
      ],
    ] as const) {
      const outcome = await refusal(port(), ca, options);
      assert.match(outcome, /ALERT_HANDSHAKE_FAILURE|ALERT_INSUFFICIENT_SECURITY/, `${what}: ${outcome}`);
    }
  });

  for (const version of ['TLSv1.2', 'TLSv1.3'] as const) {
    test(`[CHAN-2] a second connection with the first one's ticket resumes the session (${version})`, async () => {
      const ca = tp.platform.caPem;
      const pinned = { minVersion: version, maxVersion: version };
      const first = await connect(port(), ca, pinned);
      assert.equal(first.socket.isSessionReused(), false);
      first.socket.destroy();
      const second = await connect(port(), ca, { ...pinned, session: first.session! });
      try {
        assert.equal(second.socket.isSessionReused(), true);
        assert.equal(second.socket.getProtocol(), version);
        // A resumed session is still bound to the pinned CA's verdict.
        assert.equal(second.socket.authorized, true);
      } finally {
        second.socket.destroy();
      }
    });
  }

  test('[CHAN-2] after a ticket-key rotation an old ticket gets a full handshake, and the new ticket resumes', async () => {
    const ca = tp.platform.caPem;
    const ticketKeys = tp.platform.mqttListener.ticketKeys;
    assert.ok(ticketKeys, 'the lite listener rotates its ticket keys');
    const before = ticketKeys.rotations;
    const first = await connect(port(), ca, { maxVersion: 'TLSv1.3' });
    first.socket.destroy();
    ticketKeys.rotate();
    assert.equal(ticketKeys.rotations, before + 1);
    const second = await connect(port(), ca, { session: first.session! });
    // Node keeps one ticket key: the old ticket no longer decrypts (documented in configuration.md).
    assert.equal(second.socket.isSessionReused(), false);
    assert.equal(second.socket.authorized, true);
    second.socket.destroy();
    const third = await connect(port(), ca, { session: second.session! });
    assert.equal(third.socket.isSessionReused(), true);
    third.socket.destroy();
    assert.equal(TICKET_KEY_BYTES, 48);
  });

  test('[CHAN-2] the standard profile has no lite ticket-key rotation', async () => {
    const standard = await startTestPlatform('sqlite');
    try {
      assert.equal(standard.platform.mqttListener.ticketKeys, null);
      const { socket } = await connect(standard.platform.mqttPort, standard.platform.caPem, {
        minVersion: 'TLSv1.2',
        maxVersion: 'TLSv1.2',
        ciphers: 'ECDHE-ECDSA-AES256-GCM-SHA384',
      });
      assert.equal(socket.getCipher().name, 'ECDHE-ECDSA-AES256-GCM-SHA384');
      socket.destroy();
    } finally {
      await standard.close();
    }
  });
});

describe('The lite profile refuses a certificate small devices cannot verify (CHAN-2)', () => {
  {
    test('[CHAN-2] start-up with an RSA-2048 certificate fails with a configuration error naming the key', async () => {
      const dir = mkdtempSync(join(tmpdir(), 'castellan-lite-'));
      try {
        const chain = await makeServerChain('rsa2048', 2);
        writeFileSync(join(dir, 'server.crt'), chain.certPem);
        writeFileSync(join(dir, 'server.key'), chain.keyPem, { mode: 0o600 });
        const config = loadConfig({
          env: {},
          cwd: dir,
          overrides: {
            dataDir: dir,
            log: { level: 'silent' },
            tls: { certFile: join(dir, 'server.crt'), keyFile: join(dir, 'server.key') },
            http: { host: '127.0.0.1', port: 0 },
            mqtt: { host: '127.0.0.1', port: 0, tlsProfile: 'lite' },
            admin: { enabled: false },
          },
        });
        await assert.rejects(
          startPlatform(config, { logDestination: captureLogs().stream, notice: () => {} }),
          (error: CastellanError) => {
            assert.equal(error.code, 'ERR_CONFIG_INVALID');
            assert.equal(
              error.message,
              'Invalid configuration: mqtt.tlsProfile "lite" needs an ECDSA P-256 certificate and key; tls.certFile holds rsa (2048 bits)',
            );
            return true;
          },
        );
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  }
});
