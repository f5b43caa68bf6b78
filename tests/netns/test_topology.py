"""The topology itself: links, forwarding, NAT, capture and the TCP checker work."""
import subprocess

import pytest

from .topology import HOST_A, HOST_B, NAT_OUTSIDE

pytestmark = pytest.mark.netns


def test_plain_forwarding_and_tcp_checker(topo):
    assert topo.ping("hosta", HOST_B).returncode != 0, "LANs must not be routed without a tunnel"
    topo.plain_routes()
    topo.wait_ping("hosta", HOST_B)
    res = topo.tcp_transfer("hosta", "hostb", HOST_B, mbytes=2)
    assert res["up_ok"] and res["down_ok"] and res["bytes"] == 2_000_000


def test_nat_masquerades_and_capture_sees_it(topo_nat):
    with topo_nat.capture("gwb", "wan", "wan.pcap", "icmp") as cap:
        assert topo_nat.ping("gwa", topo_nat.gwb_wan, count=2, interval=0.2).returncode == 0
    out = subprocess.run(["tcpdump", "-nr", str(cap.path)], capture_output=True, text=True).stdout
    assert f"IP {NAT_OUTSIDE} > 10.200.0.2: ICMP echo request" in out


def test_namespaces_removed_after_close(make_topology):
    t = make_topology()
    names = list(t.ns.values())
    p = t.popen("hosta", ["sleep", "300"])
    t.close()
    assert p.poll() is not None
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(n in listed for n in names)
