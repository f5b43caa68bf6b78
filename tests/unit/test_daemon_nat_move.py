"""Issue 7.6: a NAT mapping change (UpdateChildAddresses) moves the child's SAs to the new
addresses with all their state: sequence numbers, byte/packet volume, soft/hard expiry
flags, the replay window and the outer IP ID counter."""

import dataclasses
import ipaddress
import struct

from vpnd import esp
from vpnd.config import parse_config
from vpnd.daemon import Daemon
from vpnd.ike.actions import ChildKeys, InstallChildSA, UpdateChildAddresses

LAN_A = ipaddress.ip_network("10.1.0.0/16")
LAN_B = ipaddress.ip_network("10.2.0.0/16")


def packet(payload=b"x" * 1000) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, 17, 0,
                      bytes([10, 1, 0, 10]), bytes([10, 2, 0, 10]))
    return hdr + payload


class FakeIke:
    def __init__(self):
        self.expiring = []

    def child_expiring(self, child_id, hard, now):
        self.expiring.append((child_id, hard))
        return []

    def next_timer(self):
        return None


def make_daemon():
    cfg = parse_config({"connections": {"site-b": {
        "peer": "10.200.0.2", "local": "10.200.0.1", "psk": "a test key of some length",
        "local_ts": ["10.1.0.0/16"], "remote_ts": ["10.2.0.0/16"], "start": "none"}}})
    d = Daemon(cfg)
    d.dp = esp.DataPlane()
    d.ike = FakeIke()
    d._apply_static_routes = lambda: None
    return d


def install(**kw):
    key = bytes(range(20))
    act = InstallChildSA(
        connection="site-b", child_id=7, ike_id=1, mode="tunnel",
        local=("10.200.0.1", 500), remote=("10.200.0.2", 500), udp_encap=False, esn=False,
        replay_window=64, local_ts=(LAN_A,), remote_ts=(LAN_B,),
        inbound=(ChildKeys(0x1111, "esp", "aes128gcm16", None, key),),
        outbound=(ChildKeys(0x2222, "esp", "aes128gcm16", None, key),),
        proposal="AES_GCM_16-128", soft_kilobytes=4, hard_kilobytes=8)
    return dataclasses.replace(act, **kw)


def send(d, n):
    outs = []
    for _ in range(n):
        outs.append(d.dp.encap(packet()))
    d._drain_events()
    return outs


def test_nat_move_keeps_every_piece_of_sa_state():
    d = make_daemon()
    d._run_actions([install()], rearm=False)
    outs = send(d, 5)  # 5000 bytes: past the soft limit (4 KiB), not the hard one
    assert d.ike.expiring == [(7, False)]
    ident_before = struct.unpack("!H", outs[-1][2][4:6])[0]
    child = d.driver.sas[7]  # the data plane SA objects of child 7
    sa_out = child.outbound[0]
    sa_in = child.inbound[0]
    sa_in.rp_top, sa_in.rp_bitmap, sa_in.packets_in = 40, 0b1011, 3
    d._run_actions([UpdateChildAddresses(7, ("10.200.0.1", 4500), ("10.200.0.99", 4501), True)],
                   rearm=False)
    child = d.driver.sas[7]  # the data plane SA objects of child 7
    out = child.outbound[0]
    assert out.seq == 5 and out.bytes_out == sa_out.bytes_out and out.packets_out == 5
    assert out.soft_fired and not out.hard_fired
    assert child.inbound[0].rp_top == 40 and child.inbound[0].rp_bitmap == 0b1011
    assert child.inbound[0].packets_in == 3
    r = d.dp.encap(packet())
    assert r[0] == "udp" and r[1] == ("10.200.0.99", 4501)
    assert struct.unpack("!II", r[2][:8]) == (0x2222, 6)
    d._drain_events()
    assert d.ike.expiring == [(7, False)]  # the soft expiry does not fire a second time
    # past the hard limit: reported once, and the SA does not send again after another move
    send(d, 3)
    assert d.ike.expiring == [(7, False), (7, True)]
    d._run_actions([UpdateChildAddresses(7, ("10.200.0.1", 500), ("10.200.0.2", 500), False)],
                   rearm=False)
    assert d.dp.encap(packet()) is None
    d._drain_events()
    assert d.ike.expiring == [(7, False), (7, True)]
    assert d.children[7].action.remote == ("10.200.0.2", 500)


def test_nat_move_keeps_the_outer_ip_id_counter():
    d = make_daemon()
    d._run_actions([install(soft_kilobytes=0, hard_kilobytes=0)], rearm=False)
    outs = send(d, 3)
    ident = struct.unpack("!H", outs[-1][2][4:6])[0]
    d._run_actions([UpdateChildAddresses(7, ("10.200.0.1", 500), ("10.200.0.98", 500), False)],
                   rearm=False)
    r = d.dp.encap(packet())
    assert r[0] == "raw" and r[1] == "10.200.0.98"
    assert r[2][16:20] == bytes([10, 200, 0, 98])
    assert struct.unpack("!H", r[2][4:6])[0] == ident + 1  # RFC 6864: no ID reused
    assert struct.unpack("!II", r[2][20:28]) == (0x2222, 4)
