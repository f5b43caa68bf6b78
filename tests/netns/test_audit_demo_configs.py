"""Issue 2 item 9: the compose topology "exercised by a network-namespace test using the
same config files". docker-compose.yml mounts conf/demo/site-{a,b}[-manual].yaml into the
gateway containers; here the very same files run vpnd in the gateway namespaces of
tests/netns/topology.py (same addresses), with one line changed: the control socket moves
from /run/vpnd to the test's work directory (the file system is shared with the host)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from .test_ikev2_strongswan import vpnds  # noqa: F401 (fixture)
from .topology import Topology

pytestmark = [pytest.mark.netns]

DEMO = Path(__file__).resolve().parents[2] / "conf" / "demo"


@pytest.fixture
def aud_topo():
    with Topology(prefix="aud") as t:
        yield t


def _demo_text(topo, site: str, variant: str, role: str) -> str:
    text = (DEMO / f"site-{site}{variant}.yaml").read_text()
    sock = Path(topo.workdir) / f"{role}.sock"
    new, n = re.subn(r"(?m)^(\s*control_socket:).*$", rf"\1 {sock}", text)
    assert n == 1, "the demo config has one control_socket line"
    return new


@pytest.mark.parametrize("variant", ["", "-manual"], ids=["ikev2-psk", "manual"])
def test_demo_configs_bring_up_the_compose_topology(aud_topo, vpnds, variant):
    topo = aud_topo
    b = vpnds(topo, "gwb", _demo_text(topo, "b", variant, "gwb"))
    a = vpnds(topo, "gwa", _demo_text(topo, "a", variant, "gwa"))
    topo.wait_ping("hosta", topo.hostb_ip, timeout=20)
    assert topo.ping("hostb", topo.hosta_ip, count=3, interval=0.2).returncode == 0
    res = topo.tcp_transfer("hosta", "hostb", topo.hostb_ip, mbytes=2)
    assert res["up_ok"] and res["down_ok"]
    for v in (a, b):
        st = v.status()
        conns = {c["name"]: c for c in st["connections"]}
        assert len(conns) == 1 and all(c["state"] == "up" for c in conns.values()), st["connections"]
        child = [ch for sa in st["ike_sas"] for ch in sa["child_sas"]] if variant == "" else None
        assert child is None or (len(child) == 1 and child[0]["packets_in"] > 0)
