"""Our ESP/AH against scapy's independent implementation (scapy.layers.ipsec), both ways.

For every algorithm x tunnel/transport x ESN on/off x raw/UDP-encapsulated: packets we
encapsulate decrypt in scapy to the exact inner packet, and packets scapy encrypts come
out of our decap as the exact inner packet.  Same for AH alone and the ESP+AH bundle.

scapy notes (2.8.0), checked by reading scapy/layers/ipsec.py:
- ESN: scapy takes the high 32 bits as a fixed `esn` argument per SA (it does no
  inference); we drive our SAs across the 2^32 boundary and give scapy the matching high
  half, so the ESN high bits really enter the ICV/AAD on both sides.
- NAT-T: scapy's nat_t_header puts UDP between the IP header and ESP; on decryption in
  transport mode it keeps that IP header.  Our UDP receive path only sees the ESP bytes
  (the socket strips IP/UDP) and rebuilds the header from the addresses, so for
  transport+UDP the inner packets use TTL 64 / ID 0 / no flags to compare byte-exact.
- AH: scapy zeroes TOS, flags, TTL and checksum but not the fragment offset (RFC 4302
  3.3.3.1.1.1 zeroes it too); our packets are unfragmented, so this does not show.
- ESP+AH: scapy's AuthAlgo.sign() tests `haslayer(ESP)` before `haslayer(AH)`, so AH
  applied over an ESP packet appends an ESP-style MAC instead of filling the AH ICV.
  scapy verifies such bundles correctly, but to produce one we build the AH layer with
  scapy's own AH class and zero_mutable_fields() and compute the HMAC with hashlib
  (scapy_ah_over_esp below) - still independent of our code.
"""

import hmac
import struct

import os

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import AH, ESP, SecurityAssociation, zero_mutable_fields
from scapy.packet import Raw

from vpnd.esp import SA, DataPlane

LOCAL, REMOTE = "10.200.0.1", "10.200.0.2"
NATT = 4500

# canonical (encryption, integrity) -> (scapy crypt algo, scapy auth algo, enc key len, auth key len)
ESP_ALGOS = {
    ("aes128gcm16", None): ("AES-GCM", None, 20, 0),
    ("aes256gcm16", None): ("AES-GCM", None, 36, 0),
    ("chacha20poly1305", None): ("CHACHA20-POLY1305", None, 36, 0),
    ("aes128", "sha1"): ("AES-CBC", "HMAC-SHA1-96", 16, 20),
    ("aes128", "sha256"): ("AES-CBC", "SHA2-256-128", 16, 32),
    ("aes128", "sha384"): ("AES-CBC", "SHA2-384-192", 16, 48),
    ("aes128", "sha512"): ("AES-CBC", "SHA2-512-256", 16, 64),
    ("aes256", "sha1"): ("AES-CBC", "HMAC-SHA1-96", 32, 20),
    ("aes256", "sha256"): ("AES-CBC", "SHA2-256-128", 32, 32),
    ("aes256", "sha384"): ("AES-CBC", "SHA2-384-192", 32, 48),
    ("aes256", "sha512"): ("AES-CBC", "SHA2-512-256", 32, 64),
    ("3des", "sha1"): ("3DES", "HMAC-SHA1-96", 24, 20),
    ("null", "sha256"): ("NULL", "SHA2-256-128", 0, 32),
    ("aes128", "md5"): ("AES-CBC", "HMAC-MD5-96", 16, 16),
}
AH_ALGOS = {"sha1": ("HMAC-SHA1-96", 20), "sha256": ("SHA2-256-128", 32),
            "md5": ("HMAC-MD5-96", 16), "sha384": ("SHA2-384-192", 48),
            "sha512": ("SHA2-512-256", 64)}

ESN_HI = 1          # with ESN on, both sides run in the second 2^32 block of sequence numbers


def inner_packet(mode, udp_encap, size=300, v6=False):
    if v6:
        return bytes(IPv6(src="fd01::5", dst="fd02::7") / TCP(sport=4321, dport=22, flags="A")
                     / Raw(os.urandom(size)))
    if mode == "tunnel":
        return bytes(IP(src="10.1.0.5", dst="10.2.0.7", id=777, ttl=61, flags="DF", tos=0x28)
                     / TCP(sport=1234, dport=80, flags="PA", seq=99) / Raw(os.urandom(size)))
    if udp_encap:
        # rebuilt on receive from the addresses alone (see module docstring)
        return bytes(IP(src=LOCAL, dst=REMOTE, id=0, ttl=64, flags=0)
                     / UDP(sport=5000, dport=6000) / Raw(os.urandom(size)))
    return bytes(IP(src=LOCAL, dst=REMOTE, id=4242, ttl=33, flags="DF")
                 / UDP(sport=5000, dport=6000) / Raw(os.urandom(size)))


def make_pair(proto, mode, enc, integ, esn, udp, spi=0x1234):
    """(our outbound SA, our inbound SA, scapy SA) sharing SPI and keys."""
    if proto == "esp":
        s_crypt, s_auth, ek_len, ak_len = ESP_ALGOS[(enc, integ)]
    else:
        s_crypt, (s_auth, ak_len), ek_len = None, AH_ALGOS[integ], 0
    ek, ak = os.urandom(ek_len), os.urandom(ak_len)
    encap = (NATT, NATT) if udp else None
    out = SA(spi, proto, mode, enc if proto == "esp" else None, integ, ek, ak, esn=esn,
             local=LOCAL, remote=REMOTE, encap=encap)
    inn = SA(spi, proto, mode, enc if proto == "esp" else None, integ, ek, ak, esn=esn,
             local=REMOTE, remote=LOCAL, encap=encap)
    kw = {}
    if mode == "tunnel":
        kw["tunnel_header"] = IP(src=LOCAL, dst=REMOTE)
    if udp:
        kw["nat_t_header"] = UDP(sport=NATT, dport=NATT)
    if esn:
        kw.update(esn_en=True, esn=ESN_HI)
        out.seq = (ESN_HI << 32) + 10          # next packet: high 1, low 11
        inn.rp_top = (ESN_HI << 32) + 5        # receiver has seen up to high 1, low 5
    ssa = SecurityAssociation(ESP if proto == "esp" else AH, spi=spi,
                              seq_num=11 if esn else 1,
                              crypt_algo=s_crypt, crypt_key=ek or None,
                              auth_algo=s_auth, auth_key=ak or None, **kw)
    return out, inn, ssa


def policy_for(mode, v6=False):
    if mode == "tunnel":
        return (["fd01::/64"], ["fd02::/64"]) if v6 else (["10.1.0.0/16"], ["10.2.0.0/16"])
    return [LOCAL + "/32"], [REMOTE + "/32"]


def send_ours(bundle, mode, pkt, v6=False):
    dp = DataPlane(outer_mtu=1500)
    lts, rts = policy_for(mode, v6)
    dp.add_outbound("p", lts, rts, bundle)
    out = dp.encap(pkt)
    assert out is not None, dp.counters
    return out


def to_scapy_packet(out):
    """Our Out tuple -> the packet as it appears on the wire, parsed by scapy."""
    if out[0] == "raw":
        assert out[1] == REMOTE
        return IP(out[2])
    assert out[0] == "udp" and out[1] == (REMOTE, NATT) and out[3] == (LOCAL, NATT)
    return IP(bytes(IP(src=LOCAL, dst=REMOTE, id=0, ttl=64) / UDP(sport=NATT, dport=NATT)
                    / Raw(out[2])))


def receive_ours(dp, wire: bytes, udp: bool):
    if udp:
        p = IP(wire)
        assert p.haslayer(UDP)
        return dp.decap(bytes(p[UDP].payload), 17, p[IP].src, p[UDP].sport)
    return dp.decap(wire, IP(wire).proto, IP(wire).src, None)


def inbound_dp(sas, mode, v6=False):
    dp = DataPlane()
    lts, rts = policy_for(mode, v6)
    # inbound: the peer's local is our remote
    dp.add_inbound(sas, local_ts=rts, remote_ts=lts)
    return dp


def scapy_plain(dec, mode, udp):
    if mode == "tunnel":
        return bytes(dec)
    p = dec if isinstance(dec, IP) else IP(bytes(dec))
    if udp:
        # scapy keeps the UDP-carrying header with its own id/ttl; compare what it protects
        return bytes(p.payload)
    return bytes(p)


def expected_plain(pkt, mode, udp):
    if mode == "transport" and udp:
        return bytes(IP(pkt).payload)
    return pkt


ESP_CASES = [(e, i, m, esn, udp) for (e, i) in ESP_ALGOS for m in ("tunnel", "transport")
             for esn in (False, True) for udp in (False, True)]


@pytest.mark.parametrize("enc,integ,mode,esn,udp", ESP_CASES)
def test_esp_ours_to_scapy(enc, integ, mode, esn, udp):
    out_sa, _, ssa = make_pair("esp", mode, enc, integ, esn, udp)
    for size in (0, 1, 2, 3, 300, 1357):
        pkt = inner_packet(mode, udp, size)
        wire = to_scapy_packet(send_ours([out_sa], mode, pkt))
        dec = ssa.decrypt(wire)            # raises IPSecIntegrityError on a bad ICV
        assert scapy_plain(dec, mode, udp) == expected_plain(pkt, mode, udp)
    assert out_sa.packets_out == 6


@pytest.mark.parametrize("enc,integ,mode,esn,udp", ESP_CASES)
def test_esp_scapy_to_ours(enc, integ, mode, esn, udp):
    _, in_sa, ssa = make_pair("esp", mode, enc, integ, esn, udp)
    dp = inbound_dp(in_sa, mode)
    for size in (0, 1, 2, 3, 300, 1357):
        pkt = inner_packet(mode, udp, size)
        wire = bytes(ssa.encrypt(IP(pkt)))
        assert receive_ours(dp, wire, udp) == pkt
    assert in_sa.packets_in == 6 and in_sa.auth_failures == 0


@pytest.mark.parametrize("esn", [False, True])
@pytest.mark.parametrize("udp", [False, True])
@pytest.mark.parametrize("enc,integ", [("aes256gcm16", None), ("aes128", "sha256")])
def test_esp_inner_ipv6_tunnel(enc, integ, esn, udp):
    out_sa, in_sa, ssa = make_pair("esp", "tunnel", enc, integ, esn, udp)
    pkt = inner_packet("tunnel", udp, 200, v6=True)
    wire = to_scapy_packet(send_ours([out_sa], "tunnel", pkt, v6=True))
    assert bytes(ssa.decrypt(wire)) == pkt
    dp = inbound_dp(in_sa, "tunnel", v6=True)
    wire = bytes(ssa.encrypt(IPv6(pkt)))
    assert receive_ours(dp, wire, udp) == pkt


AH_CASES = [(i, m, esn) for i in AH_ALGOS for m in ("tunnel", "transport") for esn in (False, True)]


@pytest.mark.parametrize("integ,mode,esn", AH_CASES)
def test_ah_both_ways(integ, mode, esn):
    out_sa, in_sa, ssa = make_pair("ah", mode, None, integ, esn, False)
    dp = inbound_dp(in_sa, mode)
    for size in (0, 5, 700):
        pkt = inner_packet(mode, False, size)
        out = send_ours([out_sa], mode, pkt)
        assert out[0] == "raw"
        wire = IP(out[2])
        assert wire.proto == 51 and wire[AH].spi == 0x1234
        assert bytes(ssa.decrypt(wire)) == pkt
        wire = bytes(ssa.encrypt(IP(pkt)))
        # routers may change the mutable fields: TTL, TOS, checksum are outside the ICV
        mutated = IP(wire)
        mutated.ttl -= 3
        mutated.tos = 0x04
        del mutated.chksum
        expected = pkt
        if mode == "transport":
            e = IP(pkt)
            e.ttl -= 3
            e.tos = 0x04
            del e.chksum
            expected = bytes(e)
        assert dp.decap(bytes(mutated), 51, LOCAL, None) == expected
    assert in_sa.auth_failures == 0 and in_sa.packets_in == 3


HASHES = {"sha1": ("sha1", 12), "sha256": ("sha256", 16)}


def scapy_ah_over_esp(esp_pkt, spi, seq, integ, key, esn_hi=None):
    """AH (RFC 4302) around an IP/ESP packet made by scapy, see the module docstring."""
    hname, icv_len = HASHES[integ]
    ip = IP(bytes(esp_pkt))
    payload = bytes(ip.payload)
    hdr = ip.copy()
    hdr.remove_payload()
    hdr.proto = 51
    del hdr.len, hdr.chksum
    ah = AH(nh=50, spi=spi, seq=seq, icv=b"\x00" * icv_len)
    ah.payloadlen = len(ah) // 4 - 2
    pkt = hdr / ah / Raw(payload)
    data = bytes(zero_mutable_fields(pkt.copy(), sending=True))
    if esn_hi is not None:
        data += struct.pack("!I", esn_hi)
    pkt[AH].icv = hmac.new(key, data, hname).digest()[:icv_len]
    return bytes(pkt)


BUNDLE_CASES = [(e, i, a, m, esn) for (e, i) in [("aes128gcm16", None), ("aes256", "sha256")]
                for a in ("sha1", "sha256") for m in ("tunnel", "transport")
                for esn in (False, True)]


@pytest.mark.parametrize("enc,integ,ah_integ,mode,esn", BUNDLE_CASES)
def test_esp_ah_bundle_both_ways(enc, integ, ah_integ, mode, esn):
    esp_out, esp_in, s_esp = make_pair("esp", mode, enc, integ, esn, False, spi=0x2000)
    ah_out, ah_in, s_ah = make_pair("ah", "transport", None, ah_integ, esn, False, spi=0x2001)
    # ESP inside, AH outside (RFC 4301 4.5); AH then covers the ESP packet's outer header
    ah_out.mode = ah_in.mode = mode
    dp_in = inbound_dp([esp_in, ah_in], mode)
    for size in (10, 900):
        pkt = inner_packet(mode, False, size)
        out = send_ours([esp_out, ah_out], mode, pkt)
        wire = IP(out[2])
        assert wire.proto == 51 and wire[AH].nh == 50
        after_ah = s_ah.decrypt(wire)
        assert after_ah.proto == 50
        assert bytes(s_esp.decrypt(IP(bytes(after_ah)))) == pkt
        wire = scapy_ah_over_esp(s_esp.encrypt(IP(pkt)), 0x2001, s_ah.seq_num, ah_integ,
                                 s_ah.auth_key, ESN_HI if esn else None)
        s_ah.seq_num += 1
        assert dp_in.decap(wire, 51, LOCAL, None) == pkt
    assert esp_in.packets_in == 2 and ah_in.packets_in == 2
    # ESP of a bundle SA arriving without its AH is a policy violation (RFC 4301 5.2)
    bare = bytes(s_esp.encrypt(IP(inner_packet(mode, False, 10))))
    assert dp_in.decap(bare, 50, LOCAL, None) is None
    assert esp_in.policy_drops == 1


@pytest.mark.parametrize("integ", ["sha1", "sha256"])
def test_ah_transport_with_ip_options(integ):
    """RFC 4302 3.3.3.1.1.1: immutable options (Router Alert) are covered by the ICV,
    mutable ones (Record Route) are zeroed - a router filling in Record Route must not
    break the ICV.  scapy implements the same table (its IMMUTABLE_IPV4_OPTIONS)."""
    from scapy.layers.inet import IPOption_Router_Alert, IPOption_RR

    out_sa, in_sa, ssa = make_pair("ah", "transport", None, integ, False, False)
    dp = inbound_dp(in_sa, "transport")
    opts = [IPOption_Router_Alert(), IPOption_RR(pointer=4, routers=["0.0.0.0", "0.0.0.0"])]
    pkt = bytes(IP(src=LOCAL, dst=REMOTE, id=5, ttl=20, options=opts)
                / UDP(sport=1, dport=2) / Raw(b"opts"))
    assert (IP(pkt).ihl or 0) > 5
    out = send_ours([out_sa], "transport", pkt)
    wire = IP(out[2])
    assert wire.proto == 51 and wire.ihl == IP(pkt).ihl
    assert bytes(ssa.decrypt(wire)) == pkt

    def route_recorded(raw: bytes) -> bytes:
        # a router records its address in the RR option (and lowers TTL)
        p = IP(raw)
        p.options[1].routers = ["192.0.2.1", "0.0.0.0"]
        p.options[1].pointer = 8
        p.ttl -= 1
        del p.chksum
        return bytes(p)

    wire = bytes(ssa.encrypt(IP(pkt)))
    got = dp.decap(route_recorded(wire), 51, LOCAL, None)
    assert got is not None and IP(got)[Raw].load == b"opts"
    assert IP(got).options[1].routers == ["192.0.2.1", "0.0.0.0"]
    # our own packet, the same router: still verifies in scapy
    wire = route_recorded(send_ours([out_sa], "transport", pkt)[2])
    assert IP(bytes(ssa.decrypt(IP(wire))))[Raw].load == b"opts"
    # but changing the immutable Router Alert value breaks it
    bad = bytearray(bytes(ssa.encrypt(IP(pkt))))
    assert bad[20:22] == b"\x94\x04"             # Router Alert: type 148, length 4
    bad[23] = 1
    bad = IP(bytes(bad))
    del bad.chksum
    assert dp.decap(bytes(bad), 51, LOCAL, None) is None and in_sa.auth_failures == 1
