"""IKEv2 certificate authentication in memory: RSA and ECDSA, RFC 7427 and the classic
methods, DN/FQDN/IP identities, a test PKI made here with `cryptography`."""
from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from test_ikev2_pair import A_IP, Pair
from vpnd.crypto import auth as authc
from vpnd.ike.v2 import constants as c

NOW = datetime.datetime.now(datetime.timezone.utc)


def _key(kind):
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key({"ecdsa256": ec.SECP256R1(), "ecdsa384": ec.SECP384R1(),
                                    "ecdsa521": ec.SECP521R1()}[kind])


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "CH"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vpnd test"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(kind="rsa", cn="vpnd test CA"):
    key = _key(kind)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(days=1)).not_valid_after(NOW + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_cert(ca, kind, cn, sans=(), *, days=30):
    ca_key, ca_cert = ca
    key = _key(kind)
    b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(NOW - datetime.timedelta(days=1)).not_valid_after(NOW + datetime.timedelta(days=days)))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return key, b.sign(ca_key, hashes.SHA256())


def write(tmp_path, name, key, cert, ca_cert):
    kp, cp, ap = tmp_path / f"{name}.key", tmp_path / f"{name}.pem", tmp_path / "ca.pem"
    kp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    ap.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return {"cert": str(cp), "key": str(kp), "ca": str(ap)}


def cert_pair(tmp_path, kind_a, kind_b, *, ca_kind="rsa", a_extra=None, b_extra=None):
    import ipaddress

    ca = make_ca(ca_kind)
    ka, ca_ = make_cert(ca, kind_a, "gw-a", [x509.DNSName("gw-a.example.com"),
                                            x509.IPAddress(ipaddress.ip_address(A_IP))])
    kb, cb = make_cert(ca, kind_b, "gw-b", [x509.DNSName("gw-b.example.com")])
    a = {"auth": write(tmp_path, "a", ka, ca_, ca[1]), **(a_extra or {})}
    b = {"auth": write(tmp_path, "b", kb, cb, ca[1]), **(b_extra or {})}
    return a, b


def _pair(a, b, **kw):
    return Pair(a, b, **kw)


@pytest.mark.parametrize("kind_a,kind_b", [("rsa", "rsa"), ("ecdsa256", "ecdsa384"), ("rsa", "ecdsa521")])
def test_certificates_rfc7427(tmp_path, kind_a, kind_b):
    a, b = cert_pair(tmp_path, kind_a, kind_b)
    p = _pair(a, b)
    p.up()
    p.check_tunnel()
    assert p.ike(p.b)[0]["remote_id"] == "C=CH, O=vpnd test, CN=gw-a"
    assert p.ike()[0]["remote_id"] == "C=CH, O=vpnd test, CN=gw-b"
    # both announced SIGNATURE_HASH_ALGORITHMS, so AUTH method 14 was used
    auth_req = [d.data for t, d in p.a.sent if d.data[18] == 35][0]
    assert auth_req  # encrypted; the method is checked by the sign() unit test below


@pytest.mark.parametrize("kind,method", [("rsa", c.AUTH_RSA), ("ecdsa256", c.AUTH_ECDSA_256),
                                         ("ecdsa384", c.AUTH_ECDSA_384), ("ecdsa521", c.AUTH_ECDSA_521)])
def test_classic_signature_methods_round_trip(kind, method):
    ca = make_ca()
    key, cert = make_cert(ca, kind, "x")
    m, data = authc.sign(key, b"signed octets", frozenset())
    assert m == method
    assert authc.verify(cert, m, data, b"signed octets")
    assert not authc.verify(cert, m, data, b"other octets")
    m14, d14 = authc.sign(key, b"signed octets", frozenset({c.HASH_SHA256, c.HASH_SHA384, c.HASH_SHA512}))
    assert m14 == c.AUTH_DIGITAL_SIGNATURE and authc.verify(cert, m14, d14, b"signed octets")
    assert not authc.verify(cert, m14, d14[:-1] + bytes([d14[-1] ^ 1]), b"signed octets")


def test_fqdn_and_ip_identities_from_subject_alt_names(tmp_path):
    a, b = cert_pair(tmp_path, "ecdsa256", "ecdsa256",
                     a_extra={"local_id": "@gw-a.example.com", "remote_id": "@gw-b.example.com"},
                     b_extra={"local_id": "@gw-b.example.com", "remote_id": "@gw-a.example.com"})
    p = _pair(a, b)
    p.up()
    p.check_tunnel()
    assert p.ike(p.b)[0]["remote_id"] == "@gw-a.example.com"
    a2, b2 = cert_pair(tmp_path, "rsa", "rsa", a_extra={"local_id": A_IP}, b_extra={"remote_id": A_IP})
    q = _pair(a2, b2)
    q.up()
    q.check_tunnel()


def test_identity_not_in_certificate_fails(tmp_path):
    a, b = cert_pair(tmp_path, "rsa", "rsa", a_extra={"local_id": "@other.example.com"})
    p = _pair(a, b)
    p.up()
    assert p.a.installed() == [] and "auth_failed" in p.b.kinds()
    ev = [e for e in p.b.events if e.kind == "auth_failed"][0]
    assert "not confirmed by the certificate" in ev.message


def test_certificate_from_another_ca_fails(tmp_path):
    a, b = cert_pair(tmp_path, "rsa", "rsa")
    other = make_ca("ecdsa256", "rogue CA")
    k, crt = make_cert(other, "rsa", "gw-a")
    (tmp_path / "rogue").mkdir()
    a["auth"] = write(tmp_path / "rogue", "a", k, crt, other[1])
    p = _pair(a, b)
    p.up()
    assert "auth_failed" in p.b.kinds() and p.b.installed() == []
    assert "trusted CA" in [e for e in p.b.events if e.kind == "auth_failed"][0].message


def test_remote_dn_identity(tmp_path):
    a, b = cert_pair(tmp_path, "rsa", "ecdsa256", a_extra={"remote_id": "C=CH, O=vpnd test, CN=gw-b"},
                     b_extra={"remote_id": "C=CH, O=vpnd test, CN=gw-a"})
    p = _pair(a, b)
    p.up()
    p.check_tunnel()
    a3, b3 = cert_pair(tmp_path, "rsa", "rsa", b_extra={"remote_id": "C=CH, O=vpnd test, CN=someone-else"})
    q = _pair(a3, b3)
    q.up()
    assert q.b.installed() == [] and "auth_failed" in q.b.kinds()


def test_der_name_parser_matches_cryptography():
    n = _name("gw-ä")
    assert authc.parse_der_name(n.public_bytes()) == n
    assert authc.dn_string(n) == "C=CH, O=vpnd test, CN=gw-ä"
    for bad in (b"", b"\x30", b"\x30\x05\x31\x03\x30\x01\x06", b"\x31\x00"):
        with pytest.raises(ValueError):
            authc.parse_der_name(bad)


def test_expired_certificate_fails(tmp_path):
    a, b = cert_pair(tmp_path, "ecdsa256", "ecdsa256")
    ca = make_ca("ecdsa256", "short-lived CA")
    k, crt = make_cert(ca, "ecdsa256", "gw-a", days=-0.5)  # expired half a day ago
    (tmp_path / "old").mkdir()
    a["auth"] = write(tmp_path / "old", "a", k, crt, ca[1])
    b["auth"] = dict(b["auth"], ca=str(tmp_path / "old" / "ca.pem"))
    p = _pair(a, b)
    p.up()
    assert p.b.installed() == []
    assert "expired" in [e for e in p.b.events if e.kind == "auth_failed"][0].message
