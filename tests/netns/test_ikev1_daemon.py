"""IKEv1: the vpnd daemon (`version: 1`) against strongSwan's charon (swanctl version = 1,
kernel-libipsec) and against another vpnd, in network namespaces, with traffic.

vpnd runs in gwa, charon (or a second vpnd) in gwb; hosta and hostb talk through the
tunnel: ping and a checksummed TCP transfer in both directions.
"""
from __future__ import annotations

import datetime
import json
import re
import shutil
import time
from pathlib import Path

import pytest

from .charon import psk_connection, psk_secret, swanctl_conf
from .topology import LAN_A, LAN_B, WAN_B, Topology
from .vpnd_proc import Vpnd

pytestmark = [pytest.mark.netns, pytest.mark.strongswan]

PSK = "ikev1 daemon interop key 0123456789"
PREFIX = "ik1"
AGGR_PSK_OK = "    i_dont_care_about_security_and_use_aggressive_mode_psk = yes\n"

PAIRS = [
    ("aes128-sha1-modp2048", "aes128-sha1-modp2048"),  # PFS modp2048
    ("aes256-sha256-modp2048", "aes256-sha256"),
    ("3des-sha1-modp1536", "3des-sha1"),
]


@pytest.fixture
def topo():
    with Topology(prefix=PREFIX) as t:
        yield t


@pytest.fixture
def topo_nat():
    with Topology(prefix=PREFIX, nat=True) as t:
        yield t


@pytest.fixture
def vpnds(request):
    started: list[Vpnd] = []

    def make(topo, role, text):
        v = Vpnd(topo, role, text)
        started.append(v)
        return v.start()

    yield make
    rep = getattr(request.node, "rep_call", None)
    for v in started:
        if rep is not None and rep.failed:
            rep.sections.append((f"vpnd log ({v.role})", v.log()))
        if v.alive():
            v.stop()


def vpnd_conf(topo, role: str, *, local: str, peer: str, lts: str, rts: str, ike: str, esp: str,
              start: str = "none", extra: str = "", auth: str | None = None, aggressive: bool = False,
              daemon_extra: str = "") -> str:
    sock = Path(topo.workdir) / f"{role}.sock"
    lines = ["daemon:", "  tun: vpnd0", f"  control_socket: {sock}", "  log_level: debug"]
    lines += [f"  {x}" for x in daemon_extra.splitlines() if x.strip()]
    lines += [
        "connections:",
        "  site:",
        "    version: 1",
        f"    aggressive: {'true' if aggressive else 'false'}",
        f"    local: {local}",
        f"    peer: {peer}",
        auth or f"    psk: \"{PSK}\"",
        f"    ike: {ike}",
        f"    esp: {esp}",
        f"    local_ts: [{lts}]",
        f"    remote_ts: [{rts}]",
        f"    start: {start}",
    ]
    lines += [f"    {x}" for x in extra.splitlines() if x.strip()]
    return "\n".join(lines) + "\n"


def wait_child(v: Vpnd, timeout: float = 25, *, not_spi: str | None = None, not_ike: str | None = None) -> dict:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            st = v.status()
        except Exception:
            st = None
        last = st
        for sa in (st or {}).get("ike_sas", []):
            if sa.get("version") != 1 or (not_ike and sa["spi_i"] == not_ike):
                continue
            for ch in sa["child_sas"]:
                if ch["state"] == "INSTALLED" and ch["spi_in"] != not_spi:
                    return {"ike": sa, "child": ch}
        time.sleep(0.1)
    raise AssertionError(f"no INSTALLED IKEv1 child in {v.role} within {timeout}s: {json.dumps(last)}\n"
                         f"{v.log()[-6000:]}")


def check_traffic(topo, mbytes: float = 2) -> None:
    topo.wait_ping("hosta", topo.hostb_ip, timeout=10)
    assert topo.ping("hostb", topo.hosta_ip, count=3, interval=0.2).returncode == 0
    topo.tcp_transfer("hosta", "hostb", topo.hostb_ip, mbytes=mbytes)
    topo.tcp_transfer("hostb", "hosta", topo.hosta_ip, mbytes=mbytes, port=5202)


def charon_psk(ch, topo, *, ike, esp, aggressive=False, extra=None, child_extra=None, gwa=None):
    conn = psk_connection(local=WAN_B, remote=gwa or topo.gwa_public, local_ts=LAN_B, remote_ts=LAN_A,
                          ike=ike, esp=esp, version=1, child="site", aggressive=aggressive,
                          esp_extra=child_extra or {}, **(extra or {}))
    conn["remote"]["id"] = "%any"
    ch.load(swanctl_conf({"site": conn}, {"ike-site": psk_secret(PSK)}))


def _charon(make_charon, topo, role="gwb"):
    return make_charon(topo, role, extra_conf=AGGR_PSK_OK)


@pytest.mark.parametrize("ike,esp", PAIRS, ids=[p[0] for p in PAIRS])
@pytest.mark.parametrize("aggressive", [False, True], ids=["main", "aggressive"])
def test_psk_vpnd_initiator(topo, make_charon, vpnds, ike, esp, aggressive):
    ch = _charon(make_charon, topo)
    charon_psk(ch, topo, ike=ike, esp=esp, aggressive=aggressive)
    v = vpnds(topo, "gwa", vpnd_conf(topo, "gwa", local=topo.gwa_wan, peer=WAN_B, lts=LAN_A, rts=LAN_B,
                                     ike=ike, esp=esp, aggressive=aggressive))
    t0 = time.monotonic()
    r = v.ctl("up", name="site")
    assert r["ok"], (r, v.log()[-4000:])
    print(f"vpnd->strongSwan IKEv1 {'AM' if aggressive else 'MM'} {ike}/{esp}: "
          f"{(time.monotonic() - t0) * 1000:.0f} ms to installed SA")
    got = wait_child(v)
    sas = ch.wait_child("site")
    assert "IKEv1" in sas and got["child"]["spi_out"] in sas and got["child"]["spi_in"] in sas
    assert got["ike"]["state"] == "ESTABLISHED" and got["ike"]["isakmp_state"] == "QM_IDLE"
    check_traffic(topo)


@pytest.mark.parametrize("ike,esp", PAIRS, ids=[p[0] for p in PAIRS])
@pytest.mark.parametrize("aggressive", [False, True], ids=["main", "aggressive"])
def test_psk_vpnd_responder(topo, make_charon, vpnds, ike, esp, aggressive):
    v = vpnds(topo, "gwa", vpnd_conf(topo, "gwa", local=topo.gwa_wan, peer=WAN_B, lts=LAN_A, rts=LAN_B,
                                     ike=ike, esp=esp))
    ch = _charon(make_charon, topo)
    charon_psk(ch, topo, ike=ike, esp=esp, aggressive=aggressive)
    ch.initiate("site")
    got = wait_child(v)
    assert got["ike"]["initiator"] is False
    assert got["ike"]["exchange"] == ("Aggressive" if aggressive else "Main")
    check_traffic(topo)
