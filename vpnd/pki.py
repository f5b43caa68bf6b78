"""`vpnctl pki`: keys, a CA and gateway certificates for vpnd's `auth:`, Cisco key-strings
and fingerprints, in the spirit of strongSwan's `pki` and IOS's `crypto key` commands.

    vpnctl pki genkey [--type rsa|ecdsa] [--size N] --out gw-a.key
    vpnctl pki ca --key ca.key --dn "C=CH, O=Example, CN=Example CA" --out ca.pem
    vpnctl pki issue --ca ca.pem --ca-key ca.key --key gw-a.key \\
        --dn "C=CH, O=Example, CN=gw-a" --id 10.200.0.1 --id @gw-a.example.com --out gw-a.pem
    vpnctl pki pub --in gw-a.key [--format pem|der|key-string|ios] [--addressed-key IP] ...
    vpnctl pki pub --in peer-key-string.txt --out peer.pub     # a Cisco key-string read back
    vpnctl pki keyid --in FILE                                  # fingerprints

Cisco's `key-string` (in `crypto key pubkey-chain rsa`, and `show crypto key mypubkey rsa`)
is the hex of the DER SubjectPublicKeyInfo, in groups of 8 digits, 8 groups per line.
Private keys are written mode 0600 (PKCS#8 PEM, unencrypted: vpnd reads them unattended).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import ipaddress
import os
import re
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DER = serialization.Encoding.DER
PEM = serialization.Encoding.PEM
SPKI = serialization.PublicFormat.SubjectPublicKeyInfo


class PkiError(Exception):
    """A usage or input problem: one line for the operator."""


# -- keys ----------------------------------------------------------------------------------

_CURVES = {256: ec.SECP256R1, 384: ec.SECP384R1, 521: ec.SECP521R1}


def generate_key(kind: str = "rsa", size: int | None = None):
    if kind == "rsa":
        size = size or 3072
        if size < 2048 or size > 8192:
            raise PkiError("RSA key size must be 2048..8192 bits")
        return rsa.generate_private_key(public_exponent=65537, key_size=size)
    if kind == "ecdsa":
        size = size or 256
        if size not in _CURVES:
            raise PkiError("ECDSA key size must be 256, 384 or 521 (the NIST curves IKE knows)")
        return ec.generate_private_key(_CURVES[size]())
    raise PkiError(f"unknown key type {kind!r} (rsa or ecdsa)")


def private_pem(key) -> bytes:
    return key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def public_der(obj) -> bytes:
    """The DER SubjectPublicKeyInfo of a key, public key or certificate."""
    return _public_key(obj).public_bytes(DER, SPKI)


def _public_key(obj):
    if isinstance(obj, x509.Certificate):
        return obj.public_key()
    if hasattr(obj, "private_bytes"):
        return obj.public_key()
    return obj


# -- Cisco key-string ----------------------------------------------------------------------

def to_key_string(der: bytes, indent: str = "  ") -> str:
    """IOS's layout: uppercase hex, 8-digit groups, 8 groups (32 bytes) per line."""
    h = der.hex().upper()
    groups = [h[i:i + 8] for i in range(0, len(h), 8)]
    return "\n".join(indent + " ".join(groups[i:i + 8]) for i in range(0, len(groups), 8)) + "\n"


_HEX_LINE = re.compile(r"^[0-9A-Fa-f\s]+$")


def parse_key_string(text: str):
    """A public key from IOS key-string hex as pasted: either a whole `key-string` ... `quit`
    block (other configuration lines around it are skipped) or bare hex lines (`Key Data:`
    of `show crypto key mypubkey rsa`). Raises PkiError."""
    lines = [l.strip() for l in text.splitlines()]
    low = [l.lower() for l in lines]
    if "key-string" in low:
        start = low.index("key-string") + 1
        end = low.index("quit", start) if "quit" in low[start:] else len(lines)
        lines = lines[start:end]
    hexdigits = []
    for s in lines:
        if not s or s.lower() in ("key data:", "quit") or s.startswith("!"):
            continue
        if not _HEX_LINE.match(s):
            raise PkiError(f"not key-string hex: {s[:40]!r}")
        hexdigits.append(re.sub(r"\s", "", s))
    h = "".join(hexdigits)
    if not h:
        raise PkiError("no key-string hex found")
    if len(h) % 2:
        raise PkiError("key-string has an odd number of hex digits")
    try:
        return serialization.load_der_public_key(bytes.fromhex(h))
    except ValueError:
        raise PkiError("key-string is not a DER SubjectPublicKeyInfo (RSA or EC public key)") from None


def ios_pubkey_chain(der: bytes, *, addressed: str | None = None, named: str | None = None,
                     usage: str = "encryption") -> str:
    """The `crypto key pubkey-chain rsa` block a Cisco peer pastes to know this key."""
    if bool(addressed) == bool(named):
        raise PkiError("give exactly one of --addressed-key IP or --named-key NAME")
    head = f" addressed-key {addressed}" if addressed else f" named-key {named}"
    lines = ["crypto key pubkey-chain rsa", f"{head} {usage}", "  key-string"]
    body = to_key_string(der, indent="   ")
    return "\n".join(lines) + "\n" + body + "  quit\n exit\n"


# -- loading anything ------------------------------------------------------------------------

def load_any(path: str):
    """A private key, certificate or public key from PEM, DER or IOS key-string text."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise PkiError(f"{path}: {e.strerror}") from None
    if b"-----BEGIN" in data:
        if b"CERTIFICATE-----" in data:
            return x509.load_pem_x509_certificate(data)
        if b"PRIVATE KEY-----" in data:
            try:
                return serialization.load_pem_private_key(data, password=None)
            except TypeError:
                raise PkiError(f"{path}: the private key is encrypted") from None
        try:
            return serialization.load_pem_public_key(data)
        except ValueError:
            raise PkiError(f"{path}: not a PEM key or certificate") from None
    for loader in (x509.load_der_x509_certificate,
                   lambda d: serialization.load_der_private_key(d, password=None),
                   serialization.load_der_public_key):
        try:
            return loader(data)
        except (ValueError, TypeError):
            continue
    try:
        return parse_key_string(data.decode("ascii"))
    except UnicodeDecodeError:
        raise PkiError(f"{path}: not a PEM/DER key or certificate, nor key-string hex") from None


def _load_private(path: str):
    k = load_any(path)
    if not hasattr(k, "private_bytes"):
        raise PkiError(f"{path}: not a private key")
    return k


# -- certificates ----------------------------------------------------------------------------

def _name(dn: str) -> x509.Name:
    from vpnd.config import parse_identity
    try:
        ident = parse_identity(dn)
    except ValueError as e:
        raise PkiError(f"--dn: {e}") from None
    if ident.kind != "dn":
        raise PkiError(f"--dn: {dn!r} is not a distinguished name (C=.., O=.., CN=..)")
    return ident.x509_name()


def _san(ident_text: str) -> x509.GeneralName:
    """An identity as vpnd's config spells it (local_id) as a subjectAltName."""
    from vpnd.config import parse_identity
    try:
        ident = parse_identity(ident_text)
    except ValueError as e:
        raise PkiError(f"--id: {e}") from None
    if ident.kind in ("ipv4", "ipv6"):
        return x509.IPAddress(ipaddress.ip_address(ident.value))
    if ident.kind == "fqdn":
        return x509.DNSName(ident.value)
    if ident.kind == "email":
        return x509.RFC822Name(ident.value)
    raise PkiError(f"--id {ident_text!r}: a DN is the subject (--dn), not a subjectAltName")


def _sig_hash(signer):
    if isinstance(signer, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(signer, ec.EllipticCurvePrivateKey) and signer.curve.key_size > 256:
        return hashes.SHA384() if signer.curve.key_size == 384 else hashes.SHA512()
    return hashes.SHA256()


def _validity(days: int):
    if not 1 <= days <= 36500:
        raise PkiError("--days must be 1..36500")
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    return now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)


def _key_usage(pub, ca: bool) -> x509.KeyUsage:
    enc = isinstance(pub, rsa.RSAPublicKey) and not ca  # RSA: also key encipherment
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=enc,
                         data_encipherment=False, key_agreement=False, key_cert_sign=ca,
                         crl_sign=ca, encipher_only=False, decipher_only=False)


def make_ca(key, dn: str, days: int = 3650) -> x509.Certificate:
    name = _name(dn)
    nb, na = _validity(days)
    pub = key.public_key()
    b = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(pub)
         .serial_number(x509.random_serial_number()).not_valid_before(nb).not_valid_after(na)
         .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
         .add_extension(_key_usage(pub, True), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False))
    return b.sign(key, _sig_hash(key))


def issue(ca_cert: x509.Certificate, ca_key, pub, dn: str, ids: list[str],
          days: int = 1825) -> x509.Certificate:
    """A gateway certificate: subject DN, the IKE identities as subjectAltNames, usable for
    IKE by strongSwan and IOS (serverAuth + clientAuth; RSA also key encipherment)."""
    if _public_key(ca_cert).public_bytes(DER, SPKI) != ca_key.public_key().public_bytes(DER, SPKI):
        raise PkiError("--ca-key is not the key of --ca")
    bc = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value \
        if any(e.oid == x509.oid.ExtensionOID.BASIC_CONSTRAINTS for e in ca_cert.extensions) else None
    if bc is None or not bc.ca:
        raise PkiError("--ca is not a CA certificate (basicConstraints CA:TRUE)")
    nb, na = _validity(days)
    na = min(na, ca_cert.not_valid_after_utc)
    b = (x509.CertificateBuilder().subject_name(_name(dn)).issuer_name(ca_cert.subject)
         .public_key(pub).serial_number(x509.random_serial_number())
         .not_valid_before(nb).not_valid_after(na)
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(_key_usage(pub, False), critical=True)
         .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                               ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                        critical=False))
    if ids:
        b = b.add_extension(x509.SubjectAlternativeName([_san(i) for i in ids]), critical=False)
    return b.sign(ca_key, _sig_hash(ca_key))


# -- fingerprints ----------------------------------------------------------------------------

def fingerprints(obj) -> list[tuple[str, str]]:
    """strongSwan `pki --keyid` style: hashes of the SubjectPublicKeyInfo and of the
    subjectPublicKey bit string (RFC 5280 4.2.1.2 method 1 keyid); for a certificate also the
    certificate's own SHA-256 (openssl x509 -fingerprint -sha256, IOS `show crypto pki`)."""
    spki = public_der(obj)
    keyid = x509.SubjectKeyIdentifier.from_public_key(_public_key(obj)).digest
    out = [("SHA-256 of subjectPublicKeyInfo", hashlib.sha256(spki).hexdigest()),
           ("keyid (SHA-1 of subjectPublicKeyInfo)", hashlib.sha1(spki).hexdigest()),
           ("subjkey (SHA-1 of subjectPublicKey)", keyid.hex())]
    if isinstance(obj, x509.Certificate):
        cert_fp = obj.fingerprint(hashes.SHA256()).hex()
        out.append(("SHA-256 of the certificate", cert_fp))
    return out


def _colons(h: str) -> str:
    return ":".join(h[i:i + 2] for i in range(0, len(h), 2))


# -- command line ----------------------------------------------------------------------------

def register(sub) -> None:
    p = sub.add_parser("pki", help="keys, a CA, gateway certificates, Cisco key-strings, fingerprints")
    ps = p.add_subparsers(dest="pki_command", required=True, metavar="PKI_COMMAND")
    g = ps.add_parser("genkey", help="generate a private key (PKCS#8 PEM, written 0600)")
    g.add_argument("--type", choices=("rsa", "ecdsa"), default="rsa")
    g.add_argument("--size", type=int, help="RSA bits (default 3072) or ECDSA curve 256|384|521")
    g.add_argument("--out", metavar="FILE", help="write here (mode 0600) instead of stdout")
    c = ps.add_parser("ca", help="a self-signed CA certificate")
    c.add_argument("--key", required=True, metavar="FILE", help="the CA's private key")
    c.add_argument("--dn", required=True, help='subject, e.g. "C=CH, O=Example, CN=Example CA"')
    c.add_argument("--days", type=int, default=3650)
    c.add_argument("--out", metavar="FILE")
    i = ps.add_parser("issue", help="a gateway certificate signed by the CA")
    i.add_argument("--ca", required=True, metavar="FILE")
    i.add_argument("--ca-key", required=True, metavar="FILE")
    i.add_argument("--key", required=True, metavar="FILE",
                   help="the gateway's private or public key (only its public half is used)")
    i.add_argument("--dn", required=True, help="subject DN (vpnd's local_id when it is a DN)")
    i.add_argument("--id", action="append", default=[], metavar="ID",
                   help="an identity vpnd uses as local_id: IP, @fqdn or user@fqdn (repeatable)")
    i.add_argument("--days", type=int, default=1825)
    i.add_argument("--out", metavar="FILE")
    u = ps.add_parser("pub", help="print a public key: PEM, DER, Cisco key-string or an IOS "
                                  "pubkey-chain block; reads key-string hex back")
    u.add_argument("--in", dest="infile", required=True, metavar="FILE",
                   help="private key, public key, certificate (PEM/DER) or key-string hex")
    u.add_argument("--format", choices=("pem", "der", "key-string", "ios"), default="pem")
    u.add_argument("--addressed-key", metavar="IP", help="with --format ios")
    u.add_argument("--named-key", metavar="NAME", help="with --format ios")
    u.add_argument("--usage", choices=("encryption", "signature"), default="encryption",
                   help="with --format ios (rsa-encr uses encryption keys)")
    u.add_argument("--out", metavar="FILE")
    k = ps.add_parser("keyid", help="fingerprints of a key or certificate")
    k.add_argument("--in", dest="infile", required=True, metavar="FILE")


def _write(path: str | None, data: bytes, secret: bool = False) -> None:
    if path is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    if secret:  # created 0600 from the start: never readable by others, not even briefly
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    else:
        with open(path, "wb") as f:
            f.write(data)


def run(args) -> None:
    cmd = args.pki_command
    if cmd == "genkey":
        if args.out is None and sys.stdout.isatty():
            raise PkiError("refusing to print a private key to a terminal; use --out FILE")
        _write(args.out, private_pem(generate_key(args.type, args.size)), secret=True)
    elif cmd == "ca":
        cert = make_ca(_load_private(args.key), args.dn, args.days)
        _write(args.out, cert.public_bytes(PEM))
    elif cmd == "issue":
        ca = load_any(args.ca)
        if not isinstance(ca, x509.Certificate):
            raise PkiError(f"{args.ca}: not a certificate")
        ca_key = _load_private(args.ca_key)
        pub = _public_key(load_any(args.key))
        cert = issue(ca, ca_key, pub, args.dn, args.id, args.days)
        _write(args.out, cert.public_bytes(PEM))
    elif cmd == "pub":
        obj = load_any(args.infile)
        der = public_der(obj)
        if args.format == "pem":
            data = _public_key(obj).public_bytes(PEM, SPKI)
        elif args.format == "der":
            data = der
        elif args.format == "key-string":
            data = to_key_string(der).encode()
        else:
            if not isinstance(_public_key(obj), rsa.RSAPublicKey):
                raise PkiError("IOS's crypto key pubkey-chain rsa holds RSA keys only")
            data = ios_pubkey_chain(der, addressed=args.addressed_key, named=args.named_key,
                                    usage=args.usage).encode()
        _write(args.out, data)
    elif cmd == "keyid":
        for label, h in fingerprints(load_any(args.infile)):
            print(f"{label}:\n             {_colons(h)}")


def main(args, parser=None) -> int:
    try:
        run(args)
    except PkiError as e:
        print(f"vpnctl pki: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"vpnctl pki: {e.filename or ''}: {e.strerror}", file=sys.stderr)
        return 1
    return 0
