"""crypto/dh.py and crypto/prf.py against published vectors (RFC 5903, RFC 7748, RFC 4231,
RFC 2202) and scapy's copy of the RFC 3526 primes."""

from __future__ import annotations

import pytest

from vpnd.crypto import dh, prf
from vpnd.crypto.dh import InvalidPublicValue, KeyExchange

H = bytes.fromhex

# RFC 5903 8.1 (256-bit random ECP group)
P256_I = H("C88F01F510D9AC3F70A292DAA2316DE544E9AAB8AFE84049C62A9C57862D1433")
P256_GI = H("DAD0B65394221CF9B051E1FECA5787D098DFE637FC90B9EF945D0C3772581180"
            "5271A0461CDB8252D61F1C456FA3E59AB1F45B33ACCF5F58389E0577B8990BB3")
P256_R = H("C6EF9C5D78AE012A011164ACB397CE2088685D8F06BF9BE0B283AB46476BEE53")
P256_GR = H("D12DFB5289C8D4F81208B70270398C342296970A0BCCB74C736FC7554494BF63"
            "56FBF3CA366CC23E8157854C13C58D6AAC23F046ADA30F8353E74F33039872AB")
P256_GIR = H("D6840F6B42F6EDAFD13116E0E12565202FEF8E9ECE7DCE03812464D04B9442DE")
# RFC 5903 8.2 (384-bit random ECP group)
P384_I = H("099F3C7034D4A2C699884D73A375A67F7624EF7C6B3C0F160647B67414DCE655"
           "E35B538041E649EE3FAEF896783AB194")
P384_GI = H("667842D7D180AC2CDE6F74F37551F55755C7645C20EF73E31634FE72B4C55EE6DE3AC808ACB4BDB4C88732AEE95F41AA"
            "9482ED1FC0EEB9CAFC4984625CCFC23F65032149E0E144ADA024181535A0F38EEB9FCFF3C2C947DAE69B4C634573A81C")
P384_R = H("41CB0779B4BDB85D47846725FBEC3C9430FAB46CC8DC5060855CC9BDA0AA2942"
           "E0308312916B8ED2960E4BD55A7448FC")
P384_GIR = H("11187331C279962D93D604243FD592CB9D0A926F422E47187521287E7156C5C4"
             "D603135569B9E9D09CF5D4A270F59746")
# RFC 7748 6.1
X_A = H("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
X_A_PUB = H("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
X_B = H("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
X_B_PUB = H("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
X_K = H("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")


def test_ecp256_rfc5903():
    i, r = KeyExchange("ecp256", P256_I), KeyExchange("ecp256", P256_R)
    assert i.public == P256_GI and r.public == P256_GR
    assert i.shared(r.public) == P256_GIR == r.shared(i.public)


def test_ecp384_rfc5903():
    i, r = KeyExchange("ecp384", P384_I), KeyExchange("ecp384", P384_R)
    assert i.public == P384_GI
    assert i.shared(r.public) == P384_GIR == r.shared(i.public)


def test_x25519_rfc7748():
    a, b = KeyExchange("x25519", X_A), KeyExchange("x25519", X_B)
    assert a.public == X_A_PUB and b.public == X_B_PUB
    assert a.shared(X_B_PUB) == X_K == b.shared(X_A_PUB)


def test_modp_primes_match_rfc3526_as_copied_by_scapy():
    from scapy.layers.tls.crypto import groups

    for bits in (768, 1024, 1536, 2048, 3072, 4096, 6144, 8192):
        assert dh.modp_prime(bits) == getattr(groups, f"modp{bits}").m, bits
    # and the well-known first/last words of group 14 (RFC 3526 3)
    p = dh.modp_prime(2048).to_bytes(256, "big")
    assert p[:12].hex() == "ffffffffffffffffc90fdaa2" and p[-8:] == b"\xff" * 8


@pytest.mark.parametrize("group", sorted(dh.GROUP_IDS))
def test_every_group_agrees_and_has_rfc_lengths(group):
    if group == "modp8192":
        pytest.skip("slow; same code path as modp6144")
    a, b = KeyExchange(group), KeyExchange(group)
    assert len(a.public) == dh.public_value_length(group)
    s = a.shared(b.public)
    assert s == b.shared(a.public)
    expect = {"ecp256": 32, "ecp384": 48, "ecp521": 66, "x25519": 32}.get(group)
    assert len(s) == (expect or int(group[4:]) // 8)
    assert "KeyExchange(" in repr(a) and a.public.hex() not in repr(a)


def test_modp_shared_secret_against_plain_pow():
    p = dh.modp_prime(1024)
    x = 0x1234567890ABCDEF1234567890ABCDEF
    a = KeyExchange("modp1024", x.to_bytes(16, "big"))
    b = KeyExchange("modp1024")
    y = int.from_bytes(b.public, "big")
    assert a.shared(b.public) == pow(y, x, p).to_bytes(128, "big")


@pytest.mark.parametrize("group,bad", [
    ("modp2048", b"\0" * 256),
    ("modp2048", (1).to_bytes(256, "big")),
    ("modp2048", (dh.modp_prime(2048) - 1).to_bytes(256, "big")),
    ("modp2048", b"\xff" * 256),
    ("modp2048", b"\1" * 255),
    ("ecp256", b"\0" * 64),
    ("ecp256", P256_GR[:-1] + bytes([P256_GR[-1] ^ 1])),  # off the curve
    ("ecp384", b"\1" * 96),
    ("x25519", b"\0" * 32),  # low-order point: all-zero secret (RFC 7748 6.1)
    ("x25519", b"\0" * 31),
])
def test_invalid_peer_values_rejected(group, bad):
    with pytest.raises(InvalidPublicValue):
        KeyExchange(group).shared(bad)


# RFC 4231 test cases 1 and 2, RFC 2202 test case 2
@pytest.mark.parametrize("name,key,data,mac", [
    ("prfsha256", b"\x0b" * 20, b"Hi There",
     "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    ("prfsha384", b"\x0b" * 20, b"Hi There",
     "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59cfaea9ea9076ede7f4af152e8b2fa9cb6"),
    ("prfsha512", b"\x0b" * 20, b"Hi There",
     "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde"
     "daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854"),
    ("prfsha256", b"Jefe", b"what do ya want for nothing?",
     "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    ("prfmd5", b"Jefe", b"what do ya want for nothing?", "750c783e6ab0b503eaa86e310a5db738"),
    ("prfsha1", b"Jefe", b"what do ya want for nothing?", "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"),
])
def test_hmac_vectors(name, key, data, mac):
    assert prf.Prf(name)(key, data).hex() == mac


def test_prf_plus_structure():
    p = prf.Prf("prfsha256")
    k, s = b"key", b"seed"
    t1 = p(k, s + b"\x01")
    t2 = p(k, t1 + s + b"\x02")
    t3 = p(k, t2 + s + b"\x03")
    assert p.plus(k, s, 70) == (t1 + t2 + t3)[:70]
    with pytest.raises(ValueError):
        p.plus(k, s, 256 * 32)
