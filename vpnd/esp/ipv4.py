"""IP header helpers for the data plane: checksums, outer headers, ICMP errors, MSS
clamping and pre-fragmentation.  Only the outer-header builder is on the per-packet path;
the rest runs for exceptional packets (too big, TCP SYN)."""

from __future__ import annotations

import ipaddress
import struct

IPV4_HDR = struct.Struct("!BBHHHBBH4s4s")
U16 = struct.Struct("!H")
U32 = struct.Struct("!I")

PROTO_ICMP = 1
PROTO_IPIP = 4
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_IPV6 = 41
PROTO_ESP = 50
PROTO_AH = 51
PROTO_ICMPV6 = 58
PROTO_NONE = 59        # "no next header": ESP dummy packet (RFC 4303 2.6)

DF = 0x4000
MF = 0x2000
OUTER_TTL = 64


def checksum(data) -> int:
    """Internet checksum (RFC 1071) of bytes-like data."""
    if len(data) & 1:
        data = bytes(data) + b"\x00"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def fold(s: int) -> int:
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def addr_words(packed: bytes) -> int:
    """Sum of the 16-bit words of a packed address (to pre-sum fixed header words)."""
    return sum(struct.unpack("!%dH" % (len(packed) // 2), packed))


class OuterHeader:
    """Prebuilt IPv4 outer header for one SA (src/dst/proto fixed, TTL 64).

    The fixed words are summed once; per packet only TOS, length, ID and flags enter
    the checksum.  The ID counter is per SA (RFC 6864: unique per src/dst/proto while a
    fragment could still be in flight)."""

    __slots__ = ("src", "dst", "proto", "base", "ident")
    header_len = 20

    def __init__(self, src: str, dst: str, proto: int):
        self.src = ipaddress.IPv4Address(src).packed
        self.dst = ipaddress.IPv4Address(dst).packed
        self.proto = proto
        self.base = 0x4500 + (OUTER_TTL << 8 | proto) + addr_words(self.src) + addr_words(self.dst)
        self.ident = 0

    def next_ident(self) -> int:
        ident = self.ident = (self.ident + 1) & 0xFFFF
        return ident

    def build(self, tos: int, total: int, frag: int, ident: int | None = None) -> bytes:
        if ident is None:
            ident = self.ident = (self.ident + 1) & 0xFFFF
        s = self.base + tos + total + ident + frag
        s = (s & 0xFFFF) + (s >> 16)
        s = (s & 0xFFFF) + (s >> 16)
        return IPV4_HDR.pack(0x45, tos, total, ident, frag, OUTER_TTL, self.proto,
                             ~s & 0xFFFF, self.src, self.dst)

    def zeroed(self, total: int, proto: int, ident: int = 0) -> bytes:
        """The header as AH's ICV covers it: TOS, flags/offset, TTL and checksum zeroed
        (RFC 4302 3.3.3.1.1.1); the ID is immutable and covered."""
        return IPV4_HDR.pack(0x45, 0, total, ident, 0, 0, proto, 0, self.src, self.dst)


def rebuild_header(hdr, proto: int, total: int) -> bytes:
    """The same IPv4 header (options kept) with a new protocol, total length, checksum."""
    h = bytearray(hdr)
    h[9] = proto
    h[2:4] = U16.pack(total)
    h[10:12] = b"\x00\x00"
    h[10:12] = U16.pack(checksum(h))
    return bytes(h)


# -- ICMP "fragmentation needed" / ICMPv6 "packet too big" ------------------------------

def icmp_frag_needed(pkt, mtu: int, src: bytes) -> bytes:
    """ICMP type 3 code 4 (RFC 792, RFC 1191: next-hop MTU in the second word) back to
    the sender of `pkt`, quoting its header and the first 8 bytes of its payload."""
    ihl = (pkt[0] & 0x0F) * 4
    quote = bytes(pkt[: ihl + 8])
    icmp = bytearray(struct.pack("!BBHHH", 3, 4, 0, 0, mtu) + quote)
    icmp[2:4] = U16.pack(checksum(icmp))
    total = 20 + len(icmp)
    hdr = bytearray(IPV4_HDR.pack(0x45, 0xC0, total, 0, 0, OUTER_TTL, PROTO_ICMP, 0,
                                  src, bytes(pkt[12:16])))
    hdr[10:12] = U16.pack(checksum(hdr))
    return bytes(hdr) + bytes(icmp)


def icmp6_packet_too_big(pkt, mtu: int, src: bytes) -> bytes:
    """ICMPv6 type 2 (RFC 4443 3.2) quoting as much of `pkt` as fits in 1280 bytes."""
    dst = bytes(pkt[8:24])
    quote = bytes(pkt[: 1280 - 40 - 8])
    body = bytearray(struct.pack("!BBHI", 2, 0, 0, mtu) + quote)
    pseudo = src + dst + U32.pack(len(body)) + b"\x00\x00\x00" + bytes([PROTO_ICMPV6])
    body[2:4] = U16.pack(checksum(pseudo + bytes(body)))
    hdr = struct.pack("!IHBB16s16s", 0x60000000, len(body), PROTO_ICMPV6, 64, src, dst)
    return hdr + bytes(body)


# -- ECN at tunnel egress (RFC 6040 section 4.2) ----------------------------------------

def ecn_egress_ce(pkt):
    """The outer header arrived marked CE: mark the inner packet CE when it is ECN-capable
    (fixing the IPv4 checksum), None (drop) when it is not-ECT."""
    if pkt[0] >> 4 == 4:
        ecn = pkt[1] & 3
        if ecn == 3:
            return pkt
        if ecn == 0:
            return None
        out = bytearray(pkt)
        old = (out[0] << 8) | out[1]
        out[1] |= 3
        csum = U16.unpack_from(out, 10)[0]
        out[10:12] = U16.pack(fold((~csum & 0xFFFF) + (~old & 0xFFFF) + ((out[0] << 8) | out[1])))
        return bytes(out)
    ecn = (pkt[1] >> 4) & 3
    if ecn == 3:
        return pkt
    if ecn == 0:
        return None
    out = bytearray(pkt)
    out[1] |= 0x30
    return bytes(out)


# -- TCP MSS clamping ---------------------------------------------------------------------

def clamp_mss(pkt, mss: int):
    """Lower the MSS option of a TCP SYN in an IPv4/IPv6 packet to `mss`, fixing the TCP
    checksum incrementally (RFC 1624).  Returns the packet (a new bytes object if changed)."""
    ver = pkt[0] >> 4
    if ver == 4:
        if pkt[9] != PROTO_TCP or U16.unpack_from(pkt, 6)[0] & 0x1FFF:
            return pkt       # not TCP, or a non-first fragment
        off = (pkt[0] & 0x0F) * 4
    elif ver == 6:
        if len(pkt) < 40 or pkt[6] != PROTO_TCP:
            return pkt       # extension headers in front of TCP: left alone
        off = 40
    else:
        return pkt
    if len(pkt) < off + 20 or not pkt[off + 13] & 0x02:
        return pkt           # not a SYN
    doff = (pkt[off + 12] >> 4) * 4
    end = min(off + doff, len(pkt))
    i = off + 20
    while i < end:
        kind = pkt[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= end:
            break
        olen = pkt[i + 1]
        if olen < 2 or i + olen > end:
            break
        if kind == 2 and olen == 4:
            old = U16.unpack_from(pkt, i + 2)[0]
            if old <= mss:
                return pkt
            out = bytearray(pkt)
            out[i + 2:i + 4] = U16.pack(mss)
            csum = U16.unpack_from(out, off + 16)[0]
            o, m = old, mss
            if (i + 2 - off) & 1:
                # an odd offset puts the value's bytes in swapped halves of two words
                o = ((o & 0xFF) << 8) | (o >> 8)
                m = ((m & 0xFF) << 8) | (m >> 8)
            s = (~csum & 0xFFFF) + (~o & 0xFFFF) + m
            out[off + 16:off + 18] = U16.pack(fold(s))
            return bytes(out)
        i += olen
    return pkt


# -- pre-fragmentation (RFC 4459 section 5.1: fragment before encryption) ----------------

def fragment(pkt, max_size: int) -> list[bytes]:
    """Split an IPv4 packet without DF into fragments of at most max_size bytes (RFC 791).
    Options with the copied flag go into every fragment, all options into the first."""
    ihl = (pkt[0] & 0x0F) * 4
    hdr = bytes(pkt[:ihl])
    payload = memoryview(pkt)[ihl:]
    frag_word = U16.unpack_from(hdr, 6)[0]
    base_off = (frag_word & 0x1FFF) * 8
    more = frag_word & MF
    copied = bytearray()
    i = 20
    while i < ihl:                     # options that must be copied (type bit 7)
        t = hdr[i]
        if t == 0:
            break
        if t == 1:
            i += 1
            continue
        if i + 1 >= ihl or hdr[i + 1] < 2:
            break
        if t & 0x80:
            copied += hdr[i:i + hdr[i + 1]]
        i += hdr[i + 1]
    copied += b"\x00" * (-len(copied) % 4)
    later_hdr = bytearray(hdr[:20]) + copied
    later_hdr[0] = 0x40 | (len(later_hdr) // 4)
    out = []
    pos = 0
    first = True
    while pos < len(payload):
        h = bytearray(hdr) if first else bytearray(later_hdr)
        room = (max_size - len(h)) // 8 * 8
        if room <= 0:
            return []
        chunk = payload[pos:pos + room]
        last = pos + len(chunk) >= len(payload)
        word = ((base_off + pos) // 8) | (more if last else MF)
        h[2:4] = U16.pack(len(h) + len(chunk))
        h[6:8] = U16.pack(word)
        h[10:12] = b"\x00\x00"
        h[10:12] = U16.pack(checksum(h))
        out.append(bytes(h) + bytes(chunk))
        pos += len(chunk)
        first = False
    return out
