"""The Encrypted and Authenticated payload (SK, RFC 7296 3.14; AEAD per RFC 5282 and RFC 7634).

CBC + HMAC: IV | E(payloads | padding | pad length) | ICV, the ICV over the whole message up
to and including the ciphertext. AEAD: 8-byte IV, the associated data is the IKE header and
the SK payload header, the tag is the ICV.
"""

from __future__ import annotations

import os

from vpnd.crypto.ciphers import CipherError, make_cipher, make_integrity
from vpnd.ike import codec
from vpnd.ike.codec import Encrypted, Header, MalformedMessage
from vpnd.ike.v2 import constants as c
from vpnd.ike.v2.payloads import REGISTRY


class IntegrityError(codec.CodecError):
    """The SK payload failed its ICV / AEAD tag check: drop silently (RFC 7296 2.21.2)."""


class SkCrypto:
    """Keys for one direction of an IKE SA."""

    def __init__(self, encryption: str, integrity: str | None, enc_key: bytes, auth_key: bytes):
        self.cipher = make_cipher(encryption, enc_key)
        self.integ = None if self.cipher.aead or not integrity else make_integrity(integrity, auth_key)
        self.icv_size = self.cipher.icv_size if self.cipher.aead else (self.integ.icv_size if self.integ else 0)

    def __repr__(self) -> str:
        return f"SkCrypto({self.cipher.name}, {self.integ.name if self.integ else None})"


def protect(header: Header, inner: list, crypto: SkCrypto, rng=os.urandom) -> bytes:
    """Build a complete message: header | SK{inner}."""
    first, plain = codec.encode_chain(inner)
    cipher = crypto.cipher
    block = cipher.block_size if not cipher.aead else 1
    pad_len = (-(len(plain) + 1)) % block
    plain = plain + bytes(pad_len) + bytes([pad_len])
    iv = rng(cipher.iv_size)
    sk_len = 4 + len(iv) + len(plain) + crypto.icv_size
    total = codec.HEADER_LEN + sk_len
    h = Header(header.spi_i, header.spi_r, c.PT_SK, 2, 0, header.exchange, header.flags, header.message_id)
    prefix = codec.encode_header(h, total) + codec.payload_header(first, sk_len - 4)
    if cipher.aead:
        return prefix + iv + cipher.encrypt(iv, plain, prefix)
    body = prefix + iv + cipher.encrypt(iv, plain)
    return body + (crypto.integ.sign(body) if crypto.integ else b"")


def unprotect(data: bytes, enc: Encrypted, crypto: SkCrypto) -> list:
    """Verify and decrypt the SK payload (the last one of `data`); return the inner payloads."""
    cipher = crypto.cipher
    sk_start = len(data) - len(enc.data) - 4
    if len(enc.data) < cipher.iv_size + crypto.icv_size + 1:
        raise MalformedMessage("SK payload too short")
    iv = enc.data[: cipher.iv_size]
    ct = enc.data[cipher.iv_size :]
    try:
        if cipher.aead:
            plain = cipher.decrypt(iv, ct, data[: sk_start + 4])
        else:
            icv = ct[len(ct) - crypto.icv_size :] if crypto.icv_size else b""
            ct = ct[: len(ct) - crypto.icv_size]
            if crypto.integ and not crypto.integ.verify(data[: len(data) - crypto.icv_size], icv):
                raise IntegrityError("ICV mismatch")
            if len(ct) % cipher.block_size:
                raise MalformedMessage("ciphertext not a multiple of the block size")
            plain = cipher.decrypt(iv, ct)
    except CipherError:
        raise IntegrityError("SK payload authentication failed") from None
    if not plain:
        raise MalformedMessage("empty SK plaintext")
    pad_len = plain[-1]
    if pad_len + 1 > len(plain):
        raise MalformedMessage("bad SK padding")
    return codec.decode_chain(plain[: len(plain) - 1 - pad_len], enc.first_inner, REGISTRY)
