"""Phase-1 identities (RFC 2407 4.6.2.1). The certificates and keys of rsa-sig / rsa-encr
come from crypto/credentials.py; chains and certificate identities are checked in
crypto/certs.py (both shared with IKEv2).

Identities are config.Identity values (config.parse_identity reads the contract's forms:
an address, "@name" or a bare host name, "user@domain", a DN "C=CH, O=Org, CN=host" or
"/C=CH/O=Org/CN=host" with "\\," escapes); `%any` matches every identity.
"""

from __future__ import annotations

import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from vpnd.config import Identity, parse_identity
from vpnd.ike.v1 import constants as C
from vpnd.textsafe import DEFAULT_LIMIT, ELLIPSIS, safe
from vpnd.ike.v1.payloads import ID

# how a DN attribute is written back (status, logs): the names config.parse_identity
# writes, so that a shown DN can be pasted into the config as it is
_DN_NAMES = {
    NameOID.COUNTRY_NAME: "C", NameOID.STATE_OR_PROVINCE_NAME: "ST", NameOID.LOCALITY_NAME: "L",
    NameOID.ORGANIZATION_NAME: "O", NameOID.ORGANIZATIONAL_UNIT_NAME: "OU", NameOID.COMMON_NAME: "CN",
    NameOID.EMAIL_ADDRESS: "E", NameOID.DOMAIN_COMPONENT: "DC", NameOID.SURNAME: "SN",
    NameOID.SERIAL_NUMBER: "serialNumber", NameOID.GIVEN_NAME: "G", NameOID.TITLE: "T",
    NameOID.USER_ID: "UID", NameOID.STREET_ADDRESS: "STREET", NameOID.POSTAL_CODE: "postalCode",
}


def id_payload(ident) -> ID:
    """ID payload for our identity (a config.Identity, or text the config's parser reads:
    an address, @fqdn, user@fqdn, a DN). Phase-1 IDs carry protocol 0 / port 0 (RFC 2407
    4.6.2: both MAY be zero), as strongSwan sends them. Raises ValueError on bad text."""
    if not isinstance(ident, Identity):
        ident = parse_identity(str(ident))
    kind = ident.kind
    if kind == "dn":
        return ID(C.ID_DER_ASN1_DN, 0, 0, ident.x509_name().public_bytes())
    if kind == "fqdn":
        return ID(C.ID_FQDN, 0, 0, ident.value.encode())
    if kind == "email":
        return ID(C.ID_USER_FQDN, 0, 0, ident.value.encode())
    if kind in ("ipv4", "ipv6"):
        ip = ipaddress.ip_address(ident.value)
        return ID(C.ID_IPV4_ADDR if ip.version == 4 else C.ID_IPV6_ADDR, 0, 0, ip.packed)
    raise ValueError(f"identity {ident} has no ID payload")


def describe_id(p: ID) -> str:
    """Human form of a received identity (for logs and status): peer-supplied, so escaped
    and bounded (textsafe, issue 8.4) -- an ID must not forge a log line."""
    try:
        if p.id_type == C.ID_IPV4_ADDR and len(p.data) == 4:
            return str(ipaddress.IPv4Address(p.data))
        if p.id_type == C.ID_IPV6_ADDR and len(p.data) == 16:
            return str(ipaddress.IPv6Address(p.data))
        if p.id_type == C.ID_FQDN:  # written as in the config (and as IKEv2's status shows it)
            return safe("@" + p.data.decode("utf-8", "surrogateescape"))
        if p.id_type == C.ID_USER_FQDN:
            return safe(p.data)
        if p.id_type == C.ID_DER_ASN1_DN:  # commas in values escaped as the config reads them
            text = ", ".join(f"{safe(k, 64)}={safe(v, 128).replace(',', chr(92) + ',')}"
                             for k, v in _load_name(p.data))
            return text if len(text) <= DEFAULT_LIMIT else text[:DEFAULT_LIMIT - 1] + ELLIPSIS
    except Exception:
        pass
    return safe(f"type{p.id_type}:{p.data.hex()}")


_OID_SHORT = {oid.dotted_string: k for oid, k in _DN_NAMES.items()}


def _der_items(data: bytes):
    """(tag, value) of consecutive DER TLVs; raises on bad lengths."""
    pos = 0
    while pos < len(data):
        tag = data[pos]
        ln = data[pos + 1]
        pos += 2
        if ln & 0x80:
            n = ln & 0x7F
            if n == 0 or n > 3:
                raise ValueError("bad DER length")
            ln = int.from_bytes(data[pos:pos + n], "big")
            pos += n
        if pos + ln > len(data):
            raise ValueError("DER overrun")
        yield tag, data[pos:pos + ln]
        pos += ln


def _oid_str(b: bytes) -> str:
    parts = [b[0] // 40, b[0] % 40]
    v = 0
    for c in b[1:]:
        v = (v << 7) | (c & 0x7F)
        if not c & 0x80:
            parts.append(v)
            v = 0
    return ".".join(map(str, parts))


def _load_name(der: bytes) -> list[tuple[str, str]]:
    """A DER Name as [(short name, value)], for display only (cryptography has no DN loader)."""
    (tag, seq), = list(_der_items(der))
    out = []
    for _, rdn in _der_items(seq):
        for _, atv in _der_items(rdn):
            (_, oid), (_, val) = list(_der_items(atv))
            dotted = _oid_str(oid)
            out.append((_OID_SHORT.get(dotted, dotted), val.decode("utf-8", "replace")))
    return out


def id_matches(expected, got: ID) -> bool:
    """Is the received ID the configured remote identity (config.Identity or text)?
    None / %any accept anything."""
    if expected is None or expected == "%any" or getattr(expected, "kind", None) == "any":
        return True
    want = id_payload(expected)
    if want.id_type != got.id_type:
        # an FQDN configured as a bare name may arrive as either FQDN form
        return False
    if want.id_type in (C.ID_FQDN, C.ID_USER_FQDN):
        return want.data.lower() == got.data.lower()
    if want.id_type == C.ID_DER_ASN1_DN:
        # compare attribute values, not DER: string types (UTF8/Printable) may differ
        try:
            return _load_name(want.data) == _load_name(got.data)
        except Exception:
            return False
    return want.data == got.data


# -- certificates ----------------------------------------------------------------------


def cert_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)

