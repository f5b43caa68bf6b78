"""IKEv1 key derivation, authentication hashes and phase-1/phase-2 encryption (RFC 2409).

Everything here is a pure function of its inputs so the unit tests can recompute it from
the RFC formulas independently. In IKEv1 the prf is the HMAC of the negotiated hash
(RFC 2409 4: "the HMAC version of the negotiated hash").
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from vpnd.crypto import ciphers
from vpnd.ike.v1 import constants as C


def prf(hash_name: str, key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, C.HASHLIB[hash_name])


def hash_(hash_name: str, data: bytes) -> bytes:
    return hashlib.new(C.HASHLIB[hash_name], data).digest()


def skeyid(auth: int, hash_name: str, *, ni: bytes, nr: bytes, gxy: bytes,
           cky_i: bytes, cky_r: bytes, psk: bytes | None = None) -> bytes:
    """SKEYID per authentication method (RFC 2409 5)."""
    if auth == C.AUTH_PSK:
        if psk is None:
            raise ValueError("pre-shared key missing")
        return prf(hash_name, psk, ni + nr)
    if auth == C.AUTH_RSA_SIG:
        return prf(hash_name, ni + nr, gxy)
    if auth == C.AUTH_RSA_ENCR:
        return prf(hash_name, hash_(hash_name, ni + nr), cky_i + cky_r)
    raise ValueError(f"authentication method {auth} not supported")


def expand(hash_name: str, key: bytes, length: int) -> bytes:
    """Key expansion when the prf output is shorter than the cipher key (RFC 2409 appendix B):
    Ka = K1 | K2 | ..., K1 = prf(SKEYID_e, 0), Kn = prf(SKEYID_e, Kn-1)."""
    if len(key) >= length:
        return key[:length]
    out = b""
    k = b"\x00"
    while len(out) < length:
        k = prf(hash_name, key, k)
        out += k
    return out[:length]


@dataclass(frozen=True, repr=False)
class Phase1Keys:
    skeyid: bytes
    d: bytes
    a: bytes
    e: bytes
    enc_key: bytes
    iv0: bytes  # hash(g^xi | g^xr) truncated to the block size (appendix B)

    def __repr__(self) -> str:
        return "Phase1Keys(***)"


def derive_phase1(auth: int, hash_name: str, enc: str, *, ni: bytes, nr: bytes, gxy: bytes,
                  gxi: bytes, gxr: bytes, cky_i: bytes, cky_r: bytes,
                  psk: bytes | None = None) -> Phase1Keys:
    sk = skeyid(auth, hash_name, ni=ni, nr=nr, gxy=gxy, cky_i=cky_i, cky_r=cky_r, psk=psk)
    ck = cky_i + cky_r
    d = prf(hash_name, sk, gxy + ck + b"\x00")
    a = prf(hash_name, sk, d + gxy + ck + b"\x01")
    e = prf(hash_name, sk, a + gxy + ck + b"\x02")
    key = expand(hash_name, e, ciphers.cipher_key_size(enc))
    block = make_cipher(enc, key).block_size
    iv0 = hash_(hash_name, gxi + gxr)[:block]
    return Phase1Keys(sk, d, a, e, key, iv0)


def make_cipher(enc: str, key: bytes):
    return ciphers.make_cipher(enc, key)


def auth_hash(hash_name: str, skeyid_: bytes, *, initiator: bool, gxi: bytes, gxr: bytes,
              cky_i: bytes, cky_r: bytes, sai_b: bytes, id_b: bytes) -> bytes:
    """HASH_I / HASH_R (RFC 2409 5)."""
    if initiator:
        return prf(hash_name, skeyid_, gxi + gxr + cky_i + cky_r + sai_b + id_b)
    return prf(hash_name, skeyid_, gxr + gxi + cky_r + cky_i + sai_b + id_b)


def phase2_iv(hash_name: str, last_p1_block: bytes, message_id: int, block: int) -> bytes:
    """First IV of a Quick Mode or Informational exchange (RFC 2409 appendix B)."""
    return hash_(hash_name, last_p1_block + struct.pack("!I", message_id))[:block]


def encrypt(cipher, iv: bytes, plaintext: bytes) -> bytes:
    """Pad with zeros to the block size (RFC 2409 5.3 leaves the padding content open)."""
    bs = cipher.block_size
    pad = (-len(plaintext)) % bs
    return cipher.encrypt(iv, plaintext + b"\x00" * pad)


def decrypt(cipher, iv: bytes, ciphertext: bytes) -> bytes:
    return cipher.decrypt(iv, ciphertext)


def qm_hash1(hash_name: str, a: bytes, mid: int, rest: bytes) -> bytes:
    return prf(hash_name, a, struct.pack("!I", mid) + rest)


def qm_hash2(hash_name: str, a: bytes, mid: int, ni_b: bytes, rest: bytes) -> bytes:
    return prf(hash_name, a, struct.pack("!I", mid) + ni_b + rest)


def qm_hash3(hash_name: str, a: bytes, mid: int, ni_b: bytes, nr_b: bytes) -> bytes:
    return prf(hash_name, a, b"\x00" + struct.pack("!I", mid) + ni_b + nr_b)


def keymat(hash_name: str, d: bytes, protocol: int, spi: bytes, ni_b: bytes, nr_b: bytes,
           length: int, gqm: bytes = b"") -> bytes:
    """KEYMAT for one SA direction, expanded as RFC 2409 5.5 describes:
    K1 = prf(SKEYID_d, [g(qm)^xy |] protocol | SPI | Ni_b | Nr_b), Kn = prf(SKEYID_d, Kn-1 | ...)."""
    seed = gqm + bytes([protocol]) + spi + ni_b + nr_b
    out = b""
    k = b""
    while len(out) < length:
        k = prf(hash_name, d, k + seed)
        out += k
    return out[:length]


def natd_hash(hash_name: str, cky_i: bytes, cky_r: bytes, ip: str, port: int) -> bytes:
    """NAT-D: HASH(CKY-I | CKY-R | IP | Port) with the negotiated hash (RFC 3947 3.2)."""
    import ipaddress

    return hash_(hash_name, cky_i + cky_r + ipaddress.ip_address(ip).packed + struct.pack("!H", port))
