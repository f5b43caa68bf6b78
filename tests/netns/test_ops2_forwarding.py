"""Issue 11: vpnd warns at start, with the sysctl to set, when a tunnel-mode connection
exists and IP forwarding is off in its network namespace; silent when it is on."""
from __future__ import annotations

import sys

import pytest

from .test_ikev2_strongswan import ik2_topo  # noqa: F401
from .vpnd_proc import Vpnd, manual_pair

pytestmark = [pytest.mark.netns]

LINE = "IPv4 forwarding is off (net.ipv4.ip_forward = 0)"


def _start_and_log(topo, text) -> str:
    v = Vpnd(topo, "gwa", text)
    v.start()
    try:
        v.status()
    finally:
        v.stop()
    return v.log()


def test_forwarding_warning(ik2_topo):
    topo = ik2_topo
    ca, _ = manual_pair(topo)
    topo.run("gwa", ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    # the netlink reading agrees with the sysctl, inside the namespace
    probe = [sys.executable, "-c", "from vpnd.net.forwarding import forwarding; print(forwarding(4))"]
    env = Vpnd.env()
    assert topo.run("gwa", probe, env=env).stdout.decode().strip() == "True"
    log = _start_and_log(topo, ca)
    assert "forwarding is off" not in log
    topo.run("gwa", ["sysctl", "-qw", "net.ipv4.ip_forward=0"])
    assert topo.run("gwa", probe, env=env).stdout.decode().strip() == "False"
    log = _start_and_log(topo, ca)
    assert LINE in log and "sysctl -w net.ipv4.ip_forward=1" in log and "tunnel" in log
    assert log.count("forwarding is off") == 1
    topo.run("gwa", ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
