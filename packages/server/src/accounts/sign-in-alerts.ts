// New-device / new-network sign-in alerts (ACC-6). A person is told when their account is used from
// a device or a network it was not used from before. What is remembered are keyed hashes only: of
// the device cookie, and of the client's network prefix (IPv4 /24, IPv6 /48) — never a raw IP address
// and never a location (PRIV-1). The keys come from the key service's blind-index derivation, so a
// leaked table cannot be matched against guessed addresses without the root key.
import { randomBytes } from 'node:crypto';
import { isIPv4, isIPv6 } from 'node:net';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { constantTimeEqual, newId } from '../lib/random-ids.ts';
import type { AccountsContext } from './accounts-context.ts';
import { DEVICE_COOKIE } from './session-delivery.ts';

/** Browsers cap cookie lifetimes at 400 days (RFC 6265bis section 5.5). */
const DEVICE_COOKIE_MAX_AGE_S = 400 * 86_400;
const DEVICE_ID = /^[A-Za-z0-9_-]{43}$/;

/**
 * The client's device identifier from its `__Host-castellan_device` cookie; a client without one (or
 * with a malformed one) gets a new random one, set on the reply.
 */
export function deviceIdOf(request: FastifyRequest, reply: FastifyReply): string {
  const existing = request.cookies?.[DEVICE_COOKIE];
  if (existing && DEVICE_ID.test(existing)) return existing;
  const id = randomBytes(32).toString('base64url');
  reply.setCookie(DEVICE_COOKIE, id, {
    path: '/',
    secure: true,
    httpOnly: true,
    sameSite: 'strict',
    maxAge: DEVICE_COOKIE_MAX_AGE_S,
  });
  // Later code in the same request (the sign-in alert) sees the same identifier.
  if (request.cookies) request.cookies[DEVICE_COOKIE] = id;
  return id;
}

function expandIpv6(ip: string): number[] {
  const [head = '', tail] = ip.split('::') as [string, string | undefined];
  const parse = (part: string) => (part ? part.split(':').map((g) => Number.parseInt(g, 16)) : []);
  const left = parse(head);
  const right = tail === undefined ? [] : parse(tail);
  return [...left, ...new Array<number>(8 - left.length - right.length).fill(0), ...right];
}

/** The network an address belongs to, as a string: IPv4 /24 or IPv6 /48 (IPv4-mapped as IPv4). */
export function networkPrefix(ip: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
  const v4 = mapped ? mapped[1]! : ip;
  if (isIPv4(v4)) return `${v4.split('.').slice(0, 3).join('.')}.0/24`;
  if (isIPv6(ip)) {
    const groups = expandIpv6(ip.replace(/%.*$/, ''));
    return `${groups
      .slice(0, 3)
      .map((g) => g.toString(16))
      .join(':')}::/48`;
  }
  return 'unknown';
}

/**
 * Remembers a successful full sign-in and alerts the person when the device or the network is new.
 * Called by every way of signing in (password, second factor, OIDC). Delivery problems are logged and
 * never fail the sign-in.
 */
export async function noteSuccessfulSignIn(
  ctx: AccountsContext,
  request: FastifyRequest,
  reply: FastifyReply,
  userId: string,
): Promise<{ newDevice: boolean; newNetwork: boolean }> {
  const deviceHash = ctx.keys.blindIndex('platform', 'sign-in-device', deviceIdOf(request, reply));
  const networkHash = ctx.keys.blindIndex('platform', 'sign-in-network', networkPrefix(request.ip));
  const known = await ctx.db
    .selectFrom('known_sign_ins')
    .select(['id', 'device_hash', 'network_hash'])
    .where('principal_id', '=', userId)
    .execute();
  const now = ctx.now();
  const newDevice = !known.some((k) => constantTimeEqual(k.device_hash, deviceHash));
  const newNetwork = !known.some((k) => constantTimeEqual(k.network_hash, networkHash));
  const pair = known.find(
    (k) => constantTimeEqual(k.device_hash, deviceHash) && constantTimeEqual(k.network_hash, networkHash),
  );
  if (pair) {
    await ctx.db.updateTable('known_sign_ins').set({ last_seen_at: now }).where('id', '=', pair.id).execute();
  } else {
    await ctx.db
      .insertInto('known_sign_ins')
      .values({
        id: newId('ksi'),
        principal_id: userId,
        device_hash: deviceHash,
        network_hash: networkHash,
        first_seen_at: now,
        last_seen_at: now,
      })
      .execute();
  }
  if (newDevice || newNetwork) await sendAlert(ctx, request, userId, newDevice, newNetwork);
  return { newDevice, newNetwork };
}

async function sendAlert(
  ctx: AccountsContext,
  request: FastifyRequest,
  userId: string,
  newDevice: boolean,
  newNetwork: boolean,
): Promise<void> {
  const what = newDevice && newNetwork ? 'a new device and network' : newDevice ? 'a new device' : 'a new network';
  try {
    const contact = await ctx.users.contactOf(userId);
    if (!contact) return;
    await ctx.sender.send({
      channel: contact.kind === 'email' ? 'email' : 'sms',
      to: contact.value,
      subject: 'New sign-in to your Castellan account',
      text:
        `Your Castellan account was signed in to from ${what} at ${new Date(ctx.now()).toISOString()}.\n` +
        'If this was you, there is nothing to do. If not, change your password now and sign out everywhere.',
      purpose: 'sign-in-alert',
    });
    await ctx.audit(request, {
      type: 'user.sign-in-alert',
      target: userId,
      details: { newDevice, newNetwork },
    });
  } catch (error) {
    // Only the error's name: delivery errors can quote the recipient's address.
    ctx.log.warn({ userId, error: (error as Error).name }, 'sign-in alert could not be sent');
  }
}
