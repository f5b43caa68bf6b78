"""Certificate paths and certificate identities (vpnd/crypto/certs.py), one verifier for
IKEv1 and IKEv2: directly, and through each version's authentication in memory, with
chains built here by `cryptography` (issue 8.10)."""
from __future__ import annotations

import datetime
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import NameOID

from test_ikev1_harness import pair as v1_pair
from test_ikev2_pair import Pair as V2Pair
from vpnd.config import parse_identity
from vpnd.crypto import certs

NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)
# the initiator's addresses in the two in-memory harnesses (IKEv1, IKEv2)
A_IPS = ("10.200.0.1", "10.0.0.1")


def _name(cn, org="vpnd test"):
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "CH"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


_RSA_POOL = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(6)]
_rsa_next = [0]


def _key(kind="ec"):
    if kind == "rsa":  # a few keys in turn: RSA key generation would dominate the run
        _rsa_next[0] += 1
        return _RSA_POOL[_rsa_next[0] % len(_RSA_POOL)]
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


class Node:
    """A key and its certificate."""

    def __init__(self, cn, issuer=None, *, ca=True, path_length=None, key_usage=None,
                 valid=(-1, 30), sans=(), kind="ec", org="vpnd test", pss=False, extra=()):
        self.key = _key(kind)
        subject = _name(cn, org)
        signer = issuer.key if issuer else self.key
        b = (x509.CertificateBuilder().subject_name(subject)
             .issuer_name(issuer.cert.subject if issuer else subject)
             .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(NOW + valid[0] * DAY).not_valid_after(NOW + valid[1] * DAY))
        if ca is not None:
            b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        if key_usage is not None:
            b = b.add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                              key_encipherment=False, data_encipherment=False,
                                              key_agreement=False, key_cert_sign=key_usage,
                                              crl_sign=key_usage, encipher_only=False,
                                              decipher_only=False), critical=True)
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        for ext, critical in extra:
            b = b.add_extension(ext, critical=critical)
        algo = None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256()
        kw = {}
        if pss:
            kw["rsa_padding"] = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)
        self.cert = b.sign(signer, algo, **kw)


def gw(cn, issuer, **kw):
    sans = [x509.DNSName(f"{cn}.example.com"), x509.RFC822Name(f"admin@{cn}.example.com")] + \
        [x509.IPAddress(ipaddress.ip_address(ip)) for ip in A_IPS]
    return Node(cn, issuer, ca=None, sans=kw.pop("sans", sans), **kw)


# -- the verifier itself --------------------------------------------------------------------

def test_direct_issuer_and_intermediate_accepted():
    root = Node("root")
    mid = Node("mid", root)
    assert certs.verify_chain(gw("a", root).cert, [root.cert], NOW) is None
    ee = gw("a", mid)
    assert certs.verify_chain(ee.cert, [root.cert], NOW, [mid.cert]) is None
    # two intermediates, offered in any order, among unrelated certificates
    mid2 = Node("mid2", mid)
    ee2 = gw("b", mid2)
    junk = [gw("x", root).cert, Node("other").cert]
    assert certs.verify_chain(ee2.cert, [Node("unrelated").cert, root.cert], NOW,
                              junk + [mid.cert, mid2.cert]) is None
    assert certs.verify_chain(ee2.cert, [root.cert], NOW, [mid.cert]).startswith("not trusted")


@pytest.mark.parametrize("kinds", [("rsa", "rsa", "ec"), ("ec", "ed25519", "rsa"), ("rsa-pss", "ec", "ec")])
def test_signature_algorithms(kinds):
    root_kind, mid_kind, ee_kind = kinds
    root = Node("root", kind=root_kind.replace("-pss", ""))
    mid = Node("mid", root, kind=mid_kind, pss=root_kind == "rsa-pss")
    assert certs.verify_chain(gw("a", mid, kind=ee_kind).cert, [root.cert], NOW, [mid.cert]) is None


def test_issuer_that_is_not_a_ca_refused():
    root = Node("root")
    for bad in (Node("mid", root, ca=None), Node("mid", root, ca=False)):
        why = certs.verify_chain(gw("a", bad).cert, [root.cert], NOW, [bad.cert])
        assert why and "not a CA" in why
    # the configured CA itself must be one too
    not_ca = Node("root", ca=False)
    assert "not a CA" in certs.verify_chain(gw("a", not_ca).cert, [not_ca.cert], NOW)


def test_path_length_and_key_usage():
    root = Node("root", path_length=0)
    mid = Node("mid", root)
    why = certs.verify_chain(gw("a", mid).cert, [root.cert], NOW, [mid.cert])
    assert why and "allows 0 intermediate" in why
    assert certs.verify_chain(gw("a", root).cert, [root.cert], NOW) is None
    root1 = Node("root", path_length=1)
    mid1 = Node("mid", root1, path_length=0)
    mid2 = Node("mid2", mid1)
    assert certs.verify_chain(gw("a", mid1).cert, [root1.cert], NOW, [mid1.cert]) is None
    why = certs.verify_chain(gw("a", mid2).cert, [root1.cert], NOW, [mid1.cert, mid2.cert])
    assert why and "allows" in why
    root = Node("root")
    no_sign = Node("mid", root, key_usage=False)
    why = certs.verify_chain(gw("a", no_sign).cert, [root.cert], NOW, [no_sign.cert])
    assert why and "keyUsage" in why
    signs = Node("mid", root, key_usage=True)
    assert certs.verify_chain(gw("a", signs).cert, [root.cert], NOW, [signs.cert]) is None


@pytest.mark.parametrize("which,valid,word", [
    ("ee", (-30, -1), "expired"), ("ee", (1, 30), "not yet valid"),
    ("mid", (-30, -1), "expired"), ("mid", (1, 30), "not yet valid"),
    ("root", (-30, -1), "expired"), ("root", (1, 30), "not yet valid")])
def test_validity_at_now(which, valid, word):
    root = Node("root", valid=valid if which == "root" else (-1, 30))
    mid = Node("mid", root, valid=valid if which == "mid" else (-1, 30))
    ee = gw("a", mid, valid=valid if which == "ee" else (-1, 30))
    why = certs.verify_chain(ee.cert, [root.cert], NOW, [mid.cert])
    assert why and word in why


def test_time_is_the_callers_clock():
    root = Node("root")
    ee = gw("a", root, valid=(-1, 30))
    assert certs.verify_chain(ee.cert, [root.cert], NOW + 10 * DAY) is None
    assert "expired" in certs.verify_chain(ee.cert, [root.cert], NOW + 31 * DAY)
    assert "not yet valid" in certs.verify_chain(ee.cert, [root.cert], NOW - 2 * DAY)


def test_chain_must_end_in_a_configured_ca():
    root, rogue = Node("root"), Node("root")  # the same name, another key
    mid = Node("mid", rogue)
    why = certs.verify_chain(gw("a", mid).cert, [root.cert], NOW, [mid.cert, rogue.cert])
    assert why and why.startswith("not trusted")
    assert certs.verify_chain(gw("a", rogue).cert, [root.cert], NOW).startswith("not trusted")
    assert certs.verify_chain(gw("a", root).cert, [], NOW) == "no CA configured to verify the peer certificate"


def test_unknown_critical_extension_refused():
    root = Node("root")
    odd = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    why = certs.verify_chain(gw("a", root, extra=[(odd, True)]).cert, [root.cert], NOW)
    assert why and "critical" in why
    assert certs.verify_chain(gw("a", root, extra=[(odd, False)]).cert, [root.cert], NOW) is None


def test_crafted_candidates_cost_bounded_work(monkeypatch):
    # many look-alike CAs (same name, other keys) and a long chain: the search stops at
    # fixed bounds instead of trying every combination
    root = Node("root")
    fakes = [Node("mid", root) for _ in range(40)]
    ee = gw("a", Node("mid", Node("root")))
    calls = []
    orig = certs._Search.signed
    monkeypatch.setattr(certs._Search, "signed", lambda s, c, i: calls.append(1) or orig(s, c, i))
    why = certs.verify_chain(ee.cert, [root.cert], NOW, [f.cert for f in fakes])
    assert why and why.startswith("not trusted")
    assert len(calls) <= certs.MAX_SIGNATURE_CHECKS + certs.MAX_CANDIDATES + 1
    # a path longer than MAX_PATH is refused even when every link is right
    chain = [root]
    for i in range(certs.MAX_PATH + 1):
        chain.append(Node(f"ca{i}", chain[-1]))
    ee = gw("a", chain[-1])
    why = certs.verify_chain(ee.cert, [root.cert], NOW, [n.cert for n in chain[1:]])
    assert why and "longer than" in why


def test_certificate_carries_id():
    root = Node("root")
    ee = gw("gw-a", root).cert
    yes = [(1, ipaddress.ip_address(A_IPS[0]).packed), (2, b"gw-a.example.com"), (2, b"GW-A.Example.COM."),
           (3, b"admin@gw-a.example.com"), (9, _name("gw-a").public_bytes())]
    no = [(1, ipaddress.ip_address("10.9.9.9").packed), (2, b"other.example.com"), (3, b"gw-a.example.com"),
          (2, b"admin@gw-a.example.com"), (9, _name("gw-b").public_bytes()), (5, b"\x01" * 4),
          (1, b"\x01\x02"), (11, b"gw-a"), (9, b"\x30\x03garbage")]
    assert all(certs.cert_carries_id(ee, t, d) for t, d in yes)
    assert not any(certs.cert_carries_id(ee, t, d) for t, d in no)
    # DN: compared in config.parse_identity's canonical form (case, spaces, string types)
    printable = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "CH"),
                           x509.NameAttribute(NameOID.ORGANIZATION_NAME, "VPND  Test",
                                              x509.name._ASN1Type.PrintableString),
                           x509.NameAttribute(NameOID.COMMON_NAME, "gw-a", x509.name._ASN1Type.PrintableString)])
    assert printable.public_bytes() != _name("gw-a").public_bytes()
    assert certs.cert_carries_id(ee, 9, printable.public_bytes())
    assert certs.dn_identity(ee.subject) == parse_identity("C=CH, O=vpnd test, CN=gw-a")
    assert certs.same_dn(parse_identity("/C=CH/O=vpnd test/CN=gw-a"), ee.subject)
    # no SAN at all: only the DN
    bare = Node("bare", root, ca=None).cert
    assert certs.cert_carries_id(bare, 9, bare.subject.public_bytes())
    assert not certs.cert_carries_id(bare, 2, b"bare.example.com")


# -- through each version's authentication ------------------------------------------------
# (gateway keys RSA: IKEv1's rsa-sig is RSA only; the CAs above them may be ECDSA)

def _pem(path, *nodes):
    path.write_bytes(b"".join(n.cert.public_bytes(serialization.Encoding.PEM) for n in nodes))
    return str(path)


def _auth(tmp_path, name, node, chain, anchor):
    kp = tmp_path / f"{name}.key"
    kp.write_bytes(node.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    kp.chmod(0o600)
    return {"cert": _pem(tmp_path / f"{name}.pem", node, *chain), "key": str(kp),
            "ca": _pem(tmp_path / f"{name}-ca.pem", anchor)}


def _handshake(version, a_auth, b_auth, a_extra=None, b_extra=None, clock=None):
    """(B accepted A, B's auth_failed messages), A initiating."""
    if version == 1:
        net = v1_pair({"psk": None, "auth": a_auth, **(a_extra or {})},
                      {"psk": None, "auth": b_auth, **(b_extra or {})}, start=False)
        if clock:
            net.a._wallclock = net.b._wallclock = clock
        net.feed(net.a, net.a.initiate("site", 0.0))
        net.advance(1)
        return bool(net.installs("B")), [e.message for e in net.events("B", "auth_failed")]
    p = V2Pair({"auth": a_auth, **(a_extra or {})}, {"auth": b_auth, **(b_extra or {})})
    if clock:
        p.a.m.v2.wallclock = p.b.m.v2.wallclock = clock
    p.up()
    return bool(p.b.installed()), [e.message for e in p.b.events if e.kind == "auth_failed"]


@pytest.fixture(params=[1, 2], ids=["ikev1", "ikev2"])
def version(request):
    return request.param


def _case(tmp_path, a_node, a_chain, b_anchor, root):
    b = gw("gw-b", root, kind="rsa")
    return (_auth(tmp_path, "a", a_node, a_chain, root),
            _auth(tmp_path, "b", b, (), b_anchor))


def test_intermediate_ca_accepted(tmp_path, version):
    root = Node("root", kind="rsa")
    mid = Node("mid", root)
    a, b = _case(tmp_path, gw("gw-a", mid, kind="rsa"), [mid], root, root)
    ok, why = _handshake(version, a, b, b_extra={"remote_id": "C=CH, O=vpnd test, CN=gw-a"})
    assert ok, why
    # the intermediate is not sent: B finds it among its own configured certificates
    b_mid = gw("gw-b", mid, kind="rsa")
    a2 = _auth(tmp_path, "a2", gw("gw-a", mid, kind="rsa"), [], root)
    b2 = _auth(tmp_path, "b2", b_mid, [mid], root)
    ok, why = _handshake(version, a2, b2)
    assert ok, why


def test_intermediate_sent_in_second_cert_payload(tmp_path, monkeypatch):
    # RFC 7296 3.6: the end-entity certificate first, then the intermediate
    from vpnd.ike.v2.payloads import Cert
    from vpnd.ike.v2 import exchange_auth

    root = Node("root")
    mid = Node("mid", root)
    a, b = _case(tmp_path, gw("gw-a", mid, kind="rsa"), [mid], root, root)
    p = V2Pair({"auth": a}, {"auth": b})
    seen = []
    orig = exchange_auth.verify_peer
    monkeypatch.setattr(exchange_auth, "verify_peer", lambda e, sa, conn, idp, auth, pls, **kw: seen.append(
        [x.data for x in pls if isinstance(x, Cert)]) or orig(e, sa, conn, idp, auth, pls, **kw))
    p.up()
    der = lambda n: n.cert.public_bytes(serialization.Encoding.DER)  # noqa: E731
    assert len(seen[0]) == 2 and seen[0][1] == der(mid)
    assert p.b.installed()


@pytest.mark.parametrize("case", ["non_ca_issuer", "configured_ca_not_a_ca", "path_length",
                                  "expired", "not_yet_valid", "id_not_in_cert", "other_ca",
                                  "intermediate_expired"])
def test_refused(tmp_path, version, case):
    root = Node("root", ca=False if case == "configured_ca_not_a_ca" else True,
                path_length=0 if case == "path_length" else None)
    mid = Node("mid", root, ca=False if case == "non_ca_issuer" else True,
               valid=(-30, -1) if case == "intermediate_expired" else (-1, 30))
    valid = {"expired": (-30, -1), "not_yet_valid": (1, 30)}.get(case, (-1, 30))
    # a certificate issued directly by the configured "CA" that is none
    ee = gw("gw-a", root if case == "configured_ca_not_a_ca" else mid, valid=valid, kind="rsa")
    anchor = Node("root") if case == "other_ca" else root  # same name, another key
    a, b = _case(tmp_path, ee, [mid], anchor, root)
    a_extra = {"local_id": "@other.example.com"} if case == "id_not_in_cert" else None
    ok, why = _handshake(version, a, b, a_extra=a_extra)
    assert not ok and why, why
    word = {"non_ca_issuer": "not a CA", "configured_ca_not_a_ca": "not a CA",
            "path_length": "allows 0 intermediate", "expired": "expired",
            "not_yet_valid": "not yet valid", "id_not_in_cert": "other.example.com",
            "other_ca": "not trusted", "intermediate_expired": "expired"}[case]
    assert word in why[0], why


def test_wall_clock_is_injected(tmp_path, version):
    root = Node("root")
    a, b = _case(tmp_path, gw("gw-a", root, kind="rsa"), [], root, root)
    later = NOW + 60 * DAY
    ok, why = _handshake(version, a, b, clock=lambda: later)
    assert not ok and "expired" in why[0]
    ok, why = _handshake(version, a, b, clock=lambda: NOW + DAY)
    assert ok, why
