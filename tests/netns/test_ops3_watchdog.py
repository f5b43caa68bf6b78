"""Issue 11 acceptance: "the watchdog kills a wedged daemon", under an sd_notify fake that
does what systemd does with `WatchdogSec=`: it expects WATCHDOG=1 at least once per
interval and sends SIGABRT (systemd's default WatchdogSignal) when one is missing.

The wedge is a real one, not SIGSTOP: vpnd logs to a pipe that nobody reads (journald
stuck, a full terminal), at debug, while a client keeps asking for `vpnctl status` (one
debug line each); once the pipe is full the event loop blocks in a log write and
everything else in the process (threads) still runs. A watchdog pinged from a thread would keep the daemon alive here; vpnd's pings
come from the event loop, so the fake kills it. Before the wedge, pings flow."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from .topology import LAN_A, LAN_B, WAN_A, WAN_B, Topology
from vpnd.control import ControlClientError, request

from .vpnd_proc import Vpnd, ike_config

pytestmark = [pytest.mark.netns]

INTERVAL = 1.0  # WatchdogSec=1s (WATCHDOG_USEC)

def ask_status(sock: str, stop: threading.Event) -> None:
    """`vpnctl status` again and again (a client polling it, a monitoring script)."""
    while not stop.is_set():
        try:
            request(sock, {"command": "status"}, timeout=0.5)
        except (ControlClientError, OSError):
            time.sleep(0.05)


@pytest.fixture
def log3_wd_topo():
    with Topology(prefix="log3w") as t:
        yield t


class Supervisor:
    """The service manager's side of sd_notify(3) and WatchdogSec=."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.s.bind(self.path)
        path.chmod(0o777)
        self.pings = 0
        self.ready = False

    def watch(self, proc: subprocess.Popen, limit: float) -> str:
        """Read notifications until `limit` s; on a missing ping (WatchdogSec) send SIGABRT.
        Returns "killed" or "alive"."""
        last = time.monotonic()
        deadline = last + limit
        while time.monotonic() < deadline:
            self.s.settimeout(0.1)
            try:
                for m in self.s.recv(4096).decode().split("\n"):
                    if m == "READY=1":
                        self.ready = True
                    elif m == "WATCHDOG=1":
                        self.pings += 1
                        last = time.monotonic()
            except socket.timeout:
                pass
            if self.ready and time.monotonic() - last > INTERVAL:
                proc.send_signal(signal.SIGABRT)
                return "killed"
        return "alive"


def test_watchdog_kills_a_daemon_whose_event_loop_is_wedged(log3_wd_topo):
    topo = log3_wd_topo
    sup = Supervisor(Path(topo.workdir) / "notify.sock")
    conf = ike_config(topo, "gwa", version=2, psk="watchdog test key 0123", local=WAN_A, peer=WAN_B,
                      lts=LAN_A, rts=LAN_B, ike="aes128-sha256-modp2048", esp="aes128gcm16", start="none")
    v = Vpnd(topo, "gwa", conf)
    env = {**Vpnd.env(), "NOTIFY_SOCKET": sup.path, "WATCHDOG_USEC": str(int(INTERVAL * 1e6))}
    # stderr: a pipe nobody reads (64 KiB in the kernel, then write() blocks)
    proc = topo.popen("gwa", v.argv(), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # healthy: READY=1, then pings every INTERVAL/2, for a few intervals
        deadline = time.monotonic() + 30
        while not sup.ready and time.monotonic() < deadline:
            assert sup.watch(proc, 0.2) == "alive" and proc.poll() is None
        sup.pings = 0
        assert sup.watch(proc, 4 * INTERVAL) == "alive", "no pings from a healthy vpnd"
        assert sup.ready and sup.pings >= 4, sup.pings
        assert proc.poll() is None
        # the wedge: its debug lines fill the log pipe
        stop = threading.Event()
        client = threading.Thread(target=ask_status, args=(v.sock, stop), daemon=True)
        client.start()
        try:
            assert sup.watch(proc, 40) == "killed", "vpnd kept pinging with its log pipe full"
        finally:
            stop.set()
            client.join(10)
        assert proc.wait(20) == -signal.SIGABRT
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        sup.s.close()
        os.unlink(sup.path)
