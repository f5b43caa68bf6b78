"""Access-list entries in Cisco's extended ACL words: the config side of `access_group`.

A connection's `access_group` (Cisco `set ip access-group ACL {in|out}` in a crypto map)
filters the cleartext: `out` before encryption, `in` after decryption. Its entries are
written as on an IOS router, one entry per string:

    permit tcp 10.1.0.0 0.0.0.255 host 10.2.0.10 eq 22
    permit icmp any any echo
    deny   udp any 10.2.0.0/24 range 5000 5100
    permit ip any any

This module parses them into plain `Ace` tuples (no objects that cannot be copied to
another process); vpnd/esp/acl.py compiles them into the data plane's matcher. As on IOS,
a list that has entries ends with an implicit `deny ip any any`.

Words understood (IOS extended ACL; CIDR prefixes are accepted as well as wildcards):
  ACTION  permit | deny                      (a leading sequence number is ignored)
  PROTO   ip | ipv6 | tcp | udp | icmp | icmpv6 | esp | ahp | gre | ospf | eigrp |
          pim | sctp | 0-255
  ADDR    any | host A | A WILDCARD | A/LEN   (IPv4 or IPv6)
  PORTS   eq P | neq P | lt P | gt P | range P1 P2   after an address, tcp/udp/sctp only
  tail    established (tcp) | ICMP-TYPE [CODE] (icmp) | fragments
`remark ...` entries are skipped. `log` is refused: per-entry match counters are shown by
`vpnctl conns` instead.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

PROTOCOLS = {"ip": None, "ipv6": None, "tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58,
             "ipv6-icmp": 58, "esp": 50, "ahp": 51, "ah": 51, "gre": 47, "ospf": 89,
             "eigrp": 88, "pim": 103, "sctp": 132, "igmp": 2}
PORT_PROTOCOLS = (6, 17, 132)

# IOS port names (the ones `show run` prints instead of numbers)
PORT_NAMES = {"bgp": 179, "bootpc": 68, "bootps": 67, "domain": 53, "echo": 7, "ftp": 21,
              "ftp-data": 20, "www": 80, "http": 80, "https": 443, "isakmp": 500,
              "non500-isakmp": 4500, "ntp": 123, "smtp": 25, "snmp": 161, "snmptrap": 162,
              "ssh": 22, "syslog": 514, "telnet": 23, "tftp": 69, "pop3": 110, "imap": 143,
              "ldap": 389, "rip": 520, "sunrpc": 111}

# ICMP message names (IOS keywords), as (type, code or None); IPv4 and IPv6 differ
ICMP4_NAMES = {"echo-reply": (0, None), "unreachable": (3, None), "host-unreachable": (3, 1),
               "net-unreachable": (3, 0), "port-unreachable": (3, 3),
               "packet-too-big": (3, 4), "redirect": (5, None), "echo": (8, None),
               "router-advertisement": (9, None), "router-solicitation": (10, None),
               "time-exceeded": (11, None), "parameter-problem": (12, None),
               "timestamp-request": (13, None), "timestamp-reply": (14, None)}
ICMP6_NAMES = {"unreachable": (1, None), "packet-too-big": (2, None),
               "time-exceeded": (3, None), "parameter-problem": (4, None),
               "echo-request": (128, None), "echo": (128, None), "echo-reply": (129, None),
               "router-solicitation": (133, None), "router-advertisement": (134, None),
               "nd-ns": (135, None), "nd-na": (136, None)}


class Ace(NamedTuple):
    """One access-list entry. Addresses are (version, network int, mask int) or None for
    `any`; ports are (low, high, negate) or None; icmp is (type, code or None) or None."""
    permit: bool
    family: int | None          # 4, 6, or None = both (entries whose addresses are `any`)
    proto: int | None           # None = any protocol; `icmp` is 1 for IPv4, 58 for IPv6
    src: tuple | None
    dst: tuple | None
    sport: tuple | None
    dport: tuple | None
    icmp: tuple | None
    established: bool
    fragments: bool             # only non-initial fragments (IOS `fragments`)
    text: str                   # the entry as written, normalised (for vpnctl conns)


class AclError(ValueError):
    pass


def _addr(w: list[str], i: int) -> tuple[tuple | None, int]:
    if i >= len(w):
        raise AclError("address missing")
    tok = w[i].lower()
    if tok in ("any", "any4", "any6"):
        if tok == "any":
            return None, i + 1
        v = 4 if tok == "any4" else 6
        return (v, 0, 0), i + 1
    if tok == "host":
        if i + 1 >= len(w):
            raise AclError("'host' needs an address")
        a = _ip(w[i + 1])
        full = (1 << a.max_prefixlen) - 1
        return (a.version, int(a), full), i + 2
    if "/" in tok:
        try:
            net = ipaddress.ip_network(w[i], strict=False)
        except ValueError:
            raise AclError(f"'{w[i]}' is not an address/prefix") from None
        return (net.version, int(net.network_address), int(net.netmask)), i + 1
    a = _ip(w[i])
    if a.version == 4 and i + 1 < len(w) and _is_v4(w[i + 1]):
        wild = int(ipaddress.IPv4Address(w[i + 1]))
        mask = ~wild & 0xFFFFFFFF
        # IOS accepts discontiguous wildcards; the match below is plain mask arithmetic,
        # which handles them too
        return (4, int(a) & mask, mask), i + 2
    full = (1 << a.max_prefixlen) - 1
    return (a.version, int(a), full), i + 1      # a bare address = host (IOS)


def _ip(s: str):
    try:
        return ipaddress.ip_address(s)
    except ValueError:
        raise AclError(f"'{s}' is not an address (any, host A, A WILDCARD or A/LEN)") from None


def _is_v4(s: str) -> bool:
    try:
        ipaddress.IPv4Address(s)
        return True
    except ValueError:
        return False


def _port(s: str) -> int:
    low = s.lower()
    if low in PORT_NAMES:
        return PORT_NAMES[low]
    if not low.isdigit() or int(low) > 65535:
        raise AclError(f"'{s}' is not a port (0-65535 or a name such as ssh, www)")
    return int(low)


def _ports(w: list[str], i: int) -> tuple[tuple | None, int]:
    if i >= len(w):
        return None, i
    op = w[i].lower()
    if op in ("eq", "neq", "lt", "gt"):
        if i + 1 >= len(w):
            raise AclError(f"'{op}' needs a port")
        p = _port(w[i + 1])
        if op == "eq":
            return (p, p, False), i + 2
        if op == "neq":
            return (p, p, True), i + 2
        if op == "lt":
            if p == 0:
                raise AclError("'lt 0' matches nothing")
            return (0, p - 1, False), i + 2
        if p == 65535:
            raise AclError("'gt 65535' matches nothing")
        return (p + 1, 65535, False), i + 2
    if op == "range":
        if i + 2 >= len(w):
            raise AclError("'range' needs two ports")
        lo, hi = _port(w[i + 1]), _port(w[i + 2])
        if lo > hi:
            raise AclError(f"range {lo} {hi}: the first port is above the second")
        return (lo, hi, False), i + 3
    return None, i


def parse_ace(line: str) -> Ace | None:
    """One entry -> Ace; None for a remark. Raises AclError with a readable reason."""
    w = line.split()
    if w and w[0].isdigit():                     # sequence number (named ACLs)
        w = w[1:]
    if not w:
        raise AclError("empty entry")
    if w[0].lower() == "remark":
        return None
    action = w[0].lower()
    if action not in ("permit", "deny"):
        raise AclError(f"'{w[0]}': an entry starts with permit or deny")
    if len(w) < 2:
        raise AclError("protocol missing (ip, tcp, udp, icmp, ... or a number)")
    pname = w[1].lower()
    if pname in PROTOCOLS:
        proto = PROTOCOLS[pname]
    elif pname.isdigit() and int(pname) <= 255:
        proto = int(pname)
    else:
        raise AclError(f"unknown protocol '{w[1]}' (ip, tcp, udp, icmp, esp, gre, ... or 0-255)")
    src, i = _addr(w, 2)
    sport, i = _ports(w, i)
    dst, i = _addr(w, i)
    dport, i = _ports(w, i)
    family = {a[0] for a in (src, dst) if a is not None}
    if len(family) > 1:
        raise AclError("an entry cannot mix IPv4 and IPv6 addresses")
    fam = family.pop() if family else None
    if pname == "ipv6" or pname in ("icmpv6", "ipv6-icmp"):
        if fam == 4:
            raise AclError(f"'{pname}' with IPv4 addresses")
        fam = 6
    if proto == 1 and fam == 6:
        proto = 58                               # IOS IPv6 ACLs: `icmp` is ICMPv6
    if (sport or dport) and proto not in PORT_PROTOCOLS:
        raise AclError("ports are for tcp, udp or sctp entries")
    icmp = None
    established = fragments = False
    rest = w[i:]
    j = 0
    while j < len(rest):
        tok = rest[j].lower()
        if tok == "established":
            if proto != 6:
                raise AclError("'established' is for tcp entries")
            established = True
        elif tok == "fragments":
            if sport or dport or established or icmp:
                raise AclError("'fragments' cannot be combined with ports, established or "
                               "an ICMP type (non-initial fragments carry none)")
            fragments = True
        elif tok in ("log", "log-input"):
            raise AclError("'log' is not supported: `vpnctl conns` shows each entry's matches")
        elif proto in (1, 58) and icmp is None and not fragments:
            names = ICMP6_NAMES if (proto == 58 or fam == 6) else ICMP4_NAMES
            if tok.isdigit() and int(tok) <= 255:
                code = None
                if j + 1 < len(rest) and rest[j + 1].isdigit():
                    if int(rest[j + 1]) > 255:
                        raise AclError(f"ICMP code {rest[j + 1]} out of range")
                    code = int(rest[j + 1])
                    j += 1
                icmp = (int(tok), code)
            elif tok in names:
                icmp = names[tok]
            else:
                raise AclError(f"unknown ICMP type '{rest[j]}'")
        else:
            raise AclError(f"'{rest[j]}' not understood here")
        j += 1
    if icmp is not None and fam is None:
        # `icmp any any echo`: the type numbers differ per family; IOS IPv4 ACLs mean IPv4
        fam = 6 if proto == 58 else 4
    return Ace(action == "permit", fam, proto, src, dst, sport, dport, icmp, established,
               fragments, " ".join(w))


def parse_acl(entries) -> tuple[Ace, ...]:
    """A list of entry strings -> Aces (remarks dropped). Errors name the entry (1-based)."""
    if isinstance(entries, str) or not isinstance(entries, (list, tuple)):
        raise AclError("a list of entries such as 'permit tcp any host 10.2.0.1 eq 22'")
    out = []
    for n, e in enumerate(entries, 1):
        if not isinstance(e, str):
            raise AclError(f"entry {n}: a string such as 'permit ip any any'")
        try:
            ace = parse_ace(e)
        except AclError as err:
            raise AclError(f"entry {n} '{e.strip()}': {err}") from None
        if ace is not None:
            out.append(ace)
    return tuple(out)
