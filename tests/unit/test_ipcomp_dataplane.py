"""IPComp in the data plane (RFC 3173): compressed before ESP/AH on output, decompressed
after them on input; tunnel mode compresses the whole inner packet (next header 4),
transport mode the payload.  Wire packets are opened/built with scapy's ESP and zlib,
not with our own encapsulation."""

import os
import struct
import zlib

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.ipsec import AH, ESP, SecurityAssociation
from scapy.packet import Raw

from vpnd.esp import SA, DataPlane
from vpnd.esp.ipcomp import IPComp, deflate_compress, lzs_compress

LOCAL, REMOTE = "10.200.0.1", "10.200.0.2"
KEY20 = bytes(range(20))
TEXT = (b"The quick brown fox jumps over the lazy dog. " * 40)[:1200]


def inner(payload=TEXT, src="10.1.0.5", dst="10.2.0.7"):
    return bytes(IP(src=src, dst=dst, id=7) / UDP(sport=1000, dport=2000) / Raw(payload))


def esp_sa(mode="tunnel", spi=0x3000, local=LOCAL, remote=REMOTE, ipcomp=None):
    sa = SA(spi, "esp", mode, "aes128gcm16", None, KEY20, local=local, remote=remote)
    sa.ipcomp = ipcomp
    return sa


def scapy_esp(spi=0x3000, seq=1):
    # no tunnel header: scapy treats the packet as transport mode and leaves the ESP next
    # header (108 = IPComp, or 4) and the payload as they are
    return SecurityAssociation(ESP, spi=spi, seq_num=seq, crypt_algo="AES-GCM", crypt_key=KEY20)


def tx(bundle, lts="10.1.0.0/16", rts="10.2.0.0/16"):
    dp = DataPlane()
    dp.add_outbound("p", [lts], [rts], bundle)
    return dp


def rx(bundle, lts="10.2.0.0/16", rts="10.1.0.0/16", check=True):
    dp = DataPlane()
    dp.add_inbound(bundle, local_ts=[lts] if check else None, remote_ts=[rts] if check else None)
    return dp


@pytest.mark.parametrize("alg", ["deflate", "lzs"])
def test_tunnel_output_is_ipcomp_inside_esp(alg):
    ipc = IPComp(0x4321, alg)
    dp = tx([esp_sa(ipcomp=ipc)])
    pkt = inner()
    kind, dst, wire = dp.encap(pkt)
    assert kind == "raw" and dst == REMOTE
    opened = scapy_esp().decrypt(IP(wire))
    assert opened.proto == 108                           # ESP next header: IPComp
    body = bytes(opened.payload)
    nh, flags, cpi = struct.unpack("!BBH", body[:4])
    assert (nh, flags, cpi) == (4, 0, 0x4321)           # the whole inner IPv4 packet
    if alg == "deflate":
        assert zlib.decompress(body[4:], -15) == pkt    # raw deflate, as Linux reads it
    assert len(wire) < len(pkt)
    assert ipc.counters["compressed"] == 1


def test_tunnel_small_or_incompressible_goes_without_ipcomp_header():
    ipc = IPComp(0x4321, "deflate")
    dp = tx([esp_sa(ipcomp=ipc)])
    for payload in (b"x" * 20, os.urandom(1000)):
        pkt = inner(payload)
        opened = scapy_esp(seq=ipc.uncompressed + 1).decrypt(IP(dp.encap(pkt)[2]))
        assert opened.proto == 4 and bytes(opened.payload) == pkt     # RFC 3173 2.2
    assert ipc.counters["uncompressed"] == 2 and ipc.counters["compressed"] == 0


@pytest.mark.parametrize("cpi", [0x4321, 2])          # negotiated CPI, or the well-known one
def test_tunnel_input_from_independent_packet(cpi):
    rx_ipc = IPComp(0x4321, "deflate")
    sa = esp_sa(local=REMOTE, remote=LOCAL, ipcomp=rx_ipc)
    dp = rx(sa)
    pkt = inner()
    comp = struct.pack("!BBH", 4, 0, cpi) + zlib.compress(pkt, 9)[2:-4]   # raw deflate
    wire = bytes(scapy_esp().encrypt(IP(src=LOCAL, dst=REMOTE, proto=108) / Raw(comp)))
    assert dp.decap(wire, 50, LOCAL, None) == pkt
    # and an uncompressed one on the same SA (RFC 3173 2: both MUST be accepted)
    wire = bytes(scapy_esp(seq=2).encrypt(IP(src=LOCAL, dst=REMOTE, proto=4) / Raw(pkt)))
    assert dp.decap(wire, 50, LOCAL, None) == pkt
    assert sa.packets_in == 2 and rx_ipc.counters["decompressed"] == 1


def test_decompressed_packet_still_checked_against_selectors():
    sa = esp_sa(local=REMOTE, remote=LOCAL, ipcomp=IPComp(0x4321, "lzs"))
    dp = rx(sa)
    pkt = inner(src="10.9.0.5")                      # outside the remote selector
    comp = struct.pack("!BBH", 4, 0, 0x4321) + lzs_compress(pkt)
    wire = bytes(scapy_esp().encrypt(IP(src=LOCAL, dst=REMOTE, proto=108) / Raw(comp)))
    assert dp.decap(wire, 50, LOCAL, None) is None and sa.policy_drops == 1


def test_bomb_and_garbage_dropped_and_counted_then_traffic_flows():
    rx_ipc = IPComp(0x4321, "deflate")
    sa = esp_sa(local=REMOTE, remote=LOCAL, ipcomp=rx_ipc)
    dp = rx(sa, check=False)
    bomb = struct.pack("!BBH", 4, 0, 0x4321) + deflate_compress(b"\x00" * 200_000)
    junk = struct.pack("!BBH", 4, 0, 0x4321) + os.urandom(300)
    for i, body in enumerate((bomb, junk), 1):
        wire = bytes(scapy_esp(seq=i).encrypt(IP(src=LOCAL, dst=REMOTE, proto=108) / Raw(body)))
        assert dp.decap(wire, 50, LOCAL, None) is None
    assert rx_ipc.decompress_errors == 2
    pkt = inner()
    comp = struct.pack("!BBH", 4, 0, 0x4321) + deflate_compress(pkt)
    wire = bytes(scapy_esp(seq=3).encrypt(IP(src=LOCAL, dst=REMOTE, proto=108) / Raw(comp)))
    assert dp.decap(wire, 50, LOCAL, None) == pkt


def test_ipcomp_on_an_sa_without_it_is_dropped():
    sa = esp_sa(local=REMOTE, remote=LOCAL)
    dp = rx(sa, check=False)
    comp = struct.pack("!BBH", 4, 0, 2) + deflate_compress(inner())
    wire = bytes(scapy_esp().encrypt(IP(src=LOCAL, dst=REMOTE, proto=108) / Raw(comp)))
    assert dp.decap(wire, 50, LOCAL, None) is None and sa.policy_drops == 1


@pytest.mark.parametrize("alg", ["deflate", "lzs"])
@pytest.mark.parametrize("mode,protos", [("tunnel", ("esp",)), ("tunnel", ("ah",)),
                                         ("tunnel", ("esp", "ah")), ("transport", ("esp",)),
                                         ("transport", ("ah",)), ("transport", ("esp", "ah"))])
def test_round_trip_every_bundle(alg, mode, protos):
    def bundle(local, remote):
        out = []
        if "esp" in protos:
            out.append(SA(0x5000, "esp", mode, "aes128", "sha1", bytes(16), bytes(20),
                          local=local, remote=remote))
        if "ah" in protos:
            out.append(SA(0x5001, "ah", mode, None, "sha256", b"", bytes(32),
                          local=local, remote=remote))
        out[0].ipcomp = IPComp(0x4321, alg)
        return out
    txb, rxb = bundle(LOCAL, REMOTE), bundle(REMOTE, LOCAL)
    if mode == "tunnel":
        dp_tx, dp_rx = tx(txb), rx(rxb)
    else:
        dp_tx = tx(txb, f"{LOCAL}/32", f"{REMOTE}/32")
        dp_rx = rx(rxb, check=False)
    for payload in (TEXT, b"short", os.urandom(600)):
        p = inner(payload) if mode == "tunnel" else inner(payload, LOCAL, REMOTE)
        out = dp_tx.encap(p)
        assert out[0] == "raw"
        got = dp_rx.decap(out[2], 51 if protos[-1] == "ah" else 50, LOCAL, None)
        if mode == "transport":
            # the header is rebuilt (protocol, length, checksum): compare what it carries
            assert IP(got).payload == IP(p).payload and IP(got).src == LOCAL
        else:
            assert got == p
        if payload == TEXT:
            assert len(out[2]) < len(p)
    assert txb[0].ipcomp.counters["compressed"] == 1
    assert txb[0].ipcomp.counters["uncompressed"] == 2
    assert rxb[0].ipcomp.counters["decompressed"] == 1


def test_transport_ipcomp_next_header_is_the_payload_protocol():
    ipc = IPComp(0x4321, "deflate")
    dp = tx([esp_sa("transport", ipcomp=ipc)], f"{LOCAL}/32", f"{REMOTE}/32")
    pkt = inner(src=LOCAL, dst=REMOTE)
    opened = scapy_esp().decrypt(IP(dp.encap(pkt)[2]))
    body = bytes(opened.payload)
    assert opened.proto == 108 and body[0] == 17              # UDP inside IPComp
    assert zlib.decompress(body[4:], -15) == pkt[20:]


@pytest.mark.parametrize("alg", ["deflate", "lzs"])
def test_ipv6_inner_packet_next_header_41(alg):
    from scapy.layers.inet6 import IPv6
    tx_sa = esp_sa(ipcomp=IPComp(0x4321, alg))
    rx_sa = esp_sa(local=REMOTE, remote=LOCAL, ipcomp=IPComp(0x4321, alg))
    dp_tx = tx([tx_sa], "fd01::/64", "fd02::/64")
    dp_rx = rx(rx_sa, "fd02::/64", "fd01::/64")
    pkt = bytes(IPv6(src="fd01::5", dst="fd02::7") / UDP(sport=1, dport=2) / Raw(TEXT))
    out = dp_tx.encap(pkt)
    opened = scapy_esp().decrypt(IP(out[2]))
    assert opened.proto == 108 and bytes(opened.payload)[0] == 41      # IPv6 inside IPComp
    assert dp_rx.decap(out[2], 50, LOCAL, None) == pkt


def test_udp_encapsulated_transport_mode():
    """ESP in UDP (RFC 3948) transport mode: the receiver rebuilds the header from the
    addresses after decompressing."""
    def sa(local, remote):
        s = SA(0x5000, "esp", "transport", "aes128gcm16", None, KEY20, local=local,
               remote=remote, encap=(4500, 4500))
        s.ipcomp = IPComp(0x4321, "deflate")
        return s
    dp_tx = tx([sa(LOCAL, REMOTE)], f"{LOCAL}/32", f"{REMOTE}/32")
    dp_rx = rx(sa(REMOTE, LOCAL), check=False)
    p = inner(src=LOCAL, dst=REMOTE)
    out = dp_tx.encap(p)
    assert out[0] == "udp" and len(out[2]) < len(p)
    got = dp_rx.decap(out[2], 17, LOCAL, 4500)
    assert IP(got)[UDP].payload == IP(p)[UDP].payload and IP(got).proto == 17
