"""Issue 7.3 (IKEv2): AH alone (`ah: sha256`, no esp) negotiates a CHILD_SA with protocol AH
(RFC 7296 3.3) in both roles, in IKE_AUTH and CREATE_CHILD_SA (rekey); an ESP+AH bundle,
which IKEv2 cannot negotiate (no SA bundles), is refused clearly, never cut to its ESP half."""
from __future__ import annotations

import dataclasses

import pytest

from test_ikev2_pair import Pair


@pytest.mark.parametrize("initiator", ["a", "b"])
def test_ah_alone_both_roles_and_rekey(initiator):
    p = Pair({"ah": "sha256"}, {"ah": "sha256"})
    p.up(getattr(p, initiator))
    p.check_tunnel()
    for side in (p.a, p.b):
        (ch,) = side.installed()
        assert ch.inbound[0].protocol == "ah" and ch.outbound[0].protocol == "ah"
        assert ch.inbound[0].encryption is None and ch.inbound[0].integrity == "sha256"
        assert len(ch.inbound[0].auth_key) == 32 and not ch.inbound[0].enc_key
        assert ch.proposal == "HMAC_SHA2_256_128"
    st = p.a.m.status(p.now)["ike_sas"][0]["child_sas"][0]
    assert st["protocol"] == "ah"
    first = p.a.installed()[0]
    p.feed(p.a, p.a.m.rekey("site", p.now))
    p.pump()
    p.run(5)
    p.check_tunnel()
    (new,) = p.a.installed()
    assert new.child_id != first.child_id and new.inbound[0].protocol == "ah"


def test_ah_against_esp_only_peer_is_no_proposal():
    p = Pair({"ah": "sha256"}, {})
    p.up()
    assert p.a.installed() == [] and p.b.installed() == []
    assert any(e.kind == "no_proposal" for e in p.b.events)


def _bundle(conn):
    esp = tuple(dataclasses.replace(x, ah_integrity=("sha256",)) for x in conn.esp)
    return dataclasses.replace(conn, esp=esp)


def _with_bundle(side):
    cfg = side.m.config
    conns = tuple(_bundle(x) for x in cfg.connections)
    cfg = dataclasses.replace(cfg, connections=conns)
    side.m.config = cfg
    side.m.v2.config = cfg


def test_esp_ah_bundle_refused_by_initiator():
    """--check refuses it for version 2; should one reach the core anyway, it says so."""
    p = Pair()
    _with_bundle(p.a)
    p.up()
    errs = [e for e in p.a.events if e.kind == "error"]
    assert errs and "bundle" in errs[0].message and "IKEv2" in errs[0].message
    assert not p.a.sent  # nothing offered: no ESP-only CHILD_SA in place of the bundle
    assert p.a.installed() == []


def test_esp_ah_bundle_refused_by_responder():
    p = Pair()
    _with_bundle(p.b)
    p.up()
    assert p.a.installed() == [] and p.b.installed() == []
    errs = [e for e in p.b.events if e.kind == "error"]
    assert errs and "bundle" in errs[0].message
