"""ESP and AH with IPv6 outer addresses (issue 12) against scapy's independent IPsec
(scapy.layers.ipsec), both ways: raw ESP over IPv6 (RFC 4303 3.1.2), ESP in UDP over IPv6
(RFC 3948), AH over IPv6 with its ICV over the header's immutable fields and 64-bit
alignment (RFC 4302 3.3.3.1.2, 3.3.3.2.1); inner IPv4 and IPv6. Our raw receive path gets
the IPv6 header the socket layer rebuilds (net/sockets.py), here the header scapy sent.
Also the socket layer itself on ::1: a raw IPv6 socket's payload comes back as a whole
packet whose header the data plane accepts."""

import os
import socket

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.ipsec import AH, ESP, SecurityAssociation
from scapy.packet import Raw

from vpnd.esp import SA, DataPlane
from vpnd.esp.overhead import max_inner

LOCAL, REMOTE = "2001:db8:200::1", "2001:db8:200::2"
NATT = 4500
CASES = [("esp", "aes128gcm16", None, "AES-GCM", None, 20, 0),
         ("esp", "aes128", "sha256", "AES-CBC", "SHA2-256-128", 16, 32),
         ("ah", None, "sha256", None, "SHA2-256-128", 0, 32),     # 28 bytes: padded to 32
         ("ah", None, "sha1", None, "HMAC-SHA1-96", 0, 20),
         ("ah", None, "sha384", None, "SHA2-384-192", 0, 48)]     # 36 bytes: padded to 40


def inner(v6: bool, size: int = 300) -> bytes:
    if v6:
        return bytes(IPv6(src="fd01::5", dst="fd02::7") / TCP(sport=4321, dport=22, flags="A")
                     / Raw(os.urandom(size)))
    return bytes(IP(src="10.1.0.5", dst="10.2.0.7", id=777, ttl=61, tos=0x28)
                 / TCP(sport=1234, dport=80, flags="PA") / Raw(os.urandom(size)))


def sas(proto, enc, integ, s_crypt, s_auth, ek_len, ak_len, udp):
    ek, ak = os.urandom(ek_len), os.urandom(ak_len)
    encap = (NATT, NATT) if udp else None
    out = SA(0x4321, proto, "tunnel", enc, integ, ek, ak, local=LOCAL, remote=REMOTE, encap=encap)
    inn = SA(0x4321, proto, "tunnel", enc, integ, ek, ak, local=REMOTE, remote=LOCAL, encap=encap)
    kw = {"tunnel_header": IPv6(src=LOCAL, dst=REMOTE)}
    if udp:
        kw["nat_t_header"] = UDP(sport=NATT, dport=NATT)
    ssa = SecurityAssociation(ESP if proto == "esp" else AH, spi=0x4321, crypt_algo=s_crypt,
                              crypt_key=ek or None, auth_algo=s_auth, auth_key=ak or None, **kw)
    return out, inn, ssa


SELECTORS = (["10.1.0.0/16", "fd01::/64"], ["10.2.0.0/16", "fd02::/64"])


@pytest.mark.parametrize("v6_inner", [False, True], ids=["inner4", "inner6"])
@pytest.mark.parametrize("udp", [False, True], ids=["raw", "udp"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[1] or c[2]}" for c in CASES])
def test_ipv6_outer_both_ways(case, udp, v6_inner):
    if udp and case[0] == "ah":
        pytest.skip("AH is never UDP-encapsulated (RFC 3948 covers ESP only)")
    out_sa, in_sa, ssa = sas(*case, udp)
    dp = DataPlane(outer_mtu=1500)
    dp.add_outbound("p", *SELECTORS, [out_sa])
    rx = DataPlane()
    rx.add_inbound(in_sa, local_ts=SELECTORS[1], remote_ts=SELECTORS[0])
    for size in (0, 1, 300, 1300):
        pkt = inner(v6_inner, size)
        out = dp.encap(pkt)
        assert out is not None, dp.counters
        if udp:
            assert out[0] == "udp" and out[1] == (REMOTE, NATT) and out[3] == (LOCAL, NATT)
            wire = IPv6(bytes(IPv6(src=LOCAL, dst=REMOTE) / UDP(sport=NATT, dport=NATT) / Raw(out[2])))
        else:
            assert out[0] == "raw" and out[1] == REMOTE
            wire = IPv6(out[2])
            assert wire.src == LOCAL and wire.dst == REMOTE and wire.nh == (50 if case[0] == "esp" else 51)
            assert wire.plen == len(out[2]) - 40
            if case[0] == "ah":
                assert (wire[AH].payloadlen + 2) * 4 % 8 == 0   # 64-bit aligned (3.3.3.2.1)
        assert bytes(ssa.decrypt(wire)) == pkt              # scapy checks ICV / tag
        # and back: scapy protects, we open
        back = ssa.encrypt(IPv6(pkt) if v6_inner else IP(pkt))
        if udp:
            got = rx.decap(bytes(back[UDP].payload), 17, LOCAL, NATT)
        else:
            got = rx.decap(bytes(back), back[IPv6].nh, LOCAL, 0)
        assert got == pkt, rx.counters
    assert in_sa.packets_in == 4 and in_sa.auth_failures == 0


def test_ah_over_ipv6_rejects_a_changed_immutable_field():
    out_sa, in_sa, ssa = sas(*CASES[2], False)
    rx = DataPlane()
    rx.add_inbound(in_sa)
    wire = bytearray(bytes(ssa.encrypt(IP(inner(False)))))
    wire[7] = 3            # hop limit: mutable, zeroed for the ICV
    wire[1] |= 0x0F        # flow label bits: mutable
    assert rx.decap(bytes(wire), 51, LOCAL, 0) is not None
    bad = bytearray(bytes(ssa.encrypt(IP(inner(False)))))   # the next sequence number
    bad[23] ^= 1           # the source address: covered
    assert rx.decap(bytes(bad), 51, LOCAL, 0) is None
    assert in_sa.auth_failures == 1


def test_max_inner_counts_the_ipv6_header():
    esp = (8, 16, 16)      # aes-cbc iv, block, sha256-128 icv
    assert max_inner(1500, esp=esp, ah_icv=None, udp=False, mode="tunnel") - \
        max_inner(1500, esp=esp, ah_icv=None, udp=False, mode="tunnel", ipv6=True) in (16, 20, 32)
    # AH sha256 over IPv6: 12 + 16 = 28 bytes padded to 32
    assert max_inner(1500, esp=None, ah_icv=16, udp=False, mode="tunnel", ipv6=True) == 1500 - 40 - 32


def test_transport_mode_over_ipv6_is_refused_not_half_built():
    sa = SA(0x1111, "esp", "transport", "aes128gcm16", None, bytes(20), local=LOCAL, remote=REMOTE)
    with pytest.raises(ValueError, match="transport mode over IPv6"):
        DataPlane().add_outbound("p", [LOCAL + "/128"], [REMOTE + "/128"], [sa])
    with pytest.raises(ValueError, match="transport mode over IPv6"):
        DataPlane().add_inbound(sa)


@pytest.mark.skipif(os.geteuid() != 0, reason="raw sockets need root")
def test_raw_ipv6_receive_rebuilds_the_header_on_loopback():
    """WireSockets on ::1: an ESP packet the data plane built, sent with IPV6_HDRINCL,
    comes back from the raw ESP socket with its header rebuilt, and decapsulates."""
    from vpnd.net.sockets import WireSockets
    try:
        w = WireSockets("::1", 0, 0, ike=False, natt=False)
    except Exception as e:  # noqa: BLE001 - no IPv6 on this host
        pytest.skip(f"no IPv6 loopback: {e}")
    try:
        out_sa, in_sa, _ = sas(*CASES[0], False)
        out_sa.set_addresses("::1", "::1", None)
        in_sa.set_addresses("::1", "::1", None)
        tx, rx = DataPlane(), DataPlane()
        tx.add_outbound("p", *SELECTORS, [out_sa])
        rx.add_inbound(in_sa, local_ts=SELECTORS[1], remote_ts=SELECTORS[0])
        pkt = inner(True, 100)
        out = tx.encap(pkt)
        w.send_ip(out[1], out[2])
        assert w.send_errors == 0
        got = []
        import select
        for _ in range(20):
            select.select([w.esp_raw], [], [], 0.1)
            got += w.recv_raw(w.esp_raw)
            if got:
                break
        assert got and got[0][1] == "::1"
        # the header we sent, rebuilt as it was (the hop limit, mutable, is not kept)
        assert got[0][0][:7] + got[0][0][8:] == out[2][:7] + out[2][8:]
        assert rx.decap(got[0][0], 50, got[0][1], 0) == pkt
    finally:
        w.close()
