"""Wireshark (tshark, given the ESP keys) reads our IPComp: the header (RFC 3173 2.1) and, for
Deflate, it inflates the payload with its own decompressor into the inner IP packet.
A pcap is written to a temp dir and read back; no traffic is sent."""

import os
import shutil
import subprocess

import pytest
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw
from scapy.utils import wrpcap

from vpnd.esp import SA, DataPlane
from vpnd.esp.ipcomp import IPComp

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")

LOCAL, REMOTE = "10.200.0.1", "10.200.0.2"


@pytest.mark.parametrize("alg", ["deflate", "lzs"])
def test_tshark_reads_ipcomp_inside_esp(tmp_path, alg):
    ak = os.urandom(32)
    sa = SA(0x1001, "esp", "tunnel", "null", "sha256", b"", ak, local=LOCAL, remote=REMOTE)
    sa.ipcomp = IPComp(0x4321, alg)
    dp = DataPlane()
    dp.add_outbound(1, ["10.1.0.0/16"], ["10.2.0.0/16"], [sa])
    inner = bytes(IP(src="10.1.0.5", dst="10.2.0.7") / UDP(sport=40001, dport=40002)
                  / Raw(b"hello, compressed world " * 30))
    out = dp.encap(inner)
    assert len(out[2]) < len(inner)
    pcap = tmp_path / "ipcomp.pcap"
    wrpcap(str(pcap), [IP(out[2])])
    uat = (f'uat:esp_sa:"IPv4","{LOCAL}","{REMOTE}","0x00001001","NULL","",'
           f'"HMAC-SHA-256-128 [RFC4868]","0x{ak.hex()}"')
    r = subprocess.run(["tshark", "-r", str(pcap), "-o", "esp.enable_encryption_decode:TRUE",
                        "-o", uat, "-T", "fields", "-E", "separator=|", "-E", "occurrence=a",
                        "-e", "frame.protocols", "-e", "esp.pad_len", "-e", "ipcomp.next_header",
                        "-e", "ipcomp.flags", "-e", "ipcomp.cpi", "-e", "ip.src", "-e", "ip.dst",
                        "-e", "ip.len", "-e", "udp.dstport", "-e", "_ws.malformed"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    protocols, _pad, nh, flags, cpi, src, dst, ip_len, dport, malformed = \
        r.stdout.strip().split("|")
    assert (int(nh, 0), int(flags, 0), int(cpi, 0)) == (4, 0, 0x4321)
    assert not malformed
    if alg == "deflate":
        # Wireshark inflated it: the inner packet is dissected after IPComp
        assert protocols.endswith("esp:ipcomp:data:ip:udp:data"), protocols
        assert src.split(",") == [LOCAL, "10.1.0.5"] and dst.split(",") == [REMOTE, "10.2.0.7"]
        assert ip_len.split(",")[1] == str(len(inner)) and dport == "40002"
    else:
        # no LZS in Wireshark: the header only
        assert protocols.endswith("esp:ipcomp:data"), protocols
