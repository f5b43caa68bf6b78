"""How large an inner packet fits into one outer packet, per transform.

Used for the TUN MTU "auto": the outer interface's MTU minus the worst case of the
configured transforms, so that the engine never has to fragment (it answers an oversized
DF packet with ICMP "fragmentation needed" instead).
"""

from __future__ import annotations

IPV4_HEADER = 20
UDP_HEADER = 8
ESP_HEADER = 8  # SPI + sequence number (RFC 4303 section 2)
ESP_TRAILER = 2  # pad length + next header
AH_FIXED = 12  # next header, length, reserved, SPI, sequence (RFC 4302 section 2)

# Explicit IV carried in each packet (RFC 3602: one block for CBC; RFC 4106 and RFC 7634: 8 bytes).
IV_SIZE = {"aes128": 16, "aes192": 16, "aes256": 16, "3des": 8, "des": 8,
           "aes128gcm16": 8, "aes192gcm16": 8, "aes256gcm16": 8, "chacha20poly1305": 8, "null": 0}
# Cipher block size the payload is padded to; 4 = only the 32-bit alignment of RFC 4303 2.4.
BLOCK_SIZE = {"aes128": 16, "aes192": 16, "aes256": 16, "3des": 8, "des": 8,
              "aes128gcm16": 4, "aes192gcm16": 4, "aes256gcm16": 4, "chacha20poly1305": 4, "null": 4}
AEAD_ICV = {"aes128gcm16": 16, "aes192gcm16": 16, "aes256gcm16": 16, "chacha20poly1305": 16}
# Truncated HMAC lengths (RFC 2404, RFC 4868).
HMAC_ICV = {"md5": 12, "sha1": 12, "sha256": 16, "sha384": 24, "sha512": 32}


def ah_length(integrity: str) -> int:
    """AH header plus ICV, padded to a multiple of 4 bytes for IPv4 (RFC 4302 section 3.3.3.2.1)."""
    n = AH_FIXED + HMAC_ICV[integrity]
    return (n + 3) // 4 * 4


def max_inner_size(outer_mtu: int, *, encryption: str | None, integrity: str | None,
                   ah_integrity: str | None = None, udp_encap: bool = False,
                   mode: str = "tunnel") -> int:
    """Largest inner IPv4 packet that leaves as one outer packet of at most outer_mtu bytes."""
    avail = outer_mtu - IPV4_HEADER
    if udp_encap:
        avail -= UDP_HEADER
    if ah_integrity:
        avail -= ah_length(ah_integrity)
    # transport mode keeps the inner header as the outer one: its 20 bytes are not protected payload
    header_kept = IPV4_HEADER if mode == "transport" else 0
    if encryption is None and integrity is None:  # AH alone
        return avail + header_kept
    icv = AEAD_ICV.get(encryption or "", 0) or HMAC_ICV.get(integrity or "", 0)
    avail -= ESP_HEADER + IV_SIZE.get(encryption or "null", 16) + icv
    block = BLOCK_SIZE.get(encryption or "null", 16)
    return avail // block * block - ESP_TRAILER + header_kept


def worst_case_overhead(outer_mtu: int, transforms) -> int:
    """outer_mtu minus the smallest max_inner_size over `transforms` (dicts of keyword args)."""
    sizes = [max_inner_size(outer_mtu, **t) for t in transforms]
    return outer_mtu - min(sizes) if sizes else 0
