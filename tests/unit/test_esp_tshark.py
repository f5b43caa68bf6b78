"""tshark (Wireshark's ESP dissector, given the same keys) decodes our ESP packets.

Wireshark 4.0 decrypts ESP (we check the decrypted payload and trailer) but does not
report whether an HMAC ICV verified, nor does it know ChaCha20-Poly1305; ICV checking and
ChaCha20 are covered by the scapy interop tests.  A pcap is written to a temp dir and read
back; no traffic is sent.
"""

import os
import shutil
import subprocess

import pytest
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw
from scapy.utils import wrpcap

from vpnd.esp import SA, DataPlane

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")

LOCAL, REMOTE = "10.200.0.1", "10.200.0.2"
WS_ENC = {"aes128gcm16": "AES-GCM with 16 octet ICV [RFC4106]",
          "aes256gcm16": "AES-GCM with 16 octet ICV [RFC4106]",
          "aes128": "AES-CBC [RFC3602]", "aes256": "AES-CBC [RFC3602]",
          "3des": "TripleDES-CBC [RFC2451]", "null": "NULL"}
WS_AUTH = {None: "NULL", "sha1": "HMAC-SHA-1-96 [RFC2404]",
           "sha256": "HMAC-SHA-256-128 [RFC4868]", "sha384": "HMAC-SHA-384-192 [RFC4868]",
           "sha512": "HMAC-SHA-512-256 [RFC4868]"}
KEYLEN = {"aes128gcm16": 20, "aes256gcm16": 36, "aes128": 16, "aes256": 32, "3des": 24, "null": 0,
          None: 0, "sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}


@pytest.mark.parametrize("udp", [False, True])
@pytest.mark.parametrize("enc,integ", [("aes128gcm16", None), ("aes256gcm16", None),
                                       ("aes128", "sha256"), ("aes256", "sha512"),
                                       ("3des", "sha1"), ("null", "sha384")])
def test_tshark_decodes_our_esp(tmp_path, enc, integ, udp):
    ek, ak = os.urandom(KEYLEN[enc]), os.urandom(KEYLEN[integ])
    sa = SA(0x1001, "esp", "tunnel", enc, integ, ek, ak, local=LOCAL, remote=REMOTE,
            encap=(4500, 4500) if udp else None)
    dp = DataPlane()
    dp.add_outbound(1, ["10.1.0.0/16"], ["10.2.0.0/16"], [sa])
    inners, frames = [], []
    for i in range(4):
        inner = bytes(IP(src="10.1.0.5", dst="10.2.0.7") / UDP(sport=40001, dport=40002)
                      / Raw(os.urandom(i * 37)))
        out = dp.encap(inner)
        if udp:
            frames.append(IP(src=LOCAL, dst=REMOTE) / UDP(sport=4500, dport=4500) / Raw(out[2]))
        else:
            frames.append(IP(out[2]))
        inners.append(inner)
    pcap = tmp_path / "esp.pcap"
    wrpcap(str(pcap), frames)
    uat = (f'uat:esp_sa:"IPv4","{LOCAL}","{REMOTE}","0x00001001","{WS_ENC[enc]}",'
           f'"0x{ek.hex()}","{WS_AUTH[integ]}","0x{ak.hex()}"')
    r = subprocess.run(["tshark", "-r", str(pcap), "-o", "esp.enable_encryption_decode:TRUE",
                        "-o", uat, "-T", "fields", "-E", "separator=|",
                        "-e", "esp.sequence", "-e", "esp.contained_data",
                        "-e", "esp.decrypted_data", "-e", "_ws.malformed", "-e", "_ws.expert"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    assert len(lines) == 4
    for i, (line, inner) in enumerate(zip(lines, inners)):
        seq, contained, decrypted, malformed, expert = line.split("|")
        assert int(seq, 0) == i + 1
        assert bytes.fromhex(contained.replace(":", "")) == inner
        plain = bytes.fromhex(decrypted.replace(":", ""))
        block = 16 if enc in ("aes128", "aes256") else 8 if enc == "3des" else 4
        pad = -(len(inner) + 2) % block
        # RFC 4303 2.4: padding 1, 2, 3, ..., pad length, next header 4 (IPv4)
        assert plain == inner + bytes(range(1, pad + 1)) + bytes((pad, 4))
        assert not malformed and not expert
