"""Issue 11: `vpnctl conns` lists the running configuration (no secrets) and `vpnctl down
--peer ADDR` / `--all` take down every connection with an SA to that peer / any SA (IOS
`clear crypto sa peer X` / `clear crypto sa`), IKEv2 vpnd <-> vpnd."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .test_ikev2_strongswan import PAIRS, ik2_topo, vpnds, wait_child  # noqa: F401
from .test_ikev2_vpnd import pair_confs
from .topology import LAN_A, LAN_B, WAN_B

pytestmark = [pytest.mark.netns]


def vpnctl(sock, *args):
    return subprocess.run([sys.executable, "-c", "import sys; from vpnd.cli import vpnctl_main; "
                           "sys.exit(vpnctl_main())", "--socket", sock, *args],
                          capture_output=True, text=True, timeout=60)


def _no_sa(v):
    st = v.status()
    return all(c["child_sas"] == 0 for c in st["connections"])


def test_conns_and_down_by_peer_and_all(ik2_topo, vpnds):
    topo = ik2_topo
    ike, esp = PAIRS[0]
    ca, cb = pair_confs(topo, ike=ike, esp=esp)
    b = vpnds(topo, "gwb", cb)
    a = vpnds(topo, "gwa", ca)
    psk = a.config.read_text().split('psk: "')[1].split('"')[0]
    r = vpnctl(a.sock, "conns")
    assert r.returncode == 0, r.stderr
    assert f"{LAN_A} === {LAN_B}" in r.stdout and "psk authentication" in r.stdout
    assert "site: ikev2, tunnel" in r.stdout and "dpd:" in r.stdout and psk not in r.stdout
    j = json.loads(vpnctl(a.sock, "conns", "--json").stdout)
    assert j["connections"][0]["peer"] == WAN_B and psk not in json.dumps(j)

    assert a.ctl("up", name="site")["ok"]
    wait_child(a)
    r = vpnctl(a.sock, "down", "--peer", "10.99.99.99")
    assert r.returncode == 1 and "no SA to 10.99.99.99" in r.stderr
    r = vpnctl(a.sock, "down", "--peer", WAN_B)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "site: down"
    assert _no_sa(a)

    assert a.ctl("up", name="site")["ok"]
    wait_child(a)
    r = vpnctl(a.sock, "down", "--all")
    assert r.returncode == 0 and r.stdout.strip() == "site: down", r.stderr
    assert _no_sa(a)
    r = vpnctl(a.sock, "down", "--all")
    assert r.returncode == 1 and "no SA is up" in r.stderr
