"""IKEv2 key derivation: IKE SA keys (RFC 7296 2.14), rekeyed IKE SA (2.18), CHILD_SA
keying material (2.17). Key layouts follow docs/internals.md (AEAD salt at the end)."""

from __future__ import annotations

from dataclasses import dataclass

from vpnd.crypto.ciphers import cipher_key_size, integrity_key_size, is_aead
from vpnd.crypto.prf import Prf
from vpnd.ike.v2.sk import SkCrypto


@dataclass(repr=False)
class IkeKeys:
    prf: Prf
    encryption: str
    integrity: str | None
    sk_d: bytes
    sk_ai: bytes
    sk_ar: bytes
    sk_ei: bytes
    sk_er: bytes
    sk_pi: bytes
    sk_pr: bytes

    def __repr__(self) -> str:  # never print keys
        return f"IkeKeys({self.prf.name}, {self.encryption}, {self.integrity})"

    def crypto(self, *, initiator: bool, outbound: bool) -> SkCrypto:
        """SK keys for one direction: i->r uses SK_ei/SK_ai."""
        i2r = initiator == outbound
        return SkCrypto(self.encryption, self.integrity,
                        self.sk_ei if i2r else self.sk_er, self.sk_ai if i2r else self.sk_ar)


def _integ_len(encryption: str, integrity: str | None) -> int:
    return 0 if is_aead(encryption) or not integrity else integrity_key_size(integrity)


def derive_ike_keys(prf_name: str, encryption: str, integrity: str | None, skeyseed: bytes,
                    ni: bytes, nr: bytes, spi_i: bytes, spi_r: bytes) -> IkeKeys:
    """{SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr)."""
    prf = Prf(prf_name)
    a = _integ_len(encryption, integrity)
    e = cipher_key_size(encryption)
    p = prf.key_size
    km = prf.plus(skeyseed, ni + nr + spi_i + spi_r, 3 * p + 2 * a + 2 * e)
    parts = []
    pos = 0
    for n in (p, a, a, e, e, p, p):
        parts.append(km[pos : pos + n])
        pos += n
    return IkeKeys(prf, encryption, integrity, *parts)


def initial_skeyseed(prf_name: str, ni: bytes, nr: bytes, shared: bytes) -> bytes:
    """SKEYSEED = prf(Ni | Nr, g^ir) (2.14; HMAC PRFs take the whole nonce string as key)."""
    return Prf(prf_name)(ni + nr, shared)


def rekey_skeyseed(old: IkeKeys, shared: bytes, ni: bytes, nr: bytes) -> bytes:
    """SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr), with the old SA's PRF (2.18)."""
    return old.prf(old.sk_d, shared + ni + nr)


def child_keymat(keys: IkeKeys, ni: bytes, nr: bytes, encryption: str, integrity: str | None,
                 shared: bytes = b"") -> tuple[bytes, bytes, bytes, bytes]:
    """KEYMAT = prf+(SK_d, [g^ir |] Ni | Nr) (2.17): initiator->responder encryption and
    integrity keys first, then responder->initiator. Returns (enc_i2r, auth_i2r, enc_r2i, auth_r2i)."""
    e = cipher_key_size(encryption)
    a = _integ_len(encryption, integrity)
    km = keys.prf.plus(keys.sk_d, shared + ni + nr, 2 * (e + a))
    return km[:e], km[e : e + a], km[e + a : 2 * e + a], km[2 * e + a :]
