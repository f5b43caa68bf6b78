"""IPv6 outer addresses (issue 12): IKEv2 and IKEv1 between gateways that talk over an
IPv6 WAN (fd00:200::1 gwa, fd00:200::2 gwb), against strongSwan (kernel-libipsec: ESP in
UDP over IPv6, RFC 3948) and between two vpnds (raw ESP and AH over IPv6, ESP in UDP).
Inner traffic IPv4 (10.1/16 <-> 10.2/16) and, in one test, IPv6 (fd00:1::/64 <-> fd00:2::/64)."""
from __future__ import annotations

import json
import os
import time

import pytest

from .charon import psk_connection, psk_secret, swanctl_conf
from .topology import LAN_A, LAN_B, Topology, WAN6_A, WAN6_B
from .vpnd_proc import ike_config, vpnd_starter

pytestmark = [pytest.mark.netns]

PSK = "ipv6 wan interop key 0123456789"
PREFIX = os.environ.get("V6W_PREFIX", "v6w")
LAN6_A, LAN6_B = "fd00:1::/64", "fd00:2::/64"
HOST6_A, HOST6_B = "fd00:1::10", "fd00:2::10"


@pytest.fixture
def topo6():
    with Topology(prefix=PREFIX, wan6=True) as t:
        yield t


@pytest.fixture
def vpnds(request):
    with vpnd_starter(request) as make:
        yield make


def lan6(topo) -> None:
    """IPv6 on both LANs: hosts fd00:1::10 / fd00:2::10 behind gwa / gwb."""
    for host, gw, gw_ip, host_ip, net in (("hosta", "gwa", "fd00:1::1", HOST6_A, LAN6_A),
                                          ("hostb", "gwb", "fd00:2::1", HOST6_B, LAN6_B)):
        topo.enable_ipv6(host)
        topo.enable_ipv6(gw)
        topo.ip(gw, f"addr add {gw_ip}/64 dev lan nodad")
        topo.ip(host, f"addr add {host_ip}/64 dev eth0 nodad")
        topo.ip(host, f"-6 route add default via {gw_ip}")
    topo.wait_ping("hosta", "fd00:1::1")
    topo.wait_ping("hostb", "fd00:2::1")


def wait_child(v, version: int, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = v.status()
        except Exception:
            last = None
        for sa in (last or {}).get("ike_sas", []):
            if sa.get("version") != version:
                continue
            for ch in sa["child_sas"]:
                if ch["state"] == "INSTALLED":
                    return {"ike": sa, "child": ch}
        time.sleep(0.1)
    raise AssertionError(f"no INSTALLED child in {v.role}: {json.dumps(last)}\n{v.log()[-6000:]}")


def charon_conf(ch, *, version: int, ike: str, esp: str, local_ts, remote_ts) -> None:
    conn = psk_connection(local=WAN6_B, remote=WAN6_A, local_ts=local_ts, remote_ts=remote_ts,
                          ike=ike, esp=esp, version=version, child="site")
    conn["remote"]["id"] = "%any"
    ch.load(swanctl_conf({"site": conn}, {"ike-site": psk_secret(PSK)}))


def vpnd_conf(topo, role, *, version, local, peer, lts, rts, ike, esp, start="none", extra="",
              daemon_extra=""):
    return ike_config(topo, role, version=version, psk=PSK, local=local, peer=peer, lts=lts,
                      rts=rts, ike=ike, esp=esp, start=start, extra=extra, daemon_extra=daemon_extra)


def ping6_both_ways(topo) -> None:
    topo.wait_ping("hosta", HOST6_B, timeout=10)
    assert topo.ping("hostb", HOST6_A, count=3, interval=0.2).returncode == 0


def test_ikev2_strongswan_ipv6_wan_both_inner_families(topo6, make_charon, vpnds):
    """vpnd initiates IKEv2 to charon at fd00:200::2; one CHILD_SA carries IPv4 and IPv6."""
    topo = topo6
    lan6(topo)
    ch = make_charon(topo, "gwb")
    ike, esp = "aes128-sha256-modp2048", "aes128gcm16"
    charon_conf(ch, version=2, ike=ike, esp=esp, local_ts=f"{LAN_B},{LAN6_B}",
                remote_ts=f"{LAN_A},{LAN6_A}")
    v = vpnds(topo, "gwa", vpnd_conf(topo, "gwa", version=2, local=WAN6_A, peer=WAN6_B,
                                     lts=f"{LAN_A}, {LAN6_A}", rts=f"{LAN_B}, {LAN6_B}",
                                     ike=ike, esp=esp))
    r = v.ctl("up", name="site")
    assert r["ok"], (r, v.log()[-4000:])
    got = wait_child(v, 2)
    assert got["ike"]["local"].startswith(f"[{WAN6_A}]") and got["ike"]["remote"].startswith(f"[{WAN6_B}]")
    sas = ch.wait_child("site")
    assert got["child"]["spi_out"] in sas and got["child"]["spi_in"] in sas
    topo.check_traffic()
    ping6_both_ways(topo)
    c = v.child("site")
    assert c["packets_in"] > 0 and c["packets_out"] > 0


@pytest.mark.parametrize("who", ["vpnd", "strongswan"])
def test_ikev1_strongswan_ipv6_wan(topo6, make_charon, vpnds, who):
    """IKEv1 Main Mode + Quick Mode over IPv6, either end initiating."""
    topo = topo6
    ch = make_charon(topo, "gwb")
    ike, esp = "aes128-sha256-ecp256", "aes128gcm16"
    charon_conf(ch, version=1, ike=ike, esp=esp, local_ts=LAN_B, remote_ts=LAN_A)
    v = vpnds(topo, "gwa", vpnd_conf(topo, "gwa", version=1, local=WAN6_A, peer=WAN6_B,
                                     lts=LAN_A, rts=LAN_B, ike=ike, esp=esp))
    if who == "vpnd":
        r = v.ctl("up", name="site")
        assert r["ok"], (r, v.log()[-4000:])
    else:
        ch.initiate("site")
    got = wait_child(v, 1)
    assert got["ike"]["initiator"] is (who == "vpnd")
    assert WAN6_B in got["ike"]["remote"]
    sas = ch.wait_child("site")
    assert "IKEv1" in sas and got["child"]["spi_out"] in sas
    topo.check_traffic()


def _captured(topo, cap, bpf: str) -> int:
    path = cap.stop()
    out = topo.run("gwa", ["tcpdump", "-n", "-r", str(path), bpf], check=False).stdout.decode()
    return len([x for x in out.splitlines() if x.strip()])


@pytest.mark.parametrize("kind", ["esp", "esp-udp", "esp+ah"])
def test_vpnd_pair_ipv6_wan(topo6, vpnds, kind):
    """Two vpnds over the IPv6 WAN: raw ESP (IKEv2), ESP in UDP (IKEv2, encap: true) and an
    ESP+AH bundle (IKEv1): traffic passes and the wire carries what the SA says."""
    topo = topo6
    version = 1 if kind == "esp+ah" else 2
    ike = "aes128-sha256-modp2048"
    esp = "esp-aes 128 esp-sha256-hmac ah-sha256-hmac" if kind == "esp+ah" else "aes128gcm16"
    extra = "encap: true" if kind == "esp-udp" else ""
    b = vpnds(topo, "gwb", vpnd_conf(topo, "gwb", version=version, local=WAN6_B, peer=WAN6_A,
                                     lts=LAN_B, rts=LAN_A, ike=ike, esp=esp, extra=extra))
    a = vpnds(topo, "gwa", vpnd_conf(topo, "gwa", version=version, local=WAN6_A, peer=WAN6_B,
                                     lts=LAN_A, rts=LAN_B, ike=ike, esp=esp, extra=extra))
    r = a.ctl("up", name="site")
    assert r["ok"], (r, a.log()[-4000:])
    wait_child(b, version)
    bpf = {"esp": "ip6 and ip6[6] == 50", "esp-udp": "ip6 and udp port 4500 and greater 200",
           "esp+ah": "ip6 and ip6[6] == 51"}[kind]
    cap = topo.capture("gwa", "wan", f"{kind}.pcap", "ip6")
    topo.check_traffic(mbytes=1)
    assert _captured(topo, cap, bpf) > 10
    assert a.child("site")["udp_encap"] is (kind == "esp-udp")

