"""Issue 11: systemd STATUS= kept current and the watchdog, against a running vpnd with an
sd_notify fake (a unix datagram socket in NOTIFY_SOCKET): READY=1, STATUS= changing as the
tunnel goes down and up, WATCHDOG=1 sent periodically, and no pings from a stopped
(wedged) daemon."""
from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest

from .test_ikev2_strongswan import ik2_topo  # noqa: F401
from .vpnd_proc import Vpnd, manual_pair

pytestmark = [pytest.mark.netns]


class NotifyFake:
    def __init__(self, path: Path):
        self.path = str(path)
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.s.bind(self.path)
        path.chmod(0o777)
        self.got: list[str] = []

    def collect(self, seconds: float) -> list[str]:
        out = []
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.s.settimeout(left)
            try:
                out.append(self.s.recv(4096).decode())
            except socket.timeout:
                break
        self.got += out
        return out

    def wait_for(self, pred, timeout: float = 20) -> str:
        for m in self.got:
            if pred(m):
                return m
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.collect(0.2):
                if pred(m):
                    return m
        raise AssertionError(f"no such notification; got {self.got[-20:]}")


def test_status_and_watchdog_with_sd_notify_fake(ik2_topo):
    topo = ik2_topo
    fake = NotifyFake(Path(topo.workdir) / "notify.sock")
    ca, cb = manual_pair(topo)
    a, b = Vpnd(topo, "gwa", ca), Vpnd(topo, "gwb", cb)
    try:
        b.start()
        a.start(env={"NOTIFY_SOCKET": fake.path, "WATCHDOG_USEC": "400000"})
        fake.wait_for(lambda m: "READY=1" in m)
        fake.wait_for(lambda m: m == "STATUS=1/1 connections up, 1 SAs")
        # the watchdog pings, from the running event loop
        pings = [m for m in fake.collect(2.0) if m == "WATCHDOG=1"]
        assert len(pings) >= 2, fake.got[-10:]
        # down and up again: STATUS= follows
        assert a.ctl("down", name="tunnel")["ok"]
        fake.wait_for(lambda m: m == "STATUS=0/1 connections up, 0 SAs")
        assert a.ctl("up", name="tunnel")["ok"]
        fake.got.clear()
        fake.wait_for(lambda m: m == "STATUS=1/1 connections up, 1 SAs")
        topo.wait_ping("hosta", topo.hostb_ip, timeout=10)
        # a wedged daemon (stopped) sends no ping: systemd's WatchdogSec would kill it
        a.signal(signal.SIGSTOP)
        try:
            fake.collect(0.3)  # what was already queued
            assert [m for m in fake.collect(2.0) if m == "WATCHDOG=1"] == []
        finally:
            a.signal(signal.SIGCONT)
        fake.wait_for(lambda m: m == "WATCHDOG=1")  # and again once it runs
    finally:
        for v in (a, b):
            if v.proc is not None and v.alive():
                v.stop()
        fake.s.close()
