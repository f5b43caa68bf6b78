"""MOBIKE (RFC 4555): an IKE SA and its CHILD_SAs move to new addresses.

- IKE_AUTH: both ends say MOBIKE_SUPPORTED (3.2) and list their other addresses
  (ADDITIONAL_IP4/6_ADDRESS, or NO_ADDITIONAL_ADDRESSES, 3.6). With MOBIKE the initiator
  uses port 4500 from IKE_AUTH on whenever the peer does NAT-T, NAT or not (3.3; the
  switch is in exchange_init).
- Only the original initiator of the IKE SA decides which addresses are used (3.1). When
  its address goes away or the kernel now reaches the peer from another one (the daemon
  reports it: Ikev2Engine.addresses_changed), it sends an INFORMATIONAL request with
  UPDATE_SA_ADDRESSES from the new address, NAT_DETECTION_* for the new path (3.5, 3.8)
  and a COOKIE2 (3.7); the answer must echo the COOKIE2, else the IKE SA is closed. Then
  its CHILD_SAs move (UpdateChildAddresses: keys, sequence numbers, replay state kept).
  The pending request, if any, is retransmitted from the new address (3.5), and an
  address change while an update is on the way sends a new update afterwards (3.6).
- The responder moves the IKE SA and CHILD_SAs to the addresses the authenticated
  UPDATE_SA_ADDRESSES came from, with NAT detection redone from its NAT_DETECTION_*
  notifies; NO_NATS_ALLOWED that does not match the packet is answered
  UNEXPECTED_NAT_DETECTED and changes nothing (3.9). When the peer's IP address changed it
  then checks the new path itself (return routability, an INFORMATIONAL with COOKIE2, 3.7):
  unanswered, the IKE SA is given up as any unanswered request.
- Every INFORMATIONAL response echoes a COOKIE2 and carries NAT_DETECTION_* when the
  request did (3.7, 3.8). A responder whose own addresses change tells the initiator its
  new list (3.6).
- With MOBIKE, authenticated IKE messages from another address do not move the IKE SA
  (3.8: only UPDATE_SA_ADDRESSES does); a NATed peer's port change still does (a NAT
  rebinding on the same public address), as without MOBIKE.
"""

from __future__ import annotations

import hmac
import ipaddress
import struct

from vpnd.ike.actions import UpdateChildAddresses
from vpnd.ike.addresses import WILDCARDS
from vpnd.ike.v2 import constants as c
from vpnd.ike.v2.natd import detect_nat, nat_notifies
from vpnd.ike.v2.payloads import Notify, notify

MAX_PEER_ADDRS = 16     # ADDITIONAL_*_ADDRESS kept per peer (bounded: peer-supplied)
COOKIE2_LEN = 16        # 8..64 octets (4.2.6)
_ADDR_TYPES = (c.N_ADDITIONAL_IP4_ADDRESS, c.N_ADDITIONAL_IP6_ADDRESS, c.N_NO_ADDITIONAL_ADDRESSES)


def _global(addr: str) -> bool:
    """An address worth telling a peer: not loopback, link-local, multicast, unspecified."""
    try:
        a = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return not (a.is_loopback or a.is_link_local or a.is_multicast or a.is_unspecified)


def our_addresses(e, sa) -> list:
    """ADDITIONAL_IP4/6_ADDRESS for our addresses other than the IKE SA's, or
    NO_ADDITIONAL_ADDRESSES (3.6, 4.2.2); nothing before the daemon told us ours."""
    if e.local_addrs is None:
        return []
    others = sorted(a for a in e.local_addrs if a != sa.local[0] and _global(a))[:MAX_PEER_ADDRS]
    sa.told_addrs = frozenset(others)
    if not others:
        return [Notify(c.N_NO_ADDITIONAL_ADDRESSES)]
    return [Notify(c.N_ADDITIONAL_IP6_ADDRESS if ":" in a else c.N_ADDITIONAL_IP4_ADDRESS,
                   ipaddress.ip_address(a).packed) for a in others]


def read_addresses(sa, payloads) -> None:
    """The peer's list of other addresses, when the message carries one (it replaces the
    one before, 4.2.2); bounded, malformed entries skipped."""
    if not any(isinstance(p, Notify) and p.type in _ADDR_TYPES for p in payloads):
        return
    addrs = []
    for p in payloads:
        if not isinstance(p, Notify):
            continue
        if p.type == c.N_ADDITIONAL_IP4_ADDRESS and len(p.data) == 4:
            addrs.append(str(ipaddress.IPv4Address(p.data)))
        elif p.type == c.N_ADDITIONAL_IP6_ADDRESS and len(p.data) == 16:
            addrs.append(str(ipaddress.IPv6Address(p.data)))
    sa.peer_addrs = tuple(a for a in dict.fromkeys(addrs) if a != sa.remote[0] and _global(a)
                          )[:MAX_PEER_ADDRS]


# --------------------------------------------------------------------------- IKE_AUTH

def auth_request(e, sa, conn) -> list:
    """The initiator's IKE_AUTH additions (3.2)."""
    if not conn.mobike:
        return []
    return [Notify(c.N_MOBIKE_SUPPORTED)] + our_addresses(e, sa)


def auth_accepted(e, sa, payloads) -> None:
    """The initiator read the IKE_AUTH response: MOBIKE is on if both said so."""
    if sa.conn.mobike and notify(payloads, c.N_MOBIKE_SUPPORTED) is not None:
        sa.mobike = True
        sa.mobike_initiator = True
        read_addresses(sa, payloads)


def auth_response(e, sa, conn, payloads) -> list:
    """The responder's IKE_AUTH additions, for the connection it chose."""
    if not conn.mobike or notify(payloads, c.N_MOBIKE_SUPPORTED) is None:
        return []
    sa.mobike = True
    sa.mobike_initiator = False
    read_addresses(sa, payloads)
    return [Notify(c.N_MOBIKE_SUPPORTED)] + our_addresses(e, sa)


# --------------------------------------------------------------------------- initiator

def _nat_ok(sa, payloads, local, remote) -> None:
    """NAT detection of the new path; ESP goes in UDP with a NAT (or encap: true)."""
    sa.nat_local, sa.nat_remote = detect_nat(payloads, sa.spi_i, sa.spi_r, local, remote)
    sa.udp_encap = sa.nat_local or sa.nat_remote or bool(sa.conn.encap)


def _move_children(e, sa) -> None:
    for ch in sa.children.values():
        ch.udp_encap = sa.udp_encap
        e.emit(UpdateChildAddresses(ch.child_id, sa.local, sa.remote, sa.udp_encap))


class UpdateAddressesTask:
    """UPDATE_SA_ADDRESSES from our new address (3.5), with NAT detection and COOKIE2."""

    exchange = c.INFORMATIONAL

    def __init__(self, local_ip: str, remote_ip: str):
        self.local_ip, self.remote_ip = local_ip, remote_ip
        self.cookie2 = b""

    def ready(self, e, sa) -> bool:
        return sa.state == "ESTABLISHED" and sa.mobike and sa.mobike_initiator

    def build(self, e, sa, now: float) -> list:
        # the latest choice, should the addresses have changed again while it waited
        self.local_ip, self.remote_ip = sa.local[0], sa.remote[0]
        self.cookie2 = e.rng(COOKIE2_LEN)
        return ([Notify(c.N_UPDATE_SA_ADDRESSES)]
                + nat_notifies(e, sa.conn, sa.spi_i, sa.spi_r, sa.local, sa.remote)
                + [Notify(c.N_COOKIE2, self.cookie2)] + our_addresses(e, sa))

    def on_response(self, e, sa, payloads: list, now: float) -> None:
        if not _cookie2_ok(e, sa, payloads, self.cookie2, now):
            return
        err = next((p for p in payloads if isinstance(p, Notify) and p.is_error), None)
        if err is not None:
            e.event("mobike_refused", sa.conn.name,
                    f"IKE_SA {sa.conn.name}[{sa.ike_id}]: peer refused the address update "
                    f"({c.NOTIFY_NAMES.get(err.type, err.type)})", ike_id=sa.ike_id)
            return
        _nat_ok(sa, payloads, sa.local, sa.remote)
        read_addresses(sa, payloads)
        _move_children(e, sa)
        e.event("ike_moved", sa.conn.name,
                f"IKE_SA {sa.conn.name}[{sa.ike_id}] moved to {sa.local[0]}[{sa.local[1]}]..."
                f"{sa.remote[0]}[{sa.remote[1]}] (MOBIKE){', NAT detected' if sa.udp_encap else ''}",
                ike_id=sa.ike_id, local=sa.local[0], remote=sa.remote[0])


def _cookie2_ok(e, sa, payloads, sent: bytes, now: float) -> bool:
    """3.7: the response must echo our COOKIE2 exactly; else the IKE SA is closed."""
    got = notify(payloads, c.N_COOKIE2)
    if got is not None and hmac.compare_digest(got.data, sent):
        return True
    e.event("failed", sa.conn.name, f"IKE_SA {sa.conn.name}[{sa.ike_id}]: COOKIE2 not returned "
                                    "unchanged (RFC 4555 3.7), closing the IKE SA", ike_id=sa.ike_id)
    sa.state = "DELETING"
    e.queue_delete_ike(sa, now)
    return False


class ReturnRoutabilityTask:
    """An INFORMATIONAL with COOKIE2 (3.7): does the peer answer on this path?"""

    exchange = c.INFORMATIONAL

    def __init__(self):
        self.cookie2 = b""

    def ready(self, e, sa) -> bool:
        return sa.state == "ESTABLISHED"

    def build(self, e, sa, now: float) -> list:
        self.cookie2 = e.rng(COOKIE2_LEN)
        return [Notify(c.N_COOKIE2, self.cookie2)]

    def on_response(self, e, sa, payloads: list, now: float) -> None:
        _cookie2_ok(e, sa, payloads, self.cookie2, now)


class AddressListTask:
    """Tell the peer our other addresses changed (3.6), with a COOKIE2."""

    exchange = c.INFORMATIONAL

    def __init__(self):
        self.cookie2 = b""

    def ready(self, e, sa) -> bool:
        return sa.state == "ESTABLISHED" and sa.mobike

    def build(self, e, sa, now: float) -> list:
        self.cookie2 = e.rng(COOKIE2_LEN)
        return our_addresses(e, sa) + [Notify(c.N_COOKIE2, self.cookie2)]

    def on_response(self, e, sa, payloads: list, now: float) -> None:
        _cookie2_ok(e, sa, payloads, self.cookie2, now)


def choose_path(sa, sources: dict) -> tuple[str, str] | None:
    """(our address, peer address) the initiator should use now: the peer's current address
    if the kernel reaches it, else one of its additional ones (3.5); None: no path."""
    for peer in (sa.remote[0], *sa.peer_addrs):
        src = sources.get(peer)
        if src and (":" in src) == (":" in peer):
            return src, peer
    return None


def addresses_changed(e, sa, sources: dict, now: float) -> None:
    """Our addresses changed (Ikev2Engine.addresses_changed): the initiator moves the IKE SA
    if its path changed; either end tells the other its new list of addresses."""
    if not sa.mobike or sa.state != "ESTABLISHED":
        return
    if not sa.mobike_initiator:
        others = frozenset(a for a in e.local_addrs if a != sa.local[0] and _global(a))
        if others != sa.told_addrs and not any(isinstance(t, AddressListTask) for t in sa.queue):
            e.queue(sa, AddressListTask(), now)
        return
    path = choose_path(sa, sources)
    if path is None:
        e.event("mobike_no_path", sa.conn.name,
                f"IKE_SA {sa.conn.name}[{sa.ike_id}]: no address reaches {sa.remote[0]} now; "
                "waiting for one (MOBIKE)", ike_id=sa.ike_id)
        return
    if path == (sa.local[0], sa.remote[0]) and sa.local[0] in e.local_addrs:
        return
    # 3.5: from now on our messages, the pending one's retransmissions too, leave from the
    # new address on port 4500; the CHILD_SAs follow when the peer has answered
    sa.local = (path[0], e.natt_port)
    sa.remote = (path[1], e.natt_port)
    sa.natt = True
    if any(isinstance(t, UpdateAddressesTask) for t in sa.queue):
        return  # one queued already: it reads the addresses when it is sent
    # an update already on the way from another address: a new one afterwards (3.6)
    sa.queue.appendleft(UpdateAddressesTask(*path))
    e.kick(sa, now)


# --------------------------------------------------------------------------- responder

def _no_nats_ok(payloads, local, remote) -> bool:
    """3.9: NO_NATS_ALLOWED holds the addresses and ports the packet was sent from/to."""
    n = notify(payloads, c.N_NO_NATS_ALLOWED)
    if n is None:
        return True
    try:
        want = (ipaddress.ip_address(remote[0]).packed + ipaddress.ip_address(local[0]).packed
                + struct.pack("!HH", remote[1], local[1]))
    except ValueError:
        return False
    return hmac.compare_digest(n.data, want)


def on_request(e, sa, payloads: list, local, remote, now: float) -> list:
    """MOBIKE's part of an INFORMATIONAL request: the payloads it adds to the response
    (COOKIE2 echo, NAT_DETECTION_*, or UNEXPECTED_NAT_DETECTED), and the address update."""
    out = []
    path = (local[0] if local[0] not in WILDCARDS else sa.local[0], local[1])
    cookie2 = notify(payloads, c.N_COOKIE2)
    if cookie2 is not None:
        out.append(Notify(c.N_COOKIE2, cookie2.data))      # 3.7: copied as it is
    has_natd = notify(payloads, c.N_NAT_DETECTION_SOURCE_IP) is not None
    if not sa.mobike:
        if has_natd:
            out += nat_notifies(e, sa.conn, sa.spi_i, sa.spi_r, path, remote)
        return out
    read_addresses(sa, payloads)
    if notify(payloads, c.N_UPDATE_SA_ADDRESSES) is not None and not sa.mobike_initiator:
        if not _no_nats_ok(payloads, local, remote):
            e.event("mobike_refused", sa.conn.name,
                    f"IKE_SA {sa.conn.name}[{sa.ike_id}]: UPDATE_SA_ADDRESSES from {remote[0]} "
                    "crossed a NAT that NO_NATS_ALLOWED forbids (RFC 4555 3.9)", ike_id=sa.ike_id)
            return [Notify(c.N_UNEXPECTED_NAT_DETECTED)] + out
        old = sa.remote
        sa.remote = tuple(remote)
        sa.local = path
        sa.natt = sa.natt or local[1] == e.natt_port
        if has_natd:
            _nat_ok(sa, payloads, sa.local, sa.remote)
        _move_children(e, sa)
        e.event("ike_moved", sa.conn.name,
                f"IKE_SA {sa.conn.name}[{sa.ike_id}]: peer moved to {sa.remote[0]}[{sa.remote[1]}] "
                f"(MOBIKE){', NAT detected' if sa.udp_encap else ''}",
                ike_id=sa.ike_id, local=sa.local[0], remote=sa.remote[0])
        if old[0] != sa.remote[0]:
            sa.queue.append(ReturnRoutabilityTask())
    if has_natd:
        out += nat_notifies(e, sa.conn, sa.spi_i, sa.spi_r, path, remote)
    return out
