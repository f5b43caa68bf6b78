"""IKEv1 cores in memory over time: Quick Mode and ISAKMP rekeys, expiry, DPD, NAT-T,
Delete/INITIAL-CONTACT/INVALID-SPI informationals."""
import pytest

from vpnd.ike.actions import (ActivateOutbound, DeleteChildSA, Event, InstallChildSA, SendDatagram,
                              UpdateChildAddresses)

from test_ikev1_harness import A_IP, B_IP, pair


def test_quick_mode_rekey_make_before_break():
    net = pair({"lifetime": {"seconds": 100}}, {"lifetime": {"seconds": 100}})
    first_a = net.installs("A")[0]
    net.advance(95)
    inst = net.installs("A")
    assert len(inst) >= 2, net.events("A")
    new = inst[1]
    assert new.replaces == first_a.child_id  # the daemon moves outbound traffic, then ...
    deleted_at = [i for i, (s, x) in enumerate(net.log) if s == "A" and isinstance(x, DeleteChildSA)
                  and x.child_id == first_a.child_id]
    installed_at = [i for i, (s, x) in enumerate(net.log) if s == "A" and x.__class__ in
                    (InstallChildSA, ActivateOutbound) and x.child_id == new.child_id and x.outbound]
    assert deleted_at and installed_at[0] < deleted_at[0]  # ... the old pair goes after
    # the responder learned of the deletion from a Delete payload and dropped its pair too
    first_b = net.installs("B")[0]
    assert any(x.child_id == first_b.child_id for x in net.of("B", DeleteChildSA))
    assert len(net.live_children("A")) == 1 and len(net.live_children("B")) == 1
    # new keys, new SPIs, and the peers agree on them
    assert new.inbound[0].spi != first_a.inbound[0].spi
    b_new = [i for i in net.installs("B") if i.outbound[0].spi == new.inbound[0].spi]
    assert b_new and b_new[0].outbound[0].enc_key == new.inbound[0].enc_key


def test_rekey_with_pfs_carries_new_dh():
    net = pair({"lifetime": {"seconds": 60}}, {"lifetime": {"seconds": 60}})
    net.advance(200)
    assert len(net.installs("A")) >= 3
    assert all("MODP_2048" in i.proposal for i in net.installs("A"))
    assert len(net.live_children("A")) == 1


def test_volume_soft_limit_rekeys():
    net = pair()
    c = net.installs("A")[0]
    assert c.soft_kilobytes and c.hard_kilobytes and c.soft_kilobytes < c.hard_kilobytes
    net.feed(net.a, net.a.child_expiring(c.child_id, False, net.now))
    net.advance(2)  # the rekey initiator's outbound half follows after OUTBOUND_SETTLE
    assert len(net.installs("A")) == 2 and net.installs("A")[1].replaces == c.child_id


def test_isakmp_rekey_keeps_ipsec_sas():
    net = pair({"lifetime": {"ike": 300, "seconds": 3600}}, {"lifetime": {"ike": 300}})
    spi_old = net.a.status_ike_sas(0)[0]["spi_i"]
    net.advance(290)
    st = net.a.status_ike_sas(net.now)
    assert len(st) == 1 and st[0]["spi_i"] != spi_old and st[0]["state"] == "ESTABLISHED"
    assert len(st[0]["child_sas"]) == 1
    assert len(net.b.sas) == 1  # the responder got the Delete for the old one
    assert not net.of("A", DeleteChildSA) and not net.of("B", DeleteChildSA)
    # Quick Mode works over the new ISAKMP SA
    net.feed(net.a, net.a.rekey("site", net.now))
    net.advance(2)
    assert len(net.installs("A")) == 2 and len(net.installs("B")) == 2


def test_manual_rekey_commands():
    net = pair()
    net.feed(net.a, net.a.rekey("site", net.now, ike=True))
    assert len(net.a.sas) == 1 and len(net.events("A", "ike_up")) == 2
    net.feed(net.b, net.b.rekey("site", net.now))  # the responder may rekey too
    net.advance(2)
    assert len(net.installs("B")) == 2


def test_terminate_deletes_both_sides():
    net = pair()
    net.feed(net.a, net.a.terminate("site", net.now))
    assert net.of("A", DeleteChildSA) and net.of("B", DeleteChildSA)
    assert not net.a.sas and not net.b.sas
    assert net.b.connection_status("site")["state"] == "down"


def test_dpd_answers_and_dead_peer_restart():
    conf = {"dpd": {"interval": 10, "retry": 2, "mode": "periodic", "action": "restart"}}
    net = pair(conf, conf)
    net.advance(35)
    assert not net.events("A", "peer_dead") and not net.events("B", "peer_dead")
    # the peer vanishes
    net.drop = lambda side, dg: True
    net.advance(40)
    dead = net.events("A", "peer_dead")
    assert dead, net.events("A")
    # declared dead within interval + (5 retries + 1) * retry seconds (the seed's rule)
    assert net.of("A", DeleteChildSA)
    # action restart: a new Main Mode is under way; when the peer is back the tunnel returns
    net.drop = lambda side, dg: False
    net.advance(120)
    assert len(net.live_children("A")) == 1, net.events("A")[-6:]


def test_dpd_dead_timing_and_clear():
    conf = {"dpd": {"interval": 10, "retry": 3, "mode": "periodic", "action": "clear"}}
    net = pair(conf, conf)
    last_ok = net.now
    net.drop = lambda side, dg: True
    probe_times = []
    orig = net.a._dpd_probe

    def spy(sa, now):
        probe_times.append(now)
        return orig(sa, now)

    net.a._dpd_probe = spy
    net.advance(60, step=0.5)
    dead = [i for i, (s, x) in enumerate(net.log) if s == "A" and getattr(x, "kind", "") == "peer_dead"]
    assert dead
    assert len(probe_times) == 6  # first probe + 5 retries
    assert probe_times[1] - probe_times[0] == 3
    assert probe_times[0] - last_ok <= 10
    assert not net.a.sas  # clear: nothing restarted
    net.advance(60)
    assert not net.a.sas


def test_dpd_on_demand_quiet_without_traffic():
    conf = {"dpd": {"interval": 10, "retry": 2, "mode": "on-demand", "action": "clear"}}
    net = pair(conf, conf)
    sends = len(net.sent)
    net.advance(100)
    assert len(net.sent) == sends  # no traffic, nothing to worry about: no R-U-THERE
    cid = net.installs("A")[0].child_id
    net.a.child_activity(cid, 0.0, net.now)  # we send, the peer is silent
    net.advance(30)
    assert len(net.sent) > sends


def test_nat_traversal_float_and_keepalive():
    net = pair({"nat_keepalive": 5}, {}, nat_a="10.200.0.254")
    a, b = net.installs("A")[0], net.installs("B")[0]
    assert a.udp_encap and b.udp_encap
    assert a.local[1] == 4500 and a.remote == (B_IP, 4500)
    assert b.remote[0] == "10.200.0.254" and b.remote[1] > 30000
    sa_a = net.a.status_ike_sas(0)[0]
    assert sa_a["nat_local"] and not sa_a["nat_remote"]
    sa_b = net.b.status_ike_sas(0)[0]
    assert sa_b["nat_remote"] and not sa_b["nat_local"]
    # RFC 3947 encapsulation mode 3 was negotiated (UDP-Encapsulated-Tunnel)
    before = len(net.sent)
    net.advance(12)
    ka = [dg for s, dg in net.sent[before:] if s == "A" and dg.data == b"\xff"]
    assert len(ka) >= 2 and ka[0].local[1] == 4500


def test_encap_forced_without_nat():
    net = pair({"encap": True}, {})
    assert net.installs("A")[0].udp_encap and net.installs("B")[0].udp_encap


def test_no_nat_no_encap():
    net = pair()
    a = net.installs("A")[0]
    assert not a.udp_encap and a.local[1] == 500


def test_nat_mapping_change_moves_child():
    net = pair({}, {}, nat_a="10.200.0.254")
    net.nat_map.clear()  # the NAT forgets: A's packets now come from another public port
    net.feed(net.a, net.a.rekey("site", net.now))
    ups = net.of("B", UpdateChildAddresses)
    assert ups and ups[-1].remote[1] not in (30001, 30002) and ups[-1].remote[0] == "10.200.0.254"


def test_initial_contact_clears_stale_state():
    net = pair()
    old_b_child = net.installs("B")[0].child_id
    # A restarts: a fresh core with no memory, same config
    from vpnd.ike.v1.core import Ikev1Core
    fresh = Ikev1Core(net.a.config, now=net.now)
    net.a = fresh
    net.feed(fresh, fresh.initiate("site", net.now))
    net.advance(1)
    assert any(x.child_id == old_b_child for x in net.of("B", DeleteChildSA))
    assert len(net.b.sas) == 1 and len(net.live_children("B")) == 1


def test_invalid_spi_notify_rate_limited_and_recovers():
    net = pair()
    a_child = net.installs("A")[0]
    # B lost its SAs silently (e.g. its data plane was reset) and sees A's ESP
    spi = a_child.outbound[0].spi
    for c in list(net.b.children.values()):
        del net.b.children[c.child_id]
    first = net.b.unknown_spi(spi, (A_IP, 500), net.now)
    second = net.b.unknown_spi(spi, (A_IP, 500), net.now + 0.5)
    assert len([x for x in first if isinstance(x, SendDatagram)]) == 1
    assert not [x for x in second if isinstance(x, SendDatagram)]  # rate-limited
    net.feed(net.b, first)
    # A dropped the pair and negotiated a new one
    assert any(x.child_id == a_child.child_id for x in net.of("A", DeleteChildSA))
    assert len(net.live_children("A")) == 1 and net.live_children("A")[0] != a_child.child_id


def test_idle_time_deletes_child():
    net = pair({"idle_time": 50}, {})
    net.advance(60)
    assert net.of("A", DeleteChildSA)


def test_half_open_times_out():
    net = pair(start=False)
    net.drop = lambda side, dg: side == "B"
    net.feed(net.a, net.a.initiate("site", 0.0))
    net.advance(200)
    assert net.events("A", "error")
    assert all(not s.is_established for s in net.a.sas.values())
    assert len(net.b.sas) <= 1
    # half-open SAs on the responder do not pile up: each goes after its timeout
    assert all(net.now - s.created <= 60 for s in net.b.sas.values())
    assert len(net.b.sas) <= 2


def test_status_shape():
    net = pair()
    st = net.a.status_ike_sas(10)
    keys = {"connection", "version", "state", "local", "remote", "nat_detected", "initiator", "spi_i", "spi_r",
            "proposal", "established_s", "rekey_in_s", "child_sas"}
    assert keys <= set(st[0])
    ch = st[0]["child_sas"][0]
    assert {"name", "state", "mode", "protocol", "udp_encap", "spi_in", "spi_out", "proposal", "local_ts",
            "remote_ts", "bytes_in", "rekey_in_s"} <= set(ch)
    assert net.a.connection_status("site") == {"state": "up", "ike_sas": 1, "child_sas": 1}


def test_nat_t_draft_vendor_ids_and_encapsulation_modes(monkeypatch):
    """A peer speaking only draft-ietf-ipsec-nat-t-ike-02 (as strongSwan also offers): NAT-D
    payloads are type 130 and Quick Mode uses the draft's UDP-Encapsulated-Tunnel 61443."""
    from vpnd.ike import codec
    from vpnd.ike.v1 import constants as C
    from vpnd.ike.v1 import payloads as P
    from vpnd.ike.v1 import quick

    answers = []
    orig_answer = quick.policy.p2_sa_answer

    def spy(*a, **kw):
        sa = orig_answer(*a, **kw)
        answers.append(sa)
        return sa

    monkeypatch.setattr(quick.policy, "p2_sa_answer", spy)
    net = pair(start=False, nat_a="10.200.0.254")
    orig = net.a._our_vids
    net.a._our_vids = lambda sa=None: [
        v for v in orig(sa) if v.data not in (C.VID_NATT_RFC, C.VID_NATT_DRAFT_03)]
    net.feed(net.a, net.a.initiate("site", 0.0))
    net.advance(1)
    assert len(net.live_children("A")) == 1 and net.installs("A")[0].udp_encap
    b_sa = next(iter(net.b.sas.values()))
    assert b_sa.natt == "draft"
    m3 = [dg.data for s, dg in net.sent if s == "A" and dg.data[18] == 2 and not dg.data[19] & 1][1]
    types = [p.payload_type for p in codec.decode_message(m3, P.REGISTRY).payloads]
    assert types.count(C.PL_NATD_DRAFT) == 2
    attrs = dict(answers[0].proposals[0].transforms[0].attrs)
    assert attrs[C.P2_ENCAP] == C.ENCAP_UDP_TUNNEL_DRAFT


def test_rfc3947_encapsulation_mode_value(monkeypatch):
    from vpnd.ike.v1 import constants as C
    from vpnd.ike.v1 import quick

    answers = []
    orig_answer = quick.policy.p2_sa_answer
    monkeypatch.setattr(quick.policy, "p2_sa_answer", lambda *a, **kw: answers.append(orig_answer(*a, **kw)) or answers[-1])
    pair({"mode": "transport", "local_ts": None, "remote_ts": None},
         {"mode": "transport", "local_ts": None, "remote_ts": None}, nat_a="10.200.0.254")
    assert dict(answers[0].proposals[0].transforms[0].attrs)[C.P2_ENCAP] == C.ENCAP_UDP_TRANSPORT


def test_commit_bit_waits_for_connected():
    """RFC 2408 3.1: with the commit bit the initiator installs only after CONNECTED."""
    from vpnd.ike import codec
    from vpnd.ike.v1 import constants as C

    net = pair(start=False)
    orig = net.a._encrypted_raw

    def with_commit(sa, exch, mid, first, body, flags=0):
        if exch == C.EXCH_QUICK and len(body) > 100:  # message 1
            flags |= codec.FLAG_V1_COMMIT
        return orig(sa, exch, mid, first, body, flags)

    net.a._encrypted_raw = with_commit
    net.feed(net.a, net.a.initiate("site", 0.0))
    net.advance(1)
    order = [(s, bool(x.outbound)) for s, x in net.log if isinstance(x, (InstallChildSA, ActivateOutbound))]
    # B installs inbound with message 2, outbound on HASH(3); A inbound with message 2,
    # outbound only on B's CONNECTED
    assert order == [("B", False), ("A", False), ("B", True), ("A", True)], order
    assert len(net.live_children("A")) == 1 and len(net.live_children("B")) == 1


def test_failed_rekey_keeps_old_pair_and_retries():
    net = pair({"lifetime": {"seconds": 200}}, {"lifetime": {"seconds": 200}})
    first = net.installs("A")[0]
    # the peer loses every Quick Mode message for a while: the rekey fails
    net.drop = lambda side, dg: dg.data[18] == 32
    net.advance(150)
    assert first.child_id in net.live_children("A")  # still carrying traffic
    assert net.a.children[first.child_id].state == "INSTALLED"
    net.drop = lambda side, dg: False
    net.advance(40)
    live = net.live_children("A")
    assert len(live) == 1 and live[0] != first.child_id, net.events("A")[-5:]


def test_reload_changed_connection_restarts_it():
    from vpnd.ike.actions import DeleteChildSA as Del
    from test_ikev1_harness import A_IP as AIP, LAN_A as LA, LAN_B as LB, conn_conf, make_config

    net = pair()
    cfg = make_config(AIP, {"site": conn_conf(AIP, B_IP, LA, LB, esp="aes256-sha256")})
    out = net.a.reload(cfg, net.now)
    assert any(isinstance(x, Del) for x in out)  # the old SA pair goes ...
    net.feed(net.a, out)
    net.advance(1)
    # ... and the connection comes up again as now configured, which B (still aes128) refuses
    assert not net.live_children("A")
    assert any("AES_CBC-256" in e.message for e in net.events("B", "no_proposal"))


def test_internal_error_costs_one_message(monkeypatch):
    net = pair()

    def boom(*a, **kw):
        raise RuntimeError("bug")

    monkeypatch.setattr(net.b, "_qm_receive", boom)
    out = net.a.rekey("site", net.now)
    net.feed(net.a, out)
    assert any(e.kind == "error" and "internal error RuntimeError" in e.message for e in net.events("B"))


def test_timer_bug_does_not_leave_a_due_timer(monkeypatch):
    conf = {"dpd": {"interval": 10, "retry": 2, "mode": "periodic", "action": "clear"}}
    net = pair(conf, conf)

    def boom(sa, now):
        raise KeyError("bug")

    monkeypatch.setattr(net.a, "_dpd_timer", boom)
    net.advance(11)
    assert any("timer failed" in e.message for e in net.events("A", "error"))
    nt = net.a.next_timer()
    assert nt is None or nt > net.now


def test_short_lifetimes_rekey_once_per_lifetime():
    """Rekey times stay within 85-90 % of the lifetime however short it is (no cascade)."""
    net = pair({"lifetime": {"seconds": 8, "ike": 60}}, {"lifetime": {"seconds": 8, "ike": 60}})
    net.advance(40, step=0.1)
    n = len(net.installs("A"))
    assert 5 <= n <= 7, n  # 40 s / ~7 s per rekey
    assert len(net.live_children("A")) in (1, 2)


def test_dpd_restart_keeps_trying_until_peer_returns():
    """A connection with start: none but DPD action restart retries until the peer is back,
    and says INITIAL-CONTACT again (the peer may still hold our old SAs)."""
    from vpnd.ike.v1 import constants as C

    conf = {"start": "none", "dpd": {"interval": 5, "retry": 1, "mode": "periodic", "action": "restart"}}
    net = pair(conf, conf)
    sent_ic = []
    orig = net.a._initial_contact
    net.a._initial_contact = lambda sa: sent_ic.append(orig(sa)) or sent_ic[-1]
    net.drop = lambda side, dg: True
    net.advance(300)  # several failed Main Mode attempts
    assert net.events("A", "peer_dead")
    net.drop = lambda side, dg: False
    net.advance(120)
    assert len(net.live_children("A")) == 1
    sa = next(iter(net.a.sas.values()))
    assert sa.is_established
    with_ic = [x for x in sent_ic if x and x[0].notify_type == C.N_INITIAL_CONTACT]
    assert with_ic, sent_ic  # the new contact after the dead peer carried INITIAL-CONTACT


def test_nat_oa_in_transport_mode_behind_nat(monkeypatch):
    """RFC 3947 5.2: NAT-OAi/NAT-OAr with the original addresses in transport-mode Quick Mode."""
    from vpnd.ike.v1 import payloads as P
    from vpnd.ike.v1 import quick

    seen = []
    orig = quick.QuickMixin._qm_r_msg1

    def spy(self, sa, hdr, plain, pls, now):
        seen.append([p for p in pls if isinstance(p, P.NatOA)])
        return orig(self, sa, hdr, plain, pls, now)

    monkeypatch.setattr(quick.QuickMixin, "_qm_r_msg1", spy)
    conf = {"mode": "transport", "local_ts": None, "remote_ts": None}
    net = pair(conf, conf, nat_a="10.200.0.254")
    assert net.installs("A") and net.installs("B")
    oa = seen[0]
    assert [x.data[4:] for x in oa] == [bytes([10, 200, 0, 1]), bytes([10, 200, 0, 2])]


@pytest.mark.parametrize("order", ["interleaved", "one-after-the-other", "b-first-lost"])
@pytest.mark.parametrize("aggressive", [False, True], ids=["main", "aggressive"])
def test_both_ends_initiate_at_once(order, aggressive):
    """`start: start` on both ends: two ISAKMP SAs cross. Each end used to take the peer's
    INITIAL-CONTACT as a restart and drop its own half-open SA, so no Quick Mode ran; and
    the ends must agree on which duplicate SA goes, whatever order they see things in."""
    conf = {"start": "start", "aggressive": aggressive}
    net = pair(conf, conf, start=False)
    ob = net.b.initiate("site", 0.0)
    if order == "b-first-lost":
        # B starts first, its message 1 is lost (A is not up yet); A starts a second later,
        # its SA is up at both ends before B's retransmission arrives
        net.now = 1.0
        net.feed(net.a, net.a.initiate("site", 1.0))
        net.advance(5)
    else:
        oa = net.a.initiate("site", 0.0)
        if order == "interleaved":
            net.feed_pairs([(net.a, x) for x in oa] + [(net.b, x) for x in ob])
        else:
            net.feed(net.a, oa)
            net.feed(net.b, ob)
    net.advance(2)
    assert net.live_children("A") and net.live_children("B"), (net.events("A"), net.events("B"))
    net.advance(80)  # duplicate ISAKMP SA retired after 10 s, duplicate IPsec SA pair after 60 s
    for side, core in (("A", net.a), ("B", net.b)):
        assert not [e for e in net.events(side) if e.kind in ("error", "auth_failed", "failed")]
        assert len(core.sas) == 1 and next(iter(core.sas.values())).is_established
        assert core.connection_status("site") == {"state": "up", "ike_sas": 1, "child_sas": 1}
    # both ends kept the same ISAKMP SA and the same IPsec SA pair
    assert set(net.a.sas) == set(net.b.sas)
    (ca,), (cb,) = net.a.children.values(), net.b.children.values()
    assert ca.spis_in == cb.spis_out and ca.spis_out == cb.spis_in
    ia = {i.child_id: i for i in net.installs("A")}[ca.child_id]
    ib = {i.child_id: i for i in net.installs("B")}[cb.child_id]
    assert [(k.spi, k.enc_key) for k in ia.outbound] == [(k.spi, k.enc_key) for k in ib.inbound]


@pytest.mark.parametrize("ike", [False, True], ids=["quick-mode", "isakmp"])
def test_rekey_without_sa_fails_at_once(ike):
    """`vpnctl rekey` waits until an event ends it: with nothing to rekey, say so at once
    (as IKEv2 does) instead of letting the command run into its timeout."""
    net = pair(start=False)
    out = net.a.rekey("site", 0.0, ike=ike)
    errors = [x for x in out if isinstance(x, Event) and x.kind == "error"]
    assert errors and "to rekey" in errors[0].message and errors[0].connection == "site"
    assert not [x for x in out if isinstance(x, SendDatagram)]  # and nothing was started
    # with an SA up, a rekey is no error
    net.feed(net.a, net.a.initiate("site", 0.0))
    out = net.a.rekey("site", net.now, ike=ike)
    assert not [x for x in out if isinstance(x, Event) and x.kind == "error"]
    assert [x for x in out if isinstance(x, SendDatagram)]
