"""Issue 7.11: the kernel's own link-local and multicast traffic on the TUN (MLD reports,
router solicitations, IPv4 multicast) is not a policy drop; other unmatched traffic is."""

import ipaddress
import struct

from vpnd import esp


def ipv6(src, dst, nh=58, payload=b"\x85\x00" + bytes(6)) -> bytes:
    return (struct.pack("!IHBB", 6 << 28, len(payload), nh, 255)
            + ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed + payload)


def ipv4(src, dst) -> bytes:
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 1, 0, 1, 17, 0,
                       ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed) + bytes(8)


def test_link_local_and_multicast_are_not_policy_drops():
    dp = esp.DataPlane()
    chatter = [ipv6("fe80::1", "ff02::2"),          # router solicitation
               ipv6("::", "ff02::16"),              # MLDv2 report before an address exists
               ipv6("fe80::1", "fe80::2"),
               ipv4("10.1.0.1", "224.0.0.251"),     # mDNS
               ipv4("10.1.0.1", "255.255.255.255")]
    for p in chatter:
        assert dp.encap(p) is None
    assert dp.encap_many(chatter) == []
    assert dp.no_policy == 0 and dp.link_local == 10
    assert dp.encap(ipv4("10.1.0.1", "10.9.0.1")) is None
    assert dp.encap(ipv6("2001:db8::1", "2001:db8::2")) is None
    assert dp.no_policy == 2
