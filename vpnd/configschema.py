"""The configuration's schema: its types and defaults (the frozen dataclasses the daemon
and the IKE cores read), bounded file reading, and the generic key checks that report one
problem per line with its key path. vpnd/config.py builds on it: YAML loading and the
semantic checks of daemon and connection sections (issue 9).

Everything here is re-exported by vpnd.config, which stays the module to import.
"""
from __future__ import annotations

import base64
import binascii
import difflib
import hmac
import ipaddress
import errno
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from vpnd import proposals as _vocab
from vpnd.proposals import AEAD, Proposal, ProposalError, deprecated_in, parse_proposals

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_PATH = "/etc/vpnd/vpnd.yaml"
DEFAULT_SOCKET = "/run/vpnd/vpnd.sock"
# strongSwan-like defaults: modern, no legacy algorithm (proposals.py module docstring).
DEFAULT_IKE_V2 = "aes128-sha256-modp2048, aes256gcm16-prfsha384-ecp384"
DEFAULT_IKE_V1 = "aes128-sha256-modp2048, aes256-sha384-ecp384"  # IKEv1 has no AEAD for phase 1
DEFAULT_ESP = "aes128gcm16, aes128-sha256"

# Bounds on what a config may make vpnd read (issue 8.8): a hostile or mistaken file must
# not exhaust memory or time. Real configs are a few KiB; a CA bundle well under 1 MiB.
MAX_CONFIG_BYTES = 1 << 20
MAX_FILE_BYTES = 1 << 20        # certificate, key, CA and public key files
MAX_PSK_FILE_BYTES = 64 << 10
MAX_YAML_NODES = 100_000        # YAML nodes after expanding aliases (anchors: *name)

SPI_MIN = 256          # RFC 4303 2.1: SPIs 1..255 are reserved by IANA, 0 is local use
SPI_MAX = 2**32 - 1


class ConfigError(Exception):
    """All problems of a configuration, one line each."""

    def __init__(self, problems: list[str]):
        self.problems = [one_line(p) for p in problems]
        super().__init__("\n".join(self.problems))


def one_line(text: str) -> str:
    """`text` with line breaks and other unprintable characters escaped: a user value
    quoted in a problem (a file name, an identity) must not split its line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


class Secret:
    """Bytes that never print: repr/str give `***`."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes):
        self._value = bytes(value)

    @property
    def value(self) -> bytes:
        return self._value

    def __len__(self) -> int:
        return len(self._value)

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = lambda self: "***"  # noqa: E731

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(("Secret", len(self._value)))

    def __reduce__(self):  # keep pickling explicit rather than leaking via __dict__
        return (Secret, (self._value,))


# -- identities (RFC 7296 3.5, RFC 2407 4.6.2.1; the seed's `crypto isakmp identity`) -------

_DN_ATTRS = {
    "C": "C", "ST": "ST", "S": "ST", "L": "L", "O": "O", "OU": "OU", "CN": "CN",
    "E": "E", "EMAIL": "E", "EMAILADDRESS": "E", "DC": "DC", "SN": "SN",
    "SERIALNUMBER": "serialNumber", "G": "G", "GN": "G", "T": "T", "TITLE": "T",
    "UID": "UID", "STREET": "STREET", "POSTALCODE": "postalCode",
}
_FQDN = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)"
                   r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$")


@dataclass(frozen=True)
class Identity:
    """An IKE identity.

    kind: "ipv4" | "ipv6" | "fqdn" | "email" | "dn" | "any".
    value: canonical text ("10.200.0.1", "gw.example.com", "C=CH, O=Example, CN=gw").
    rdns: for "dn", the (attribute, value) pairs in order.
    """

    kind: str
    value: str
    rdns: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        return self.value if self.kind != "fqdn" else "@" + self.value

    def x509_name(self):
        """The DN as a cryptography x509.Name (for DER encoding in ID payloads)."""
        from cryptography import x509
        from cryptography.x509.oid import NameOID
        oids = {"C": NameOID.COUNTRY_NAME, "ST": NameOID.STATE_OR_PROVINCE_NAME,
                "L": NameOID.LOCALITY_NAME, "O": NameOID.ORGANIZATION_NAME,
                "OU": NameOID.ORGANIZATIONAL_UNIT_NAME, "CN": NameOID.COMMON_NAME,
                "E": NameOID.EMAIL_ADDRESS, "DC": NameOID.DOMAIN_COMPONENT,
                "SN": NameOID.SURNAME, "serialNumber": NameOID.SERIAL_NUMBER,
                "G": NameOID.GIVEN_NAME, "T": NameOID.TITLE, "UID": NameOID.USER_ID,
                "STREET": NameOID.STREET_ADDRESS, "postalCode": NameOID.POSTAL_CODE}
        if self.kind != "dn":
            raise ValueError("not a DN identity")
        return x509.Name([x509.NameAttribute(oids[a], v) for a, v in self.rdns])


ANY_IDENTITY = Identity("any", "%any")


def parse_identity(text: str) -> Identity:
    """`10.0.0.1`, `2001:db8::1`, `@gw.example.com`, `user@example.com`, `C=CH, O=X, CN=gw`,
    `%any`; a bare host name is an FQDN as in strongSwan. Raises ValueError."""
    text = text.strip()
    if not text:
        raise ValueError("empty identity")
    if text in ("%any", "%any6"):
        return ANY_IDENTITY
    try:
        ip = ipaddress.ip_address(text)
        return Identity("ipv4" if ip.version == 4 else "ipv6", str(ip))
    except ValueError:
        pass
    if "=" in text:
        rdns = []
        # RDNs separated by commas (or '/' in the OpenSSL one-line form); "\," escapes.
        parts = re.split(r"(?<!\\)[,/]", text.lstrip("/"))
        for part in parts:
            part = part.strip()
            if not part:
                continue
            attr, sep, value = part.partition("=")
            key = _DN_ATTRS.get(attr.strip().upper())
            if not sep or key is None:
                raise ValueError(f"'{attr.strip()}' is not a DN attribute (C, ST, L, O, OU, CN, E, DC, ...)")
            value = value.strip().replace("\\,", ",")
            if not value:
                raise ValueError(f"empty value for DN attribute '{attr.strip()}'")
            if key == "C" and len(value) != 2:
                raise ValueError(f"country code '{value}' must have two letters")
            rdns.append((key, value))
        return Identity("dn", ", ".join(f"{a}={v}" for a, v in rdns), tuple(rdns))
    if text.startswith("@"):
        name = text[1:].lstrip("#")
        if not _FQDN.match(name):
            raise ValueError(f"'{text}' is not a valid host name")
        return Identity("fqdn", name.rstrip(".").lower())
    if "@" in text:
        user, _, domain = text.rpartition("@")
        if not user or not _FQDN.match(domain):
            raise ValueError(f"'{text}' is not a valid e-mail identity")
        return Identity("email", text)
    if _FQDN.match(text):
        return Identity("fqdn", text.rstrip(".").lower())
    raise ValueError(f"'{text}' is not an IP address, @fqdn, user@fqdn or DN")


# -- the typed configuration --------------------------------------------------------------

@dataclass(frozen=True)
class Timers:
    """Protocol timers in seconds (`daemon.timers`), one set read by both IKE versions.
    The defaults are those of the RFCs, Cisco IOS or strongSwan; the network-namespace
    tests compress them (tests/README.md). vpnd/ike/liveness.py applies the shared ones."""

    retransmit_base: float = 2.0    # first retransmission after this, doubled each time (RFC 7296 2.1)
    retransmit_tries: int = 5       # retransmissions before an exchange fails (2+4+...+64 = 126 s)
    half_open: float = 30.0         # a negotiation the peer leaves unfinished is dropped (strongSwan's 30 s)
    connect_retry: float = 10.0     # a failed `start: start` connection is tried again after this
    replaced_grace: float = 10.0    # IKEv1: a replaced ISAKMP SA lingers for Quick Modes in flight
    outbound_settle: float = 1.0    # IKEv1 rekey initiator: sends on the new SA this long after HASH(3)
    outbound_fallback: float = 5.0  # IKEv2 rekey responder: sends on the new SA after this without a Delete
    inbound_linger: float = 2.0     # IKEv2: a replaced CHILD_SA's inbound SA stays for packets in flight
    inbound_only_wait: float = 60.0  # IKEv1: a Quick Mode holding an inbound-only SA gives up after this


@dataclass(frozen=True)
class DaemonConfig:
    tun: str = "vpnd0"
    mtu: int | None = None                 # None = auto: outer MTU minus worst-case overhead
    mss_clamp: int | str | None = None     # None = off, "auto" = from the TUN MTU, or an MSS
    control_socket: str = DEFAULT_SOCKET
    control_group: str | None = None       # group allowed on the socket (mode 0660), else 0600
    listen: str = "%any"  # both families (strongSwan's default); 0.0.0.0 / :: = one family
    ike_port: int = 500
    natt_port: int = 4500
    log_level: str = "info"                # the default level (vpnd/logfmt.py)
    log_subsystems: tuple[tuple[str, str], ...] = ()  # log_level's per-subsystem levels
    log_format: str = "text"               # text | json (one object per line)
    aggressive_mode: bool = True           # false = Cisco `crypto isakmp aggressive-mode disable`
    invalid_spi_recovery: bool = True      # the seed's `crypto isakmp invalid-spi-recovery`
    cookie_threshold: int = 10             # half-open IKE SAs before IKEv2 cookies (RFC 7296 2.6)
    half_open_limit: int = 1000            # half-open IKE SAs beyond which new ones are dropped
    metrics: str | None = None             # Prometheus endpoint HOST:PORT or unix path (vpnd/metrics.py)
    allow_key_export: bool = False         # `vpnctl keys --wireshark` may read SA keys (keyexport.py)
    kill_switch: bool = False              # blackhole routes for remote subnets outlive the daemon
    allow_empty: bool = False              # a config without connections is valid only with this
    user: str | None = None                # after start-up run as this user (None: "vpnd" if
                                           # it exists, else root with a warning; net/privileges.py)
    timers: Timers = field(default_factory=Timers)


@dataclass(frozen=True)
class Auth:
    """How the IKE SA is authenticated.

    method "psk": `psk`; "cert" (rsa-sig / ECDSA, X.509): `cert`, `key`, `ca`;
    "rsa_encr" (IKEv1 RSA-encrypted nonces, RFC 2409 5.2): `key` (ours) and `peer_pubkey`,
    optionally `cert`/`ca` too. Paths are absolute (relative ones resolved against the
    config file's directory).
    """

    method: str
    psk: Secret | None = None
    cert: str | None = None
    key: str | None = None
    ca: tuple[str, ...] = ()
    peer_pubkey: str | None = None


@dataclass(frozen=True)
class Lifetime:
    ike: int = 86400           # seconds of the IKE / ISAKMP SA
    seconds: int = 3600        # CHILD_SA / IPsec SA (Cisco `set security-association lifetime`)
    kilobytes: int = 4608000   # Cisco's default; 0 = no volume limit


@dataclass(frozen=True)
class Dpd:
    interval: int = 30         # 0 = off
    retry: int = 5
    mode: str = "on-demand"    # periodic | on-demand
    action: str = "restart"    # restart | clear | hold (hold = back to trap)


@dataclass(frozen=True)
class Rri:
    """Reverse route injection (the seed's `reverse-route`)."""

    enabled: bool = True
    next_hop: str | None = None
    metric: int | None = None
    tag: int | None = None
    static: bool = False       # routes from the config at start-up, not only while an SA is up
    remote_peer: bool = False  # also a host route to the peer via the outer interface


@dataclass(frozen=True, repr=False)
class ManualEsp:
    spi: int
    encryption: str
    integrity: str | None
    enc_key: Secret
    auth_key: Secret

    def __repr__(self) -> str:
        return f"ManualEsp(spi={self.spi:#x}, {self.encryption}, {self.integrity})"


@dataclass(frozen=True, repr=False)
class ManualAh:
    spi: int
    integrity: str
    key: Secret

    def __repr__(self) -> str:
        return f"ManualAh(spi={self.spi:#x}, {self.integrity})"


@dataclass(frozen=True)
class ManualDirection:
    esp: ManualEsp | None = None
    ah: ManualAh | None = None
    ipcomp_cpi: int | None = None      # IPComp CPI (RFC 3173 3.3); set when the connection has comp


@dataclass(frozen=True)
class Manual:
    """`ipsec-manual`: static SAs; algorithms from the first alternatives of the first
    `esp:` / `ah:` proposal (docs/internals.md)."""

    inbound: ManualDirection
    outbound: ManualDirection
    esn: bool = False


@dataclass(frozen=True)
class AccessGroup:
    """Cisco `set ip access-group`: entries (vpnd.acl.Ace) for cleartext leaving through
    the tunnel before encryption (`out`) and arriving after decryption (`in`); an empty
    list filters nothing, a non-empty one ends with IOS's implicit deny."""

    inbound: tuple = ()
    outbound: tuple = ()


@dataclass(frozen=True)
class Connection:
    name: str
    version: int = 2
    aggressive: bool = False
    local: str | None = None
    peer: str = "%any"
    psk: Secret | None = None
    psk_file: str | None = None
    auth: Auth | None = None                 # None only for manual keying
    local_id: Identity | None = None         # None: the local address (or the cert's DN)
    remote_id: Identity | None = None        # None: the peer address; ANY_IDENTITY for %any
    ike: tuple[Proposal, ...] = ()
    esp: tuple[Proposal, ...] = ()           # ESP (maybe +AH bundle via ah_integrity)
    ah: tuple[Proposal, ...] = ()            # AH alone when esp is empty
    local_ts: tuple[Network, ...] = ()       # empty = the local outer address
    remote_ts: tuple[Network, ...] = ()      # empty = the peer address
    mode: str = "tunnel"
    start: str = "trap"
    lifetime: Lifetime = field(default_factory=Lifetime)
    idle_time: int = 0
    replay_window: int = 64
    per_host: bool = False
    dpd: Dpd = field(default_factory=Dpd)
    nat_keepalive: int = 20
    encap: bool = False
    mobike: bool = True                      # IKEv2 MOBIKE (RFC 4555), as strongSwan's default
    rri: Rri = field(default_factory=Rri)
    allow_legacy: bool = False
    manual: Manual | None = None
    comp: str | None = None                  # IPComp: "deflate" | "lzs" (or comp-lzs in esp:)
    updown: str | None = None                # script run on CHILD_SA up/down (vpnd/updown.py)
    updown_timeout: float = 10.0
    access_group: AccessGroup | None = None  # cleartext filter (vpnd/esp/acl.py)
    childless: str = "allow"                 # IKEv2 childless IKE SAs (RFC 6023): allow |
                                             # prefer | force | never (ike/v2/childless.py)

    @property
    def dynamic(self) -> bool:
        """A dynamic crypto map: peer %any, respond only."""
        return self.peer == "%any"

    @property
    def child_proposals(self) -> tuple[Proposal, ...]:
        """What phase 2 / CHILD_SA negotiation offers: ESP (bundles included) or AH alone."""
        return self.esp or self.ah


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    connections: tuple[Connection, ...] = ()
    path: str | None = None
    warnings: tuple[str, ...] = ()

    def connection(self, name: str) -> Connection:
        for c in self.connections:
            if c.name == name:
                return c
        raise KeyError(name)


def read_file(path: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; OSError otherwise.

    A FIFO, a device (/dev/zero) or a directory is refused without reading (O_NONBLOCK:
    opening a FIFO must not wait for a writer), and nothing past `limit` is read even if
    the file grows meanwhile.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if st.st_size > limit:
            raise OSError(errno.EFBIG, f"larger than {_size(limit)}")
        chunks, total = [], 0
        while total <= limit:
            chunk = os.read(fd, min(65536, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise OSError(errno.EFBIG, f"larger than {_size(limit)}")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and not n % (1 << 20) else f"{n >> 10} KiB"


# -- the checker ----------------------------------------------------------------------------

_MISSING = object()
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _tname(v: Any) -> str:
    if v is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string",
            list: "list", dict: "mapping"}.get(type(v), type(v).__name__)


def _show(v: Any) -> str:
    """A short quote of a user value for messages (never used for secrets)."""
    s = repr(v) if isinstance(v, str) else str(v)
    return s if len(s) <= 60 else s[:57] + "..."


class _Bad(Exception):
    """One problem at the current key; already recorded."""


class _Schema:
    """Generic checks: problem bookkeeping and converters (value, key path) -> value."""

    def __init__(self, base_dir: str):
        self.base_dir = base_dir
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self.files: dict[str, bytes] = {}   # every file read, by absolute path

    # --- problem bookkeeping
    def err(self, path: str, msg: str) -> None:
        line = one_line(f"{path}: {msg}" if path else msg)
        if line not in self.problems:
            self.problems.append(line)

    def fail(self, path: str, msg: str):
        self.err(path, msg)
        raise _Bad()

    def mapping(self, v: Any, path: str, keys: dict[str, Any]) -> dict:
        """Check v is a mapping with only `keys`; unknown keys are reported with a hint."""
        if v is None:
            return {}
        if not isinstance(v, dict):
            self.fail(path, f"expected a mapping, got {_tname(v)}")
        out = {}
        for k, val in v.items():
            if not isinstance(k, str):
                self.err(path, f"key {_show(k)} must be a string")
                continue
            if k not in keys:
                near = difflib.get_close_matches(k, list(keys), n=1, cutoff=0.6)
                hint = f" (did you mean '{near[0]}'?)" if near else ""
                self.err(_join(path, k), f"unknown key{hint}")
                continue
            out[k] = val
        return out

    def field(self, m: dict, key: str, path: str, conv: Callable, default: Any) -> Any:
        """Convert m[key] with conv(value, path); on a problem record it and return default."""
        if key not in m:
            return default
        try:
            return conv(m[key], _join(path, key))
        except _Bad:
            return default

    # --- scalar converters (value, path) -> value, raise _Bad via fail
    def boolean(self, v, path):
        if not isinstance(v, bool):
            self.fail(path, f"expected true or false, got {_tname(v)} {_show(v)}")
        return v

    def integer(self, lo: int, hi: int | None = None):
        def conv(v, path):
            if isinstance(v, bool) or not isinstance(v, int):
                self.fail(path, f"expected an integer, got {_tname(v)} {_show(v)}")
            if v < lo or (hi is not None and v > hi):
                rng = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
                self.fail(path, f"{v} is out of range (must be {rng})")
            return v
        return conv

    def seconds(self, lo: float, hi: float):
        """A duration in seconds: an integer or a decimal number."""
        def conv(v, path):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                self.fail(path, f"expected a number of seconds, got {_tname(v)} {_show(v)}")
            if not lo <= v <= hi:
                self.fail(path, f"{v} is out of range (must be between {lo:g} and {hi:g} seconds)")
            return float(v)
        return conv

    def string(self, v, path):
        if not isinstance(v, str):
            hint = " (quote it)" if isinstance(v, (int, float, bool)) else ""
            self.fail(path, f"expected a string, got {_tname(v)}{hint}")
        if not v.strip():
            self.fail(path, "must not be empty")
        return v

    def choice(self, *options: str):
        def conv(v, path):
            if not isinstance(v, str) or v not in options:
                self.fail(path, f"{_show(v)} is not one of: {', '.join(options)}")
            return v
        return conv

    def ip(self, v, path):
        if not isinstance(v, str):
            hint = " (quote it)" if isinstance(v, (int, float)) else ""
            self.fail(path, f"expected an IP address, got {_tname(v)} {_show(v)}{hint}")
        try:
            return str(ipaddress.ip_address(v.strip()))
        except ValueError:
            self.fail(path, f"{_show(v)} is not an IP address")

    def subnet(self, v, path) -> Network:
        if not isinstance(v, str):
            self.fail(path, f"expected a subnet like 10.1.0.0/16, got {_tname(v)} {_show(v)}")
        try:
            return ipaddress.ip_network(v.strip())
        except ValueError:
            try:
                loose = ipaddress.ip_network(v.strip(), strict=False)
            except ValueError:
                self.fail(path, f"{_show(v)} is not a subnet (like 10.1.0.0/16)")
            self.fail(path, f"{_show(v)} has host bits set (did you mean {loose}?)")

    def file_path(self, v, path, limit: int = MAX_FILE_BYTES) -> str:
        """The absolute path of a file named at `path`, read now (bounded) into self.files."""
        s = self.string(v, path)
        p = Path(s).expanduser()
        if not p.is_absolute():
            p = Path(self.base_dir) / p
        try:
            self.files[str(p)] = read_file(str(p), limit)
        except OSError as e:
            self.fail(path, f"cannot read '{s}': {e.strerror or e}")
        except ValueError:  # a NUL byte in the name: open() refuses it before the kernel
            self.fail(path, f"'{s}' is not a valid file name")
        return str(p)

    def exposed_secret(self, keypath: str, fp: str, holds: str = "") -> None:
        """Warn when file `fp`, holding a secret, is readable by others or by a group other
        than root's or the one vpnd runs as (daemon.user)."""
        try:
            st = os.stat(fp)
        except OSError:
            return
        if st.st_mode & 0o004:
            who = "everyone"
        elif st.st_mode & 0o040 and st.st_gid not in self.trusted_gids():
            import grp
            try:
                who = f"group '{grp.getgrgid(st.st_gid).gr_name}'"
            except KeyError:
                who = f"group {st.st_gid}"
        else:
            return
        fix = "chmod 600 it" if who == "everyone" else \
            "chmod 600 it, or give it the group vpnd runs as (daemon.user's)"
        self.warnings.append(one_line(f"{keypath}: '{fp}' {holds}is readable by {who}; {fix}"))

    def trusted_gids(self) -> set[int]:
        from vpnd.net.privileges import target_gid
        d = getattr(self, "daemon_cfg", None)
        gid = target_gid(d.user if d else None)
        return {0} | ({gid} if gid is not None else set())

    def load_pem(self, fp: str, kind: str, fail: Callable[[str], None]):
        """The certificate / key in file `fp` (read by file_path), or None after fail()."""
        data = self.files.get(fp)
        if data is None:
            try:
                data = self.files[fp] = read_file(fp, MAX_FILE_BYTES)
            except OSError as e:
                fail(f"cannot read: {e.strerror or e}")
                return None
        return _parse_pem_or_der(data, fp, kind, fail)

    # --- sections
def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _parse_pem_or_der(data: bytes, path: str, kind: str, fail: Callable[[str], None]):
    """The parsed certificate / key, or None after calling fail(message)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    pem = b"-----BEGIN" in data
    try:
        if kind == "certificate":
            if pem:
                return x509.load_pem_x509_certificate(data)
            return x509.load_der_x509_certificate(data)
        if kind == "private key":
            if pem:
                return serialization.load_pem_private_key(data, password=None)
            return serialization.load_der_private_key(data, password=None)
        if pem and b"CERTIFICATE" in data:
            return x509.load_pem_x509_certificate(data)
        if pem:
            return serialization.load_pem_public_key(data)
        return serialization.load_der_public_key(data)
    except TypeError:
        fail(f"'{path}' is encrypted; vpnd needs an unencrypted {kind}")
    except Exception:  # cryptography raises ValueError and friends on bad input
        fail(f"'{path}' is not a PEM or DER {kind}")
    return None
