"""Protocol timers (daemon.timers, issue 9): one configurable set for IKEv1 and IKEv2,
applied by the rules of vpnd/ike/liveness.py. The same scenario table runs through both
cores in memory, with the defaults and with compressed timers (as the netns tests use)."""
from __future__ import annotations

import pytest

import test_ikev1_harness as v1h
from test_ikev2_pair import Pair
from vpnd.config import ConfigError, Timers, parse_config
from vpnd.ike import liveness

COMPRESSED = {"retransmit_base": 0.5, "retransmit_tries": 3, "half_open": 5, "connect_retry": 2}


def _v1_until(net, cond, limit=300.0, step=0.25):
    while net.now < limit:
        net.advance(step)
        if cond():
            return net.now
    return None


def _v2_until(p, cond, limit=300.0, step=0.25):
    t0 = p.now
    while p.now - t0 < limit:
        p.run(step)
        if cond():
            return p.now - t0
    return None


def _after_first():
    """A drop predicate: everything the initiator sends after its first message is lost."""
    n = [0]

    def drop(is_a):
        if not is_a:
            return False
        n[0] += 1
        return n[0] > 1
    return drop


# (daemon.timers, when the responder drops the SA its initiator abandoned)
HALF_OPEN = [({}, 30.0), (COMPRESSED, 5.0)]


@pytest.mark.parametrize("timers,gone_at", HALF_OPEN)
def test_ikev1_responder_half_open(timers, gone_at):
    """Main Mode message 3 never comes: the responder gives up after timers.half_open
    (was 60 s in IKEv1, 30 s in IKEv2)."""
    d = {"timers": timers}
    net = v1h.pair(start=False, daemon_a=d, daemon_b=d)
    lost = _after_first()
    net.drop = lambda side, dg: lost(side == "A")
    net.feed(net.a, net.a.initiate("site", 0.0))
    assert net.b.sas
    assert _v1_until(net, lambda: not net.b.sas) == gone_at
    assert net.events("B", "half_open_timeout")


@pytest.mark.parametrize("timers,gone_at", HALF_OPEN)
def test_ikev2_responder_half_open(timers, gone_at):
    """IKE_AUTH never comes: the responder gives up after timers.half_open."""
    d = {"timers": timers}
    p = Pair(a_daemon=d, b_daemon=d)
    lost = _after_first()
    p.filter = lambda s, dg: "drop" if lost(s is p.a) else None
    p.up()
    assert p.b.m.v2.sas
    assert _v2_until(p, lambda: not p.b.m.v2.sas) == gone_at


# (daemon.timers, when the initiator of a silent peer gives up): the retransmission
# schedule, base x (1 + 2 + ... + 2^tries), not the half-open timeout (IKEv1 cut it at 60 s)
SILENT_PEER = [({}, 126.0), (COMPRESSED, 7.5)]


@pytest.mark.parametrize("timers,fail_at", SILENT_PEER)
def test_ikev1_initiator_retransmits_on_schedule(timers, fail_at):
    d = {"timers": timers}
    net = v1h.pair({"dpd": {"interval": 0}, "start": "none"}, start=False, daemon_a=d, daemon_b=d)
    net.drop = lambda side, dg: side == "A"
    net.feed(net.a, net.a.initiate("site", 0.0))
    assert _v1_until(net, lambda: not net.a.sas) == fail_at
    assert "no answer from 10.200.0.2 after" in net.events("A", "error")[0].message
    sends = [x for s, x in net.sent if s == "A"]
    assert len(sends) == 1 + Timers(**timers).retransmit_tries


@pytest.mark.parametrize("timers,fail_at", SILENT_PEER)
def test_ikev2_initiator_retransmits_on_schedule(timers, fail_at):
    d = {"timers": timers}
    p = Pair(a_daemon=d, b_daemon=d)
    p.filter = lambda s, dg: "drop" if s is p.a else None
    p.up()
    assert _v2_until(p, lambda: "ike_down" in p.a.kinds() or "failed" in p.a.kinds()
                     or not p.a.m.v2.sas) == fail_at
    assert len(p.a.sent) == 1 + Timers(**timers).retransmit_tries


def test_compressed_retransmission_policy():
    c = Timers(retransmit_base=0.5, retransmit_tries=3)
    assert liveness.retransmit_timeouts(c) == [0.5, 1, 2, 4]
    assert liveness.retransmissions_exhausted(3, c) and not liveness.retransmissions_exhausted(2, c)


def test_config_defaults_and_errors():
    base = {"daemon": {"allow_empty": True}}
    assert parse_config(base).daemon.timers == Timers()
    c = parse_config({"daemon": {"allow_empty": True, "timers": {"retransmit_base": 0.2, "half_open": 3,
                                                                 "retransmit_tries": 2}}})
    assert (c.daemon.timers.retransmit_base, c.daemon.timers.half_open,
            c.daemon.timers.retransmit_tries) == (0.2, 3.0, 2)
    assert c.daemon.timers.connect_retry == Timers().connect_retry
    for bad, msg in [({"retransmit_base": 0}, "daemon.timers.retransmit_base: 0 is out of range"),
                     ({"half_opn": 3}, "daemon.timers.half_opn: unknown key (did you mean 'half_open'?)"),
                     ({"retransmit_tries": 1.5}, "daemon.timers.retransmit_tries: expected an integer"),
                     ({"inbound_linger": "2s"}, "daemon.timers.inbound_linger: expected a number of seconds"),
                     ("fast", "daemon.timers: expected a mapping")]:
        with pytest.raises(ConfigError) as e:
            parse_config({"daemon": {"allow_empty": True, "timers": bad}})
        assert msg in str(e.value)


def test_conf_example_documents_every_timer():
    """conf/vpnd.yaml lists each timer with its default, and the README's reference too."""
    from pathlib import Path

    import yaml
    root = Path(__file__).resolve().parents[2]
    doc = yaml.safe_load((root / "conf" / "vpnd.yaml").read_text())
    assert Timers(**doc["daemon"]["timers"]) == Timers()
    readme = (root / "README.md").read_text()
    for name in Timers.__dataclass_fields__:
        assert f"timers.{name}" in readme, name
