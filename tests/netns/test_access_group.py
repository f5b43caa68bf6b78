"""access_group (Cisco `set ip access-group ACL {out|in}`, issue 12) between two real vpnds,
manual keys:

    hosta ── gwa(vpnd) ══ WAN ══ gwb(vpnd) ── hostb

gwa's `out` list (before encryption) lets pings, TCP and UDP port 5303 into the tunnel and
nothing else (IOS's implicit deny); gwb's `in` list (after decryption) drops UDP 5303.
Checked from the hosts (what arrives), on the WAN (a denied packet is never encrypted),
with the counters of `vpnctl conns` and status, and a reload that changes a list under the
running SA (same SPI, counters of the changed list restart).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .topology import HOST_A, HOST_B, Topology
from .vpnd_proc import Vpnd, gw_links, manual_pair

pytestmark = pytest.mark.netns

_RECV = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.settimeout(float(sys.argv[2]))
print("ready", flush=True)
try:
    data, _ = s.recvfrom(2000); print(data.decode())
except socket.timeout:
    print("nothing")
"""
_SEND = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(3):
    s.sendto(b"hello " + sys.argv[2].encode(), (sys.argv[1], int(sys.argv[2]))); time.sleep(0.1)
"""

GWA_ACL = """access_group:
  out:
    - permit icmp any any echo
    - permit tcp 10.1.0.0 0.0.0.255 any
    - permit udp any any eq 5303
"""
GWB_ACL = """access_group:
  in:
    - deny udp any any eq 5303
    - permit ip any any
"""


def udp_arrives(topo, port: int, wait: float = 2.0) -> bool:
    rx = topo.popen("hostb", [sys.executable, "-c", _RECV, str(port), str(wait)])
    try:
        assert rx.stdout.readline().strip() == b"ready"
        topo.run("hosta", [sys.executable, "-c", _SEND, HOST_B, str(port)])
        out, _ = rx.communicate(timeout=wait + 10)
    finally:
        topo.stop(rx)
    return out.decode().strip() == f"hello {port}"


def vpnctl(v: Vpnd, *args) -> subprocess.CompletedProcess:
    """vpnctl as a user runs it (the control socket is a file: no namespace needed)."""
    return subprocess.run([sys.executable, "-c", "import sys; from vpnd.cli import vpnctl_main; "
                           "sys.exit(vpnctl_main())", "--socket", v.sock, *args],
                          capture_output=True, text=True, timeout=30, env={**os.environ, **v.env()})


def conns(v: Vpnd) -> dict:
    resp = v.ctl("conns")
    assert resp["ok"], resp
    return {c["name"]: c for c in resp["result"]["connections"]}


@pytest.fixture
def pair():
    with Topology(prefix="acl") as topo:
        ca, cb = manual_pair(topo, "aes128gcm16")
        ca = ca.replace("    manual:\n", "".join(f"    {x}\n" for x in GWA_ACL.splitlines())
                        + "    manual:\n")
        cb = cb.replace("    manual:\n", "".join(f"    {x}\n" for x in GWB_ACL.splitlines())
                        + "    manual:\n")
        a, b = Vpnd(topo, "gwa", ca), Vpnd(topo, "gwb", cb)
        try:
            a.start()
            b.start()
            yield topo, a, b
        finally:
            for d in (a, b):
                if d.alive():
                    assert d.stop() == 0, d.log()
            for role in ("gwa", "gwb"):
                assert "vpnd0" not in gw_links(topo, role)


def test_access_group_filters_cleartext_both_ways(pair):
    topo, a, b = pair
    topo.wait_ping("hosta", HOST_B, timeout=15)
    res = topo.tcp_transfer("hosta", "hostb", HOST_B, mbytes=0.2, timeout=60)
    assert res["up_ok"] and res["down_ok"]
    spi = a.child()["spi_out"]
    with topo.capture("gwb", "wan", "acl.pcap", "ip proto 50") as cap:
        # 5304: gwa's implicit deny, never encrypted; 5303: encrypted, dropped by gwb's `in`
        assert not udp_arrives(topo, 5304)
        assert not udp_arrives(topo, 5303)
    esp_lines = subprocess.run(["tcpdump", "-nr", str(cap.path)], capture_output=True,
                               text=True).stdout.splitlines()
    assert len([ln for ln in esp_lines if "ESP" in ln]) == 3, esp_lines   # the 5303 ones only
    ca, cb = conns(a)["tunnel"]["access_group"], conns(b)["tunnel"]["access_group"]
    out = {e["entry"]: e["matches"] for e in ca["out"]["entries"]}
    assert out["permit udp any any eq 5303"] == 3 and out["permit icmp any any echo"] >= 1
    assert out["permit tcp 10.1.0.0 0.0.0.255 any"] > 10
    assert ca["out"]["implicit_deny"] == 3 and "in" not in ca
    assert cb["in"]["entries"][0] == {"entry": "deny udp any any eq 5303", "matches": 3}
    st = {c["name"]: c for c in b.status()["connections"]}["tunnel"]
    assert st["access_group"]["in"]["denied"] == 3
    assert b.status()["daemon"]["dp_filtered"] == 3

    # reload: gwb lets 5303 in now; the SA stays (same SPI), the new list's counters start at 0
    b.write_config(b.config.read_text().replace("deny udp any any eq 5303",
                                                "permit udp any any eq 5303"))
    assert b.ctl("reload")["ok"]
    assert udp_arrives(topo, 5303)
    assert a.child()["spi_out"] == spi
    cb = conns(b)["tunnel"]["access_group"]
    assert cb["in"]["entries"][0] == {"entry": "permit udp any any eq 5303", "matches": 3}
    # the list removed on reload: everything passes
    a.write_config(a.config.read_text().split("    access_group:")[0] + "    manual:" +
                   a.config.read_text().split("    manual:")[1])
    assert a.ctl("reload")["ok"]
    assert udp_arrives(topo, 5303) and "access_group" not in conns(a)["tunnel"]


def test_vpnctl_conns_prints_the_entries(pair):
    topo, a, _ = pair
    topo.wait_ping("hosta", HOST_B, timeout=15)
    r = vpnctl(a, "conns")
    assert r.returncode == 0, r.stderr
    assert "access-group out (before encryption): permitted" in r.stdout
    assert "permit icmp any any echo (" in r.stdout and "(implicit deny: 0 matches)" in r.stdout
    j = json.loads(vpnctl(a, "conns", "--json").stdout)
    assert j["connections"][0]["access_group"]["out"]["entries"][0]["entry"] == \
        "permit icmp any any echo"
