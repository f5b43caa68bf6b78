"""access_group (Cisco `set ip access-group`, issue 12): IOS extended-ACL words parsed
(vpnd/acl.py), matched against packets built by scapy (vpnd/esp/acl.py), and applied by
the data plane before encryption (`out`) and after decryption (`in`)."""
from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment

from vpnd import esp
from vpnd.acl import AclError, parse_ace, parse_acl
from vpnd.config import ConfigError, parse_config
from vpnd.esp.acl import AccessList, ConnFilter

A, B = "10.1.0.5", "10.2.0.10"


def acl(*entries):
    return AccessList(parse_acl(list(entries)))


def pkt(p) -> bytes:
    return bytes(p)


# -- parsing ---------------------------------------------------------------------------------

def test_ios_words_parse():
    a = parse_ace("10 permit tcp 10.1.0.0 0.0.0.255 host 10.2.0.10 eq ssh")
    assert a.permit and a.proto == 6 and a.family == 4
    assert a.src == (4, 0x0A010000, 0xFFFFFF00) and a.dst == (4, 0x0A02000A, 0xFFFFFFFF)
    assert a.dport == (22, 22, False) and a.sport is None
    assert parse_ace("deny udp any range 5000 5100 10.2.0.0/24").sport == (5000, 5100, False)
    assert parse_ace("permit tcp any any gt 1023").dport == (1024, 65535, False)
    assert parse_ace("permit tcp any any lt 1024").dport == (0, 1023, False)
    assert parse_ace("permit tcp any any neq www").dport == (80, 80, True)
    assert parse_ace("permit icmp any any echo-reply").icmp == (0, None)
    assert parse_ace("permit icmp any any 3 4").icmp == (3, 4)
    assert parse_ace("permit ipv6 2001:db8::/32 any").family == 6
    assert parse_ace("permit icmp 2001:db8::1/128 any echo-request").icmp == (128, None)
    assert parse_ace("remark only a comment") is None
    assert parse_ace("permit ip any any").family is None
    assert parse_acl(["remark x", "permit ip any any"])[0].text == "permit ip any any"


@pytest.mark.parametrize("entry, why", [
    ("allow ip any any", "starts with permit or deny"),
    ("permit foo any any", "unknown protocol"),
    ("permit ip any", "address missing"),
    ("permit ip 10.0.0.300 any", "not an address"),
    ("permit ip any any eq 22", "ports are for tcp"),
    ("permit tcp any any range 90 80", "above the second"),
    ("permit tcp any any eq 70000", "not a port"),
    ("permit ip 10.0.0.0/8 2001:db8::/32", "mix IPv4 and IPv6"),
    ("permit udp any any established", "'established' is for tcp"),
    ("permit icmp any any bogus-type", "unknown ICMP type"),
    ("permit ip any any log", "'log' is not supported"),
    ("permit tcp any any eq 22 fragments", "cannot be combined"),
])
def test_bad_entries_say_why(entry, why):
    with pytest.raises(AclError, match=why):
        parse_ace(entry)


def _conn(extra: str):
    import yaml
    doc = yaml.safe_load(f"""
connections:
  b:
    peer: 10.0.0.2
    psk: "a-long-enough-psk-1234"
    local_ts: [10.1.0.0/24]
    remote_ts: [10.2.0.0/24]
{extra}
""")
    return parse_config(doc)


def test_config_errors_name_the_key_and_entry():
    with pytest.raises(ConfigError) as e:
        _conn("    access_group:\n      out: ['permit tcp any any eq 22', 'permit tcp any any eq 99999']\n"
              "      inbound: []\n")
    msg = str(e.value)
    assert "connections.b.access_group.out: entry 2 'permit tcp any any eq 99999'" in msg
    assert "connections.b.access_group.inbound: unknown key" in msg
    with pytest.raises(ConfigError, match="access_group.in: a list of entries"):
        _conn("    access_group:\n      in: permit ip any any\n")


def test_config_keeps_the_lists():
    c = _conn("    access_group:\n      out: ['permit icmp any any echo']\n").connections[0]
    assert c.access_group.outbound[0].icmp == (8, None) and c.access_group.inbound == ()
    assert _conn("    access_group: {in: [], out: []}\n").connections[0].access_group is None


# -- matching (packets from scapy) ----------------------------------------------------------

def test_first_match_wins_and_implicit_deny_is_counted():
    a = acl("permit tcp 10.1.0.0 0.0.0.255 host 10.2.0.10 eq 22",
            "deny tcp any any eq 22",
            "permit icmp any any echo")
    assert a.permit(pkt(IP(src=A, dst=B) / TCP(dport=22)))
    assert not a.permit(pkt(IP(src="10.9.9.9", dst=B) / TCP(dport=22)))
    assert a.permit(pkt(IP(src=A, dst=B) / ICMP(type=8)))
    assert not a.permit(pkt(IP(src=A, dst=B) / ICMP(type=0)))        # echo-reply: no entry
    assert not a.permit(pkt(IP(src=A, dst=B) / UDP(dport=53)))
    assert a.hits == [1, 1, 1] and a.implicit_deny == 2
    assert (a.permitted, a.denied) == (2, 3)
    snap = a.snapshot()
    assert snap["entries"][0] == {"entry": "permit tcp 10.1.0.0 0.0.0.255 host 10.2.0.10 eq 22",
                                  "matches": 1}


def test_ports_sources_and_wildcards():
    a = acl("permit udp any eq 53 10.2.0.0 0.0.255.255 gt 1023",
            "permit tcp 10.1.0.0 0.0.0.7 any neq 80")
    assert a.permit(pkt(IP(src=A, dst=B) / UDP(sport=53, dport=40000)))
    assert not a.permit(pkt(IP(src=A, dst=B) / UDP(sport=53, dport=1000)))
    assert not a.permit(pkt(IP(src=A, dst="10.3.0.1") / UDP(sport=53, dport=40000)))
    assert a.permit(pkt(IP(src="10.1.0.7", dst=B) / TCP(dport=443)))
    assert not a.permit(pkt(IP(src="10.1.0.8", dst=B) / TCP(dport=443)))     # outside /29
    assert not a.permit(pkt(IP(src=A, dst=B) / TCP(dport=80)))               # neq 80


def test_established_matches_ack_or_rst_only():
    a = acl("permit tcp any any established")
    assert not a.permit(pkt(IP(src=A, dst=B) / TCP(flags="S")))
    assert a.permit(pkt(IP(src=A, dst=B) / TCP(flags="SA")))
    assert a.permit(pkt(IP(src=A, dst=B) / TCP(flags="R")))


def test_non_initial_fragments_follow_the_ios_rule():
    frags = [pkt(f) for f in fragment(IP(src=A, dst=B) / UDP(sport=1, dport=5000) /
                                      (b"x" * 3000), fragsize=1000)]
    assert len(frags) >= 3
    # a permit with ports lets the tails through (the first fragment has the ports)
    a = acl("permit udp any any eq 5000")
    assert all(a.permit(f) for f in frags)
    # a deny with ports is skipped for tails: they fall to the next entry
    a = acl("deny udp any any eq 6000", "permit ip any any")
    assert all(a.permit(f) for f in frags) and a.hits == [0, len(frags)]
    # `fragments` matches only the tails
    a = acl("deny ip any any fragments", "permit ip any any")
    assert [a.permit(f) for f in frags] == [True] + [False] * (len(frags) - 1)


def test_ipv6_with_extension_headers():
    a = acl("permit icmp 2001:db8:1::/48 any echo-request", "permit tcp any any eq 22")
    assert a.permit(pkt(IPv6(src="2001:db8:1::5", dst="2001:db8:2::1") / ICMPv6EchoRequest()))
    assert not a.permit(pkt(IPv6(src="2001:db8:9::5", dst="2001:db8:2::1") / ICMPv6EchoRequest()))
    p = IPv6(src="2001:db8:1::5", dst="2001:db8:2::1") / IPv6ExtHdrFragment(offset=0, m=1) / \
        TCP(dport=22)
    assert a.permit(pkt(p))
    # `ip any any` covers both families; `icmp` means ICMPv6 for IPv6 packets
    b = acl("permit icmp any any")
    assert b.permit(pkt(IPv6(src="2001:db8::1", dst="2001:db8::2") / ICMPv6EchoRequest()))
    assert b.permit(pkt(IP(src=A, dst=B) / ICMP()))
    assert not acl("permit ip 10.0.0.0/8 any").permit(
        pkt(IPv6(src="2001:db8::1", dst="2001:db8::2") / TCP()))


def test_truncated_and_garbage_packets_are_denied_not_crashing():
    a = acl("permit tcp any any eq 22")
    assert not a.permit(pkt(IP(src=A, dst=B, proto=6)))        # no TCP header at all
    assert not a.permit(b"\x45\x00")
    assert not a.permit(b"\x00" * 40)
    assert not a.permit(b"\x60" + b"\x00" * 10)


# -- in the data plane ----------------------------------------------------------------------

KEY = bytes(range(20))


def _sa(spi, conn="b"):
    return esp.SA(spi, encryption="aes128gcm16", enc_key=KEY, local="192.0.2.1",
                  remote="192.0.2.2", conn=conn)


def _pair():
    """Gateway a's data plane sending on SA 0x1001 to b's, which receives it."""
    a, b = esp.DataPlane(), esp.DataPlane()
    a.add_outbound(1, ["10.1.0.0/24"], ["10.2.0.0/24"], [_sa(0x1001)])
    b.add_inbound(_sa(0x1001), local_ts=["10.2.0.0/24"], remote_ts=["10.1.0.0/24"])
    return a, b


def _through(a, b, p):
    out = a.encap(pkt(p))
    if out is None:
        return None
    return b.decap(out[2], 50)


def test_out_list_drops_before_encryption():
    a, b = _pair()
    a.set_filter("b", ConnFilter(outbound=parse_acl(["permit icmp any any echo"])))
    assert _through(a, b, IP(src=A, dst=B) / ICMP(type=8)) is not None
    assert a.encap(pkt(IP(src=A, dst=B) / TCP(dport=22))) is None
    assert a.filtered == 1 and a.filters["b"].outbound.denied == 1
    assert a.spd.policies[1].bundle[0].packets_out == 1     # the denied one was never sealed


def test_in_list_drops_after_decryption_and_reload_applies_to_live_sas():
    a, b = _pair()
    assert _through(a, b, IP(src=A, dst=B) / UDP(dport=53)) is not None
    b.set_filter("b", ConnFilter(inbound=parse_acl(["deny udp any any eq 53",
                                                     "permit ip any any"])))
    assert _through(a, b, IP(src=A, dst=B) / UDP(dport=53)) is None
    assert _through(a, b, IP(src=A, dst=B) / UDP(dport=54)) is not None
    assert b.filtered == 1 and b.filters["b"].inbound.hits == [1, 1]
    b.set_filter("b", None)                                 # removed on reload
    assert _through(a, b, IP(src=A, dst=B) / UDP(dport=53)) is not None


def test_other_connections_are_not_filtered():
    a = esp.DataPlane()
    a.set_filter("other", ConnFilter(outbound=parse_acl(["deny ip any any"])))
    a.add_outbound(1, ["10.1.0.0/24"], ["10.2.0.0/24"], [_sa(0x1001, conn="b")])
    assert a.encap(pkt(IP(src=A, dst=B) / ICMP())) is not None


def test_denied_traffic_does_not_start_a_negotiation():
    a = esp.DataPlane()
    a.set_filter("b", ConnFilter(outbound=parse_acl(["permit tcp any any eq 22"])))
    a.add_outbound(("trap", "b"), ["10.1.0.0/24"], ["10.2.0.0/24"], [])
    assert a.encap(pkt(IP(src=A, dst=B) / UDP(dport=53))) is None
    assert not a.events and a.filtered == 1
    assert a.encap(pkt(IP(src=A, dst=B) / TCP(dport=22))) is None
    assert [e[0] for e in a.events] == ["acquire"]


# -- vpnctl import-ios: `set ip access-group` ------------------------------------------------

IOS = """hostname R1
crypto isakmp policy 10
 encryption aes 256
 hash sha
 authentication pre-share
 group 14
crypto isakmp key k3y-for-the-test address 10.200.0.2
crypto ipsec transform-set TS esp-aes 256 esp-sha-hmac
crypto map VPN 10 ipsec-isakmp
 set peer 10.200.0.2
 set transform-set TS
 match address 101
 set ip access-group TUNNEL-OUT out
 set ip access-group 10 in
interface Gi0/0
 ip address 10.200.0.1 255.255.255.0
 crypto map VPN
access-list 101 permit ip 10.1.0.0 0.0.255.255 10.2.0.0 0.0.255.255
access-list 10 permit 10.2.0.0 0.0.0.255
access-list 10 deny any log
ip access-list extended TUNNEL-OUT
 remark ssh and pings only
 10 permit tcp 10.1.0.0 0.0.255.255 any eq 22
 20 permit icmp any any echo log
 30 permit udp any any eq 69 fragments
"""


def test_import_ios_maps_set_ip_access_group():
    from vpnd.import_ios import convert
    doc, report = convert(IOS)
    c = doc["connections"]["vpn-10"]
    assert c["access_group"] == {
        "out": ["permit tcp 10.1.0.0 0.0.255.255 any eq 22", "permit icmp any any echo"],
        "in": ["permit ip 10.2.0.0 0.0.0.255 any", "deny ip any any"]}
    text = "\n".join(report)
    assert "'log' dropped" in text and "30 permit udp any any eq 69 fragments" in text
    assert "k3y-for-the-test" not in text
    cfg = parse_config(doc)            # what import-ios wrote passes the checker
    ag = cfg.connections[0].access_group
    assert [a.permit for a in ag.inbound] == [True, False]
