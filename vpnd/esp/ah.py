"""AH (RFC 4302) over IPv4 (IPv6: esp/ipv6.py): header layout and the zeroing of mutable fields for the ICV."""

from __future__ import annotations

import struct

AH_HDR = struct.Struct("!BBHII")          # next header, payload len, reserved, SPI, seq

# RFC 4302 appendix A.1: options that are immutable and therefore included in the ICV
# (type values with the copied flag as they appear on the wire).  All others are zeroed
# whole (type and length included), as the RFC describes.
IMMUTABLE_OPTIONS = frozenset((0, 1, 130, 133, 134, 148, 149))


def ah_length(icv_size: int, ipv6: bool = False) -> int:
    """Bytes of AH header + ICV, padded to 32 bits for IPv4, 64 bits for IPv6
    (RFC 4302 3.3.3.2.1)."""
    if ipv6:
        return (12 + icv_size + 7) & ~7
    return (12 + icv_size + 3) & ~3


def zero_mutable(hdr) -> bytes:
    """The IPv4 header with TOS, flags+fragment offset, TTL and checksum zeroed and
    mutable options zeroed (RFC 4302 3.3.3.1.1.1 and 3.3.3.1.1.2)."""
    ihl = len(hdr)
    h = bytearray(hdr)
    h[1] = 0
    h[6] = h[7] = 0
    h[8] = 0
    h[10] = h[11] = 0
    i = 20
    while i < ihl:
        t = h[i]
        if t == 0:                       # end of list: the rest is padding, left as it is
            break
        if t == 1:
            i += 1
            continue
        if i + 1 >= ihl or h[i + 1] < 2 or i + h[i + 1] > ihl:
            h[i:ihl] = bytes(ihl - i)     # malformed: zero the rest (the ICV will fail)
            break
        olen = h[i + 1]
        if t not in IMMUTABLE_OPTIONS:
            h[i:i + olen] = bytes(olen)
        i += olen
    return bytes(h)
