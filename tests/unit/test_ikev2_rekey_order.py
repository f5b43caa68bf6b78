"""Make-before-break of IKEv2 child rekeys (RFC 7296 2.8), against a model of the data plane.

Two cores talk in memory (test_ikev2_pair.Pair), one datagram at a time. After every action a
model of each side's data plane (inbound SPIs installed, SPI its outbound policy sends on)
is checked: neither side may ever send on an SA the other cannot receive. ESP packets sent
just before an IKE message (up to IN_FLIGHT earlier) may be read after it (ESP and IKE come in
on separate sockets): their SPIs must still be receivable when that message has been processed.
"""
from __future__ import annotations

import pytest

from test_ikev2_pair import Pair
from vpnd.ike.actions import DeleteChildSA, InstallChildSA, SendDatagram
from vpnd.config import Timers

INBOUND_LINGER, OUTBOUND_FALLBACK = Timers().inbound_linger, Timers().outbound_fallback

IN_FLIGHT = 0.05  # one RTT of a slow link, far below INBOUND_LINGER


class DataPlane:
    """What the daemon does with InstallChildSA/DeleteChildSA (daemon._install_child)."""

    def __init__(self):
        self.inbound: dict[int, int] = {}  # SPI -> child id
        self.policy: dict[int, int] = {}  # child id -> outbound SPI (one policy: the tunnel)
        self.holder: int | None = None
        self.retired: dict[int, float] = {}  # outbound SPI -> when the policy left it

    def apply(self, act, now: float):
        if isinstance(act, InstallChildSA):
            for k in act.inbound:
                self.inbound[k.spi] = act.child_id
            if act.outbound:
                # make-before-break: the outbound policy of `replaces` moves to this child
                if self.sends_on() is not None:
                    self.retired[self.sends_on()] = now
                self.holder = act.child_id
                self.policy = {act.child_id: act.outbound[0].spi}
        elif isinstance(act, DeleteChildSA):
            self.inbound = {s: c for s, c in self.inbound.items() if c != act.child_id}
            if self.holder == act.child_id:
                self.holder, self.policy = None, {}

    def sends_on(self) -> int | None:
        return self.policy.get(self.holder) if self.holder is not None else None

    def sent_lately(self, now: float) -> set[int]:
        """SPIs ESP packets sent until now may carry."""
        spis = {s for s, t in self.retired.items() if t >= now - IN_FLIGHT}
        return spis | ({self.sends_on()} if self.sends_on() is not None else set())


class ModelPair(Pair):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.dp = {id(self.a): DataPlane(), id(self.b): DataPlane()}
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
        actions = list(actions)
        for act in actions:
            if isinstance(act, SendDatagram):
                self.flight[id(act)] = self.dp[id(side)].sent_lately(self.now)
            else:
                self.dp[id(side)].apply(act, self.now)
                self.check()
        super().feed(side, actions)

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
