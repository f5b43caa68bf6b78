"""vpnd/net/forwarding.py: which IP versions tunnel-mode connections need forwarded, and the
warning text (the netns test checks the kernel reading)."""
from types import SimpleNamespace as NS
import ipaddress

from vpnd.net.forwarding import needed_families, warnings


def _c(name, mode="tunnel", lts=(), rts=(), peer="10.0.0.2", local=None):
    n = lambda xs: tuple(ipaddress.ip_network(x) for x in xs)  # noqa: E731
    return NS(name=name, mode=mode, local_ts=n(lts), remote_ts=n(rts), peer=peer, local=local)


def test_needed_families_and_warning():
    conns = [_c("a", lts=["10.1.0.0/16"], rts=["10.2.0.0/16"]),
             _c("b", lts=["2001:db8:1::/48"], rts=["2001:db8:2::/48"], peer="2001:db8::2"),
             _c("t", mode="transport"), _c("p")]
    assert needed_families(conns) == {4: ["a", "p"], 6: ["b"]}
    lines = warnings(conns, probe=lambda fam: fam == 6)
    assert len(lines) == 1 and "sysctl -w net.ipv4.ip_forward=1" in lines[0] and "a, p" in lines[0]
    assert warnings(conns, probe=lambda fam: None) == []  # unknown: no false alarm
    lines = warnings(conns, probe=lambda fam: False)
    assert any("net.ipv6.conf.all.forwarding" in x for x in lines)
    assert warnings([_c("t", mode="transport")], probe=lambda fam: False) == []
