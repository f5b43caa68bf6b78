"""NAT detection (RFC 7296 2.23): the NAT_DETECTION_*_IP hashes, sent and checked in
IKE_SA_INIT and, with MOBIKE, in INFORMATIONAL exchanges (RFC 4555 3.5, 3.8)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct

from vpnd.ike.v2 import constants as c
from vpnd.ike.v2.payloads import Notify, notify


def nat_hash(spi_i: bytes, spi_r: bytes, addr) -> bytes:
    """SHA-1(SPIi | SPIr | IP | Port) (2.23)."""
    ip = ipaddress.ip_address(addr[0])
    return hashlib.sha1(spi_i + spi_r + ip.packed + struct.pack("!H", addr[1])).digest()


def nat_notifies(e, conn, spi_i: bytes, spi_r: bytes, local, remote) -> list:
    src = nat_hash(spi_i, spi_r, local)
    if conn.encap:
        # strongSwan's encap=yes: a source hash that cannot match makes the peer see a NAT
        # in front of us, so ESP goes into UDP 4500 on both sides.
        src = e.rng(20)
    return [Notify(c.N_NAT_DETECTION_SOURCE_IP, src), Notify(c.N_NAT_DETECTION_DESTINATION_IP,
                                                              nat_hash(spi_i, spi_r, remote))]


def detect_nat(payloads, spi_i: bytes, spi_r: bytes, local, remote) -> tuple[bool, bool]:
    """(we are behind a NAT, the peer is behind a NAT)."""
    srcs = [p.data for p in payloads if isinstance(p, Notify) and p.type == c.N_NAT_DETECTION_SOURCE_IP]
    dst = notify(payloads, c.N_NAT_DETECTION_DESTINATION_IP)
    if not srcs or dst is None:
        return False, False  # the peer does not do NAT-T
    nat_local = not hmac.compare_digest(dst.data, nat_hash(spi_i, spi_r, local))
    theirs = nat_hash(spi_i, spi_r, remote)
    nat_remote = not any(hmac.compare_digest(s, theirs) for s in srcs)
    return nat_local, nat_remote


def peer_does_natt(payloads) -> bool:
    """The peer sent NAT_DETECTION_* notifies: it does NAT traversal (2.23)."""
    return notify(payloads, c.N_NAT_DETECTION_DESTINATION_IP) is not None and \
        notify(payloads, c.N_NAT_DETECTION_SOURCE_IP) is not None
