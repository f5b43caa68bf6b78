"""State of one IKEv2 SA and its CHILD_SAs, and of the request in flight (RFC 7296 2.1-2.3)."""

from __future__ import annotations

import collections
import itertools
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from vpnd.ike.actions import Address
from vpnd.ike.v2 import constants as c
from vpnd.ike.v2.payloads import TrafficSelector

# Retransmission (2.1) and the half-open timeout are vpnd/ike/liveness.py's, shared with IKEv1.


@dataclass
class Request:
    """The one request we have in flight on an IKE SA (window size 1, 2.3)."""

    mid: int
    exchange: int
    data: bytes
    task: Any
    sent_at: float
    next_at: float
    timeouts: list[float]
    tries: int = 0


@dataclass(repr=False)
class ChildSa:
    child_id: int
    name: str
    protocol: str
    mode: str
    spi_in: int
    spi_out: int
    chosen: Any  # negotiate.Chosen
    local_ts: list[TrafficSelector]
    remote_ts: list[TrafficSelector]
    initiator: bool  # we initiated the exchange that created it
    ni: bytes = b""
    nr: bytes = b""
    state: str = "INSTALLED"  # INSTALLED | REKEYING | REKEYED | DELETING
    installed_at: float = 0.0
    rekey_at: float | None = None
    expire_at: float | None = None
    udp_encap: bool = False
    last_in: float = 0.0
    last_out: float = 0.0
    rekeyed_by: int | None = None  # child that replaced this one
    collision: dict | None = None  # peer's simultaneous rekey of this child (2.8.1)
    has_outbound: bool = False  # the data plane sends on it (installed with outbound keys)
    # responder of a child rekey: outbound keys held back until the initiator's Delete of the
    # old SA shows it has installed the new inbound SA, or until out_at (fallback)
    out_pending: tuple | None = None  # (keymat, child id whose outbound traffic moves here)
    out_at: float | None = None
    ipcomp: Any = None  # actions.IPCompParams when IPCOMP_SUPPORTED was agreed (2.22)

    def __repr__(self) -> str:
        return f"ChildSa({self.child_id}, {self.name}, in={self.spi_in:08x}, out={self.spi_out:08x}, {self.state})"


EVENT_SEQ = itertools.count()


@dataclass(repr=False)
class IkeSa:
    ike_id: int
    conn: Any  # config.Connection (the matched one; responders may switch at IKE_AUTH)
    initiator: bool
    spi_i: bytes
    spi_r: bytes
    local: Address
    remote: Address
    state: str = "CONNECTING"  # CONNECTING | ESTABLISHED | REKEYING | REKEYED | DELETING | DEAD
    candidates: list = field(default_factory=list)  # responder: connections still possible
    chosen: Any = None
    keys: Any = None
    crypto_in: Any = None
    crypto_out: Any = None
    kex: Any = None
    ni: bytes = b""
    nr: bytes = b""
    init_req: bytes = b""  # IKE_SA_INIT request as sent/received (signed octets, 2.15)
    init_resp: bytes = b""
    offered: list = field(default_factory=list)  # initiator: SA proposals of IKE_SA_INIT
    cookie: bytes | None = None
    init_tries: int = 0
    nat_local: bool = False  # we are behind a NAT
    nat_remote: bool = False  # the peer is behind a NAT
    natt: bool = False  # IKE moved to the NAT-T port
    udp_encap: bool = False
    mid_out: int = 0
    mid_in: int = 0
    pending: Request | None = None
    queue: collections.deque = field(default_factory=collections.deque)
    last_response: tuple[int, bytes] | None = None
    children: dict[int, ChildSa] = field(default_factory=dict)
    created_at: float = 0.0
    established_at: float | None = None
    rekey_at: float | None = None
    expire_at: float | None = None
    last_recv: float = 0.0
    last_sent: float = 0.0
    last_keepalive: float = 0.0
    peer_hashes: frozenset = frozenset()
    peer_certreq: bool = False
    peer_id: str = ""
    peer_id_raw: tuple[int, bytes] | None = None
    initial_contact: bool = False
    peer_childless: bool = False  # the responder sent CHILDLESS_IKEV2_SUPPORTED (RFC 6023 3)
    childless: bool = False  # IKE_AUTH carried no CHILD_SA (RFC 6023)
    persistent: bool = False  # re-initiated by DPD action restart: keep trying
    rekeyed_to: int | None = None  # IKE SA that replaced this one
    dpd_probe: bool = False  # the request in flight is a liveness check
    # first child negotiated inside IKE_AUTH (initiator side)
    auth_child: Any = None
    ike_collision: dict | None = None  # peer's simultaneous rekey of this IKE SA (2.8.2)
    # MOBIKE (RFC 4555, ike/v2/mobike.py)
    mobike: bool = False  # both ends said MOBIKE_SUPPORTED
    mobike_initiator: bool = False  # we initiated the IKE SA (kept across rekeys): we decide
    peer_addrs: tuple = ()  # the peer's ADDITIONAL_*_ADDRESS
    told_addrs: frozenset = frozenset()  # the addresses we last listed to the peer
    request_path: tuple | None = None  # (local, remote) of the request being answered
    # order of events in this process, immune to equal clock readings: when the SA was
    # created and when it was established (INITIAL_CONTACT compares the two, 2.4)
    created_seq: int = field(default_factory=lambda: next(EVENT_SEQ))
    established_seq: int | None = None

    def __repr__(self) -> str:
        return f"IkeSa({self.ike_id}, {self.conn.name}, {self.spi_i.hex()}/{self.spi_r.hex()}, {self.state})"

    @property
    def our_spi(self) -> bytes:
        return self.spi_i if self.initiator else self.spi_r

    def flags(self, response: bool) -> int:
        f = c.FLAG_I if self.initiator else 0
        return f | (c.FLAG_R if response else 0)


# --------------------------------------------------------------------------- identities


def id_payload_body(identity, fallback_ip: str | None, cert=None) -> tuple[int, bytes]:
    """(ID type, data) for a config Identity; None -> our address, or our cert's DN."""
    if identity is None or identity.kind == "any":
        if cert is not None:
            return c.ID_DER_ASN1_DN, cert.subject.public_bytes()
        ip = ipaddress.ip_address(fallback_ip or "0.0.0.0")
        return (c.ID_IPV4_ADDR if ip.version == 4 else c.ID_IPV6_ADDR), ip.packed
    k = identity.kind
    if k in ("ipv4", "ipv6"):
        ip = ipaddress.ip_address(identity.value)
        return (c.ID_IPV4_ADDR if ip.version == 4 else c.ID_IPV6_ADDR), ip.packed
    if k == "fqdn":
        return c.ID_FQDN, identity.value.encode()
    if k == "email":
        return c.ID_RFC822_ADDR, identity.value.encode()
    if k == "dn":
        return c.ID_DER_ASN1_DN, identity.x509_name().public_bytes()
    raise ValueError(f"identity kind {k}")


def id_to_str(id_type: int, data: bytes) -> str:
    try:
        if id_type in (c.ID_IPV4_ADDR, c.ID_IPV6_ADDR):
            return str(ipaddress.ip_address(data))
        if id_type == c.ID_FQDN:
            return "@" + data.decode("ascii", "replace")
        if id_type == c.ID_RFC822_ADDR:
            return data.decode("ascii", "replace")
        if id_type == c.ID_DER_ASN1_DN:
            from vpnd.crypto.auth import dn_string, parse_der_name

            return dn_string(parse_der_name(data))
    except (ValueError, UnicodeDecodeError):
        pass
    return f"type{id_type}:{data.hex()}"


def id_matches(identity, id_type: int, data: bytes) -> bool:
    """Does a received ID equal a configured Identity (config.Identity)?"""
    if identity is None:
        return False
    if identity.kind == "any":
        return True
    try:
        t, d = id_payload_body(identity, None)
    except ValueError:
        return False
    if identity.kind == "fqdn":
        return t == id_type and d.lower() == data.lower().rstrip(b".")
    if identity.kind == "dn" and id_type == c.ID_DER_ASN1_DN:
        if d == data:
            return True
        from vpnd.crypto.auth import parse_der_name

        try:
            other = parse_der_name(data)
        except ValueError:
            return False
        return [(a.oid, a.value) for a in identity.x509_name()] == [(a.oid, a.value) for a in other]
    return t == id_type and d == data


def ts_from_config(nets, fallback_ip: str | None) -> list[TrafficSelector]:
    if nets:
        return [TrafficSelector.from_network(n) for n in nets]
    if fallback_ip:
        ip = ipaddress.ip_address(fallback_ip)
        return [TrafficSelector(ip, ip)]
    return [TrafficSelector.from_network("0.0.0.0/0")]


def narrow(offered: list[TrafficSelector], allowed: list[TrafficSelector]) -> list[TrafficSelector]:
    """Responder narrowing (2.9): every intersection of what was offered with what we allow."""
    out: list[TrafficSelector] = []
    for o in offered:
        for a in allowed:
            x = o.intersect(a)
            if x is not None and x not in out:
                out.append(x)
    # a selector inside another one adds nothing (e.g. the packet's host TS of 2.9)
    return [x for x in out if not any(y is not x and y != x and y.contains(x) for y in out)]


def is_subset(chosen: list[TrafficSelector], offered: list[TrafficSelector]) -> bool:
    return all(any(o.contains(x) for o in offered) for x in chosen)
