"""The daemon with its IKEv2 core, vpnd <-> vpnd in namespaces: vpnctl up/down/rekey wait
for the SA and report failures; trap connections start on the first packet without
losing it; systemd's notification protocol (READY/RELOADING/STOPPING) arrives in order."""
from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from .topology import HOST_A, HOST_B, LAN_B, Topology
from .vpnd_proc import Vpnd, gw_links, gw_routes, manual_pair

pytestmark = pytest.mark.netns

PSK = "netns test key of the daemon"


def ike_config(topo, role: str, *, start: str, psk: str = PSK, extra: str = "") -> str:
    if role == "gwa":
        name, local, peer, lts, rts, lid, rid = ("site-b", topo.gwa_wan, topo.gwb_wan, "10.1.0.0/16",
                                                 "10.2.0.0/16", "@a.test", "@b.test")
    else:
        name, local, peer, lts, rts, lid, rid = ("site-a", topo.gwb_wan, topo.gwa_public, "10.2.0.0/16",
                                                 "10.1.0.0/16", "@b.test", "@a.test")
    text = f"""daemon:
  tun: vpnd0
  control_socket: {topo.workdir}/{role}.sock
  log_level: debug
connections:
  {name}:
    version: 2
    local: {local}
    peer: {peer}
    psk: "{psk}"
    local_id: "{lid}"
    remote_id: "{rid}"
    ike: aes128-sha256-x25519
    esp: aes128gcm16
    local_ts: [{lts}]
    remote_ts: [{rts}]
    start: {start}
    dpd: {{interval: 0}}
"""
    return text + "".join(f"    {line}\n" for line in extra.splitlines() if line.strip())


@pytest.fixture(scope="module")
def topo():
    pytest.importorskip("vpnd.ike.manager")
    with Topology(prefix="dmn") as t:
        yield t


@pytest.fixture
def pair(topo, request):
    made: list[Vpnd] = []

    def start(start_a="none", start_b="none", psk_b=PSK, extra_a=""):
        a = Vpnd(topo, "gwa", ike_config(topo, "gwa", start=start_a, extra=extra_a))
        b = Vpnd(topo, "gwb", ike_config(topo, "gwb", start=start_b, psk=psk_b))
        made.extend([b, a])
        b.start()
        a.start()
        return a, b

    yield start
    failed = getattr(request.node, "rep_call", None)
    for d in made:
        if d.alive():
            assert d.stop() == 0, d.log()
        if failed is not None and failed.failed:
            request.node.add_report_section("call", f"vpnd {d.role}", d.log())
    for role in ("gwa", "gwb"):
        assert "vpnd0" not in gw_links(topo, role)


def _child(d, name):
    for sa in d.status()["ike_sas"]:
        for ch in sa["child_sas"]:
            if ch["name"] == name:
                return sa, ch
    return None, None


def test_up_rekey_down(topo, pair):
    a, b = pair()
    assert topo.ping("hosta", HOST_B, timeout=0.5).returncode != 0  # start: none: no tunnel yet
    resp = a.ctl("up", name="site-b", timeout=20)
    assert resp == {"ok": True, "result": {"connection": "site-b", "state": "up"}}, a.log()
    # `up` returned: the CHILD_SA is installed, traffic flows at once
    assert topo.ping("hosta", HOST_B, count=3, interval=0.05).returncode == 0
    assert topo.ping("hostb", HOST_A, count=3, interval=0.05).returncode == 0
    sa, ch = _child(a, "site-b")
    assert sa["state"] == "ESTABLISHED" and sa["initiator"] is True and sa["nat_detected"] is False
    assert ch["state"] == "INSTALLED" and ch["packets_out"] >= 6 and ch["packets_in"] >= 6
    assert f"{LAN_B} dev vpnd0" in gw_routes(topo, "gwa")
    st = a.status()
    assert st["connections"][0]["state"] == "up"

    # CHILD_SA rekey: new SPIs, traffic continues
    resp = a.ctl("rekey", name="site-b", timeout=20)
    assert resp["ok"], resp
    deadline = time.monotonic() + 10
    while True:
        sa2, ch2 = _child(a, "site-b")
        if ch2 is not None and ch2["spi_in"] != ch["spi_in"] and len(sa2["child_sas"]) == 1:
            break
        assert time.monotonic() < deadline, a.status()
        time.sleep(0.1)
    assert topo.ping("hosta", HOST_B, count=3, interval=0.05).returncode == 0

    # IKE SA rekey: new IKE SPIs
    resp = a.ctl("rekey", name="site-b", ike=True, timeout=20)
    assert resp["ok"], resp
    deadline = time.monotonic() + 10
    while (_child(a, "site-b")[0] or {}).get("spi_i") == sa["spi_i"]:
        assert time.monotonic() < deadline, a.status()
        time.sleep(0.1)
    assert topo.ping("hosta", HOST_B, count=2, interval=0.05).returncode == 0

    # down: returns once the CHILD_SA is gone; the route into the TUN stays (fail closed,
    # issue 8.6: the traffic is dropped there, it never leaves in clear)
    resp = a.ctl("down", name="site-b", timeout=20)
    assert resp == {"ok": True, "result": {"connection": "site-b", "state": "down"}}, resp
    assert _child(a, "site-b") == (None, None)
    assert f"{LAN_B} dev vpnd0" in gw_routes(topo, "gwa")
    assert topo.ping("hosta", HOST_B, timeout=0.5).returncode != 0
    assert a.status()["connections"][0]["state"] != "up"


def test_up_fails_with_reason(topo, pair):
    a, b = pair(psk_b="a different key")
    resp = a.ctl("up", name="site-b", timeout=15)
    assert resp["ok"] is False
    assert "AUTHENTICATION_FAILED" in resp["error"], resp
    resp = a.ctl("up", name="nope")
    assert resp == {"ok": False, "error": "no connection named 'nope'"}
    resp = a.ctl("rekey", name="site-b")
    assert resp["ok"] is False
    assert a.alive() and b.alive()


def test_trap_first_packet_not_lost(topo, pair):
    a, b = pair(start_a="trap")
    # the trap route exists before any SA
    assert f"{LAN_B} dev vpnd0" in gw_routes(topo, "gwa")
    assert _child(a, "site-b") == (None, None)
    # one ping, one try: the packet that triggered the negotiation is delivered afterwards
    r = topo.ping("hosta", HOST_B, count=1, timeout=5)
    assert r.returncode == 0, (r.stdout, a.log())
    assert _child(a, "site-b")[1]["state"] == "INSTALLED"
    # from now on the CHILD_SA's policy carries the traffic, not the trap behind it
    acquires = a.status()["daemon"]["dp_acquires"]
    assert topo.ping("hosta", HOST_B, count=5, interval=0.05).returncode == 0
    assert a.status()["daemon"]["dp_acquires"] == acquires
    assert _child(a, "site-b")[1]["packets_out"] >= 6


def test_start_start_brings_tunnel_up(topo, pair):
    a, b = pair(start_a="start")
    topo.wait_ping("hosta", HOST_B, timeout=15)
    assert topo.tcp_transfer("hosta", "hostb", HOST_B, mbytes=2)["up_ok"]


# -- sd_notify --------------------------------------------------------------------------------

def _informational(msg: str) -> bool:
    """STATUS= (tunnels up/down) and WATCHDOG= come at any time: not part of the life cycle."""
    return all(l.startswith(("STATUS=", "WATCHDOG=")) for l in msg.split("\n") if l)


def _notifications(sock: socket.socket, until: str, timeout: float = 15) -> list[str]:
    """The life-cycle notifications (READY, RELOADING, STOPPING) up to one containing `until`."""
    got = []
    deadline = time.monotonic() + timeout
    while True:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            msg = sock.recv(4096).decode()
        except socket.timeout:
            raise AssertionError(f"no {until} among {got}")
        if not _informational(msg):
            got.append(msg)
        if until in msg:
            return got


def test_sd_notify_sequence(topo):
    """READY=1 once SAs and routes are up; RELOADING=1 then READY=1 on SIGHUP; STOPPING=1."""
    path = Path(topo.workdir) / "notify.sock"
    ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    ns.bind(str(path))
    ca, cb = manual_pair(topo, "aes128gcm16")
    a = Vpnd(topo, "gwa", ca)
    try:
        a.start(wait=False, env={"NOTIFY_SOCKET": str(path)})
        got = _notifications(ns, "READY=1")
        # READY came after the manual SA and its route were in place
        assert f"{LAN_B} dev vpnd0" in gw_routes(topo, "gwa")
        assert a.child()["state"] == "INSTALLED"
        a.signal(signal.SIGHUP)
        got = _notifications(ns, "READY=1")
        assert got[0].startswith("RELOADING=1"), got
        assert a.stop() == 0
        got = _notifications(ns, "STOPPING=1")
    finally:
        ns.close()
        if a.alive():
            a.stop()
    assert "vpnd0" not in gw_links(topo, "gwa")


_LISTEN = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("\0" + sys.argv[1])
print("bound", flush=True)
while True:
    print(s.recv(4096).decode().replace("\n", " "), flush=True)
"""


def test_abstract_notify_socket(topo):
    """An abstract NOTIFY_SOCKET name (leading @): abstract unix sockets belong to the
    network namespace, so the listener runs in gwa's."""
    import sys
    name = f"dmn-notify-{os.getpid()}-{time.monotonic_ns()}"
    listener = topo.popen("gwa", [sys.executable, "-c", _LISTEN, name])
    ca, _ = manual_pair(topo, "aes128gcm16")
    a = Vpnd(topo, "gwa", ca)
    try:
        assert listener.stdout.readline().strip() == b"bound"
        a.start(env={"NOTIFY_SOCKET": "@" + name})

        def next_state() -> str:
            while _informational(line := listener.stdout.readline().decode().strip()):
                pass
            return line

        assert next_state().startswith("READY=1")
        assert a.stop() == 0
        assert next_state().startswith("STOPPING=1")
    finally:
        if a.alive():
            a.stop()
        topo.stop(listener)


def test_nat_traversal(request):
    """gwa behind a masquerading NAT: both sides detect it, ESP goes in UDP 4500, traffic
    flows both ways, and gwa's NAT keepalives reach gwb (counted there)."""
    pytest.importorskip("vpnd.ike.manager")
    with Topology(prefix="dmn", nat=True) as t:
        a = Vpnd(t, "gwa", ike_config(t, "gwa", start="start", extra="nat_keepalive: 1"))
        b = Vpnd(t, "gwb", ike_config(t, "gwb", start="none"))
        try:
            b.start()
            a.start()
            t.wait_ping("hosta", HOST_B, timeout=15)
            assert t.ping("hostb", HOST_A, count=3, interval=0.05).returncode == 0
            assert t.tcp_transfer("hosta", "hostb", HOST_B, mbytes=2)["down_ok"]
            for d in (a, b):
                sa = d.status()["ike_sas"][0]
                assert sa["nat_detected"] is True and sa["remote"].endswith(":4500"), sa
                assert sa["child_sas"][0]["udp_encap"] is True
            k0 = b.status()["daemon"]["keepalives_in"]
            deadline = time.monotonic() + 5
            while b.status()["daemon"]["keepalives_in"] <= k0:
                assert time.monotonic() < deadline, "no NAT keepalive arrived"
                time.sleep(0.2)
        except BaseException:
            for d in (a, b):
                request.node.add_report_section("call", f"vpnd {d.role}", d.log())
            raise
        finally:
            for d in (a, b):
                if d.alive():
                    assert d.stop() == 0


def test_reload_ike_connections(topo, pair):
    """Reload: a new `start: start` connection comes up, a removed one goes down."""
    a, b = pair()
    assert a.ctl("up", name="site-b", timeout=20)["ok"]
    text = ike_config(topo, "gwa", start="start").replace("  site-b:", "  site-b2:")
    a.write_config(text)
    resp = a.ctl("reload")
    assert resp["ok"] and resp["result"]["connections"] == ["site-b2"], resp
    topo.wait_ping("hosta", HOST_B, timeout=15)
    names = [c["name"] for c in a.status()["connections"]]
    assert names == ["site-b2"]
    deadline = time.monotonic() + 10
    while _child(a, "site-b2") == (None, None) or _child(a, "site-b") != (None, None):
        assert time.monotonic() < deadline, a.status()
        time.sleep(0.1)
    a.write_config(text.split("connections:")[0].replace("daemon:\n", "daemon:\n  allow_empty: true\n", 1)
                       + "connections: {}\n")  # empty on purpose (issue 7.13)
    a.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while a.status()["ike_sas"] or LAN_B in gw_routes(topo, "gwa"):
        assert time.monotonic() < deadline, a.status()
        time.sleep(0.1)
    assert topo.ping("hosta", HOST_B, timeout=0.5).returncode != 0
