"""Issue 3's algorithm list against strongSwan: every encryption, PRF/integrity and DH group
of "What to build" negotiated with charon (kernel-libipsec) as the independent peer, with a
PFS group on the CHILD_SA, and a ping through each tunnel in both directions. The three
proposal pairs of the acceptance list run in test_ikev2_strongswan.py; these are the rest."""
from __future__ import annotations

import pytest

from tests.unit.test_ikev2_pair import ALGORITHM_MATRIX

from .test_ikev2_strongswan import charon_psk, vpnd_conf, vpnds, wait_child  # noqa: F401
from .topology import LAN_A, LAN_B, WAN_B, Topology

pytestmark = [pytest.mark.netns]


@pytest.fixture
def aud_topo():
    with Topology(prefix="aud") as t:
        yield t


def test_every_algorithm_with_strongswan(aud_topo, make_charon, vpnds):
    topo = aud_topo
    ch = make_charon(topo, "gwb")
    failed = []
    for ike, esp, desc in ALGORITHM_MATRIX:
        charon_psk(ch, ike=ike, esp=esp, gwa=topo.gwa_public)
        extra = "allow_legacy: true" if "md5" in ike else ""
        v = vpnds(topo, "gwa", vpnd_conf(topo, "gwa", local=topo.gwa_wan, peer=WAN_B, lts=LAN_A, rts=LAN_B,
                                         ike=ike, esp=esp, start="none", extra=extra))
        try:
            r = v.ctl("up", name="site")
            if not r["ok"]:
                failed.append(f"{ike}/{esp}: {r}")
                continue
            got = wait_child(v)
            sas = ch.wait_child("site")
            ok = (got["ike"]["proposal"] == desc and got["child"]["spi_out"] in sas
                  and topo.ping("hosta", topo.hostb_ip, count=3, interval=0.2).returncode == 0
                  and topo.ping("hostb", topo.hosta_ip, count=3, interval=0.2).returncode == 0)
            if not ok:
                failed.append(f"{ike}/{esp}: proposal {got['ike']['proposal']}, charon: {sas[-400:]}")
        finally:
            v.stop()
            ch.swanctl("--terminate", "--ike", "site", check=False)
    assert not failed, "\n".join(failed)
