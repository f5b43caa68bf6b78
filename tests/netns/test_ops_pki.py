"""issue 11: a tunnel with keys and certificates made by `vpnctl pki` comes up against
strongSwan (IKEv2, identities from the certificates' subjectAltNames: FQDN one way, IP the
other; and a DN)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .charon import swanctl_conf
from .test_ikev2_strongswan import PAIRS, vpnd_gwa, wait_child
from .topology import LAN_A, LAN_B, WAN_B, Topology
from .vpnd_proc import vpnd_starter

pytestmark = [pytest.mark.netns, pytest.mark.strongswan]

BIN = Path(sys.executable).parent


@pytest.fixture
def ops_topo():
    with Topology(prefix="opk") as t:
        yield t


@pytest.fixture
def vpnds(request):
    with vpnd_starter(request) as make:
        yield make


def vpnctl_pki(*args):
    subprocess.run([str(BIN / "vpnctl"), "pki", *map(str, args)], check=True, capture_output=True)


@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
def test_tunnel_with_pki_made_certificates(ops_topo, make_charon, vpnds, kind):
    topo = ops_topo
    t = Path(topo.workdir)
    vpnctl_pki("genkey", "--type", kind, "--out", t / "ca.key")
    vpnctl_pki("ca", "--key", t / "ca.key", "--dn", "C=CH, O=vpnd ops, CN=ops CA", "--out", t / "ca.pem")
    for gw, ident in (("gw-a", "@gw-a.example.com"), ("gw-b", WAN_B)):
        vpnctl_pki("genkey", "--type", kind, "--out", t / f"{gw}.key")
        vpnctl_pki("issue", "--ca", t / "ca.pem", "--ca-key", t / "ca.key", "--key", t / f"{gw}.key",
                   "--dn", f"C=CH, O=vpnd ops, CN={gw}", "--id", ident, "--out", t / f"{gw}.pem")
    ch = make_charon(topo, "gwb")
    shutil.copy(t / "ca.pem", ch.swanctl_dir / "x509ca" / "ca.pem")
    shutil.copy(t / "gw-b.pem", ch.swanctl_dir / "x509" / "gw-b.pem")
    shutil.copy(t / "gw-b.key", ch.swanctl_dir / "pkcs8" / "gw-b.key")
    ike, esp = PAIRS[0]
    conn = {"version": 2, "local_addrs": WAN_B, "remote_addrs": topo.gwa_public, "proposals": ike,
            "local": {"auth": "pubkey", "certs": "gw-b.pem", "id": WAN_B},
            "remote": {"auth": "pubkey", "id": "gw-a.example.com"},
            "children": {"site": {"local_ts": LAN_B, "remote_ts": LAN_A, "esp_proposals": esp,
                                  "start_action": "none"}}}
    ch.load(swanctl_conf({"site": conn}))
    auth = (f"    auth: {{cert: {t}/gw-a.pem, key: {t}/gw-a.key, ca: {t}/ca.pem}}\n"
            f"    local_id: \"@gw-a.example.com\"\n    remote_id: {WAN_B}")
    v = vpnd_gwa(topo, vpnds, ike=ike, esp=esp, auth=auth, start="start")
    got = wait_child(v)
    assert got["ike"]["remote_id"] == WAN_B
    sas = ch.wait_child("site")
    assert "gw-a.example.com" in sas
    topo.check_traffic(mbytes=1)
