"""Make-before-break of IKEv2 child rekeys (RFC 7296 2.8), through the daemon's SA table.

Two cores talk in memory (test_ikev2_pair.Pair), one datagram at a time; each side's child
actions go into the real SA table (vpnd/sadb.py). After every action the table of each side
(inbound SPIs installed, SPI its outbound policy sends on) is checked: neither side may ever
send on an SA the other cannot receive. ESP packets sent just before an IKE message (up to
IN_FLIGHT earlier) may be read after it (ESP and IKE come in on separate sockets): their SPIs
must still be receivable when that message has been processed.
"""
from __future__ import annotations

import pytest

from test_ikev2_pair import Pair
from vpnd.ike.actions import SendDatagram
from vpnd.config import Timers

INBOUND_LINGER, OUTBOUND_FALLBACK = Timers().inbound_linger, Timers().outbound_fallback

IN_FLIGHT = 0.05  # one RTT of a slow link, far below INBOUND_LINGER


class View:
    """What one side's SA table makes the data plane do: SPIs it receives on, the SPI its
    (one) outbound policy sends on, and when the policy left an SPI."""

    def __init__(self, side):
        self.table = side.table
        self.retired: dict[int, float] = {}  # outbound SPI -> when the policy left it

    @property
    def inbound(self) -> set[int]:
        return {k.spi for c in self.table.children.values() for k in c.inbound}

    def sends_on(self) -> int | None:
        spis = [c.outbound[0].spi for c in self.table.children.values() if c.policy_id is not None]
        assert len(spis) <= 1, "two outbound policies for one tunnel"
        return spis[0] if spis else None

    def sent_lately(self, now: float) -> set[int]:
        """SPIs ESP packets sent until now may carry."""
        spis = {s for s, t in self.retired.items() if t >= now - IN_FLIGHT}
        return spis | ({self.sends_on()} if self.sends_on() is not None else set())


class ModelPair(Pair):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.dp = {id(self.a): View(self.a), id(self.b): View(self.b)}
        self.checks = 0
        self.flight: dict[int, set[int]] = {}  # id(SendDatagram) -> ESP SPIs sent before it
        self.armed = False  # from the first tunnel on (setting it up is not make-before-break)

    def up(self, side=None):
        super().up(side)
        self.armed = True

    def check(self, in_flight=()):
        if not self.armed:
            return
        for s in (self.a, self.b):
            out = self.dp[id(s)].sends_on()
            peer = self.dp[id(self.other(s))]
            if out is not None:
                assert out in peer.inbound, f"{s.name} sends on {out:08x}, {self.other(s).name} cannot receive it"
        for spi, receiver in in_flight:
            assert spi in self.dp[id(receiver)].inbound, f"packet on {spi:08x} in flight to {receiver.name} lost"
        self.checks += 1

    def feed(self, side, actions):
        view = self.dp[id(side)]
        for act in actions:
            before = view.sends_on()
            if isinstance(act, SendDatagram):
                self.flight[id(act)] = view.sent_lately(self.now)
            super().feed(side, [act])
            if view.sends_on() != before and before is not None:
                view.retired[before] = self.now
            if not isinstance(act, SendDatagram):
                self.check()

    def timer_ops(self, side, ops):
        super().timer_ops(side, ops)
        self.check()

    def pump(self, limit: int = 500):
        n = 0
        while self.wire:
            sender, d = self.wire.pop(0)
            dst = self.by_ip.get(d.remote[0])
            if dst is None or d.data == b"\xff":
                continue
            # ESP the sender sent just before this IKE message, read by the receiver after it
            flight = [(spi, dst) for spi in self.flight.get(id(d), ())]
            self.feed(dst, dst.m.receive(d.data, d.remote, d.local, self.now))
            self.check(flight)
            n += 1
            assert n < limit, "message storm"


@pytest.mark.parametrize("pfs", [False, True])
@pytest.mark.parametrize("by", ["a", "b"])
def test_no_moment_without_a_receivable_sa(pfs, by):
    kw = {"esp": "aes128gcm16-modp2048"} if pfs else {}
    p = ModelPair(kw, kw)
    p.up()
    p.check()
    for _ in range(3):
        s = p.a if by == "a" else p.b
        p.feed(s, s.m.rekey("site", p.now))
        p.pump()
        p.run(INBOUND_LINGER + 0.5)
        (ca,), (cb,) = p.check_tunnel()
        assert p.dp[id(p.a)].sends_on() == ca.outbound[0].spi
        assert p.dp[id(p.b)].sends_on() == cb.outbound[0].spi
        assert len(p.dp[id(p.a)].inbound) == 1 and len(p.dp[id(p.b)].inbound) == 1
    assert p.checks > 20


def test_responder_moves_outbound_only_on_the_delete():
    p = ModelPair()
    p.up()
    (old_b,) = p.b.installed()
    p.feed(p.a, p.a.m.rekey("site", p.now))
    # deliver the CREATE_CHILD_SA request only: the responder installs the new SA inbound only
    sender, d = p.wire.pop(0)
    p.feed(p.b, p.b.m.receive(d.data, d.remote, d.local, p.now))
    new_b = [c for c in p.b.children.values() if c.child_id != old_b.child_id]
    assert len(new_b) == 1 and not new_b[0].outbound
    assert p.dp[id(p.b)].sends_on() == old_b.outbound[0].spi
    p.pump()  # answer, then the initiator's Delete of the old SA moves the responder
    assert p.dp[id(p.b)].sends_on() == p.b.children[new_b[0].child_id].outbound[0].spi
    assert "child_outbound" in p.b.kinds()


def test_responder_falls_back_when_no_delete_comes():
    p = ModelPair()
    p.up()
    (old_b,) = p.b.installed()
    # the initiator's Delete of the old SA is lost every time
    # (INFORMATIONAL requests of the initiator: exchange type 37, response flag 0x20 clear)
    p.filter = lambda side, d: "drop" if side is p.a and d.data[18] == 37 and not d.data[19] & 0x20 else None
    p.feed(p.a, p.a.m.rekey("site", p.now))
    p.pump()
    assert p.dp[id(p.b)].sends_on() == old_b.outbound[0].spi
    p.run(OUTBOUND_FALLBACK + 0.01)
    assert p.dp[id(p.b)].sends_on() != old_b.outbound[0].spi
    assert p.dp[id(p.b)].sends_on() in p.dp[id(p.a)].inbound
