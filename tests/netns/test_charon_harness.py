"""The strongSwan harness works on this machine: charon<->charon, traffic through the tunnel.

This proves the harness (and the machine: kernel-libipsec userspace ESP) before vpnd is
tested against charon; if it fails, vpnd<->charon failures are not vpnd's.
"""
import pytest

from .charon import psk_connection, psk_secret, swanctl_conf
from .topology import HOST_A, HOST_B, LAN_A, LAN_B

pytestmark = [pytest.mark.netns, pytest.mark.strongswan]

PSK = "harness test key 0123456789"


def _site(topo, side, version, ike, esp):
    local, remote = (topo.gwa_wan, topo.gwb_wan) if side == "a" else (topo.gwb_wan, topo.gwa_public)
    lts, rts = (LAN_A, LAN_B) if side == "a" else (LAN_B, LAN_A)
    # with a NAT gwb sees gwa's NATed address but gwa still names itself by its own one
    lid, rid = (topo.gwa_wan, topo.gwb_wan) if side == "a" else (topo.gwb_wan, topo.gwa_wan)
    conn = psk_connection(local=local, remote=remote, local_ts=lts, remote_ts=rts, ike=ike,
                          esp=esp, version=version, child="net", local_id=lid, remote_id=rid)
    return swanctl_conf({"site": conn}, {"ike-site": psk_secret(PSK, lid, rid)})


def _tunnel(topo, make_charon, version, ike, esp):
    a, b = make_charon(topo, "gwa"), make_charon(topo, "gwb")
    a.load(_site(topo, "a", version, ike, esp))
    b.load(_site(topo, "b", version, ike, esp))
    a.initiate("net")
    b.wait_child("net")
    return a, b


@pytest.mark.parametrize("version", [2, 1], ids=["ikev2", "ikev1-main"])
def test_charon_to_charon_psk(topo, make_charon, version):
    a, b = _tunnel(topo, make_charon, version, "aes128-sha256-modp2048", "aes128gcm16")
    sas = a.list_sas()
    assert f"IKEv{version}" in sas and "ESTABLISHED" in sas
    assert "AES_GCM_16-128" in sas and "INSTALLED" in sas
    # kernel-libipsec always UDP-encapsulates (notes): check it on the wire too
    with topo.capture("gwb", "wan", "wan.pcap", "udp port 4500 or esp") as cap:
        assert topo.ping("hosta", HOST_B, count=3, interval=0.2).returncode == 0
    assert cap.path.stat().st_size > 24 + 3 * 100, "no encrypted traffic seen on the WAN"
    res = topo.tcp_transfer("hosta", "hostb", HOST_B, mbytes=2)
    assert res["up_ok"] and res["down_ok"]
    assert topo.ping("hostb", HOST_A).returncode == 0


def test_charon_through_nat(topo_nat, make_charon):
    a, b = _tunnel(topo_nat, make_charon, 2, "aes128-sha256-modp2048", "aes128gcm16")
    sas = b.list_sas()
    assert "10.200.0.254[4500]" in sas, sas   # gwb talks to the NAT's address, floated to 4500
    assert topo_nat.ping("hosta", HOST_B, count=2, interval=0.2).returncode == 0
