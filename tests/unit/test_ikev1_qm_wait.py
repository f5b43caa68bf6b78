"""Issue 7.8: a Quick Mode responder's inbound-only SA (installed with message 2, waiting
for HASH(3)) is shown in status and goes when the exchange times out, not after the whole
retransmission schedule (252 s)."""
from vpnd.ike.actions import DeleteChildSA
from vpnd.config import Timers
from vpnd.ike.v1 import core

from test_ikev1_harness import pair

QM_INBOUND_ONLY_WAIT = Timers().inbound_only_wait


def _drop_hash3(net):
    first = {}

    def drop(side, dg):
        if side != "A" or dg.data[18] != 32:
            return False
        mid = dg.data[20:24]
        first.setdefault(mid, dg.data)
        return dg.data != first[mid]  # not message 1 (nor its repeat): HASH(3)

    net.drop = drop


def _inbound_only_status(net, side="B"):
    core = net.b if side == "B" else net.a
    return [ch for sa in core.status_ike_sas(net.now) for ch in sa["child_sas"]
            if ch.get("state") == "INSTALLING"]


def test_qm_responder_waiting_for_hash3_is_shown_and_bounded():
    net = pair(start=False)
    _drop_hash3(net)
    net.feed(net.a, net.a.initiate("site", 0.0))
    assert net.inbound_only("B") and not net.installs("B")
    child_id = net.inbound_only("B")[0].child_id
    net.advance(10)
    shown = _inbound_only_status(net)
    assert [c["child_id"] for c in shown] == [child_id]
    assert shown[0]["inbound_only"] is True and shown[0]["spi_in"]
    assert net.b.connection_status("site")["child_sas"] == 0  # not counted as up
    net.advance(QM_INBOUND_ONLY_WAIT - 10 + 1)
    gone = [d for d in net.of("B", DeleteChildSA) if d.child_id == child_id]
    assert gone, "the inbound-only SA must go when the exchange times out"
    assert _inbound_only_status(net) == []
    assert any("HASH(3)" in e.message for e in net.events("B", "failed"))
    assert net.b.qms.get(next(iter(net.b.sas.values())).ike_id, {}) == {}
