// Admission control for the MQTT over TLS listener (issue 6): every new TCP connection is judged on
// its raw socket, before the TLS handshake, so a flood costs the server an accept() and a map look-up
// rather than a key exchange, a client-certificate check or a database query. In order:
//   1. the listener's CIDR lists (mqtt.allow, mqtt.deny) and the IP blocks this process knows of;
//   2. a global cap on TLS handshakes in progress (mqtt.maxPendingHandshakes);
//   3. a per-client-network connect limiter (IPv4 address, IPv6 /64): a steady rate plus a burst
//      allowance (mqtt.connectsPerIpPerSecond, mqtt.connectBurstPerIp).
// A refused socket is destroyed at once. The guard's per-minute connect limit (detection and IP blocks)
// still runs at CONNECT, as the second line.
//
// Refusals for load or rate at CONNECT tell MQTT 5 clients when to come back: a `retry-after` User
// Property in seconds, chosen here with jitter and growing with the client network's recent refusals,
// so a fleet that was cut off at once does not come back at once (docs/protocol.md, Admission control).
import type { Server, Socket } from 'node:net';
import mqttPacket, { type IConnackPacket } from 'mqtt-packet';
import type { Logger } from 'pino';
import { BurstyRateLimiter, RateLimiterMemory, RateLimiterRes } from 'rate-limiter-flexible';
import { clientNetworkOf, createAddressFilter, gateConnections, normaliseIp } from '../../guard/address-filter.ts';
import type { BrokerStats } from './mqtt-broker.ts';
import { ReasonCode } from './reason-codes.ts';

export interface AdmissionOptions {
  /** CIDR ranges allowed (empty: all) and denied (deny wins). */
  allow: readonly string[];
  deny: readonly string[];
  /** IP blocks this process already knows of (the guard's); such addresses are refused like denied ones. */
  isBlocked?: (ip: string) => boolean;
  /** Steady connection attempts per second per client network. */
  connectsPerIpPerSecond: number;
  /** Attempts a client network may make above the steady rate in a burst. */
  connectBurstPerIp: number;
  /** TLS handshakes in progress at once, all clients together; above it new sockets are dropped. */
  maxPendingHandshakes: number;
  /** Bounds of the `retry-after` told to MQTT 5 clients refused for load or rate. */
  retryAfterMinSeconds: number;
  retryAfterMaxSeconds: number;
}

/** The configuration schema's defaults (mqtt.*), for listeners built without a configuration. */
export const DEFAULT_ADMISSION: AdmissionOptions = {
  allow: [],
  deny: [],
  connectsPerIpPerSecond: 10,
  connectBurstPerIp: 100,
  maxPendingHandshakes: 256,
  retryAfterMinSeconds: 5,
  retryAfterMaxSeconds: 30,
};

export type AdmissionRefusal = 'address' | 'handshakes' | 'connect-rate';

/** How long refusals of a client network count towards a longer `retry-after`. */
const REFUSAL_MEMORY_SECONDS = 600;
/** Client networks remembered at once; beyond it, expired entries go, then all (fail open, not OOM). */
const MAX_REMEMBERED_NETWORKS = 100_000;

/**
 * Chooses the `retry-after` for a refused client: uniform in [upper/2, upper] where upper doubles with
 * each refusal of its network in the last ten minutes (min·2, min·4, …), within [min, max]. The jitter
 * spreads a fleet refused in the same second over the whole interval.
 *
 * Synchronous on purpose (a plain fixed-window count): the refusing CONNACK is built synchronously.
 */
export class RetryAdvisor {
  readonly minSeconds: number;
  readonly maxSeconds: number;
  readonly #random: () => number;
  readonly #now: () => number;
  readonly #refusals = new Map<string, { count: number; until: number }>();

  constructor(options: { minSeconds: number; maxSeconds: number; random?: () => number; now?: () => number }) {
    this.minSeconds = Math.max(1, Math.floor(options.minSeconds));
    this.maxSeconds = Math.max(this.minSeconds, Math.floor(options.maxSeconds));
    this.#random = options.random ?? Math.random;
    this.#now = options.now ?? Date.now;
  }

  /** Records a refusal of the client network `ip` belongs to; returns the seconds it should wait. */
  refused(ip: string): number {
    const network = clientNetworkOf(ip);
    const now = this.#now();
    let entry = this.#refusals.get(network);
    if (!entry || entry.until <= now) {
      if (!entry && this.#refusals.size >= MAX_REMEMBERED_NETWORKS) this.#forgetExpired(now);
      entry = { count: 0, until: now + REFUSAL_MEMORY_SECONDS * 1000 };
      this.#refusals.set(network, entry);
    }
    entry.count++;
    const upper = Math.min(this.maxSeconds, this.minSeconds * 2 ** Math.min(entry.count, 20));
    const lower = Math.max(this.minSeconds, Math.ceil(upper / 2));
    return lower + Math.floor(this.#random() * (upper - lower + 1));
  }

  #forgetExpired(now: number): void {
    for (const [key, value] of this.#refusals) if (value.until <= now) this.#refusals.delete(key);
    if (this.#refusals.size >= MAX_REMEMBERED_NETWORKS) this.#refusals.clear();
  }
}

/** The listener's advisor per broker, for the CONNECT handler; defaults for a broker without one. */
const advisors = new WeakMap<object, RetryAdvisor>();

/** Reason codes a refusing CONNACK carries `retry-after` with: load or rate, not the client's fault. */
const RETRYABLE = new Map<number, string>([
  [ReasonCode.ConnectionRateExceeded, 'connection rate exceeded'],
  [ReasonCode.ServerBusy, 'server busy'],
  [ReasonCode.ServerUnavailable, 'server unavailable'],
]);

/**
 * Properties of an MQTT 5 refusing CONNACK: for 0x9F, 0x89 and 0x88 a `retry-after` User Property
 * (decimal seconds) and a Reason String saying the same; none for other codes. Dropped when they would
 * make the CONNACK larger than the client's Maximum Packet Size [MQTT-3.2.2-19] [MQTT-3.2.2-20].
 */
export function refusalProperties(
  broker: object,
  remoteAddress: string,
  reasonCode: number,
  clientMaximumPacketSize?: number,
): Pick<IConnackPacket, 'properties'> {
  const what = RETRYABLE.get(reasonCode);
  if (what === undefined) return {};
  let advisor = advisors.get(broker);
  if (!advisor) {
    advisor = new RetryAdvisor({
      minSeconds: DEFAULT_ADMISSION.retryAfterMinSeconds,
      maxSeconds: DEFAULT_ADMISSION.retryAfterMaxSeconds,
    });
    advisors.set(broker, advisor);
  }
  const seconds = advisor.refused(normaliseIp(remoteAddress));
  const properties = {
    reasonString: `${what}: retry after ${seconds} s`,
    userProperties: { 'retry-after': String(seconds) },
  };
  if (clientMaximumPacketSize === undefined) return { properties };
  const fits = (p: IConnackPacket['properties']) =>
    mqttPacket.generate(
      { cmd: 'connack', sessionPresent: false, reasonCode, ...(p ? { properties: p } : {}) },
      { protocolVersion: 5 },
    ).length <= clientMaximumPacketSize;
  if (fits(properties)) return { properties };
  // The User Property is the one a client acts on: it goes last.
  const withoutReason = { userProperties: properties.userProperties };
  return fits(withoutReason) ? { properties: withoutReason } : {};
}

/** The counters admission adds to the broker's (exported on /metrics as castellan_mqtt_events_total). */
type AdmissionStats = Pick<
  BrokerStats,
  'connectsRefused' | 'connectsThrottled' | 'handshakesShed' | 'tlsHandshakesStarted'
>;

export class ConnectionAdmission {
  readonly options: Readonly<AdmissionOptions>;
  readonly advisor: RetryAdvisor;
  readonly #stats: AdmissionStats;
  readonly #log: Logger;
  readonly #addressAllowed: (ip: string) => boolean;
  readonly #limiter: BurstyRateLimiter;
  /** `address|port` → release of a socket whose TLS handshake is in progress. */
  readonly #pending = new Map<string, () => void>();

  constructor(options: AdmissionOptions, stats: AdmissionStats, log: Logger) {
    this.options = Object.freeze({ ...options });
    this.#stats = stats;
    this.#log = log;
    this.#addressAllowed = createAddressFilter(options);
    this.advisor = new RetryAdvisor({
      minSeconds: options.retryAfterMinSeconds,
      maxSeconds: options.retryAfterMaxSeconds,
    });
    const rate = Math.max(1, options.connectsPerIpPerSecond);
    const burst = Math.max(0, options.connectBurstPerIp);
    // rate-limiter-flexible's form of a token bucket: `rate` attempts per one-second window; past them
    // a burst allowance of `burst` attempts is drawn on, renewed every ⌈burst / rate⌉ seconds.
    this.#limiter = new BurstyRateLimiter(
      new RateLimiterMemory({ keyPrefix: 'mqtt-admit', points: rate, duration: 1 }),
      new RateLimiterMemory({
        keyPrefix: 'mqtt-admit-burst',
        points: burst,
        duration: Math.max(1, Math.ceil(burst / rate)),
      }),
    );
  }

  /** TLS handshakes admitted and not yet finished (secure, failed or abandoned). */
  get pendingHandshakes(): number {
    return this.#pending.size;
  }

  /**
   * Gates a TLS server's raw connections: call before it listens. Admitted sockets count as pending
   * until the handshake completes or the socket closes.
   */
  attach(server: Server): void {
    gateConnections(server, (socket) => this.#decide(socket));
    server.on('secureConnection', (socket: Socket) => {
      this.#pending.get(`${socket.remoteAddress}|${socket.remotePort}`)?.();
    });
  }

  #decide(socket: Socket): boolean | Promise<boolean> {
    const raw = socket.remoteAddress;
    if (raw === undefined) return false; // already gone
    const ip = normaliseIp(raw);
    if (!this.#addressAllowed(ip) || this.options.isBlocked?.(ip)) return this.#refuse('address');
    // A cheap early drop; checked again below, when the slot is actually taken.
    if (this.#pending.size >= this.options.maxPendingHandshakes) return this.#refuse('handshakes');
    return this.#limiter.consume(clientNetworkOf(ip)).then(
      () => this.#admit(socket),
      (rejection: unknown) => {
        if (!(rejection instanceof RateLimiterRes)) throw rejection;
        this.advisor.refused(ip);
        return this.#refuse('connect-rate');
      },
    );
  }

  #admit(socket: Socket): boolean {
    if (this.#pending.size >= this.options.maxPendingHandshakes) return this.#refuse('handshakes');
    const key = `${socket.remoteAddress}|${socket.remotePort}`;
    const release = () => {
      if (this.#pending.get(key) === release) this.#pending.delete(key);
    };
    this.#pending.set(key, release);
    socket.once('close', release);
    this.#stats.tlsHandshakesStarted++;
    return true;
  }

  #refuse(reason: AdmissionRefusal): false {
    this.#stats.connectsRefused++;
    if (reason === 'connect-rate') this.#stats.connectsThrottled++;
    else if (reason === 'handshakes') this.#stats.handshakesShed++;
    // No address in the log line (PRIV-4); floods make this debug-only.
    this.#log.debug({ reason }, 'mqtt: connection refused before TLS');
    return false;
  }
}

/** Makes `admission`'s advisor the one the broker's refusing CONNACKs consult. */
export function adviseRetriesFor(broker: object, admission: ConnectionAdmission): void {
  advisors.set(broker, admission.advisor);
}
