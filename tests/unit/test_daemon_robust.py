"""Daemon glue robustness (issue 7.5): the one loop timer under uvloop, and a failing action
that must not drop the rest of an IKE burst. No kernel: the sockets are fakes."""

import asyncio

import uvloop

from vpnd import esp
from vpnd.config import parse_config
from vpnd.daemon import Daemon
from vpnd.ike.actions import Event, SendDatagram


def make_daemon():
    cfg = parse_config({"connections": {"site-b": {
        "peer": "10.200.0.2", "local": "10.200.0.1", "psk": "a test key of some length",
        "local_ts": ["10.1.0.0/16"], "remote_ts": ["10.2.0.0/16"], "start": "none"}}})
    d = Daemon(cfg)
    d.dp = esp.DataPlane()
    d._apply_static_routes = lambda: None
    return d


class DueNowIke:
    """A core whose next deadline is always due now (many half-open SAs expiring together):
    uvloop's call_at then returns a plain Handle, which has no when()."""

    def __init__(self, loop):
        self.loop = loop
        self.received = []

    def receive(self, data, local, remote, now):
        self.received.append(data)
        return [Event("retransmit", "site-b", "x")]

    def next_timer(self):
        return self.loop.time()

    def handle_timer(self, now):
        return []

    def child_activity(self, *a):
        pass


class BurstWire:
    ike = object()
    ike_port = 500
    listen = "0.0.0.0"
    send_errors = 0

    def __init__(self, n):
        self.items = [(bytes([i]) * 28, ("10.200.0.2", 500), []) for i in range(n)]
        self.sent = []

    def recv_udp(self, sock, limit=16):
        items, self.items = self.items, []
        return items

    def send_ike(self, data, local, remote):
        if data == b"boom":
            raise OSError(101, "Network is unreachable")
        self.sent.append(data)


def test_timer_arming_under_uvloop_keeps_the_whole_ike_burst():
    d = make_daemon()

    async def main():
        d.loop = asyncio.get_running_loop()
        d.ike = DueNowIke(d.loop)
        d.wire = BurstWire(5)
        d.io.on_ike_socket()
        assert len(d.ike.received) == 5  # no datagram of the burst was dropped
        assert d.counters["loop_errors"] == 0
        d._arm_timer()  # re-arming a due-now timer again is fine too
        await asyncio.sleep(0.01)  # the timer fires and re-arms itself
        assert d.timer.handle is not None
        d.timer.cancel()

    uvloop.run(main())


class CountingIke(DueNowIke):
    """next_timer() looks at every SA in the real cores: count how often it is asked."""

    def __init__(self, loop):
        super().__init__(loop)
        self.asked = 0

    def next_timer(self):
        self.asked += 1
        return self.loop.time() + 30


def test_a_burst_rearms_the_timer_once():
    """Issue 8 (bench/dos): with 1000 half-open ISAKMP SAs, next_timer() per datagram made a
    Main Mode message-1 flood cost 20 ms a datagram and the configured peer waited seconds;
    a burst of 16 datagrams now re-arms the timer once, after the burst."""
    d = make_daemon()

    async def main():
        d.loop = asyncio.get_running_loop()
        d.ike = CountingIke(d.loop)
        d.wire = BurstWire(16)
        d.io.on_ike_socket()
        assert len(d.ike.received) == 16
        await asyncio.sleep(0)
        assert d.ike.asked == 1
        assert d.timer.handle is not None
        d.timer.cancel()

    uvloop.run(main())


def test_one_failing_action_does_not_drop_the_rest():
    d = make_daemon()

    async def main():
        d.loop = asyncio.get_running_loop()
        d.ike = DueNowIke(d.loop)
        d.wire = BurstWire(0)
        d._run_actions([SendDatagram(b"one", ("10.200.0.1", 500), ("10.200.0.2", 500)),
                        SendDatagram(b"boom", ("10.200.0.1", 500), ("10.200.0.2", 500)),
                        SendDatagram(b"two", ("10.200.0.1", 500), ("10.200.0.2", 500))])
        assert d.wire.sent == [b"one", b"two"]
        assert d.counters["loop_errors"] == 1
        await asyncio.sleep(0)  # the timer is re-armed once this turn of the loop is done
        d.timer.cancel()

    uvloop.run(main())


def test_debug_log_is_vpnds_not_pyroute2s():
    import logging
    from vpnd.daemon import setup_logging
    setup_logging("debug")
    try:
        assert logging.getLogger("vpnd").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("pyroute2.netlink").isEnabledFor(logging.INFO)
    finally:
        setup_logging("info")


def test_control_and_commands_do_not_import_the_daemon():
    """Issue 9: no control.py <-> daemon.py import cycle; commands live in vpnd/commands.py."""
    import subprocess
    import sys
    code = ("import sys, vpnd.control, vpnd.commands; "
            "assert 'vpnd.daemon' not in sys.modules, 'imports vpnd.daemon'")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
