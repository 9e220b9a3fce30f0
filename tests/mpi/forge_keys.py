#!/usr/bin/env python3
"""forge_keys.py - make a forged worker keys file for the wrong-keys test.

    forge_keys.py REAL.keys OUT.keys client|server

client: the job's endpoint and server key (both public knowledge) with a
valid CURVE client keypair that is not the job's - what an outsider who
saw the endpoint could build.  server: the job's client keys but another
server public key (a worker pointed at an impostor's key).

The keypair is X25519 (RFC 7748) in plain Python and Z85 (ZeroMQ RFC 32)
encoded, so the test needs no crypto module.
"""
import json
import os
import sys

P = 2 ** 255 - 19
A24 = 121665


def x25519(k, u):
    k = bytearray(k)
    k[0] &= 248
    k[31] &= 127
    k[31] |= 64
    k = int.from_bytes(k, "little")
    x1, x2, z2, x3, z3, swap = u, 1, 0, u, 1, 0
    for t in reversed(range(255)):
        kt = (k >> t) & 1
        swap ^= kt
        if swap:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = kt
        a, b = (x2 + z2) % P, (x2 - z2) % P
        aa, bb = a * a % P, b * b % P
        e = (aa - bb) % P
        c, d = (x3 + z3) % P, (x3 - z3) % P
        da, cb = d * a % P, c * b % P
        x3 = (da + cb) ** 2 % P
        z3 = x1 * (da - cb) ** 2 % P
        x2 = aa * bb % P
        z2 = e * (aa + A24 * e) % P
    if swap:
        x2, x3, z2, z3 = x3, x2, z3, z2
    return (x2 * pow(z2, P - 2, P) % P).to_bytes(32, "little")


Z85 = ("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
       ".-:+=^!/*?&<>()[]{}@%$#")


def z85(data):
    out = []
    for i in range(0, len(data), 4):
        v = int.from_bytes(data[i:i + 4], "big")
        chunk = []
        for _ in range(5):
            chunk.append(Z85[v % 85])
            v //= 85
        out.extend(reversed(chunk))
    return "".join(out)


def keypair():
    secret = os.urandom(32)
    return z85(x25519(secret, 9)), z85(secret)


def main():
    real, out, what = sys.argv[1], sys.argv[2], sys.argv[3]
    doc = json.load(open(real))
    pub, sec = keypair()
    if what == "client":
        doc["client_public"], doc["client_secret"] = pub, sec
    else:
        doc["server_public"] = pub
    with open(out, "w") as f:
        json.dump(doc, f)
    os.chmod(out, 0o600)


if __name__ == "__main__":
    main()
