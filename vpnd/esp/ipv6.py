"""The IPv6 outer header of ESP/AH packets (RFC 4303 3.1.2, RFC 4302 3.1.2 for tunnel mode
over IPv6): built by the data plane like the IPv4 one (esp/ipv4.py: OuterHeader), sent with
IPV6_HDRINCL (net/sockets.py), and rebuilt by the socket layer on receive so that AH can
check it (a raw IPv6 socket hands over the payload only)."""

from __future__ import annotations

import ipaddress
import struct

IPV6_HDR = struct.Struct("!IHBB16s16s")   # version/class/flow, payload length, next, hops, src, dst
OUTER_HOPS = 64


class OuterHeader6:
    """Prebuilt IPv6 outer header for one SA (src/dst/next header fixed, hop limit 64).

    Same interface as ipv4.OuterHeader: build(tos, total, frag, ident) with `total` the
    whole packet (header included); `frag` and `ident` mean nothing for IPv6 (no
    fragmentation by routers, no ID field) and are ignored."""

    __slots__ = ("src", "dst", "proto", "ident")
    header_len = 40

    def __init__(self, src: str, dst: str, proto: int):
        self.src = ipaddress.IPv6Address(src).packed
        self.dst = ipaddress.IPv6Address(dst).packed
        self.proto = proto
        self.ident = 0          # kept only so that SA.set_addresses can carry it across

    def next_ident(self) -> int:
        return 0

    def build(self, tos: int, total: int, frag: int = 0, ident: int | None = None) -> bytes:
        # the inner packet's traffic class is copied (RFC 4301 5.1.2.1, ECN RFC 6040)
        return IPV6_HDR.pack(0x60000000 | tos << 20, total - 40, self.proto, OUTER_HOPS,
                             self.src, self.dst)

    def zeroed(self, total: int, proto: int) -> bytes:
        """The header as AH's ICV covers it: traffic class, flow label and hop limit are
        mutable and zeroed (RFC 4302 3.3.3.1.2.1); there are no extension headers."""
        return IPV6_HDR.pack(0x60000000, total - 40, proto, 0, self.src, self.dst)


def zero_mutable6(hdr) -> bytes:
    """A received IPv6 header (40 bytes, no extension headers) with the mutable fields
    zeroed for AH's ICV (RFC 4302 3.3.3.1.2.1)."""
    return b"\x60\x00\x00\x00" + bytes(hdr[4:7]) + b"\x00" + bytes(hdr[8:40])


def header6(src: bytes, dst: bytes, proto: int, length: int, tclass: int = 0,
            hops: int = 0) -> bytes:
    """An IPv6 header for a payload a raw socket received without one (net/sockets.py)."""
    return IPV6_HDR.pack(0x60000000 | (tclass & 0xFF) << 20, length, proto, hops, src, dst)
