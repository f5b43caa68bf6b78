"""IKE peer authentication primitives: pre-shared key AUTH values (RFC 7296 2.15), RSA and
ECDSA signatures in the classic encodings (RFC 7296 3.8 method 1, RFC 4754 methods 9-11) and
as RFC 7427 digital signatures (method 14). Certificates and keys are loaded in
crypto/credentials.py, chains and certificate identities checked in crypto/certs.py (both
IKE versions)."""

from __future__ import annotations

import hmac

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

AUTH_RSA = 1
AUTH_PSK = 2
AUTH_ECDSA_256 = 9
AUTH_ECDSA_384 = 10
AUTH_ECDSA_521 = 11
AUTH_DIGITAL_SIGNATURE = 14

HASH_SHA1, HASH_SHA256, HASH_SHA384, HASH_SHA512 = 1, 2, 3, 4
_HASH_OBJ = {HASH_SHA1: hashes.SHA1, HASH_SHA256: hashes.SHA256, HASH_SHA384: hashes.SHA384,
             HASH_SHA512: hashes.SHA512}

# DER AlgorithmIdentifiers of RFC 7427 appendix A (sha*WithRSAEncryption carry a NULL parameter).
_RSA_ALGID = {
    HASH_SHA1: bytes.fromhex("300d06092a864886f70d0101050500"),
    HASH_SHA256: bytes.fromhex("300d06092a864886f70d01010b0500"),
    HASH_SHA384: bytes.fromhex("300d06092a864886f70d01010c0500"),
    HASH_SHA512: bytes.fromhex("300d06092a864886f70d01010d0500"),
}
_ECDSA_ALGID = {
    HASH_SHA1: bytes.fromhex("300906072a8648ce3d0401"),
    HASH_SHA256: bytes.fromhex("300a06082a8648ce3d040302"),
    HASH_SHA384: bytes.fromhex("300a06082a8648ce3d040303"),
    HASH_SHA512: bytes.fromhex("300a06082a8648ce3d040304"),
}
_ALGID_LOOKUP = {v: ("rsa", h) for h, v in _RSA_ALGID.items()}
_ALGID_LOOKUP.update({v: ("ecdsa", h) for h, v in _ECDSA_ALGID.items()})
# RSA without the NULL parameter is also seen in the wild
_ALGID_LOOKUP.update({b"\x30\x0b" + v[2:13]: ("rsa", h) for h, v in _RSA_ALGID.items()})

_CURVE_METHOD = {"secp256r1": (AUTH_ECDSA_256, HASH_SHA256, 32),
                 "secp384r1": (AUTH_ECDSA_384, HASH_SHA384, 48),
                 "secp521r1": (AUTH_ECDSA_521, HASH_SHA512, 66)}
_METHOD_CURVE = {m: (name, h, size) for name, (m, h, size) in _CURVE_METHOD.items()}

PSK_PAD = b"Key Pad for IKEv2"


class AuthError(Exception):
    """Credentials could not be loaded or used; the message never holds key material."""


def psk_auth(prf, psk: bytes, signed_octets: bytes) -> bytes:
    """AUTH = prf(prf(Shared Secret, "Key Pad for IKEv2"), <SignedOctets>) (2.15)."""
    return prf(prf(psk, PSK_PAD), signed_octets)


def psk_verify(prf, psk: bytes, signed_octets: bytes, auth: bytes) -> bool:
    return hmac.compare_digest(psk_auth(prf, psk, signed_octets), auth)


def sign(key, data: bytes, peer_hashes: set[int] | frozenset[int]) -> tuple[int, bytes]:
    """(auth method, AUTH data). RFC 7427 when the peer announced a usable hash, else the
    classic method for the key type."""
    if isinstance(key, rsa.RSAPrivateKey):
        for h in (HASH_SHA256, HASH_SHA384, HASH_SHA512):
            if h in peer_hashes:
                sig = key.sign(data, padding.PKCS1v15(), _HASH_OBJ[h]())
                algid = _RSA_ALGID[h]
                return AUTH_DIGITAL_SIGNATURE, bytes([len(algid)]) + algid + sig
        return AUTH_RSA, key.sign(data, padding.PKCS1v15(), hashes.SHA1())
    if isinstance(key, ec.EllipticCurvePrivateKey):
        method, h, size = _CURVE_METHOD.get(key.curve.name, (None, None, None))
        if method is None:
            raise AuthError(f"unsupported curve {key.curve.name}")
        der = key.sign(data, ec.ECDSA(_HASH_OBJ[h]()))
        if h in peer_hashes:
            algid = _ECDSA_ALGID[h]
            return AUTH_DIGITAL_SIGNATURE, bytes([len(algid)]) + algid + der
        r, s = decode_dss_signature(der)
        return method, r.to_bytes(size, "big") + s.to_bytes(size, "big")
    raise AuthError("unsupported private key type")


def verify(cert: x509.Certificate, method: int, auth: bytes, data: bytes) -> bool:
    """Check a peer's signature AUTH payload against its certificate's public key."""
    pub = cert.public_key()
    try:
        if method == AUTH_DIGITAL_SIGNATURE:
            if not auth:
                return False
            n = auth[0]
            algid, sig = auth[1 : 1 + n], auth[1 + n :]
            kind, h = _ALGID_LOOKUP.get(algid, (None, None))
            if kind == "rsa" and isinstance(pub, rsa.RSAPublicKey):
                pub.verify(sig, data, padding.PKCS1v15(), _HASH_OBJ[h]())
                return True
            if kind == "ecdsa" and isinstance(pub, ec.EllipticCurvePublicKey):
                pub.verify(sig, data, ec.ECDSA(_HASH_OBJ[h]()))
                return True
            return False
        if method == AUTH_RSA and isinstance(pub, rsa.RSAPublicKey):
            pub.verify(auth, data, padding.PKCS1v15(), hashes.SHA1())
            return True
        if method in _METHOD_CURVE and isinstance(pub, ec.EllipticCurvePublicKey):
            name, h, size = _METHOD_CURVE[method]
            if pub.curve.name != name or len(auth) != 2 * size:
                return False
            der = encode_dss_signature(int.from_bytes(auth[:size], "big"), int.from_bytes(auth[size:], "big"))
            pub.verify(der, data, ec.ECDSA(_HASH_OBJ[h]()))
            return True
    except (InvalidSignature, ValueError, TypeError):
        return False
    return False


def load_peer_cert(der: bytes) -> x509.Certificate | None:
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError:
        return None


def parse_der_name(der: bytes) -> x509.Name:
    """Decode a DER Name (SEQUENCE OF SET OF AttributeTypeAndValue) into an x509.Name."""
    from cryptography.x509.oid import ObjectIdentifier

    def tlv(buf: bytes, pos: int) -> tuple[int, bytes, int]:
        if pos + 2 > len(buf):
            raise ValueError("truncated DER")
        tag, ln = buf[pos], buf[pos + 1]
        pos += 2
        if ln & 0x80:
            n = ln & 0x7F
            if n == 0 or n > 3 or pos + n > len(buf):
                raise ValueError("bad DER length")
            ln = int.from_bytes(buf[pos : pos + n], "big")
            pos += n
        if pos + ln > len(buf):
            raise ValueError("truncated DER")
        return tag, buf[pos : pos + ln], pos + ln

    def oid_str(b: bytes) -> str:
        if not b:
            raise ValueError("empty OID")
        parts = [b[0] // 40, b[0] % 40]
        v = 0
        for byte in b[1:]:
            v = (v << 7) | (byte & 0x7F)
            if not byte & 0x80:
                parts.append(v)
                v = 0
        return ".".join(map(str, parts))

    tag, seq, end = tlv(der, 0)
    if tag != 0x30 or end != len(der):
        raise ValueError("not a DER Name")
    rdns = []
    pos = 0
    while pos < len(seq):
        tag, rset, pos = tlv(seq, pos)
        if tag != 0x31:
            raise ValueError("RDN is not a SET")
        attrs = []
        p2 = 0
        while p2 < len(rset):
            tag, atv, p2 = tlv(rset, p2)
            if tag != 0x30:
                raise ValueError("bad AttributeTypeAndValue")
            t1, oid, q = tlv(atv, 0)
            t2, val, _ = tlv(atv, q)
            if t1 != 0x06:
                raise ValueError("bad attribute type")
            text = val.decode("utf-16-be") if t2 == 0x1E else val.decode("utf-8", errors="strict")
            attrs.append(x509.NameAttribute(ObjectIdentifier(oid_str(oid)), text))
        rdns.append(x509.RelativeDistinguishedName(attrs))
    return x509.Name(rdns)


def dn_string(name: x509.Name) -> str:
    """Wire-order rendering, as strongSwan prints DNs: "C=CH, O=Org, CN=host"."""
    o = x509.NameOID
    rev = {o.COUNTRY_NAME: "C", o.STATE_OR_PROVINCE_NAME: "ST", o.LOCALITY_NAME: "L",
           o.ORGANIZATION_NAME: "O", o.ORGANIZATIONAL_UNIT_NAME: "OU", o.COMMON_NAME: "CN",
           o.EMAIL_ADDRESS: "E", o.DOMAIN_COMPONENT: "DC", o.SURNAME: "SN",
           o.SERIAL_NUMBER: "serialNumber", o.GIVEN_NAME: "G", o.TITLE: "T", o.USER_ID: "UID"}
    out = []
    for rdn in name.rdns:
        for a in rdn:
            out.append(f"{rev.get(a.oid, a.oid.dotted_string)}={a.value}")
    return ", ".join(out)
