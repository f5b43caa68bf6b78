"""Issue 11: `updown:` scripts, vpnd <-> vpnd IKEv2 in network namespaces: the documented
strongSwan variables arrive for up and down (none on a rekey), the script's output is in the
log, and a script that never ends is killed at updown_timeout without holding up traffic,
status or the next negotiation."""
from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from .test_ikev2_strongswan import PAIRS, ik2_topo, vpnds, wait_child  # noqa: F401
from .test_ikev2_vpnd import pair_confs
from .topology import LAN_A, LAN_B, WAN_B

pytestmark = [pytest.mark.netns]

DOCUMENTED = ("PLUTO_VERB", "PLUTO_CONNECTION", "PLUTO_PEER", "PLUTO_ME", "PLUTO_MY_CLIENT",
              "PLUTO_PEER_CLIENT", "PLUTO_MY_ID", "PLUTO_PEER_ID", "PLUTO_UNIQUEID",
              "PLUTO_REQID", "PLUTO_INTERFACE", "PLUTO_PROTO")


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def _envs(d: Path) -> list[dict]:
    out = []
    for f in sorted(d.glob("*.env"), key=lambda p: p.stat().st_mtime_ns):
        env = dict(line.split("=", 1) for line in f.read_text().splitlines() if "=" in line)
        out.append(env)
    return out


def _wait(pred, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def test_updown_gets_documented_environment(ik2_topo, vpnds):
    topo = ik2_topo
    work = Path(topo.workdir)
    out = work / "updown-out"
    out.mkdir()
    out.chmod(0o777)
    script = _script(work / "updown.sh",
                     f'env > "{out}/$(date +%s%N).$PLUTO_VERB.env"\necho "updown says $PLUTO_VERB"\n')
    ike, esp = PAIRS[0]
    ca, cb = pair_confs(topo, ike=ike, esp=esp, a_extra=f"updown: {script}")
    b = vpnds(topo, "gwb", cb)
    a = vpnds(topo, "gwa", ca)
    assert a.ctl("up", name="site")["ok"]
    first = wait_child(a)["child"]
    up = _wait(lambda: [e for e in _envs(out) if e.get("PLUTO_VERB") == "up-client"])[0]
    for k in DOCUMENTED:
        assert up.get(k), (k, up)
    assert up["PLUTO_CONNECTION"] == "site"
    assert up["PLUTO_PEER"] == WAN_B and up["PLUTO_ME"] == topo.gwa_wan
    assert up["PLUTO_MY_CLIENT"] == LAN_A and up["PLUTO_PEER_CLIENT"] == LAN_B
    assert up["PLUTO_INTERFACE"] == "vpnd0" and up["PLUTO_PROTO"] == "esp"
    assert up["PLUTO_REQID"].isdigit() and up["PLUTO_UNIQUEID"].isdigit()
    psk = a.config.read_text().split('psk: "')[1].split('"')[0]
    assert all(psk not in v for v in up.values())
    _wait(lambda: "updown says up-client" in a.log())
    # a rekey runs nothing
    assert b.ctl("rekey", name="site", ike=False)["ok"]
    wait_child(a, not_spi=first["spi_in"])
    time.sleep(1)
    assert len(_envs(out)) == 1, [e["PLUTO_VERB"] for e in _envs(out)]
    # the peer takes it down: down-client with the same selectors
    assert b.ctl("down", name="site")["ok"]
    down = _wait(lambda: [e for e in _envs(out) if e.get("PLUTO_VERB") == "down-client"])[0]
    assert down["PLUTO_MY_CLIENT"] == LAN_A and down["PLUTO_PEER_CLIENT"] == LAN_B
    assert down["PLUTO_CONNECTION"] == "site"


def test_updown_that_hangs_is_killed_without_blocking(ik2_topo, vpnds):
    topo = ik2_topo
    work = Path(topo.workdir)
    marker = work / "hang-started"
    script = _script(work / "hang.sh", f'echo started > "{marker}"\nexec sleep 100000\n')
    ike, esp = PAIRS[0]
    ca, cb = pair_confs(topo, ike=ike, esp=esp, a_extra=f"updown: {script}\nupdown_timeout: 3")
    b = vpnds(topo, "gwb", cb)
    a = vpnds(topo, "gwa", ca)
    assert a.ctl("up", name="site")["ok"]
    _wait(lambda: marker.exists())
    # while the script hangs: status answers and traffic flows
    wait_child(a)
    topo.wait_ping("hosta", topo.hostb_ip, timeout=10)
    assert "killed" not in a.log()
    _wait(lambda: "updown up-client killed after 3 s" in a.log(), timeout=30)
    # nothing left running in gwa's namespace
    ps = topo.run("gwa", ["ps", "-eo", "args"]).stdout.decode()
    assert "sleep 100000" not in ps
    assert a.alive()
