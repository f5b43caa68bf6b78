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


_OWNER = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from tests.netns.topology import Topology
t = Topology(prefix="orph")
t.build()
p = t.popen("gwa", ["sleep", "300"])
print(json.dumps({"ns": list(t.ns.values()), "sleep": p.pid, "workdir": str(t.workdir)}), flush=True)
time.sleep(300)
"""


def test_a_killed_owners_namespaces_are_removed_by_the_next_topology():
    """A test process killed outright runs no teardown: what it left (namespaces, the
    processes in them, its scratch dir) goes when the next topology is built."""
    import json
    import os
    import signal
    import sys
    from pathlib import Path

    from . import topology
    root = str(Path(topology.__file__).resolve().parents[2])
    owner = subprocess.Popen([sys.executable, "-c", _OWNER, root], stdout=subprocess.PIPE,
                             start_new_session=True)
    left = None
    try:
        left = json.loads(owner.stdout.readline())
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(10)
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert all(n in listed for n in left["ns"])          # nothing cleaned it up yet
        reaped = topology.reap_orphans()
        assert sorted(left["ns"]) == sorted(n for n in reaped if n in left["ns"])
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert not any(n in listed for n in left["ns"])
        assert not Path(f"/proc/{left['sleep']}").exists()
        assert not Path(left["workdir"]).exists()
    finally:
        if owner.poll() is None:
            owner.kill()
        for n in (left or {}).get("ns", []):
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
