// The secure channel over MQTT payloads (CHAN-3, CHAN-4) on both databases: the plain-TCP listener's
// MQTT 5 enhanced authentication (hello in CONNECT, reply in CONNACK), sealed telemetry that lands,
// commands sealed at delivery and acknowledged, every kind of refused frame (replayed, behind the
// window, stale, forged, sealed for another device) answered PUBACK 0x99, counted by the guard and not
// stored, key rotation in both directions, single-use hellos, and the CONNECTs this listener refuses
// (MQTT 3.1.1, no or another method, a certificate-only product, a wrong secret). Devices use the SDK
// (SecureChannelMqttClient) for the flows and a raw mqtt-packet client where bytes must be chosen.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { SECURE_CHANNEL_MQTT_METHOD as SDK_METHOD, SecureChannelMqttClient } from '@castellan/device';
import {
  completeHandshake,
  createHello,
  parseFrameHeader,
  type SecureChannelSession,
  type SessionOptions,
} from '@castellan/protocol';
import mqttPacket, { type Packet } from 'mqtt-packet';
import { PlatformChannelKeys } from '../../src/devices/index.ts';
import { SECURE_CHANNEL_MQTT_METHOD } from '../../src/gateway/index.ts';
import { validatePacket } from '../../src/gateway/mqtt/packet-validator.ts';
import { dialectCases } from '../helpers/dialects.ts';
import {
  provisionTenant,
  request,
  startTestPlatform,
  type Tenant,
  type TestPlatform,
} from '../helpers/test-platform.ts';

const PAYLOAD_FORMAT_INVALID = 0x99;
const NOT_AUTHORIZED = 0x87;
const BAD_AUTHENTICATION_METHOD = 0x8c;
/** The platform's key epochs last this many frames in this file (secureChannel.rotateAfterFrames). */
const ROTATE_AFTER_FRAMES = 4;
const MAX_REFUSALS = 6;

type DeviceCreds = Tenant['devices'][number];

/** A raw MQTT client over plain TCP (mqtt-packet), for the tests that choose every byte. */
class RawClient {
  readonly socket: net.Socket;
  readonly version: 4 | 5;
  readonly closed: Promise<void>;
  readonly #packets: Packet[] = [];
  #wake: (() => void) | undefined;

  private constructor(socket: net.Socket, version: 4 | 5) {
    this.socket = socket;
    this.version = version;
    const parser = mqttPacket.parser({ protocolVersion: version });
    parser.on('packet', (packet: Packet) => {
      this.#packets.push(packet);
      this.#wake?.();
    });
    socket.on('data', (chunk: Buffer) => parser.parse(chunk));
    socket.on('error', () => {});
    this.closed = new Promise((resolve) =>
      socket.on('close', () => {
        resolve();
        this.#wake?.();
      }),
    );
  }

  static async open(port: number, version: 4 | 5 = 5): Promise<RawClient> {
    const socket = net.connect(port, '127.0.0.1');
    await once(socket, 'connect');
    return new RawClient(socket, version);
  }

  send(packet: Packet): void {
    this.socket.write(mqttPacket.generate(packet, { protocolVersion: this.version }));
  }

  /** The next packet of kind `cmd` (others stay queued); rejects when the connection closes first. */
  async next<C extends Packet['cmd']>(cmd: C, ms = 5000): Promise<Extract<Packet, { cmd: C }>> {
    const deadline = Date.now() + ms;
    for (;;) {
      const at = this.#packets.findIndex((p) => p.cmd === cmd);
      if (at >= 0) return this.#packets.splice(at, 1)[0] as Extract<Packet, { cmd: C }>;
      if (this.socket.destroyed) throw new Error(`connection closed before ${cmd}`);
      if (Date.now() > deadline) throw new Error(`no ${cmd} within ${ms} ms`);
      await Promise.race([new Promise<void>((resolve) => (this.#wake = resolve)), sleep(50)]);
    }
  }

  end(): void {
    this.socket.destroy();
  }
}

test('[CHAN-3] the packet validator lets AUTH through only on a connection with enhanced authentication (MQTT 5 4.12, 3.15)', () => {
  const auth = (reasonCode: number, properties: Record<string, unknown>) =>
    mqttPacket.generate({ cmd: 'auth', reasonCode, properties }, { protocolVersion: 5 });
  const reauth = auth(0x19, { authenticationMethod: SECURE_CHANNEL_MQTT_METHOD, authenticationData: Buffer.alloc(4) });
  // [MQTT-4.12.0-7] without an accepted Authentication Method a client sends no AUTH.
  assert.deepEqual(validatePacket(reauth, 5), {
    reasonCode: 0x82,
    rule: '§4.12',
    detail: 'AUTH without an Authentication Method in CONNECT',
  });
  assert.equal(validatePacket(reauth, 4)?.detail, 'reserved packet type 15');
  assert.equal(validatePacket(reauth, 5, true), null);
  assert.equal(validatePacket(auth(0x18, { authenticationMethod: SECURE_CHANNEL_MQTT_METHOD }), 5, true), null);
  // [MQTT-3.15.2-1] a client sends 0x18 or 0x19 only; 0x00 (Remaining Length 0) is the server's.
  assert.equal(validatePacket(Buffer.from([0xf0, 0x00]), 5, true)?.rule, 'MQTT-3.15.2-1');
  assert.equal(
    validatePacket(auth(0x00, { authenticationMethod: SECURE_CHANNEL_MQTT_METHOD }), 5, true)?.rule,
    'MQTT-3.15.2-1',
  );
  // 3.15.2.2.2: the Authentication Method is required; 3.15.2.2: only AUTH's properties.
  assert.equal(
    validatePacket(auth(0x19, { reasonString: 'again' }), 5, true)?.detail,
    'AUTH without an Authentication Method',
  );
  assert.deepEqual(
    validatePacket(auth(0x19, { authenticationMethod: SECURE_CHANNEL_MQTT_METHOD, sessionExpiryInterval: 5 }), 5, true),
    { reasonCode: 0x81, rule: '§2.2.2.2', detail: 'Session Expiry Interval is not a AUTH property' },
  );
});

for (const dialect of await dialectCases()) {
  describe(`secure channel over MQTT on ${dialect.name}`, { skip: dialect.skip }, () => {
    let tp: TestPlatform;
    let tenant: Tenant;
    let certOnly: Tenant;
    let spare: DeviceCreds[];
    let port: number;
    let platformKey: Buffer;
    const sdks: SecureChannelMqttClient[] = [];
    const raws: RawClient[] = [];

    before(async () => {
      tp = await startTestPlatform(dialect.name, {
        mqtt: { secureChannelEnabled: true, secureChannelPort: 0, secureChannelMaxRefusals: MAX_REFUSALS },
        secureChannel: { rotateAfterFrames: ROTATE_AFTER_FRAMES },
      });
      tenant = await provisionTenant(tp, 12);
      spare = [...tenant.devices];
      certOnly = await provisionTenant(tp, 1, tenant.adminToken);
      const patched = await request(tp.platform, 'PATCH', `/v1/products/${certOnly.productId}`, {
        token: certOnly.vendorToken,
        body: { authModes: ['certificate'] },
      });
      assert.equal(patched.status, 200, patched.text);
      assert.match(tp.platform.secureChannelMqttUrl ?? '', /^mqtt:\/\/127\.0\.0\.1:\d+$/);
      port = Number(new URL(tp.platform.secureChannelMqttUrl!).port);
      platformKey = new PlatformChannelKeys(tp.platform.keys).keyPair('intl').publicKey;
    });
    after(async () => {
      for (const client of sdks) await client.close().catch(() => {});
      for (const raw of raws) raw.end();
      await tp?.close();
    });

    const nextDevice = () => {
      const device = spare.shift();
      assert.ok(device, 'enough test devices');
      return device;
    };
    const telemetryRows = async (deviceId: string) =>
      Number(
        (await tp.query<{ n: number }>('select count(*) as n from telemetry where device_id = $1', [deviceId]))[0]!.n,
      );
    const refusals = (reason: string) => tp.platform.guard.secureChannelRefusals.get(reason) ?? 0;
    const sdk = async (device: DeviceCreds, sessionOptions?: SessionOptions) => {
      const client = await SecureChannelMqttClient.connect({
        url: tp.platform.secureChannelMqttUrl!,
        deviceId: device.id,
        secret: device.secret,
        platformPublicKey: platformKey,
        ...(sessionOptions ? { sessionOptions } : {}),
      });
      sdks.push(client);
      return client;
    };
    const connectPacket = (device: DeviceCreds, properties: Record<string, unknown>): Packet => ({
      cmd: 'connect',
      protocolId: 'MQTT',
      protocolVersion: 5,
      clean: true,
      clientId: device.id,
      username: device.id,
      keepalive: 60,
      properties,
    });
    /** A raw secure-channel connection: its CONNACK and, when accepted, the device's session. */
    const rawConnect = async (
      device: DeviceCreds,
      options: { hello?: ReturnType<typeof createHello>; sessionOptions?: SessionOptions } = {},
    ) => {
      const raw = await RawClient.open(port);
      raws.push(raw);
      const hello = options.hello ?? createHello({ suite: 'intl', deviceId: device.id, secret: device.secret });
      raw.send(
        connectPacket(device, { authenticationMethod: SECURE_CHANNEL_MQTT_METHOD, authenticationData: hello.hello }),
      );
      const connack = await raw.next('connack');
      let session: SecureChannelSession | undefined;
      if (connack.reasonCode === 0) {
        assert.equal(connack.properties?.authenticationMethod, SECURE_CHANNEL_MQTT_METHOD);
        session = completeHandshake({
          suite: 'intl',
          deviceId: device.id,
          secret: device.secret,
          hello: hello.hello,
          ephemeral: hello.ephemeral,
          reply: connack.properties.authenticationData!,
          platformPublicKey: platformKey,
          options: { rotateAfterFrames: ROTATE_AFTER_FRAMES, ...options.sessionOptions },
        });
      }
      return { raw, connack, session, hello };
    };
    let packetIds = 1;
    /** Publishes `payload` as is at QoS 1; the PUBACK's reason code. */
    const publishRaw = async (raw: RawClient, topic: string, payload: Buffer): Promise<number> => {
      const messageId = packetIds++;
      raw.send({ cmd: 'publish', topic, payload, qos: 1, messageId, retain: false, dup: false });
      const ack = await raw.next('puback');
      assert.equal(ack.messageId, messageId);
      return ack.reasonCode ?? 0;
    };
    const reading = (n: number) => Buffer.from(JSON.stringify({ temperature: 20 + n }));

    test('[CHAN-3] the SDK handshakes over plain TCP, its sealed telemetry lands and a sealed command is acknowledged', async () => {
      assert.equal(SDK_METHOD, SECURE_CHANNEL_MQTT_METHOD);
      const device = nextDevice();
      const client = await sdk(device);
      await client.publishTelemetry({ temperature: 21.5 });
      await client.publishTelemetry({ temperature: 21.7 });
      const rows = await tp.query<{ payload: string | Uint8Array }>(
        'select payload from telemetry where device_id = $1 order by seq',
        [device.id],
      );
      assert.deepEqual(
        rows.map((r) => JSON.parse(Buffer.from(r.payload).toString('utf8'))),
        [{ temperature: 21.5 }, { temperature: 21.7 }],
      );
      const history = await request(tp.platform, 'GET', `/v1/devices/${device.id}/telemetry?order=asc`, {
        token: tenant.vendorToken,
      });
      assert.equal(history.status, 200, history.text);
      assert.equal(history.text.includes('21.7'), true, history.text);

      const handled: unknown[] = [];
      await client.onCommand('set-scene', (command) => {
        handled.push(command.params);
        return { applied: command.params.scene };
      });
      const sent = await request(tp.platform, 'POST', `/v1/devices/${device.id}/commands`, {
        token: tenant.vendorToken,
        body: { name: 'set-scene', params: { scene: 'evening' }, timeoutSeconds: 10 },
      });
      assert.equal(sent.status, 202, sent.text);
      const done = await request(tp.platform, 'GET', `/v1/devices/${device.id}/commands/${sent.body.id}?wait=true`, {
        token: tenant.vendorToken,
      });
      assert.equal(done.status, 200, done.text);
      assert.equal(done.body.status, 'succeeded');
      assert.deepEqual(done.body.result, { applied: 'evening' });
      assert.deepEqual(handled, [{ scene: 'evening' }]);
      assert.equal(client.refusals.size, 0);
    });

    test('[CHAN-4] a command is delivered as a platform frame for this device, never in clear', async () => {
      const device = nextDevice();
      const { raw, session } = await rawConnect(device);
      assert.ok(session);
      raw.send({
        cmd: 'subscribe',
        messageId: packetIds++,
        subscriptions: [{ topic: `devices/${device.id}/commands/#`, qos: 1 }],
      });
      assert.deepEqual((await raw.next('suback')).granted, [1]);
      const sent = await request(tp.platform, 'POST', `/v1/devices/${device.id}/commands`, {
        token: tenant.vendorToken,
        body: { name: 'blink', params: { times: 3 }, timeoutSeconds: 10 },
      });
      assert.equal(sent.status, 202, sent.text);
      const publish = await raw.next('publish');
      const frame = Buffer.from(publish.payload as Buffer);
      assert.equal(frame.includes(Buffer.from('blink')), false, 'the command name is not on the wire');
      const header = parseFrameHeader(frame);
      assert.equal(header.direction, 'platform-to-device');
      assert.equal(header.deviceId, device.id);
      const command = JSON.parse(session.open(frame).toString('utf8'));
      assert.equal(command.id, sent.body.id);
      assert.deepEqual(command.params, { times: 3 });
      raw.send({ cmd: 'puback', messageId: publish.messageId! });
      const ack = session.seal(Buffer.from(JSON.stringify({ status: 'succeeded' })));
      assert.equal(await publishRaw(raw, `devices/${device.id}/acks/${sent.body.id}`, ack), 0);
      const done = await request(tp.platform, 'GET', `/v1/devices/${device.id}/commands/${sent.body.id}?wait=true`, {
        token: tenant.vendorToken,
      });
      assert.equal(done.body.status, 'succeeded');
    });

    test('[CHAN-3] [CHAN-4] replayed, behind-the-window, stale, forged and cross-device frames are refused with 0x99, counted and not stored', async () => {
      const device = nextDevice();
      const other = nextDevice();
      // The sender's own epochs are long here (frames are sealed and skipped to move the window).
      const { raw, session } = await rawConnect(device, { sessionOptions: { rotateAfterFrames: 1000 } });
      const { session: otherSession } = await rawConnect(other);
      assert.ok(session && otherSession);
      const topic = `devices/${device.id}/telemetry`;

      const held = session.seal(reading(0)); // seq 0, sent last
      for (let seq = 1; seq < 64; seq++) session.seal(reading(seq)); // sealed, never sent
      const accepted = session.seal(reading(64)); // seq 64: the window's top
      assert.equal(await publishRaw(raw, topic, accepted), 0);
      assert.equal(await telemetryRows(device.id), 1);

      const forged = Buffer.from(session.seal(reading(65)));
      forged[forged.length - 1]! ^= 0x01;
      const cases: Array<[reason: string, frame: Buffer]> = [
        ['replayed', accepted],
        ['too-old', held],
        ['stale', session.seal(reading(66), Date.now() - 400_000)],
        ['forged', forged],
        ['wrong-device', otherSession.seal(reading(67))],
      ];
      for (const [reason, frame] of cases) {
        const before = refusals(reason);
        assert.equal(await publishRaw(raw, topic, frame), PAYLOAD_FORMAT_INVALID, reason);
        assert.equal(refusals(reason), before + 1, `${reason} counted`);
      }
      assert.equal(await telemetryRows(device.id), 1, 'nothing refused was stored');
      // The connection goes on: the next authentic frame lands.
      assert.equal(await publishRaw(raw, topic, session.seal(reading(68))), 0);
      assert.equal(await telemetryRows(device.id), 2);
      assert.equal(await telemetryRows(other.id), 0);
    });

    test(`[CHAN-3] ${MAX_REFUSALS} refused frames end the connection with DISCONNECT 0x99`, async () => {
      const device = nextDevice();
      const { raw, session } = await rawConnect(device);
      assert.ok(session);
      for (let i = 0; i < MAX_REFUSALS; i++) {
        const frame: Buffer = Buffer.from(session.seal(reading(i)));
        frame[40]! ^= 0xff;
        assert.equal(await publishRaw(raw, `devices/${device.id}/telemetry`, frame), PAYLOAD_FORMAT_INVALID);
      }
      const disconnect = await raw.next('disconnect');
      assert.equal(disconnect.reasonCode, PAYLOAD_FORMAT_INVALID);
      await raw.closed;
      assert.equal(await telemetryRows(device.id), 0);
    });

    test('[CHAN-3] keys rotate mid-stream in both directions and the stream keeps working', async () => {
      const device = nextDevice();
      const client = await sdk(device, { rotateAfterFrames: ROTATE_AFTER_FRAMES });
      for (let i = 0; i < 10; i++) await client.publishTelemetry({ temperature: i });
      assert.equal(await telemetryRows(device.id), 10);
      const handled: number[] = [];
      await client.onCommand('step', (command) => {
        handled.push(command.params.n as number);
        return { n: command.params.n };
      });
      for (let n = 0; n < 6; n++) {
        const sent = await request(tp.platform, 'POST', `/v1/devices/${device.id}/commands`, {
          token: tenant.vendorToken,
          body: { name: 'step', params: { n }, timeoutSeconds: 10 },
        });
        assert.equal(sent.status, 202, sent.text);
        const done = await request(tp.platform, 'GET', `/v1/devices/${device.id}/commands/${sent.body.id}?wait=true`, {
          token: tenant.vendorToken,
        });
        assert.equal(done.body.status, 'succeeded', done.text);
      }
      assert.deepEqual(handled, [0, 1, 2, 3, 4, 5]);
      const session = client.session!;
      // 16 device frames (10 readings, 6 acks) and 6 platform frames, 4 per epoch.
      assert.ok(session.sendEpoch >= 3, `device sent in epoch ${session.sendEpoch}`);
      assert.ok(session.receiveEpoch >= 1, `device received in epoch ${session.receiveEpoch}`);
      assert.equal(client.refusals.size, 0);
    });

    test('[CHAN-3] re-authentication is not offered: AUTH 0x19 gets DISCONNECT 0x87', async () => {
      const device = nextDevice();
      const { raw, session } = await rawConnect(device);
      assert.ok(session);
      raw.send({
        cmd: 'auth',
        reasonCode: 0x19,
        properties: { authenticationMethod: SECURE_CHANNEL_MQTT_METHOD, authenticationData: Buffer.alloc(120) },
      });
      assert.equal((await raw.next('disconnect')).reasonCode, NOT_AUTHORIZED);
      await raw.closed;
    });

    test('[CHAN-3] a replayed CONNECT hello is refused with the same 0x87 as any refused hello', async () => {
      const device = nextDevice();
      const first = await rawConnect(device);
      assert.equal(first.connack.reasonCode, 0);
      first.raw.end();
      const before = refusals('replayed');
      const again = await rawConnect(device, { hello: first.hello });
      assert.equal(again.connack.reasonCode, NOT_AUTHORIZED);
      assert.equal(again.connack.properties, undefined, 'no reason given');
      assert.equal(refusals('replayed'), before + 1);
      await again.raw.closed;

      // A wrong secret (forged hello) gets exactly the same answer.
      const forgedBefore = refusals('forged');
      const forged = await rawConnect(device, {
        hello: createHello({ suite: 'intl', deviceId: device.id, secret: `${device.secret}x` }),
      });
      assert.equal(forged.connack.reasonCode, NOT_AUTHORIZED);
      assert.equal(forged.connack.properties, undefined);
      assert.equal(refusals('forged'), forgedBefore + 1);
    });

    test('[CHAN-3] MQTT 3.1.1 and CONNECTs without the method (or with another) are refused: no plain MQTT here', async () => {
      const device = nextDevice();
      const accepted = tp.platform.broker.stats.connectsAccepted;
      const v4 = await RawClient.open(port, 4);
      raws.push(v4);
      v4.send({
        cmd: 'connect',
        protocolId: 'MQTT',
        protocolVersion: 4,
        clean: true,
        clientId: device.id,
        username: device.id,
        password: Buffer.from(device.secret),
        keepalive: 60,
      });
      assert.equal((await v4.next('connack')).returnCode, 1, 'unacceptable protocol version');
      await v4.closed;

      for (const properties of [{}, { authenticationMethod: 'SCRAM-SHA-256', authenticationData: Buffer.alloc(8) }]) {
        const raw = await RawClient.open(port);
        raws.push(raw);
        raw.send({ ...connectPacket(device, properties), password: Buffer.from(device.secret) } as Packet);
        assert.equal((await raw.next('connack')).reasonCode, BAD_AUTHENTICATION_METHOD);
        await raw.closed;
      }
      assert.equal(tp.platform.broker.stats.connectsAccepted, accepted, 'never connected');
    });

    test('[CHAN-3] a device of a certificate-only product is refused (DEV-5)', async () => {
      const device = certOnly.devices[0]!;
      const before = refusals('not-admitted');
      const { connack, raw } = await rawConnect(device);
      assert.equal(connack.reasonCode, NOT_AUTHORIZED);
      assert.equal(refusals('not-admitted'), before + 1);
      await raw.closed;
    });

    test('[CHAN-3] the SDK refuses a platform that does not hold the pinned key', async () => {
      const device = nextDevice();
      const wrongKey = new PlatformChannelKeys(tp.platform.keys, 2).keyPair('intl').publicKey;
      await assert.rejects(
        SecureChannelMqttClient.connect({
          url: tp.platform.secureChannelMqttUrl!,
          deviceId: device.id,
          secret: device.secret,
          platformPublicKey: wrongKey,
        }),
        (error: Error & { code?: string }) => {
          assert.equal(error.code, 'ERR_SECURE_CHANNEL_HANDSHAKE');
          assert.equal(error.message, "the platform's reply was refused: forged");
          return true;
        },
      );
      await assert.rejects(
        SecureChannelMqttClient.connect({
          url: tp.platform.mqttUrl,
          deviceId: device.id,
          secret: device.secret,
          platformPublicKey: platformKey,
        }),
        { code: 'ERR_SECURE_CHANNEL_URL' },
      );
    });
  });
}
