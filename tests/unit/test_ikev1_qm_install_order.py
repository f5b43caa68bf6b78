"""Quick Mode installs without a one-way window: the responder receives on a new SA from the
moment it sends message 2 (the initiator sends on it right after message 3), sends on it
only after message 3, and forgets the inbound half if message 3 never comes. A rekey
initiator receives on the new SA from message 2 on and sends on it only OUTBOUND_SETTLE
later (a strongSwan responder installs on message 3, in another thread than its ESP).

Every child action the cores emit goes, in the order they emit them, into each side's real
SA table (vpnd/sadb.py, test_ikev1_harness.Net): after each one, no SPI an outbound policy of
one side sends on may be missing from the other side's inbound SAs."""
from vpnd.ike.actions import DeleteChildSA, SendDatagram
from vpnd.ike.v1 import constants as C
from vpnd.config import Timers

OUTBOUND_SETTLE = Timers().outbound_settle

from test_ikev1_harness import pair


def _quick(dg: SendDatagram) -> tuple[int, bytes] | None:
    """(message ID, data) of a Quick Mode datagram (port 500, no NAT-T marker)."""
    if len(dg.data) >= 28 and dg.data[18] == C.EXCH_QUICK:
        return int.from_bytes(dg.data[20:24], "big"), dg.data
    return None


def _drop_message3(times: int):
    """A drop hook losing the initiator's (A's) message 3 of each Quick Mode `times` times:
    its second distinct datagram for a message ID."""
    first, lost = {}, {}

    def drop(side, dg):
        q = _quick(dg)
        if side != "A" or q is None:
            return False
        mid, data = q
        if first.setdefault(mid, data) == data:
            return False  # message 1 (or its retransmission)
        if lost.get(mid, 0) < times:
            lost[mid] = lost.get(mid, 0) + 1
            return True
        return False
    return drop


def test_responder_receives_before_initiator_sends():
    net = pair({"lifetime": {"seconds": 100}}, {"lifetime": {"seconds": 100}})
    net.advance(300)  # the first pair and a few rekeys
    assert len(net.installs("A")) >= 3
    # every pair of B's was first installed inbound only, before A got message 2
    full_b = net.installs("B")
    assert {x.child_id for x in net.inbound_only("B")} == {x.child_id for x in full_b}
    # A's rekeys too (its first pair, with nothing to replace, goes in whole)
    first_a = net.installs("A")[0]
    assert first_a.replaces is None and first_a.child_id not in {x.child_id for x in net.inbound_only("A")}
    assert {x.child_id for x in net.inbound_only("A")} == {x.child_id for x in net.installs("A")[1:]}
    assert not net.violations, net.violations[:3]
    assert len(net.live_children("A")) == 1 and len(net.live_children("B")) == 1


def test_lost_message3_leaves_no_one_way_window():
    net = pair({"lifetime": {"seconds": 100}}, {"lifetime": {"seconds": 100}}, start=False)
    net.drop = _drop_message3(1)
    net.feed(net.a, net.a.initiate("site", 0.0))
    net.advance(250)
    # A sent on each new pair while B had not seen message 3 yet; B's retransmitted
    # message 2 drew the lost HASH(3) again and B then moved its outbound traffic too
    assert len(net.installs("A")) >= 3 and len(net.installs("B")) == len(net.installs("A"))
    assert not net.violations, net.violations[:3]
    a_out = {k.spi for x in net.installs("A") for k in x.outbound}
    b_in = {k.spi for x in net.inbound_only("B") for k in x.inbound}
    assert a_out <= b_in


def test_inbound_half_removed_when_message3_never_comes():
    net = pair(start=False)
    net.drop = _drop_message3(100)
    net.feed(net.a, net.a.initiate("site", 0.0))
    half = net.inbound_only("B")
    assert len(half) == 1 and not net.installs("B")
    assert not net.of("B", DeleteChildSA)
    net.advance(400)  # B's retransmissions of message 2 run out (4 s doubling, 5 tries)
    assert half[0].child_id in {d.child_id for d in net.of("B", DeleteChildSA)}
    assert not net.installs("B") and half[0].child_id not in net.b.children
    assert not net.b.qms.get(1)  # the exchange itself is forgotten
    # its SPIs are free again
    assert not {k.spi for k in half[0].inbound} & net.b._spis_in


def test_inbound_half_removed_with_its_isakmp_sa():
    net = pair(start=False)
    net.drop = _drop_message3(100)
    net.feed(net.a, net.a.initiate("site", 0.0))
    half = net.inbound_only("B")
    assert len(half) == 1
    sa = next(iter(net.b.sas.values()))
    net.feed(net.b, net.b.terminate("site", net.now))
    assert half[0].child_id in {d.child_id for d in net.of("B", DeleteChildSA)}
    assert sa.cky_i not in net.b.sas


def test_rekey_initiator_keeps_old_outbound_until_settled():
    net = pair()
    old = net.installs("A")[0]
    net.feed(net.a, net.a.child_expiring(old.child_id, False, net.now))
    half = net.inbound_only("A")
    assert len(half) == 1 and half[0].replaces == old.child_id
    # B has both halves (HASH(3) arrived); A still sends on the old pair
    assert len(net.installs("B")) == 2 and len(net.installs("A")) == 1
    start = net.now
    net.advance(OUTBOUND_SETTLE / 2)
    assert len(net.installs("A")) == 1
    net.advance(OUTBOUND_SETTLE)
    new = net.installs("A")[1]
    assert new.child_id == half[0].child_id and new.replaces == old.child_id
    assert [k.spi for k in new.inbound] == [k.spi for k in half[0].inbound]
    # the old pair is not deleted before the new one carries A's traffic
    assert not net.of("A", DeleteChildSA) and net.now - start < OUTBOUND_SETTLE * 2
    net.advance(30)
    assert old.child_id in {d.child_id for d in net.of("A", DeleteChildSA)}
    assert not net.violations
    assert net.live_children("A") == [new.child_id]
