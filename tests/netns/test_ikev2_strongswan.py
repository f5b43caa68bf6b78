"""IKEv2: vpnd against strongSwan's charon (kernel-libipsec) in network namespaces.

vpnd runs in gwa, charon in gwb; hosta (10.1.0.10) and hostb (10.2.0.10) talk through the
tunnel. Each test checks what both sides say (vpnctl status, swanctl --list-sas) and then
traffic: ping and a checksummed TCP transfer in both directions.
"""
from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .charon import psk_connection, psk_secret, swanctl_conf
from .topology import LAN_A, LAN_B, Topology, WAN_B
from .vpnd_proc import Vpnd

pytestmark = [pytest.mark.netns, pytest.mark.strongswan]

PSK = "ikev2 interop key 0123456789"
PREFIX = "ik2"

PAIRS = [
    ("aes128-sha256-modp2048", "aes128-sha256"),
    ("aes256gcm16-prfsha384-ecp384", "aes256gcm16-ecp384"),
    ("chacha20poly1305-prfsha256-x25519", "chacha20poly1305"),
]


@pytest.fixture
def ik2_topo():
    with Topology(prefix=PREFIX) as t:
        yield t


@pytest.fixture
def ik2_topo_nat():
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
              start: str = "start", extra: str = "", auth: str | None = None, name: str = "site") -> str:
    sock = Path(topo.workdir) / f"{role}.sock"
    lines = [
        "daemon:",
        "  tun: vpnd0",
        f"  control_socket: {sock}",
        "  log_level: debug",
        "connections:",
        f"  {name}:",
        "    version: 2",
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


def wait_child(v: Vpnd, name: str = "site", timeout: float = 20, *, not_spi: str | None = None) -> dict:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            st = v.status()
        except Exception:
            st = None
        last = st
        for sa in (st or {}).get("ike_sas", []):
            for ch in sa["child_sas"]:
                if ch["name"] == name and ch["state"] == "INSTALLED" and ch["spi_in"] != not_spi:
                    return {"ike": sa, "child": ch}
        time.sleep(0.1)
    raise AssertionError(f"no INSTALLED child {name} in {v.role} within {timeout}s: {json.dumps(last)}\n{v.log()[-6000:]}")


def check_traffic(topo, mbytes: float = 2) -> None:
    topo.wait_ping("hosta", topo.hostb_ip, timeout=10)
    assert topo.ping("hostb", topo.hosta_ip, count=3, interval=0.2).returncode == 0
    topo.tcp_transfer("hosta", "hostb", topo.hostb_ip, mbytes=mbytes)
    topo.tcp_transfer("hostb", "hosta", topo.hosta_ip, mbytes=mbytes, port=5202)


def charon_psk(ch, *, ike: str, esp: str, gwa: str, start_action: str = "none", extra=None, child_extra=None):
    conn = psk_connection(local=WAN_B, remote=gwa, local_ts=LAN_B, remote_ts=LAN_A, ike=ike, esp=esp,
                          child="site", start_action=start_action, esp_extra=child_extra or {},
                          **(extra or {}))
    conn["remote"]["id"] = "%any"
    ch.load(swanctl_conf({"site": conn}, {"ike-site": psk_secret(PSK)}))


@pytest.mark.parametrize("ike,esp", PAIRS, ids=[p[0] for p in PAIRS])
def test_psk_vpnd_initiator(ik2_topo, make_charon, vpnds, ike, esp):
    topo = ik2_topo
    ch = make_charon(topo, "gwb")
    charon_psk(ch, ike=ike, esp=esp, gwa=topo.gwa_public)
    t0 = time.monotonic()
    v = vpnds(topo, "gwa", vpnd_conf(topo, "gwa", local=topo.gwa_wan, peer=WAN_B, lts=LAN_A, rts=LAN_B,
                                     ike=ike, esp=esp))
    got = wait_child(v)
    print(f"vpnd->strongSwan tunnel up after {time.monotonic() - t0:.2f}s (incl. daemon start)")
    sas = ch.wait_child("site")
    assert got["child"]["spi_out"] in sas and got["child"]["spi_in"] in sas
    assert got["ike"]["proposal"]
    check_traffic(topo)


@pytest.mark.parametrize("ike,esp", PAIRS, ids=[p[0] for p in PAIRS])
def test_psk_vpnd_responder(ik2_topo, make_charon, vpnds, ike, esp):
    topo = ik2_topo
    v = vpnds(topo, "gwa", vpnd_conf(topo, "gwa", local=topo.gwa_wan, peer=WAN_B, lts=LAN_A, rts=LAN_B,
                                     ike=ike, esp=esp, start="none"))
    ch = make_charon(topo, "gwb")
    charon_psk(ch, ike=ike, esp=esp, gwa=topo.gwa_public)
    t0 = time.monotonic()
    ch.initiate("site")
    print(f"strongSwan->vpnd tunnel up after {time.monotonic() - t0:.2f}s")
    got = wait_child(v)
    assert got["ike"]["initiator"] is False
    check_traffic(topo)
