"""Issue 7.10: after an IKE SA rekey, the peer never answers our Delete of the old SA. The
new SA is up and nothing is dead: the events say that the Delete went unanswered and the old
SA was removed, not "peer ... is dead, action restart"."""
from __future__ import annotations

import pytest

from test_ikev2_pair import Pair


def _is_info_response(d) -> bool:
    return d.data[18] == 37 and bool(d.data[19] & 0x20)


@pytest.mark.parametrize("action", ["restart", "clear"])
def test_unanswered_delete_of_rekeyed_ike_sa(action):
    dpd = {"interval": 30, "retry": 5, "mode": "periodic", "action": action}
    p = Pair({"dpd": dpd}, {"dpd": dpd})
    p.up()
    p.check_tunnel()
    old_ids = set(p.a.m.v2.sas)
    # B answers the CREATE_CHILD_SA but never the INFORMATIONAL with the Delete
    p.filter = lambda s, d: "drop" if s is p.b and _is_info_response(d) else None
    p.feed(p.a, p.a.m.rekey("site", p.now, ike=True))
    p.pump()
    p.run(30)
    kinds = p.a.kinds()
    assert "ike_rekeyed" in kinds
    assert "peer_dead" not in kinds, [e.message for e in p.a.events if e.kind == "peer_dead"]
    assert not any("is dead" in e.message for e in p.a.events)
    gone = [e for e in p.a.events if e.kind == "delete_unanswered"]
    assert len(gone) == 1
    assert "Delete" in gone[0].message and "removed" in gone[0].message
    assert not any(e.kind == "timeout" for e in p.a.events)  # not reported as a failure
    # the new SA is the one left, established, with the tunnel; nothing re-initiated
    sas = list(p.a.m.v2.sas.values())
    assert len(sas) == 1 and sas[0].ike_id not in old_ids and sas[0].state == "ESTABLISHED"
    assert not p.a.m.v2.retry_at
    p.filter = None
    p.run(60)
    p.check_tunnel()
    assert "peer_dead" not in p.a.kinds()


def test_unanswered_delete_on_terminate_is_not_a_dead_peer():
    dpd = {"interval": 30, "retry": 5, "mode": "periodic", "action": "restart"}
    p = Pair({"dpd": dpd}, {"dpd": dpd})
    p.up()
    p.filter = lambda s, d: "drop" if s is p.b else None
    p.feed(p.a, p.a.m.terminate("site", p.now))
    p.run(30)
    assert "peer_dead" not in p.a.kinds()
    assert [e.kind for e in p.a.events].count("delete_unanswered") == 1
    assert not p.a.m.v2.sas and not p.a.m.v2.retry_at
