"""Proposal parsing: strongSwan syntax, Cisco transform sets, defaults and one-line errors."""

import pytest
from hypothesis import given, settings, strategies as st

from vpnd.proposals import (
    Proposal, ProposalError, describe_child, describe_ike, parse_proposals,
)


def one(text, protocol):
    (p,) = parse_proposals(text, protocol)
    return p


def test_contract_ike_default_pair():
    a, b = parse_proposals("aes128-sha256-modp2048, aes256gcm16-prfsha384-ecp384", "ike")
    assert a == Proposal("ike", ("aes128",), ("sha256",), ("prfsha256",), ("modp2048",))
    assert b == Proposal("ike", ("aes256gcm16",), (), ("prfsha384",), ("ecp384",))
    assert a.describe() == "AES_CBC-128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048"
    assert b.describe() == "AES_GCM_16-256/PRF_HMAC_SHA2_384/ECP_384"


def test_chacha_and_curve25519_alias():
    p = one("chacha20poly1305-prfsha256-curve25519", "ike")
    assert p.dh == ("x25519",) and p.aead
    assert p.describe() == "CHACHA20_POLY1305/PRF_HMAC_SHA2_256/CURVE_25519"


def test_alternatives_keep_order_and_prf_follows_integrity():
    p = one("aes128-aes256-sha256-sha1-modp2048-ecp256", "ike")
    assert p.encryption == ("aes128", "aes256")
    assert p.integrity == ("sha256", "sha1")
    assert p.prf == ("prfsha256", "prfsha1")  # strongSwan: PRF from integrity when absent
    assert p.dh == ("modp2048", "ecp256")


def test_explicit_prf_wins_over_integrity():
    assert one("aes256-sha256-prfsha512-ecp521", "ike").prf == ("prfsha512",)


@pytest.mark.parametrize("alias,canonical", [
    ("aes-sha-modp2048", ("aes128", "sha1")),
    ("aes128-sha2_256-modp2048", ("aes128", "sha256")),
    ("aes256-sha2_512-modp4096", ("aes256", "sha512")),
])
def test_strongswan_aliases(alias, canonical):
    p = one(alias, "ike")
    assert (p.encryption[0], p.integrity[0]) == canonical


def test_gcm_bit_spelling_is_icv16():
    assert one("aes128gcm128", "esp").encryption == ("aes128gcm16",)
    assert one("aes256gcm", "esp").encryption == ("aes256gcm16",)


def test_esp_pfs_group_and_esn():
    p = one("aes128gcm16-modp2048", "esp")
    assert p.dh == ("modp2048",) and p.esn == (False,)
    assert p.describe() == "AES_GCM_16-128/MODP_2048"
    p = one("aes256-sha384-esn-noesn", "esp")
    assert p.esn == (True, False)
    assert p.describe() == "AES_CBC-256/HMAC_SHA2_384_192/ESN"


def test_esp_without_pfs_matches_contract_status_example():
    assert one("aes128gcm16", "esp").describe() == "AES_GCM_16-128"


@pytest.mark.parametrize("text,enc,integ", [
    ("esp-aes 256 esp-sha-hmac", "aes256", "sha1"),
    ("esp-aes esp-sha256-hmac", "aes128", "sha256"),
    ("esp-3des esp-md5-hmac", "3des", "md5"),
    ("esp-null esp-sha-hmac", "null", "sha1"),
    ("esp-aes 192 esp-sha512-hmac", "aes192", "sha512"),
])
def test_cisco_transform_sets(text, enc, integ):
    p = one(text, "esp")
    assert p.protocol == "esp" and p.encryption == (enc,) and p.integrity == (integ,)


def test_cisco_gcm_is_aead():
    p = one("esp-gcm 256", "esp")
    assert p.encryption == ("aes256gcm16",) and p.integrity == ()
    assert one("esp-gcm", "esp").encryption == ("aes128gcm16",)


def test_cisco_ah_plus_esp_is_a_bundle():
    p = one("ah-sha-hmac esp-aes 256 esp-sha-hmac group14", "esp")
    assert p.protocol == "esp" and p.ah_integrity == ("sha1",) and p.dh == ("modp2048",)
    assert p.describe() == "AES_CBC-256/HMAC_SHA1_96/MODP_2048/AH:HMAC_SHA1_96"


def test_cisco_ah_only_is_ah():
    p = one("ah-md5-hmac", "esp")
    assert p == Proposal("ah", integrity=("md5",))
    assert one("sha256", "ah") == Proposal("ah", integrity=("sha256",))


@pytest.mark.parametrize("group,dh", [
    ("group1", "modp768"), ("group2", "modp1024"), ("group5", "modp1536"),
    ("group14", "modp2048"), ("group15", "modp3072"), ("group16", "modp4096"),
    ("group19", "ecp256"), ("group20", "ecp384"), ("group21", "ecp521"),
])
def test_cisco_group_numbers(group, dh):
    p = parse_proposals(f"esp-aes esp-sha-hmac {group}", "esp", allow_legacy=True)[0]
    assert p.dh == (dh,)


def test_several_proposals_and_duplicates_removed():
    ps = parse_proposals("aes128gcm16, aes128-sha256 ,aes128gcm16", "esp")
    assert [p.encryption for p in ps] == [("aes128gcm16",), ("aes128",)]


@pytest.mark.parametrize("text,protocol,message", [
    ("aes999", "esp", "unknown algorithm 'aes999'"),
    ("aes128gcm16-sha256", "esp",
     "AEAD algorithm 'aes128gcm16' cannot be combined with integrity 'sha256'"),
    ("aes128gcm16-sha256-prfsha256-ecp256", "ike",
     "AEAD algorithm 'aes128gcm16' cannot be combined with integrity 'sha256'"),
    ("aes128-sha256", "ike", "IKE proposal needs a DH group"),
    ("aes128-modp2048", "ike", "IKE proposal needs an integrity algorithm"),
    ("sha256-modp2048", "ike", "IKE proposal needs an encryption algorithm"),
    ("aes128gcm16-ecp256", "ike", "AEAD IKE proposal 'aes128gcm16-ecp256' needs a PRF, e.g. prfsha256"),
    ("aes128", "esp", "ESP proposal 'aes128' needs an integrity algorithm (or an AEAD cipher)"),
    ("aes128-sha256-prfsha256", "esp", "PRF 'prfsha256' is not used in ESP proposals"),
    ("aes128-sha256-modp2048-esn", "ike", "ESN is not used in IKE proposals"),
    ("des-sha1", "esp", "algorithm 'des' is insecure and needs 'allow_legacy: true'; DES is withdrawn "
     "(RFC 4772; RFC 8221: MUST NOT), use aes256 or aes256gcm16"),
    ("aes128-sha1-modp768", "ike", "algorithm 'modp768' is insecure and needs 'allow_legacy: true'; group 1 is broken "
     "(RFC 8247: MUST NOT), use modp2048 (group14) or ecp256"),
    ("esp-aes esp-sha-hmac group24", "esp",
     "algorithm 'group24' is not supported: modp2048s256 of RFC 5114; use modp2048 (group14) "
     "or ecp256 (group19)"),
    ("aes128gcm8", "esp", "algorithm 'aes128gcm8' is not supported: use aes128gcm16"),
    ("aes128-aes128gcm16-sha256", "esp",
     "AEAD 'aes128gcm16' and non-AEAD 'aes128' cannot share one proposal; separate them with a comma"),
    ("aes128--sha256", "esp", "empty algorithm name in 'aes128--sha256'"),
    ("aes128gcm16,,aes256gcm16", "esp", "empty proposal between commas"),
    ("", "esp", "no proposal given"),
    ("aes128-sha256", "ah", "AH cannot encrypt: 'aes128'"),
    ("esp-aes 512 esp-sha-hmac", "esp", "key size 512 of 'esp-aes' must be 128, 192 or 256"),
    ("comp-lzs", "esp", "ESP proposal needs an encryption algorithm (null for none)"),
    ("null-sha256-modp2048", "ike", "IKE cannot use null encryption"),
])
def test_errors_are_one_clear_line(text, protocol, message):
    with pytest.raises(ProposalError) as e:
        parse_proposals(text, protocol)
    assert str(e.value) == message
    assert "\n" not in str(e.value)


def test_legacy_allowed_when_asked():
    p = parse_proposals("des-md5-modp768", "ike", allow_legacy=True)[0]
    assert p.describe() == "DES_CBC/HMAC_MD5_96/PRF_HMAC_MD5/MODP_768"


def test_3des_md5_modp1024_are_explicit_only_not_refused():
    p = one("3des-md5-modp1024", "ike")
    assert p.describe() == "3DES_CBC/HMAC_MD5_96/PRF_HMAC_MD5/MODP_1024"


def test_describe_functions_directly():
    assert describe_ike("aes128", "sha256", "prfsha256", "modp2048") == \
        "AES_CBC-128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048"
    assert describe_child("aes128gcm16", None, None, False) == "AES_GCM_16-128"
    assert describe_child(None, "sha1", None, True) == "HMAC_SHA1_96/ESN"


_words = st.sampled_from(
    ["aes128", "aes", "sha", "sha256", "prfsha256", "modp2048", "ecp256", "x25519", "esn",
     "aes999", "esp-aes", "256", "esp-sha-hmac", "ah-sha-hmac", "group14", "group24", "des",
     "aes128gcm16", "chacha20poly1305", "", " ", "-", ",", "null", "noesn", "esp-gcm"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_words, max_size=8), st.sampled_from(["-", " ", ","]),
       st.sampled_from(["ike", "esp", "ah"]))
def test_fuzz_only_proposal_errors(words, sep, protocol):
    try:
        result = parse_proposals(sep.join(words), protocol)
    except ProposalError as e:
        assert "\n" not in str(e)
        return
    assert result and all(isinstance(p, Proposal) for p in result)
    for p in result:
        assert p.describe()
        if protocol == "ike":
            assert p.dh and p.prf and p.encryption


def test_isakmp_policy_words_live_in_the_vocabulary_module():
    # issue 9: the Cisco `crypto isakmp policy` words are parsed in proposals.py
    from vpnd import proposals as P
    assert P.isakmp_word(P.ISAKMP_ENCRYPTION, "AES  256", "'AES 256'") == "aes256"
    assert P.isakmp_word(P.ISAKMP_HASH, "sha", "'sha'") == "sha1"
    assert P.isakmp_group(14, "integer") == "group14" and P.isakmp_group("ecp256", "string") == "ecp256"
    prop = P.isakmp_policy("aes256", "sha256", "group14")
    assert (prop.encryption, prop.integrity, prop.prf, prop.dh) == \
        (("aes256",), ("sha256",), ("prfsha256",), ("modp2048",))
    with pytest.raises(P.ProposalError, match="'blowfish' is not one of: 3des, aes"):
        P.isakmp_word(P.ISAKMP_ENCRYPTION, "blowfish", "'blowfish'")
