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


class Stub:
    def fileno(self):
        return 99


def make_daemon(tmp_path, text=GOOD):
    path = tmp_path / "vpnd.yaml"
    path.write_text(text)
    from vpnd.config import load_config
    d = Daemon(load_config(path), str(path))
    d.dp = esp.DataPlane()
    d._apply_static_routes = lambda: None
    return d, path


def test_failing_reader_is_counted_and_logged_once_a_second(tmp_path, caplog):
    d, _ = make_daemon(tmp_path)

    def boom():
        raise ValueError("a bug on the hot path")

    with caplog.at_level(logging.ERROR, logger="vpnd"):
        for _ in range(5):
            d._guarded(boom)
    assert d.counters["loop_errors"] == 5
    assert sum("error in boom" in r.getMessage() for r in caplog.records) == 1


def test_tun_gone_stops_the_daemon_with_exit_2(tmp_path):
    d, _ = make_daemon(tmp_path)
    removed = []

    async def main():
        d.loop = asyncio.get_running_loop()
        d._stop = d.loop.create_future()
        d.loop.remove_reader = lambda fd: removed.append(fd)
        d.tun = Stub()

        def gone():
            raise TunGone("TUN device vpnd0 was removed")

        d._guarded(gone)
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

    monkeypatch.setattr(d, "_reload_daemon_section", bad)
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
    with caplog.at_level(logging.WARNING, logger="vpnd.routes"):
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

