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
    (a trap policy: matching packets produce acquire events; with `block`, they are
    dropped and counted: a connection that must not negotiate now, fail closed)."""

    __slots__ = ("policy_id", "local_ts", "remote_ts", "local4", "remote4", "local6",
                 "remote6", "bundle", "max_inner", "outer_mtu", "specificity", "encap", "block")

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
        self.block = False           # no bundle: True = drop (fail closed), False = trap
        self.specificity = (max((p for *_, p in self.remote_ts), default=0),
                            max((p for *_, p in self.local_ts), default=0))

    def entries(self):
        """(specificity, local_nets, remote_nets, version) per selector pair."""
        for lv, ln, lm, lp in self.local_ts:
            for rv, rn, rm, rp in self.remote_ts:
                if lv == rv:
                    yield (rp, lp), lv, (ln, lm), (rn, rm)


class _Index:
    """Selector pairs of one IP version, found in O(number of distinct remote prefix
    lengths) instead of a scan: a dict per remote prefix length, keyed by the masked
    destination; each bucket holds its entries most specific local prefix first, then in
    the order they were added. Changes are incremental (a hub with thousands of tunnels
    adds and removes policies all the time)."""

    __slots__ = ("by_len", "lengths")

    def __init__(self):
        self.by_len: dict[int, dict[int, list]] = {}   # remote prefixlen -> {masked dst: bucket}
        self.lengths: list[tuple[int, int, dict]] = []  # (prefixlen, mask, buckets), longest first

    def add(self, rp: int, rm: int, rn: int, entry) -> None:
        buckets = self.by_len.get(rp)
        if buckets is None:
            buckets = self.by_len[rp] = {}
            self.lengths = sorted(((l, m, self.by_len[l]) for l, m, _ in self.lengths + [(rp, rm, None)]),
                                  key=lambda x: x[0], reverse=True)
        bucket = buckets.setdefault(rn, [])
        bucket.append(entry)
        bucket.sort(key=lambda e: (-e[0], e[1]))      # (local prefixlen desc, order asc)

    def remove(self, rp: int, rn: int, policy) -> None:
        buckets = self.by_len.get(rp)
        if not buckets:
            return
        bucket = [e for e in buckets.get(rn, ()) if e[4] is not policy]
        if bucket:
            buckets[rn] = bucket
        else:
            buckets.pop(rn, None)
        if not buckets:
            del self.by_len[rp]
            self.lengths = [x for x in self.lengths if x[0] != rp]

    def lookup(self, src: int, dst: int):
        for _, rm, buckets in self.lengths:
            bucket = buckets.get(dst & rm)
            if bucket is not None:
                for _lp, _order, ln, lm, p in bucket:
                    if src & lm == ln:
                        return p
        return None


class SPD:
    """Outbound lookup: an index per IP version (most specific remote prefix, then local
    prefix, then the older policy wins) with a per-(src, dst) cache in front; the cache is
    cleared on any change and when it grows past CACHE_MAX (so a scan of addresses cannot
    exhaust memory)."""

    CACHE_MAX = 65536

    def __init__(self):
        self.policies: dict = {}
        self._v4 = _Index()
        self._v6 = _Index()
        self._order = 0
        self.cache: dict = {}

    def add(self, policy: Policy) -> None:
        if policy.policy_id in self.policies:
            self.remove(policy.policy_id)
        self.policies[policy.policy_id] = policy
        for (rp, lp), ver, (ln, lm), (rn, rm) in policy.entries():
            self._order += 1
            (self._v4 if ver == 4 else self._v6).add(rp, rm, rn, (lp, self._order, ln, lm, policy))
        self.cache = {}

    def remove(self, policy_id) -> Policy | None:
        p = self.policies.pop(policy_id, None)
        if p is not None:
            for (rp, _lp), ver, _l, (rn, _rm) in p.entries():
                (self._v4 if ver == 4 else self._v6).remove(rp, rn, p)
        self.cache = {}
        return p

    def lookup4(self, src: int, dst: int):
        return self._v4.lookup(src, dst)

    def lookup6(self, src: int, dst: int):
        return self._v6.lookup(src, dst)
