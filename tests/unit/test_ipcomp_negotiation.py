"""IPComp negotiation (issue 12): IKEv2 IPCOMP_SUPPORTED (RFC 7296 2.22, 3.10.1) in IKE_AUTH and
CREATE_CHILD_SA, both roles; a peer without compression falls back to plain ESP.
The shared rules (vpnd/ike/ipcomp.py) are checked on their own too."""

from __future__ import annotations

import struct

import pytest

from vpnd.ike import ipcomp
from vpnd.ike.actions import IPCompParams
from vpnd.ike.v2 import constants as c
from vpnd.ike.v2.payloads import Notify

from test_ikev2_pair import Pair


def v2_pair(a_comp, b_comp):
    a = {"comp": a_comp} if a_comp else {}
    b = {"comp": b_comp} if b_comp else {}
    return Pair(a, b)


@pytest.mark.parametrize("alg", ["deflate", "lzs"])
def test_v2_both_compress_in_ike_auth_and_rekey(alg):
    p = v2_pair(alg, alg)
    p.up()
    (ca,), (cb,) = p.check_tunnel()
    assert ca.ipcomp is not None and cb.ipcomp is not None
    assert ca.ipcomp.algorithm == cb.ipcomp.algorithm == alg
    # each side's outbound CPI is the one the other receives with
    assert ca.ipcomp.cpi_out == cb.ipcomp.cpi_in and cb.ipcomp.cpi_out == ca.ipcomp.cpi_in
    assert 256 <= ca.ipcomp.cpi_in <= 61439 and 256 <= cb.ipcomp.cpi_in <= 61439
    # CREATE_CHILD_SA (a child rekey, either side initiating): negotiated again, fresh CPIs
    for side in (p.a, p.b):
        p.feed(side, side.m.rekey("site", p.now))
        p.run(5)
        (ca,), (cb,) = p.check_tunnel()
        assert ca.ipcomp and cb.ipcomp and ca.ipcomp.cpi_out == cb.ipcomp.cpi_in
        assert cb.ipcomp.cpi_out == ca.ipcomp.cpi_in


@pytest.mark.parametrize("a_comp,b_comp", [("deflate", None), (None, "deflate"),
                                           ("deflate", "lzs"), (None, None)])
def test_v2_no_common_compression_falls_back_to_plain_esp(a_comp, b_comp):
    p = v2_pair(a_comp, b_comp)
    p.up()
    (ca,), (cb,) = p.check_tunnel()
    assert ca.ipcomp is None and cb.ipcomp is None


def test_v2_notify_data_form():
    data = ipcomp.encode_v2(0x1234, 2)
    assert data == b"\x12\x34\x02"                                 # CPI, transform ID
    assert Notify(c.N_IPCOMP_SUPPORTED, data).encode() == struct.pack("!BBH", 0, 0, 16387) + data
    assert ipcomp.decode_v2(data + b"\x00\x00") == (0x1234, 2)     # attributes ignored
    assert ipcomp.decode_v2(b"\x12\x34") is None
    assert ipcomp.decode_v2(b"\x00\x00\x02") is None                # CPI 0
    assert ipcomp.decode_v2(b"\x00\x80\x02") is None                # reserved CPI 128


def test_shared_rules():
    class Conn:
        comp = "lzs"
    assert ipcomp.transform_id(Conn) == 3 and ipcomp.acceptable(Conn, 3)
    assert not ipcomp.acceptable(Conn, 2)
    Conn.comp = None
    assert ipcomp.transform_id(Conn) is None and not ipcomp.acceptable(Conn, 2)
    seq = iter([b"\x00\x00", b"\xff\xff", b"\xef\xff"])
    cpis = [ipcomp.new_cpi(lambda n: next(seq)) for _ in range(3)]
    assert all(256 <= x <= 61439 for x in cpis)
    assert ipcomp.decode_v1_spi(b"\x12\x34") == 0x1234
    assert ipcomp.decode_v1_spi(b"\x00\x00\x12\x34") == 0x1234
    assert ipcomp.decode_v1_spi(b"\x01\x00\x12\x34") is None
    assert ipcomp.decode_v1_spi(b"\x00") is None
    assert IPCompParams("lzs", 300, 400).cpi_out == 400


# -- IKEv1 Quick Mode: an IPCOMP proposal in the same proposal number (RFC 2409 5.5) --------

from test_ikev1_harness import pair as v1_pair  # noqa: E402

from vpnd.ike.v1 import constants as C1, policy  # noqa: E402
from vpnd.ike.v1.payloads import SA as SA1, Proposal as Prop1, Transform as T1  # noqa: E402

SEED = "ah-sha-hmac esp-aes esp-sha-hmac comp-lzs"   # the seed's transform set


def v1_children(net):
    ia, ib = net.installs("A"), net.installs("B")
    assert ia and ib
    return ia[-1], ib[-1]


@pytest.mark.parametrize("a_kw,b_kw,alg", [
    ({"esp": SEED}, {"esp": SEED}, "lzs"),
    ({"esp": "aes128-sha1-modp2048", "comp": "deflate"},
     {"esp": "aes128-sha1-modp2048", "comp": "deflate"}, "deflate"),
])
def test_v1_quick_mode_negotiates_ipcomp(a_kw, b_kw, alg):
    net = v1_pair(a_kw, b_kw)
    ca, cb = v1_children(net)
    assert ca.ipcomp is not None and cb.ipcomp is not None
    assert ca.ipcomp.algorithm == cb.ipcomp.algorithm == alg
    assert ca.ipcomp.cpi_out == cb.ipcomp.cpi_in and cb.ipcomp.cpi_out == ca.ipcomp.cpi_in
    assert [k.protocol for k in ca.inbound] == [k.protocol for k in cb.outbound]


@pytest.mark.parametrize("a_kw,b_kw", [
    ({"esp": SEED}, {"esp": "ah-sha-hmac esp-aes esp-sha-hmac"}),   # responder does not compress
    ({"esp": "ah-sha-hmac esp-aes esp-sha-hmac"}, {"esp": SEED}),   # initiator does not
    ({"esp": "aes128-sha1", "comp": "deflate"}, {"esp": "aes128-sha1", "comp": "lzs"}),
])
def test_v1_falls_back_to_no_compression(a_kw, b_kw):
    net = v1_pair(a_kw, b_kw)
    ca, cb = v1_children(net)
    assert ca.ipcomp is None and cb.ipcomp is None
    assert ca.outbound[0].spi == cb.inbound[0].spi


def _esp_t(num=1):
    return T1(num, 12, [(C1.P2_ENCAP, C1.ENCAP_TUNNEL), (C1.P2_AUTH_ALG, 2), (C1.P2_KEY_LENGTH, 128)])


def test_v1_offer_layout():
    """What the initiator offers: proposal 1 = ESP + IPCOMP (CPI in a 2-octet SPI, transform
    IPCOMP_LZS = 3, the ESP's encapsulation mode), proposal 2 = the same ESP alone."""
    [alts] = [policy.p2_choices(p, mode="tunnel", udp=False, life_s=3600, life_kb=0)
              for p in __import__("vpnd.proposals", fromlist=["x"]).parse_proposals(
                  "esp-aes esp-sha-hmac comp-lzs", "esp")]
    sa = policy.p2_sa([alts], {C1.PROTO_ESP: b"\x11\x22\x33\x44"}, None, ("lzs", 0x1234))
    props = [(p.number, p.protocol, p.spi) for p in sa.proposals]
    assert props == [(1, C1.PROTO_ESP, b"\x11\x22\x33\x44"), (1, 4, b"\x12\x34"),
                     (2, C1.PROTO_ESP, b"\x11\x22\x33\x44")]
    ipc = sa.proposals[1].transforms[0]
    assert ipc.transform_id == 3 and (C1.P2_ENCAP, C1.ENCAP_TUNNEL) in ipc.attrs
    back = SA1.decode(sa.encode())                 # and it survives our own codec
    assert [(p.number, p.protocol, p.spi) for p in back.proposals] == props


def test_v1_responder_skips_a_number_with_foreign_ipcomp_and_reads_4_octet_cpi():
    [alts] = [policy.p2_choices(p, mode="tunnel", udp=False, life_s=0, life_kb=0)
              for p in __import__("vpnd.proposals", fromlist=["x"]).parse_proposals(
                  "esp-aes esp-sha-hmac", "esp")]
    esp = lambda n: Prop1(n, C1.PROTO_ESP, b"\x00\x00\x10\x00", [_esp_t()])  # noqa: E731
    offer = SA1([esp(1), Prop1(1, 4, b"\x00\x00\x01\x00", [T1(1, 4, [])]),      # LZJH: not ours
                 esp(2), Prop1(2, 4, b"\x00\x00\x23\x45", [T1(1, 2, [])]),      # deflate, 4 octets
                 esp(3)])
    chosen, nums, spis, number = policy.p2_select(offer, [alts], "deflate")
    assert number == 2 and policy.p2_ipcomp(offer, 2, "deflate") == (0x2345, 1)
    # without compression of our own: the number without IPComp
    assert policy.p2_select(offer, [alts], None)[3] == 3
    # an IPComp-only offer when we do not compress: nothing acceptable
    assert policy.p2_select(SA1([esp(1), Prop1(1, 4, b"\x01\x00", [T1(1, 2, [])])]), [alts], None) is None


def test_v1_peer_refusing_the_ipcomp_offer_gets_a_plain_quick_mode():
    """strongSwan (kernel-libipsec, `ipcomp = yes`) answers NO-PROPOSAL-CHOSEN to an offer with
    IPComp rather than taking the proposal number without it: vpnd asks once more without
    IPComp, and reports no failure for it."""
    from vpnd.ike.v1 import payloads as P1
    from vpnd.ike.v1.quick import QuickFailed

    net = v1_pair({"esp": SEED}, {"esp": "ah-sha-hmac esp-aes esp-sha-hmac"}, start=False)
    b = net.b
    orig = b._qm_r_msg1
    refused = []

    def like_charon(sa, hdr, plain, pls, now):
        sa_p = next(p for p in pls if isinstance(p, P1.SA))
        if any(p.protocol == 4 for p in sa_p.proposals):
            refused.append(1)
            raise QuickFailed("unable to allocate a CPI", C1.N_NO_PROPOSAL_CHOSEN)
        return orig(sa, hdr, plain, pls, now)
    b._qm_r_msg1 = like_charon
    net.feed(net.a, net.a.initiate("site", 0.0))
    net.advance(3)
    ca, cb = v1_children(net)
    assert refused == [1]
    assert ca.ipcomp is None and cb.ipcomp is None and ca.outbound[0].spi == cb.inbound[0].spi
    assert net.events("A", "ipcomp_refused") and not net.events("A", "error")
    # a rekey on the same ISAKMP SA does not offer IPComp again
    net.feed(net.a, net.a.rekey("site", net.now))
    net.advance(3)
    assert refused == [1] and len(net.installs("A")) == 2
