// Listener allow/deny lists (CHAN-5): CIDR ranges checked on every new connection, before TLS.
import { BlockList, isIPv4, isIPv6 } from 'node:net';
import type { Server, Socket } from 'node:net';

export interface AddressLists {
  allow: readonly string[];
  deny: readonly string[];
}

function toBlockList(ranges: readonly string[]): BlockList {
  const list = new BlockList();
  for (const range of ranges) {
    const [address, bits] = range.split('/') as [string, string | undefined];
    const family = isIPv4(address) ? 'ipv4' : isIPv6(address) ? 'ipv6' : null;
    if (!family) throw new Error(`not an IP range: ${range}`);
    if (bits === undefined) list.addAddress(address, family);
    else list.addSubnet(address, Number(bits), family);
  }
  return list;
}

/** Normalises IPv4-mapped IPv6 addresses (::ffff:10.0.0.1) to IPv4. */
export function normaliseIp(ip: string): string {
  return ip.startsWith('::ffff:') && isIPv4(ip.slice(7)) ? ip.slice(7) : ip;
}

/** The eight 16-bit groups of an IPv6 address (zone dropped, `::` expanded, dotted tail converted). */
function ipv6Groups(raw: string): number[] | null {
  const ip = raw.split('%')[0]!;
  const halves = ip.split('::');
  if (halves.length > 2) return null;
  const part = (s: string | undefined) => (s ? s.split(':') : []);
  const head = part(halves[0]);
  const tail = part(halves[1]);
  const last = halves.length === 2 ? tail : head;
  const dotted = last.at(-1);
  if (dotted?.includes('.')) {
    if (!isIPv4(dotted)) return null;
    const [a, b, c, d] = dotted.split('.').map(Number) as [number, number, number, number];
    last.splice(-1, 1, ((a << 8) | b).toString(16), ((c << 8) | d).toString(16));
  }
  const missing = 8 - head.length - tail.length;
  if (halves.length === 2 ? missing < 1 : missing !== 0) return null;
  const groups = [...head, ...Array<string>(halves.length === 2 ? missing : 0).fill('0'), ...tail].map((g) =>
    /^[0-9a-fA-F]{1,4}$/.test(g) ? parseInt(g, 16) : Number.NaN,
  );
  return groups.some(Number.isNaN) ? null : groups;
}

/**
 * The key of per-client limits: an IPv4 address, or the /64 of an IPv6 address. A /64 is what one
 * subscriber usually gets (RFC 6177), so rotating addresses inside it buys no new budget.
 */
export function clientNetworkOf(raw: string): string {
  const ip = normaliseIp(raw);
  if (isIPv4(ip)) return ip;
  const groups = ipv6Groups(ip);
  return groups
    ? `${groups
        .slice(0, 4)
        .map((g) => g.toString(16))
        .join(':')}::/64`
    : ip;
}

export type AddressCheck = (ip: string) => boolean;

/** True when an address may connect: not denied, and allowed (or no allow list). */
export function createAddressFilter(lists: AddressLists): AddressCheck {
  const deny = toBlockList(lists.deny);
  const allow = lists.allow.length > 0 ? toBlockList(lists.allow) : null;
  return (raw) => {
    const ip = normaliseIp(raw);
    const family = isIPv4(ip) ? 'ipv4' : 'ipv6';
    if (deny.check(ip, family)) return false;
    return allow ? allow.check(ip, family) : true;
  };
}

/**
 * Puts `decide` in front of the 'connection' listeners a server has when this is called (for a
 * tls.Server, the one that starts the TLS handshake): a refused socket is destroyed at once and never
 * reaches them, so no TLS work is done, nothing is sent, and no handshake error is logged for it.
 * `decide` may answer through a promise (an in-memory limiter answers within a microtask); meanwhile
 * the socket is held, its bytes stay buffered in it for the TLS layer, and an error on it is absorbed.
 */
export function gateConnections(server: Server, decide: (socket: Socket) => boolean | PromiseLike<boolean>): void {
  const listeners = server.listeners('connection') as Array<(socket: Socket) => void>;
  server.removeAllListeners('connection');
  const forward = (socket: Socket) => {
    for (const listener of listeners) listener.call(server, socket);
  };
  server.on('connection', (socket: Socket) => {
    let verdict: boolean | PromiseLike<boolean>;
    try {
      verdict = decide(socket);
    } catch {
      verdict = false; // fail closed
    }
    if (typeof verdict === 'boolean') {
      if (verdict) forward(socket);
      else socket.destroy();
      return;
    }
    const absorb = () => {};
    socket.on('error', absorb);
    verdict.then(
      (admitted) => {
        socket.off('error', absorb);
        if (socket.destroyed) return;
        if (admitted) forward(socket);
        else socket.destroy();
      },
      () => socket.destroy(),
    );
  });
}

/** Connections a filter refused since it was attached (for metrics). */
export interface FilterCounts {
  refused: number;
}

/**
 * Refuses connections from disallowed or blocked addresses on a listening server, before any TLS
 * work: the socket is destroyed, so nothing is sent. Every refusal is counted in the returned object.
 */
export function filterConnections(
  server: Server,
  admit: (ip: string) => boolean,
  onRefused: (ip: string) => void = () => {},
): FilterCounts {
  const counts: FilterCounts = { refused: 0 };
  gateConnections(server, (socket) => {
    const ip = normaliseIp(socket.remoteAddress ?? '');
    if (admit(ip)) return true;
    counts.refused++;
    onRefused(ip);
    return false;
  });
  return counts;
}
