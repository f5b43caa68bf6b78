"""Issue 7.4: an ISAKMP policy's lifetime is the ISAKMP SA lifetime (it was validated by the
config and then thrown away: the SA kept 86400 s)."""
import dataclasses

from vpnd.ike.v1.core import Ikev1Core

from test_ikev1_harness import A_IP, B_IP, LAN_A, LAN_B, Net, conn_conf, make_config


class _WithLife:
    """A configured proposal carrying its policy's lifetime (as config.py exposes it)."""

    def __init__(self, p, life):
        self._p, self.lifetime = p, life

    def __getattr__(self, k):
        return getattr(self._p, k)


def _core(local, peer, lts, rts, life, **kw):
    cfg = make_config(local, {"site": conn_conf(local, peer, lts, rts, **kw)})
    if life:
        conns = [dataclasses.replace(c, ike=tuple(_WithLife(p, life) for p in c.ike)) for c in cfg.connections]
        cfg = dataclasses.replace(cfg, connections=type(cfg.connections)(conns))
    return Ikev1Core(cfg, now=0.0)


def _up(life_a, life_b):
    a = _core(A_IP, B_IP, LAN_A, LAN_B, life_a)
    b = _core(B_IP, A_IP, LAN_B, LAN_A, life_b, start="none")
    net = Net(a, b)
    net.feed(a, a.initiate("site", 0.0))
    (sa_a,), (sa_b,) = a.sas.values(), b.sas.values()
    assert sa_a.is_established and sa_b.is_established
    return sa_a, sa_b


def test_initiator_policy_lifetime_is_the_sa_lifetime():
    sa_a, sa_b = _up(3600, None)
    for sa in (sa_a, sa_b):
        assert sa.policy.lifetime == 3600
        assert sa.expire_at - sa.established == 3600
    assert sa_a.established < sa_a.rekey_at < sa_a.established + 3600


def test_responder_policy_lifetime_bounds_its_sa():
    sa_a, sa_b = _up(None, 1800)
    assert sa_b.expire_at - sa_b.established == 1800


def test_policy_longer_than_the_connection_default():
    sa_a, sa_b = _up(172800, 172800)
    assert sa_a.policy.lifetime == sa_b.policy.lifetime == 172800


def test_configured_isakmp_policy_lifetime_end_to_end():
    """The config's `crypto isakmp policy` list with `lifetime` (config.py exposes it as the
    connection's ISAKMP lifetime) gives SAs of that lifetime on both sides, and the
    initiator rekeys before it ends."""
    pol = [{"seq": 10, "encryption": "aes 256", "hash": "sha", "group": 14, "lifetime": 3600}]
    a = Ikev1Core(make_config(A_IP, {"site": conn_conf(A_IP, B_IP, LAN_A, LAN_B, ike=pol)}), now=0.0)
    b = Ikev1Core(make_config(B_IP, {"site": conn_conf(B_IP, A_IP, LAN_B, LAN_A, start="none",
                                                       ike="aes256-sha1-modp2048")}), now=0.0)
    net = Net(a, b)
    net.feed(a, a.initiate("site", 0.0))
    (sa_a,), (sa_b,) = a.sas.values(), b.sas.values()
    assert sa_a.expire_at - sa_a.established == 3600 == sa_b.expire_at - sa_b.established
    assert sa_a.rekey_at < sa_a.established + 3600
    net.advance(3600)
    assert net.events("A", "ike_rekeyed")
