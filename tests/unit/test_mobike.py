"""MOBIKE (RFC 4555) between two IKEv2 cores in memory (tests/unit/test_ikev2_pair.Pair):
negotiation in IKE_AUTH (3.2) with the switch to port 4500 (3.3), the initiator moving the
IKE SA and its CHILD_SAs to a new address (3.5) with COOKIE2 (3.7) and NAT detection
(3.8), the responder following only an authenticated UPDATE_SA_ADDRESSES (3.8), NO_NATS
(3.9), additional address lists (3.6), and mobike: no."""
from __future__ import annotations

from vpnd.ike import codec
from vpnd.ike.actions import SendDatagram, UpdateChildAddresses
from vpnd.ike.v2 import constants as c
from vpnd.ike.v2.payloads import REGISTRY, Notify
from vpnd.ike.v2.sk import unprotect

from test_ikev2_pair import A_IP, B_IP, Pair

A2 = "10.9.0.1"


def sa_of(side):
    (sa,) = [s for s in side.m.v2.sas.values() if s.state == "ESTABLISHED"]
    return sa


def payloads_at(receiver_sa, d: SendDatagram):
    """The payloads of an IKE message as the receiving SA decrypts them."""
    msg = codec.decode_message(d.data, REGISTRY)
    return unprotect(d.data, msg.payloads[-1], receiver_sa.crypto_in)


def notifies(pls):
    return [p.type for p in pls if isinstance(p, Notify)]


def up(**kw):
    p = Pair(**kw)
    p.up()
    p.check_tunnel()
    return p


def move_a(p: Pair, new_ip: str = A2):
    """gwa's address A_IP goes, A2 comes (the kernel now reaches B from A2)."""
    p.by_ip[new_ip] = p.a
    p.by_ip.pop(A_IP, None)
    p.a.ip = new_ip
    p.feed(p.a, p.a.m.addresses_changed({new_ip}, {B_IP: new_ip}, p.now))
    p.pump()


def test_negotiated_in_ike_auth_and_ike_on_4500_without_nat():
    p = up()
    a, b = sa_of(p.a), sa_of(p.b)
    assert a.mobike and b.mobike and a.mobike_initiator and not b.mobike_initiator
    assert a.local[1] == a.remote[1] == 4500 == b.local[1] == b.remote[1]   # 3.3
    assert not a.udp_encap and not b.udp_encap            # no NAT: ESP stays raw
    auth = [d for _, d in p.a.sent if d.data[18] == c.IKE_AUTH]
    assert auth and all(d.local[1] == d.remote[1] == 4500 for d in auth)
    assert c.N_MOBIKE_SUPPORTED in notifies(payloads_at(b, auth[0]))
    assert p.a.m.status(p.now)["ike_sas"][0]["mobike"] is True


def test_mobike_no_keeps_port_500_and_no_notify():
    p = up(a_kw={"mobike": False})
    a, b = sa_of(p.a), sa_of(p.b)
    assert not a.mobike and not b.mobike
    assert a.local[1] == 500


def test_initiator_moves_ike_and_child_sas_same_spis():
    p = up()
    spis = {k: (c_.inbound[0].spi, c_.outbound[0].spi) for k, c_ in p.a.children.items()}
    move_a(p)
    a, b = sa_of(p.a), sa_of(p.b)
    assert a.local == (A2, 4500) and b.remote == (A2, 4500)
    assert [u.remote[0] for u in p.b.updates] == [A2] and [u.local[0] for u in p.a.updates] == [A2]
    assert p.a.updates[0].child_id in spis and not p.a.updates[0].udp_encap
    assert "ike_moved" in p.a.kinds() and "ike_moved" in p.b.kinds()
    # the update request carried UPDATE_SA_ADDRESSES, NAT detection and COOKIE2, from A2
    upd = [d for _, d in p.a.sent if d.local[0] == A2]
    assert upd and upd[0].local == (A2, 4500)
    got = notifies(payloads_at(b, upd[0]))
    for n in (c.N_UPDATE_SA_ADDRESSES, c.N_COOKIE2, c.N_NAT_DETECTION_SOURCE_IP,
              c.N_NAT_DETECTION_DESTINATION_IP):
        assert n in got
    resp = [d for _, d in p.b.sent if d.remote[0] == A2][0]
    assert {c.N_COOKIE2, c.N_NAT_DETECTION_SOURCE_IP} <= set(notifies(payloads_at(a, resp)))
    # the tunnel is the same (no new SAs) and still works: a rekey goes over the new path
    p.check_tunnel()
    assert {k: (c_.inbound[0].spi, c_.outbound[0].spi) for k, c_ in p.a.children.items()} == spis
    p.feed(p.a, p.a.m.rekey("site", p.now))
    p.pump()
    p.check_tunnel()


def test_cookie2_mismatch_closes_the_ike_sa():
    p = up()
    b_sa = sa_of(p.b)
    real = p.b.m.v2.respond

    def tamper(sa, exchange, mid, payloads, now, path=None):
        payloads = [Notify(c.N_COOKIE2, b"x" * 16) if isinstance(x, Notify) and x.type == c.N_COOKIE2
                    else x for x in payloads]
        return real(sa, exchange, mid, payloads, now, path)
    p.b.m.v2.respond = tamper
    move_a(p)
    assert b_sa.remote[0] == A2                      # the responder moved
    assert not p.a.updates                          # the initiator did not: it closes
    assert any("COOKIE2" in e.message for e in p.a.events)
    assert not [s for s in p.a.m.v2.sas.values() if s.state == "ESTABLISHED"]


def test_responder_ignores_other_informational_from_a_new_address():
    """3.8: an authenticated INFORMATIONAL without UPDATE_SA_ADDRESSES (a DPD from another
    address) does not move the responder's SA; its answer goes back where it came from."""
    p = up()
    a = sa_of(p.a)
    a.local = (A2, 4500)                 # as if a's kernel chose another source, no update
    p.by_ip[A2] = p.a
    from vpnd.ike.v2 import exchange_info
    p.feed(p.a, (p.a.m.v2.queue(a, exchange_info.DpdTask(), p.now), p.a.m.v2.take())[1])
    p.pump()
    b = sa_of(p.b)
    assert b.remote[0] == A_IP and not p.b.updates
    assert [d.remote[0] for _, d in p.b.sent][-1] == A2     # answered on the request's path


def test_no_path_waits_then_moves_when_an_address_comes():
    p = up()
    p.feed(p.a, p.a.m.addresses_changed(set(), {B_IP: None}, p.now))
    p.pump()
    assert "mobike_no_path" in p.a.kinds() and sa_of(p.a).local[0] == A_IP
    move_a(p)
    assert sa_of(p.b).remote[0] == A2


def test_additional_addresses_are_exchanged():
    p = Pair()
    p.feed(p.a, p.a.m.addresses_changed({A_IP, "10.7.0.1", "fe80::1"}, {}, p.now))
    p.feed(p.b, p.b.m.addresses_changed({B_IP, "2001:db8::2"}, {}, p.now))
    p.up()
    assert sa_of(p.b).peer_addrs == ("10.7.0.1",)       # link-local not listed
    assert sa_of(p.a).peer_addrs == ("2001:db8::2",)
    # the responder's list changes: it tells the initiator (3.6)
    p.feed(p.b, p.b.m.addresses_changed({B_IP}, {}, p.now))
    p.pump()
    assert sa_of(p.a).peer_addrs == ()
    assert sa_of(p.a).remote[0] == B_IP                 # the responder never moves the SA


def test_initiator_tries_an_additional_peer_address():
    p = Pair()
    p.feed(p.b, p.b.m.addresses_changed({B_IP, "10.8.0.2"}, {}, p.now))
    p.up()
    p.by_ip["10.8.0.2"] = p.b
    # B_IP is unreachable now, 10.8.0.2 is reached from A_IP
    p.feed(p.a, p.a.m.addresses_changed({A_IP}, {B_IP: None, "10.8.0.2": A_IP}, p.now))
    p.pump()
    assert sa_of(p.a).remote == ("10.8.0.2", 4500)
    assert [u.remote[0] for u in p.a.updates] == ["10.8.0.2"]
    assert [u.local[0] for u in p.b.updates] == ["10.8.0.2"]


def test_update_with_wrong_no_nats_allowed_is_refused():
    p = up()
    a = sa_of(p.a)
    from vpnd.ike.v2 import mobike

    class Spoofed(mobike.UpdateAddressesTask):
        def build(self, e, sa, now):
            return super().build(e, sa, now) + [Notify(c.N_NO_NATS_ALLOWED, bytes(12))]
    a.local = (A2, 4500)
    p.by_ip[A2] = p.a
    p.feed(p.a, (p.a.m.v2.queue(a, Spoofed(A2, B_IP), p.now), p.a.m.v2.take())[1])
    p.pump()
    assert sa_of(p.b).remote[0] == A_IP and not p.b.updates
    assert "mobike_refused" in p.a.kinds() and not p.a.updates


def test_ike_rekey_keeps_mobike_roles():
    p = up()
    p.feed(p.b, p.b.m.rekey("site", p.now, ike=True))      # the responder rekeys the IKE SA
    p.pump()
    p.run(5)
    a, b = sa_of(p.a), sa_of(p.b)
    assert a.mobike and a.mobike_initiator and b.mobike and not b.mobike_initiator
    move_a(p)
    assert sa_of(p.b).remote[0] == A2
