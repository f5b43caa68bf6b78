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


def _ios_rsa_encr(local: str, peer: str, lts: str, rts: str, peer_key_string: str) -> str:
    net = lambda n: n.split("/")[0]  # noqa: E731
    return f"""hostname GW
crypto isakmp policy 10
 encryption aes 128
 hash sha256
 authentication rsa-encr
 group 14
crypto key pubkey-chain rsa
 addressed-key {peer} encryption
  address {peer}
  key-string
{peer_key_string}  quit
crypto ipsec transform-set TS esp-aes 128 esp-sha256-hmac
crypto map M 10 ipsec-isakmp
 set peer {peer}
 set transform-set TS
 match address 120
interface Gi0/0
 ip address {local} 255.255.255.0
 crypto map M
access-list 120 permit ip {net(lts)} 0.0.255.255 {net(rts)} 0.0.255.255
"""


def test_pubkey_chain_rsa_encr_between_two_imported_vpnds(ios_topo):
    """The seed's `crypto key pubkey-chain rsa` + `authentication rsa-encr` on both ends:
    keys made by vpnctl pki, exchanged as IOS key-strings, both configs made by import-ios,
    tunnel up with traffic."""
    topo = ios_topo
    work = Path(topo.workdir)
    vpnctl = str(BIN / "vpnctl")
    for gw in ("gwa", "gwb"):
        subprocess.run([vpnctl, "pki", "genkey", "--size", "2048", "--out", work / f"{gw}.key"],
                       check=True)
    ks = {gw: subprocess.run([vpnctl, "pki", "pub", "--in", work / f"{gw}.key", "--format",
                              "key-string"], check=True, capture_output=True, text=True).stdout
          for gw in ("gwa", "gwb")}
    sides = {"gwa": (WAN_A, WAN_B, LAN_A, LAN_B, ks["gwb"]),
             "gwb": (WAN_B, WAN_A, LAN_B, LAN_A, ks["gwa"])}
    daemons = []
    try:
        for gw, (local, peer, lts, rts, peer_ks) in sides.items():
            (work / f"{gw}-ios.txt").write_text(_ios_rsa_encr(local, peer, lts, rts, peer_ks))
            r = subprocess.run([vpnctl, "import-ios", str(work / f"{gw}-ios.txt"), "--keys-dir",
                                str(work / f"{gw}-keys"), "--local-key", str(work / f"{gw}.key")],
                               capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            doc = yaml.safe_load(r.stdout)
            conn = doc["connections"]["m-10"]
            assert conn["auth"]["rsa_encr"]["key"] == str(work / f"{gw}.key")
            doc["daemon"].update({"tun": "vpnd0", "control_socket": str(work / f"{gw}.sock"),
                                  "log_level": "debug"})
            conn["start"] = "start" if gw == "gwa" else "none"
            v = Vpnd(topo, gw, yaml.safe_dump(doc))
            daemons.append(v)
            v.start()
        got = wait_child(daemons[0])
        assert got["ike"]["version"] == 1
        check_traffic(topo, mbytes=1)
    except BaseException:
        for v in daemons:
            print(v.role, v.log()[-4000:])
        raise
    finally:
        for v in daemons:
            if v.alive():
                v.stop()
