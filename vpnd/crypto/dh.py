"""Diffie-Hellman groups for IKE by canonical name (docs/internals.md).

MODP groups of RFC 2409 6 / RFC 3526 through cryptography's (OpenSSL's) finite-field DH:
constant-time and about 10x faster than Python's `pow` (bench/dh). cryptography 50 deprecated
that API (a warning on each attribute access of its dh module) and announced its removal: the
classes are taken once at import with that warning silenced, and where they are gone the
groups fall back to Python's `pow`. ECP groups with the x||y public value and x-only shared
secret of RFC 5903, Curve25519 per RFC 8031. Every peer public value is validated before use
(RFC 7296 5.12 / RFC 6989): a bad one raises `InvalidPublicValue`, never another exception.
"""

from __future__ import annotations

import secrets
import warnings
from functools import lru_cache

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.utils import CryptographyDeprecationWarning


def _load_ffdh():
    """(DHParameterNumbers, DHPublicNumbers, DHPrivateNumbers), or None without FFDH."""
    try:
        with warnings.catch_warnings():
            # deprecated in cryptography 50: the warning is raised by the attribute access
            # below only, never by the objects' methods, so none reaches a log later
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            from cryptography.hazmat.primitives.asymmetric import dh as cdh

            return cdh.DHParameterNumbers, cdh.DHPublicNumbers, cdh.DHPrivateNumbers
    except (ImportError, AttributeError):
        return None


_FFDH = _load_ffdh()
# "openssl" or "python": which code computes the MODP groups (status, tests, bench/dh)
MODP_BACKEND = "openssl" if _FFDH is not None else "python"

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

# Private exponent length in bits of the Python fallback: the upper end of the strength estimates of RFC 3526 8
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


@lru_cache(maxsize=None)
def _modp_parameters(bits: int):
    pn = _FFDH[0](modp_prime(bits), 2)
    return pn, pn.parameters()


class _ModpOpenSSL:
    """A MODP key pair in OpenSSL. It picks the private exponent: for the RFC 3526 groups it
    knows by their prime, 2x the strength as RFC 7919 / SP 800-56A ask (225 bits for 2048,
    275 for 3072, ...), within RFC 3526 8's estimates; full length for RFC 2409's 768/1024."""

    def __init__(self, bits: int, private: bytes | None):
        pn, params = _modp_parameters(bits)
        if private is None:
            self._key = params.generate_private_key()
        else:  # test vectors only: y computed here, never for a secret exponent
            x = int.from_bytes(private, "big")
            self._key = _FFDH[2](x, _FFDH[1](pow(2, x, pn.p), pn)).private_key()
        self._pn = pn
        self.y = self._key.public_key().public_numbers().y

    def exchange(self, y: int) -> bytes:
        return self._key.exchange(_FFDH[1](y, self._pn).public_key())


class _ModpPython:
    """The fallback where cryptography has no FFDH (and bench/dh's baseline): Python's
    `pow`, neither constant-time nor fast."""

    def __init__(self, bits: int, private: bytes | None):
        if private is None:
            # x in [2^(n-1), 2^n): never 0 or 1, always the full strength of n bits
            n = _MODP_EXPONENT_BITS[bits]
            self._x = secrets.randbits(n - 1) | (1 << (n - 1))
        else:
            self._x = int.from_bytes(private, "big")
        self._p = modp_prime(bits)
        self.y = pow(2, self._x, self._p)

    def exchange(self, y: int) -> bytes:
        return pow(y, self._x, self._p).to_bytes((self._p.bit_length() + 7) // 8, "big")


# OpenSSL knows the RFC 3526 groups by their primes (1536 and up). RFC 2409's 768 and 1024
# are unnamed to it, and it re-proves their primes on every peer public value (100-200 ms of
# CPU per KE payload: a lever for anyone who can send one), so those two legacy groups
# (RFC 8247: MUST NOT / SHOULD NOT) stay with pow.
_OPENSSL_MODP = frozenset({1536, 2048, 3072, 4096, 6144, 8192}) if _FFDH is not None else frozenset()


def _modp_impl(bits: int):
    return _ModpOpenSSL if bits in _OPENSSL_MODP else _ModpPython


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

    def __init__(self, group: str, private: bytes | None = None, *, _modp=None):
        """`private` fixes the private value (test vectors only); normally fresh and random.
        `_modp` picks the MODP implementation (bench/dh compares them)."""
        if group not in GROUP_IDS:
            raise UnknownGroup(group)
        self.group = group
        self.group_id = GROUP_IDS[group]
        if group.startswith("modp"):
            bits = int(group[4:])
            self._bits = bits
            self._priv = (_modp or _modp_impl(bits))(bits, private)
            self.public = self._priv.y.to_bytes(bits // 8, "big")
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
                # RFC 6989 2.2: the RFC 2409/3526 primes are safe primes, so after this
                # check no small subgroup is left and no y^q = 1 test is needed (that is
                # for RFC 5114's groups, which vpnd does not offer).
                # RFC 7296 2.14 / RFC 2409 5: g^ir zero-padded to the prime's length
                return self._priv.exchange(y).rjust(self._bits // 8, b"\0")
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
