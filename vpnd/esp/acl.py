"""The data plane's access lists: `access_group` entries (vpnd/acl.py) matched against
cleartext packets, first match wins, implicit deny at the end (as IOS ACLs).

`out` lists see a packet from the TUN before it is encrypted, `in` lists a packet after it
was decrypted and its selectors checked (Cisco `set ip access-group ACL {out|in}`). Only
connections that have a list pay for it.

Non-initial fragments carry no ports or ICMP type. IOS's rule for them, followed here: an
entry with layer-4 conditions still matches on its addresses and protocol when it is a
permit, and is skipped when it is a deny (so a deny for one port cannot drop the tails of
other traffic); an entry with `fragments` matches only non-initial fragments.
"""

from __future__ import annotations

_from_bytes = int.from_bytes
_V6_EXT = (0, 43, 60)          # hop-by-hop, routing, destination options (RFC 8200 4)
_V6_FRAG = 44
_V6_AH = 51
_L4_PORTS = (6, 17, 132)


def _fields(pkt):
    """-> (version, proto, src, dst, nonfirst, l4 offset or -1). l4 offset is -1 when the
    packet is a non-initial fragment or too short to hold its layer-4 header."""
    v = pkt[0] >> 4
    n = len(pkt)
    if v == 4:
        if n < 20:
            return None
        ihl = (pkt[0] & 15) * 4
        off = (pkt[6] << 8 | pkt[7]) & 0x1FFF
        return (4, pkt[9], _from_bytes(pkt[12:16], "big"), _from_bytes(pkt[16:20], "big"),
                off != 0, ihl if off == 0 and n >= ihl + 4 else -1)
    if v == 6 and n >= 40:
        nh = pkt[6]
        pos = 40
        nonfirst = False
        for _ in range(8):                      # a bounded walk of the extension headers
            if nh in _V6_EXT:
                if n < pos + 8:
                    break
                nh, pos = pkt[pos], pos + (pkt[pos + 1] + 1) * 8
            elif nh == _V6_FRAG:
                if n < pos + 8:
                    break
                nonfirst = ((pkt[pos + 2] << 8 | pkt[pos + 3]) >> 3) != 0
                nh, pos = pkt[pos], pos + 8
            elif nh == _V6_AH:
                if n < pos + 8:
                    break
                nh, pos = pkt[pos], pos + (pkt[pos + 1] + 2) * 4
            else:
                break
        return (6, nh, _from_bytes(pkt[8:24], "big"), _from_bytes(pkt[24:40], "big"),
                nonfirst, pos if not nonfirst and n >= pos + 4 else -1)
    return None


def _in_ports(p, r) -> bool:
    lo, hi, neg = r
    return (lo <= p <= hi) != neg


class AccessList:
    """Compiled entries with a match counter each (IOS `show access-lists` "(N matches)")
    and one for the implicit deny."""

    __slots__ = ("aces", "hits", "implicit_deny", "permitted", "denied")

    def __init__(self, aces):
        self.aces = tuple(aces)
        self.hits = [0] * len(self.aces)
        self.implicit_deny = 0
        self.permitted = 0
        self.denied = 0

    def permit(self, pkt) -> bool:
        f = _fields(pkt)
        if f is None:
            self.denied += 1
            self.implicit_deny += 1
            return False
        ver, proto, src, dst, nonfirst, l4 = f
        for i, a in enumerate(self.aces):
            if a.family is not None and a.family != ver:
                continue
            if a.proto is not None:
                want = a.proto
                if want == 1 and ver == 6 and a.family is None:
                    want = 58
                if proto != want:
                    continue
            s = a.src
            if s is not None and (s[0] != ver or src & s[2] != s[1]):
                continue
            d = a.dst
            if d is not None and (d[0] != ver or dst & d[2] != d[1]):
                continue
            if a.fragments:
                if not nonfirst:
                    continue
            elif a.sport is not None or a.dport is not None or a.icmp is not None \
                    or a.established:
                if nonfirst:
                    if not a.permit:
                        continue                # IOS: a deny with L4 skips non-initial frags
                elif l4 < 0:
                    continue                    # truncated: no L4 to match on
                elif not self._l4_ok(a, pkt, proto, l4):
                    continue
            self.hits[i] += 1
            if a.permit:
                self.permitted += 1
                return True
            self.denied += 1
            return False
        self.implicit_deny += 1
        self.denied += 1
        return False

    @staticmethod
    def _l4_ok(a, pkt, proto, l4) -> bool:
        if proto in _L4_PORTS:
            if a.sport is not None and not _in_ports(pkt[l4] << 8 | pkt[l4 + 1], a.sport):
                return False
            if a.dport is not None and not _in_ports(pkt[l4 + 2] << 8 | pkt[l4 + 3], a.dport):
                return False
            if a.established:
                # RFC 793 flags: ACK or RST set = a packet of an established connection
                return len(pkt) > l4 + 13 and pkt[l4 + 13] & 0x14 != 0
            return True
        if a.icmp is not None:
            t, c = a.icmp
            return pkt[l4] == t and (c is None or pkt[l4 + 1] == c)
        return True

    def snapshot(self) -> dict:
        return {"entries": [{"entry": a.text, "matches": h} for a, h in zip(self.aces, self.hits)],
                "implicit_deny": self.implicit_deny, "permitted": self.permitted,
                "denied": self.denied}


class ConnFilter:
    """A connection's two lists (either may be None). Replaced as a whole on reload, so
    counters restart with a changed list, as on IOS when an ACL is re-entered."""

    __slots__ = ("inbound", "outbound", "spec")

    def __init__(self, inbound=None, outbound=None):
        self.inbound = AccessList(inbound) if inbound else None
        self.outbound = AccessList(outbound) if outbound else None
        self.spec = (tuple(inbound or ()), tuple(outbound or ()))

    def snapshot(self) -> dict:
        out = {}
        if self.inbound is not None:
            out["in"] = self.inbound.snapshot()
        if self.outbound is not None:
            out["out"] = self.outbound.snapshot()
        return out
