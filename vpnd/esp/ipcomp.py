"""IP Payload Compression (IPComp, RFC 3173) with Deflate (RFC 2394) and LZS (RFC 2395).

No I/O, no logging.  The data plane calls

    ipc = IPComp(cpi, "deflate" | "lzs", threshold=90)
    data, nh = ipc.compress(payload, nh)        # IPComp header + compressed payload and
                                                # PROTO_IPCOMP, or (payload, nh) unchanged
    r = ipc.decompress(data, limit)             # data after the outer header/ESP, starting
                                                # at the IPComp header -> (payload, nh) | None

Every packet is compressed on its own: the history is reset per packet (RFC 2394 2.1,
RFC 2395 2), since IPsec packets may be lost or reordered.  decompress() never raises:
a malformed payload or one that would decompress beyond `limit` (a "bomb") is dropped
and counted in `decompress_errors`.
"""

from __future__ import annotations

import struct
import zlib

PROTO_IPCOMP = 108

# IPSEC IPCOMP transform IDs (RFC 2407 4.4.5, IKEv2 IANA registry "IPCOMP Transform IDs");
# CPIs 0-63 are the well-known CPIs equal to the transform ID (RFC 3173 3.3).
TRANSFORM_IDS = {"deflate": 2, "lzs": 3}
ALGORITHMS = {v: k for k, v in TRANSFORM_IDS.items()}

IPCOMP_HDR = struct.Struct("!BBH")      # next header, flags (reserved, 0), CPI (RFC 3173 2.1)

# RFC 2394 2.2 / RFC 2395 2.2: below ~90 bytes compression rarely pays; not attempted.
DEFAULT_THRESHOLD = 90
MAX_IP_PACKET = 65535

# Adaptive back-off (RFC 3173 2.2, "an adaptive algorithm"): after this many packets in a
# row that did not shrink (encrypted or already compressed traffic), skip the next ones.
FAIL_RUN = 8
SKIP_AFTER_FAILS = 32

COUNTER_NAMES = ("compressed", "uncompressed", "decompressed", "decompress_errors")


class DecompressError(Exception):
    """Malformed compressed data or output beyond the limit."""


# -- Deflate (RFC 2394: RFC 1951 raw stream, no zlib header/checksum) --------------------

# Compress with an 11-bit window, as Linux's deflate does (DEFLATE_DEF_WINBITS), so that any
# receiver's inflate window accepts our distances; an IP packet of 1500 bytes fits in it
# anyway.  Decompress with the largest window (-15): it accepts every window size.
_DEFLATE_WBITS_OUT = -11
_DEFLATE_WBITS_IN = -15


def deflate_compress(data: bytes) -> bytes:
    c = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, _DEFLATE_WBITS_OUT)
    return c.compress(data) + c.flush(zlib.Z_FINISH)


def deflate_decompress(data: bytes, limit: int = MAX_IP_PACKET) -> bytes:
    d = zlib.decompressobj(_DEFLATE_WBITS_IN)
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as e:
        raise DecompressError(f"deflate: {e}") from None
    if len(out) > limit:
        raise DecompressError("deflate: output beyond the limit")
    if d.unconsumed_tail or d.unused_data:
        raise DecompressError("deflate: input left over")
    if not d.eof:
        # A stream without its final block: Linux flushes with Z_FINISH, so a complete
        # packet always ends one; take what a sync-flushed sender gave if it ended cleanly.
        try:
            rest = d.flush()
        except zlib.error as e:
            raise DecompressError(f"deflate: {e}") from None
        if rest:
            out += rest
            if len(out) > limit:
                raise DecompressError("deflate: output beyond the limit")
    return out


# -- LZS (ANSI X3.241-1994, as described in RFC 1974 2.3 and RFC 2395) ---------------------
#
# A bit stream, most significant bit first:
#   literal byte           0 bbbbbbbb
#   string, offset < 128   1 1 ooooooo  <length>
#   string, offset < 2048  1 0 ooooooooooo  <length>
#   end marker             1 1 0000000, then zero bits to the byte boundary
# <length>: 00=2 01=3 10=4 1100=5 1101=6 1110=7, 1111 nnnn = 8+n for n<15; each nibble
# 1111 adds 15 and another nibble follows (1111 1111 0000 = 23).
# Offsets count back from the next byte to be written (1 = the previous byte); a string
# may overlap its own output (offset 1 length 10 repeats one byte ten times).

LZS_MAX_OFFSET = 2047

# (code, bit count) for the lengths 2..7
_LZS_SHORT_LEN = {2: (0b00, 2), 3: (0b01, 2), 4: (0b10, 2),
                  5: (0b1100, 4), 6: (0b1101, 4), 7: (0b1110, 4)}


def _longest_match(data: bytes, i: int, n: int) -> tuple[int, int]:
    """(length, offset) of the longest earlier string equal to data[i:...] within 2047
    bytes, the nearest one of that length (smallest offset); (0, 0) if under 2 bytes.
    Every search is bytes.rfind (C): "data[i:i+k] occurs at some j < i" holds for all k up
    to the longest, so an exponential then binary search over k finds it exactly."""
    lo = i - LZS_MAX_OFFSET if i > LZS_MAX_OFFSET else 0
    limit = n - i
    if limit < 2:
        return 0, 0
    rfind = data.rfind
    # an occurrence of data[i:i+k] starting at j <= i-1 lies within data[lo:i+k-1]
    j = rfind(data[i:i + 2], lo, i + 1)
    if j < 0:
        return 0, 0
    good, good_j = 2, j
    k = 4
    while True:
        if k > limit:
            k = limit
        j = rfind(data[i:i + k], lo, i + k - 1)
        if j < 0:
            bad = k
            break
        good, good_j = k, j
        if k == limit:
            return good, i - good_j
        k *= 2
    while bad - good > 1:
        mid = (good + bad) // 2
        j = rfind(data[i:i + mid], lo, i + mid - 1)
        if j < 0:
            bad = mid
        else:
            good, good_j = mid, j
    return good, i - good_j


def lzs_compress(data: bytes) -> bytes:
    """One packet, a fresh history (RFC 2395 2): greedy longest match over 2047 bytes."""
    data = bytes(data)
    n = len(data)
    acc = 0                     # bit accumulator
    nbits = 0
    out = bytearray()
    i = 0
    while i < n:
        best_len, best_off = _longest_match(data, i, n)
        if best_len >= 2:
            if best_off < 128:
                acc = (acc << 9) | 0x180 | best_off
                nbits += 9
            else:
                acc = (acc << 13) | 0x1000 | best_off
                nbits += 13
            ln = best_len
            if ln < 8:
                code, w = _LZS_SHORT_LEN[ln]
                acc = (acc << w) | code
                nbits += w
            else:
                acc = (acc << 4) | 0xF
                nbits += 4
                ln -= 8
                while ln >= 15:
                    acc = (acc << 4) | 0xF
                    nbits += 4
                    ln -= 15
                acc = (acc << 4) | ln
                nbits += 4
            i += best_len
        else:
            acc = (acc << 9) | data[i]          # the flag bit 0, then the byte
            nbits += 9
            i += 1
        while nbits >= 8:
            nbits -= 8
            out.append((acc >> nbits) & 0xFF)
        acc &= (1 << nbits) - 1
    acc = (acc << 9) | 0x180                    # end marker
    nbits += 9
    pad = (-nbits) % 8
    acc <<= pad
    nbits += pad
    while nbits >= 8:
        nbits -= 8
        out.append((acc >> nbits) & 0xFF)
    return bytes(out)


def lzs_decompress(data: bytes, limit: int = MAX_IP_PACKET) -> bytes:
    """Decode one packet's LZS stream, which must end with the end marker."""
    buf = bytes(data) + b"\x00\x00\x00"        # reads of up to 11 bits span 3 bytes
    total = len(data) * 8
    pos = 0
    out = bytearray()

    def get(k):
        nonlocal pos
        if pos + k > total:
            raise DecompressError("lzs: truncated (no end marker)")
        b = pos >> 3
        v = (buf[b] << 16 | buf[b + 1] << 8 | buf[b + 2]) >> (24 - (pos & 7) - k)
        pos += k
        return v & ((1 << k) - 1)

    while True:
        if get(1) == 0:
            out.append(get(8))
            if len(out) > limit:
                raise DecompressError("lzs: output beyond the limit")
            continue
        if get(1):
            off = get(7)
            if off == 0:
                return bytes(out)               # end marker
        else:
            off = get(11)
            if off == 0:
                raise DecompressError("lzs: offset 0")
        code = get(2)
        if code < 3:
            ln = code + 2
        else:
            code = get(2)
            if code < 3:
                ln = code + 5
            else:
                ln = 8
                while True:
                    nib = get(4)
                    ln += nib
                    if ln > limit:
                        raise DecompressError("lzs: output beyond the limit")
                    if nib != 15:
                        break
        start = len(out) - off
        if start < 0:
            raise DecompressError("lzs: offset before the start of the packet")
        if len(out) + ln > limit:
            raise DecompressError("lzs: output beyond the limit")
        if off >= ln:
            out += out[start:start + ln]
        else:
            # overlapping copy: the pattern of `off` bytes repeated
            pat = out[start:]
            reps, rem = divmod(ln, off)
            out += pat * reps + pat[:rem]


_COMPRESS = {"deflate": deflate_compress, "lzs": lzs_compress}
_DECOMPRESS = {"deflate": deflate_decompress, "lzs": lzs_decompress}


def check_cpi(cpi: int) -> None:
    """RFC 3173 3.3: CPIs 0-63 are well-known (= transform ID), 256-61439 negotiated,
    61440-65535 private use; 64-255 are reserved.  0 is never used on the wire."""
    if not (0 < cpi <= 0xFFFF) or 64 <= cpi <= 255:
        raise ValueError(f"IPComp CPI {cpi} out of range (1-63 well-known, 256-65535)")


class IPComp:
    """The IPComp side of one SA (bundle), one direction or both: the CPI, the algorithm
    and the counters."""

    __slots__ = ("cpi", "algorithm", "threshold", "_compress", "_decompress", "_fails",
                 "_skip", "compressed", "uncompressed", "decompressed", "decompress_errors")

    def __init__(self, cpi: int, algorithm: str = "deflate",
                 threshold: int = DEFAULT_THRESHOLD):
        if algorithm not in _COMPRESS:
            raise ValueError(f"unknown IPComp algorithm {algorithm!r} (deflate or lzs)")
        check_cpi(cpi)
        self.cpi = cpi
        self.algorithm = algorithm
        self.threshold = threshold
        self._compress = _COMPRESS[algorithm]
        self._decompress = _DECOMPRESS[algorithm]
        self._fails = 0
        self._skip = 0
        for name in COUNTER_NAMES:
            setattr(self, name, 0)

    @property
    def counters(self) -> dict:
        return {name: getattr(self, name) for name in COUNTER_NAMES}

    def compress(self, payload, nh: int):
        """(IPComp header + compressed payload, PROTO_IPCOMP), or (payload, nh) as it was
        when compressing does not pay (RFC 3173 2.2: the packet is then sent without
        an IPComp header)."""
        n = len(payload)
        if n < self.threshold or self._skip:
            if self._skip:
                self._skip -= 1
            self.uncompressed += 1
            return payload, nh
        payload_b = bytes(payload)
        if self._compress is lzs_compress and len(zlib.compress(payload_b, 1)) + 4 >= n:
            body = payload_b        # LZS is weaker than deflate: what deflate cannot shrink,
                                    # LZS cannot either; zlib (C) tells at a fraction of the cost
        else:
            body = self._compress(payload_b)
        if len(body) + 4 >= n:
            self.uncompressed += 1
            self._fails += 1
            if self._fails >= FAIL_RUN:
                self._fails = 0
                self._skip = SKIP_AFTER_FAILS
            return payload, nh
        self._fails = 0
        self.compressed += 1
        return IPCOMP_HDR.pack(nh, 0, self.cpi) + body, PROTO_IPCOMP

    def decompress(self, data, limit: int = MAX_IP_PACKET):
        """data starts at the IPComp header -> (payload, next header), or None (counted).
        The CPI names the algorithm only; the SA was found by the SPI of ESP/AH around it,
        so a CPI other than ours (or the well-known one of our algorithm) is an error."""
        try:
            if len(data) < 5:
                raise DecompressError("short")
            nh, _flags, cpi = IPCOMP_HDR.unpack_from(data, 0)
            if cpi != self.cpi and cpi != TRANSFORM_IDS[self.algorithm]:
                raise DecompressError("unexpected CPI")
            if nh == PROTO_IPCOMP:
                raise DecompressError("IPComp inside IPComp")    # RFC 3173 2.2
            out = self._decompress(bytes(data[4:]), limit)
        except (DecompressError, IndexError, ValueError, MemoryError):
            self.decompress_errors += 1
            return None
        self.decompressed += 1
        return out, nh
