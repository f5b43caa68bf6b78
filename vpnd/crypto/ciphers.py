"""Symmetric transforms shared by ESP/AH and the IKE SK payload.

Names are the canonical ones of docs/internals.md.  Each object is built once per SA
(key schedule and, for AEADs, the `cryptography` context are made here, not per packet).

Encryption objects (`make_cipher(name, key)`):
    name, key_size (keying material incl. AEAD salt), iv_size, block_size,
    icv_size (AEAD tag; 0 for CBC/null), aead (bool),
    encrypt(iv, data, aad=b"") -> bytes   # AEAD: ciphertext || tag
    decrypt(iv, data, aad=b"") -> bytes   # raises CipherError on a bad tag / bad length
CBC ciphers take data that the caller has already padded to `block_size` (ESP and IKE
pad differently, RFC 4303 2.4 vs RFC 7296 3.14); `aad` is ignored by non-AEAD ciphers.

Integrity objects (`make_integrity(name, key)`):
    name, key_size, icv_size (truncated length), sign(data) -> icv, verify(data, icv) -> bool
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305


class CipherError(Exception):
    """Authentication failure or malformed ciphertext; carries no key material."""


# name -> (key bytes incl. salt, salt bytes) for AEADs; RFC 4106 8.1, RFC 7634 2.
_AEAD = {
    "aes128gcm16": (20, "gcm"),
    "aes192gcm16": (28, "gcm"),
    "aes256gcm16": (36, "gcm"),
    "chacha20poly1305": (36, "chacha"),
}
# name -> (key bytes, block bytes)
_CBC = {
    "aes128": (16, 16),
    "aes192": (24, 16),
    "aes256": (32, 16),
    "3des": (24, 8),
    "des": (8, 8),
}
# name -> (hashlib name, key bytes, truncated ICV bytes): RFC 2403, 2404, 4868.
_INTEG = {
    "md5": ("md5", 16, 12),
    "sha1": ("sha1", 20, 12),
    "sha256": ("sha256", 32, 16),
    "sha384": ("sha384", 48, 24),
    "sha512": ("sha512", 64, 32),
}

ENCRYPTION_NAMES = tuple(_AEAD) + tuple(_CBC) + ("null",)
INTEGRITY_NAMES = tuple(_INTEG)


def is_aead(name: str) -> bool:
    return name in _AEAD


def cipher_key_size(name: str) -> int:
    """Keying material length for an encryption name (AEAD salt included)."""
    if name in _AEAD:
        return _AEAD[name][0]
    if name in _CBC:
        return _CBC[name][0]
    if name == "null":
        return 0
    raise ValueError(f"unknown encryption algorithm {name!r}")


def integrity_key_size(name: str) -> int:
    try:
        return _INTEG[name][1]
    except KeyError:
        raise ValueError(f"unknown integrity algorithm {name!r}") from None


def integrity_icv_size(name: str) -> int:
    try:
        return _INTEG[name][2]
    except KeyError:
        raise ValueError(f"unknown integrity algorithm {name!r}") from None


def _check_key(name: str, key: bytes, size: int) -> bytes:
    key = bytes(key)
    if len(key) != size:
        raise ValueError(f"{name}: key must be {size} bytes, got {len(key)}")
    return key


class AeadCipher:
    """AES-GCM-16 (RFC 4106) / ChaCha20-Poly1305 (RFC 7634): nonce = salt(4) || IV(8)."""

    __slots__ = ("name", "key_size", "iv_size", "block_size", "icv_size", "aead",
                 "salt", "_ctx")

    def __init__(self, name: str, key: bytes):
        size, kind = _AEAD[name]
        key = _check_key(name, key, size)
        self.name = name
        self.key_size = size
        self.iv_size = 8
        # GCM and ChaCha are stream-like: ESP still aligns to 4 bytes (RFC 4303 2.4).
        self.block_size = 4
        self.icv_size = 16
        self.aead = True
        self.salt = key[-4:]
        self._ctx = AESGCM(key[:-4]) if kind == "gcm" else ChaCha20Poly1305(key[:-4])

    def encrypt(self, iv: bytes, data: bytes, aad: bytes = b"") -> bytes:
        return self._ctx.encrypt(self.salt + iv, data, aad or None)

    def decrypt(self, iv: bytes, data: bytes, aad: bytes = b"") -> bytes:
        try:
            return self._ctx.decrypt(self.salt + iv, data, aad or None)
        except InvalidTag:
            raise CipherError("authentication failed") from None
        except ValueError:
            raise CipherError("malformed ciphertext") from None

    def __repr__(self) -> str:
        return f"<AeadCipher {self.name}>"


class CbcCipher:
    """AES-CBC (RFC 3602), 3DES-CBC (RFC 2451), DES-CBC (RFC 2405); IV = one block.

    Building a `cryptography` CBC context costs several microseconds, more than
    encrypting a packet, so one encryptor and one decryptor live as long as the SA and
    each message is chained onto them: the context XORs the first block with its last
    ciphertext block (`_enc_prev`), so feeding P1 ^ IV ^ _enc_prev yields exactly
    E(P1 ^ IV), the standard CBC of this message under its own IV; decryption undoes the
    same on the first output block.  The IV itself stays a fresh random value per message
    chosen by the caller (RFC 3602 section 3: unpredictable IVs)."""

    __slots__ = ("name", "key_size", "iv_size", "block_size", "icv_size", "aead", "_algo",
                 "_enc", "_dec", "_enc_prev", "_dec_prev")

    def __init__(self, name: str, key: bytes):
        size, block = _CBC[name]
        key = _check_key(name, key, size)
        self.name = name
        self.key_size = size
        self.iv_size = block
        self.block_size = block
        self.icv_size = 0
        self.aead = False
        if name.startswith("aes"):
            self._algo = algorithms.AES(key)
        else:
            # single DES is 3DES with K1 = K2 = K3 (EDE collapses to one DES pass)
            self._algo = TripleDES(key * 3 if len(key) == 8 else key)
        zero = bytes(block)
        self._enc = Cipher(self._algo, modes.CBC(zero)).encryptor()
        self._dec = Cipher(self._algo, modes.CBC(zero)).decryptor()
        self._enc_prev = 0
        self._dec_prev = 0

    def encrypt(self, iv, data, aad: bytes = b"") -> bytes:
        bs = self.block_size
        n = len(data)
        if n % bs or len(iv) != bs:
            raise CipherError("plaintext not a multiple of the block size")
        if not n:
            return b""
        first = (int.from_bytes(data[:bs], "big") ^ int.from_bytes(iv, "big")
                 ^ self._enc_prev).to_bytes(bs, "big")
        out = self._enc.update(first + data[bs:] if n > bs else first)
        self._enc_prev = int.from_bytes(out[-bs:], "big")
        return out

    def decrypt(self, iv, data, aad: bytes = b"") -> bytes:
        bs = self.block_size
        n = len(data)
        if n % bs or len(iv) != bs:
            raise CipherError("ciphertext not a multiple of the block size")
        if not n:
            return b""
        out = self._dec.update(data)
        first = (int.from_bytes(out[:bs], "big") ^ self._dec_prev
                 ^ int.from_bytes(iv, "big")).to_bytes(bs, "big")
        self._dec_prev = int.from_bytes(data[n - bs:], "big")
        return first + out[bs:] if n > bs else first

    def __repr__(self) -> str:
        return f"<CbcCipher {self.name}>"


class NullCipher:
    """ESP NULL encryption (RFC 2410): block size 1, no IV (ESP aligns to 4 anyway)."""

    __slots__ = ("name", "key_size", "iv_size", "block_size", "icv_size", "aead")

    def __init__(self, name: str = "null", key: bytes = b""):
        _check_key("null", key, 0)
        self.name = "null"
        self.key_size = 0
        self.iv_size = 0
        self.block_size = 1
        self.icv_size = 0
        self.aead = False

    def encrypt(self, iv: bytes, data: bytes, aad: bytes = b"") -> bytes:
        return bytes(data)

    def decrypt(self, iv: bytes, data: bytes, aad: bytes = b"") -> bytes:
        return bytes(data)

    def __repr__(self) -> str:
        return "<NullCipher>"


def make_cipher(name: str, key: bytes = b""):
    if name in _AEAD:
        return AeadCipher(name, key)
    if name in _CBC:
        return CbcCipher(name, key)
    if name == "null":
        return NullCipher(name, key)
    raise ValueError(f"unknown encryption algorithm {name!r}")


class Integrity:
    """HMAC truncated to the RFC length (RFC 2104 with RFC 2403/2404/4868 truncation).

    The hash states after the inner and outer padded keys are computed once; a MAC is
    then two state copies and updates (cheaper than keying HMAC per message)."""

    __slots__ = ("name", "key_size", "icv_size", "_ipad", "_opad")

    def __init__(self, name: str, key: bytes, *, strict_key: bool = True):
        try:
            hname, size, icv = _INTEG[name]
        except KeyError:
            raise ValueError(f"unknown integrity algorithm {name!r}") from None
        # ESP/AH and IKE use keys of exactly the hash's size (RFC 4868 2.1.1); HMAC
        # itself takes any length (RFC 2104), which RFC 2202/4231 vectors exercise.
        key = _check_key(name, key, size) if strict_key else bytes(key)
        self.name = name
        self.key_size = size
        self.icv_size = icv
        inner = hashlib.new(hname)
        outer = hashlib.new(hname)
        if len(key) > inner.block_size:
            key = hashlib.new(hname, key).digest()
        key = key.ljust(inner.block_size, b"\x00")
        inner.update(bytes(b ^ 0x36 for b in key))
        outer.update(bytes(b ^ 0x5C for b in key))
        self._ipad = inner
        self._opad = outer

    def mac(self, *parts) -> bytes:
        """The full (untruncated) HMAC of the concatenated parts."""
        i = self._ipad.copy()
        for p in parts:
            i.update(p)
        o = self._opad.copy()
        o.update(i.digest())
        return o.digest()

    def sign(self, data) -> bytes:
        return self.mac(data)[: self.icv_size]

    def verify(self, data, icv) -> bool:
        return hmac.compare_digest(self.mac(data)[: self.icv_size], bytes(icv))

    def __repr__(self) -> str:
        return f"<Integrity {self.name}>"


def make_integrity(name: str, key: bytes) -> Integrity:
    return Integrity(name, key)


# hashlib must know every name (md5 can be missing in FIPS builds; fail at import, not per packet)
for _h, _, _ in _INTEG.values():
    hashlib.new(_h)
del _h
