"""What arrived on the NAT-T port (RFC 3948 sections 2.1-2.3)."""

from __future__ import annotations

NON_ESP_MARKER = b"\x00\x00\x00\x00"


def classify_udp4500(data) -> str:
    """'ike' (non-ESP marker then an IKE message: strip 4 bytes), 'keepalive' (the single
    0xFF byte), 'esp' (a non-zero SPI first: hand `data` as is to DataPlane.decap with
    proto 17) or 'bad' (too short to be any of them)."""
    n = len(data)
    if n == 1 and data[0] == 0xFF:
        return "keepalive"
    if n < 8:
        # the shortest ESP (SPI + seq) and the marker plus any IKE header are >= 8 bytes
        return "bad"
    if data[:4] == NON_ESP_MARKER:
        return "ike"
    return "esp"
