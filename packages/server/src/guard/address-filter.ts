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
 * Refuses connections from disallowed or blocked addresses on a listening server, before any TLS
 * work: the socket is destroyed, so nothing is sent.
 */
export function filterConnections(
  server: Server,
  admit: (ip: string) => boolean,
  onRefused: (ip: string) => void,
): void {
  server.prependListener('connection', (socket: Socket) => {
    const ip = normaliseIp(socket.remoteAddress ?? '');
    if (!admit(ip)) {
      onRefused(ip);
      socket.destroy();
    }
  });
}
