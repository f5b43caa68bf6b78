"""How many bytes a transform set adds to a packet, and how large an inner packet fits.

The daemon uses worst_case_overhead() for the TUN MTU; the DataPlane uses max_inner()
per outbound bundle for the "fragmentation needed" answer (RFC 1191, RFC 4301 8.2).
"""

from __future__ import annotations

from vpnd.crypto.ciphers import integrity_icv_size, is_aead, make_cipher, cipher_key_size
from vpnd.esp.ah import ah_length

IPV4_HEADER = 20
IPV6_HEADER = 40
UDP_HEADER = 8
ESP_HEADER = 8


def _esp_params(encryption: str | None, integrity: str | None):
    enc = encryption or "null"
    c = make_cipher(enc, bytes(cipher_key_size(enc)))
    icv = c.icv_size if is_aead(enc) else (integrity_icv_size(integrity) if integrity else 0)
    return c.iv_size, max(c.block_size, 4), icv


def max_inner(outer_mtu: int, *, esp: tuple[int, int, int] | None, ah_icv: int | None,
              udp: bool, mode: str, ipv6: bool = False) -> int:
    """Largest inner packet (bytes, IP header included) whose outer packet fits outer_mtu.
    esp = (iv_size, block, icv_size) or None; ah_icv = AH ICV size or None; ipv6: the
    outer header is IPv6 (40 bytes instead of 20)."""
    header = IPV6_HEADER if ipv6 else IPV4_HEADER
    avail = outer_mtu - header - (UDP_HEADER if udp else 0)
    if ah_icv is not None:
        avail -= ah_length(ah_icv, ipv6)
    # transport mode keeps the packet's own header outside the protected payload
    kept = header if mode == "transport" else 0
    if esp is None:
        return avail + kept
    iv, block, icv = esp
    avail -= ESP_HEADER + iv + icv
    return max(avail // block * block - 2 + kept, 0)


def max_inner_size(outer_mtu: int, *, encryption: str | None = None,
                   integrity: str | None = None, ah_integrity: str | None = None,
                   udp_encap: bool = False, mode: str = "tunnel", ipv6: bool = False) -> int:
    """max_inner() from canonical algorithm names (encryption None and integrity None and
    ah_integrity set = AH alone)."""
    esp = None if (encryption is None and integrity is None) else _esp_params(encryption, integrity)
    ah = integrity_icv_size(ah_integrity) if ah_integrity else None
    return max_inner(outer_mtu, esp=esp, ah_icv=ah, udp=udp_encap, mode=mode, ipv6=ipv6)


def worst_case_overhead(encryption: str | None = None, integrity: str | None = None, *,
                        ah_integrity: str | None = None, udp_encap: bool = False,
                        mode: str = "tunnel", outer_mtu: int = 1500, ipv6: bool = False) -> int:
    """outer_mtu - max_inner_size: what to subtract from the outer MTU for the TUN MTU."""
    return outer_mtu - max_inner_size(outer_mtu, encryption=encryption, integrity=integrity,
                                      ah_integrity=ah_integrity, udp_encap=udp_encap, mode=mode,
                                      ipv6=ipv6)
