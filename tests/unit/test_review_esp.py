"""The data plane against arbitrary input (nothing raises, every drop is counted) and the
shared sequence-number allocator on AH SAs (RFC 4302 3.3.2: never cycle)."""

import ipaddress
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from vpnd import esp
from vpnd.esp.offload import gro_coalesce

LAN_A, LAN_B = ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("10.2.0.0/16")
LOCAL, REMOTE = "10.200.0.1", "10.200.0.2"


def inner(i: int, size: int = 60) -> bytes:
    return struct.pack("!BBHHHBBH4s4sHHHH", 0x45, 0, 28 + size, i, 0, 64, 17, 0,
                       bytes([10, 1, 0, 10]), bytes([10, 2, 0, 10]), 1, 2, 8 + size, 0) + bytes(size)


def bundle_dp(kinds, udp=False, outer_mtu=1500):
    """DataPlane sending LAN_A->LAN_B through SAs of `kinds` and receiving the mirror."""
    tx, rx = esp.DataPlane(outer_mtu=outer_mtu, mss_clamp=1200), esp.DataPlane()
    out, inn = [], []
    for i, kind in enumerate(kinds):
        if kind == "esp":
            kw = dict(protocol="esp", encryption="aes128gcm16", integrity=None,
                      enc_key=bytes(range(20)), encap=(4500, 4500) if udp else None)
        else:
            kw = dict(protocol="ah", encryption=None, integrity="sha256", auth_key=bytes(32))
        out.append(esp.SA(0x3000 + i, mode="tunnel", local=LOCAL, remote=REMOTE, **kw))
        inn.append(esp.SA(0x3000 + i, mode="tunnel", local=REMOTE, remote=LOCAL, **kw))
    tx.add_outbound(1, [LAN_A], [LAN_B], out)
    rx.add_inbound(inn, local_ts=[LAN_B], remote_ts=[LAN_A])
    return tx, rx, out, inn


def test_ah_sequence_never_cycles():
    tx, _, out, _ = bundle_dp(["ah"])
    ah = out[0]
    ah.seq = 0xFFFFFFFE
    assert tx.encap(inner(1)) is not None             # 0xFFFFFFFF, the last number
    assert tx.encap(inner(2)) is None                 # RFC 4302 3.3.2
    assert ah.expired_drops == 1 and ("hard_expire", ah) in tx.events


def test_esp_ah_bundle_exhaustion_counts_on_the_sa_that_ran_out():
    tx, _, out, _ = bundle_dp(["esp", "ah"])
    out[1].seq = 0xFFFFFFFF                           # AH runs out first
    assert tx.encap(inner(1)) is None
    assert out[1].expired_drops == 1 and out[0].expired_drops == 0


PACKETS = st.lists(st.binary(max_size=120) | st.builds(
    lambda i, cut, flip, size: (lambda p: p[:cut] + bytes([p[cut % len(p)] ^ flip]) + p[cut + 1:])(
        inner(i, size)),
    st.integers(0, 0xFFFF), st.integers(0, 90), st.integers(1, 255), st.integers(0, 300)), max_size=20)


@settings(max_examples=150, deadline=None)
@given(PACKETS)
def test_encap_many_never_raises(packets):
    for kinds in (["esp"], ["ah"], ["esp", "ah"]):
        for mtu in (1500, 150):  # 150: the larger packets are fragmented or answered by ICMP
            tx, _, _, _ = bundle_dp(kinds, outer_mtu=mtu)
            outs = tx.encap_many(packets)
            assert all(o[0] in ("raw", "udp", "tun") for o in outs)


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 40), st.integers(0, 255), st.binary(max_size=8), st.sampled_from([50, 51, 17]))
def test_decap_of_mutated_packets_never_raises_and_counts(pos, flip, extra, proto):
    kinds = ["ah"] if proto == 51 else ["esp"]
    tx, rx, _, inn = bundle_dp(kinds, udp=proto == 17)
    good = tx.encap(inner(7))
    data = bytearray(good[2])
    pos %= len(data)
    data[pos] ^= flip or 1
    data = bytes(data) + extra
    before = sum(sum(sa.counters.values()) for sa in inn) + sum(rx.counters.values())
    got = rx.decap(data, proto, LOCAL, 4500)
    after = sum(sum(sa.counters.values()) for sa in inn) + sum(rx.counters.values())
    assert got is not None or after > before        # a drop is always counted


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=100).map(
    lambda b: (b[:9] + b"\x06" + b[10:]) if len(b) > 40 else b), max_size=12))
def test_gro_coalesce_never_raises_and_keeps_every_byte(packets):
    out = gro_coalesce(packets)
    assert all(isinstance(b, bytes) for b in out)
    assert sum(len(b) for b in out) >= sum(len(p) for p in packets)
