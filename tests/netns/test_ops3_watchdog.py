"""Issue 11 acceptance: "the watchdog kills a wedged daemon", under an sd_notify fake that
does what systemd does with `WatchdogSec=`: it expects WATCHDOG=1 at least once per
interval and sends SIGABRT (systemd's default WatchdogSignal) when one is missing.

The wedge is a real one, not SIGSTOP: vpnd logs to a pipe that nobody reads (journald
stuck, a full terminal), at debug, while a peer sends it IKE datagrams; once the pipe is
full the event loop blocks in a log write and everything else in the process (threads)
still runs. A watchdog pinged from a thread would keep the daemon alive here; vpnd's pings
come from the event loop, so the fake kills it. Before the wedge, pings flow."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .topology import LAN_A, LAN_B, WAN_A, WAN_B, Topology
from .vpnd_proc import Vpnd, ike_config

pytestmark = [pytest.mark.netns]

INTERVAL = 1.0  # WatchdogSec=1s (WATCHDOG_USEC)

# a peer's flood of IKEv2-looking datagrams (valid header, junk SPI): each one is a
# `received packet` line at debug, and nothing that an SA would answer
FLOOD = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
hdr = bytes(8) * 2 + bytes([33, 0x20, 35, 0x08]) + bytes(4) + (60).to_bytes(4, "big")
end = time.monotonic() + float(sys.argv[2])
n = 0
while time.monotonic() < end:
    s.sendto(hdr + n.to_bytes(4, "big") + bytes(28), (sys.argv[1], 500))
    n += 1
    if n % 200 == 0:
        time.sleep(0.01)
"""


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
        # the wedge: a peer's datagrams fill the log pipe
        flood = topo.popen("gwb", [sys.executable, "-c", FLOOD, WAN_A, "30"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert sup.watch(proc, 40) == "killed", "vpnd kept pinging with its log pipe full"
        finally:
            flood.kill()
            flood.wait(10)
        assert proc.wait(20) == -signal.SIGABRT
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        sup.s.close()
        os.unlink(sup.path)
