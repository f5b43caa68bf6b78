"""The state an IKEv1 core keeps: ISAKMP SAs (phase 1), Quick Mode exchanges and IPsec SA
pairs. Plain data; the exchanges in phase1.py / quick.py / info.py move it along."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network

from vpnd.ike.actions import Address

Network = IPv4Network | IPv6Network


@dataclass
class Retransmit:
    """The last message we sent in one exchange, resent on a timer (with back-off) until the
    peer answers, and on a duplicate of the peer's last message (RFC 2408 5, RFC 2409 5)."""

    data: bytes
    local: Address
    remote: Address
    due: float | None  # None: resend only when the peer repeats itself
    tries: int = 0


@dataclass(repr=False)
class IsakmpSA:
    ike_id: int
    conn: object  # config.Connection
    initiator: bool
    aggressive: bool
    cky_i: bytes
    cky_r: bytes
    local: Address
    remote: Address
    created: float
    state: str = "MM_NO_STATE"  # Cisco's names; QM_IDLE = established
    # negotiation
    policies: list = field(default_factory=list)  # what we offered (initiator)
    sai_b: bytes = b""  # body of the initiator's SA payload (RFC 2409 5)
    policy: object = None  # chosen P1Policy
    kex: object = None
    gxi: bytes = b""
    gxr: bytes = b""
    gxy: bytes = b""
    ni: bytes = b""
    nr: bytes = b""
    id_i: bytes = b""  # IDii_b
    id_r: bytes = b""  # IDir_b
    peer_id: object = None  # ID payload
    peer_cert: object = None
    keys: object = None  # Phase1Keys
    cipher: object = None
    iv: bytes = b""  # phase-1 CBC chain; after establishment: the last phase-1 block
    p2_iv: dict = field(default_factory=dict)  # message ID -> IV of that exchange
    final_iv: bytes = b""  # the IV the final phase-1 message we took was decrypted with
    iv_alts: list = field(default_factory=list)  # last blocks of verified copies of that message
    # vendor options
    natt: str | None = None  # "rfc" | "draft" when both sides do NAT-T
    natt_vid: bytes = b""  # the draft vendor ID the peer sent (echoed back)
    peer_dpd: bool = False
    nat_local: bool = False  # we are behind a NAT
    nat_remote: bool = False  # the peer is
    floated: bool = False
    # exchange bookkeeping
    retx: Retransmit | None = None
    last_in: bytes = b""  # digest of the last phase-1 message taken
    rejected: object = None  # Phase1Failed of the first message dropped (a forgery or a wrong key)
    established: float | None = None
    expire_at: float | None = None
    rekey_at: float | None = None
    replaced: bool = False  # a newer ISAKMP SA took over (rekey), or this one lost a tie-break
    duplicate: bool = False  # retired by the tie-break between two SAs up at once
    rekeying: bool = False  # we started it while another SA of the connection was up
    pending: list = field(default_factory=list)  # QMs to start once established
    pending_at: float | None = None  # when to start them (Aggressive Mode: after message 3 landed)
    # DPD (RFC 3706)
    dpd_seq: int = 0
    dpd_wait: int | None = None  # sequence number of the outstanding R-U-THERE
    dpd_due: float | None = None
    dpd_tries: int = 0
    dpd_first: int = 0
    dpd_sent: float = 0.0
    last_heard: float = 0.0
    keepalive_at: float | None = None
    # informational bookkeeping
    info_seen: dict = field(default_factory=dict)  # message ID -> time (replays of infos)
    configured_source: bool = False  # responder: the source is a configured peer (issue 8.5)
    ipcomp_refused: bool = False  # the peer answered an IPComp offer NO-PROPOSAL-CHOSEN

    def __repr__(self) -> str:
        return f"IsakmpSA({self.ike_id}, {self.state}, i={self.cky_i.hex()} r={self.cky_r.hex()})"

    @property
    def is_established(self) -> bool:
        return self.state == "QM_IDLE"

    @property
    def nat(self) -> bool:
        return self.nat_local or self.nat_remote


@dataclass(repr=False)
class QuickMode:
    mid: int
    initiator: bool
    conn: object
    local_ts: Network | None = None
    remote_ts: Network | None = None
    state: str = "QM_SENT1"
    ni: bytes = b""
    nr: bytes = b""
    kex: object = None
    gqm: bytes = b""
    offered: object = None  # our SA payload (initiator)
    chosen: list = field(default_factory=list)  # P2Transform list
    spis_in: dict = field(default_factory=dict)  # protocol -> 4-byte SPI we chose
    spis_out: dict = field(default_factory=dict)
    rekey_of: int | None = None
    commit: bool = False
    retx: Retransmit | None = None
    last_in: bytes = b""
    life_s: int = 0
    life_kb: int = 0
    started: float = 0.0
    child_id: int | None = None  # responder: allocated when message 2 is sent
    inbound_installed: bool = False  # its InstallChildSA (inbound only) went out
    ids_sent: bool = True
    per_host: bool = False
    cpi_in: int | None = None  # IPComp CPI we offered (initiator)
    ipcomp: object = None  # actions.IPCompParams once agreed

    def __repr__(self) -> str:
        return f"QuickMode({self.mid:#x}, {self.state})"


@dataclass(repr=False)
class Child:
    child_id: int
    conn: object
    ike_id: int
    initiator: bool
    transforms: list  # P2Transform, AH first for a bundle
    spis_in: dict
    spis_out: dict
    mode: str
    udp: bool
    local_ts: Network
    remote_ts: Network
    installed: float
    life_s: int
    life_kb: int
    rekey_at: float | None
    expire_at: float | None
    state: str = "INSTALLED"  # INSTALLED | REKEYING | REKEYED
    delete_at: float | None = None  # a rekeyed SA lingers a moment for packets in flight
    per_host: bool = False
    last_in: float = 0.0
    last_out: float = 0.0
    pfs_group: str | None = None
    nonce_key: bytes = b""  # the lower of its Quick Mode's two nonces: tie-break between duplicates
    standby: bool = False  # REKEYED until the peer deletes it or the pair that stands in for it
    attach_at: float | None = None  # a rekey initiator's outbound half goes in then
    attach: object = None  # the ActivateOutbound to emit at attach_at (holds keys)
    rekeyed_here: bool = False  # we rekeyed it: our Delete tells the peer, whoever created it

    def __repr__(self) -> str:
        return f"Child({self.child_id}, {self.state})"

    def proposal(self) -> str:
        return describe_transforms(self.transforms)


def describe_transforms(transforms) -> str:
    """The negotiated bundle as status shows it: ESP's algorithms, then AH's."""
    esp = [x for x in transforms if x.protocol == 3]
    ah = [x for x in transforms if x.protocol == 2]
    if esp:
        text = esp[0].describe()
        if ah:
            text += "/AH:" + ah[0].describe()[3:]
        return text
    return ah[0].describe() if ah else ""
