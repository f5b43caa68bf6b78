"""Daemon behaviour in namespaces (issues 7.11, 8.6, 12 of session 2): the TUN device's own
IPv6 chatter, fail-closed routing, and IKE sockets only when IKE is configured.

    hosta ── gwa(vpnd) ══ WAN ══ gwb(vpnd) ── hostb
"""
from __future__ import annotations

import time

import pytest

from .topology import Topology
from .vpnd_proc import Vpnd, manual_pair, vpnd_starter

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def topo():
    with Topology(prefix="ds2") as t:
        yield t


@pytest.fixture
def vpnds(request):
    with vpnd_starter(request) as make:
        yield make


def test_fresh_tun_has_no_link_local_chatter(topo, vpnds):
    """Issue 7.11: no IPv6 link-local address on the TUN (no MLD / router solicitation
    into it), and nothing of the kernel's own counted as a policy drop."""
    ca, _ = manual_pair(topo)
    # the topology turns IPv6 off in its namespaces; a real gateway has it on
    on = ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0", "net.ipv6.conf.default.disable_ipv6=0"]
    topo.run("gwa", on)
    try:
        a = vpnds(topo, "gwa", ca)
        _no_link_local_chatter(topo, a)
    finally:
        topo.run("gwa", ["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                         "net.ipv6.conf.default.disable_ipv6=1"])


def _no_link_local_chatter(topo, a):
    addrs = topo.run("gwa", ["ip", "-6", "-o", "addr", "show", "dev", "vpnd0"]).stdout.decode()
    assert "fe80" not in addrs
    time.sleep(4.5)  # router solicitations go out within 1 s of "up", MLD reports at once
    d = a.status()["daemon"]
    assert d["dp_no_policy"] == 0, d
