"""IKEv2 cores in memory: rekeys (child, PFS, IKE SA), simultaneous rekey collisions (RFC 7296
2.8.1/2.8.2), DPD with a dead peer, NAT-T with encap, keepalives, idle_time, INVALID_SPI,
trap/per_host, %any responders."""
from __future__ import annotations

import pytest

from test_ikev2_pair import A_IP, B_IP, Pair, Side
from vpnd.config import Timers

INBOUND_LINGER = Timers().inbound_linger


def children(side):
    return sorted(side.children.values(), key=lambda c: c.child_id)


def test_child_rekey_make_before_break():
    p = Pair()
    p.up()
    (old_a,), (old_b,) = p.check_tunnel()
    p.feed(p.a, p.a.m.rekey("site", p.now))
    p.pump()
    (new_a,), (new_b,) = p.check_tunnel()
    assert new_a.child_id != old_a.child_id and new_a.replaces == old_a.child_id
    assert new_b.replaces == old_b.child_id
    # the old inbound SAs linger a moment for packets still on the way, then go
    assert old_a.child_id not in p.a.deleted and old_b.child_id not in p.b.deleted
    p.run(INBOUND_LINGER + 0.01)
    assert old_a.child_id in p.a.deleted and old_b.child_id in p.b.deleted
    assert new_a.inbound[0].spi != old_a.inbound[0].spi
    assert new_a.inbound[0].enc_key != old_a.inbound[0].enc_key


def test_child_rekey_with_pfs_from_responder_side():
    p = Pair({"esp": "aes256gcm16-ecp384"}, {"esp": "aes256gcm16-ecp384"})
    p.up()
    (old_a,), _ = p.check_tunnel()
    p.feed(p.b, p.b.m.rekey("site", p.now))
    p.pump()
    (new_a,), _ = p.check_tunnel()
    assert new_a.proposal == "AES_GCM_16-256/ECP_384"
    # the CREATE_CHILD_SA request carried a KE payload (type 34) inside SK: its size shows
    req = [d.data for t, d in p.b.sent if d.data[18] == 36][0]
    assert len(req) > 28 + 96 + 32 + 100


def test_child_rekey_by_lifetime_with_jitter():
    p = Pair({"lifetime": {"seconds": 100, "ike": 100000}}, {"lifetime": {"seconds": 100, "ike": 100000}})
    p.up()
    p.check_tunnel()
    first = p.a.installed()[0].child_id
    p.run(84.9)
    assert p.a.installed()[0].child_id == first
    p.run(6)  # rekey between 85 % and 90 % of the lifetime, never after expiry
    p.check_tunnel()
    assert p.a.installed()[0].child_id != first
    p.run(400)
    p.check_tunnel()
    assert not any(e.kind == "child_expire" for e in p.a.events + p.b.events)


def test_kilobyte_soft_limit_triggers_rekey_and_hard_deletes():
    p = Pair({"lifetime": {"kilobytes": 1000}})
    p.up()
    (old,), _ = p.check_tunnel()
    assert old.soft_kilobytes == 900 and old.hard_kilobytes == 1000
    p.feed(p.a, p.a.m.child_expiring(old.child_id, False, p.now))
    p.pump()
    (new,), _ = p.check_tunnel()
    assert new.replaces == old.child_id
    p.feed(p.a, p.a.m.child_expiring(new.child_id, True, p.now))
    p.pump()
    assert p.a.installed() == [] and p.b.installed() == []


def test_simultaneous_child_rekey_collision():
    p = Pair()
    p.up()
    (old_a,), (old_b,) = p.check_tunnel()
    # both start a rekey before either request arrives
    p.feed(p.a, p.a.m.rekey("site", p.now))
    p.feed(p.b, p.b.m.rekey("site", p.now))
    p.pump()
    p.run(5)
    a, b = p.check_tunnel(1)
    assert a[0].child_id not in (old_a.child_id,) and old_a.child_id in p.a.deleted
    assert any(e.kind == "rekey_collision" for e in p.a.events)
    assert any(e.kind == "rekey_collision" for e in p.b.events)
    # traffic keeps an outbound SA on both sides throughout: the survivor has outbound keys
    assert a[0].outbound and b[0].outbound


def test_ike_rekey_keeps_children_and_new_sa_works():
    p = Pair()
    p.up()
    (ch,), _ = p.check_tunnel()
    old_spi = p.ike()[0]["spi_i"]
    p.feed(p.a, p.a.m.rekey("site", p.now, ike=True))
    p.pump()
    sas = p.ike()
    assert len(sas) == 1 and sas[0]["spi_i"] != old_spi and sas[0]["state"] == "ESTABLISHED"
    assert len(p.ike(p.b)) == 1
    assert [c["child_id"] for c in sas[0]["child_sas"]] == [ch.child_id]
    # the new IKE SA carries exchanges: a child rekey over it
    p.feed(p.b, p.b.m.rekey("site", p.now))
    p.pump()
    p.check_tunnel()
    assert p.a.installed()[0].child_id != ch.child_id


def test_ike_rekey_by_lifetime():
    p = Pair({"lifetime": {"ike": 200, "seconds": 10000}}, {"lifetime": {"ike": 200, "seconds": 10000}})
    p.up()
    spi = p.ike()[0]["spi_i"]
    p.run(181)
    assert len(p.ike()) == 1 and p.ike()[0]["spi_i"] != spi
    p.check_tunnel()


def test_simultaneous_ike_rekey_collision():
    p = Pair()
    p.up()
    p.check_tunnel()
    p.feed(p.a, p.a.m.rekey("site", p.now, ike=True))
    p.feed(p.b, p.b.m.rekey("site", p.now, ike=True))
    p.pump()
    p.run(10)
    sa_a, sa_b = p.ike(), p.ike(p.b)
    assert len(sa_a) == 1 and len(sa_b) == 1, (sa_a, sa_b)
    assert (sa_a[0]["spi_i"], sa_a[0]["spi_r"]) == (sa_b[0]["spi_i"], sa_b[0]["spi_r"])
    assert len(sa_a[0]["child_sas"]) == 1 and len(sa_b[0]["child_sas"]) == 1
    p.check_tunnel()
    # and the survivor works
    p.feed(p.a, p.a.m.rekey("site", p.now))
    p.pump()
    p.check_tunnel()


@pytest.mark.parametrize("action", ["restart", "clear"])
def test_dpd_dead_peer(action):
    dpd = {"interval": 10, "retry": 3, "mode": "periodic", "action": action}
    p = Pair({"dpd": dpd}, {"dpd": dpd})
    p.up()
    p.check_tunnel()
    p.run(25)  # alive peer: probes answered
    assert "peer_dead" not in p.a.kinds()
    probes = [d for t, d in p.a.sent if d.data[18] == 37]
    assert len(probes) >= 2
    t_dead = p.now
    p.filter = lambda s, d: "drop" if s is p.b else None  # B dies
    while "peer_dead" not in p.a.kinds() and p.now - t_dead < 100:
        p.run(0.5)
    dead_at = p.now
    assert dead_at - t_dead <= dpd["interval"] * (dpd["retry"] + 1)
    assert p.a.installed() == []
    p.run(100)  # B stays dead a while: restart keeps trying, clear gives up
    inits = [t for t, d in p.a.sent if d.data[18] == 34 and t >= dead_at]
    assert len([e for e in p.a.events if e.kind == "peer_dead"]) == 1
    if action == "restart":
        assert inits and inits[-1] > dead_at + 60, "no re-initiation"
        p.filter = None  # B is back, without state
        p.b = Side("b", B_IP, p.b.m.config, p.now)
        p.by_ip[B_IP] = p.b
        p.run(30)
        p.check_tunnel()
    else:
        assert not inits


def test_dpd_on_demand_probes_only_with_outbound_traffic():
    dpd = {"interval": 10, "retry": 2, "mode": "on-demand", "action": "clear"}
    p = Pair({"dpd": dpd}, {"dpd": dpd})
    p.up()
    (ch,), _ = p.check_tunnel()
    p.run(60)
    assert not [d for t, d in p.a.sent if d.data[18] == 37]
    p.a.m.child_activity(ch.child_id, last_in=0.0, last_out=p.now)  # sending, nothing back
    p.filter = lambda s, d: "drop" if s is p.b else None
    p.run(40)
    assert "peer_dead" in p.a.kinds()


def test_encap_fakes_nat_and_moves_to_4500_with_keepalives():
    p = Pair({"encap": True, "nat_keepalive": 5})
    p.up()
    a, b = p.check_tunnel()
    assert a[0].udp_encap and b[0].udp_encap
    assert a[0].local[1] == 4500 and a[0].remote[1] == 4500
    assert b[0].remote[1] == 4500
    st_b = p.ike(p.b)[0]
    assert st_b["nat_detected"] and st_b["remote"].endswith(":4500")
    auth = [d for t, d in p.a.sent if d.data[18] == 35][0]
    assert auth.local[1] == 4500 and auth.remote[1] == 4500
    p.run(12)
    ka = [d for t, d in p.a.sent if d.data == b"\xff"]
    assert ka and ka[0].local[1] == 4500 and ka[0].remote == (B_IP, 4500)


def test_nat_between_peers_detected_and_followed():
    # B sees A at a translated address/port; A's NAT_DETECTION_SOURCE_IP cannot match
    p = Pair(b_peer="10.9.9.9")

    def nat(sender, d):
        return None

    p.filter = nat

    def pump(limit=500):
        # rewrite A's source as a NAT would; B's answers go back to the public address
        while p.wire:
            sender, d = p.wire.pop(0)
            if sender is p.a:
                src = ("10.9.9.9", 40000 if d.local[1] == 500 else 40001)
                p.feed(p.b, p.b.m.receive(d.data, d.remote, src, p.now))
            else:
                p.feed(p.a, p.a.m.receive(d.data, (A_IP, 500 if d.remote[1] == 40000 else 4500), d.local, p.now))
    p.pump = pump
    p.up()
    a, b = p.check_tunnel()
    assert p.ike()[0]["nat_local"] and p.ike(p.b)[0]["nat_remote"]
    assert a[0].udp_encap and b[0].udp_encap and b[0].remote == ("10.9.9.9", 40001)


def test_idle_time_deletes_unused_child():
    p = Pair({"idle_time": 30})
    p.up()
    (ch,), _ = p.check_tunnel()
    p.run(20)
    p.a.m.child_activity(ch.child_id, p.now, p.now)
    p.run(20)
    assert p.a.installed()
    p.run(15)
    assert p.a.installed() == [] and p.b.installed() == []
    assert p.ike()[0]["state"] == "ESTABLISHED"


def test_invalid_spi_notify_rate_limited_and_recovery():
    p = Pair()
    p.up()
    (ch_a,), (ch_b,) = p.check_tunnel()
    for _ in range(5):
        p.feed(p.b, p.b.m.unknown_spi(0xDEADBEEF, (A_IP, 500), p.now))
        p.pump()
    infos = [d for t, d in p.b.sent if d.data[18] == 37 and not d.data[19] & 0x20]
    assert len(infos) == 1
    # A's SA that B does not know: B reports it, A replaces the child
    p.now += 2
    p.feed(p.b, p.b.m.unknown_spi(ch_a.outbound[0].spi, (A_IP, 500), p.now))
    p.pump()
    assert any(e.kind == "invalid_spi" for e in p.a.events)


def test_trap_acquire_and_per_host():
    pkt = bytes.fromhex("4500001c0000400040010000") + bytes([10, 1, 0, 10]) + bytes([10, 2, 0, 10]) + bytes(8)
    p = Pair({"start": "trap", "per_host": True}, {"per_host": True})
    p.feed(p.a, p.a.m.acquire("site", pkt, p.now))
    p.pump()
    (a,), _ = p.check_tunnel()
    assert [str(n) for n in a.local_ts] == ["10.1.0.10/32"] and [str(n) for n in a.remote_ts] == ["10.2.0.10/32"]
    pkt2 = pkt[:19] + bytes([11]) + pkt[20:]
    p.feed(p.a, p.a.m.acquire("site", pkt2, p.now))
    p.pump()
    p.check_tunnel(2)

    q = Pair({"start": "trap"})
    q.feed(q.a, q.a.m.acquire("site", pkt, q.now))
    q.pump()
    (a,), _ = q.check_tunnel()
    assert [str(n) for n in a.remote_ts] == ["10.2.0.0/16"]  # whole subnet, packet TS first


def test_any_peer_matched_by_identity():
    p = Pair({"local_id": "@branch.example.com"}, {"remote_id": "@branch.example.com"}, b_peer="%any")
    p.up()
    p.check_tunnel()
    assert p.ike(p.b)[0]["remote_id"] == "@branch.example.com"
    q = Pair({"local_id": "@intruder.example.com"}, {"remote_id": "@branch.example.com"}, b_peer="%any")
    q.up()
    assert q.b.installed() == [] and "auth_failed" in q.b.kinds()
    r = Pair(b_peer="%any")
    r.feed(r.b, r.b.m.initiate("site", r.now))
    assert any(e.kind == "error" for e in r.b.events)  # %any connections only respond


def test_start_none_does_not_initiate_and_status_shows_down():
    p = Pair()
    st = p.a.m.status(p.now)
    assert st == {"connections": [{"name": "site", "version": 2, "peer": B_IP, "state": "down",
                                   "ike_sas": 0, "child_sas": 0}], "ike_sas": []}


def test_ah_child_sa():
    p = Pair({"ah": "sha256", "esp": None}, {"ah": "sha256", "esp": None})
    p.up()
    (a,), _ = p.check_tunnel()
    assert a.inbound[0].protocol == "ah" and a.inbound[0].encryption is None
    assert a.inbound[0].integrity == "sha256" and len(a.inbound[0].auth_key) == 32
    assert a.proposal == "HMAC_SHA2_256_128"


def test_status_has_the_contract_fields():
    # mobike: no keeps IKE on port 500 (with MOBIKE it runs on 4500 from IKE_AUTH on,
    # RFC 4555 3.3: tests/unit/test_mobike.py)
    p = Pair({"esp": "aes128gcm16", "mobike": False})
    p.up()
    st = p.a.m.status(p.now)
    assert set(st) >= {"connections", "ike_sas"}
    conn = st["connections"][0]
    assert {k: conn[k] for k in ("name", "version", "peer", "state", "ike_sas", "child_sas")} == \
        {"name": "site", "version": 2, "peer": B_IP, "state": "up", "ike_sas": 1, "child_sas": 1}
    sa = st["ike_sas"][0]
    for k in ("connection", "version", "state", "local", "remote", "nat_detected", "initiator", "spi_i",
              "spi_r", "proposal", "established_s", "rekey_in_s", "child_sas"):
        assert k in sa, k
    assert sa["local"] == f"{A_IP}:500" and len(sa["spi_i"]) == 16
    ch = sa["child_sas"][0]
    for k in ("name", "state", "mode", "protocol", "udp_encap", "spi_in", "spi_out", "proposal", "local_ts",
              "remote_ts", "bytes_in", "packets_in", "bytes_out", "packets_out", "replay_drops",
              "auth_failures", "rekey_in_s"):
        assert k in ch, k
    assert ch["state"] == "INSTALLED" and ch["proposal"] == "AES_GCM_16-128" and len(ch["spi_in"]) == 8
    assert isinstance(ch["bytes_in"], int) and isinstance(sa["established_s"], int)
    p.run(100)
    assert p.a.m.status(p.now)["ike_sas"][0]["established_s"] == 100
    import json
    text = json.dumps(st) + repr(p.a.m.v2.sas) + repr(p.a.installed())
    for c in p.a.installed():  # no key material in status or reprs
        for k in c.inbound + c.outbound:
            assert k.enc_key.hex() not in text and k.enc_key.hex()[:16] not in text


def test_reload_drops_removed_connection_and_updates_others():
    from vpnd.config import parse_config

    p = Pair()
    p.up()
    p.check_tunnel()
    cfg = p.a.m.config
    other = parse_config({"connections": {"other": {"version": 2, "local": A_IP, "peer": "10.0.0.9",
                                                     "psk": "x" * 20, "start": "none"}}})
    p.feed(p.a, p.a.m.reload(other, p.now))
    p.pump()
    assert p.a.installed() == [] and p.b.installed() == []
    p.feed(p.a, p.a.m.reload(cfg, p.now))
    p.up()
    p.check_tunnel()


def test_two_connections_to_one_peer_pick_by_traffic_selectors():
    from vpnd.config import parse_config

    def both(local, peer, l1, r1, l2, r2):
        base = {"version": 2, "local": local, "peer": peer, "psk": "shared by both connections", "start": "none",
                "dpd": {"interval": 0}}
        return parse_config({"connections": {"net1": {**base, "local_ts": [l1], "remote_ts": [r1]},
                                             "net2": {**base, "local_ts": [l2], "remote_ts": [r2]}}})

    p = Pair()
    p.a = Side("a", A_IP, both(A_IP, B_IP, "10.1.0.0/16", "10.2.0.0/16", "10.11.0.0/16", "10.12.0.0/16"), p.now)
    p.b = Side("b", B_IP, both(B_IP, A_IP, "10.2.0.0/16", "10.1.0.0/16", "10.12.0.0/16", "10.11.0.0/16"), p.now)
    p.by_ip = {A_IP: p.a, B_IP: p.b}
    p.feed(p.a, p.a.m.initiate("net2", p.now))
    p.pump()
    p.feed(p.a, p.a.m.initiate("net1", p.now))
    p.pump()
    a, b = p.check_tunnel(2)
    assert sorted(c.connection for c in b) == ["net1", "net2"]
    assert {str(c.remote_ts[0]) for c in b if c.connection == "net2"} == {"10.11.0.0/16"}


def test_esn_negotiated():
    p = Pair({"esp": "aes128gcm16-esn"}, {"esp": "aes128gcm16-esn-noesn"})
    p.up()
    (a,), (b,) = p.check_tunnel()
    assert a.esn and b.esn and a.proposal.endswith("/ESN")


def _block_a_requests(p, exchange=36):
    p.filter = lambda s, d: "drop" if s is p.a and d.data[18] == exchange and not d.data[19] & 0x20 else None


def test_crossing_child_rekey_when_our_request_is_stuck():
    """A's rekey request is lost while B rekeys and deletes the old child; A's retransmit
    then meets a peer that no longer knows the child: one child remains on each side."""
    p = Pair()
    p.up()
    (old,), _ = p.check_tunnel()
    _block_a_requests(p)
    p.feed(p.a, p.a.m.rekey("site", p.now))
    p.pump()
    p.feed(p.b, p.b.m.rekey("site", p.now))
    p.pump()
    p.filter = None
    p.run(10)
    (a,), (b,) = p.check_tunnel()
    assert a.child_id != old.child_id
    assert not any(e.kind == "error" for e in p.a.events + p.b.events)


def test_crossing_ike_rekey_when_our_request_is_stuck():
    p = Pair()
    p.up()
    p.check_tunnel()
    spi = p.ike()[0]["spi_i"]
    _block_a_requests(p)
    p.feed(p.a, p.a.m.rekey("site", p.now, ike=True))
    p.pump()
    p.feed(p.b, p.b.m.rekey("site", p.now, ike=True))
    p.pump()
    p.filter = None
    p.run(10)
    sa_a, sa_b = p.ike(), p.ike(p.b)
    assert len(sa_a) == 1 and len(sa_b) == 1 and sa_a[0]["spi_i"] != spi, (sa_a, sa_b)
    assert (sa_a[0]["spi_i"], sa_a[0]["spi_r"]) == (sa_b[0]["spi_i"], sa_b[0]["spi_r"])
    p.check_tunnel()
    assert "ike_rekeyed" in p.a.kinds()
    p.feed(p.a, p.a.m.rekey("site", p.now))
    p.pump()
    p.check_tunnel()


def test_ipv6_outer_and_inner():
    p = Pair({"lts": "fd01::/64", "rts": "fd02::/64"}, {"lts": "fd02::/64", "rts": "fd01::/64"},
             a_ip="fd00::1", b_ip="fd00::2")
    p.up()
    (a,), _ = p.check_tunnel()
    # MOBIKE (default): IKE on port 4500 from IKE_AUTH on, NAT or not (RFC 4555 3.3)
    assert str(a.remote_ts[0]) == "fd02::/64" and p.ike()[0]["remote"] == "[fd00::2]:4500"
    assert not p.ike()[0]["nat_detected"]


def test_equal_lifetimes_rekey_from_the_creator_without_collisions():
    life = {"lifetime": {"seconds": 60, "ike": 150}}
    p = Pair(life, life)
    p.up()
    p.run(400)
    p.check_tunnel()
    assert len(p.ike()) == 1 and len(p.ike(p.b)) == 1
    assert not any(e.kind == "rekey_collision" for e in p.a.events + p.b.events)
    rekeys_by_b = [d for t, d in p.b.sent if d.data[18] == 36 and not d.data[19] & 0x20]
    rekeys_by_a = [d for t, d in p.a.sent if d.data[18] == 36 and not d.data[19] & 0x20]
    assert len(rekeys_by_a) >= 6 and not rekeys_by_b
