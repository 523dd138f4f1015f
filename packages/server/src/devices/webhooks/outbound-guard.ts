// Outbound requests to URLs a tenant chose (webhooks) must not become a way into the platform's own
// network (SSRF, OWASP API7:2023): only https, only public unicast addresses (RFC 6890 special-purpose
// ranges, the cloud metadata address 169.254.169.254 and every IPv4 form hidden in IPv6 are refused),
// the name is resolved once and the connection goes to exactly that address (a second lookup could
// answer differently: DNS rebinding), and redirects are never followed (webhook-sender.ts).
// `webhooks.allowTargets` names CIDR ranges exempt from the address rule (and allowed plain http):
// for tests and development only.
import { lookup } from 'node:dns/promises';
import { BlockList, isIP, isIPv4 } from 'node:net';

export interface ResolvedAddress {
  readonly address: string;
  readonly family: 4 | 6;
}

/** Resolves a host name to all its addresses (A and AAAA). */
export type Resolver = (hostname: string) => Promise<ResolvedAddress[]>;

export const systemResolver: Resolver = async (hostname) =>
  (await lookup(hostname, { all: true, verbatim: true })).map((a) => ({
    address: a.address,
    family: a.family === 6 ? 6 : 4,
  }));

/** Where one request goes: the URL as registered, and the one address it was resolved to. */
export interface OutboundTarget {
  readonly url: URL;
  /** The host name without brackets (an IP literal stays an IP literal). */
  readonly hostname: string;
  readonly address: string;
  readonly family: 4 | 6;
  readonly port: number;
  /** TLS SNI and certificate name: the URL's host name, or null for an IP literal. */
  readonly servername: string | null;
}

export type OutboundRefusal = 'url-invalid' | 'address-refused';

/**
 * `url-invalid`: the URL breaks a stated rule (the message says which). `address-refused`: the host
 * does not resolve, or resolves to an address that is not public; one fixed message for both, so the
 * answer is no oracle for which internal names exist.
 */
export class OutboundRefusedError extends Error {
  readonly reason: OutboundRefusal;
  /** For logs only (never shown to the tenant): which rule refused the address. */
  readonly detail: string;
  /** The name did not resolve (it may later); an address that is not public is never transient. */
  readonly transient: boolean;
  constructor(reason: OutboundRefusal, message: string, detail = message, transient = false) {
    super(message);
    this.name = 'OutboundRefusedError';
    this.reason = reason;
    this.detail = detail;
    this.transient = transient;
  }
}

export const ADDRESS_REFUSED_MESSAGE = 'The URL does not resolve to a public address';
const MAX_URL_LENGTH = 2048;

// ---- address classification ---------------------------------------------------------------------

/** IPv4 ranges that are not public unicast (RFC 6890 and its updates), with what they are. */
const IPV4_REFUSED: ReadonlyArray<readonly [string, number, string]> = [
  ['0.0.0.0', 8, 'unspecified'],
  ['10.0.0.0', 8, 'private'],
  ['100.64.0.0', 10, 'carrier-grade NAT'],
  ['127.0.0.0', 8, 'loopback'],
  // Includes 169.254.169.254, the instance metadata service of every large cloud.
  ['169.254.0.0', 16, 'link-local'],
  ['172.16.0.0', 12, 'private'],
  ['192.0.0.0', 24, 'IETF protocol assignments'],
  ['192.0.2.0', 24, 'documentation'],
  ['192.88.99.0', 24, '6to4 relay anycast'],
  ['192.168.0.0', 16, 'private'],
  ['198.18.0.0', 15, 'benchmarking'],
  ['198.51.100.0', 24, 'documentation'],
  ['203.0.113.0', 24, 'documentation'],
  ['224.0.0.0', 4, 'multicast'],
  // Includes 255.255.255.255 (limited broadcast).
  ['240.0.0.0', 4, 'reserved'],
];

function ipv4Number(ip: string): number {
  return ip.split('.').reduce((n, part) => n * 256 + Number(part), 0);
}

const IPV4_RANGES = IPV4_REFUSED.map(([base, bits, label]) => ({
  base: ipv4Number(base),
  size: 2 ** (32 - bits),
  label,
}));

function classifyIpv4Number(n: number): string | null {
  for (const range of IPV4_RANGES) if (n >= range.base && n < range.base + range.size) return range.label;
  return null;
}

/** The 16 bytes of an IPv6 address (`::` expanded, a dotted IPv4 tail converted); null if malformed. */
export function ipv6Bytes(text: string): Uint8Array | null {
  if (text.includes('%')) return null; // zone IDs name a local interface: never a public address
  const halves = text.split('::');
  if (halves.length > 2) return null;
  const groupsOf = (part: string): string[] => (part === '' ? [] : part.split(':'));
  const head = groupsOf(halves[0]!);
  const tail = halves.length === 2 ? groupsOf(halves[1]!) : [];
  const last = halves.length === 2 ? tail : head;
  const dotted = last.at(-1);
  if (dotted?.includes('.')) {
    if (!isIPv4(dotted)) return null;
    const n = ipv4Number(dotted);
    last.splice(-1, 1, Math.floor(n / 65536).toString(16), (n % 65536).toString(16));
  }
  const missing = 8 - head.length - tail.length;
  if (halves.length === 2 ? missing < 1 : missing !== 0) return null;
  const groups = [...head, ...Array<string>(halves.length === 2 ? missing : 0).fill('0'), ...tail];
  const bytes = new Uint8Array(16);
  for (const [i, group] of groups.entries()) {
    if (!/^[0-9a-fA-F]{1,4}$/.test(group)) return null;
    const value = parseInt(group, 16);
    bytes[i * 2] = value >> 8;
    bytes[i * 2 + 1] = value & 0xff;
  }
  return bytes;
}

const startsWith = (bytes: Uint8Array, prefix: readonly number[], bits = prefix.length * 8): boolean => {
  for (let i = 0; i < Math.ceil(bits / 8); i++) {
    const mask = i < Math.floor(bits / 8) ? 0xff : (0xff << (8 - (bits % 8))) & 0xff;
    if ((bytes[i]! & mask) !== ((prefix[i] ?? 0) & mask)) return false;
  }
  return true;
};

const embeddedIpv4 = (bytes: Uint8Array, at: number): number =>
  ((bytes[at]! << 24) >>> 0) + (bytes[at + 1]! << 16) + (bytes[at + 2]! << 8) + bytes[at + 3]!;

function classifyIpv6(bytes: Uint8Array): string | null {
  const zeros = (from: number, to: number) => bytes.slice(from, to).every((b) => b === 0);
  if (zeros(0, 16)) return 'unspecified';
  if (zeros(0, 15) && bytes[15] === 1) return 'loopback';
  if (zeros(0, 10) && bytes[10] === 0xff && bytes[11] === 0xff) {
    // ::ffff:a.b.c.d reaches the IPv4 address itself: judged as that address.
    const v4 = classifyIpv4Number(embeddedIpv4(bytes, 12));
    return v4 === null ? null : `${v4} (IPv4-mapped)`;
  }
  if (zeros(0, 12)) return 'IPv4-compatible (deprecated)';
  if (zeros(0, 8) && bytes[8] === 0xff && bytes[9] === 0xff && zeros(10, 12)) return 'IPv4-translated';
  if (startsWith(bytes, [0x00, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0])) {
    // NAT64 well-known prefix (RFC 6052): the gateway connects to the embedded IPv4 address.
    const v4 = classifyIpv4Number(embeddedIpv4(bytes, 12));
    return v4 === null ? null : `${v4} (NAT64)`;
  }
  if (startsWith(bytes, [0x00, 0x64, 0xff, 0x9b, 0x00, 0x01], 48)) return 'local-use NAT64';
  if (startsWith(bytes, [0x01, 0x00, 0, 0, 0, 0, 0, 0])) return 'discard-only';
  if (startsWith(bytes, [0x20, 0x01, 0x0d, 0xb8])) return 'documentation';
  if (startsWith(bytes, [0x20, 0x01, 0x00, 0x00])) return 'Teredo';
  if (startsWith(bytes, [0x20, 0x01, 0x00], 23)) return 'IETF protocol assignments';
  if (startsWith(bytes, [0x20, 0x02])) {
    // 6to4 (RFC 3056): the relay forwards to the embedded IPv4 address.
    const v4 = classifyIpv4Number(embeddedIpv4(bytes, 2));
    return v4 === null ? null : `${v4} (6to4)`;
  }
  if (startsWith(bytes, [0x3f, 0xff], 20)) return 'documentation';
  if (startsWith(bytes, [0xfc], 7)) return 'unique local';
  if (startsWith(bytes, [0xfe, 0x80], 10)) return 'link-local';
  if (startsWith(bytes, [0xfe, 0xc0], 10)) return 'site-local (deprecated)';
  if (startsWith(bytes, [0xff], 8)) return 'multicast';
  // Only 2000::/3 is allocated as global unicast (RFC 4291); everything else is reserved.
  if (!startsWith(bytes, [0x20], 3)) return 'reserved';
  return null;
}

/**
 * Why an IP address is not a public unicast address ('loopback', 'private', 'link-local',
 * 'private (IPv4-mapped)'…), or null when it is. Anything that is not an IP address is refused.
 */
export function nonPublicReason(ip: string): string | null {
  const bare = ip.startsWith('[') && ip.endsWith(']') ? ip.slice(1, -1) : ip;
  if (isIPv4(bare)) return classifyIpv4Number(ipv4Number(bare));
  const bytes = ipv6Bytes(bare);
  return bytes ? classifyIpv6(bytes) : 'not an IP address';
}

/** An IPv4-mapped IPv6 address as its IPv4 form, so an IPv4 allowlist entry covers both spellings. */
function canonical(ip: string): { address: string; family: 'ipv4' | 'ipv6' } {
  if (isIPv4(ip)) return { address: ip, family: 'ipv4' };
  const bytes = ipv6Bytes(ip);
  if (bytes && bytes.slice(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff) {
    return { address: Array.from(bytes.slice(12)).join('.'), family: 'ipv4' };
  }
  return { address: ip, family: 'ipv6' };
}

// ---- the guard -----------------------------------------------------------------------------------

export interface OutboundGuardOptions {
  /** CIDR ranges exempt from the public-address rule, where plain http is also allowed (tests, dev). */
  allowTargets: readonly string[];
  resolver?: Resolver;
  /** Longest wait for DNS, ms. */
  resolveTimeoutMs?: number;
}

export class OutboundGuard {
  /** The resolver used for every check (replaceable: split-horizon DNS setups, tests). */
  resolver: Resolver;
  readonly #allow: BlockList | null;
  readonly #resolveTimeoutMs: number;

  constructor(options: OutboundGuardOptions) {
    this.resolver = options.resolver ?? systemResolver;
    this.#resolveTimeoutMs = options.resolveTimeoutMs ?? 5000;
    if (options.allowTargets.length === 0) {
      this.#allow = null;
    } else {
      const list = new BlockList();
      for (const range of options.allowTargets) {
        const [address = '', bits] = range.split('/');
        const family = isIPv4(address) ? 'ipv4' : isIP(address) === 6 ? 'ipv6' : null;
        const max = family === 'ipv4' ? 32 : 128;
        if (!family || (bits !== undefined && !(/^\d{1,3}$/.test(bits) && Number(bits) <= max))) {
          throw new Error(`not an IP address or CIDR range: ${range}`);
        }
        if (bits === undefined) list.addAddress(address, family);
        else list.addSubnet(address, Number(bits), family);
      }
      this.#allow = list;
    }
  }

  /** Whether `ip` is inside webhooks.allowTargets. */
  allowListed(ip: string): boolean {
    if (!this.#allow) return false;
    const { address, family } = canonical(ip);
    return this.#allow.check(address, family);
  }

  /** Checks the URL's form (no network): https (http only with allowTargets), no credentials, no fragment. */
  parseUrl(raw: string): URL {
    if (raw.length > MAX_URL_LENGTH) {
      throw new OutboundRefusedError('url-invalid', `The URL must be at most ${MAX_URL_LENGTH} characters`);
    }
    let url: URL;
    try {
      url = new URL(raw);
    } catch {
      throw new OutboundRefusedError('url-invalid', 'The URL is not a valid absolute URL');
    }
    if (url.protocol !== 'https:' && !(url.protocol === 'http:' && this.#allow)) {
      throw new OutboundRefusedError('url-invalid', 'The URL must use https://');
    }
    if (url.username || url.password) {
      throw new OutboundRefusedError('url-invalid', 'The URL must not carry a user name or password');
    }
    if (url.hash) throw new OutboundRefusedError('url-invalid', 'The URL must not have a fragment');
    if (!url.hostname) throw new OutboundRefusedError('url-invalid', 'The URL must name a host');
    return url;
  }

  /**
   * Resolves the URL's host once and checks every address it resolves to: one non-public address
   * refuses the URL (an attacker's name may answer with a public and an internal address). Plain
   * http is accepted only when every address is in allowTargets. The target carries the address to
   * connect to, so the request never looks the name up again.
   */
  async resolve(raw: string | URL): Promise<OutboundTarget> {
    const url = typeof raw === 'string' ? this.parseUrl(raw) : this.parseUrl(raw.href);
    const hostname = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
    let addresses: ResolvedAddress[];
    if (isIP(hostname)) {
      addresses = [{ address: hostname, family: isIPv4(hostname) ? 4 : 6 }];
    } else {
      let timer: NodeJS.Timeout | undefined;
      try {
        addresses = await Promise.race([
          this.resolver(hostname),
          new Promise<never>((_, reject) => {
            timer = setTimeout(() => reject(new Error('DNS timeout')), this.#resolveTimeoutMs);
          }),
        ]);
      } catch (error) {
        throw new OutboundRefusedError(
          'address-refused',
          ADDRESS_REFUSED_MESSAGE,
          `does not resolve (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`,
          true,
        );
      } finally {
        clearTimeout(timer);
      }
    }
    if (addresses.length === 0) {
      throw new OutboundRefusedError('address-refused', ADDRESS_REFUSED_MESSAGE, 'resolves to no address', true);
    }
    for (const { address } of addresses) {
      if (this.allowListed(address)) continue;
      const reason = nonPublicReason(address);
      if (reason !== null) {
        throw new OutboundRefusedError('address-refused', ADDRESS_REFUSED_MESSAGE, `resolves to a ${reason} address`);
      }
      if (url.protocol === 'http:') {
        throw new OutboundRefusedError('url-invalid', 'The URL must use https://', 'http to a public address');
      }
    }
    const chosen = addresses[0]!;
    return {
      url,
      hostname,
      address: chosen.address,
      family: chosen.family,
      port: url.port ? Number(url.port) : url.protocol === 'https:' ? 443 : 80,
      servername: isIP(hostname) ? null : hostname,
    };
  }
}
