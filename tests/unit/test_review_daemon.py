"""Crash paths of the daemon glue without the kernel: reader callbacks that fail, a TUN
device deleted under the daemon, SIGHUP with a broken config file, netlink failures, and a
control command whose core call fails. Each must end as a counted drop, a log line or a
one-line error, never as an exception in the event loop."""

import asyncio
import logging
import os

import pytest
from pyroute2.netlink.exceptions import NetlinkError

from vpnd import esp
from vpnd.daemon import CommandError, Daemon
from vpnd.net import routes as routes_mod
from vpnd.net.routes import RouteManager, RouteOptions
from vpnd.net.tun import Tun, TunGone

GOOD = """daemon:
  tun: vpnd0
  control_socket: /tmp/rvw-not-used.sock
connections:
  site-b:
    local: 10.200.0.1
    peer: 10.200.0.2
    psk: "a test key of some length"
    local_ts: [10.1.0.0/16]
    remote_ts: [10.2.0.0/16]
    start: none
"""


def bare_tun(fd: int) -> Tun:
    t = Tun.__new__(Tun)
    t.name, t.fd, t.vnet_hdr, t.read_errors, t.mtu, t.index = "rvwt0", fd, False, 0, 1400, 1
    return t


def test_tun_read_error_is_counted_not_raised():
    fd = os.open("/", os.O_RDONLY)  # read() gives EISDIR: an error that is not "gone"
    try:
        t = bare_tun(fd)
        assert t.read_burst() == [] and t.read_errors == 1
    finally:
        os.close(fd)


def test_tun_deleted_under_the_daemon_is_tun_gone():
    r, w = os.pipe()
    os.close(r)
    os.close(w)  # a closed descriptor: EBADF, like EBADFD of a deleted TUN device
    with pytest.raises(TunGone):
        bare_tun(r).read_burst()


def make_daemon(tmp_path, text=GOOD):
    path = tmp_path / "vpnd.yaml"
    path.write_text(text)
    from vpnd.config import load_config
    d = Daemon(load_config(path), str(path))
    d.dp = esp.DataPlane()
    d._apply_static_routes = lambda: None
    return d, path


class RaisingTun:
    def __init__(self, exc):
        self.exc = exc

    def read_burst(self):
        raise self.exc

    def fileno(self):
        return 99


def test_failing_reader_is_counted_and_logged_once_a_second(tmp_path, caplog):
    d, _ = make_daemon(tmp_path)
    d.tun = RaisingTun(ValueError("a bug on the hot path"))
    with caplog.at_level(logging.ERROR, logger="vpnd"):
        for _ in range(5):
            d.io.on_tun()  # must not raise
    assert d.counters["loop_errors"] == 5
    assert sum("error reading the TUN device" in r.getMessage() for r in caplog.records) == 1


def test_every_reader_is_guarded(tmp_path):
    d, _ = make_daemon(tmp_path)

    class Broken:
        natt = ike = None
        ike_port = 500

        def __getattr__(self, name):
            raise RuntimeError("socket layer bug")

    d.wire = Broken()
    d.io.on_raw(None, 50)
    d.io.on_natt()
    d.io.on_ike_socket()
    assert d.counters["loop_errors"] == 3


def test_tun_gone_stops_the_daemon_with_exit_2(tmp_path):
    d, _ = make_daemon(tmp_path)
    removed = []

    async def main():
        d.loop = asyncio.get_running_loop()
        d._stop = d.loop.create_future()
        d.loop.remove_reader = lambda fd: removed.append(fd)
        d.tun = RaisingTun(TunGone("TUN device vpnd0 was removed"))
        d.io.on_tun()
        await asyncio.wait_for(d._stop, 1)

    asyncio.run(main())
    assert d.exit_code == 2 and removed == [99] and d.counters["loop_errors"] == 0


@pytest.mark.parametrize("broken", [
    "daemon: [unclosed\n",                                  # YAML syntax
    GOOD.replace("start: none", "start: none\n    esp: aes999"),
    GOOD.replace("peer: 10.200.0.2", "peer: 10.200.0.300"),
    "\x00\xff binary",
    None,                                                   # file deleted
])
def test_sighup_with_broken_config_keeps_running(tmp_path, caplog, broken):
    d, path = make_daemon(tmp_path)
    before = d.config
    if broken is None:
        path.unlink()
    else:
        path.write_bytes(broken.encode("latin-1"))
    with caplog.at_level(logging.ERROR, logger="vpnd"):
        d._sighup()  # must not raise
    assert d.config is before
    assert any(r.levelno == logging.ERROR and "reload" in r.getMessage() for r in caplog.records)


def test_sighup_with_an_unexpected_failure_is_a_log_line(tmp_path, caplog, monkeypatch):
    d, _ = make_daemon(tmp_path)

    def bad(*a, **k):
        raise RuntimeError("unexpected")

    monkeypatch.setattr("vpnd.reload._daemon_section", bad)
    with caplog.at_level(logging.ERROR, logger="vpnd"):
        d._sighup()
    assert any("SIGHUP" in r.getMessage() for r in caplog.records)


def netlink_raising(monkeypatch, exc):
    calls = []

    def call(fn):
        calls.append(fn)
        raise exc

    monkeypatch.setattr(routes_mod.netlink, "call", call)
    return calls


@pytest.mark.parametrize("exc", [TimeoutError(), OSError(105, "No buffer space"),
                                 NetlinkError(22, "Invalid argument"), ValueError("bad spec")])
def test_route_failures_are_log_lines(monkeypatch, caplog, exc):
    rm = RouteManager(7)
    netlink_raising(monkeypatch, exc)
    with caplog.at_level(logging.WARNING, logger="vpnd.net.routes"):
        rm.add("10.2.0.0/16", RouteOptions())
        rm.steer("10.200.0.2", "10.200.0.1", RouteOptions())
        rm.unsteer("10.200.0.2")
        rm.remove("10.2.0.0/16", RouteOptions())
        rm.close()
    assert rm.installed() == []
    assert caplog.records


def test_route_that_exists_is_never_removed_and_admin_deleted_route_is_fine(monkeypatch):
    rm = RouteManager(7)
    calls = netlink_raising(monkeypatch, NetlinkError(17, "File exists"))
    rm.add("10.2.0.0/16", RouteOptions())
    n = len(calls)
    rm.remove("10.2.0.0/16", RouteOptions())
    assert len(calls) == n  # not ours: no delete sent
    monkeypatch.setattr(routes_mod.netlink, "call", lambda fn: None)
    rm.add("10.3.0.0/16", RouteOptions())
    netlink_raising(monkeypatch, NetlinkError(3, "No such process"))  # the admin deleted it
    rm.close()
    assert rm.installed() == []


class FailingIke:
    def initiate(self, name, now):
        raise RuntimeError("core bug")

    def next_timer(self):
        return None


def test_up_whose_core_call_fails_leaves_no_waiter(tmp_path):
    d, _ = make_daemon(tmp_path)
    d.ike = FailingIke()

    async def main():
        d.loop = asyncio.get_running_loop()
        with pytest.raises(RuntimeError):
            await d.cmd_up("site-b", timeout=5)
        await asyncio.sleep(0.01)
        assert d._waiters == []
        with pytest.raises(CommandError, match="no connection named"):
            await d.cmd_up("nope")

    asyncio.run(main())



def gcm_pair(udp: bool):
    """(sender DataPlane LAN_A->LAN_B, receiving SA) for one AES-GCM SA, RFC 3948 if udp."""
    import ipaddress
    key = bytes(range(20))

    def sa(local, remote):
        return esp.SA(0x2001, "esp", "tunnel", "aes128gcm16", None, key, b"", local=local,
                      remote=remote, encap=(4500, 4500) if udp else None)
    tx = esp.DataPlane()
    tx.add_outbound(1, [ipaddress.ip_network("10.1.0.0/16")], [ipaddress.ip_network("10.2.0.0/16")],
                    [sa("10.200.0.1", "10.200.0.2")])
    return tx, sa("10.200.0.2", "10.200.0.1")


def ipv4_udp(i: int, size: int = 100) -> bytes:
    import struct
    payload = bytes([i & 0xFF]) * size
    return struct.pack("!BBHHHBBH4s4sHHHH", 0x45, 0, 28 + size, i, 0x4000, 64, 17, 0,
                       bytes([10, 1, 0, 10]), bytes([10, 2, 0, 10]), 1000, 2000, 8 + size, 0) + payload


class FakeNattWire:
    natt = object()
    natt_port = 4500
    ike_port = 500
    listen = "0.0.0.0"
    send_errors = 0

    def __init__(self, items):
        self.items = items

    def recv_udp(self, sock, limit=64):
        return self.items


class FakeTun:
    def __init__(self):
        self.written = []

    def write_many(self, pkts):
        self.written += pkts

    def write(self, pkt):
        self.written.append(pkt)


class Clock:
    def time(self):
        return 5.0


def test_natt_socket_sorts_esp_ike_keepalive_and_garbage(tmp_path):
    d, _ = make_daemon(tmp_path)
    tx, rx = gcm_pair(udp=True)
    d.dp.add_inbound(rx)
    good = [o[2] for o in tx.encap_many([ipv4_udp(i) for i in range(3)])]
    ike_seen = []
    d._ike_receive = lambda data, local, remote: ike_seen.append(data)
    peer = ("10.200.0.1", 4500)
    datagrams = good + [
        b"\xff",                             # NAT keepalive (RFC 3948 2.3)
        b"\x00\x00\x00\x00" + b"I" * 28,     # IKE behind the non-ESP marker
        b"\x00\x00\x00\x00",                 # marker alone: invalid
        b"\x00\x01",                         # too short for anything
        b"\x00\x00\x20\x01",                 # an SPI alone: shorter than any ESP
        b"\x00\x00\x20\x01\x00\x00\x00\x64" + bytes(56),  # known SPI, seq 100, bad ICV
        b"\xde\xad\xbe\xef" + bytes(60),     # unknown SPI
        good[0],                             # replayed
    ]
    d.wire = FakeNattWire([(x, peer, []) for x in datagrams])
    d.tun = FakeTun()
    d.loop = Clock()
    d.io.on_natt()
    c = d.counters
    assert d.tun.written == [ipv4_udp(i) for i in range(3)]
    assert ike_seen == [b"I" * 28]
    assert (c["keepalives_in"], c["natt_invalid"], c["loop_errors"]) == (1, 3, 0)
    assert (c["wire_in"], c["tun_out"], c["decap_drops"]) == (6, 3, 3)
    assert rx.auth_failures == 1 and rx.replay_drops == 1


class RecordingWire:
    def __init__(self):
        self.sent = []

    def send_ip(self, dst, pkt):
        self.sent.append(("raw", dst, len(pkt)))

    def send_esp_udp_run(self, addr, run, src):
        self.sent.append(("udp", addr, src, [len(x) for x in run]))


def test_send_outputs_groups_equal_udp_runs_per_peer_and_source(tmp_path):
    d, _ = make_daemon(tmp_path)
    d.wire = RecordingWire()
    d.tun = FakeTun()
    p1, p2 = ("10.200.0.2", 4500), ("10.200.0.3", 4500)
    s1 = ("10.200.0.1", 4500)
    outs = ([("udp", p1, b"a" * 100, s1)] * 3 + [("udp", p1, b"b" * 60, s1)]
            + [("udp", p2, b"c" * 100, s1)] * 2 + [("udp", p2, b"c" * 100, ("10.200.0.9", 4500))]
            + [("raw", "10.200.0.2", b"r" * 80), ("tun", b"icmp")]
            + [("udp", p1, b"d" * 100, s1)] * 40)
    d.io.send_outputs(outs)
    assert d.wire.sent == [
        ("udp", p1, "10.200.0.1", [100, 100, 100]), ("udp", p1, "10.200.0.1", [60]),
        ("udp", p2, "10.200.0.1", [100, 100]),
        ("raw", "10.200.0.2", 80),  # raw goes at once; a pending UDP run after it
        ("udp", p2, "10.200.0.9", [100]),
        ("udp", p1, "10.200.0.1", [100] * 32), ("udp", p1, "10.200.0.1", [100] * 8)]
    assert d.tun.written == [b"icmp"]
    assert d.counters["wire_out"] == len(outs) - 1 and d.counters["tun_out"] == 1


def test_reload_with_a_checker_bug_keeps_the_old_config(tmp_path, monkeypatch, caplog):
    import vpnd.config
    d, _ = make_daemon(tmp_path)
    before = d.config

    def bug(path):
        raise ValueError("secret-looking value 1234")

    monkeypatch.setattr(vpnd.config, "load_config", bug)
    with caplog.at_level(logging.ERROR, logger="vpnd"):
        with pytest.raises(CommandError, match="internal error"):
            d.reload()
    assert d.config is before
    assert "secret-looking" not in caplog.text


class CrashingIke:
    drops = 0

    def receive(self, data, local, remote, now):
        raise IndexError("core bug")

    def next_timer(self):
        return None


def test_ike_core_failures_are_counted_and_logged_once_a_second(tmp_path, caplog):
    d, _ = make_daemon(tmp_path)
    d.ike = CrashingIke()
    with caplog.at_level(logging.ERROR, logger="vpnd"):
        for _ in range(100):
            d._ike_receive(b"\x00" * 28, ("10.200.0.1", 500), ("10.200.0.2", 500))
    assert d.counters["loop_errors"] == 100
    assert sum("IKE core failed" in r.getMessage() for r in caplog.records) == 1


class TimerBugIke:
    def __init__(self):
        self.ticks = 0

    def handle_timer(self, now):
        self.ticks += 1
        raise KeyError("timer bug")

    def next_timer(self):
        if self.ticks:
            raise RuntimeError("next_timer bug")
        return None

    def child_activity(self, *a):
        raise AssertionError("not reached")


def test_failing_ike_timer_keeps_ticking(tmp_path):
    d, _ = make_daemon(tmp_path)
    d.ike = TimerBugIke()

    async def main():
        d.loop = asyncio.get_running_loop()
        d._now = lambda: d.loop.time() - 0.9  # ticks come every 0.1 s of loop time
        d._arm_timer()
        await asyncio.sleep(0.45)
        d.timer.cancel()

    asyncio.run(main())
    assert d.ike.ticks >= 2 and d.counters["loop_errors"] >= 2


class SilentIke:
    """A core that accepts a request and never answers."""

    def rekey(self, name, now, ike=False):
        return []

    def next_timer(self):
        return None


@pytest.mark.parametrize("ike,goal", [(True, "the IKE SA to be rekeyed"), (False, "the new CHILD_SA")])
def test_rekey_timeout_names_what_it_waited_for(tmp_path, ike, goal):
    d, _ = make_daemon(tmp_path)
    d.ike = SilentIke()

    async def main():
        d.loop = asyncio.get_running_loop()
        with pytest.raises(CommandError) as e:
            await d.cmd_rekey("site-b", ike=ike, timeout=0.05)
        assert str(e.value) == f"site-b: timed out after 0.05s waiting for {goal}"
        assert d._waiters == []

    asyncio.run(main())
