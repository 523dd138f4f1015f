// Replays the MQTT packet-sequence corpus (../shared/mqtt-corpus, Eclipse Mosquitto's broker test data;
// format in its README) against a broker listening on plain TCP: the conformance listener, or a
// Mosquitto started for a differential run. Each case gets its own connection; "still connected" is
// proved by a PINGREQ/PINGRESP round trip and "disconnected" by the socket closing, so no case waits
// for a time-out unless the broker misbehaves.
//
// Options let the same replay reach a real listener (a TLS socket factory, an authenticated default
// CONNECT) and judge it by the README's simpler rule for real listeners ('robust'): the sequence ends in
// a closed connection or one that still answers a PINGREQ, never a hang; the expected bytes are not
// compared there (a real listener refuses what Mosquitto's anonymous broker accepts).
import { once } from 'node:events';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import net from 'node:net';
import { join, resolve } from 'node:path';
import mqttPacket from 'mqtt-packet';

export const CORPUS_DIR = resolve(
  process.env.CASTELLAN_MQTT_CORPUS ?? new URL('../../../../../shared/mqtt-corpus', import.meta.url).pathname,
);

export interface CorpusMessage {
  type: 'send' | 'recv' | 'publish';
  payload?: string;
  topic?: string;
  qos?: number;
}

export interface CorpusCase {
  file: string;
  group: string;
  name: string;
  ver: 3 | 4 | 5;
  connect: boolean;
  expectDisconnect: boolean;
  msgs: CorpusMessage[];
}

export interface CaseOutcome {
  case: CorpusCase;
  ok: boolean;
  /** What went differently, when not ok. */
  detail?: string;
  ms: number;
  /** 'robust' judge only: how the connection ended up after the case's messages. */
  ended?: 'closed' | 'open';
  /** 'robust' judge only: the answer to the default CONNECT (hex), when the case used one and got one. */
  connack?: string;
  /** 'robust' judge only: the broker's packets (hex), but for the default CONNECT's answer and the last PINGRESP. */
  received?: string[];
}

/** How a replay reaches the broker and how it judges a case; every field is optional. */
export interface ReplayOptions {
  /** Bounds every single wait (default 2,000 ms). */
  ms?: number;
  /**
   * Opens a connected socket (e.g. TLS to a real listener): for the case itself, or for the second
   * client of a `publish` message. Default: plain TCP to host:port.
   */
  connectSocket?: (role: 'case' | 'publisher') => Promise<net.Socket>;
  /** The CONNECT sent for a case that uses the default one. Default: anonymous, see connectPacket. */
  defaultConnect?: (c: CorpusCase) => Buffer;
  /** The second client's CONNECT for a `publish` message (level 4 or 5). Default: anonymous. */
  publisherConnect?: (ver: 4 | 5) => Buffer;
  /**
   * 'expected' (default): the corpus's expected bytes and disconnects. 'robust': the rule for real
   * listeners; a `recv` only paces the replay (it waits up to recvMs per expected packet, or for the
   * close) and the case fails only on a hang: neither closed nor answering a PINGREQ within ms.
   */
  judge?: 'expected' | 'robust';
  /** 'robust' only: the wait per packet a `recv` expects (default 250 ms). */
  recvMs?: number;
}

async function plainSocket(host: string, port: number): Promise<net.Socket> {
  const socket = net.connect({ host, port });
  socket.setNoDelay(true);
  try {
    await once(socket, 'connect');
  } catch (error) {
    socket.destroy();
    throw error;
  }
  return socket;
}

interface RawGroup {
  group: string;
  disable?: boolean;
  tests: { name: string; ver?: number; connect?: boolean; expect_disconnect?: boolean; msgs?: CorpusMessage[] }[];
}

export function corpusAvailable(dir = CORPUS_DIR): boolean {
  return existsSync(join(dir, 'README.md'));
}

export function loadCorpus(dir = CORPUS_DIR): CorpusCase[] {
  const cases: CorpusCase[] = [];
  for (const file of readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .sort()) {
    const groups = JSON.parse(readFileSync(join(dir, file), 'utf8')) as RawGroup[];
    for (const g of groups) {
      if (g.disable) continue;
      for (const t of g.tests) {
        cases.push({
          file,
          group: g.group,
          name: t.name,
          ver: (t.ver ?? 4) as CorpusCase['ver'],
          connect: t.connect ?? true,
          expectDisconnect: t.expect_disconnect ?? true,
          msgs: t.msgs ?? [],
        });
      }
    }
  }
  return cases;
}

export const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

/** A clean-start CONNECT (keep alive 60) at protocol level `ver`, MQTT 3.1's 'MQIsdp' name for 3. */
export function connectPacket(ver: 3 | 4 | 5, clientId: string): Buffer {
  return mqttPacket.generate({
    cmd: 'connect',
    protocolId: ver === 3 ? 'MQIsdp' : 'MQTT',
    protocolVersion: ver,
    clientId,
    keepalive: 60,
    clean: true,
  });
}

/** A byte reader over a socket that resolves reads of exact lengths, or reports close/time-out. */
class Reader {
  #buffer = Buffer.alloc(0);
  #closed = false;
  #waiter: (() => void) | undefined;

  constructor(socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.#buffer = Buffer.concat([this.#buffer, chunk]);
      this.#waiter?.();
    });
    const end = () => {
      this.#closed = true;
      this.#waiter?.();
    };
    socket.on('close', end);
    socket.on('error', end);
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Exactly n bytes; null when the socket closed first; 'timeout' after ms. */
  async read(n: number, ms: number): Promise<Buffer | null | 'timeout'> {
    const deadline = Date.now() + ms;
    while (this.#buffer.length < n) {
      if (this.#closed) return null;
      const left = deadline - Date.now();
      if (left <= 0) return 'timeout';
      await new Promise<void>((resolveWait) => {
        const timer = setTimeout(resolveWait, left);
        this.#waiter = () => {
          clearTimeout(timer);
          resolveWait();
        };
      });
      this.#waiter = undefined;
    }
    const out = this.#buffer.subarray(0, n);
    this.#buffer = this.#buffer.subarray(n);
    return out;
  }

  /** Waits for the socket to close; false if it is still open after ms. */
  async closedWithin(ms: number): Promise<boolean> {
    if (this.#closed) return true;
    await this.read(Number.MAX_SAFE_INTEGER, ms);
    return this.#closed;
  }

  /** One whole packet (fixed header, remaining length, body). */
  async packet(ms: number): Promise<Buffer | null | 'timeout'> {
    const first = await this.read(1, ms);
    if (first === null || first === 'timeout') return first;
    const header = [first];
    let length = 0;
    for (let i = 0, multiplier = 1; i < 4; i++, multiplier *= 128) {
      const b = await this.read(1, ms);
      if (b === null || b === 'timeout') return b;
      header.push(b);
      length += (b[0]! & 0x7f) * multiplier;
      if ((b[0]! & 0x80) === 0) break;
    }
    const body = await this.read(length, ms);
    if (body === null || body === 'timeout') return body;
    return Buffer.concat([...header, body]);
  }
}

/**
 * An MQTT 5 CONNACK's properties are the broker's own (Mosquitto announces its topic-alias and
 * receive maximums): compare the session-present flag and the reason code only.
 */
function sameConnack(expected: Buffer, actual: Buffer): boolean {
  const header = (b: Buffer) => {
    let i = 1;
    while (b[i]! & 0x80) i++;
    return b.subarray(i + 1, i + 3);
  };
  return actual[0] === 0x20 && header(expected).equals(header(actual));
}

async function publishFromSecondClient(
  host: string,
  port: number,
  msg: CorpusMessage,
  ver: 3 | 4 | 5,
  options: ReplayOptions = {},
) {
  const socket = options.connectSocket ? await options.connectSocket('publisher') : await plainSocket(host, port);
  const reader = new Reader(socket);
  const level = ver === 3 ? 4 : ver;
  socket.write(
    options.publisherConnect?.(level) ?? connectPacket(level, `corpus-publisher-${process.pid}-${Math.random()}`),
  );
  await reader.packet(2_000);
  const qos = (msg.qos ?? 0) as 0 | 1 | 2;
  socket.write(
    mqttPacket.generate(
      {
        cmd: 'publish',
        topic: msg.topic ?? '',
        payload: Buffer.from(msg.payload ?? '', 'utf8'),
        qos,
        retain: false,
        dup: false,
        ...(qos > 0 ? { messageId: 1 } : {}),
      },
      // The second client's PUBLISH is encoded in the version its CONNECT declared (a v5 PUBLISH has
      // a property length).
      { protocolVersion: ver === 5 ? 5 : 4 },
    ),
  );
  if (qos === 1) await reader.packet(2_000);
  if (qos === 2) {
    await reader.packet(2_000);
    socket.write(hex('62 02 0001'));
    await reader.packet(2_000);
  }
  socket.write(hex('E0 00'));
  socket.end();
  await reader.closedWithin(2_000);
  socket.destroy();
}

/** Splits bytes into whole packets (fixed header + remaining length); null if they do not split evenly. */
export function splitPackets(bytes: Buffer): Buffer[] | null {
  const out: Buffer[] = [];
  let i = 0;
  while (i < bytes.length) {
    let length = 0;
    let j = i + 1;
    for (let multiplier = 1; ; multiplier *= 128, j++) {
      if (j >= bytes.length || j > i + 4) return null;
      length += (bytes[j]! & 0x7f) * multiplier;
      if ((bytes[j]! & 0x80) === 0) break;
    }
    const end = j + 1 + length;
    if (end > bytes.length) return null;
    out.push(bytes.subarray(i, end));
    i = end;
  }
  return out;
}

/**
 * MQTT 5 lets a sender omit an empty property length, and a success reason code with it, in PUBACK,
 * PUBREC, PUBREL, PUBCOMP, DISCONNECT and AUTH (MQTT 5.0 sections 3.4.2.1, 3.5.2.1, 3.6.2.1, 3.7.2.1,
 * 3.14.2.1, 3.15.2.1): `E0 01 82` and `E0 02 82 00` are the same packet. Compare the shortest form.
 */
export function canonicalPacket(packet: Buffer, ver: number): string {
  const type = packet[0]! >> 4;
  if (ver !== 5 || ![4, 5, 6, 7, 14, 15].includes(type)) return packet.toString('hex');
  let bodyAt = 1;
  while (packet[bodyAt]! & 0x80) bodyAt++;
  bodyAt++;
  const fixed = type >= 14 ? 0 : 2; // packet identifier of the PUBACK family
  let body = [...packet.subarray(bodyAt)];
  if (body.length === fixed + 2 && body[fixed + 1] === 0) body = body.slice(0, fixed + 1);
  if (body.length === fixed + 1 && body[fixed] === 0) body = body.slice(0, fixed);
  return Buffer.from([packet[0]!, body.length, ...body]).toString('hex');
}

/** The protocol level a CONNECT at the start of `bytes` declares; undefined if they do not start with one. */
export function connectLevel(bytes: Buffer): number | undefined {
  if (bytes.length < 2 || bytes[0]! >> 4 !== 1) return undefined;
  let at = 1;
  while (at < 5 && at < bytes.length && (bytes[at]! & 0x80) !== 0) at++;
  at++; // past the last Remaining Length byte
  if (at + 2 > bytes.length) return undefined;
  const nameLength = bytes.readUInt16BE(at);
  return bytes[at + 2 + nameLength];
}

/**
 * Replays one case; `ms` (a number, or options.ms) bounds every single wait. With options, the case can
 * run over another socket (e.g. TLS) with another default CONNECT, and be judged by the 'robust' rule.
 */
export async function replayCase(
  host: string,
  port: number,
  c: CorpusCase,
  msOrOptions: number | ReplayOptions = 2_000,
): Promise<CaseOutcome> {
  const options: ReplayOptions = typeof msOrOptions === 'number' ? { ms: msOrOptions } : msOrOptions;
  if (options.judge === 'robust') return replayRobust(host, port, c, options);
  const ms = options.ms ?? 2_000;
  const started = Date.now();
  let socket: net.Socket | undefined;
  const fail = (detail: string): CaseOutcome => ({ case: c, ok: false, detail, ms: Date.now() - started });
  try {
    socket = options.connectSocket ? await options.connectSocket('case') : await plainSocket(host, port);
    const reader = new Reader(socket);
    if (c.connect) {
      socket.write(options.defaultConnect?.(c) ?? connectPacket(c.ver, `${c.group} ${c.name}`.slice(0, 23)));
      const connack = await reader.packet(ms);
      if (connack === null || connack === 'timeout') return fail(`default CONNECT: ${connack ?? 'closed'}`);
      const reasonAt = connack[1]! < 0x80 ? 3 : 4;
      if (connack[0] !== 0x20 || connack[reasonAt] !== 0)
        return fail(`default CONNECT refused: ${connack.toString('hex')}`);
    }
    // The version CONNACKs are compared in: the case's, or the level its own CONNECT declares (some
    // v5 groups leave `ver` at its default and send a v5 CONNECT themselves).
    let version: number = c.ver;
    for (const [i, msg] of c.msgs.entries()) {
      if (msg.type === 'send') {
        if (reader.closed) return fail(`msg ${i}: closed before send`);
        const bytes = hex(msg.payload ?? '');
        if (!c.connect) version = connectLevel(bytes) ?? version;
        socket.write(bytes);
      } else if (msg.type === 'recv') {
        const expected = hex(msg.payload ?? '');
        const packets = splitPackets(expected);
        if (!packets) {
          // Not whole packets: compare the raw bytes.
          const actual = await reader.read(expected.length, ms);
          if (actual === null || actual === 'timeout')
            return fail(`msg ${i}: ${actual ?? 'closed'}, expected ${expected.toString('hex')}`);
          if (!actual.equals(expected))
            return fail(`msg ${i}: received ${actual.toString('hex')}, expected ${expected.toString('hex')}`);
          continue;
        }
        for (const want of packets) {
          const actual = await reader.packet(ms);
          if (actual === null) return fail(`msg ${i}: closed, expected ${want.toString('hex')}`);
          if (actual === 'timeout') return fail(`msg ${i}: nothing received, expected ${want.toString('hex')}`);
          const connack = version === 5 && want[0] === 0x20;
          const same = connack
            ? sameConnack(want, actual)
            : canonicalPacket(want, c.ver) === canonicalPacket(actual, c.ver);
          if (!same) return fail(`msg ${i}: received ${actual.toString('hex')}, expected ${want.toString('hex')}`);
        }
      } else if (msg.type === 'publish') {
        await publishFromSecondClient(host, port, msg, c.ver, options);
      }
    }
    if (c.expectDisconnect) {
      // The barrier: a live connection would answer a PINGREQ; a closed one cannot.
      if (!reader.closed) socket.write(hex('C0 00'));
      if (!(await reader.closedWithin(ms))) return fail('expected a disconnect; the connection stayed open');
      return { case: c, ok: true, ms: Date.now() - started };
    }
    if (reader.closed) return fail('expected the connection to stay open; it was closed');
    socket.write(hex('C0 00'));
    const pong = await reader.packet(ms);
    if (pong === null || pong === 'timeout') return fail(`PINGREQ barrier: ${pong ?? 'closed'}`);
    if (!pong.equals(hex('D0 00'))) return fail(`PINGREQ barrier: received ${pong.toString('hex')} first`);
    return { case: c, ok: true, ms: Date.now() - started };
  } catch (error) {
    return fail(`error: ${(error as Error).message}`);
  } finally {
    socket?.destroy();
  }
}

/**
 * The rule for real listeners (the corpus README): whatever the case sends, the connection ends up
 * closed, or still answers a PINGREQ with a PINGRESP within `ms`; a default CONNECT the listener refuses
 * must be followed by the close. What the broker answers on the way is recorded, not compared.
 */
async function replayRobust(host: string, port: number, c: CorpusCase, options: ReplayOptions): Promise<CaseOutcome> {
  const ms = options.ms ?? 2_000;
  const recvMs = options.recvMs ?? 250;
  const started = Date.now();
  const received: string[] = [];
  let connack: string | undefined;
  let socket: net.Socket | undefined;
  const done = (ended: 'closed' | 'open'): CaseOutcome => ({
    case: c,
    ok: true,
    ms: Date.now() - started,
    ended,
    received,
    ...(connack === undefined ? {} : { connack }),
  });
  const fail = (detail: string): CaseOutcome => ({
    case: c,
    ok: false,
    detail,
    ms: Date.now() - started,
    received,
    ...(connack === undefined ? {} : { connack }),
  });
  try {
    socket = options.connectSocket ? await options.connectSocket('case') : await plainSocket(host, port);
    const reader = new Reader(socket);
    if (c.connect) {
      socket.write(options.defaultConnect?.(c) ?? connectPacket(c.ver, `${c.group} ${c.name}`.slice(0, 23)));
      const answer = await reader.packet(ms);
      if (answer === 'timeout') return fail('default CONNECT: no CONNACK and no close (a hang)');
      if (answer === null) return done('closed');
      connack = answer.toString('hex');
      const reasonAt = answer[1]! < 0x80 ? 3 : 4;
      if (answer[0] !== 0x20 || answer[reasonAt] !== 0) {
        // A refusal: the server closes the network connection after it [MQTT-3.2.2-5].
        if (!(await reader.closedWithin(ms))) return fail(`default CONNECT refused (${connack}) but left open`);
        return done('closed');
      }
    }
    for (const msg of c.msgs) {
      if (reader.closed) break; // ended early: a refusal by disconnect; the rest cannot be sent
      if (msg.type === 'send') {
        socket.write(hex(msg.payload ?? ''));
      } else if (msg.type === 'recv') {
        // Paces the replay (later sends may answer these packets); what arrives is not compared.
        const expected = splitPackets(hex(msg.payload ?? ''))?.length ?? 1;
        for (let i = 0; i < expected; i++) {
          const packet = await reader.packet(recvMs);
          if (packet === null || packet === 'timeout') break;
          received.push(packet.toString('hex'));
        }
      } else if (msg.type === 'publish') {
        await publishFromSecondClient(host, port, msg, c.ver, options);
      }
    }
    if (reader.closed) return done('closed');
    // The barrier: a live connection answers the PINGREQ after whatever it still had to send.
    socket.write(hex('C0 00'));
    for (;;) {
      const packet = await reader.packet(ms);
      if (packet === null) return done('closed');
      if (packet === 'timeout') return fail(`neither closed nor answered a PINGREQ within ${ms} ms (a hang)`);
      if (packet.equals(hex('D0 00'))) return done('open');
      received.push(packet.toString('hex'));
    }
  } catch (error) {
    return fail(`error: ${(error as Error).message}`);
  } finally {
    socket?.destroy();
  }
}

/** Replays cases in corpus order (one at a time by default: cases share topics and retained messages). */
export async function replayCorpus(
  host: string,
  port: number,
  cases: CorpusCase[],
  options: ReplayOptions & { concurrency?: number } = {},
): Promise<CaseOutcome[]> {
  const out: CaseOutcome[] = new Array<CaseOutcome>(cases.length);
  let next = 0;
  const worker = async () => {
    while (next < cases.length) {
      const i = next++;
      out[i] = await replayCase(host, port, cases[i]!, options);
    }
  };
  await Promise.all(Array.from({ length: options.concurrency ?? 1 }, worker));
  return out;
}
