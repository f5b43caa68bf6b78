"""MOBIKE (RFC 4555) against strongSwan in namespaces: gwa's WAN address goes away and
gwa reaches gwb over a second uplink with another address (wan2, 10.201.0.1/24, as a
failover uplink or a new DHCP lease would). The IKE SA and its CHILD_SA move to the new
address and traffic continues:
- vpnd on gwa is the initiator and moves; charon on gwb answers the address update;
- charon on gwa is the initiator and moves; vpnd on gwb (responder) follows it.

charon 5.9.8 with its userspace ESP (kernel-libipsec) does not move its CHILD_SAs in place:
after an address update it updates its policies and then rekeys the CHILD_SA (seen in its
debug log: no SAD update, "queueing CHILD_REKEY task"), so against it the IKE SA stays and
the CHILD_SA gets new SPIs from charon's rekey; vpnd's own SAs moved in place before that
(its log says so). Between two vpnds the CHILD_SA keeps its SPIs (last test)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from .charon import psk_connection, psk_secret, swanctl_conf
from .topology import LAN_A, LAN_B, Topology, WAN_A, WAN_B
from .vpnd_proc import vpnd_starter

pytestmark = [pytest.mark.netns, pytest.mark.strongswan]

PSK = "mobike interop key 0123456789"
PREFIX = os.environ.get("MOB_PREFIX", "mob")
WAN2_A, WAN2_B = "10.201.0.1", "10.201.0.2"


@pytest.fixture
def topo2():
    """The usual topology plus a second uplink gwa:wan2 -- gwb:wan2 (10.201.0.0/24)."""
    with Topology(prefix=PREFIX) as t:
        t._veth("gwa", "wan2", "gwb", "wan2")
        t.ip("gwa", f"addr add {WAN2_A}/24 dev wan2")
        t.ip("gwb", f"addr add {WAN2_B}/24 dev wan2")
        t.wait_ping("gwa", WAN2_B)
        yield t


@pytest.fixture
def vpnds(request):
    with vpnd_starter(request) as make:
        yield make


def uplink_fails_over(topo) -> None:
    """gwa loses 10.200.0.1 (its first uplink); gwb's WAN is now reached over wan2."""
    topo.ip("gwa", f"addr del {WAN_A}/24 dev wan")
    topo.ip("gwa", f"route add 10.200.0.0/24 via {WAN2_B} dev wan2")
    topo.wait_ping("gwa", WAN_B)


def vpnd_text(topo, role: str, *, peer: str, local_id: str, remote_id: str, lts: str, rts: str,
              start: str = "none", encap: bool = False) -> str:
    sock = Path(topo.workdir) / f"{role}.sock"
    return "\n".join([
        "daemon:", "  tun: vpnd0", f"  control_socket: {sock}", "  log_level: debug",
        "connections:", "  site:", "    version: 2", f"    peer: \"{peer}\"", f"    psk: \"{PSK}\"",
        f"    local_id: \"{local_id}\"", f"    remote_id: \"{remote_id}\"",
        "    ike: aes128-sha256-modp2048", "    esp: aes128gcm16",
        f"    local_ts: [{lts}]", f"    remote_ts: [{rts}]", f"    start: {start}",
        "    dpd: {interval: 0}", "    mobike: yes", f"    encap: {'true' if encap else 'false'}", ""])


def ike_sa(v, timeout: float = 20, where=None) -> dict:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = v.status()
        except Exception:
            last = None
        for sa in (last or {}).get("ike_sas", []):
            if sa["state"] == "ESTABLISHED" and any(c["state"] == "INSTALLED" for c in sa["child_sas"]) \
                    and (where is None or where(sa)):
                return sa
        time.sleep(0.1)
    raise AssertionError(f"no matching IKE SA in {v.role}: {json.dumps(last)}\n{v.log()[-8000:]}")


def spis(sa: dict) -> tuple:
    ch = [c for c in sa["child_sas"] if c["state"] == "INSTALLED"][0]
    return ch["spi_in"], ch["spi_out"]


def test_vpnd_initiator_moves_to_its_new_address(topo2, make_charon, vpnds):
    topo = topo2
    ch = make_charon(topo, "gwb", debug=int(os.environ.get("MOB_CHARON_DEBUG", "1")))
    conn = psk_connection(local=WAN_B, remote="%any", local_ts=LAN_B, remote_ts=LAN_A,
                          ike="aes128-sha256-modp2048", esp="aes128gcm16", child="site",
                          remote_id="@gwa", mobike="yes")
    ch.load(swanctl_conf({"site": conn}, {"ike-site": psk_secret(PSK)}))
    v = vpnds(topo, "gwa", vpnd_text(topo, "gwa", peer=WAN_B, local_id="@gwa", remote_id=WAN_B,
                                     lts=LAN_A, rts=LAN_B))
    r = v.ctl("up", name="site")
    assert r["ok"], (r, v.log()[-4000:])
    before = ike_sa(v)
    assert before["mobike"] is True and before["local"] == f"{WAN_A}:4500"   # RFC 4555 3.3
    topo.check_traffic(mbytes=1)
    uplink_fails_over(topo)
    after = ike_sa(v, where=lambda sa: sa["local"] == f"{WAN2_A}:4500")
    assert after["spi_i"] == before["spi_i"]            # the same IKE SA
    assert WAN2_A in ch.list_sas()
    topo.check_traffic(mbytes=1)
    log = v.log()
    assert "moved to 10.201.0.1" in log
    assert f"SPIs in {spis(before)[0]} now {WAN2_A}:4500 -> {WAN_B}:4500" in log   # in place
    c = [x for x in ike_sa(v)["child_sas"] if x["state"] == "INSTALLED"][0]
    assert c["packets_in"] > 0 and c["packets_out"] > 0


def test_strongswan_initiator_moves_vpnd_responder_follows(topo2, make_charon, vpnds):
    topo = topo2
    v = vpnds(topo, "gwb", vpnd_text(topo, "gwb", peer="%any", local_id=WAN_B, remote_id="@gwa",
                                     lts=LAN_B, rts=LAN_A))
    ch = make_charon(topo, "gwa", debug=int(os.environ.get("MOB_CHARON_DEBUG", "1")))
    conn = psk_connection(local="%any", remote=WAN_B, local_ts=LAN_A, remote_ts=LAN_B,
                          ike="aes128-sha256-modp2048", esp="aes128gcm16", child="site",
                          local_id="@gwa", remote_id=WAN_B, mobike="yes")
    ch.load(swanctl_conf({"site": conn}, {"ike-site": psk_secret(PSK)}))
    ch.initiate("site")
    before = ike_sa(v)
    assert before["mobike"] is True and before["remote"] == f"{WAN_A}:4500"
    topo.check_traffic(mbytes=1)
    uplink_fails_over(topo)
    after = ike_sa(v, timeout=40, where=lambda sa: sa["remote"].startswith(WAN2_A + ":"))
    assert after["spi_r"] == before["spi_r"]            # the same IKE SA
    topo.check_traffic(mbytes=1)
    log = v.log()
    assert "peer moved to 10.201.0.1" in log
    assert f"SPIs in {spis(before)[0]} now {WAN_B}:4500 -> {WAN2_A}:4500" in log   # in place


def test_vpnd_pair_moves_keeping_spis(topo2, vpnds):
    """vpnd <-> vpnd: the initiator's address changes; both ends keep the IKE SA and the
    CHILD_SA with its SPIs, ESP stays raw (no NAT), traffic continues."""
    topo = topo2
    b = vpnds(topo, "gwb", vpnd_text(topo, "gwb", peer="%any", local_id=WAN_B, remote_id="@gwa",
                                     lts=LAN_B, rts=LAN_A))
    a = vpnds(topo, "gwa", vpnd_text(topo, "gwa", peer=WAN_B, local_id="@gwa", remote_id=WAN_B,
                                     lts=LAN_A, rts=LAN_B))
    assert a.ctl("up", name="site")["ok"]
    a0, b0 = ike_sa(a), ike_sa(b)
    assert a0["mobike"] and b0["mobike"] and not a0["nat_detected"]
    topo.check_traffic(mbytes=1)
    uplink_fails_over(topo)
    a1 = ike_sa(a, where=lambda sa: sa["local"] == f"{WAN2_A}:4500")
    b1 = ike_sa(b, where=lambda sa: sa["remote"] == f"{WAN2_A}:4500")
    assert (a1["spi_i"], b1["spi_i"]) == (a0["spi_i"], b0["spi_i"])
    assert spis(a1) == spis(a0) and spis(b1) == spis(b0)
    cap = topo.capture("gwb", "wan2", "esp.pcap", "esp")
    topo.check_traffic(mbytes=1)
    path = cap.stop()
    out = topo.run("gwb", ["tcpdump", "-n", "-r", str(path)], check=False).stdout.decode()
    assert f"{WAN2_A} > {WAN_B}: ESP(spi=0x{spis(a0)[1]}" in out
