"""Daemon behaviour in namespaces (issues 7.11, 8.6, 12 of session 2): the TUN device's own
IPv6 chatter, fail-closed routing, and IKE sockets only when IKE is configured.

    hosta ── gwa(vpnd) ══ WAN ══ gwb(vpnd) ── hostb
"""
from __future__ import annotations

import signal
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


# -- issue 8.6: fail closed ---------------------------------------------------------------

from .topology import HOST_B, LAN_A, LAN_B, WAN_A, WAN_B  # noqa: E402
from .vpnd_proc import ike_config  # noqa: E402

ECHO = "icmp[icmptype] == 8"


def _ike_gwa(topo, *, start="start", dpd="hold", mode="tunnel", daemon_extra=""):
    lts, rts = (LAN_A, LAN_B) if mode == "tunnel" else (f"{WAN_A}/32", f"{WAN_B}/32")
    extra = f"dpd: {{interval: 2, retry: 2, action: {dpd}}}\nmode: {mode}"
    return ike_config(topo, "gwa", version=2, psk="fail closed test key 123", local=WAN_A,
                      peer=WAN_B, lts=lts, rts=rts, ike="aes128-sha256-modp2048",
                      esp="aes128gcm16", start=start, extra=extra, daemon_extra=daemon_extra)


@pytest.fixture
def leak_path(topo):
    """gwa's default route leads to gwb over the WAN (a gateway's internet uplink): a packet
    that escapes the tunnel leaves in clear there."""
    topo.ip("gwa", f"route replace default via {WAN_B}")
    yield
    topo.ip("gwa", "route del default")


def _echoes_on_wan(topo, send, name):
    cap = topo.capture("gwb", "wan", name, ECHO)
    try:
        send()
    finally:
        path = cap.stop()
    return topo.run("gwb", ["tcpdump", "-n", "-r", str(path)]).stdout.decode().strip()


@pytest.mark.parametrize("mode,start,dpd,down", [
    ("tunnel", "start", "hold", False), ("tunnel", "start", "clear", False),
    ("tunnel", "start", "restart", True), ("tunnel", "trap", "clear", True),
    ("tunnel", "none", "restart", False),
    ("transport", "start", "hold", False), ("transport", "start", "clear", True),
])
def test_no_cleartext_while_the_peer_is_unreachable(topo, vpnds, leak_path, mode, start, dpd, down):
    """Issue 8.6: gwb runs no vpnd (its IKE is unanswered): whatever the connection's
    start/dpd settings, before any SA and after `vpnctl down`, traffic for the protected
    subnets (tunnel) or the peer (transport) is held or dropped, never sent in clear."""
    a = vpnds(topo, "gwa", _ike_gwa(topo, start=start, dpd=dpd, mode=mode))
    if down:
        a.ctl("down", name="site", timeout=3)
    src, dst = ("hosta", HOST_B) if mode == "tunnel" else ("gwa", WAN_B)
    seen = _echoes_on_wan(topo, lambda: topo.ping(src, dst, count=3, interval=0.2, timeout=1),
                          f"leak-{mode}-{start}-{dpd}-{down}.pcap")
    assert seen == "", f"cleartext echo requests on the WAN:\n{seen}"
    d = a.status()["daemon"]
    assert d["dp_blocked"] + d["dp_acquires"] >= 3, d
    if mode == "tunnel":
        assert LAN_B in d["routes"]  # the route into the TUN stays


def test_kill_switch_blackholes_survive_the_daemon(topo, vpnds, leak_path):
    """daemon.kill_switch: blackhole routes for the remote subnets outlive a killed or
    stopped vpnd; without it a start removes them."""
    text = _ike_gwa(topo, daemon_extra="kill_switch: true")
    a = vpnds(topo, "gwa", text)
    show = lambda: topo.run("gwa", ["ip", "route", "show", "proto", "118"]).stdout.decode()  # noqa: E731
    assert f"blackhole {LAN_B}" in show()
    a.stop(signal.SIGKILL)
    seen = _echoes_on_wan(topo, lambda: topo.ping("hosta", HOST_B, count=3, interval=0.2, timeout=1),
                          "kill-switch-killed.pcap")
    assert seen == "" and f"blackhole {LAN_B}" in show()
    b = vpnds(topo, "gwa", text)  # a new start adopts them
    assert show().count("blackhole") == 1
    assert b.stop() == 0
    assert f"blackhole {LAN_B}" in show()  # and leaves them when stopped cleanly
    c = vpnds(topo, "gwa", _ike_gwa(topo))  # kill_switch off: removed
    assert "blackhole" not in show()
    assert c.stop() == 0


# -- issue 12: "no crypto isakmp enable" ----------------------------------------------------

def _udp_ports(topo, role):
    out = topo.run(role, ["ss", "-H", "-u", "-l", "-n"]).stdout.decode()
    return {int(line.split()[3].rsplit(":", 1)[1]) for line in out.splitlines() if line.strip()}


def test_manual_only_config_opens_no_ike_port(topo, vpnds):
    """Only manual keys: UDP 500 and 4500 stay unbound (no IKE answers anything); with a
    manual `encap: true` connection 4500 is bound for ESP in UDP, 500 still not; a reload
    that adds an IKE connection opens both, one that removes it closes them again."""
    ca, _ = manual_pair(topo)
    a = vpnds(topo, "gwa", ca)
    assert not _udp_ports(topo, "gwa") & {500, 4500}
    assert a.status()["daemon"]["udp_ports"] == []
    assert a.stop() == 0

    ce, _ = manual_pair(topo, encap=True)
    a = vpnds(topo, "gwa", ce)
    assert _udp_ports(topo, "gwa") & {500, 4500} == {4500}
    assert a.stop() == 0

    a = vpnds(topo, "gwa", ca)
    ike = _ike_gwa(topo, start="none")
    both = ca + "\n".join(line for line in ike.split("connections:\n", 1)[1].splitlines()) + "\n"
    a.write_config(both)
    assert a.ctl("reload")["ok"]
    assert _udp_ports(topo, "gwa") >= {500, 4500}
    assert a.status()["daemon"]["udp_ports"] == [500, 4500]
    a.write_config(ca)
    assert a.ctl("reload")["ok"]
    assert not _udp_ports(topo, "gwa") & {500, 4500}


def test_kill_switch_does_not_shadow_the_tunnel(topo, vpnds, leak_path):
    """With daemon.kill_switch the blackhole routes sit behind the TUN routes: the tunnel
    carries traffic; once gwa's vpnd is killed nothing leaves in clear."""
    ca, cb = manual_pair(topo, extra_daemon="kill_switch: true")
    a = vpnds(topo, "gwa", ca)
    vpnds(topo, "gwb", cb)
    topo.wait_ping("hosta", HOST_B, timeout=10)
    a.stop(signal.SIGKILL)
    seen = _echoes_on_wan(topo, lambda: topo.ping("hosta", HOST_B, count=2, interval=0.2, timeout=1),
                          "kill-switch-manual.pcap")
    assert seen == ""
    topo.run("gwa", ["ip", "route", "flush", "proto", "118", "type", "blackhole"])
