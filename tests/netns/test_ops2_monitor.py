"""Issue 11: `vpnctl monitor --json` against a running vpnd (IKEv2, vpnd <-> vpnd): traffic
hitting the trap, the IKE SA and CHILD_SA coming up, a rekey by the peer, and the peer's
delete with its reason; Ctrl-C ends vpnctl cleanly."""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

from .test_ikev2_strongswan import PAIRS, ik2_topo, vpnds, wait_child  # noqa: F401
from .test_ikev2_vpnd import pair_confs
from .topology import HOST_B

pytestmark = [pytest.mark.netns]


class MonitorProc:
    def __init__(self, sock: str):
        self.p = subprocess.Popen(
            [sys.executable, "-c", "import sys; from vpnd.cli import vpnctl_main; sys.exit(vpnctl_main())",
             "--socket", sock, "monitor", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.q: queue.Queue = queue.Queue()
        self.seen: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def wait_subscribed(self, v, timeout: float = 30) -> None:
        """Until the daemon counts this monitor (status daemon.monitors)."""
        deadline = time.monotonic() + timeout
        while v.status()["daemon"].get("monitors", 0) < 1:
            assert self.p.poll() is None, self.p.stderr.read()
            assert time.monotonic() < deadline, "monitor never subscribed"
            time.sleep(0.05)

    def _read(self):
        for line in self.p.stdout:
            self.q.put(json.loads(line))

    def wait_for(self, pred, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        for e in self.seen:
            if pred(e):
                return e
        while time.monotonic() < deadline:
            try:
                e = self.q.get(timeout=0.5)
            except queue.Empty:
                continue
            self.seen.append(e)
            if pred(e):
                return e
        raise AssertionError(f"no such event; saw {[(e['event'], e['message']) for e in self.seen]}")


def test_monitor_shows_acquire_up_rekey_and_peers_down(ik2_topo, vpnds):
    topo = ik2_topo
    ike, esp = PAIRS[0]
    ca, cb = pair_confs(topo, ike=ike, esp=esp, a_start="trap")
    b = vpnds(topo, "gwb", cb)
    a = vpnds(topo, "gwa", ca)
    mon = MonitorProc(a.sock)
    try:
        mon.wait_subscribed(a)
        topo.wait_ping("hosta", HOST_B, timeout=20)  # traffic hits the trap
        acq = mon.wait_for(lambda e: e["event"] == "acquire")
        assert acq["connection"] == "site" and acq["dst"] == HOST_B
        mon.wait_for(lambda e: e["event"] == "ike_up" and e["connection"] == "site")
        up = mon.wait_for(lambda e: e["event"] == "child_up")
        first = wait_child(a)["child"]
        # the peer rekeys the CHILD_SA
        assert b.ctl("rekey", name="site", ike=False)["ok"]
        rk = mon.wait_for(lambda e: e["event"] == "child_rekeyed")
        assert rk["child_id"] != up["child_id"]
        mon.wait_for(lambda e: e["event"] == "child_down" and e.get("child_id") == up["child_id"])
        wait_child(a, not_spi=first["spi_in"])
        # the peer takes the tunnel down: a's monitor says so, with the peer's reason
        assert b.ctl("down", name="site")["ok"]
        down = mon.wait_for(lambda e: e["event"] in ("child_down", "ike_down")
                            and "peer" in e.get("reason", ""))
        assert down["connection"] == "site"
        text = json.dumps(mon.seen)
        assert a.config.read_text().split('psk: "')[1].split('"')[0] not in text  # no PSK
    finally:
        mon.p.send_signal(signal.SIGINT)  # Ctrl-C
        rc = mon.p.wait(10)
        err = mon.p.stderr.read()
    assert rc == 0, err
    assert "Traceback" not in err
    assert a.alive() and b.alive()


def test_monitor_shows_proposal_mismatch_with_both_sides(ik2_topo, vpnds):
    """The responder's monitor names what the peer offered and what is configured."""
    topo = ik2_topo
    ike = PAIRS[0][0]
    ca, cb = pair_confs(topo, ike=ike, esp="aes256gcm16")
    cb = cb.replace("esp: aes256gcm16", "esp: aes128-sha256")
    b = vpnds(topo, "gwb", cb)
    a = vpnds(topo, "gwa", ca)
    mon = MonitorProc(b.sock)
    try:
        mon.wait_subscribed(b)
        assert not a.ctl("up", name="site", timeout=15)["ok"]
        e = mon.wait_for(lambda e: e["event"] == "no_proposal")
        assert e["connection"] == "site"
        assert "aes256gcm16" in e["received"] and "aes128-sha256" in e["configured"], e
    finally:
        mon.p.send_signal(signal.SIGINT)
        assert mon.p.wait(10) == 0
