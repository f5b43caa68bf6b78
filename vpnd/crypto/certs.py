"""X.509 for IKEv1 and IKEv2 alike: the certificate path from a peer's end-entity certificate
through intermediate CAs to a configured CA, and whether a certificate carries an IKE
identity. One implementation for both versions (issue 9).

Path validation follows RFC 5280 6.1 as far as IKE needs it (RFC 4945 5): signatures along
the chain, validity at `now` (the injected wall clock), basicConstraints cA for every issuer
with its pathLenConstraint, keyUsage keyCertSign for issuers that carry keyUsage, unknown
critical extensions refused. Revocation (CRL/OCSP) is not checked. cryptography's
`x509.verification` is not used: it is a Web PKI profile (it wants SANs, EKUs and AKIs
that IPsec certificates, e.g. strongSwan `pki` or Cisco IOS ones with a DN identity only,
often lack) and its ClientVerifier appeared in cryptography 43 with no extension policy
before 45.

The peer controls the intermediates: the candidates, the path length and the number of
signature checks are bounded so that a crafted CERT flood costs a fixed amount of work.
"""

from __future__ import annotations

import datetime
import ipaddress
from typing import Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.x509.oid import ExtensionOID, NameOID

from vpnd.config import Identity
from vpnd.crypto.auth import parse_der_name
from vpnd.textsafe import safe

# certificates in a path below the trust anchor (end entity + intermediates); strongSwan
# stops at 7 intermediates, Cisco IOS at fewer; real IPsec PKIs use 1-2
MAX_PATH = 6
# intermediates considered (received in CERT payloads, then configured); the rest ignored
MAX_CANDIDATES = 10
# signature checks one verification may spend (path search over crafted look-alike CAs)
MAX_SIGNATURE_CHECKS = 24

# ID types: the same numbers in IKEv1 (RFC 2407 4.6.2.1) and IKEv2 (RFC 7296 3.5)
ID_IPV4_ADDR, ID_FQDN, ID_USER_FQDN, ID_IPV6_ADDR, ID_DER_ASN1_DN = 1, 2, 3, 5, 9

# extensions whose meaning this verifier knows or may ignore; another one marked critical
# makes its certificate unusable (RFC 5280 4.2)
_KNOWN_CRITICAL = {ExtensionOID.BASIC_CONSTRAINTS, ExtensionOID.KEY_USAGE,
                   ExtensionOID.SUBJECT_ALTERNATIVE_NAME, ExtensionOID.EXTENDED_KEY_USAGE,
                   ExtensionOID.CERTIFICATE_POLICIES, ExtensionOID.SUBJECT_KEY_IDENTIFIER,
                   ExtensionOID.AUTHORITY_KEY_IDENTIFIER}

# DN attribute names as config.parse_identity writes them (its canonical form)
_DN_NAMES = {
    NameOID.COUNTRY_NAME: "C", NameOID.STATE_OR_PROVINCE_NAME: "ST", NameOID.LOCALITY_NAME: "L",
    NameOID.ORGANIZATION_NAME: "O", NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.COMMON_NAME: "CN", NameOID.EMAIL_ADDRESS: "E", NameOID.DOMAIN_COMPONENT: "DC",
    NameOID.SURNAME: "SN", NameOID.SERIAL_NUMBER: "serialNumber", NameOID.GIVEN_NAME: "G",
    NameOID.TITLE: "T", NameOID.USER_ID: "UID", NameOID.STREET_ADDRESS: "STREET",
    NameOID.POSTAL_CODE: "postalCode",
}


def _validity(cert: x509.Certificate) -> tuple[datetime.datetime, datetime.datetime]:
    return cert.not_valid_before_utc, cert.not_valid_after_utc


def _label(cert: x509.Certificate) -> str:
    # DNs of certificates are peer-supplied text (RFC 7296 leaves them arbitrary)
    return safe(dn_identity(cert.subject).value or "(empty subject)")


def _ext(cert: x509.Certificate, cls):
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None


def _unknown_critical(cert: x509.Certificate) -> str | None:
    for e in cert.extensions:
        if e.critical and e.oid not in _KNOWN_CRITICAL:
            return e.oid.dotted_string
    return None


def _issuer_problem(ca: x509.Certificate, below: int) -> str | None:
    """Why `ca` may not issue a certificate that has `below` intermediates under it."""
    bc = _ext(ca, x509.BasicConstraints)
    if bc is None or not bc.ca:
        return f"issuer {_label(ca)} is not a CA (basicConstraints)"
    if bc.path_length is not None and below > bc.path_length:
        return f"CA {_label(ca)} allows {bc.path_length} intermediate(s) below it, the path has {below}"
    ku = _ext(ca, x509.KeyUsage)
    if ku is not None and not ku.key_cert_sign:
        return f"CA {_label(ca)} may not sign certificates (keyUsage)"
    return None


class _Search:
    def __init__(self, anchors, candidates, now):
        self.anchors = anchors
        self.anchor_der = {a.tbs_certificate_bytes for a in anchors}
        self.candidates = candidates
        self.now = now
        self.budget = MAX_SIGNATURE_CHECKS
        self.reason: str | None = None  # the first refusal seen, reported if no path works

    def refuse(self, why: str) -> None:
        if self.reason is None:
            self.reason = why

    def time_ok(self, cert: x509.Certificate, what: str) -> bool:
        start, end = _validity(cert)
        if self.now < start:
            self.refuse(f"{what} {_label(cert)} not yet valid (from {start:%Y-%m-%d %H:%M} UTC)")
            return False
        if self.now > end:
            self.refuse(f"{what} {_label(cert)} expired ({end:%Y-%m-%d %H:%M} UTC)")
            return False
        return True

    def signed(self, cert: x509.Certificate, issuer: x509.Certificate) -> bool:
        if not same_dn(cert.issuer, issuer.subject):
            return False
        if self.budget <= 0:
            self.refuse("too many candidate issuers")
            return False
        self.budget -= 1
        try:
            # RSA PKCS#1 v1.5 and PSS, ECDSA, Ed25519/Ed448, as cryptography supports them
            cert.verify_directly_issued_by(issuer)
            return True
        except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
            self.refuse(f"bad signature on {_label(cert)} by {_label(issuer)}")
            return False

    def extend(self, path: list[x509.Certificate]) -> bool:
        """Depth-first: can `path` (end entity first) be completed up to an anchor?"""
        cur = path[-1]
        below = len(path) - 1  # intermediates under the next issuer
        for anchor in self.anchors:
            if self.signed(cur, anchor):
                why = _issuer_problem(anchor, below)
                if why:
                    self.refuse(why)
                elif self.time_ok(anchor, "CA certificate"):
                    return True
        if len(path) >= MAX_PATH:
            self.refuse(f"path longer than {MAX_PATH} certificates")
            return False
        for cand in self.candidates:
            if any(cand is p or cand.tbs_certificate_bytes == p.tbs_certificate_bytes for p in path):
                continue
            if cand.tbs_certificate_bytes in self.anchor_der or not self.signed(cur, cand):
                continue
            why = _issuer_problem(cand, below) or (
                f"certificate {_label(cand)} has an unknown critical extension {oid}"
                if (oid := _unknown_critical(cand)) else None)
            if why:
                self.refuse(why)
                continue
            if self.time_ok(cand, "intermediate CA") and self.extend(path + [cand]):
                return True
        return False


def verify_chain(cert: x509.Certificate, anchors: Sequence[x509.Certificate],
                 now: datetime.datetime, intermediates: Iterable[x509.Certificate] = ()) -> str | None:
    """None when `cert` chains to one of `anchors` (the configured CAs) at `now` (aware
    UTC), through `intermediates` as needed (the peer's further CERT payloads first, then
    configured ones); else why not, in one line for the log."""
    if not anchors:
        return "no CA configured to verify the peer certificate"
    try:
        search = _Search(list(anchors), list(intermediates)[:MAX_CANDIDATES], now)
        if not search.time_ok(cert, "certificate"):
            return search.reason
        oid = _unknown_critical(cert)
        if oid:
            return f"certificate {_label(cert)} has an unknown critical extension {oid}"
        if search.extend([cert]):
            return None
        return f"not trusted: {search.reason or f'no path to a trusted CA for issuer {safe(dn_identity(cert.issuer).value)}'}"
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        # certificates that parse but whose extensions do not (cryptography decodes lazily)
        return f"unusable certificate ({type(e).__name__})"


def load_der(blobs: Iterable[bytes]) -> list[x509.Certificate]:
    """The peer's CERT payloads that parse, in order, at most 1 + MAX_CANDIDATES."""
    out = []
    for der in blobs:
        if len(out) > MAX_CANDIDATES:
            break
        try:
            out.append(x509.load_der_x509_certificate(der))
        except ValueError:
            continue
    return out


# -- identities ---------------------------------------------------------------------------

def dn_identity(name: x509.Name | bytes) -> Identity:
    """A DN (x509.Name or DER) as the config.Identity that config.parse_identity gives for
    its text: attribute names as the config writes them, values stripped, RDNs in order.
    Attributes the config has no name for keep their dotted OID. Raises ValueError on bad
    DER."""
    if isinstance(name, (bytes, bytearray)):
        name = parse_der_name(bytes(name))
    rdns = []
    for rdn in name.rdns:
        for a in rdn:
            value = a.value if isinstance(a.value, str) else a.value.hex()
            rdns.append((_DN_NAMES.get(a.oid, a.oid.dotted_string), value.strip()))
    text = ", ".join(f"{k}={v.replace(',', chr(92) + ',')}" for k, v in rdns)
    return Identity("dn", text, tuple(rdns))


def _dn_key(ident: Identity) -> tuple:
    # RFC 5280 7.1 / RFC 4518: names compare without regard to case and repeated spaces
    return tuple((k.upper(), " ".join(v.split()).casefold()) for k, v in ident.rdns)


def same_dn(a: x509.Name | bytes | Identity, b: x509.Name | bytes | Identity) -> bool:
    """Are two DNs (x509.Name, DER or a config Identity of kind dn) the same name?"""
    try:
        ia = a if isinstance(a, Identity) else dn_identity(a)
        ib = b if isinstance(b, Identity) else dn_identity(b)
    except ValueError:
        return False
    return _dn_key(ia) == _dn_key(ib)


def cert_carries_id(cert: x509.Certificate, id_type: int, id_data: bytes) -> bool:
    """Is the IKE identity (ID payload type and data, IKEv1 or IKEv2) one the certificate
    vouches for: its subject DN, or an IP address / DNS name / e-mail address in its
    subjectAltName (RFC 4945 3.1)?"""
    try:
        if id_type == ID_DER_ASN1_DN:
            return bool(cert.subject.rdns) and same_dn(cert.subject, id_data)
        san = _ext(cert, x509.SubjectAlternativeName)
        if san is None:
            return False
        if id_type in (ID_IPV4_ADDR, ID_IPV6_ADDR):
            if len(id_data) != (4 if id_type == ID_IPV4_ADDR else 16):
                return False
            ip = ipaddress.ip_address(id_data)
            return ip in san.get_values_for_type(x509.IPAddress)
        if id_type in (ID_FQDN, ID_USER_FQDN):
            want = id_data.decode("ascii").rstrip(".").lower()
            kind = x509.DNSName if id_type == ID_FQDN else x509.RFC822Name
            return any(v.rstrip(".").lower() == want for v in san.get_values_for_type(kind))
    except (ValueError, UnicodeDecodeError, TypeError):
        return False
    return False
