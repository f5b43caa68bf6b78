"""Childless IKE SAs (RFC 6023) between two IKEv2 cores in memory: the notify in the
IKE_SA_INIT response, IKE_AUTH without SA/TSi/TSr, the CHILD_SA with CREATE_CHILD_SA later,
and each `childless` setting (strongSwan's allow, prefer, force, never) in both roles."""
from __future__ import annotations

import pytest

from vpnd.config import ConfigError, parse_config
from vpnd.ike import codec
from vpnd.ike.v2 import constants as c
from vpnd.ike.v2.payloads import REGISTRY, SA, Notify, TSi, TSr
from vpnd.ike.v2.sk import unprotect

from test_ikev2_pair import Pair

CREATE_CHILD_SA, IKE_AUTH, IKE_SA_INIT = 36, 35, 34


def sent(side, exchange, *, response):
    return [d for _, d in side.sent
            if len(d.data) > 28 and d.data[18] == exchange and bool(d.data[19] & 0x20) == response]


def init_response_notifies(p):
    resp = sent(p.b, IKE_SA_INIT, response=True)[0]
    msg = codec.decode_message(resp.data, REGISTRY)
    return {x.type for x in msg.payloads if isinstance(x, Notify)}


def auth_request_payloads(p):
    """A's IKE_AUTH request as B decrypts it."""
    req = sent(p.a, IKE_AUTH, response=False)[0]
    sa_b = next(iter(p.b.m.v2.sas.values()))
    msg = codec.decode_message(req.data, REGISTRY)
    return unprotect(req.data, msg.payloads[-1], sa_b.crypto_in)


def test_default_allow_announces_support_and_keeps_the_child_in_ike_auth():
    p = Pair()
    p.up()
    p.check_tunnel()
    assert c.N_CHILDLESS_IKEV2_SUPPORTED in init_response_notifies(p)
    # the initiator's IKE_SA_INIT request does not carry it (only the responder announces)
    req = codec.decode_message(sent(p.a, IKE_SA_INIT, response=False)[0].data, REGISTRY)
    assert c.N_CHILDLESS_IKEV2_SUPPORTED not in {x.type for x in req.payloads if isinstance(x, Notify)}
    kinds = {type(x) for x in auth_request_payloads(p)}
    assert {SA, TSi, TSr} <= kinds
    assert sent(p.a, CREATE_CHILD_SA, response=False) == []
    assert p.ike()[0]["childless"] is False and p.ike(p.b)[0]["childless"] is False


@pytest.mark.parametrize("a_mode,b_mode", [("prefer", "allow"), ("force", "force"), ("prefer", "prefer")])
def test_childless_ike_auth_then_create_child_sa(a_mode, b_mode):
    p = Pair({"childless": a_mode, "esp": "aes128gcm16-modp2048"},
             {"childless": b_mode, "esp": "aes128gcm16-modp2048"})
    p.up()
    p.check_tunnel()
    got = auth_request_payloads(p)
    assert not any(isinstance(x, (SA, TSi, TSr)) for x in got)
    assert len(sent(p.a, CREATE_CHILD_SA, response=False)) == 1  # the first CHILD_SA, with PFS
    assert p.ike()[0]["childless"] is True and p.ike(p.b)[0]["childless"] is True
    assert "ike_childless" in p.a.kinds() and "ike_childless" in p.b.kinds()
    assert p.a.m.status(p.now)["connections"][0]["state"] == "up"


def test_prefer_towards_a_never_responder_is_a_regular_ike_auth():
    p = Pair({"childless": "prefer"}, {"childless": "never"})
    p.up()
    p.check_tunnel()
    assert c.N_CHILDLESS_IKEV2_SUPPORTED not in init_response_notifies(p)
    assert sent(p.a, CREATE_CHILD_SA, response=False) == []
    assert p.ike()[0]["childless"] is False


def test_force_initiator_fails_without_support():
    p = Pair({"childless": "force"}, {"childless": "never"})
    p.up()
    ev = [e for e in p.a.events if e.kind == "failed"]
    assert ev and "CHILDLESS_IKEV2_SUPPORTED" in ev[0].message and "force" in ev[0].message
    assert sent(p.a, IKE_AUTH, response=False) == []
    assert p.a.m.status(p.now)["ike_sas"] == []
    assert p.a.installed() == [] and p.b.installed() == []


def test_force_responder_refuses_a_regular_ike_auth():
    p = Pair({"childless": "allow"}, {"childless": "force"})
    p.up()
    assert p.a.installed() == [] and p.b.installed() == []
    ev = [e for e in p.b.events if e.kind == "failed"]
    assert ev and "did not initiate a childless" in ev[0].message
    resp = sent(p.b, IKE_AUTH, response=True)
    assert len(resp) == 1
    p.run(30)
    assert p.a.m.status(p.now)["ike_sas"] == [] and p.b.m.status(p.now)["ike_sas"] == []


def _announce_anyway(sender, d):
    """B (childless: never) does not announce support; add the notify to its IKE_SA_INIT
    response on the wire, as a peer that ignores the rule would see it. A then signs B's
    altered message and B's AUTH will not verify at A, but B checks A's AUTH first."""
    if sender.name != "b" or d.data[18] != IKE_SA_INIT or not d.data[19] & 0x20:
        return None
    msg = codec.decode_message(d.data, REGISTRY)
    if any(isinstance(x, Notify) and x.type == c.N_CHILDLESS_IKEV2_SUPPORTED for x in msg.payloads):
        return None
    data = codec.encode_message(msg.header, list(msg.payloads) + [Notify(c.N_CHILDLESS_IKEV2_SUPPORTED)])
    object.__setattr__(d, "data", data)  # the frozen SendDatagram, changed on the wire
    return None


def test_never_responder_answers_a_childless_ike_auth_with_invalid_syntax():
    p = Pair({"childless": "force"}, {"childless": "never"})
    p.filter = _announce_anyway
    p.up()
    assert not any(isinstance(x, (SA, TSi, TSr)) for x in auth_request_payloads(p))
    ev = [e for e in p.b.events if e.kind == "failed"]
    assert ev and "childless: never" in ev[0].message and "INVALID_SYNTAX" in ev[0].message
    # the answer is INVALID_SYNTAX alone (no IDr/AUTH): the IKE SA is not created (RFC 7296 2.21.2)
    resp = sent(p.b, IKE_AUTH, response=True)
    assert len(resp) == 1
    assert p.a.m.v2.sas == {}  # A gave up on it
    fa = [e for e in p.a.events if e.kind == "failed"]
    assert fa and "childless" in fa[-1].message and "INVALID_SYNTAX" in fa[-1].message
    assert p.a.installed() == [] and p.b.installed() == []
    p.run(30)
    assert p.b.m.status(p.now)["ike_sas"] == []


def test_childless_ike_sa_is_ike_only_and_the_responder_adds_the_child_later():
    """A's IKE SA comes up childless; its CREATE_CHILD_SA is lost for a while. B's side
    shows the IKE SA without children; B's trap (acquire) creates the CHILD_SA on it with
    CREATE_CHILD_SA; A's late retransmission makes a second one that the twin rule removes."""
    lost = []

    def lose_a_child_requests(sender, d):
        if sender.name == "a" and d.data[18] == CREATE_CHILD_SA and not d.data[19] & 0x20 and len(lost) < 1:
            lost.append(d)
            return "drop"
        return None

    p = Pair({"childless": "prefer"}, {"start": "trap"})
    p.filter = lose_a_child_requests
    p.up()
    st = p.b.m.status(p.now)
    assert st["ike_sas"][0]["state"] == "ESTABLISHED" and st["ike_sas"][0]["child_sas"] == []
    assert st["ike_sas"][0]["childless"] is True
    assert p.b.installed() == []
    pkt = bytes([0x45, 0, 0, 20, 0, 0, 0, 0, 64, 1, 0, 0, 10, 2, 0, 10, 10, 1, 0, 10])
    p.feed(p.b, p.b.m.acquire("site", pkt, p.now))
    p.pump()
    assert len(p.b.installed()) == 1 and len(p.a.installed()) == 1
    assert len(sent(p.b, CREATE_CHILD_SA, response=False)) == 1
    p.run(60)  # A's retransmission: a twin, settled by the nonce rule
    p.check_tunnel(1)
    assert len(p.a.m.status(p.now)["ike_sas"]) == 1


@pytest.mark.parametrize("bad,msg", [
    ({"childless": "sometimes"}, "is not one of: allow, prefer, force, never"),
    ({"childless": "force", "version": 1}, "only in IKEv2"),
])
def test_config_childless(bad, msg):
    conn = {"peer": "10.0.0.2", "psk": "k" * 20, **bad}
    with pytest.raises(ConfigError) as e:
        parse_config({"connections": {"x": conn}})
    assert any(p.startswith("connections.x.childless: ") and msg in p for p in e.value.problems), e.value.problems
    ok = parse_config({"connections": {"x": {"peer": "10.0.0.2", "psk": "k" * 20}}})
    assert ok.connections[0].childless == "allow"


def test_a_childless_ike_sa_without_child_is_ike_only_even_with_a_trap():
    from vpnd.status import connection_state

    base = dict(installed=0, ike_states=["ESTABLISHED"], attempt=False, attempt_age=0.0, last_error=None,
                trap=True, admin_down=False)
    assert connection_state(**base, childless=True) == "ike-only"
    assert connection_state(**base) == "idle"  # a CHILD_SA deleted for idleness: the trap waits
    assert connection_state(**{**base, "installed": 1}, childless=True) == "up"
