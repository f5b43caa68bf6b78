"""Receive coalescing (GRO) of decapsulated TCP segments for a TUN with IFF_VNET_HDR.

Writing each decrypted 1400-byte segment into the TUN costs one system call plus the
kernel's whole forwarding path per packet.  Consecutive segments of one TCP/IPv4 flow are
instead joined into one large packet, announced to the kernel with a virtio_net_hdr as a
GSO packet (VIRTIO_NET_HDR_GSO_TCPV4, checksum left to the kernel: NEEDS_CSUM), which
then travels the stack once and is resegmented only where needed.  This is what Linux GRO
does for NICs and what wireguard-go does for its TUN.

Only the safe case is merged, the rest passes unchanged (with an empty header): IPv4 without
options or fragments, TCP with flags exactly ACK (a PSH ends the train), contiguous
sequence numbers, identical addresses, ports, TOS, TTL, DF, ACK number, window, TCP
options (timestamps included), and every segment but the last of the first one's size.

Like a NIC's GRO, every segment's own TCP checksum is verified before it joins a train:
the kernel writes fresh checksums when it resegments, so merging a segment damaged between
the remote host and the remote gateway (where the ESP ICV does not reach) would hide the
damage from the receiving TCP.  A segment that fails the check passes unmerged, with its
bad checksum, and the receiver drops it.  VPND_NO_GRO=1 (net/tun.py) turns GRO off.
"""

from __future__ import annotations

import struct

# struct virtio_net_hdr: legacy layout in the host's byte order (what a TUN expects unless
# TUNSETVNETLE/BE is used)
VNET_HDR = struct.Struct("=BBHHHH")
VNET_HDR_LEN = VNET_HDR.size                 # 10
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_GSO_TCPV4 = 1
NO_VNET = bytes(VNET_HDR_LEN)

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
MAX_GSO = 65535
ACK = 0x10
PSH = 0x08


def _fold(s: int) -> int:
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return s


def _ip_checksum(h) -> int:
    s = sum(struct.unpack("!10H", h))
    return ~_fold(s) & 0xFFFF


def _tcp_checksum_ok(p, n: int) -> bool:
    """RFC 1071 check of an IPv4 TCP segment (pseudo-header included), without a Python
    loop: 2**16 == 1 (mod 0xFFFF), so the one's complement sum of the 16-bit words is
    congruent to the big-endian integer of the bytes, and a correct sum is 0xFFFF == 0."""
    seg = p[20:n]
    s = int.from_bytes(seg, "big")
    if (n - 20) & 1:
        s <<= 8                               # odd length: pad with a zero byte
    s += int.from_bytes(p[12:20], "big") + 6 + n - 20
    return s % 0xFFFF == 0


def _mergeable(p) -> int:
    """TCP payload length if `p` may start or join a train, else -1."""
    n = len(p)
    if n < 40 or p[0] != 0x45 or p[9] != 6 or (p[6] & 0x3F) or p[7]:
        return -1                             # options, not TCP, MF or fragment offset
    if (p[2] << 8 | p[3]) != n:
        return -1
    doff = (p[32] >> 4) * 4
    if doff < 20 or 20 + doff > n or p[33] & ~PSH != ACK:
        return -1                             # only ACK (+PSH on the last one)
    if not _tcp_checksum_ok(p, n):
        return -1                             # damaged before encryption: let TCP see it
    return n - 20 - doff


def _build(train: list, mss: int) -> bytes:
    """One GSO packet (with its virtio_net_hdr) from >= 2 segments."""
    first = train[0]
    doff = (first[32] >> 4) * 4
    hlen = 20 + doff
    total = hlen + sum(len(p) - hlen for p in train)
    ip = bytearray(first[:20])
    ip[2:4] = _U16.pack(total)
    ip[10:12] = b"\x00\x00"
    ip[10:12] = _U16.pack(_ip_checksum(ip))
    tcp = bytearray(first[20:hlen])
    tcp[13] |= train[-1][33] & PSH
    # CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum (not inverted) over
    # the whole super packet's TCP length; the kernel completes it per segment.
    tcp_len = total - 20
    s = (sum(struct.unpack("!4H", bytes(first[12:20]))) + 6 + tcp_len)
    tcp[16:18] = _U16.pack(_fold(s))
    vnet = VNET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, hlen, mss,
                         20, 16)
    parts = [vnet, bytes(ip), bytes(tcp)]
    parts.extend(memoryview(p)[hlen:] for p in train)
    return b"".join(parts)


def gro_coalesce(packets) -> list[bytes]:
    """Decapsulated inner packets (in arrival order) -> buffers for a TUN opened with
    IFF_VNET_HDR, each starting with its virtio_net_hdr.  Order is kept."""
    out = []
    append = out.append
    train: list = []
    mss = 0
    expect = 0
    key = b""
    size = 0
    for p in packets:
        if len(p) < 40 or p[9] != 6:
            plen = -1                                    # not TCP over IPv4: as it is
        else:
            plen = _mergeable(p)
        if train:
            if (plen > 0 and plen <= mss and size + plen <= MAX_GSO
                    and _U32.unpack_from(p, 24)[0] == expect
                    and p[1] == key[0] and p[8] == key[1] and p[6] & 0x40 == key[2]
                    and p[12:24] == key[3] and p[28:32] == key[4]
                    and p[34:36] == key[5] and p[40:20 + (p[32] >> 4) * 4] == key[6]
                    and (p[32] >> 4) * 4 == key[7]):
                train.append(p)
                size += plen
                expect = (expect + plen) & 0xFFFFFFFF
                if plen < mss or p[33] & PSH:
                    append(_build(train, mss) if len(train) > 1 else NO_VNET + train[0])
                    train = []
                continue
            append(_build(train, mss) if len(train) > 1 else NO_VNET + train[0])
            train = []
        if plen > 0 and not p[33] & PSH:
            doff = (p[32] >> 4) * 4
            train = [p]
            mss = plen
            size = 20 + doff + plen
            expect = (_U32.unpack_from(p, 24)[0] + plen) & 0xFFFFFFFF
            key = (p[1], p[8], p[6] & 0x40, p[12:24], p[28:32], p[34:36], p[40:20 + doff], doff)
        else:
            append(NO_VNET + p)
    if train:
        append(_build(train, mss) if len(train) > 1 else NO_VNET + train[0])
    return out
