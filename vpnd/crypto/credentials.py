"""Credentials in one place (issue 9): the certificates and keys of every connection, read
and parsed once from a parsed config into an immutable store that both IKE engines get
(rebuilt on reload). The engines receive objects, never file paths, and read no file.

The bytes come from config.credential_file (what the config loader read and --check
validated: regular files of at most MAX_FILE_BYTES). Errors name the file and never hold
key material.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from types import MappingProxyType

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from vpnd.config import credential_file
from vpnd.crypto.auth import AuthError


@dataclass(frozen=True, repr=False)
class Credentials:
    """Our certificate, the intermediate CAs sent after it (the certificate file's further
    certificates), our private key, the CAs we trust for the peer, and (IKEv1 rsa-encr)
    the peer's RSA public key."""

    cert: x509.Certificate | None = None
    chain: tuple[x509.Certificate, ...] = ()
    key: object = None
    cas: tuple[x509.Certificate, ...] = ()
    peer_pubkey: object = None

    def __repr__(self) -> str:  # never the key
        subj = self.cert.subject.rfc4514_string() if self.cert else None
        return f"Credentials(cert={subj!r}, chain={len(self.chain)}, cas={len(self.cas)})"

    def certreq_data(self) -> bytes:
        """IKEv2 CERTREQ: SHA-1 of each trusted CA's SubjectPublicKeyInfo (RFC 7296 3.7)."""
        return b"".join(hashlib.sha1(ca.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).digest()
            for ca in self.cas)


def read_bounded(path: str) -> bytes:
    # the bytes the config loader read (regular files only, bounded; no file access after
    # start-up, when the daemon may run unprivileged); read now (bounded) if it did not
    try:
        return credential_file(path)
    except OSError as e:
        raise AuthError(f"cannot read '{path}': {e.strerror}") from None


def _certs(path: str) -> tuple[x509.Certificate, ...]:
    data = read_bounded(path)
    try:
        if b"-----BEGIN" in data:
            return tuple(x509.load_pem_x509_certificates(data))
        return (x509.load_der_x509_certificate(data),)
    except ValueError:
        raise AuthError(f"'{path}' is not a PEM or DER certificate") from None


def _private_key(path: str):
    data = read_bounded(path)
    try:
        if b"-----BEGIN" in data:
            return serialization.load_pem_private_key(data, None)
        return serialization.load_der_private_key(data, None)
    except (ValueError, TypeError):  # TypeError: encrypted
        raise AuthError(f"'{path}' is not an unencrypted PEM or DER private key") from None


def _public_key(path: str):
    """PEM/DER SubjectPublicKeyInfo or PKCS#1, or a certificate's key."""
    data = read_bounded(path)
    try:
        if b"CERTIFICATE" in data:
            return x509.load_pem_x509_certificate(data).public_key()
        if b"-----BEGIN" in data:
            return serialization.load_pem_public_key(data)
        try:
            return serialization.load_der_public_key(data)
        except ValueError:
            return x509.load_der_x509_certificate(data).public_key()
    except ValueError:
        raise AuthError(f"'{path}' is not a PEM or DER public key") from None


class CredentialStore:
    """Immutable map from a connection's `auth` block to its loaded Credentials (or to the
    reason they could not be loaded, raised as AuthError when asked for)."""

    def __init__(self, entries: dict):
        self._entries = MappingProxyType(dict(entries))

    @classmethod
    def from_config(cls, config) -> "CredentialStore":
        files: dict = {}  # path -> parsed (or AuthError), each file read once

        def once(fn, path):
            key = (fn, path)
            if key not in files:
                try:
                    files[key] = fn(path)
                except AuthError as e:
                    files[key] = e
            if isinstance(files[key], AuthError):
                raise files[key]
            return files[key]

        entries: dict = {}
        for conn in config.connections:
            a = conn.auth
            if a is None or a.method not in ("cert", "rsa_encr") or a in entries:
                continue
            try:
                mine = once(_certs, a.cert) if a.cert else (None,)
                entries[a] = Credentials(
                    cert=mine[0], chain=tuple(mine[1:]),
                    key=once(_private_key, a.key) if a.key else None,
                    cas=tuple(c for path in a.ca for c in once(_certs, path)),
                    peer_pubkey=once(_public_key, a.peer_pubkey) if a.peer_pubkey else None)
            except AuthError as e:
                entries[a] = e
        return cls(entries)

    def get(self, conn) -> Credentials | None:
        """The connection's credentials; None without certificates or keys (PSK). Raises
        AuthError when its files could not be loaded."""
        a = conn.auth
        if a is None or a.method not in ("cert", "rsa_encr"):
            return None
        got = self._entries.get(a)
        if got is None:
            raise AuthError(f"credentials of connection {conn.name} were not loaded")
        if isinstance(got, AuthError):
            raise AuthError(str(got))
        return got

    def __repr__(self) -> str:
        return f"CredentialStore({len(self._entries)} auth blocks)"
