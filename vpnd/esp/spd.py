"""Security Policy Database: traffic selectors (subnets) to outbound SA bundles.

A selector list is a tuple of networks ("10.1.0.0/16", ipaddress objects).  Matching is
integer mask arithmetic on the packed addresses; the most specific policy wins (longest
remote prefix, then longest local prefix), RFC 4301 4.4.1 leaves the ordering to us and
this is what users expect from routing.
"""

from __future__ import annotations

import ipaddress


def parse_selectors(ts) -> tuple[tuple[int, int, int, int], ...]:
    """-> ((version, network_int, mask_int, prefixlen), ...) from strings / networks."""
    out = []
    if isinstance(ts, (str, ipaddress.IPv4Network, ipaddress.IPv6Network)):
        ts = (ts,)
    for t in ts or ():
        net = ipaddress.ip_network(t, strict=False)
        out.append((net.version, int(net.network_address), int(net.netmask), net.prefixlen))
    return tuple(out)


def selectors_v4(sel) -> tuple[tuple[int, int], ...]:
    return tuple((n, m) for v, n, m, _ in sel if v == 4)


def selectors_v6(sel) -> tuple[tuple[int, int], ...]:
    return tuple((n, m) for v, n, m, _ in sel if v == 6)


def addr_in(addr: int, nets) -> bool:
    for n, m in nets:
        if addr & m == n:
            return True
    return False


class Policy:
    """One outbound policy: selectors, the bundle (SAs applied inner to outer) or none
    (a trap policy: matching packets produce acquire events)."""

    __slots__ = ("policy_id", "local_ts", "remote_ts", "local4", "remote4", "local6",
                 "remote6", "bundle", "max_inner", "outer_mtu", "specificity", "encap")

    def __init__(self, policy_id, local_ts, remote_ts, bundle):
        self.policy_id = policy_id
        self.local_ts = parse_selectors(local_ts)
        self.remote_ts = parse_selectors(remote_ts)
        self.local4 = selectors_v4(self.local_ts)
        self.remote4 = selectors_v4(self.remote_ts)
        self.local6 = selectors_v6(self.local_ts)
        self.remote6 = selectors_v6(self.remote_ts)
        self.bundle = tuple(bundle or ())
        self.max_inner = 0
        self.outer_mtu = None        # None: the DataPlane's outer_mtu
        self.encap = None
        self.specificity = (max((p for *_, p in self.remote_ts), default=0),
                            max((p for *_, p in self.local_ts), default=0))

    def entries(self):
        """(specificity, local_nets, remote_nets, version) per selector pair."""
        for lv, ln, lm, lp in self.local_ts:
            for rv, rn, rm, rp in self.remote_ts:
                if lv == rv:
                    yield (rp, lp), lv, (ln, lm), (rn, rm)


class SPD:
    """Outbound lookup with a per-(src, dst) cache; the cache is cleared on any change
    and when it grows past CACHE_MAX (so a scan of addresses cannot exhaust memory)."""

    CACHE_MAX = 65536

    def __init__(self):
        self.policies: dict = {}
        self._v4: list = []     # [(ln, lm, rn, rm, policy)] most specific first
        self._v6: list = []
        self.cache: dict = {}

    def add(self, policy: Policy) -> None:
        self.policies[policy.policy_id] = policy
        self._rebuild()

    def remove(self, policy_id) -> Policy | None:
        p = self.policies.pop(policy_id, None)
        self._rebuild()
        return p

    def _rebuild(self) -> None:
        v4, v6 = [], []
        order = 0
        for p in self.policies.values():
            for spec, ver, (ln, lm), (rn, rm) in p.entries():
                order += 1
                (v4 if ver == 4 else v6).append((spec, -order, ln, lm, rn, rm, p))
        v4.sort(key=lambda e: (e[0], e[1]), reverse=True)
        v6.sort(key=lambda e: (e[0], e[1]), reverse=True)
        self._v4 = [e[2:] for e in v4]
        self._v6 = [e[2:] for e in v6]
        self.cache = {}

    def lookup4(self, src: int, dst: int):
        for ln, lm, rn, rm, p in self._v4:
            if dst & rm == rn and src & lm == ln:
                return p
        return None

    def lookup6(self, src: int, dst: int):
        for ln, lm, rn, rm, p in self._v6:
            if dst & rm == rn and src & lm == ln:
                return p
        return None
