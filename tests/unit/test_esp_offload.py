"""GRO coalescing for the TUN (vpnd.esp.offload): what a virtio-net GSO packet must hold,
checked by resegmenting it the way the kernel does (tcp_gso_segment) with scapy."""

import os
import struct

from scapy.layers.inet import IP, TCP, UDP
from scapy.packet import Raw

from vpnd.esp.offload import NO_VNET, VNET_HDR, gro_coalesce


def seg(seq, payload, flags="A", ack=7777, src="10.1.0.5", sport=5001, ts=(100, 200), ip_id=1):
    return bytes(IP(src=src, dst="10.2.0.7", id=ip_id, flags="DF", ttl=63)
                 / TCP(sport=sport, dport=80, seq=seq, ack=ack, flags=flags, window=500,
                       options=[("NOP", None), ("NOP", None), ("Timestamp", ts)])
                 / Raw(payload))


def flow(n, mss=1348, start=1000, last_len=None, psh_last=False):
    data = os.urandom(mss * (n - 1) + (last_len if last_len is not None else mss))
    segs = []
    for i in range(n):
        chunk = data[i * mss:(i + 1) * mss]
        last = i == n - 1
        segs.append(seg(start + i * mss, chunk, flags="PA" if (last and psh_last) else "A", ip_id=i + 1))
    return data, segs


def resegment(buf):
    """What the kernel makes of a GSO buffer: the segments with full checksums."""
    flags, gso_type, hdr_len, gso_size, cstart, coff = VNET_HDR.unpack_from(buf, 0)
    pkt = buf[VNET_HDR.size:]
    if gso_type == 0:
        assert flags == 0
        return [pkt]
    assert (flags, gso_type, cstart, coff) == (1, 1, 20, 16)
    head, payload = pkt[:hdr_len], pkt[hdr_len:]
    ip = IP(head + b"")
    # the partial checksum is the pseudo-header sum over the whole TCP length
    tcp_len = len(pkt) - 20
    pseudo = sum(struct.unpack("!4H", pkt[12:20])) + 6 + tcp_len
    while pseudo >> 16:
        pseudo = (pseudo & 0xFFFF) + (pseudo >> 16)
    assert struct.unpack("!H", pkt[36:38])[0] == pseudo
    assert IP(pkt).len == len(pkt)
    chk = IP(pkt).chksum
    p2 = IP(pkt)
    del p2.chksum
    assert IP(bytes(p2)).chksum == chk               # IP header checksum valid
    out = []
    seq = ip[TCP].seq
    base = IP(pkt)
    for i in range(0, len(payload), gso_size):
        chunk = payload[i:i + gso_size]
        last = i + gso_size >= len(payload)
        t = base[TCP].copy()
        t.remove_payload()
        t.seq = seq + i
        t.flags = base[TCP].flags if last else (base[TCP].flags & ~0x08)
        del t.chksum
        p = IP(src=base.src, dst=base.dst, id=base.id, flags=base.flags, ttl=base.ttl,
               tos=base.tos) / t / Raw(chunk)
        out.append(bytes(p))
    return out


def test_bulk_flow_coalesced_and_resegments_to_the_same_data():
    data, segs = flow(20, psh_last=True)
    bufs = gro_coalesce(segs)
    assert len(bufs) == 1
    flags, gso_type, hdr_len, gso_size, _, _ = VNET_HDR.unpack_from(bufs[0], 0)
    assert gso_type == 1 and gso_size == 1348 and hdr_len == 20 + 32
    again = resegment(bufs[0])
    assert len(again) == 20
    assert b"".join(bytes(IP(p)[TCP].payload) for p in again) == data
    for orig, new in zip(segs, again):
        o, n = IP(orig), IP(new)
        assert (o[TCP].seq, o[TCP].ack, o[TCP].options, o[TCP].flags, o.src, o.dst) == \
               (n[TCP].seq, n[TCP].ack, n[TCP].options, n[TCP].flags, n.src, n.dst)


def test_trains_break_on_size_psh_other_flows_and_limits():
    _, a = flow(3)
    _, short = flow(3, start=1000 + 3 * 1348, last_len=100)   # continues a, ends shorter
    other = seg(5, b"x" * 1348, sport=6000)
    udp = bytes(IP(src="10.1.0.5", dst="10.2.0.7") / UDP(sport=1, dport=2) / Raw(b"u" * 50))
    bufs = gro_coalesce(a + short + [other, udp])
    kinds = [VNET_HDR.unpack_from(b, 0)[1] for b in bufs]
    # a + short is one contiguous flow ending in a short segment: one train of 6
    assert kinds == [1, 0, 0]
    assert len(resegment(bufs[0])) == 6
    assert bufs[1] == NO_VNET + other and bufs[2] == NO_VNET + udp
    # a gap in sequence numbers, a different ACK, a SYN: not merged
    _, f = flow(4)
    gap = f[:2] + [f[3]]
    assert [VNET_HDR.unpack_from(b, 0)[1] for b in gro_coalesce(gap)] == [1, 0]
    diff_ack = [f[0], seg(1000 + 1348, os.urandom(1348), ack=1)]
    assert [b[:10] for b in gro_coalesce(diff_ack)] == [NO_VNET, NO_VNET]
    syn = bytes(IP(src="10.1.0.5", dst="10.2.0.7") / TCP(flags="S"))
    assert gro_coalesce([syn]) == [NO_VNET + syn]
    # never above 64 KiB
    _, big = flow(60)
    bufs = gro_coalesce(big)
    assert all(len(b) - 10 <= 65535 for b in bufs) and len(bufs) >= 2
    assert sum(len(resegment(b)) for b in bufs) == 60


def test_different_timestamps_not_merged():
    a = seg(1000, b"a" * 1000, ts=(1, 2))
    b = seg(2000, b"b" * 1000, ts=(2, 2))
    assert gro_coalesce([a, b]) == [NO_VNET + a, NO_VNET + b]


def test_segment_with_bad_tcp_checksum_is_not_merged():
    """A segment damaged before the remote gateway encrypted it must reach the receiving TCP
    with its bad checksum (which then drops it), not be hidden inside a GSO train whose
    checksums the kernel recomputes."""
    data, segs = flow(4)
    bad = bytearray(segs[2])
    bad[-1] ^= 0x01                                   # payload bit flip, checksum unchanged
    segs[2] = bytes(bad)
    out = gro_coalesce(segs)
    passed_alone = [b for b in out if VNET_HDR.unpack_from(b, 0)[1] == 0]
    assert any(b[VNET_HDR.size:] == segs[2] for b in passed_alone)
    for b in out:
        if VNET_HDR.unpack_from(b, 0)[1] != 0:
            assert segs[2][40:] not in b              # never part of a merged train


def test_valid_odd_length_segments_pass_the_checksum_check():
    data, segs = flow(3, mss=1347, last_len=1001)
    out = gro_coalesce(segs)
    assert len(out) == 1 and VNET_HDR.unpack_from(out[0], 0)[1] == 1
