"""Our addresses and their changes, from the kernel (for MOBIKE, RFC 4555: the IKE core
decides what to do, ike/v2/mobike.py).

AddressWatch listens on rtnetlink's address and route multicast groups; the daemon reads
it when readable, and a burst of changes (an address removed, its routes gone, another
added) is looked at once, after a short settling delay, with local_addresses() and
net/tun.source_address_towards() for each peer."""

from __future__ import annotations

import socket
import struct

from vpnd.net import netlink

NETLINK_ROUTE = 0
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
# message types that can change which of our addresses reaches a peer
_TYPES = frozenset((16, 17, 20, 21, 24, 25))   # RTM_NEW/DELLINK, NEW/DELADDR, NEW/DELROUTE
_NLMSGHDR = struct.Struct("=IHHII")
IFA_F_TENTATIVE = 0x40
IFA_F_DADFAILED = 0x08
RT_SCOPE_UNIVERSE = 0


class AddressWatch:
    """A non-blocking rtnetlink socket subscribed to link, address and route changes."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK,
                                  NETLINK_ROUTE)
        try:
            self.sock.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE
                            | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE))
        except OSError:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self, limit: int = 256) -> bool:
        """Read what is queued; True when a link, address or route changed. An overrun
        (ENOBUFS: changes were lost) counts as a change: the caller looks at everything."""
        changed = False
        for _ in range(limit):
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                break
            except OSError:
                changed = True
                continue
            off = 0
            while off + _NLMSGHDR.size <= len(data):
                length, mtype = _NLMSGHDR.unpack_from(data, off)[:2]
                if mtype in _TYPES:
                    changed = True
                if length < _NLMSGHDR.size:
                    break
                off += (length + 3) & ~3
        return changed

    def close(self) -> None:
        self.sock.close()


def local_addresses(exclude_index: int | None = None) -> set[str]:
    """Our usable addresses (global scope, not tentative), except those of one device
    (the TUN)."""
    def do(ipr):
        out = set()
        for msg in ipr.get_addr():
            if msg["index"] == exclude_index or msg["scope"] != RT_SCOPE_UNIVERSE:
                continue
            flags = msg.get_attr("IFA_FLAGS") or msg["flags"]
            if flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED):
                continue
            addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if addr:
                out.add(addr)
        return out
    try:
        return netlink.call(do)
    except Exception:
        return set()
