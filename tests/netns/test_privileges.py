"""Issue 8.13: vpnd started as root drops to daemon.user after set-up, keeping only
CAP_NET_ADMIN, CAP_NET_RAW and CAP_NET_BIND_SERVICE, and still does everything it did:
traffic, CHILD_SA and IKE SA rekeys, reload, vpnctl, a clean stop."""
from __future__ import annotations

import os
import time

import pytest

from .test_ikev2_strongswan import PAIRS, ik2_topo, vpnds, wait_child  # noqa: F401
from .test_ikev2_vpnd import pair_confs

pytestmark = [pytest.mark.netns]

KEPT_CAPS = (1 << 10) | (1 << 12) | (1 << 13)  # NET_BIND_SERVICE, NET_ADMIN, NET_RAW


def proc_status(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.split()
    return out


def test_drops_to_daemon_user_and_keeps_working(ik2_topo, vpnds):
    topo = ik2_topo
    # the unprivileged daemon must reach its config again for reload
    os.chmod(topo.workdir, 0o711)
    ike, esp = PAIRS[0]
    ca, cb = pair_confs(topo, ike=ike, esp=esp)
    ca = ca.replace("daemon:\n", "daemon:\n  user: nobody\n", 1)
    b = vpnds(topo, "gwb", cb)
    a = vpnds(topo, "gwa", ca)
    os.chmod(a.config, 0o644)
    st = proc_status(a.proc.pid)
    assert st["Uid"] == ["65534"] * 4 and st["Gid"] == ["65534"] * 4, st["Uid"]
    assert int(st["CapEff"][0], 16) == KEPT_CAPS and int(st["CapPrm"][0], 16) == KEPT_CAPS
    assert int(st["CapBnd"][0], 16) == KEPT_CAPS and int(st["CapInh"][0], 16) == 0
    assert int(st["CapAmb"][0], 16) == 0 and st["NoNewPrivs"] == ["1"]
    assert "running as user nobody (uid 65534)" in a.log()

    assert a.ctl("up", name="site")["ok"]
    first = wait_child(a)
    topo.check_traffic()
    # CHILD_SA rekey, then IKE SA rekey, both as the unprivileged daemon
    assert a.ctl("rekey", name="site")["ok"]
    second = wait_child(a, not_spi=first["child"]["spi_in"])
    assert a.ctl("rekey", name="site", ike=True)["ok"]
    deadline = time.monotonic() + 20
    while wait_child(a)["ike"]["spi_i"] == second["ike"]["spi_i"]:
        assert time.monotonic() < deadline, a.log()[-3000:]
        time.sleep(0.1)
    topo.wait_ping("hosta", topo.hostb_ip)
    # reload re-reads the config as nobody; a vpnctl down/up goes through routes (netlink)
    assert a.ctl("reload")["ok"], a.log()[-3000:]
    assert a.ctl("down", name="site")["ok"]
    assert a.ctl("up", name="site")["ok"]
    wait_child(a)
    topo.check_traffic()
    assert a.stop() == 0
    log = a.log()
    assert "Traceback" not in log and "Permission denied" not in log, log[-3000:]
    # teardown removed its routes: netlink still had CAP_NET_ADMIN (a thread that lived
    # through the uid switch would have lost it: "Operation not permitted")
    assert "not permitted" not in log, log[-3000:]


def test_stays_root_with_a_warning_when_there_is_no_user(ik2_topo, vpnds):
    import pwd
    try:
        pwd.getpwnam("vpnd")
        pytest.skip("a user 'vpnd' exists here: the default drops to it")
    except KeyError:
        pass
    topo = ik2_topo
    ike, esp = PAIRS[0]
    ca, _ = pair_confs(topo, ike=ike, esp=esp)
    a = vpnds(topo, "gwa", ca)
    assert proc_status(a.proc.pid)["Uid"][0] == "0"
    assert "running as root: create the system user 'vpnd'" in a.log()
