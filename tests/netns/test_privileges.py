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


def test_certificates_as_an_unprivileged_daemon(ik2_topo, vpnds):
    """The key file stays root-only (mode 600 in a 700 directory): the IKE core signs with
    what the config loader read at start, never opening the file as nobody; a reload that
    cannot read it fails cleanly and the old configuration keeps running."""
    from pathlib import Path

    from .test_ikev2_strongswan import DN_A, DN_B, _pki
    topo = ik2_topo
    pki = _pki(Path(topo.workdir), "ecdsa256")
    os.chmod(pki["gw-a"][1], 0o600)

    def auth(me, other_dn):
        return (f"    auth: {{cert: {pki[me][0]}, key: {pki[me][1]}, ca: {pki['ca']}}}\n"
                f"    remote_id: \"{other_dn}\"")

    ca, cb = pair_confs(topo, ike=PAIRS[1][0], esp=PAIRS[1][1], a_auth=auth("gw-a", DN_B),
                        b_auth=auth("gw-b", DN_A))
    b = vpnds(topo, "gwb", cb)
    a = vpnds(topo, "gwa", ca.replace("daemon:\n", "daemon:\n  user: nobody\n", 1))
    assert proc_status(a.proc.pid)["Uid"][0] == "65534"
    assert "reload will fail:" in a.log()  # named at start: the config and key are root's
    assert a.ctl("up", name="site")["ok"], a.log()[-3000:]
    assert wait_child(b)["ike"]["remote_id"] == DN_A
    topo.check_traffic()
    r = a.ctl("reload")
    assert not r["ok"] and "cannot read" in r["error"] and "Permission denied" in r["error"], r
    assert a.ctl("rekey", name="site", ike=True)["ok"]  # signs again after the failed reload
    topo.wait_ping("hosta", topo.hostb_ip)
