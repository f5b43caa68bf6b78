"""Real vpnd daemons in namespaces, manual keys, vpnd <-> vpnd.

    hosta ── gwa(vpnd) ══ WAN ══ gwb(vpnd) ── hostb

Traffic goes only between the namespaces' own addresses. Every algorithm of the data
plane issue carries ping both ways and a checksummed 10 MB TCP transfer both ways (raw
ESP/AH); UDP-encapsulated ESP carries ping for every ESP algorithm and the transfer for
AES-GCM. Then the daemon's life cycle: status counters, SIGTERM clean-up, start-up
failures leaving nothing behind, SIGHUP reload, and packets attacked on the wire.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .topology import HOST_A, HOST_B, LAN_B, Topology
from .vpnd_proc import ALGORITHMS, Vpnd, gw_links, gw_routes, manual_pair, start_manual_pair

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def topo():
    with Topology(prefix="dmn") as t:
        yield t


@pytest.fixture
def daemons(topo, request):
    """started = daemons(alg, encap=...) -> (gwa Vpnd, gwb Vpnd); stopped after the test
    (their logs attached on failure), and checked to leave no TUN device behind."""
    started: list[Vpnd] = []

    def start(alg="aes128gcm16", encap=False, **kw):
        return start_manual_pair(topo, started, alg, encap=encap, **kw)

    yield start
    for d in started:
        if d.alive():
            assert d.stop() == 0, d.log()
    for role in ("gwa", "gwb"):
        assert "vpnd0" not in gw_links(topo, role)


def wait_tunnel(topo, timeout=10):
    topo.wait_ping("hosta", HOST_B, timeout=timeout)


ESP_ALGS = [a for a, (esp, _ah) in ALGORITHMS.items() if esp]
CASES = [(a, False) for a in ALGORITHMS] + [(a, True) for a in ESP_ALGS if not ALGORITHMS[a][1]]


@pytest.mark.parametrize("alg,encap", CASES, ids=[f"{a}-{'udp' if e else 'raw'}" for a, e in CASES])
def test_manual_tunnel(topo, daemons, alg, encap):
    a, b = daemons(alg, encap=encap)
    wait_tunnel(topo)
    assert topo.ping("hosta", HOST_B, count=3, interval=0.05).returncode == 0
    assert topo.ping("hostb", HOST_A, count=3, interval=0.05).returncode == 0
    # issue 2: at least 10 MB, checksummed, both directions, for each algorithm raw and in UDP
    res = topo.tcp_transfer("hosta", "hostb", HOST_B, mbytes=10, timeout=120)
    assert res["up_ok"] and res["down_ok"] and res["bytes"] >= 10_000_000
    for d in (a, b):
        ch = d.child()
        assert ch["state"] == "INSTALLED" and ch["udp_encap"] is encap
        assert ch["packets_in"] >= 4 and ch["packets_out"] >= 4
        assert ch["bytes_in"] > 0 and ch["bytes_out"] > 0
        assert ch["replay_drops"] == 0 and ch["auth_failures"] == 0
    esp, ah = ALGORITHMS[alg]
    # what crossed the WAN really was protected: no plain ICMP between the hosts there
    with topo.capture("gwb", "wan", f"{alg}-{encap}.pcap", "ip") as cap:  # no ARP
        assert topo.ping("hosta", HOST_B, count=2, interval=0.05).returncode == 0
    lines = subprocess.run(["tcpdump", "-nr", str(cap.path)], capture_output=True,
                           text=True).stdout.splitlines()
    assert lines
    if esp is None:  # AH authenticates only: the inner packet is visible, always inside AH
        assert all("AH(" in ln for ln in lines if "ICMP echo" in ln), lines
        assert sum("ICMP echo" in ln for ln in lines) >= 4
    else:
        assert not any(HOST_B in ln or "ICMP echo" in ln for ln in lines), lines
        expect = "UDP-encap" if encap else "AH(" if ah else "ESP("
        assert all(expect in ln or ".4500" in ln for ln in lines if "10.200.0." in ln), lines


def test_status_shape_and_routes(topo, daemons):
    a, b = daemons("aes256-sha256")
    wait_tunnel(topo)
    st = a.status()
    (conn,) = st["connections"]
    assert conn == {**conn, "name": "tunnel", "peer": "10.200.0.2", "state": "up", "child_sas": 1}
    (sa,) = st["ike_sas"]
    for key in ("connection", "version", "state", "local", "remote", "nat_detected", "initiator",
                "spi_i", "spi_r", "proposal", "established_s", "rekey_in_s", "child_sas"):
        assert key in sa, key
    ch = sa["child_sas"][0]
    for key, typ in (("name", str), ("state", str), ("mode", str), ("protocol", str),
                     ("udp_encap", bool), ("spi_in", str), ("spi_out", str), ("proposal", str),
                     ("local_ts", list), ("remote_ts", list), ("bytes_in", int), ("packets_in", int),
                     ("bytes_out", int), ("packets_out", int), ("replay_drops", int),
                     ("auth_failures", int), ("rekey_in_s", int)):
        assert isinstance(ch[key], typ), key
    assert ch["proposal"] == "AES_CBC-256/HMAC_SHA2_256_128"
    assert ch["local_ts"] == ["10.1.0.0/16"] and ch["remote_ts"] == ["10.2.0.0/16"]
    # gwa's inbound SPI is gwb's outbound SPI
    assert ch["spi_in"] == b.child()["spi_out"] and ch["spi_out"] == b.child()["spi_in"]
    assert f"{LAN_B} dev vpnd0 proto static" in gw_routes(topo, "gwa")
    # the human table, through the real vpnctl
    out = topo.run("gwa", [sys.executable, "-c",
                           "import sys; from vpnd.cli import vpnctl_main; sys.exit(vpnctl_main())",
                           "--socket", a.sock, "status"], env=a.env()).stdout.decode()
    assert f"spi 0x{ch['spi_in']}" in out and "#pkts decaps" in out and "tunnel" in out


def test_sigterm_removes_tun_routes_socket(topo, daemons):
    a, b = daemons("aes128gcm16")
    wait_tunnel(topo)
    assert "vpnd0" in gw_links(topo, "gwa") and LAN_B in gw_routes(topo, "gwa")
    assert a.stop(signal.SIGTERM) == 0
    assert "vpnd0" not in gw_links(topo, "gwa")
    assert LAN_B not in gw_routes(topo, "gwa")
    assert not os.path.exists(a.sock)
    assert "stopping" in a.log()
    assert b.stop(signal.SIGINT) == 0
    assert "vpnd0" not in gw_links(topo, "gwb")


def test_rri_options(topo, daemons):
    a, b = daemons("aes128gcm16", extra_conn="rri: {metric: 77, tag: 99}")
    wait_tunnel(topo)
    routes = topo.run("gwa", ["ip", "route", "show", "proto", "99"]).stdout.decode()
    assert f"{LAN_B} dev vpnd0" in routes and "metric 77" in routes
    assert a.stop() == 0
    assert topo.run("gwa", ["ip", "route", "show", "proto", "99"]).stdout.decode().strip() == ""


def test_rri_remote_peer_and_next_hop(topo, daemons):
    """Cisco `reverse-route remote-peer`: subnet via the peer into the tunnel, plus a host
    route to the peer over the WAN; `remote-peer NEXT-HOP`: via that next hop, no host route."""
    a, b = daemons("aes128gcm16", extra_conn="rri: {remote_peer: true, tag: 98}")
    wait_tunnel(topo)
    routes = topo.run("gwa", ["ip", "route", "show", "proto", "98"]).stdout.decode()
    assert f"{LAN_B} via 10.200.0.2 dev vpnd0" in routes, routes
    assert "10.200.0.2 dev wan" in routes, routes
    assert topo.tcp_transfer("hosta", "hostb", HOST_B, mbytes=1)["up_ok"]
    assert a.stop() == 0 and b.stop() == 0
    assert topo.run("gwa", ["ip", "route", "show", "proto", "98"]).stdout.decode().strip() == ""
    a, b = daemons("aes128gcm16", extra_conn="rri: {next_hop: 10.250.0.1, static: true, tag: 97}")
    wait_tunnel(topo)
    routes = topo.run("gwa", ["ip", "route", "show", "proto", "97"]).stdout.decode()
    assert routes.strip().splitlines() == [f"{LAN_B} via 10.250.0.1 dev vpnd0 onlink"], routes
    # static: the route stays while the SA is down (vpnctl down), traffic has no SA then
    assert a.ctl("down", name="tunnel")["ok"]
    assert f"{LAN_B} via 10.250.0.1" in topo.run("gwa", ["ip", "route", "show", "proto", "97"]).stdout.decode()
    assert topo.ping("hosta", HOST_B).returncode != 0
    assert a.ctl("up", name="tunnel")["ok"]
    wait_tunnel(topo)


def test_bad_config_leaves_nothing(topo):
    ca, _ = manual_pair(topo, "aes128gcm16")
    d = Vpnd(topo, "gwa", ca.replace("esp: aes128gcm16", "esp: aes999"))
    r = d.run_once("--check")
    assert r.returncode == 1
    lines = r.stderr.decode().strip().splitlines()
    assert "connections.tunnel.esp: unknown algorithm 'aes999'" in lines
    assert all(ln.startswith("connections.tunnel.") for ln in lines), lines
    r = d.run_once()
    assert r.returncode == 1 and b"aes999" in r.stderr
    assert "vpnd0" not in gw_links(topo, "gwa")
    d.write_config(ca)
    assert d.run_once("--check").returncode == 0


def test_startup_failure_after_tun_leaves_nothing(topo):
    """Port 4500 taken (a manual connection with encap: true needs it; a manual-only config
    opens no IKE port 500): vpnd fails after it could have created the TUN: one line,
    exit 1, no TUN, no route, no socket file."""
    ca, _ = manual_pair(topo, "aes128gcm16", encap=True)
    d = Vpnd(topo, "gwa", ca)
    blocker = topo.popen("gwa", [sys.executable, "-c",
                                 "import socket,sys,time; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
                                 "s.bind(('0.0.0.0',4500)); print('bound',flush=True); time.sleep(60)"])
    try:
        assert blocker.stdout.readline().strip() == b"bound"
        r = d.run_once()
    finally:
        topo.stop(blocker)
    err = r.stderr.decode().strip().splitlines()
    assert r.returncode == 1
    assert len(err) == 1 and "address already in use" in err[0], err
    assert "vpnd0" not in gw_links(topo, "gwa")
    assert LAN_B not in gw_routes(topo, "gwa")
    assert not os.path.exists(d.sock)


def test_control_socket_failure_leaves_nothing(topo):
    """The control socket cannot be created (its directory is a file): the TUN, sockets and
    the manual SA's route were set up already and are all undone; one line, exit 1."""
    blocker = Path(topo.workdir) / "not-a-dir"
    blocker.write_text("")
    ca, _ = manual_pair(topo, "aes128gcm16")
    d = Vpnd(topo, "gwa", ca.replace(f"control_socket: {topo.workdir}/gwa.sock",
                                     f"control_socket: {blocker}/gwa.sock"))
    r = d.run_once()
    err = r.stderr.decode().strip().splitlines()
    assert r.returncode == 1
    assert len(err) == 1 and "control socket" in err[0], err
    assert "vpnd0" not in gw_links(topo, "gwa")
    assert LAN_B not in gw_routes(topo, "gwa")


def test_sighup_reload(topo, daemons):
    a, b = daemons("aes128gcm16")
    wait_tunnel(topo)
    good = a.config.read_text()
    # 1. a broken config: logged, the old one keeps running
    a.write_config(good.replace("esp: aes128gcm16", "esp: aes999"))
    a.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "aes999" not in a.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "reload: connections.tunnel.esp: unknown algorithm 'aes999'" in a.log()
    assert a.alive()
    assert topo.ping("hosta", HOST_B).returncode == 0
    # 2. the connection removed: SA and route go
    a.write_config(good.split("connections:")[0].replace("daemon:\n", "daemon:\n  allow_empty: true\n", 1)
                       + "connections: {}\n")  # empty on purpose (issue 7.13)
    resp = a.ctl("reload")
    assert resp["ok"], resp
    assert a.status()["ike_sas"] == [] and LAN_B not in gw_routes(topo, "gwa")
    assert topo.ping("hosta", HOST_B).returncode != 0
    # 3. back again (SIGHUP): traffic flows
    a.write_config(good)
    a.signal(signal.SIGHUP)
    wait_tunnel(topo)
    # 4. vpnctl down / up of a manual connection
    assert a.ctl("down", name="tunnel")["ok"]
    assert topo.ping("hosta", HOST_B).returncode != 0
    assert a.ctl("up", name="tunnel")["ok"]
    wait_tunnel(topo)
    resp = a.ctl("up", name="nope")
    assert not resp["ok"] and "no connection named 'nope'" in resp["error"]
    resp = a.ctl("rekey", name="tunnel")
    assert not resp["ok"] and "manual keying" in resp["error"]


# -- packets attacked on the wire (scapy reads the capture, gwb injects) -----------------

_INJECT = r"""
import socket, sys
pkt, dst = bytes.fromhex(sys.argv[1]), sys.argv[2]
if sys.argv[3] == "raw":      # a whole IPv4 packet
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.sendto(pkt, (dst, 0))
else:                         # ESP in UDP to the NAT-T port, from an ephemeral port
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(pkt, (dst, 4500))
"""


def _last_esp_to_gwa(topo, encap: bool) -> bytes:
    """The last ESP packet gwb sent to gwa during a ping, as captured on the WAN: the whole
    IPv4 packet (raw) or the UDP payload (ESP in UDP); scapy parses the capture."""
    from scapy.all import IP, UDP, raw, rdpcap
    bpf = "udp dst port 4500" if encap else "esp"
    with topo.capture("gwb", "wan", "attack.pcap", f"{bpf} and dst host 10.200.0.1") as cap:
        assert topo.ping("hostb", HOST_A, count=2, interval=0.05).returncode == 0
        time.sleep(0.2)
    pkts = [p[IP] for p in rdpcap(str(cap.path)) if p.haslayer(IP)]
    assert pkts, "no ESP captured"
    return bytes(pkts[-1][UDP].payload) if encap else raw(pkts[-1])


def _wait_counter(get, before, what, timeout=5):
    deadline = time.monotonic() + timeout
    while get() <= before:
        assert time.monotonic() < deadline, f"{what} did not move"
        time.sleep(0.05)


@pytest.mark.parametrize("alg,encap", [("aes128gcm16", False), ("aes256-sha256", False),
                                       ("aes128gcm16", True), ("chacha20poly1305", True)],
                         ids=["gcm-raw", "cbc-raw", "gcm-udp", "chacha-udp"])
def test_wire_attacks_dropped_and_counted(topo, daemons, alg, encap):
    """A replayed packet, a flipped bit, a truncated packet and an unknown SPI, injected from
    gwb: each dropped and counted where it belongs; the daemon keeps running, traffic flows."""
    a, b = daemons(alg, encap=encap)
    wait_tunnel(topo)
    pkt = _last_esp_to_gwa(topo, encap)
    off = 0 if encap else (pkt[0] & 0x0F) * 4  # where ESP starts
    seq = int.from_bytes(pkt[off + 4:off + 8], "big")

    def inject(data: bytes):
        topo.run("gwb", [sys.executable, "-c", _INJECT, data.hex(), "10.200.0.1",
                         "udp" if encap else "raw"])

    def counter(name):
        st = a.status()
        return sum(ch.get(name, 0) for sa in st["ike_sas"] for ch in sa["child_sas"]) + \
            st["daemon"].get(f"dp_{name}", 0)

    # 1. replayed packet: the same bytes again
    before = counter("replay_drops")
    inject(pkt)
    _wait_counter(lambda: counter("replay_drops"), before, "replay_drops")

    # 2. a flipped bit in the ciphertext, with a fresh sequence number (so that only the
    #    ICV can catch it, not the replay window); the kernel fixes the IP checksum
    before = counter("auth_failures")
    forged = bytearray(pkt)
    forged[off + 4:off + 8] = (seq + 1000).to_bytes(4, "big")
    forged[off + 20] ^= 0x01
    inject(bytes(forged))
    _wait_counter(lambda: counter("auth_failures"), before, "auth_failures")

    # 3. a truncated packet: SPI, sequence number and two bytes
    before = counter("malformed")
    trunc = bytearray(pkt[:off + 10])
    if not encap:
        trunc[2:4] = len(trunc).to_bytes(2, "big")
    inject(bytes(trunc))
    _wait_counter(lambda: counter("malformed"), before, "malformed")

    # 4. an unknown SPI
    before = counter("unknown_spi")
    unknown = bytearray(pkt)
    unknown[off:off + 4] = (0xDEADBEEF).to_bytes(4, "big")
    inject(bytes(unknown))
    _wait_counter(lambda: counter("unknown_spi"), before, "unknown_spi")

    # nothing of it reached the TUN, the daemon is still there and traffic continues
    ch = a.child()
    assert ch["replay_drops"] >= 1 and ch["auth_failures"] >= 1
    assert a.alive() and b.alive()
    assert topo.ping("hostb", HOST_A, count=3, interval=0.05).returncode == 0
    assert topo.ping("hosta", HOST_B, count=3, interval=0.05).returncode == 0


@pytest.mark.parametrize("encap", [False, True], ids=["raw", "udp"])
def test_transport_mode_between_gateways(topo, daemons, encap):
    """Transport mode protects the gateways' own traffic: a policy rule steers it into the
    TUN while vpnd's own ESP/IKE packets (socket mark) go out directly."""
    a, b = daemons("aes256-sha256", encap=encap, transport=True)
    topo.wait_ping("gwa", "10.200.0.2")
    rules = topo.run("gwa", ["ip", "rule", "show"]).stdout.decode()
    assert "fwmark 0x7670 lookup main" in rules and "to 10.200.0.2 iif lo lookup 2220" in rules
    with topo.capture("gwb", "wan", f"transport-{encap}.pcap", "ip") as cap:  # no ARP
        assert topo.ping("gwa", "10.200.0.2", count=3, interval=0.05).returncode == 0
        assert topo.ping("gwb", "10.200.0.1", count=3, interval=0.05).returncode == 0
    lines = subprocess.run(["tcpdump", "-nr", str(cap.path)], capture_output=True,
                           text=True).stdout.splitlines()
    assert len(lines) >= 12 and not any("ICMP" in ln for ln in lines), lines
    assert all(("UDP-encap" in ln or ".4500" in ln) if encap else "ESP(" in ln for ln in lines), lines
    res = topo.tcp_transfer("gwa", "gwb", "10.200.0.2", mbytes=2)
    assert res["up_ok"] and res["down_ok"]
    ch = a.child()
    assert ch["mode"] == "transport" and ch["packets_in"] > 100 and ch["packets_out"] > 100
    assert a.stop() == 0 and b.stop() == 0
    for role in ("gwa", "gwb"):
        rules = topo.run(role, ["ip", "rule", "show"]).stdout.decode()
        assert "2220" not in rules and "7670" not in rules, rules
    assert topo.ping("gwa", "10.200.0.2").returncode == 0  # plain again


def test_mtu_auto_and_mss_clamp(topo, daemons):
    """TUN MTU auto = the WAN's 1500 minus ESP/AES-GCM's worst case (20 IP + 8 ESP + 8 IV +
    16 ICV + 2 trailer, payload 4-aligned): 1446. A DF packet of exactly that size crosses,
    one byte more is refused with the MTU; SYNs are clamped to mss_clamp."""
    a, b = daemons("aes128gcm16", extra_daemon="mss_clamp: 1200")
    wait_tunnel(topo)
    assert a.status()["daemon"]["mtu"] == 1446
    topo.run("hosta", ["ip", "route", "flush", "cache"])  # forget PMTUs of earlier tests
    def debug():
        return (a.status()["daemon"], b.status()["daemon"], gw_routes(topo, "gwa"),
                topo.run("hosta", ["ip", "route", "get", HOST_B]).stdout,
                topo.run("gwa", ["ip", "route", "get", "10.200.0.2"]).stdout)
    r = topo.ping("hosta", HOST_B, size=1446 - 28, df=True)
    assert r.returncode == 0, (r.stdout, debug())
    r = topo.ping("hosta", HOST_B, size=1446 - 27, df=True)
    assert r.returncode != 0 and b"+1 errors" in r.stdout, (r.stdout, debug())  # "frag needed"
    learned = topo.run("hosta", ["ip", "route", "get", HOST_B]).stdout.decode()
    assert "mtu 1446" in learned, learned
    # each side sees the other's SYN after it crossed the tunnel: clamped both ways
    syn = "tcp[tcpflags] & tcp-syn != 0"
    with topo.capture("hostb", "eth0", "syn-b.pcap", syn) as cb, \
            topo.capture("hosta", "eth0", "syn-a.pcap", syn) as ca:
        topo.tcp_transfer("hosta", "hostb", HOST_B, mbytes=0.1)
    seen = {}
    for cap, side in ((cb, "hostb"), (ca, "hosta")):
        text = subprocess.run(["tcpdump", "-nr", str(cap.path)], capture_output=True, text=True).stdout
        seen[side] = [ln for ln in text.splitlines() if "mss" in ln]
    incoming_b = [ln for ln in seen["hostb"] if "10.1.0.10." in ln.split(">")[0]]
    incoming_a = [ln for ln in seen["hosta"] if "10.2.0.10." in ln.split(">")[0]]
    assert incoming_b and all("mss 1200" in ln for ln in incoming_b), seen
    assert incoming_a and all("mss 1200" in ln for ln in incoming_a), seen


def test_wrong_key_counted_as_auth_failures(topo):
    """gwa's inbound key differs from gwb's outbound key: every packet from gwb fails the ICV
    check at gwa (counted), nothing is delivered, the daemons keep running."""
    import yaml
    ca, cb = manual_pair(topo, "aes256-sha256")
    doc = yaml.safe_load(ca)
    inbound = doc["connections"]["tunnel"]["manual"]["inbound"]["esp"]
    inbound["auth_key"] = "%064x" % (int(inbound["auth_key"], 16) ^ 1)
    a = Vpnd(topo, "gwa", yaml.safe_dump(doc))
    b = Vpnd(topo, "gwb", cb)
    try:
        a.start()
        b.start()
        assert topo.ping("hosta", HOST_B, count=3, interval=0.05, timeout=0.5).returncode != 0
        ch = a.child()
        assert ch["auth_failures"] >= 3 and ch["packets_in"] == 0, ch
        assert b.child()["packets_in"] >= 3  # gwa -> gwb still fine
        assert a.alive() and b.alive()
    finally:
        for d in (a, b):
            if d.alive():
                assert d.stop() == 0


_GARBAGE = r"""
import os, random, socket, struct, sys
dst, n = sys.argv[1], int(sys.argv[2])
rnd = random.Random(int(sys.argv[3]))
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
src = socket.inet_aton("10.200.0.2")
for i in range(n):
    body = os.urandom(rnd.choice((0, 1, 3, 4, 7, 8, 12, 16, 40, 100, 1400)))
    if i % 7 == 0 and len(body) >= 4:
        body = struct.pack("!I", 0x1000 + rnd.randrange(0x20000)) + body[4:]  # plausible SPIs
    kind = i % 4
    if kind < 2:  # raw ESP (50) / AH (51); the kernel sets total length and checksum
        proto = 50 + kind
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), i & 0xFFFF, 0, 64, proto, 0, src,
                          socket.inet_aton(dst))
        try:
            raw.sendto(hdr + body, (dst, 0))
        except OSError:
            pass
    else:         # UDP to the NAT-T port and to the IKE port
        udp.sendto(body if kind == 2 else b"\0\0\0\0" + body, (dst, 4500 if kind == 2 else 500))
"""


def test_garbage_on_every_socket(topo, daemons):
    """Random ESP, AH, NAT-T and IKE datagrams (some with plausible SPIs): all dropped and
    counted, no exception in the log, the tunnel keeps working."""
    a, b = daemons("aes128gcm16", encap=True)
    wait_tunnel(topo)
    topo.run("gwb", [sys.executable, "-c", _GARBAGE, "10.200.0.1", "4000", "7"], timeout=120)
    time.sleep(0.5)
    st = a.status()
    assert st["daemon"]["decap_drops"] > 500, st["daemon"]
    assert a.alive() and "Traceback" not in a.log(), a.log()
    assert topo.ping("hosta", HOST_B, count=3, interval=0.05).returncode == 0
    assert topo.ping("hostb", HOST_A, count=3, interval=0.05).returncode == 0
