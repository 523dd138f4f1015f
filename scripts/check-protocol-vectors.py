#!/usr/bin/env python3
"""Independent checker of Castellan's protocol vectors (issue 8: "protocol spec checked independently").

Written from docs/protocol.md alone, in Python with the standard library plus python3-cryptography
(Debian: apt-get install python3-cryptography), it reproduces:
  - every intl-suite vector of packages/protocol/vectors/secure-channel.json (P-256 ECDH, HKDF-SHA-256,
    HMAC-SHA-256, AES-128-GCM frames, key ratchet);
  - the SM3-based values of the sm suite (psk, transcript hash, session keys, ratcheted keys) when
    hashlib offers SM3; SM2 and SM4-GCM are not in Debian's Python and are checked by the TypeScript tests;
  - every vector of packages/protocol/vectors/device-request-signing.json.
Exit status 0 when everything matches, 1 with the failing names otherwise.
"""

import base64
import hashlib
import hmac
import json
import os
import struct
import sys
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

ROOT = Path(__file__).resolve().parent.parent
# CASTELLAN_VECTORS_DIR lets the tests point the checker at a tampered copy to prove it can fail.
VECTORS = Path(os.environ.get("CASTELLAN_VECTORS_DIR") or ROOT / "packages" / "protocol" / "vectors")

failures = []
checks = 0


def check(name, actual, expected):
    global checks
    checks += 1
    if actual != expected:
        failures.append(f"{name}: expected {expected!r}, got {actual!r}")


def hkdf(hash_name, ikm, salt, info, length):
    """RFC 5869 HKDF, extract then expand."""
    size = hashlib.new(hash_name).digest_size
    prk = hmac.new(salt if salt else b"\0" * size, ikm, hash_name).digest()
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hash_name).digest()
        okm += block
        counter += 1
    return okm[:length]


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# --- secure channel (docs/protocol.md, "Secure channel") ---

SUITE_IDS = {"intl": 0x01, "sm": 0x02}
HASHES = {"intl": "sha256", "sm": "sm3"}


def p256_private(hex_scalar):
    return ec.derive_private_key(int(hex_scalar, 16), ec.SECP256R1())


def p256_public_bytes(private_key):
    return private_key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def p256_ecdh(private_key, public_bytes):
    peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), public_bytes)
    return private_key.exchange(ec.ECDH(), peer)


def handshake_body(msg_type, suite, device_id, ts, public_key):
    return bytes([1, msg_type, SUITE_IDS[suite]]) + bytes.fromhex(device_id) + struct.pack(">Q", ts) + public_key


def session_keys(suite, psk, z1, z2, hello, reply_body):
    h = HASHES[suite]
    th = hashlib.new(h, hello + reply_body).digest()
    okm = hkdf(h, z1 + z2, psk, b"castellan secure channel v1" + th, 64)
    return th, okm[0:16], okm[16:32], okm[32:64]


def ratchet(suite, key, epochs):
    for _ in range(epochs):
        key = hkdf(HASHES[suite], key, b"", b"castellan secure channel ratchet v1", 16)
    return key


def check_secure_channel_intl(v):
    suite = "intl"
    secret = v["secret_utf8"].encode("utf-8")
    psk = hkdf("sha256", secret, b"castellan", b"castellan secure channel psk v1", 32)
    check("intl psk", psk.hex(), v["psk"])

    device_eph = p256_private(v["deviceEphemeralPrivate"])
    platform_static = p256_private(v["platformStaticPrivate"])
    platform_eph = p256_private(v["platformEphemeralPrivate"])
    for name, key in (
        ("deviceEphemeralPublic", device_eph),
        ("platformStaticPublic", platform_static),
        ("platformEphemeralPublic", platform_eph),
    ):
        check(f"intl {name}", p256_public_bytes(key).hex(), v[name])

    hello_body = handshake_body(0x01, suite, v["deviceId"], v["helloTs"], p256_public_bytes(device_eph))
    hello = hello_body + hmac.new(psk, hello_body, "sha256").digest()
    check("intl hello", hello.hex(), v["hello"])

    # Both sides' views of the shared secrets agree.
    z1 = p256_ecdh(device_eph, p256_public_bytes(platform_static))
    z2 = p256_ecdh(device_eph, p256_public_bytes(platform_eph))
    check("intl z1 (device view)", z1.hex(), v["z1"])
    check("intl z2 (device view)", z2.hex(), v["z2"])
    check("intl z1 (platform view)", p256_ecdh(platform_static, p256_public_bytes(device_eph)).hex(), v["z1"])
    check("intl z2 (platform view)", p256_ecdh(platform_eph, p256_public_bytes(device_eph)).hex(), v["z2"])

    reply_body = handshake_body(0x02, suite, v["deviceId"], v["replyTs"], p256_public_bytes(platform_eph))
    th, d2p, p2d, confirm_key = session_keys(suite, psk, z1, z2, hello, reply_body)
    check("intl transcriptHash", th.hex(), v["transcriptHash"])
    check("intl deviceToPlatformKey", d2p.hex(), v["deviceToPlatformKey"])
    check("intl platformToDeviceKey", p2d.hex(), v["platformToDeviceKey"])
    check("intl confirmKey", confirm_key.hex(), v["confirmKey"])
    reply = reply_body + hmac.new(confirm_key, th, "sha256").digest()
    check("intl reply", reply.hex(), v["reply"])

    for i, f in enumerate(v["frames"]):
        device_to_platform = f["direction"] == "device-to-platform"
        key = ratchet(suite, d2p if device_to_platform else p2d, f["epoch"])
        check(f"intl frame {i} key", key.hex(), f["key"])
        header = (
            bytes([1, 0x03 if device_to_platform else 0x04, SUITE_IDS[suite]])
            + bytes.fromhex(v["deviceId"])
            + struct.pack(">IQQ", f["epoch"], f["seq"], f["ts"])
        )
        nonce = struct.pack(">IQ", f["epoch"], f["seq"])
        sealed = AESGCM(key).encrypt(nonce, f["plaintext_utf8"].encode("utf-8"), header)
        check(f"intl frame {i}", (header + sealed).hex(), f["frame"])
        frame = bytes.fromhex(f["frame"])
        try:
            opened = AESGCM(key).decrypt(nonce, frame[35:], frame[:35]).decode("utf-8")
        except InvalidTag:
            opened = None
        check(f"intl frame {i} opens", opened, f["plaintext_utf8"])


def check_secure_channel_sm3(v):
    """The sm suite's SM3 values, from the vector's own ECDH outputs (no SM2 or SM4 here)."""
    suite = "sm"
    psk = hkdf("sm3", v["secret_utf8"].encode("utf-8"), b"castellan", b"castellan secure channel psk v1", 32)
    check("sm psk (HKDF-SM3)", psk.hex(), v["psk"])
    hello = bytes.fromhex(v["hello"])
    check("sm hello MAC (HMAC-SM3)", hmac.new(psk, hello[:88], "sm3").digest().hex(), hello[88:].hex())
    reply = bytes.fromhex(v["reply"])
    th, d2p, p2d, confirm_key = session_keys(
        suite, psk, bytes.fromhex(v["z1"]), bytes.fromhex(v["z2"]), hello, reply[:88]
    )
    check("sm transcriptHash (SM3)", th.hex(), v["transcriptHash"])
    check("sm deviceToPlatformKey", d2p.hex(), v["deviceToPlatformKey"])
    check("sm platformToDeviceKey", p2d.hex(), v["platformToDeviceKey"])
    check("sm reply confirmation", hmac.new(confirm_key, th, "sm3").digest().hex(), reply[88:].hex())
    for i, f in enumerate(v["frames"]):
        key = ratchet(suite, d2p if f["direction"] == "device-to-platform" else p2d, f["epoch"])
        check(f"sm frame {i} key", key.hex(), f["key"])


# --- device HTTPS authentication (docs/protocol.md, "Device HTTPS authentication") ---

UNRESERVED = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
PATH_RESERVED = set(b"!$&'()*+,;=:@/")


def percent_decode(component):
    raw, out, i = component.encode("utf-8"), [], 0
    while i < len(raw):
        if raw[i] == 0x25:
            out.append(int(raw[i + 1 : i + 3].decode("ascii"), 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return out


def encode_byte(b):
    return f"%{b:02X}"


def canonical_path(path):
    raw, out, i = path.encode("utf-8"), "", 0
    while i < len(raw):
        if raw[i] == 0x25:
            b = int(raw[i + 1 : i + 3].decode("ascii"), 16)
            out += chr(b) if b in UNRESERVED else encode_byte(b)
            i += 3
        else:
            b = raw[i]
            out += chr(b) if b in UNRESERVED or b in PATH_RESERVED else encode_byte(b)
            i += 1
    return out


def canonical_query(query):
    def enc(s):
        return "".join(chr(b) if b in UNRESERVED else encode_byte(b) for b in percent_decode(s))

    pairs = []
    for part in query.split("&"):
        if part == "":
            continue
        name, _, value = part.partition("=")
        pairs.append((enc(name), enc(value)))
    pairs.sort(key=lambda p: p[0].encode("ascii"))  # stable: repeated names keep their order
    return "&".join(f"{n}={v}" for n, v in pairs)


def check_device_request_signing(v):
    key = hkdf("sha256", v["secret"].encode("utf-8"), b"castellan", b"castellan device request v1", 32)
    check("device request key", key.hex(), v["key"])
    body_sha = hashlib.sha256(v["body"].encode("utf-8")).hexdigest()
    check("device content sha256", body_sha, v["contentSha256"])
    path, _, query = v["path"].partition("?")
    canonical = "\n".join(
        [
            "CAS-DEVICE-HMAC-SHA256",
            v["method"].upper(),
            canonical_path(path),
            canonical_query(query),
            v["host"].lower(),
            str(v["ts"]),
            v["nonce"],
            v["deviceId"],
            body_sha,
        ]
    )
    check("device canonical string", canonical, v["canonical"])

    def mac(k, message):
        return b64url(hmac.new(k, message.encode("utf-8"), "sha256").digest())

    check("device request sig", mac(key, canonical), v["sig"])
    check(
        "device serverProof",
        mac(key, "|".join(["server", v["deviceId"], v["clientNonce"], v["challenge"]])),
        v["serverProof"],
    )
    check(
        "device response",
        mac(key, "|".join(["device", v["deviceId"], v["challenge"], v["clientNonce"]])),
        v["response"],
    )
    product_secret = v["productSecret"].encode("utf-8")
    product_key = hkdf("sha256", product_secret, b"castellan", b"castellan product registration v1", 32)
    check(
        "registration proof",
        mac(product_key, "|".join(["register", v["productId"], v["hardwareId"], str(v["ts"]), v["nonce"]])),
        v["proof"],
    )
    wrap_key = hkdf("sha256", product_secret, v["nonce"].encode("utf-8"), b"castellan device secret wrap v1", 32)
    aad = "|".join(["castellan-device-secret", v["productId"], v["hardwareId"], v["deviceId"]]).encode("utf-8")
    iv = bytes.fromhex(v["sealIv"])
    sealed = iv + AESGCM(wrap_key).encrypt(iv, v["secret"].encode("utf-8"), aad)
    check("sealed device secret", b64url(sealed), v["sealed"])


def main():
    channel = json.loads((VECTORS / "secure-channel.json").read_text("utf-8"))
    check_secure_channel_intl(channel["intl"])
    sm3 = "sm3" in hashlib.algorithms_available
    if sm3:
        check_secure_channel_sm3(channel["sm"])
    check_device_request_signing(json.loads((VECTORS / "device-request-signing.json").read_text("utf-8")))
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} of {checks} checks failed", file=sys.stderr)
        return 1
    note = "" if sm3 else " (hashlib has no SM3 here: sm-suite SM3 values not checked)"
    print(f"ok: {checks} checks reproduced{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
