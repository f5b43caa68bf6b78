"""Is IP forwarding on in this network namespace? (A tunnel-mode gateway routes between its
LAN and the TUN device; with forwarding off only the host's own traffic uses the tunnels.)

Read over rtnetlink (RTM_GETNETCONF, NETCONFA_FORWARDING of NETCONFA_IFINDEX_ALL), which
works under systemd's ProcSubset=pid where /proc/sys is hidden; /proc/sys as a fallback.
For IPv4 the "all" value is net.ipv4.ip_forward; for IPv6 net.ipv6.conf.all.forwarding.
"""

from __future__ import annotations

import socket
import struct

RTM_NEWNETCONF = 80
RTM_GETNETCONF = 82
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
NETCONFA_IFINDEX = 1
NETCONFA_FORWARDING = 2
NETCONFA_IFINDEX_ALL = -1

SYSCTL = {4: "net.ipv4.ip_forward", 6: "net.ipv6.conf.all.forwarding"}


def _netlink(family: int) -> bool | None:
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    attr = struct.pack("=HHi", 8, NETCONFA_IFINDEX, NETCONFA_IFINDEX_ALL)
    body = struct.pack("=B3x", af) + attr
    msg = struct.pack("=IHHII", 16 + len(body), RTM_GETNETCONF, NLM_F_REQUEST, 1, 0) + body
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                       socket.NETLINK_ROUTE) as s:
        s.settimeout(2.0)
        s.sendto(msg, (0, 0))
        data = s.recv(65536)
    off = 0
    while off + 16 <= len(data):
        ln, typ = struct.unpack_from("=IH", data, off)
        if ln < 16:
            break
        if typ == RTM_NEWNETCONF:
            a = off + 16 + 4  # nlmsghdr, netconfmsg (1 byte, aligned to 4)
            end = off + ln
            while a + 4 <= end:
                alen, atype = struct.unpack_from("=HH", data, a)
                if alen < 4:
                    break
                if atype == NETCONFA_FORWARDING and alen >= 8:
                    return struct.unpack_from("=i", data, a + 4)[0] != 0
                a += (alen + 3) & ~3
            return None
        if typ == NLMSG_ERROR:
            return None
        off += (ln + 3) & ~3
    return None


def _proc(family: int) -> bool | None:
    path = "/proc/sys/" + SYSCTL[family].replace(".", "/")
    try:
        with open(path) as f:
            return f.read().strip() not in ("0", "")
    except OSError:
        return None


def forwarding(family: int) -> bool | None:
    """True/False, or None when it cannot be found out (no IPv6, no access)."""
    try:
        v = _netlink(family)
    except OSError:
        v = None
    return v if v is not None else _proc(family)


def needed_families(conns) -> dict[int, list[str]]:
    """IP version -> names of the tunnel-mode connections whose traffic selectors (or, without
    any, peer address) are of that version."""
    import ipaddress
    out: dict[int, list[str]] = {}
    for c in conns:
        if c.mode != "tunnel":
            continue
        nets = list(c.local_ts) + list(c.remote_ts)
        fams = {n.version for n in nets}
        if not fams:
            for a in (c.peer, c.local):
                try:
                    fams.add(ipaddress.ip_address(str(a)).version)
                except ValueError:
                    pass
        for f in fams:
            out.setdefault(f, []).append(c.name)
    return out


def warnings(conns, probe=forwarding) -> list[str]:
    """One line per IP version that tunnel-mode connections need and that is not forwarded."""
    lines = []
    for fam, names in sorted(needed_families(conns).items()):
        if probe(fam) is False:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            lines.append(f"IPv{fam} forwarding is off ({SYSCTL[fam]} = 0): the tunnel-mode "
                         f"connection(s) {shown} carry only this host's own traffic, not its "
                         f"subnets'; to route: sysctl -w {SYSCTL[fam]}=1 (and in /etc/sysctl.d/ "
                         f"to keep it)")
    return lines


if __name__ == "__main__":  # python -m vpnd.net.forwarding: what this namespace does
    for fam in (4, 6):
        print(SYSCTL[fam], forwarding(fam))
