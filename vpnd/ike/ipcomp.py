"""IPComp negotiation rules shared by IKEv1 Quick Mode and IKEv2 (sans-IO).

Each side picks the CPI it wants to *receive* with (RFC 3173 3.3: negotiated CPIs come from
256-61439) and tells the peer; the peer puts that CPI on what it sends.  Only the algorithm
of the connection's `comp:` is offered or accepted (the transform IDs of RFC 2407 4.4.5,
shared by IKEv2's IPCOMP_SUPPORTED, RFC 7296 3.10.1).  A peer that does not answer with
IPComp gets plain ESP/AH: compression is an option, never a reason to fail (RFC 7296 2.22).
"""

from __future__ import annotations

import struct

from vpnd.esp.ipcomp import ALGORITHMS, TRANSFORM_IDS

CPI_MIN, CPI_MAX = 256, 61439            # RFC 3173 3.3: the range for negotiated CPIs
PROTO_IPCOMP_V1 = 4                      # RFC 2407 4.4.1: IPSEC protocol ID PROTO_IPCOMP


def new_cpi(rng) -> int:
    """A fresh inbound CPI from `rng(n) -> bytes` (the core's random source)."""
    span = CPI_MAX - CPI_MIN + 1
    return CPI_MIN + int.from_bytes(rng(2), "big") % span


def transform_id(conn) -> int | None:
    """The transform ID we offer/accept for `conn` (None: the connection does not compress)."""
    comp = getattr(conn, "comp", None)
    return TRANSFORM_IDS.get(comp) if comp else None


def algorithm(tid: int) -> str | None:
    return ALGORITHMS.get(tid)


def acceptable(conn, tid: int) -> bool:
    return tid is not None and tid == transform_id(conn)


def peer_cpi_ok(cpi: int) -> bool:
    """The peer's CPI: a negotiated one, or (leniently) a well-known one; never 0."""
    return 0 < cpi <= 0xFFFF and not (64 <= cpi < 256)


# -- IKEv2 IPCOMP_SUPPORTED notify data (RFC 7296 3.10.1): CPI (2 octets), transform ID (1)

def encode_v2(cpi: int, tid: int) -> bytes:
    return struct.pack("!HB", cpi, tid)


def decode_v2(data: bytes) -> tuple[int, int] | None:
    """(cpi, transform id), or None when malformed; attributes after the ID are ignored."""
    if len(data) < 3:
        return None
    cpi, tid = struct.unpack_from("!HB", data)
    if not peer_cpi_ok(cpi):
        return None
    return cpi, tid


# -- IKEv1: the CPI travels in the SPI field of the IPCOMP proposal (RFC 2407 4.4.1: 2 octets;
# some peers send 4 with the CPI in the low-order two)

def encode_v1_spi(cpi: int) -> bytes:
    return struct.pack("!H", cpi)


def decode_v1_spi(spi: bytes) -> int | None:
    if len(spi) == 2:
        cpi = struct.unpack("!H", spi)[0]
    elif len(spi) == 4 and spi[:2] == b"\x00\x00":
        cpi = struct.unpack("!H", spi[2:])[0]
    else:
        return None
    return cpi if peer_cpi_ok(cpi) else None
