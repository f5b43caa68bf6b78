"""Independent checks of captured IPsec traffic: scapy's IPsec layer and tshark.

Maps our canonical algorithm names (docs/internals.md) to scapy's SecurityAssociation and
to Wireshark's esp_sa UAT, reads pcaps, and opens (decrypts + verifies) or builds ESP/AH
packets with scapy, independently of vpnd's own code.
"""
from __future__ import annotations

import contextlib
import os
import struct
import subprocess
from dataclasses import dataclass

from scapy.layers.inet import IP, UDP
from scapy.packet import bind_layers, split_layers
from scapy.layers.ipsec import AH, ESP, SecurityAssociation
from scapy.utils import RawPcapReader

NATT_PORT = 4500

# canonical name -> (scapy name, key bytes incl. AEAD salt per RFC 4106 8.1 / RFC 7634 2)
SCAPY_ENC = {
    "aes128gcm16": ("AES-GCM", 20), "aes256gcm16": ("AES-GCM", 36),
    "chacha20poly1305": ("CHACHA20-POLY1305", 36),
    "aes128": ("AES-CBC", 16), "aes256": ("AES-CBC", 32),
    "3des": ("3DES", 24), "null": ("NULL", 0),
}
SCAPY_AUTH = {
    "md5": ("HMAC-MD5-96", 16), "sha1": ("HMAC-SHA1-96", 20), "sha256": ("SHA2-256-128", 32),
    "sha384": ("SHA2-384-192", 48), "sha512": ("SHA2-512-256", 64),
}
AEAD = {"aes128gcm16", "aes256gcm16", "chacha20poly1305"}

# Wireshark 4.0's esp_sa UAT value strings (packet-ipsec.c). It has no ESN support and
# no ChaCha20-Poly1305 for ESP, so those cases are not given to tshark.
TSHARK_ENC = {
    "aes128gcm16": "AES-GCM with 16 octet ICV [RFC4106]",
    "aes256gcm16": "AES-GCM with 16 octet ICV [RFC4106]",
    "aes128": "AES-CBC [RFC3602]", "aes256": "AES-CBC [RFC3602]",
    "3des": "TripleDES-CBC [RFC2451]", "null": "NULL",
}
TSHARK_AUTH = {
    None: "NULL", "sha1": "HMAC-SHA-1-96 [RFC2404]", "sha256": "HMAC-SHA-256-128 [RFC4868]",
    "sha384": "HMAC-SHA-384-192 [RFC4868]", "sha512": "HMAC-SHA-512-256 [RFC4868]",
}


@dataclass(frozen=True)
class Transform:
    """What one connection protects with: ESP (enc, integ), AH (ah), or both (bundle)."""
    name: str
    enc: str | None = None        # None = no ESP
    integ: str | None = None      # ESP integrity (None for AEAD)
    ah: str | None = None         # AH integrity (None = no AH)

    @property
    def esp_text(self) -> str | None:
        if self.enc is None:
            return None
        return self.enc if self.integ is None else f"{self.enc}-{self.integ}"

    @property
    def tshark_ok(self) -> bool:
        return self.ah is None and self.enc in TSHARK_ENC


@dataclass(frozen=True)
class DirKeys:
    """Keys of one direction (one SPI per protocol)."""
    esp_spi: int = 0
    enc_key: bytes = b""
    auth_key: bytes = b""
    ah_spi: int = 0
    ah_key: bytes = b""

    @classmethod
    def random(cls, t: Transform, esp_spi: int, ah_spi: int) -> "DirKeys":
        return cls(
            esp_spi=esp_spi if t.enc else 0,
            enc_key=os.urandom(SCAPY_ENC[t.enc][1]) if t.enc else b"",
            auth_key=os.urandom(SCAPY_AUTH[t.integ][1]) if t.integ else b"",
            ah_spi=ah_spi if t.ah else 0,
            ah_key=os.urandom(SCAPY_AUTH[t.ah][1]) if t.ah else b"")

    def manual_yaml(self) -> str:
        """This direction as the `manual:` inbound/outbound flow mapping of the config."""
        parts = []
        if self.esp_spi:
            esp = f"spi: {self.esp_spi:#x}"
            if self.enc_key:
                esp += f', enc_key: "{self.enc_key.hex()}"'
            if self.auth_key:
                esp += f', auth_key: "{self.auth_key.hex()}"'
            parts.append(f"esp: {{{esp}}}")
        if self.ah_spi:
            parts.append(f'ah: {{spi: {self.ah_spi:#x}, key: "{self.ah_key.hex()}"}}')
        return "{" + ", ".join(parts) + "}"


class SaPair:
    """scapy SAs for one direction: ESP and/or AH (bundle: AH outside ESP, RFC 4301 4.5)."""

    def __init__(self, t: Transform, k: DirKeys, *, mode: str, encap: bool, esn: bool,
                 src: str, dst: str):
        tunnel = IP(src=src, dst=dst) if mode == "tunnel" else None
        self.esp = self.ah = None
        if t.enc:
            enc, _ = SCAPY_ENC[t.enc]
            auth = SCAPY_AUTH[t.integ][0] if t.integ else "NULL"
            self.esp = SecurityAssociation(
                ESP, spi=k.esp_spi, crypt_algo=enc, crypt_key=k.enc_key or None,
                auth_algo=auth, auth_key=k.auth_key or None, tunnel_header=tunnel,
                nat_t_header=UDP(sport=NATT_PORT, dport=NATT_PORT) if encap else None,
                esn_en=esn)
        if t.ah:
            # In a bundle the ESP SA already did the tunnelling; AH covers its outer header.
            self.ah = SecurityAssociation(
                AH, spi=k.ah_spi, auth_algo=SCAPY_AUTH[t.ah][0], auth_key=k.ah_key,
                tunnel_header=None if t.enc else tunnel, esn_en=esn)

    def open(self, outer: bytes) -> bytes:
        """Verify and decrypt one captured outer IPv4 packet; returns the inner packet bytes
        (tunnel: the inner IP packet; transport: the rebuilt original packet).
        Raises scapy's IPSecIntegrityError on a bad ICV."""
        pkt = IP(outer)
        if pkt.proto == 51:
            assert self.ah is not None, "AH packet on an ESP-only SA"
            with _esp_opaque():
                opened = bytes(self.ah.decrypt(IP(outer)))
            pkt = IP(opened)
            if self.esp is None:
                return bytes(pkt)
        if pkt.proto == 17:
            pkt = _strip_natt(pkt)
        assert pkt.proto == 50 and self.esp is not None, f"not ESP: proto {pkt.proto}"
        return bytes(self.esp.decrypt(pkt))

    def seal(self, inner: bytes, seq: int) -> bytes:
        """Build the outer packet for `inner` with sequence number `seq` (low 32 bits)."""
        pkt = IP(inner)
        if self.esp is not None:
            pkt = IP(bytes(self.esp.encrypt(pkt, seq_num=seq)))
        if self.ah is not None:
            with _esp_opaque():
                sealed = bytes(self.ah.encrypt(IP(bytes(pkt)), seq_num=seq))
            pkt = IP(sealed)
        return bytes(pkt)


@contextlib.contextmanager
def _esp_opaque():
    """scapy's ICV code handles an ESP layer before an AH one, so with AH outside ESP
    (a bundle) it would sign/verify the ESP part. Keep IP's payload undissected meanwhile."""
    split_layers(IP, ESP, proto=50)
    try:
        yield
    finally:
        bind_layers(IP, ESP, proto=50)


def _strip_natt(pkt: IP) -> IP:
    """IP/UDP(4500)/ESP -> IP/ESP with the same header fields (RFC 3948 section 3.3)."""
    esp = bytes(pkt[UDP].payload)
    hdr = pkt.copy()
    hdr.remove_payload()
    hdr.proto = 50
    hdr.len = None
    hdr.chksum = None
    return IP(bytes(hdr / ESP(esp)))


def ipsec_spi(ip: bytes) -> tuple[str, int] | None:
    """(protocol, SPI) of an IPsec packet (raw ESP/AH or ESP in UDP 4500), else None."""
    ihl = (ip[0] & 0x0F) * 4
    proto = ip[9]
    if proto == 50 and len(ip) >= ihl + 8:
        return "esp", struct.unpack_from("!I", ip, ihl)[0]
    if proto == 51 and len(ip) >= ihl + 8:
        return "ah", struct.unpack_from("!I", ip, ihl + 4)[0]
    if proto == 17 and len(ip) >= ihl + 16:
        sport, dport = struct.unpack_from("!HH", ip, ihl)
        if NATT_PORT in (sport, dport):
            spi = struct.unpack_from("!I", ip, ihl + 8)[0]
            if spi != 0:   # 0 = non-ESP marker (IKE); 1-byte 0xff keepalives are shorter
                return "esp", spi
    return None


def read_ip_packets(path) -> list[bytes]:
    """IPv4 packets of a pcap from an Ethernet (veth) or raw-IP (TUN) capture."""
    out = []
    reader = RawPcapReader(str(path))
    link = reader.linktype
    for data, _meta in reader:
        if link == 1:                  # Ethernet
            if data[12:14] != b"\x08\x00":
                continue
            data = data[14:]
        if data and data[0] >> 4 == 4:
            out.append(bytes(data))
    reader.close()
    return out


def ip_addrs(ip: bytes) -> tuple[str, str]:
    return ".".join(map(str, ip[12:16])), ".".join(map(str, ip[16:20]))


def tshark_uat(t: Transform, k: DirKeys, src: str, dst: str) -> str:
    enc_key = "0x" + k.enc_key.hex() if k.enc_key else ""
    auth_key = "0x" + k.auth_key.hex() if k.auth_key else ""
    fields = ["IPv4", src, dst, f"0x{k.esp_spi:08x}", TSHARK_ENC[t.enc], enc_key,
              TSHARK_AUTH[t.integ], auth_key]
    return "uat:esp_sa:" + ",".join(f'"{f}"' for f in fields)


def tshark_decode(pcap, uats: list[str]) -> list[dict]:
    """Run tshark with ESP decryption and ICV checking; one dict per frame."""
    argv = ["tshark", "-n", "-r", str(pcap),
            "-o", "esp.enable_encryption_decode:TRUE",
            "-o", "esp.enable_authentication_check:TRUE"]
    for u in uats:
        argv += ["-o", u]
    cols = ["frame.number", "esp.spi", "esp.icv_good", "esp.icv_bad", "icmp.type", "data.data",
            "_ws.malformed", "_ws.expert.severity", "frame.protocols"]
    argv += ["-T", "fields", "-E", "separator=|", "-E", "occurrence=a", "-E", "aggregator=,"]
    for c in cols:
        argv += ["-e", c]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise RuntimeError(f"tshark failed: {p.stderr[-500:]}")
    rows = []
    for line in p.stdout.splitlines():
        vals = line.split("|")
        rows.append(dict(zip(cols, vals)))
    return rows
