// Per-client limit keys (ACC-4, RATE-1): an IPv6 subscriber's whole /64 is one client, so rotating
// addresses inside it buys no new budget; IPv4 (and IPv4-mapped IPv6) addresses stay themselves.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { clientNetworkOf } from '../../src/guard/index.ts';

test('[ACC-4] IPv4 addresses are their own key; IPv4-mapped IPv6 is the IPv4 address', () => {
  assert.equal(clientNetworkOf('203.0.113.7'), '203.0.113.7');
  assert.equal(clientNetworkOf('::ffff:203.0.113.7'), '203.0.113.7');
});

test('[ACC-4] IPv6 addresses are keyed by their /64, whatever their spelling', () => {
  assert.equal(clientNetworkOf('2001:db8:1:2::1'), '2001:db8:1:2::/64');
  assert.equal(clientNetworkOf('2001:0db8:0001:0002:ffff:eeee:dddd:cccc'), '2001:db8:1:2::/64');
  assert.equal(clientNetworkOf('2001:DB8:1:2:0:0:0:9%eth0'), '2001:db8:1:2::/64');
  assert.equal(clientNetworkOf('::1'), '0:0:0:0::/64');
  assert.equal(clientNetworkOf('64:ff9b::192.0.2.33'), '64:ff9b:0:0::/64');
  assert.notEqual(clientNetworkOf('2001:db8:1:2::1'), clientNetworkOf('2001:db8:1:3::1'));
});

test('[ACC-4] property: every address of a /64 maps to the same key, and different /64s never collide', () => {
  const group = fc.integer({ min: 0, max: 0xffff });
  const prefix = fc.tuple(group, group, group, group);
  const iid = fc.tuple(group, group, group, group);
  fc.assert(
    fc.property(prefix, iid, iid, prefix, (p, a, b, q) => {
      const addr = (x: number[], y: number[]) => [...x, ...y].map((g) => g.toString(16)).join(':');
      assert.equal(clientNetworkOf(addr(p, a)), clientNetworkOf(addr(p, b)));
      if (p.some((g, i) => g !== q[i])) assert.notEqual(clientNetworkOf(addr(p, a)), clientNetworkOf(addr(q, a)));
    }),
  );
});
