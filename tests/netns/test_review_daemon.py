"""The administrator works against a running vpnd (real daemons, manual keys, namespaces):
deletes its TUN device, deletes its route, had a route to the remote subnet before; and
hostile control clients. vpnd answers each with a log line (or exit 2 for the TUN device),
never a traceback, and the tunnel state it reports stays true."""
from __future__ import annotations

import json
import os
import signal
import socket
import time

import pytest

from vpnd.control import request

from .topology import HOST_B, LAN_B, Topology
from .vpnd_proc import Vpnd, gw_links, gw_routes, ike_config, manual_pair, start_manual_pair

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def topo():
    with Topology(prefix="rvw") as t:
        yield t


@pytest.fixture
def pair(topo):
    started: list[Vpnd] = []

    def start(**kw):
        return start_manual_pair(topo, started, "aes128gcm16", **kw)

    yield start
    for d in started:
        if d.alive():
            d.stop()
    for role in ("gwa", "gwb"):
        topo.run(role, ["ip", "link", "del", "vpnd0"], check=False)


def no_traceback(d: Vpnd) -> None:
    assert "Traceback" not in d.log(), d.log()


def test_tun_deleted_by_the_admin_stops_vpnd_with_exit_2(topo, pair):
    a, b = pair()
    topo.wait_ping("hosta", HOST_B, timeout=10)
    topo.run("gwa", ["ip", "link", "del", "vpnd0"])
    deadline = time.monotonic() + 10
    while a.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not a.alive(), "vpnd kept running without its TUN device"
    assert a.proc.returncode == 2, a.log()
    assert a.log().count("was removed") == 1
    no_traceback(a)
    assert not os.path.exists(a.sock)
    assert b.stop() == 0


def test_route_deleted_by_the_admin_then_sigterm(topo, pair):
    a, b = pair()
    topo.wait_ping("hosta", HOST_B, timeout=10)
    topo.run("gwa", ["ip", "route", "del", LAN_B])
    assert LAN_B not in gw_routes(topo, "gwa")
    assert a.stop() == 0
    no_traceback(a)
    assert "vpnd0" not in gw_links(topo, "gwa")
    assert b.stop() == 0


def test_existing_route_is_left_alone(topo, pair):
    topo.run("gwa", ["ip", "route", "add", "blackhole", LAN_B, "metric", "0"])
    try:
        a, b = pair()
        assert "already exists" in a.log()
        assert request(a.sock, {"command": "status"})["ok"]
        assert a.stop() == 0
        no_traceback(a)
        assert f"blackhole {LAN_B}" in gw_routes(topo, "gwa")  # not vpnd's: still there
        assert b.stop() == 0
    finally:
        topo.run("gwa", ["ip", "route", "del", "blackhole", LAN_B], check=False)


def test_hostile_control_clients_against_the_daemon(topo, pair):
    a, b = pair(log_level="debug")
    junk = [b"[" * 60000 + b"\n", b"\xff\xfe\n", b'{"command": "up", "name": "nope"}\n', b"x" * 70000]
    for data in junk:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(a.sock)
            try:
                s.sendall(data)
                line = s.recv(65536).split(b"\n")[0]
            except OSError:
                line = b""
            if line:
                resp = json.loads(line)
                assert resp["ok"] is False and "\n" not in resp["error"]
    half_open = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    half_open.connect(a.sock)
    half_open.sendall(b'{"command": "sta')  # never finished
    try:
        assert a.ctl("status")["ok"]
        assert a.ctl("down", name="tunnel")["ok"]
        assert a.ctl("up", name="tunnel")["ok"]
        topo.wait_ping("hosta", HOST_B, timeout=10)
    finally:
        half_open.close()
    a.signal(signal.SIGHUP)
    time.sleep(0.3)
    assert a.alive()
    assert a.stop() == 0
    no_traceback(a)
    assert b.stop() == 0


PSK = "rvw netns PSK 5e884898da28047151d0e56f8dc629"


def ike_text(topo, role: str, start: str) -> str:
    me, peer, lts, rts = ((topo.gwa_wan, topo.gwb_wan, "10.1.0.0/16", "10.2.0.0/16") if role == "gwa"
                          else (topo.gwb_wan, topo.gwa_public, "10.2.0.0/16", "10.1.0.0/16"))
    return ike_config(topo, role, version=2, psk=PSK, local=me, peer=peer, lts=lts, rts=rts,
                      ike="aes256-sha384-ecp384", esp="aes256-sha256", start=start)


def test_no_secret_in_debug_logs_or_vpnctl_output(topo, pair):
    """Real daemons at log_level debug: IKEv2 with a PSK (negotiate, rekey both SAs, tear
    down) and, separately, manual keys. Nothing they print contains the PSK or a key."""
    import sys

    import yaml
    b = Vpnd(topo, "gwb", ike_text(topo, "gwb", "none")).start()
    a = Vpnd(topo, "gwa", ike_text(topo, "gwa", "start")).start()
    outputs = []
    try:
        topo.wait_ping("hosta", HOST_B, timeout=15)
        assert a.ctl("rekey", name="site")["ok"]
        assert a.ctl("rekey", name="site", ike=True)["ok"]
        for args in (["status"], ["status", "--json"], ["up", "nope"], ["rekey", "site", "--ike"]):
            r = topo.run("gwa", [sys.executable, "-c", "import sys; from vpnd.cli import vpnctl_main; "
                                 "sys.exit(vpnctl_main(sys.argv[1:]))", "--socket", a.sock, *args],
                         check=False, env=Vpnd.env())
            outputs += [r.stdout.decode(), r.stderr.decode()]
        assert a.ctl("down", name="site")["ok"]
    finally:
        for d in (a, b):
            if d.alive():
                assert d.stop() == 0
    text = a.log() + b.log() + "".join(outputs)
    assert " DEBUG " in text  # debug logging was on
    assert PSK not in text and PSK.encode().hex() not in text
    # manual keys, at debug, with traffic
    ca, cb = manual_pair(topo, "aes256-sha256", log_level="debug")
    keys = []
    for conf in (ca, cb):
        man = yaml.safe_load(conf)["connections"]["tunnel"]["manual"]
        keys += [v for d in man.values() for k, v in d["esp"].items() if k.endswith("key")]
    ma, mb = Vpnd(topo, "gwa", ca).start(), Vpnd(topo, "gwb", cb).start()
    try:
        topo.wait_ping("hosta", HOST_B, timeout=10)
        st = json.dumps(ma.status()) + json.dumps(mb.status())
    finally:
        for d in (ma, mb):
            if d.alive():
                assert d.stop() == 0
    text = ma.log() + mb.log() + st
    assert keys and all(k.lower() not in text.lower() for k in keys)
