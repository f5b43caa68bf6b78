"""Diffie-Hellman groups for IKE by canonical name (docs/internals.md).

MODP groups of RFC 2409 6 / RFC 3526 computed with Python's modular `pow` (cryptography's
finite-field DH is deprecated and announced for removal), ECP groups with the x||y public value and x-only shared
secret of RFC 5903, Curve25519 per RFC 8031. Every peer public value is validated before use
(RFC 7296 5.12 / RFC 6989): a bad one raises `InvalidPublicValue`, never another exception.
"""

from __future__ import annotations

import secrets
from functools import lru_cache

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519

# IANA "Transform Type 4" numbers (RFC 7296 3.3.2, RFC 5903, RFC 8031).
GROUP_IDS: dict[str, int] = {
    "modp768": 1, "modp1024": 2, "modp1536": 5, "modp2048": 14, "modp3072": 15,
    "modp4096": 16, "modp6144": 17, "modp8192": 18,
    "ecp256": 19, "ecp384": 20, "ecp521": 21, "x25519": 31,
}
GROUP_NAMES: dict[int, str] = {v: k for k, v in GROUP_IDS.items()}

# The Oakley primes are p = 2^n - 2^(n-64) - 1 + 2^64 * (floor(2^(n-130) * pi) + k)
# (RFC 2409 6.1-6.2, RFC 3526 2-7); generator 2. k per size:
_MODP_K = {768: 149686, 1024: 129093, 1536: 741804, 2048: 124476, 3072: 1690314,
           4096: 240904, 6144: 929484, 8192: 4743158}

# Private exponent length in bits: the upper end of the strength estimates of RFC 3526 8
# (at least twice the group's security strength, as NIST SP 800-56A asks of safe-prime
# groups); a full-length exponent would cost 10-100x more for no gain in strength.
_MODP_EXPONENT_BITS = {768: 256, 1024: 256, 1536: 256, 2048: 320, 3072: 420, 4096: 480,
                       6144: 540, 8192: 620}

_CURVES = {"ecp256": (ec.SECP256R1, 32), "ecp384": (ec.SECP384R1, 48), "ecp521": (ec.SECP521R1, 66)}


class InvalidPublicValue(Exception):
    """The peer's KE data is not a valid public value of the group."""


class UnknownGroup(Exception):
    pass


def _pi_floor(bits: int) -> int:
    """floor(pi * 2^bits) by Machin's formula in fixed point (64 guard bits)."""
    g = bits + 64
    one = 1 << g

    def atan_inv(x: int) -> int:
        total = term = one // x
        x2, n, sign = x * x, 1, -1
        while term:
            term //= x2
            n += 2
            total += sign * (term // n)
            sign = -sign
        return total

    return (16 * atan_inv(5) - 4 * atan_inv(239)) >> 64


@lru_cache(maxsize=None)
def modp_prime(bits: int) -> int:
    k = _MODP_K[bits]
    return 2**bits - 2 ** (bits - 64) - 1 + 2**64 * (_pi_floor(bits - 130) + k)


def public_value_length(group: str) -> int:
    """Length of the KE data for the group (RFC 7296 3.4, RFC 5903 7, RFC 8031 2)."""
    if group.startswith("modp"):
        return int(group[4:]) // 8
    if group in _CURVES:
        return 2 * _CURVES[group][1]
    if group == "x25519":
        return 32
    raise UnknownGroup(group)


class KeyExchange:
    """One ephemeral key pair: `public` is the KE payload data; `shared(peer)` the DH secret."""

    def __init__(self, group: str, private: bytes | None = None):
        """`private` fixes the private value (test vectors only); normally fresh and random."""
        if group not in GROUP_IDS:
            raise UnknownGroup(group)
        self.group = group
        self.group_id = GROUP_IDS[group]
        if group.startswith("modp"):
            bits = int(group[4:])
            self._bits = bits
            if private is None:
                # x in [2^(n-1), 2^n): never 0 or 1, always the full strength of n bits
                n = _MODP_EXPONENT_BITS[bits]
                x = secrets.randbits(n - 1) | (1 << (n - 1))
            else:
                x = int.from_bytes(private, "big")
            self._priv = x
            self.public = pow(2, x, modp_prime(bits)).to_bytes(bits // 8, "big")
        elif group in _CURVES:
            curve, size = _CURVES[group]
            if private is None:
                self._priv = ec.generate_private_key(curve())
            else:
                self._priv = ec.derive_private_key(int.from_bytes(private, "big"), curve())
            n = self._priv.public_key().public_numbers()
            self.public = n.x.to_bytes(size, "big") + n.y.to_bytes(size, "big")
        else:
            if private is None:
                self._priv = x25519.X25519PrivateKey.generate()
            else:
                self._priv = x25519.X25519PrivateKey.from_private_bytes(private)
            self.public = self._priv.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def __repr__(self) -> str:
        return f"KeyExchange({self.group})"

    def shared(self, peer: bytes) -> bytes:
        """The shared secret g^ir as IKE wants it; raises InvalidPublicValue."""
        if len(peer) != public_value_length(self.group):
            raise InvalidPublicValue(f"{self.group}: public value of {len(peer)} bytes")
        try:
            if self.group.startswith("modp"):
                p = modp_prime(self._bits)
                y = int.from_bytes(peer, "big")
                # RFC 6989 2.1: 1 < y < p-1 rules out the small-subgroup values 0, 1, p-1.
                if not 1 < y < p - 1:
                    raise InvalidPublicValue(f"{self.group}: public value out of range")
                # RFC 7296 2.14: g^ir as an integer of the prime's length, zero-padded
                return pow(y, self._priv, p).to_bytes(self._bits // 8, "big")
            if self.group in _CURVES:
                curve, size = _CURVES[self.group]
                # RFC 6989 2.3: the point must be on the curve (checked by from_encoded_point).
                pub = ec.EllipticCurvePublicKey.from_encoded_point(curve(), b"\x04" + peer)
                return self._priv.exchange(ec.ECDH(), pub).rjust(size, b"\0")
            pub = x25519.X25519PublicKey.from_public_bytes(peer)
            secret = self._priv.exchange(pub)
            # RFC 8031 2.3 / RFC 7748 6.1: an all-zero result means a low-order point.
            if secret == bytes(32):
                raise InvalidPublicValue("x25519: low-order point")
            return secret
        except InvalidPublicValue:
            raise
        except (ValueError, TypeError, OverflowError) as e:
            raise InvalidPublicValue(f"{self.group}: {e}") from None
