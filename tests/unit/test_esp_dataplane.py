"""DataPlane behaviour: drops and counters, anti-replay, lifetimes, SPD, MTU/ICMP, MSS
clamping, pre-fragmentation, selectors, NAT-T classification, fuzzing.

Wire packets for negative tests come from scapy's IPsec layer or are built here directly
with `cryptography` (for malformed padding), never by our own encapsulation."""

import os
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings, strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror
from scapy.layers.inet6 import IPv6, ICMPv6PacketTooBig
from scapy.layers.ipsec import AH, ESP, SecurityAssociation
from scapy.packet import Raw
from scapy.utils import checksum as scapy_checksum
from scapy.layers.inet import defragment

from vpnd.esp import SA, DataPlane, Lifetime, classify_udp4500, max_inner_size, worst_case_overhead

LOCAL, REMOTE = "10.200.0.1", "10.200.0.2"
KEY20 = bytes(range(20))


def gcm_pair(esn=False, window=64, lifetime=None, spi=0x3000, encap=None):
    out = SA(spi, "esp", "tunnel", "aes128gcm16", None, KEY20, esn=esn, replay_window=window,
             local=LOCAL, remote=REMOTE, lifetime=lifetime, encap=encap)
    inn = SA(spi, "esp", "tunnel", "aes128gcm16", None, KEY20, esn=esn, replay_window=window,
             local=REMOTE, remote=LOCAL, lifetime=lifetime, encap=encap)
    return out, inn


def scapy_gcm(spi=0x3000, key=KEY20, seq=1):
    return SecurityAssociation(ESP, spi=spi, seq_num=seq, crypt_algo="AES-GCM", crypt_key=key,
                               tunnel_header=IP(src=LOCAL, dst=REMOTE))


def inner(n=100, src="10.1.0.5", dst="10.2.0.7", **kw):
    return bytes(IP(src=src, dst=dst, **kw) / UDP(sport=1, dport=2) / Raw(b"z" * n))


def rx_dp(*sas, lts=("10.2.0.0/16",), rts=("10.1.0.0/16",)):
    dp = DataPlane()
    for sa in sas:
        dp.add_inbound(sa, local_ts=list(lts), remote_ts=list(rts))
    return dp


def tx_dp(sa, mtu=1500, **kw):
    dp = DataPlane(outer_mtu=mtu, **kw)
    dp.add_outbound("p", ["10.1.0.0/16"], ["10.2.0.0/16"], [sa])
    return dp


def handmade_gcm_esp(spi, seq, key, payload: bytes, trailer: bytes) -> bytes:
    """ESP per RFC 4106 built directly with cryptography, with a caller-chosen trailer."""
    iv = os.urandom(8)
    hdr = struct.pack("!II", spi, seq)
    ct = AESGCM(key[:16]).encrypt(key[16:] + iv, payload + trailer, hdr)
    body = hdr + iv + ct
    return bytes(IP(src=LOCAL, dst=REMOTE, proto=50) / Raw(body))


def cut_esp(wire: bytes, keep: int) -> bytes:
    """The same ESP cut to `keep` bytes inside a consistent IPv4 header."""
    p = IP(wire)
    return bytes(IP(src=p.src, dst=p.dst, proto=p.proto) / Raw(bytes(p.payload)[:keep]))


# -- negative tests: dropped, counted, no exception, later packets still pass -----------

def test_replay_flip_wrongkey_truncated_unknown_badpad():
    _, sa = gcm_pair()
    dp = rx_dp(sa)
    s = scapy_gcm()
    good = [bytes(s.encrypt(IP(inner(50 + i)))) for i in range(6)]
    assert dp.decap(good[0], 50, LOCAL, None) == inner(50)

    # replayed packet
    assert dp.decap(good[0], 50, LOCAL, None) is None
    assert sa.replay_drops == 1

    # flipped bit in the ciphertext
    bad = bytearray(good[1])
    bad[40] ^= 0x10
    assert dp.decap(bytes(bad), 50, LOCAL, None) is None
    assert sa.auth_failures == 1
    # a failed ICV does not advance the window: the real packet 2 still passes
    assert dp.decap(good[1], 50, LOCAL, None) == inner(51)

    # wrong key
    other = scapy_gcm(key=bytes(20), seq=3)
    assert dp.decap(bytes(other.encrypt(IP(inner(1)))), 50, LOCAL, None) is None
    assert sa.auth_failures == 2

    # truncated: below the minimum size, and by a few bytes (ICV cut)
    assert dp.decap(cut_esp(good[2], 12), 50, LOCAL, None) is None
    assert sa.malformed == 1
    assert dp.decap(cut_esp(good[2], len(good[2]) - 20 - 3), 50, LOCAL, None) is None
    assert sa.auth_failures == 3
    # the IP header's length field longer than the data (cut by the network)
    assert dp.decap(good[2][:60], 50, LOCAL, None) is None
    assert dp.malformed == 1

    # unknown SPI: counted, one event with the source
    alien = scapy_gcm(spi=0x9999)
    for _ in range(3):
        assert dp.decap(bytes(alien.encrypt(IP(inner(1)))), 50, LOCAL, None) is None
    assert dp.unknown_spi == 3
    assert list(dp.events) == [("unknown_spi", "esp", 0x9999, LOCAL)]

    # bad padding (RFC 4303 2.4: 1, 2, 3, ...) with a valid ICV
    pl = inner(9)                              # 37 bytes: pad 3 for 4-byte alignment
    assert len(pl) == 37
    wire = handmade_gcm_esp(0x3000, 10, KEY20, pl, b"\x01\x02\x04" + bytes((3, 4)))
    assert dp.decap(wire, 50, LOCAL, None) is None
    assert sa.pad_errors == 1
    wire = handmade_gcm_esp(0x3000, 11, KEY20, pl, b"\x01\x02\x03" + bytes((3, 4)))
    assert dp.decap(wire, 50, LOCAL, None) == pl           # the same, padded right
    wire = handmade_gcm_esp(0x3000, 12, KEY20, pl[:3], b"" + bytes((200, 4)))
    assert dp.decap(wire, 50, LOCAL, None) is None          # pad length beyond the data
    assert sa.pad_errors == 2

    # later valid packets still pass
    for i in (2, 3, 4, 5):
        assert dp.decap(good[i], 50, LOCAL, None) == inner(50 + i)
    assert sa.packets_in == 7


def test_negative_cbc_hmac_and_ah():
    ek, ak = os.urandom(32), os.urandom(32)
    sa = SA(0x4000, "esp", "tunnel", "aes256", "sha256", ek, ak, local=REMOTE, remote=LOCAL)
    ah = SA(0x4001, "ah", "tunnel", None, "sha1", b"", ak[:20], local=REMOTE, remote=LOCAL)
    dp = rx_dp(sa, ah)
    s = SecurityAssociation(ESP, spi=0x4000, crypt_algo="AES-CBC", crypt_key=ek,
                            auth_algo="SHA2-256-128", auth_key=ak,
                            tunnel_header=IP(src=LOCAL, dst=REMOTE))
    a = SecurityAssociation(AH, spi=0x4001, auth_algo="HMAC-SHA1-96", auth_key=ak[:20],
                            tunnel_header=IP(src=LOCAL, dst=REMOTE))
    p1, p2 = bytes(s.encrypt(IP(inner(5)))), bytes(s.encrypt(IP(inner(6))))
    flipped = bytearray(p1)
    flipped[-1] ^= 1
    assert dp.decap(bytes(flipped), 50, LOCAL, None) is None and sa.auth_failures == 1
    assert dp.decap(p1, 50, LOCAL, None) == inner(5)
    assert dp.decap(p1, 50, LOCAL, None) is None and sa.replay_drops == 1
    assert dp.decap(cut_esp(p2, len(p2) - 20 - 16), 50, LOCAL, None) is None
    assert sa.auth_failures == 2
    assert dp.decap(p2, 50, LOCAL, None) == inner(6)

    q1, q2 = bytes(a.encrypt(IP(inner(7)))), bytes(a.encrypt(IP(inner(8))))
    flipped = bytearray(q1)
    flipped[-2] ^= 1                         # payload bit: covered by the AH ICV
    assert dp.decap(bytes(flipped), 51, LOCAL, None) is None and ah.auth_failures == 1
    assert dp.decap(q1, 51, LOCAL, None) == inner(7)
    assert dp.decap(q1, 51, LOCAL, None) is None and ah.replay_drops == 1
    assert dp.decap(cut_esp(q2, 10), 51, LOCAL, None) is None and ah.malformed == 0
    assert dp.malformed == 1                 # too short to even hold the AH header
    assert dp.decap(q2, 51, LOCAL, None) == inner(8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=200), proto=st.sampled_from([50, 51, 17, 6]),
       spi_known=st.booleans())
def test_decap_never_raises(data, proto, spi_known):
    _, sa = gcm_pair()
    ah = SA(0x3001, "ah", "transport", None, "sha256", b"", bytes(32), local=REMOTE, remote=LOCAL)
    cbc = SA(0x3002, "esp", "transport", "aes128", "sha1", bytes(16), bytes(20), esn=True,
             local=REMOTE, remote=LOCAL)
    dp = rx_dp(sa, ah, cbc)
    if spi_known and len(data) >= 8:
        spi = (0x3000, 0x3001, 0x3002)[data[0] % 3]
        data = struct.pack("!I", spi) + data[4:]
    dp.decap(data, proto, LOCAL, 4500)          # must not raise
    ipd = bytes(IP(src=LOCAL, dst=REMOTE, proto=50 if proto != 51 else 51) / Raw(data))
    dp.decap(ipd, proto if proto in (50, 51) else 50, LOCAL, None)


@settings(max_examples=200, deadline=None)
@given(pos=st.integers(min_value=0, max_value=400), val=st.integers(1, 255),
       cut=st.integers(min_value=0, max_value=400))
def test_mutated_valid_packets_never_raise(pos, val, cut):
    """Any change either is dropped or (outer TOS/ID/TTL/checksum, which ESP does not
    cover) still yields exactly the original inner packet."""
    _, sa = gcm_pair()
    dp = rx_dp(sa)
    wire = bytearray(bytes(scapy_gcm().encrypt(IP(inner(100)))))
    if pos < len(wire):
        wire[pos] ^= val
    r = dp.decap(bytes(wire[:len(wire) - cut % len(wire)]), 50, LOCAL, None)
    assert r is None or r == inner(100)


# -- anti-replay (RFC 4303 3.4.3, appendix A) --------------------------------------------

def test_replay_window_out_of_order_and_too_old():
    sa = SA(0x5000, "esp", "tunnel", "null", "sha1", b"", bytes(20), replay_window=32,
            local=REMOTE, remote=LOCAL)
    ok = []
    for seq in (5, 3, 4, 40, 9, 8, 9, 39, 41, 2):
        s = sa.replay_seq(seq)
        ok.append(s >= 0)
        if s >= 0:
            sa.replay_commit(s)
    # 9 after 40: 40-9 = 31 < 32 fits; 8 is just outside; second 9 is a replay
    assert ok == [True, True, True, True, True, False, False, True, True, False]
    assert sa.replay_seq(0) == -1                  # seq 0 is never sent


def test_replay_disabled_accepts_duplicates():
    sa = SA(0x5001, "esp", "tunnel", "null", "sha1", b"", bytes(20), replay_window=0,
            local=REMOTE, remote=LOCAL)
    for seq in (5, 5, 1, 100, 1):
        s = sa.replay_seq(seq)
        assert s == seq
        sa.replay_commit(s)


@pytest.mark.parametrize("window", [64, 1024, 0])
def test_esn_high_bits_inferred_across_wrap(window):
    sa = SA(0x5002, "esp", "tunnel", "null", "sha1", b"", bytes(20), esn=True,
            replay_window=window, local=REMOTE, remote=LOCAL)
    sa.rp_top = 0xFFFFFFF0                           # just below the first wrap
    assert sa.replay_seq(0xFFFFFFF5) == 0xFFFFFFF5
    assert sa.replay_seq(3) == (1 << 32) | 3       # wrapped: high half becomes 1
    sa.replay_commit((1 << 32) | 3)
    # window now spans both subspaces (appendix A2.2 case B)
    got = sa.replay_seq(0xFFFFFFFE)
    if window == 0 or window > 6:
        assert got == 0xFFFFFFFE                   # late packet from the old subspace
    sa.replay_commit(got)
    assert sa.replay_seq(4) == (1 << 32) | 4
    if window:
        assert sa.replay_seq(3) == -1             # (1<<32)|3 already seen


def test_esn_through_dataplane_wrap_with_scapy():
    key = os.urandom(20)
    out = SA(0x5003, "esp", "tunnel", "aes128gcm16", None, key, esn=True, local=LOCAL, remote=REMOTE)
    inn = SA(0x5003, "esp", "tunnel", "aes128gcm16", None, key, esn=True, local=REMOTE, remote=LOCAL)
    tx, rx = tx_dp(out), rx_dp(inn)
    out.seq = 0xFFFFFFFD
    inn.rp_top = 0xFFFFFFF0                         # the receiver has followed so far
    results = []
    for i in range(5):                               # 0xFFFFFFFE, 0xFFFFFFFF, 2^32, +1, +2
        o = tx.encap(inner(i))
        seq_lo = struct.unpack("!I", o[2][24:28])[0]
        results.append(seq_lo)
        assert rx.decap(o[2], 50, LOCAL, None) == inner(i)
        hi = (out.seq >> 32)
        s = SecurityAssociation(ESP, spi=0x5003, crypt_algo="AES-GCM", crypt_key=key,
                                tunnel_header=IP(src=LOCAL, dst=REMOTE), esn_en=True, esn=hi)
        assert bytes(s.decrypt(IP(o[2]))) == inner(i)
    assert results == [0xFFFFFFFE, 0xFFFFFFFF, 0, 1, 2]
    assert inn.rp_top == (1 << 32) + 2


def test_seq_exhaustion_without_esn_stops_sending():
    out, _ = gcm_pair()
    dp = tx_dp(out)
    out.seq = 0xFFFFFFFE
    assert dp.encap(inner(1)) is not None           # seq 0xFFFFFFFF: the last one
    assert dp.encap(inner(1)) is None               # must not cycle (RFC 4303 3.3.3)
    assert ("hard_expire", out) in dp.events


# -- lifetimes ------------------------------------------------------------------------

def test_lifetime_events_bytes_and_packets():
    lt = Lifetime(soft_bytes=1000, hard_bytes=2000)
    out, inn = gcm_pair(lifetime=lt)
    tx, rx = tx_dp(out), rx_dp(inn)
    pkt = inner(472)                                  # 500 bytes
    sent = []
    for _ in range(5):
        o = tx.encap(pkt)
        sent.append(o)
    assert [o is not None for o in sent] == [True, True, True, True, False]
    assert list(tx.events) == [("soft_expire", out), ("hard_expire", out)]
    assert out.bytes_out == 2000 and out.packets_out == 4
    for o in sent[:4]:
        rx.decap(o[2], 50, LOCAL, None)
    assert [e[0] for e in rx.events] == ["soft_expire", "hard_expire"]
    out2, _ = gcm_pair(lifetime=Lifetime(soft_packets=2, hard_packets=3), spi=0x3100)
    tx2 = tx_dp(out2)
    r = [tx2.encap(pkt) is not None for _ in range(4)]
    assert r == [True, True, True, False]
    assert [e[0] for e in tx2.events] == ["soft_expire", "hard_expire"]


def test_hard_below_soft_still_stops():
    out, _ = gcm_pair(lifetime=Lifetime(soft_packets=10, hard_packets=2))
    dp = tx_dp(out)
    assert [dp.encap(inner(1)) is not None for _ in range(3)] == [True, True, False]
    assert [e[0] for e in dp.events] == ["soft_expire", "hard_expire"]


def test_continue_from_keeps_sequence_counters_and_lifetime_progress():
    out, inn = gcm_pair(lifetime=Lifetime(soft_packets=2, hard_packets=5))
    tx, rx = tx_dp(out), rx_dp(inn)
    wires = [tx.encap(inner(i))[2] for i in range(3)]
    for w in wires:
        rx.decap(w, 50, LOCAL, None)
    assert [e[0] for e in tx.events] == ["soft_expire"]
    # the peer moved: the outbound SA is rebuilt towards a new address
    moved = SA(0x3000, "esp", "tunnel", "aes128gcm16", None, KEY20, local=LOCAL,
               remote="10.200.0.9", lifetime=Lifetime(soft_packets=2, hard_packets=5))
    moved.continue_from(out)
    tx.add_outbound("p", ["10.1.0.0/16"], ["10.2.0.0/16"], [moved])
    o = tx.encap(inner(9))
    assert o[1] == "10.200.0.9" and struct.unpack("!I", o[2][24:28])[0] == 4
    assert moved.packets_out == 4 and [e[0] for e in tx.events] == ["soft_expire"]
    assert rx.decap(o[2], 50, LOCAL, None) == inner(9)
    # the same for an inbound SA: replayed packets stay replays
    inn2 = SA(0x3000, "esp", "tunnel", "aes128gcm16", None, KEY20, local=REMOTE, remote=LOCAL)
    inn2.continue_from(inn)
    rx2 = rx_dp(inn2)
    assert rx2.decap(wires[1], 50, LOCAL, None) is None and inn2.replay_drops == 1


def test_last_used_stamps_come_from_caller():
    out, inn = gcm_pair()
    tx, rx = tx_dp(out), rx_dp(inn)
    tx.now, rx.now = 12.5, 13.0
    o = tx.encap(inner(1))
    rx.decap(o[2], 50, LOCAL, None)
    assert out.last_out == 12.5 and inn.last_in == 13.0 and out.last_in is None


# -- SPD, acquire, selectors ----------------------------------------------------------

def test_spd_most_specific_and_acquire():
    a, _ = gcm_pair(spi=0x6000)
    b, _ = gcm_pair(spi=0x6001)
    dp = DataPlane()
    dp.add_outbound("wide", ["10.1.0.0/16"], ["10.2.0.0/16"], [a])
    dp.add_outbound("narrow", ["10.1.0.0/16"], ["10.2.3.0/24"], [b])
    dp.add_outbound("trap", ["10.1.0.0/16"], ["10.9.0.0/16"], [])
    spi = lambda o: struct.unpack("!I", o[2][20:24])[0]
    assert spi(dp.encap(inner(1, dst="10.2.3.4"))) == 0x6001
    assert spi(dp.encap(inner(1, dst="10.2.4.4"))) == 0x6000
    assert dp.encap(inner(1, src="10.7.0.1")) is None and dp.no_policy == 1
    p = inner(1, dst="10.9.0.1")
    assert dp.encap(p) is None
    assert list(dp.events) == [("acquire", "trap", p)]
    dp.remove_outbound("narrow")
    assert spi(dp.encap(inner(1, dst="10.2.3.4"))) == 0x6000    # cache invalidated
    dp.add_outbound("trap", ["10.1.0.0/16"], ["10.9.0.0/16"], [b])  # trap gets its SA
    assert spi(dp.encap(p)) == 0x6001


def test_inner_packet_outside_selectors_dropped():
    _, sa = gcm_pair()
    dp = rx_dp(sa)
    s = scapy_gcm()
    spoofed = inner(5, src="192.168.1.1")
    assert dp.decap(bytes(s.encrypt(IP(spoofed))), 50, LOCAL, None) is None
    assert sa.policy_drops == 1 and dp.policy_drops == 1
    assert dp.decap(bytes(s.encrypt(IP(inner(5)))), 50, LOCAL, None) == inner(5)
    assert dp.remove_inbound("esp", 0x3000) is sa
    assert dp.decap(bytes(s.encrypt(IP(inner(5)))), 50, LOCAL, None) is None
    assert dp.unknown_spi == 1


def test_dummy_and_tfc_padding():
    _, sa = gcm_pair()
    dp = rx_dp(sa)
    pl = inner(20)
    tfc = pl + bytes(7)                           # TFC padding after the IP packet (RFC 4303 2.7)
    pad = -(len(tfc) + 2) % 4
    wire = handmade_gcm_esp(0x3000, 1, KEY20, tfc, bytes(range(1, pad + 1)) + bytes((pad, 4)))
    assert dp.decap(wire, 50, LOCAL, None) == pl
    wire = handmade_gcm_esp(0x3000, 2, KEY20, b"\x00" * 6, bytes((0, 59)))
    assert dp.decap(wire, 50, LOCAL, None) is None and sa.dummy_drops == 1


# -- outer header, MTU, ICMP, fragmentation, MSS ----------------------------------------

def test_outer_header_fields():
    out, _ = gcm_pair()
    dp = tx_dp(out)
    o1 = IP(dp.encap(inner(10, flags="DF", tos=0xB8))[2])
    o2 = IP(dp.encap(inner(10))[2])
    for o in (o1, o2):
        assert o.ttl == 64 and o.proto == 50 and o.src == LOCAL and o.dst == REMOTE
        raw_hdr = bytes(o)[:20]
        assert scapy_checksum(raw_hdr) == 0
        assert o.len == len(bytes(o))
    assert o1.flags == "DF" and o1.tos == 0xB8 and o2.flags == 0 and o2.tos == 0
    assert o2.id == (o1.id + 1) & 0xFFFF


@pytest.mark.parametrize("enc,integ,udp", [("aes128gcm16", None, False), ("aes256", "sha512", False),
                                           ("3des", "sha1", True), ("null", "md5", False),
                                           ("chacha20poly1305", None, True)])
def test_max_inner_exact_and_icmp_frag_needed(enc, integ, udp):
    from vpnd.crypto.ciphers import cipher_key_size, integrity_key_size
    ek = bytes(cipher_key_size(enc))
    ak = bytes(integrity_key_size(integ)) if integ else b""
    sa = SA(0x7000, "esp", "tunnel", enc, integ, ek, ak, local=LOCAL, remote=REMOTE,
            encap=(4500, 4500) if udp else None)
    mtu = 1400
    dp = tx_dp(sa, mtu=mtu)
    limit = max_inner_size(mtu, encryption=enc, integrity=integ, udp_encap=udp)
    assert worst_case_overhead(enc, integ, udp_encap=udp, outer_mtu=mtu) == mtu - limit
    wire_len = lambda o: len(o[2]) + (28 if o[0] == "udp" else 0)
    # every size up to the limit fits, and the limit is tight for some nearby size
    sizes = [wire_len(dp.encap(inner(limit - 28 - k, flags="DF"))) for k in range(16)]
    assert max(sizes) <= mtu and mtu - max(sizes) < 16
    big = inner(limit - 28 + 1, flags="DF")
    r = dp.encap(big)
    assert r[0] == "tun"
    icmp = IP(r[1])
    assert icmp.dst == "10.1.0.5" and icmp[ICMP].type == 3 and icmp[ICMP].code == 4
    assert icmp.src == "10.2.0.7"             # not a local address: not a martian on the TUN
    assert icmp[ICMP].nexthopmtu == limit
    assert scapy_checksum(bytes(icmp)[:20]) == 0 and scapy_checksum(bytes(icmp[ICMP])) == 0
    assert bytes(icmp[IPerror])[:28] == big[:28]      # original header + 8 bytes
    assert dp.too_big == 1


def test_prefragmentation_of_non_df_packet():
    out, inn = gcm_pair()
    dp, rx = tx_dp(out, mtu=600), rx_dp(inn)
    big = bytes(IP(src="10.1.0.5", dst="10.2.0.7", id=99, flags=0) / UDP(sport=1, dport=2)
                / Raw(os.urandom(1400)))
    r = dp.encap(big)
    assert r[0] == "many" and len(r[1]) == 3 and dp.fragmented == 1
    frags = []
    for o in r[1]:
        assert len(o[2]) <= 600
        frags.append(IP(rx.decap(o[2], 50, LOCAL, None)))
    whole = defragment(frags)
    assert len(whole) == 1 and bytes(whole[0][UDP]) == bytes(IP(big)[UDP])
    assert len(dp.encap_many([big, inner(5)])) == 4


def test_ipv6_packet_too_big():
    out, _ = gcm_pair()
    dp = DataPlane(outer_mtu=1400)
    dp.add_outbound("p6", ["fd01::/64"], ["fd02::/64"], [out])
    pkt = bytes(IPv6(src="fd01::5", dst="fd02::7") / UDP(sport=1, dport=2) / Raw(b"q" * 1400))
    r = dp.encap(pkt)
    assert r[0] == "tun"
    p = IPv6(r[1])
    assert p.dst == "fd01::5"
    assert p[ICMPv6PacketTooBig].mtu == max_inner_size(1400, encryption="aes128gcm16") == 1346
    chk = p[ICMPv6PacketTooBig].cksum
    del p[ICMPv6PacketTooBig].cksum
    assert IPv6(bytes(p))[ICMPv6PacketTooBig].cksum == chk


def _syn(mss, src="10.1.0.5", dst="10.2.0.7"):
    return bytes(IP(src=src, dst=dst) / TCP(sport=3, dport=4, flags="S",
                                               options=[("NOP", None), ("MSS", mss), ("SAckOK", b"")]))


def test_mss_clamp_both_directions():
    out, inn = gcm_pair()
    tx, rx = tx_dp(out, mss_clamp=1300), rx_dp(inn)
    rx.mss_clamp = 1300
    o = tx.encap(_syn(1460))
    s = SecurityAssociation(ESP, spi=0x3000, crypt_algo="AES-GCM", crypt_key=KEY20,
                            tunnel_header=IP(src=LOCAL, dst=REMOTE))
    sent = IP(bytes(s.decrypt(IP(o[2]))))
    assert dict(sent[TCP].options)["MSS"] == 1300
    chk = sent[TCP].chksum
    del sent[TCP].chksum
    assert IP(bytes(sent))[TCP].chksum == chk
    small = tx.encap(_syn(1200))
    assert dict(IP(bytes(s.decrypt(IP(small[2]))))[TCP].options)["MSS"] == 1200
    got = IP(rx.decap(bytes(scapy_gcm(seq=10).encrypt(IP(_syn(9000, src="10.1.0.9")))),
                      50, LOCAL, None))
    assert dict(got[TCP].options)["MSS"] == 1300
    chk = got[TCP].chksum
    del got[TCP].chksum
    assert IP(bytes(got))[TCP].chksum == chk


# -- misc -------------------------------------------------------------------------------

def test_classify_udp4500():
    assert classify_udp4500(b"\xff") == "keepalive"
    assert classify_udp4500(b"\x00\x00\x00\x00" + bytes(28)) == "ike"
    assert classify_udp4500(b"\x00\x00\x10\x00" + bytes(20)) == "esp"
    assert classify_udp4500(b"\x00\x00") == "bad"
    assert classify_udp4500(b"") == "bad"


def test_bad_configuration_rejected():
    with pytest.raises(ValueError):
        SA(0x10, "esp", "tunnel", "aes128gcm16", None, KEY20, local=LOCAL, remote=REMOTE)
    with pytest.raises(ValueError):
        SA(0x1000, "esp", "tunnel", "aes128gcm16", "sha1", KEY20, bytes(20), local=LOCAL, remote=REMOTE)
    with pytest.raises(ValueError):
        SA(0x1000, "esp", "tunnel", "null", None, local=LOCAL, remote=REMOTE)
    with pytest.raises(ValueError):
        SA(0x1000, "ah", "tunnel", None, "sha1", b"", bytes(20), local=LOCAL, remote=REMOTE,
           encap=(4500, 4500))
    with pytest.raises(ValueError):
        SA(0x1000, "esp", "tunnel", "aes128gcm16", None, KEY20[:-1], local=LOCAL, remote=REMOTE)


def test_no_secret_in_repr():
    key = bytes(range(100, 120))
    sa = SA(0x1000, "esp", "tunnel", "aes128gcm16", None, key, local=LOCAL, remote=REMOTE)
    assert key.hex() not in repr(sa) and repr(key) not in repr(sa)
    assert "aes128gcm16" in repr(sa)


def _catch_all_dp(mode, protos, udp=False, clamp=None):
    dp = DataPlane(outer_mtu=576, mss_clamp=clamp)
    bundle = []
    if "esp" in protos:
        bundle.append(SA(0x8000, "esp", mode, "aes128", "sha1", bytes(16), bytes(20),
                         local=LOCAL, remote=REMOTE, encap=(4500, 4500) if udp else None))
    if "ah" in protos:
        bundle.append(SA(0x8001, "ah", mode, None, "sha256", b"", bytes(32), local=LOCAL, remote=REMOTE))
    dp.add_outbound("all4", ["0.0.0.0/0"], ["0.0.0.0/0"], bundle)
    dp.add_outbound("all6", ["::/0"], ["::/0"], bundle)
    return dp


@st.composite
def tun_packets(draw):
    """IPv4/IPv6 packets with every header field drawn (lengths right or wrong)."""
    version = draw(st.sampled_from([4, 6, 5]))
    payload = draw(st.binary(max_size=900))
    if version == 6:
        plen = draw(st.one_of(st.just(len(payload)), st.integers(0, 0xFFFF)))
        nh = draw(st.sampled_from([6, 17, 58, 0, 44]))
        return struct.pack("!IHBB16s16s", 0x60000000, plen, nh, 64, bytes(16), bytes(16)) + payload
    ihl = draw(st.integers(0, 15))
    options = draw(st.binary(min_size=max(ihl * 4 - 20, 0), max_size=max(ihl * 4 - 20, 0)))
    total = 20 + len(options) + len(payload)
    tot = draw(st.one_of(st.just(total), st.integers(0, 0xFFFF)))
    flags = draw(st.sampled_from([0, 0x4000, 0x2000, 0x2001, 0x0003]))
    proto = draw(st.sampled_from([6, 17, 1, 50, 51]))
    addrs = draw(st.sampled_from([(LOCAL, REMOTE), ("10.1.0.5", "10.2.0.7")]))
    src, dst = (bytes(map(int, a.split("."))) for a in addrs)
    hdr = struct.pack("!BBHHHBBH4s4s", (version << 4) | ihl, 0, tot, 1, flags, 64, proto, 0,
                      src, dst)
    return hdr + options + payload


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pkt=tun_packets(), mode=st.sampled_from(["tunnel", "transport"]),
       protos=st.sampled_from([("esp",), ("ah",), ("esp", "ah")]), udp=st.booleans())
def test_encap_never_raises(pkt, mode, protos, udp):
    """Whatever a local process writes into the TUN: an Out or None, never an exception,
    and anything malformed is counted."""
    dp = _catch_all_dp(mode, protos, udp and protos == ("esp",), clamp=1200)
    r = dp._encap(pkt)                  # the inner function: the safety net must not be needed
    assert r is None or r[0] in ("raw", "udp", "tun", "many")


@pytest.mark.parametrize("inner_ecn,expect", [(0, None), (1, 3), (2, 3), (3, 3)])
def test_ecn_ce_propagates_to_inner(inner_ecn, expect):
    """RFC 6040 4.2: outer CE -> inner CE for ECT inner packets, drop for not-ECT."""
    _, sa = gcm_pair()
    dp = rx_dp(sa)
    s = scapy_gcm()
    pkt = inner(30, tos=0xA0 | inner_ecn)
    wire = IP(bytes(s.encrypt(IP(pkt))))
    wire.tos = 0x03                        # a router on the way marked congestion
    del wire.chksum
    got = dp.decap(bytes(wire), 50, LOCAL, None)
    if expect is None:
        assert got is None
        return
    g = IP(got)
    assert g.tos == 0xA0 | expect
    chk = g.chksum
    del g.chksum
    assert IP(bytes(g)).chksum == chk
    # not CE-marked: untouched
    wire = bytes(s.encrypt(IP(pkt)))
    assert dp.decap(wire, 50, LOCAL, None) == pkt


def test_outer_mtu_per_policy_and_global_change():
    a, _ = gcm_pair(spi=0x6100)
    b, _ = gcm_pair(spi=0x6101)
    dp = DataPlane(outer_mtu=1500)
    dp.add_outbound("a", ["10.1.0.0/16"], ["10.2.0.0/16"], [a])
    dp.add_outbound("b", ["10.1.0.0/16"], ["10.3.0.0/16"], [b], outer_mtu=1300)
    limit_b = max_inner_size(1300, encryption="aes128gcm16")
    assert dp.encap(inner(limit_b - 28, dst="10.3.0.1", flags="DF"))[0] == "raw"
    r = dp.encap(inner(limit_b - 27, dst="10.3.0.1", flags="DF"))
    assert r[0] == "tun" and IP(r[1])[ICMP].nexthopmtu == limit_b
    assert dp.encap(inner(limit_b, dst="10.2.0.1", flags="DF"))[0] == "raw"
    dp.outer_mtu = 1000                      # the global value moves, "b" keeps its own
    limit_a = max_inner_size(1000, encryption="aes128gcm16")
    assert IP(dp.encap(inner(limit_a, dst="10.2.0.1", flags="DF"))[1])[ICMP].nexthopmtu == limit_a
    assert dp.encap(inner(limit_b - 28, dst="10.3.0.1", flags="DF"))[0] == "raw"


@pytest.mark.parametrize("mode", ["tunnel", "transport"])
@pytest.mark.parametrize("kind", ["ah", "esp+ah", "esp-udp"])
def test_max_inner_exact_for_ah_bundles_and_transport(kind, mode):
    from vpnd.esp.overhead import max_inner_size
    bundle = []
    if kind != "ah":
        bundle.append(SA(0x7100, "esp", mode, "aes256", "sha256", bytes(32), bytes(32),
                         local=LOCAL, remote=REMOTE, encap=(4500, 4500) if kind == "esp-udp" else None))
    if kind != "esp-udp":
        bundle.append(SA(0x7101, "ah", mode, None, "sha512", b"", bytes(64), local=LOCAL, remote=REMOTE))
    mtu = 1300
    dp = DataPlane(outer_mtu=mtu)
    lts, rts = (["10.1.0.0/16"], ["10.2.0.0/16"]) if mode == "tunnel" else ([LOCAL], [REMOTE])
    dp.add_outbound("p", lts, rts, bundle)
    limit = max_inner_size(mtu, encryption=None if kind == "ah" else "aes256",
                           integrity=None if kind == "ah" else "sha256",
                           ah_integrity=None if kind == "esp-udp" else "sha512",
                           udp_encap=kind == "esp-udp", mode=mode)
    src, dst = ("10.1.0.5", "10.2.0.7") if mode == "tunnel" else (LOCAL, REMOTE)
    wire = lambda o: len(o[2]) + (28 if o[0] == "udp" else 0)
    sizes = [wire(dp.encap(inner(limit - 28 - k, src=src, dst=dst, flags="DF"))) for k in range(16)]
    assert max(sizes) <= mtu and mtu - max(sizes) < 16
    r = dp.encap(inner(limit - 27, src=src, dst=dst, flags="DF"))
    assert r[0] == "tun" and IP(r[1])[ICMP].nexthopmtu == limit
