"""IKE pseudo-random functions by canonical name: HMAC PRFs (RFC 2104, RFC 4868) and the
prf+ key expansion of RFC 7296 2.13."""

from __future__ import annotations

import hashlib
import hmac

_HASHES = {
    "prfmd5": "md5",
    "prfsha1": "sha1",
    "prfsha256": "sha256",
    "prfsha384": "sha384",
    "prfsha512": "sha512",
}

# IANA "Transform Type 2" numbers (RFC 7296 3.3.2, RFC 4868).
PRF_IDS = {"prfmd5": 1, "prfsha1": 2, "prfsha256": 5, "prfsha384": 6, "prfsha512": 7}
PRF_NAMES = {v: k for k, v in PRF_IDS.items()}


class Prf:
    """An HMAC PRF; `key_size` is the preferred key length (= output length, RFC 7296 2.14)."""

    def __init__(self, name: str):
        if name not in _HASHES:
            raise ValueError(f"unknown prf {name!r}")
        self.name = name
        self.hash = _HASHES[name]
        self.size = hashlib.new(self.hash).digest_size
        self.key_size = self.size

    def __repr__(self) -> str:
        return f"Prf({self.name})"

    def __call__(self, key: bytes, data: bytes) -> bytes:
        return hmac.new(key, data, self.hash).digest()

    def plus(self, key: bytes, seed: bytes, length: int) -> bytes:
        """prf+ (RFC 7296 2.13): T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n)."""
        if length > 255 * self.size:
            raise ValueError("prf+ output limited to 255 blocks")
        out = bytearray()
        t = b""
        n = 1
        while len(out) < length:
            t = self(key, t + seed + bytes([n]))
            out += t
            n += 1
        return bytes(out[:length])


def hash_name_of(prf_name: str) -> str:
    return _HASHES[prf_name]
