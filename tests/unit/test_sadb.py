"""The SA table (vpnd/sadb.py) on its own: the order of what it asks of the data plane on
make-before-break, ActivateOutbound, RetireChildSA at T, guards (trap/drop, administrative
down), the acquire queue, peers that move, refused keys, and plain data (picklable)."""

import ipaddress
import pickle

import pytest

from vpnd import dpdriver, sadb
from vpnd.config import parse_config
from vpnd.ike.actions import (ActivateOutbound, ChildKeys, DeleteChildSA, InstallChildSA,
                              RetireChildSA, UpdateChildAddresses)

LAN_A = ipaddress.ip_network("10.1.0.0/16")
LAN_B = ipaddress.ip_network("10.2.0.0/16")
KEY = bytes(range(20))


def conf(**kw):
    c = {"peer": "10.200.0.2", "local": "10.200.0.1", "psk": "a test key of some length",
         "local_ts": ["10.1.0.0/16"], "remote_ts": ["10.2.0.0/16"], "start": "trap"}
    c.update(kw)
    c = {k: v for k, v in c.items() if v is not None}
    return parse_config({"connections": {"site": c}})


def install(cid, spi_in, spi_out=None, replaces=None, **kw):
    return InstallChildSA(
        connection="site", child_id=cid, ike_id=1, mode=kw.pop("mode", "tunnel"),
        local=("10.200.0.1", 500), remote=("10.200.0.2", 500), udp_encap=False, esn=False,
        replay_window=64, local_ts=(LAN_A,), remote_ts=(LAN_B,),
        inbound=(ChildKeys(spi_in, "esp", "aes128gcm16", None, KEY),),
        outbound=(ChildKeys(spi_out, "esp", "aes128gcm16", None, KEY),) if spi_out else (),
        proposal="AES_GCM_16-128", replaces=replaces, **kw)


def kinds(ops):
    return [type(o).__name__ for o in ops]


def sender(t: sadb.SATable):
    """(child id, outbound SPI) of the child holding the tunnel's policy."""
    held = [(c.child_id, c.outbound[0].spi) for c in t.children.values() if c.policy_id is not None]
    assert len(held) <= 1
    return held[0] if held else None


def test_first_install_inbound_then_outbound_then_guard_behind():
    t = sadb.SATable(conf())
    ops = t.install(install(1, 0x11, 0x12), 0.0)
    assert kinds(ops) == ["AddInbound", "AddOutbound", "RemoveOutbound", "RemoveOutbound",
                          "AddTrap", "ChildInstalled"]
    assert ops[0].local_ts == (LAN_A,) and ops[0].remote_ts == (LAN_B,)  # tunnel: selectors checked
    assert ops[1].policy_id == 1 and ops[4].policy_id == ("trap", "site")
    assert sender(t) == (1, 0x12) and t.guards == {"site": "trap"}


def test_make_before_break_moves_the_policy_and_keeps_old_inbound():
    t = sadb.SATable(conf())
    t.install(install(1, 0x11, 0x12), 0.0)
    ops = t.install(install(2, 0x21, 0x22, replaces=1), 1.0)
    assert kinds(ops)[:2] == ["AddInbound", "AddOutbound"]
    assert ops[1].policy_id == 1  # the policy keeps its id (and its place in the SPD)
    assert sender(t) == (2, 0x22) and t.children[1].policy_id is None
    ops = t.apply(DeleteChildSA(1), 2.0)
    # the replaced child's inbound SA goes; the policy (now child 2's) stays
    assert kinds(ops) == ["RemoveInbound", "ChildRemoved"] and ops[0].spi == 0x11
    assert ops[1].last is False and sender(t) == (2, 0x22)
    ops = t.apply(DeleteChildSA(2), 3.0)
    assert kinds(ops) == ["RemoveInbound", "RemoveOutbound", "ChildRemoved"]
    assert ops[1].policy_id == 1 and ops[2].last is True


def test_inbound_only_then_activate_replacing():
    """A rekey responder (IKEv2) or Quick Mode responder (IKEv1): receive first, send later."""
    t = sadb.SATable(conf())
    t.install(install(1, 0x11, 0x12), 0.0)
    ops = t.install(install(2, 0x21), 1.0)
    assert kinds(ops) == ["AddInbound", "ChildInstalled"]
    assert sender(t) == (1, 0x12) and not t.children[2].outbound
    assert t.sending("site") == 1
    out = (ChildKeys(0x22, "esp", "aes128gcm16", None, KEY),)
    ops = t.apply(ActivateOutbound(2, out, replaces=1), 2.0)
    assert kinds(ops) == ["AddOutbound", "RemoveOutbound", "RemoveOutbound", "AddTrap",
                          "OutboundActivated"]
    assert ops[0].policy_id == 1 and ops[0].action.outbound == out
    assert sender(t) == (2, 0x22) and t.children[2].action.replaces == 1
    assert t.apply(ActivateOutbound(2, out, replaces=1), 2.5) == []  # once only
    assert t.apply(ActivateOutbound(99, out), 2.5) == []  # unknown child: nothing


def test_activate_without_a_holder_gets_its_own_policy():
    t = sadb.SATable(conf())
    t.install(install(5, 0x51), 0.0)
    ops = t.apply(ActivateOutbound(5, (ChildKeys(0x52, "esp", "aes128gcm16", None, KEY),)), 1.0)
    assert ops[0].policy_id == 5 and sender(t) == (5, 0x52)


def test_retire_at_t():
    t = sadb.SATable(conf())
    t.install(install(1, 0x11, 0x12), 0.0)
    t.install(install(2, 0x21, 0x22, replaces=1), 1.0)
    assert t.apply(RetireChildSA(1, 3.0), 1.0) == []
    assert t.next_timer() == 3.0 and [c.child_id for c in t.live()] == [2]
    assert t.handle_timer(2.9) == [] and 1 in t.children  # still receives
    ops = t.handle_timer(3.0)
    assert kinds(ops) == ["RemoveInbound", "ChildRemoved"] and 1 not in t.children
    assert t.next_timer() is None


def test_delete_before_retire_time_and_unknown_children():
    t = sadb.SATable(conf())
    t.install(install(1, 0x11, 0x12), 0.0)
    t.apply(RetireChildSA(1, 5.0), 0.0)
    assert kinds(t.apply(DeleteChildSA(1), 1.0))[-1] == "ChildRemoved"
    assert t.handle_timer(10.0) == [] and t.next_timer() is None
    assert t.apply(DeleteChildSA(1), 1.0) == [] and t.apply(RetireChildSA(7, 1.0), 1.0) == []


def test_same_child_twice_is_replaced_whole():
    t = sadb.SATable(conf())
    t.install(install(1, 0x11, 0x12), 0.0)
    ops = t.install(install(1, 0x31, 0x32), 1.0)
    assert kinds(ops)[:3] == ["RemoveInbound", "RemoveOutbound", "ChildRemoved"] and ops[2].quiet
    assert sender(t) == (1, 0x32)


def test_refused_keys_install_nothing():
    t = sadb.SATable(conf(), check=dpdriver.check)
    good = install(1, 0x1100, 0x1200)
    assert kinds(t.install(good, 0.0))[-1] == "ChildInstalled"
    bad = InstallChildSA(**{**good.__dict__, "child_id": 2, "replaces": 1,
                            "outbound": (ChildKeys(0x2200, "esp", "aes128gcm16", None, b"short"),)})
    ops = t.install(bad, 1.0)
    assert kinds(ops) == ["InstallFailed"] and list(t.children) == [1] and sender(t) == (1, 0x1200)
    assert "key" in ops[0].reason.lower()


def test_guards_trap_drop_and_admin_down():
    t = sadb.SATable(conf(start="start"))
    assert kinds(t.sync_guards()) == ["RemoveOutbound", "RemoveOutbound", "AddTrap"]
    # vpnctl down is final: traffic no longer renegotiates, but never leaves in clear
    ops = t.set_admin_down("site", True)
    assert kinds(ops) == ["RemoveOutbound", "RemoveOutbound", "AddBlock"] and t.guards["site"] == "drop"
    assert t.set_admin_down("site", True) == []
    assert kinds(t.set_admin_down("site", False))[-1] == "AddTrap"
    for kw, kind in (({"start": "none"}, "drop"), ({"start": "trap"}, "trap"),
                     ({"start": "start", "dpd": {"action": "clear", "interval": 10}}, "drop"),
                     ({"peer": "%any", "start": "none"}, "drop")):
        t = sadb.SATable(conf(**kw))
        t.sync_guards()
        assert t.guards["site"] == kind, kw
    # a connection removed from the config: its guard goes
    t = sadb.SATable(conf())
    t.sync_guards()
    t.set_config(parse_config({"daemon": {"allow_empty": True}, "connections": {}}))
    assert kinds(t.sync_guards()) == ["RemoveOutbound", "RemoveOutbound"] and t.guards == {}


def test_transport_guard_asks_the_kernel_for_the_source_only_with_routes():
    c = conf(mode="transport", local=None, local_ts=None, remote_ts=None, start="start")
    asked = []
    t = sadb.SATable(c, source_towards=lambda peer: asked.append(peer) or "10.200.0.7")
    assert kinds(t.restore_guard("site"))[-1] == "RemoveOutbound" and not asked  # no routes: no guess
    t.routes = True
    ops = t.restore_guard("site")
    assert asked == ["10.200.0.2"] and ops[-1].local_ts == (ipaddress.ip_network("10.200.0.7/32"),)
    assert ops[-1].remote_ts == (ipaddress.ip_network("10.200.0.2/32"),)


def test_acquire_queue():
    t = sadb.SATable(conf())
    assert t.acquire("site", b"p1", 0.0) is True  # first packet: negotiate
    assert t.acquire("site", b"p2", 1.0) is False  # negotiation running: queued
    assert t.acquire("site", b"p3", 1.0 + sadb.ACQUIRE_RETRY) is True  # stalled: ask again
    for i in range(sadb.ACQUIRE_QUEUE + 5):
        t.acquire("site", b"x%d" % i, 12.0)
    assert len(t.acquire_q["site"][0]) == sadb.ACQUIRE_QUEUE  # bounded, newest kept
    # an inbound-only SA cannot send them; the first that sends takes them
    assert "SendQueued" not in kinds(t.install(install(1, 0x11), 13.0))
    ops = t.apply(ActivateOutbound(1, (ChildKeys(0x12, "esp", "aes128gcm16", None, KEY),)), 14.0)
    assert kinds(ops)[-1] == "SendQueued" and ops[-1].packets[-1] == b"x%d" % (sadb.ACQUIRE_QUEUE + 4)
    assert "site" not in t.acquire_q
    t.acquire("site", b"y", 20.0)
    t.forget_acquire("site")  # the negotiation failed: the next packet starts anew
    assert t.acquire("site", b"z", 20.5) is True
    ops = t.install(install(2, 0x21, 0x22), 21.0)
    assert kinds(ops)[-2:] == ["ChildInstalled", "SendQueued"]


def test_peer_moves():
    t = sadb.SATable(conf())
    t.install(install(1, 0x11, 0x12), 0.0)
    t.install(install(2, 0x21), 0.0)  # inbound only
    moved = UpdateChildAddresses(1, ("10.200.0.1", 4500), ("10.200.0.99", 4501), True)
    ops = t.apply(moved, 1.0)
    assert ops == [sadb.MoveOutbound(1, "10.200.0.1", "10.200.0.99", (4500, 4501)),
                   sadb.Readdress(1, False, "10.200.0.1", "10.200.0.99", (4500, 4501))]
    assert t.children[1].action.remote == ("10.200.0.99", 4501) and t.children[1].action.udp_encap
    ops = t.apply(UpdateChildAddresses(2, ("10.200.0.1", 500), ("10.200.0.98", 500), False), 1.0)
    assert [type(o) for o in ops] == [sadb.Readdress, sadb.Readdress] and ops[0].outbound
    assert t.apply(UpdateChildAddresses(9, ("a", 1), ("b", 2), False), 1.0) == []


def test_rri_routes_and_steering_go_with_the_children():
    t = sadb.SATable(conf(), routes=True)
    ops = t.install(install(1, 0x11, 0x12), 0.0)
    routes = [o for o in ops if isinstance(o, sadb.AddRoute)]
    assert [r.network for r in routes] == [LAN_B]
    ops = t.apply(DeleteChildSA(1), 1.0)
    assert [o.network for o in ops if isinstance(o, sadb.RemoveRoute)] == [LAN_B]
    # transport mode: the host's traffic to the peer is steered once an SA can send it;
    # the steering moves along with the policy on a rekey
    t = sadb.SATable(conf(mode="transport", local_ts=None, remote_ts=None), routes=True)
    ops = t.install(install(1, 0x11, mode="transport"), 0.0)
    assert not [o for o in ops if isinstance(o, sadb.Steer)]
    ops = t.apply(ActivateOutbound(1, (ChildKeys(0x12, "esp", "aes128gcm16", None, KEY),)), 1.0)
    assert [o.peer for o in ops if isinstance(o, sadb.Steer)] == ["10.200.0.2"]
    t.install(install(2, 0x21, mode="transport"), 2.0)
    ops = t.apply(ActivateOutbound(2, (ChildKeys(0x22, "esp", "aes128gcm16", None, KEY),), 1), 3.0)
    assert not [o for o in ops if isinstance(o, sadb.Steer)] and t.children[2].steered == "10.200.0.2"
    assert not [o for o in t.apply(DeleteChildSA(1), 4.0) if isinstance(o, sadb.Unsteer)]
    assert [o.peer for o in t.apply(DeleteChildSA(2), 5.0) if isinstance(o, sadb.Unsteer)] == ["10.200.0.2"]


def test_state_is_plain_data():
    """A table can go to another process (a multi-process data plane is fed from it)."""
    t = sadb.SATable(conf())
    t.sync_guards()
    t.install(install(1, 0x11, 0x12), 0.0)
    t.acquire("site", b"pkt", 1.0)
    t2 = pickle.loads(pickle.dumps(t))
    assert t2.children[1].inbound[0].enc_key == KEY and sender(t2) == (1, 0x12)
    assert t2.guards == t.guards and list(t2.acquire_q["site"][0]) == [b"pkt"]
    ops = t.install(install(2, 0x21, 0x22, replaces=1), 2.0)
    assert pickle.loads(pickle.dumps(ops)) == ops


def test_not_a_child_action():
    with pytest.raises(TypeError):
        sadb.SATable(conf()).apply(object(), 0.0)


def test_transport_guard_over_ipv6():
    """The guard of an IPv6 transport-mode connection is the host pair (a /32 of an IPv6
    address raised ValueError and left the SA installed half-way)."""
    c = parse_config({"connections": {"site": {
        "peer": "fd00:200::2", "local": "fd00:200::1", "psk": "a test key of some length",
        "mode": "transport", "start": "start"}}})
    t = sadb.SATable(c)
    ops = t.restore_guard("site")
    assert ops[-1] == sadb.AddTrap(("trap", "site"), (ipaddress.ip_network("fd00:200::1/128"),),
                                   (ipaddress.ip_network("fd00:200::2/128"),))
