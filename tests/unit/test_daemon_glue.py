"""The daemon's handling of IKE actions against a real DataPlane, without the kernel:
make-before-break rekeys, deletes, peers that move (UpdateChildAddresses), trap policies
and the acquire queue, and the status merge. The kernel parts (TUN, sockets, routes) are
left unset; the netns tests cover them."""

import ipaddress
import struct

import pytest

from vpnd import esp
from vpnd.config import parse_config
from vpnd.daemon import Daemon
from vpnd.ike.actions import ChildKeys, DeleteChildSA, InstallChildSA, UpdateChildAddresses

LAN_A = ipaddress.ip_network("10.1.0.0/16")
LAN_B = ipaddress.ip_network("10.2.0.0/16")


def packet(src="10.1.0.10", dst="10.2.0.10", payload=b"x" * 32) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, 17, 0,
                      ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    return hdr + payload


def install(child_id, spi_in, spi_out, replaces=None, udp=False, remote=("10.200.0.2", 500)):
    key = bytes(range(20))
    return InstallChildSA(
        connection="site-b", child_id=child_id, ike_id=1, mode="tunnel",
        local=("10.200.0.1", 4500 if udp else 500), remote=remote, udp_encap=udp, esn=False,
        replay_window=64, local_ts=(LAN_A,), remote_ts=(LAN_B,),
        inbound=(ChildKeys(spi_in, "esp", "aes128gcm16", None, key),),
        outbound=(ChildKeys(spi_out, "esp", "aes128gcm16", None, key),),
        proposal="AES_GCM_16-128", replaces=replaces)


class FakeIke:
    """Records what the daemon asks of the IKE core."""

    def __init__(self):
        self.calls = []

    def acquire(self, name, pkt, now):
        self.calls.append(("acquire", name, pkt))
        return []

    def child_expiring(self, child_id, hard, now):
        self.calls.append(("expiring", child_id, hard))
        return []

    def unknown_spi(self, spi, remote, now):
        self.calls.append(("unknown_spi", spi, remote))
        return []

    def next_timer(self):
        return None

    def install_failed(self, child_id):
        self.calls.append(("install_failed", child_id))


@pytest.fixture
def daemon():
    cfg = parse_config({"connections": {"site-b": {
        "peer": "10.200.0.2", "local": "10.200.0.1", "psk": "a test key of some length",
        "local_ts": ["10.1.0.0/16"], "remote_ts": ["10.2.0.0/16"], "start": "trap"}}})
    d = Daemon(cfg)
    d.dp = esp.DataPlane()
    d.ike = FakeIke()
    d._apply_static_routes = lambda: None  # no RouteManager without the kernel
    return d


def spi_of(out) -> int:
    kind = out[0]
    body = out[2]
    if kind == "raw":
        body = body[(body[0] & 0x0F) * 4:]
    return struct.unpack("!II", body[:8])


def test_make_before_break_and_delete(daemon):
    daemon._run_actions([install(1, 0x1111, 0x2222)], rearm=False)
    out = daemon.dp.encap(packet())
    assert out[0] == "raw" and out[1] == "10.200.0.2" and spi_of(out) == (0x2222, 1)
    # rekey: the new child takes the outbound traffic at once, the old inbound stays
    daemon._run_actions([install(2, 0x3333, 0x4444, replaces=1)], rearm=False)
    assert spi_of(daemon.dp.encap(packet())) == (0x4444, 1)
    assert (50, 0x1111) in daemon.dp.sad and (50, 0x3333) in daemon.dp.sad
    daemon._run_actions([DeleteChildSA(1)], rearm=False)
    assert (50, 0x1111) not in daemon.dp.sad
    assert spi_of(daemon.dp.encap(packet())) == (0x4444, 2)  # the new policy survived
    daemon._run_actions([DeleteChildSA(2)], rearm=False)
    assert daemon.children == {} and daemon.dp.sad == {}


def test_peer_moves_to_udp_keeps_sequence(daemon):
    daemon._run_actions([install(1, 0x1111, 0x2222)], rearm=False)
    for _ in range(3):
        daemon.dp.encap(packet())
    daemon._run_actions([UpdateChildAddresses(1, ("10.200.0.1", 4500), ("10.200.0.99", 4501), True)],
                        rearm=False)
    out = daemon.dp.encap(packet())
    assert out[0] == "udp" and out[1] == ("10.200.0.99", 4501)
    assert spi_of(out) == (0x2222, 4)  # sequence numbers continue: the peer's window holds
    assert daemon.children[1].action.remote == ("10.200.0.99", 4501)
    assert daemon.children[1].action.udp_encap is True


def test_trap_acquire_queue_and_child_priority(daemon):
    daemon._restore_guard("site-b")
    first = packet(payload=b"first")
    assert daemon.dp.encap(first) is None
    assert daemon.dp.encap(packet(payload=b"second")) is None
    daemon._drain_events()
    # one acquire for the connection; both packets kept
    assert [c[:2] for c in daemon.ike.calls] == [("acquire", "site-b")]
    assert len(daemon.sadb.acquire_q["site-b"][0]) == 2
    sent = []
    daemon.io.send_outputs = lambda outs: sent.extend(outs)
    daemon._run_actions([install(1, 0x1111, 0x2222)], rearm=False)
    assert [spi_of(o) for o in sent] == [(0x2222, 1), (0x2222, 2)]  # queued packets go first
    assert "site-b" not in daemon.sadb.acquire_q
    # the child's policy is ahead of the trap (which stays, re-added behind it)
    assert spi_of(daemon.dp.encap(packet())) == (0x2222, 3)
    assert ("trap", "site-b") in daemon.dp.spd.policies
    daemon._run_actions([DeleteChildSA(1)], rearm=False)
    assert daemon.dp.encap(packet()) is None  # trapped again
    daemon._drain_events()
    assert [c[0] for c in daemon.ike.calls] == ["acquire", "acquire"]


def test_failed_negotiation_lets_traffic_ask_again(daemon):
    from vpnd.ike.actions import Event
    daemon._restore_guard("site-b")
    daemon.dp.encap(packet())
    daemon.dp.encap(packet())
    daemon._drain_events()
    assert len(daemon.ike.calls) == 1
    daemon._run_actions([Event("auth_failed", "site-b", "AUTHENTICATION_FAILED")], rearm=False)
    daemon.dp.encap(packet())
    daemon._drain_events()
    assert [c[0] for c in daemon.ike.calls] == ["acquire", "acquire"]
    # a stalled negotiation: asked again after ACQUIRE_RETRY seconds, not before
    from vpnd import daemon as dmod
    queued_at = daemon.sadb.acquire_q["site-b"][1]
    daemon._acquire("site-b", packet(), queued_at + 1)
    assert len(daemon.ike.calls) == 2
    daemon._acquire("site-b", packet(), queued_at + dmod.ACQUIRE_RETRY + 1)
    assert len(daemon.ike.calls) == 3 and len(daemon.sadb.acquire_q["site-b"][0]) == 3


def test_lifetime_and_unknown_spi_events_reach_the_core(daemon):
    daemon._run_actions([install(7, 0x1111, 0x2222)], rearm=False)
    sa = daemon.driver.sas[7].outbound[0]
    daemon.dp.events.append(("soft_expire", sa))
    daemon.dp.events.append(("hard_expire", sa))
    daemon.dp.events.append(("unknown_spi", "esp", 0xDEAD, "10.200.0.7"))
    daemon.dp.events.append(("unknown_spi", "ah", 0xBEEF, "10.200.0.7"))  # no IKE notify for AH
    daemon.wire = type("W", (), {"ike_port": 500})()
    daemon._drain_events()
    assert daemon.ike.calls == [("expiring", 7, False), ("expiring", 7, True),
                                ("unknown_spi", 0xDEAD, ("10.200.0.7", 500))]


def test_install_failure_leaves_nothing(daemon):
    bad = install(1, 0x1111, 0x2222)
    bad = InstallChildSA(**{**bad.__dict__, "outbound": (ChildKeys(0x2222, "esp", "aes128gcm16", None,
                                                                   b"short"),)})
    daemon._run_actions([bad], rearm=False)
    assert daemon.children == {} and daemon.dp.sad == {}


def test_data_plane_refusal_takes_the_child_out_again(daemon, caplog):
    """The data plane refuses some SAs only when they are added (transport mode over IPv6
    outer addresses): the SA table's child goes again and the refusal is logged, not an
    internal error with the inbound SA left behind."""
    key = bytes(range(20))
    act = InstallChildSA(
        connection="site-b", child_id=3, ike_id=1, mode="transport",
        local=("fd00:200::1", 500), remote=("fd00:200::2", 500), udp_encap=False, esn=False,
        replay_window=64, local_ts=(), remote_ts=(),
        inbound=(ChildKeys(0x3333, "esp", "aes128gcm16", None, key),),
        outbound=(ChildKeys(0x4444, "esp", "aes128gcm16", None, key),), proposal="AES_GCM_16-128")
    with caplog.at_level("ERROR", logger="vpnd"):
        daemon._run_actions([act], rearm=False)
    assert daemon.children == {} and daemon.dp.sad == {} and daemon.counters["loop_errors"] == 0
    assert any("cannot install SA" in r.getMessage() for r in caplog.records)
