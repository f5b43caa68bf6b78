"""One DPD rule for IKEv1 and IKEv2 (issue 7.9), and one retransmission policy (issue 9):
vpnd/ike/liveness.py. The same scenario table runs through both cores in memory.

Rule: the first probe after `interval` s of silence, retried every `retry` s five times,
the peer dead `retry` s after the last retry: probes at I, I+R, ..., I+5R; dead at I+6R.
"""
from __future__ import annotations

import pytest

import test_ikev1_harness as v1h
from test_ikev2_pair import Pair
from vpnd.config import Timers
from vpnd.ike import liveness

# (interval, retry) -> probe times and death, counted from the peer's last message
SCENARIOS = {
    (2, 2): ([2, 4, 6, 8, 10, 12], 14),  # the case: was 0 retransmissions (v2), ~12 s (v1)
    (3, 1): ([3, 4, 5, 6, 7, 8], 9),
    (10, 3): ([10, 13, 16, 19, 22, 25], 28),
    (30, 5): ([30, 35, 40, 45, 50, 55], 60),
}


class _Dpd:
    def __init__(self, interval, retry):
        self.interval, self.retry = interval, retry


@pytest.mark.parametrize("ir", SCENARIOS)
def test_rule(ir):
    probes, dead = SCENARIOS[ir]
    assert liveness.dpd_schedule(_Dpd(*ir)) == (probes, dead)


def _dpd(ir):
    return {"interval": ir[0], "retry": ir[1], "mode": "periodic", "action": "clear"}


@pytest.mark.parametrize("ir", SCENARIOS)
def test_ikev2_follows_the_rule(ir):
    p = Pair({"dpd": _dpd(ir)})
    p.up()
    p.check_tunnel()
    silent_since = p.now  # B's IKE_AUTH answer was the last thing A heard
    p.filter = lambda s, d: "drop" if s is p.b else None  # B dies
    dead_at = None
    while dead_at is None and p.now - silent_since < 200:
        t = p.a.m.next_timer()
        p.now = max(p.now, t)
        p.feed(p.a, p.a.m.handle_timer(p.now))
        p.pump()
        if "peer_dead" in p.a.kinds():
            dead_at = p.now
    probes = [t - silent_since for t, d in p.a.sent
              if t > silent_since and d.data[18] == 37 and not d.data[19] & 0x20]
    assert (probes, dead_at - silent_since) == SCENARIOS[ir]


@pytest.mark.parametrize("ir", SCENARIOS)
def test_ikev1_follows_the_rule(ir):
    net = v1h.pair({"dpd": _dpd(ir)}, {"dpd": {"interval": 0}})
    assert net.installs("A")
    silent_since = 0.0  # the handshake ran at t = 0 (pair() then advanced 1 s)
    net.drop = lambda side, dg: side == "B"
    probes = []
    orig = net.a._dpd_probe

    def spy(sa, now):
        probes.append(now - silent_since)
        return orig(sa, now)

    net.a._dpd_probe = spy
    dead_at = None
    while dead_at is None and net.now - silent_since < 200:
        t = net.a.next_timer()
        net.advance(max(0.0, t - net.now) + 1e-6)
        if net.events("A", "peer_dead"):
            dead_at = net.now
    assert probes == SCENARIOS[ir][0]
    assert dead_at - silent_since == pytest.approx(SCENARIOS[ir][1], abs=1e-3)


def test_ikev2_other_requests_share_the_dpd_budget():
    """A rekey the peer never answers: with DPD on, the peer is dead (DPD_RETRIES+1) x retry
    after the request, as for a probe; the RFC back-off is cut to fit."""
    p = Pair({"dpd": {"interval": 30, "retry": 2, "mode": "periodic", "action": "clear"}})
    p.up()
    p.filter = lambda s, d: "drop" if s is p.b else None
    t0 = p.now
    p.feed(p.a, p.a.m.rekey("site", p.now))
    while "peer_dead" not in p.a.kinds() and p.now - t0 < 200:
        p.now = max(p.now, p.a.m.next_timer())
        p.feed(p.a, p.a.m.handle_timer(p.now))
    assert p.now - t0 == 12
    sends = [t - t0 for t, d in p.a.sent if t >= t0 and d.data[18] == 36]
    assert sends == [0, 2, 6]  # 2 s, 4 s, then the rest of the 12 s budget


def test_retransmission_policy_is_one():
    t = Timers()  # daemon.timers' defaults
    assert liveness.retransmit_timeouts(t) == [2, 4, 8, 16, 32, 64]
    assert [liveness.retransmit_wait(i, t) for i in range(6)] == liveness.retransmit_timeouts(t)
    assert liveness.within([2, 4, 8, 16], 12) == [2, 4, 6]
    assert liveness.within([2, 4], 100) == [2, 4, 94]
