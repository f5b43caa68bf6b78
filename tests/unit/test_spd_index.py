"""The SPD's index gives the answer of a plain most-specific-first scan (the reference,
as RFC 4301 4.4.1 ordering is implemented: longest remote prefix, then longest local
prefix, then the policy added first) for any set of policies, adds and removes."""
from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from vpnd.esp.spd import SPD, Policy


def reference(policies: list[Policy], src: int, dst: int, version: int = 4):
    best = None
    for order, p in enumerate(policies):
        for (rp, lp), ver, (ln, lm), (rn, rm) in p.entries():
            if ver == version and dst & rm == rn and src & lm == ln:
                key = (rp, lp, -order)
                if best is None or key > best[0]:
                    best = (key, p)
    return best[1] if best else None


nets = st.builds(lambda a, l: str(ipaddress.ip_network((a & ~((1 << (32 - l)) - 1) if l else 0, l))),
                 st.sampled_from([0x0A010000, 0x0A010100, 0x0A020000, 0x0A020305, 0x0A000000]),
                 st.sampled_from([0, 8, 16, 24, 32]))
addrs = st.sampled_from([0x0A010001, 0x0A010105, 0x0A020305, 0x0A020001, 0x0B000001])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.lists(nets, min_size=1, max_size=2), st.lists(nets, min_size=1, max_size=2)),
                max_size=8),
       st.lists(st.integers(0, 7), max_size=4),
       st.lists(st.tuples(addrs, addrs), min_size=1, max_size=8))
def test_index_matches_the_reference_scan(pols, removals, lookups):
    spd = SPD()
    live = []
    for i, (l, r) in enumerate(pols):
        p = Policy(i, l, r, [])
        spd.add(p)
        live.append(p)
    for i in removals:
        spd.remove(i)
        live = [p for p in live if p.policy_id != i]
    for src, dst in lookups:
        assert spd.lookup4(src, dst) is reference(live, src, dst)


def test_re_adding_a_policy_id_replaces_it():
    spd = SPD()
    spd.add(Policy("x", ["10.1.0.0/16"], ["10.2.0.0/16"], []))
    new = Policy("x", ["10.1.0.0/16"], ["10.3.0.0/16"], [])
    spd.add(new)
    assert spd.lookup4(0x0A010001, 0x0A020001) is None
    assert spd.lookup4(0x0A010001, 0x0A030001) is new


def test_ten_thousand_host_policies_stay_one_dict_lookup():
    spd = SPD()
    for i in range(10000):
        spd.add(Policy(i, ["10.1.0.0/16"], [f"10.{100 + i // 65536}.{i // 256 % 256}.{i % 256}/32"], []))
    assert len(spd._v4.lengths) == 1           # one remote prefix length: one dict probe
    assert spd.lookup4(0x0A010001, (10 << 24) | (100 << 16) | (39 << 8) | 15).policy_id == 39 * 256 + 15
