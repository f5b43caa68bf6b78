"""What the sans-IO IKE cores ask the daemon to do.

The cores (ike/v1, ike/v2, behind ike/manager.py) never touch sockets, the event loop or the
wall clock: they take datagrams and the time, and return a list of these actions. The daemon
carries them out in order. Keys are bytes in the layout of docs/internals.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network

from vpnd.ike.events import EventKind

Network = IPv4Network | IPv6Network
Address = tuple[str, int]  # (ip, port)


def hostport(addr: Address) -> str:
    """An address as status shows it: ip:port, [ipv6]:port."""
    return f"[{addr[0]}]:{addr[1]}" if ":" in addr[0] else f"{addr[0]}:{addr[1]}"

# SendDatagram.data of a NAT-T keepalive (RFC 3948 2.3): one 0xff byte on the NAT-T port,
# sent WITHOUT the non-ESP marker.
NAT_KEEPALIVE = b"\xff"


@dataclass(frozen=True)
class SendDatagram:
    """Send an IKE message. On port 4500 the daemon prepends the non-ESP marker (RFC 3948 2.2)."""

    data: bytes
    local: Address
    remote: Address


@dataclass(frozen=True, repr=False)
class ChildKeys:
    """One direction of a CHILD_SA / IPsec SA (one protocol of a bundle)."""

    spi: int
    protocol: str  # "esp" | "ah"
    encryption: str | None  # canonical name, None for AH
    integrity: str | None  # canonical name, None for AEAD
    enc_key: bytes = b""
    auth_key: bytes = b""

    def __repr__(self) -> str:  # keys never reach logs
        return f"ChildKeys(spi={self.spi:#010x}, {self.protocol}, {self.encryption}, {self.integrity})"


@dataclass(frozen=True)
class IPCompParams:
    """IPComp (RFC 3173) negotiated or configured for a CHILD_SA: the algorithm ("deflate" |
    "lzs"), the CPI the peer puts on what it sends us (cpi_in) and the one we send (cpi_out)."""

    algorithm: str
    cpi_in: int
    cpi_out: int


@dataclass(frozen=True)
class InstallChildSA:
    """Install a negotiated CHILD_SA (IKEv2) or Quick Mode SA pair (IKEv1): receive on it.

    `inbound`/`outbound` hold one ChildKeys per protocol of the bundle, ESP first, AH second.
    With `outbound` keys the child also sends at once, taking over the outbound policy of
    the child `replaces` names (make-before-break on rekey). `outbound` empty: inbound only,
    until an ActivateOutbound for this child (a rekey responder, an IKEv1 Quick Mode
    responder before message 3), or for good (the losing SA of a simultaneous rekey,
    RFC 7296 2.8.1, which the core deletes right after). One InstallChildSA per child id.
    """

    connection: str
    child_id: int  # unique within the daemon run; used by DeleteChildSA and status
    ike_id: int
    mode: str  # "tunnel" | "transport"
    local: Address  # outer addresses (port matters only with udp_encap)
    remote: Address
    udp_encap: bool
    esn: bool
    replay_window: int
    local_ts: tuple[Network, ...]
    remote_ts: tuple[Network, ...]
    inbound: tuple[ChildKeys, ...]
    outbound: tuple[ChildKeys, ...]
    proposal: str  # human description, e.g. "AES_GCM_16-128/MODP_2048"
    lifetime_seconds: int = 0
    soft_kilobytes: int = 0  # soft byte limit: data plane reports, core rekeys
    hard_kilobytes: int = 0
    replaces: int | None = None
    ipcomp: IPCompParams | None = None  # innermost transform of the bundle, if any


@dataclass(frozen=True, repr=False)
class ActivateOutbound:
    """A child installed inbound only now sends: its outbound SAs take over the outbound
    policy of the child `replaces` names (if that one still holds it), else get their own."""

    child_id: int
    outbound: tuple[ChildKeys, ...]
    replaces: int | None = None

    def __repr__(self) -> str:
        return f"ActivateOutbound({self.child_id}, {self.outbound!r}, replaces={self.replaces})"


@dataclass(frozen=True)
class RetireChildSA:
    """A replaced child: it no longer sends; its inbound SAs go at `at` (the caller's clock),
    so that packets the peer sent on it just before the switch still decrypt."""

    child_id: int
    at: float


@dataclass(frozen=True)
class DeleteChildSA:
    """Remove a child now (inbound SAs, its outbound policy if it still holds one)."""

    child_id: int


@dataclass(frozen=True)
class UpdateChildAddresses:
    """Peer moved (NAT mapping changed, or floated to 4500): retarget outbound ESP."""

    child_id: int
    local: Address
    remote: Address
    udp_encap: bool


@dataclass(frozen=True)
class Event:
    """Something worth a log line and the status/control socket.

    kind: an EventKind (vpnd/ike/events.py); its name as a string is taken too and checked:
    an unknown kind raises ValueError where the Event is made. `message` is for humans and
    never contains secrets.
    """

    kind: EventKind
    connection: str | None
    message: str
    data: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if type(self.kind) is not EventKind:
            object.__setattr__(self, "kind", EventKind(self.kind))


@dataclass(frozen=True)
class Trace:
    """A debug line about an IKE message or packet (vpnd/ike/trace.py), made only while the
    core's `trace` flag is on. subsystem: "ike" (parsed/generating) or "net" (packets)."""

    subsystem: str
    message: str
    connection: str | None = None
    ike_id: int | None = None


CHILD_ACTIONS = (InstallChildSA, ActivateOutbound, RetireChildSA, DeleteChildSA, UpdateChildAddresses)
"""What the SA table (vpnd/sadb.py) takes."""

Action = (SendDatagram | InstallChildSA | ActivateOutbound | RetireChildSA | DeleteChildSA
          | UpdateChildAddresses | Event | Trace)
