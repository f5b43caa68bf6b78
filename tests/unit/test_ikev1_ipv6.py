"""Issue 12 (IKEv1 over IPv6, the core's part): IPv6 WAN addresses (IDs, NAT-D, cookies),
IPv6 and IPv4 subnets as proxy identities, per-host SAs from IPv6 packets."""
import ipaddress

import pytest

from vpnd.ike.v1 import constants as C
from vpnd.ike.v1 import payloads as P
from vpnd.ike.v1.core import Ikev1Core
from vpnd.ike.v1.quick import id_ts, ts_id

from test_ikev1_harness import Net, conn_conf, make_config

A6, B6 = "fd00:200::1", "fd00:200::2"


def _pair6(lan_a, lan_b, **kw):
    a = Ikev1Core(make_config(A6, {"site": conn_conf(A6, B6, lan_a, lan_b, **kw)}), now=0.0)
    b = Ikev1Core(make_config(B6, {"site": conn_conf(B6, A6, lan_b, lan_a, **{"start": "none", **kw})}), now=0.0)
    net = Net(a, b)
    net.feed(a, a.initiate("site", 0.0))
    net.advance(2)
    return net


@pytest.mark.parametrize("lans", [("fd01::/64", "fd02::/64"), ("10.1.0.0/16", "10.2.0.0/16")],
                         ids=["v6-in-v6", "v4-in-v6"])
@pytest.mark.parametrize("aggressive", [False, True], ids=["main", "aggressive"])
def test_tunnel_over_ipv6(lans, aggressive):
    net = _pair6(*lans, aggressive=aggressive)
    (ia,), (ib,) = net.installs("A"), net.installs("B")
    assert [str(x) for x in ia.local_ts] == [lans[0]] and [str(x) for x in ia.remote_ts] == [lans[1]]
    assert tuple(ia.remote) == (B6, 500) and tuple(ib.remote) == (A6, 500)
    st = net.b.status_ike_sas(net.now)[0]
    assert st["remote_id"] == A6 and not st["nat_detected"]


def test_transport_mode_over_ipv6():
    net = _pair6(None, None, mode="transport", local_ts=None, remote_ts=None)
    (ia,) = net.installs("A")
    assert [str(x) for x in ia.local_ts] == [f"{A6}/128"]


@pytest.mark.parametrize("net_", ["fd01::/64", "2001:db8::/32", "fd02::1/128", "::/0", "10.1.0.0/16"])
def test_proxy_identity_round_trip(net_):
    n = ipaddress.ip_network(net_)
    p = ts_id(n)
    assert id_ts(P.ID.decode(p.encode())) == n


def test_ipv6_range_identity_and_bad_mask():
    rng = P.ID(C.ID_IPV6_ADDR_RANGE, 0, 0, ipaddress.IPv6Address("fd01::").packed
               + ipaddress.IPv6Address("fd01::ffff").packed)
    assert id_ts(rng) == ipaddress.ip_network("fd01::/112")
    odd = P.ID(C.ID_IPV6_ADDR_SUBNET, 0, 0, bytes(16) + b"\xff" * 8 + b"\x00\xff" + bytes(6))
    assert id_ts(odd) is None


def test_per_host_sa_from_an_ipv6_packet():
    net = _pair6("fd01::/64", "fd02::/64", per_host=True, start="none")
    src, dst = ipaddress.IPv6Address("fd01::10"), ipaddress.IPv6Address("fd02::20")
    pkt = bytes([0x60, 0, 0, 0, 0, 8, 58, 64]) + src.packed + dst.packed + bytes(8)
    net.feed(net.a, net.a.acquire("site", pkt, net.now))
    net.advance(2)
    (ia,) = net.installs("A")
    assert [str(x) for x in ia.local_ts] == ["fd01::10/128"] and [str(x) for x in ia.remote_ts] == ["fd02::20/128"]


def test_status_shows_ipv6_endpoints_bracketed():
    net = _pair6("fd01::/64", "fd02::/64")
    st = net.a.status_ike_sas(net.now)[0]
    assert st["local"] == f"[{A6}]:500" and st["remote"] == f"[{B6}]:500"
