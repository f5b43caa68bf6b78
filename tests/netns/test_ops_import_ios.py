"""issue 11: an IOS configuration converted by `vpnctl import-ios` brings up a tunnel
against strongSwan (IKEv1 Main Mode, PSK, isakmp policy list, transform set, PFS,
match address ACL, keepalive) in network namespaces, with traffic both ways."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .charon import psk_connection, psk_secret, swanctl_conf
from .test_ikev1_strongswan import _charon, check_traffic, wait_child
from .topology import LAN_A, LAN_B, WAN_A, WAN_B, Topology
from .vpnd_proc import Vpnd

pytestmark = [pytest.mark.netns, pytest.mark.strongswan]

BIN = Path(sys.executable).parent
PSK = "imported from ios 0123456789"

IOS = f"""hostname GW-A
!
crypto isakmp policy 10
 encryption aes 256
 hash sha
 authentication pre-share
 group 14
 lifetime 28800
crypto isakmp policy 20
 encryption 3des
 hash md5
 authentication pre-share
 group 5
crypto isakmp key {PSK.replace(' ', '-')} address {WAN_B}
crypto isakmp keepalive 10 3 periodic
crypto isakmp nat keepalive 20
crypto isakmp aggressive-mode disable
!
crypto ipsec transform-set TS esp-aes 256 esp-sha-hmac
 mode tunnel
!
crypto map SITE 10 ipsec-isakmp
 set peer {WAN_B}
 set transform-set TS
 set pfs group14
 set security-association lifetime seconds 3600
 match address 110
!
interface GigabitEthernet0/0
 ip address {WAN_A} 255.255.255.0
 crypto map SITE
!
access-list 110 permit ip 10.1.0.0 0.0.255.255 10.2.0.0 0.0.255.255
"""


@pytest.fixture
def ios_topo():
    with Topology(prefix="opi") as t:
        yield t


def test_imported_ios_config_against_strongswan(ios_topo, make_charon):
    topo = ios_topo
    work = Path(topo.workdir)
    (work / "running-config.txt").write_text(IOS)
    with open(work / "imported.yaml", "w") as f:
        r = subprocess.run([str(BIN / "vpnctl"), "import-ios", str(work / "running-config.txt")],
                           stdout=f, stderr=subprocess.PIPE, text=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    doc = yaml.safe_load((work / "imported.yaml").read_text())
    # what an operator adds by hand: where this vpnd's socket and TUN are, and to start now
    doc["daemon"].update({"tun": "vpnd0", "control_socket": str(work / "gwa.sock"),
                          "log_level": "debug"})
    doc["connections"]["site-10"]["start"] = "start"
    ch = _charon(make_charon, topo)
    conn = psk_connection(local=WAN_B, remote=WAN_A, local_ts=LAN_B, remote_ts=LAN_A,
                          ike="aes256-sha1-modp2048", esp="aes256-sha1-modp2048", version=1,
                          child="site")
    ch.load(swanctl_conf({"site": conn}, {"ike-site": psk_secret(PSK.replace(" ", "-"))}))
    v = Vpnd(topo, "gwa", yaml.safe_dump(doc))
    try:
        v.start()
        got = wait_child(v)
        assert got["ike"]["proposal"].startswith("AES_CBC-256/HMAC_SHA1")
        assert got["child"]["local_ts"] == [LAN_A] and got["child"]["remote_ts"] == [LAN_B]
        sas = ch.wait_child("site")
        assert "MODP_2048" in sas  # the PFS group of `set pfs group14`
        check_traffic(topo, mbytes=1)
    except BaseException:
        print(v.log()[-8000:])
        raise
    finally:
        if v.alive():
            v.stop()
