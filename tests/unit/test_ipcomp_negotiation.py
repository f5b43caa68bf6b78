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
