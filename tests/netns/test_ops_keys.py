"""issue 11: `vpnctl keys --wireshark` writes the live SAs' keys in Wireshark's tables, and
tshark decrypts a capture of a vpnd<->vpnd IKEv2 tunnel with them: the ESP packets show the
pings inside, the IKE_AUTH messages their identities. Refused without
daemon.allow_key_export."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .topology import LAN_A, LAN_B, WAN_A, WAN_B, Topology
from .vpnd_proc import ike_config, vpnd_starter

pytestmark = [pytest.mark.netns]

BIN = Path(sys.executable).parent
PSK = "keys export test 0123456789"


@pytest.fixture
def keys_topo():
    with Topology(prefix="opw") as t:
        yield t


@pytest.fixture
def vpnds(request):
    with vpnd_starter(request) as make:
        yield make


def vpnctl(sock, *args):
    return subprocess.run([str(BIN / "vpnctl"), "--socket", str(sock), *args],
                          capture_output=True, text=True, timeout=30)


def tshark(pcap, confdir, *fields):
    env = dict(os.environ, WIRESHARK_CONFIG_DIR=str(confdir))
    r = subprocess.run(["tshark", "-r", str(pcap), "-o", "esp.enable_encryption_decode:TRUE",
                        "-T", "fields", "-E", "separator=|", *sum((["-e", f] for f in fields), [])],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    return [l.split("|") for l in r.stdout.splitlines()]


@pytest.mark.parametrize("version,esp", [(2, "aes128-sha256"), (2, "aes256gcm16"),
                                         (1, "aes256-sha1")])
def test_wireshark_decrypts_a_live_capture(keys_topo, vpnds, version, esp):
    topo = keys_topo
    work = Path(topo.workdir)
    cap = topo.capture("gwb", "wan", "wan.pcap", "udp or esp")
    conf = dict(version=version, psk=PSK, ike="aes128-sha256-modp2048", esp=esp)
    a = vpnds(topo, "gwa", ike_config(topo, "gwa", local=WAN_A, peer=WAN_B, lts=LAN_A, rts=LAN_B,
                                      start="none", daemon_extra="allow_key_export: true", **conf))
    b = vpnds(topo, "gwb", ike_config(topo, "gwb", local=WAN_B, peer=WAN_A, lts=LAN_B, rts=LAN_A,
                                      start="none", **conf))
    assert a.ctl("up", name="site")["ok"]
    topo.wait_ping("hosta", topo.hostb_ip, timeout=10)
    assert topo.ping("hosta", topo.hostb_ip, count=5, interval=0.1).returncode == 0
    pcap = cap.stop()

    # gwb does not allow it: refused, exit 1, no key printed
    r = vpnctl(b.sock, "keys", "--wireshark")
    assert r.returncode == 1 and "allow_key_export" in r.stderr and r.stdout == ""

    d = work / "wireshark"
    r = vpnctl(a.sock, "keys", "--wireshark", "--dir", d)
    assert r.returncode == 0, r.stderr
    assert ("2 ESP SA(s), 1 IKEv2 SA(s), 0 IKEv1" if version == 2 else
            "2 ESP SA(s), 0 IKEv2 SA(s), 1 IKEv1") in r.stdout
    for name in ("esp_sa", "ikev2_decryption_table", "ikev1_decryption_table"):
        assert (d / name).stat().st_mode & 0o777 == 0o600
    # printed form: the same lines
    printed = vpnctl(a.sock, "keys", "--wireshark").stdout
    assert (d / "esp_sa").read_text().splitlines()[1] in printed

    # ESP: the pings inside, both directions
    rows = tshark(pcap, d, "esp.spi", "icmp.type", "ip.src")
    esp_rows = [r for r in rows if r[0]]
    assert esp_rows
    types = {r[1] for r in esp_rows}
    assert {"8", "0"} <= types, esp_rows[:10]
    assert any(topo.hostb_ip in r[2] for r in esp_rows if r[1] == "0")
    # IKE: IKEv2 IKE_AUTH (exchange 35) / IKEv1 Main Mode messages 5 and 6 (exchange 2,
    # encrypted) decrypted: their ID payloads are dissected
    rows = tshark(pcap, d, "isakmp.exchangetype", "isakmp.id.type", "isakmp.flags")
    if version == 2:
        auth = [r for r in rows if r[0] == "35"]
        assert auth and all(r[1] for r in auth), rows
    else:
        mm = [r for r in rows if r[0] == "2"]
        assert sum(1 for r in mm if r[1]) >= 2, rows
