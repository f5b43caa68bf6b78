"""Two IKEv2 cores (IkeManager façades) talking in memory with a fake clock.

`Pair` wires two managers through a list of datagrams that tests can drop, duplicate or
reorder; each side's child actions go into the daemon's real SA table (vpnd/sadb.py), and
the pair checks that the installed CHILD_SAs of both sides fit together (SPIs and keys
crosswise).
"""
from __future__ import annotations

import random
import struct

import pytest

from vpnd.config import parse_config
from vpnd import sadb
from vpnd.ike.actions import CHILD_ACTIONS, Event, InstallChildSA, SendDatagram, UpdateChildAddresses
from vpnd.ike.manager import IkeManager

A_IP, B_IP = "10.0.0.1", "10.0.0.2"
PSK = "in-memory pre-shared key"


def conf(local, peer, lts, rts, *, daemon=None, name="site", **kw):
    c = {"version": 2, "local": local, "peer": peer, "psk": PSK, "local_ts": lts if isinstance(lts, list) else [lts],
         "remote_ts": rts if isinstance(rts, list) else [rts], "start": "none",
         "dpd": {"interval": 0}}
    c.update(kw)
    if "auth" in kw:  # certificates instead of the PSK
        c.pop("psk")
    for k in ("local_ts", "remote_ts"):
        if not c[k]:
            del c[k]
    return parse_config({"daemon": daemon or {}, "connections": {name: c}})


class Side:
    def __init__(self, name, ip, config, now):
        self.name = name
        self.ip = ip
        self.m = IkeManager(config, now=now)
        self.table = sadb.SATable(config)  # the daemon's SA table, without a data plane
        self.ops: list = []  # what the table asked of the data plane, in order
        self.deleted: list[int] = []
        self.events: list[Event] = []
        self.sent: list[tuple[float, SendDatagram]] = []
        self.updates: list[UpdateChildAddresses] = []

    def kinds(self):
        return [e.kind for e in self.events]

    @property
    def children(self) -> dict[int, InstallChildSA]:
        """Installed children (their actions, outbound keys filled in once they send)."""
        return {cid: c.action for cid, c in self.table.children.items()}

    def installed(self):
        """Live children; a replaced child whose inbound SA only lingers (a short grace
        period for packets still on the way, RetireChildSA) does not count."""
        return [c.action for c in self.table.live()]

    def apply(self, act, now: float) -> list:
        """One child action through the SA table; what it asked of the data plane."""
        ops = self.table.apply(act, now)
        self.took(ops)
        return ops

    def took(self, ops) -> None:
        self.ops += ops
        self.deleted += [o.child.child_id for o in ops if isinstance(o, sadb.ChildRemoved)]


class Pair:
    def __init__(self, a_kw=None, b_kw=None, *, a_daemon=None, b_daemon=None, a_ip=A_IP, b_ip=B_IP,
                 b_peer=None):
        a_kw = dict(a_kw or {})
        b_kw = dict(b_kw or {})
        self.now = 1000.0
        ca = conf(a_ip, b_ip, a_kw.pop("lts", "10.1.0.0/16"), a_kw.pop("rts", "10.2.0.0/16"),
                  daemon=a_daemon, **a_kw)
        cb = conf(b_ip, b_peer or a_ip, b_kw.pop("lts", "10.2.0.0/16"), b_kw.pop("rts", "10.1.0.0/16"),
                  daemon=b_daemon, **b_kw)
        self.a = Side("a", a_ip, ca, self.now)
        self.b = Side("b", b_ip, cb, self.now)
        self.by_ip = {a_ip: self.a, b_ip: self.b}
        self.wire: list[tuple[Side, SendDatagram]] = []
        self.filter = None  # (sender Side, SendDatagram) -> "drop" | "dup" | None
        self.delivered = 0

    def other(self, s: Side) -> Side:
        return self.b if s is self.a else self.a

    def feed(self, side: Side, actions):
        for act in actions:
            if isinstance(act, SendDatagram):
                side.sent.append((self.now, act))
                verdict = self.filter(side, act) if self.filter else None
                if verdict == "drop":
                    continue
                self.wire.append((side, act))
                if verdict == "dup":
                    self.wire.append((side, act))
            elif isinstance(act, CHILD_ACTIONS):
                if isinstance(act, UpdateChildAddresses):
                    side.updates.append(act)
                side.apply(act, self.now)
            elif isinstance(act, Event):
                side.events.append(act)

    def pump(self, limit: int = 500):
        n = 0
        while self.wire:
            sender, d = self.wire.pop(0)
            dst = self.by_ip.get(d.remote[0])
            if dst is None or d.data == b"\xff":
                continue
            self.delivered += 1
            self.feed(dst, dst.m.receive(d.data, d.remote, d.local, self.now))
            n += 1
            assert n < limit, "message storm"

    def run(self, seconds: float):
        """Advance the fake clock, firing timers of both sides in order."""
        end = self.now + seconds
        self.pump()
        while True:
            times = [t for s in (self.a, self.b) for t in (s.m.next_timer(), s.table.next_timer())
                     if t is not None]
            t = min(times) if times else None
            if t is None or t > end:
                break
            self.now = max(self.now, t)
            for s in (self.a, self.b):
                self.feed(s, s.m.handle_timer(self.now))
                self.timer_ops(s, s.table.handle_timer(self.now))
            self.pump()
        self.now = end

    def timer_ops(self, side: Side, ops) -> None:
        side.took(ops)

    def up(self, side=None):
        s = side or self.a
        self.feed(s, s.m.initiate("site", self.now))
        self.pump()

    def check_tunnel(self, expect: int = 1):
        """Both sides have `expect` children, pairwise matching SPIs and keys."""
        a, b = self.a.installed(), self.b.installed()
        assert len(a) == expect and len(b) == expect, (a, b)
        for ca in a:
            if not ca.outbound:
                continue
            out = ca.outbound[0]
            match = [cb for cb in b if cb.inbound[0].spi == out.spi]
            assert len(match) == 1, f"no peer child with inbound SPI {out.spi:08x}"
            cb = match[0]
            assert cb.inbound[0].enc_key == out.enc_key and cb.inbound[0].auth_key == out.auth_key
            assert cb.outbound[0].spi == ca.inbound[0].spi
            assert cb.outbound[0].enc_key == ca.inbound[0].enc_key
            assert cb.outbound[0].auth_key == ca.inbound[0].auth_key
            assert set(ca.local_ts) == set(cb.remote_ts) and set(ca.remote_ts) == set(cb.local_ts)
            assert ca.proposal == cb.proposal and ca.mode == cb.mode and ca.udp_encap == cb.udp_encap
        return a, b

    def ike(self, side=None):
        s = side or self.a
        return [x for x in s.m.status(self.now)["ike_sas"]]


PAIRS = [
    ("aes128-sha256-modp2048", "aes128-sha256", "AES_CBC-128/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048"),
    ("aes256gcm16-prfsha384-ecp384", "aes256gcm16-ecp384", "AES_GCM_16-256/PRF_HMAC_SHA2_384/ECP_384"),
    ("chacha20poly1305-prfsha256-x25519", "chacha20poly1305", "CHACHA20_POLY1305/PRF_HMAC_SHA2_256/CURVE_25519"),
]


@pytest.mark.parametrize("ike,esp,desc", PAIRS, ids=[p[0] for p in PAIRS])
def test_establish_each_proposal_pair(ike, esp, desc):
    p = Pair({"ike": ike, "esp": esp}, {"ike": ike, "esp": esp})
    p.up()
    a, b = p.check_tunnel()
    st = p.ike()[0]
    assert st["state"] == "ESTABLISHED" and st["initiator"] is True
    assert st["proposal"].split("/")[0] == desc.split("/")[0]
    assert p.ike(p.b)[0]["proposal"] == st["proposal"]
    assert "child_up" in p.a.kinds() and "ike_up" in p.b.kinds()
    assert a[0].local_ts[0].compressed == "10.1.0.0/16"
    status = p.a.m.status(p.now)
    assert status["connections"][0]["state"] == "up"
    if esp == "aes256gcm16-ecp384":
        assert len(a[0].inbound[0].enc_key) == 36  # AES-256 + 4-byte salt (RFC 4106 8.1)


def test_responder_picks_by_its_own_order():
    p = Pair({"ike": "aes128-sha256-modp2048, aes256gcm16-prfsha384-ecp384", "esp": "aes128-sha256, aes256gcm16"},
             {"ike": "aes256gcm16-prfsha384-ecp384, aes128-sha256-modp2048", "esp": "aes256gcm16, aes128-sha256"})
    p.up()
    a, _ = p.check_tunnel()
    assert p.ike()[0]["proposal"].startswith("AES_GCM_16-256")
    assert a[0].proposal == "AES_GCM_16-256"
    assert "invalid_ke" in p.b.kinds()  # A's KE was modp2048, B wanted ecp384 (INVALID_KE retry)


def test_invalid_ke_retry_with_requested_group():
    p = Pair({"ike": "aes128-sha256-ecp256-modp2048"}, {"ike": "aes128-sha256-modp2048"})
    p.up()
    p.check_tunnel()
    assert "invalid_ke" in p.a.kinds()
    assert p.ike()[0]["proposal"].endswith("MODP_2048")


def test_no_proposal_chosen_names_both_sides():
    p = Pair({"ike": "aes128-sha256-modp2048"}, {"ike": "aes256-sha512-ecp521"})
    p.up()
    assert p.a.installed() == [] and p.b.installed() == []
    ev = [e for e in p.b.events if e.kind == "no_proposal"][0]
    assert "aes128" in ev.message and "aes256" in ev.message and "ecp521" in ev.message
    assert any(e.kind == "no_proposal" for e in p.a.events)
    assert p.a.m.status(p.now)["ike_sas"] == []


def test_child_no_proposal_keeps_ike_sa():
    p = Pair({"esp": "aes128-sha256"}, {"esp": "aes256gcm16"})
    p.up()
    assert p.a.installed() == [] and p.b.installed() == []
    assert p.ike()[0]["state"] == "ESTABLISHED"
    ev = [e for e in p.b.events if e.kind == "no_proposal"][0]
    assert "aes128" in ev.message and "aes256gcm16" in ev.message


def test_wrong_psk_is_authentication_failed():
    p = Pair({"psk": "one key for a"}, {"psk": "another key for b"})
    p.up()
    assert "auth_failed" in p.a.kinds() and "auth_failed" in p.b.kinds()
    assert p.a.installed() == [] and p.b.installed() == []
    p.run(60)
    assert p.a.m.status(p.now)["ike_sas"] == [] and p.b.m.status(p.now)["ike_sas"] == []


def test_lost_messages_are_retransmitted():
    dropped = []

    def lose_first_of_each(sender, d):
        key = (sender.name, d.data[18], d.data[19] & 0x20)  # exchange, response flag
        if key not in dropped:
            dropped.append(key)
            return "drop"
        return None

    p = Pair()
    p.filter = lose_first_of_each
    p.up()
    assert p.a.installed() == []
    p.run(20)
    p.check_tunnel()
    assert len(dropped) == 4  # INIT req/resp, AUTH req/resp each lost once
    assert sum(1 for e in p.a.events if e.kind == "retransmit") >= 2


def test_duplicated_messages_are_answered_idempotently():
    p = Pair()
    p.filter = lambda s, d: "dup"
    p.up()
    p.run(5)
    a, b = p.check_tunnel()
    assert len(p.a.events) and not any(e.kind == "error" for e in p.a.events + p.b.events)
    # the responder answered the duplicate IKE_AUTH from its cache: same bytes twice
    auth_resps = [d.data for t, d in p.b.sent if d.data[18] == 35]
    assert len(auth_resps) == 2 and auth_resps[0] == auth_resps[1]


def test_retransmit_exponential_backoff_then_give_up():
    p = Pair()
    p.filter = lambda s, d: "drop" if s is p.a else None
    p.up()
    p.run(200)
    times = [t for t, d in p.a.sent]
    gaps = [round(b - a, 3) for a, b in zip(times, times[1:])]
    assert gaps == [2.0, 4.0, 8.0, 16.0, 32.0]
    assert "timeout" in p.a.kinds() and "failed" in p.a.kinds()
    assert p.a.m.status(p.now)["ike_sas"] == []


def test_transport_mode_and_use_transport_mode_notify():
    p = Pair({"mode": "transport", "lts": [], "rts": []}, {"mode": "transport", "lts": [], "rts": []})
    p.up()
    a, b = p.check_tunnel()
    assert a[0].mode == "transport"
    assert [str(n) for n in a[0].local_ts] == ["10.0.0.1/32"]


def test_ts_narrowing_and_unacceptable():
    p = Pair({"lts": "10.1.0.0/16", "rts": "10.2.0.0/16"}, {"lts": "10.2.3.0/24", "rts": ["10.1.0.0/17", "10.9.0.0/16"]})
    p.up()
    a, _ = p.check_tunnel()
    assert [str(n) for n in a[0].remote_ts] == ["10.2.3.0/24"]
    assert [str(n) for n in a[0].local_ts] == ["10.1.0.0/17"]

    q = Pair({"lts": "10.1.0.0/16", "rts": "10.2.0.0/16"}, {"lts": "10.7.0.0/16", "rts": "10.1.0.0/16"})
    q.up()
    assert q.a.installed() == [] and "ts_unacceptable" in q.a.kinds() and "ts_unacceptable" in q.b.kinds()
    assert q.ike()[0]["state"] == "ESTABLISHED"


def test_several_subnets_per_side():
    p = Pair({"lts": ["10.1.0.0/16", "10.11.0.0/16"], "rts": ["10.2.0.0/16", "10.12.0.0/16"]},
             {"lts": ["10.2.0.0/16", "10.12.0.0/16"], "rts": ["10.1.0.0/16", "10.11.0.0/16"]})
    p.up()
    a, _ = p.check_tunnel()
    assert sorted(str(n) for n in a[0].remote_ts) == ["10.12.0.0/16", "10.2.0.0/16"]


def test_delete_both_ways():
    p = Pair()
    p.up()
    p.check_tunnel()
    p.feed(p.a, p.a.m.terminate("site", p.now))
    p.pump()
    assert p.a.installed() == [] and p.b.installed() == []
    assert p.a.m.status(p.now)["ike_sas"] == [] and p.b.m.status(p.now)["ike_sas"] == []
    assert p.b.m.status(p.now)["connections"][0]["state"] == "down"
    # the other way round
    p.up()
    p.check_tunnel()
    p.feed(p.b, p.b.m.terminate("site", p.now))
    p.pump()
    assert p.a.installed() == [] and p.b.installed() == []


def test_cookie_above_half_open_threshold():
    p = Pair(b_daemon={"cookie_threshold": 0})
    p.up()
    p.check_tunnel()
    inits = [d.data for t, d in p.a.sent if d.data[18] == 34]
    assert len(inits) == 2
    # the retried IKE_SA_INIT carries the COOKIE notify as its first payload (RFC 7296 2.6)
    assert inits[1][16] == 41 and struct.unpack("!H", inits[1][28 + 6:28 + 8])[0] == 16390


def test_half_open_limit_drops():
    p = Pair(b_daemon={"half_open_limit": 1, "cookie_threshold": 5})
    p.filter = lambda s, d: "drop" if d.data[18] == 35 else None  # keep B's SA half-open
    p.up()
    assert not any(e.kind == "half_open_limit" for e in p.b.events)
    second = Side("a2", A_IP, p.a.m.config, p.now)
    p.feed(second, second.m.initiate("site", p.now))
    p.pump()
    assert any(e.kind == "half_open_limit" for e in p.b.events)
    assert len(p.b.m.v2.half_open) == 1


def test_initial_contact_clears_stale_sa_of_restarted_peer():
    p = Pair()
    p.up()
    p.check_tunnel()
    # A "restarts": a fresh core without state, same config
    p.a = Side("a", A_IP, p.a.m.config, p.now)
    p.by_ip[A_IP] = p.a
    p.up()
    assert len(p.a.installed()) == 1
    assert len(p.b.m.status(p.now)["ike_sas"]) == 1  # the stale one is gone
    assert len(p.b.installed()) == 1


def test_late_init_retransmit_gets_cached_answer():
    p = Pair()
    p.up()
    p.check_tunnel()
    init = [d for t, d in p.a.sent if d.data[18] == 34][0]
    before = len(p.b.m.v2.sas)
    p.feed(p.b, p.b.m.receive(init.data, init.remote, init.local, p.now))
    assert len(p.b.m.v2.sas) == before
    resp = [d.data for t, d in p.b.sent if d.data[18] == 34]
    assert len(resp) == 2 and resp[0] == resp[1]


def test_ike_sa_init_as_scapy_reads_it():
    """scapy's independent IKEv2 dissector reads our IKE_SA_INIT the way we meant it."""
    from scapy.contrib.ikev2 import IKEv2, IKEv2_KE, IKEv2_Notify, IKEv2_SA

    p = Pair({"ike": "aes256gcm16-prfsha384-ecp384, aes128-sha256-modp2048"})
    p.up()
    init = [d.data for t, d in p.a.sent if d.data[18] == 34][0]
    pkt = IKEv2(init)
    assert pkt.exch_type == 34 and pkt.length == len(init)
    props = pkt[IKEv2_SA].prop
    got = []
    while props is not None and props.__class__.__name__ == "IKEv2_Proposal":
        t = props.trans
        ts = []
        while t is not None and t.__class__.__name__ == "IKEv2_Transform":
            ts.append((t.transform_type, t.transform_id, getattr(t, "key_length", None)))
            t = t.payload if t.payload.__class__.__name__ == "IKEv2_Transform" else None
        got.append(ts)
        props = props.payload if props.payload.__class__.__name__ == "IKEv2_Proposal" else None
    assert got[0] == [(1, 20, 256), (2, 6, None), (4, 20, None)]
    assert got[1] == [(1, 12, 128), (2, 5, None), (3, 12, None), (4, 14, None)]
    assert pkt[IKEv2_KE].group == 20 and len(pkt[IKEv2_KE].ke) == 96
    types = []
    n = pkt[IKEv2_Notify]
    while n is not None and n.__class__.__name__ == "IKEv2_Notify":
        types.append(n.type)
        n = n.payload if n.payload.__class__.__name__ == "IKEv2_Notify" else None
    assert types == [16388, 16389, 16431]


@pytest.mark.parametrize("seed", range(12))
def test_both_sides_start_at_once(seed):
    """Simultaneous initiation, messages delivered in a random order: the duplicate IKE SA
    (and its CHILD_SA) is deleted by exactly one side, one tunnel is left whose keys match,
    and it stays single through later rekeys."""
    rnd = random.Random(seed)
    p = Pair()
    p.feed(p.a, p.a.m.initiate("site", p.now))
    p.feed(p.b, p.b.m.initiate("site", p.now))
    while p.wire:  # deliver in any order
        sender, d = p.wire.pop(rnd.randrange(len(p.wire)))
        dst = p.by_ip[d.remote[0]]
        p.feed(dst, dst.m.receive(d.data, d.remote, d.local, p.now))
    p.run(10)
    assert len(p.ike()) == 1 and len(p.ike(p.b)) == 1, (p.ike(), p.ike(p.b))
    assert p.ike()[0]["initiator"] != p.ike(p.b)[0]["initiator"]  # the same SA seen from both ends
    p.check_tunnel(1)
    dup = [e for s in (p.a, p.b) for e in s.events if e.kind == "ike_duplicate"]
    assert len(dup) == 1 and "both ends initiated" in dup[0].message
    assert not [k for s in (p.a, p.b) for k in s.kinds() if k in ("error", "auth_failed", "peer_dead")]
    p.run(3 * 3600)  # rekeys happen on the one SA left; no second SA comes back
    assert len(p.ike()) == 1 and len(p.ike(p.b)) == 1
    p.check_tunnel(1)


def test_later_second_sa_of_same_peer_is_not_a_duplicate():
    """Only a crossing within peers.SIMULTANEOUS_WINDOW counts: an SA the peer set up much later
    (e.g. after it lost its state) is not deleted by the nonce rule."""
    p = Pair()
    p.up()
    p.run(60)
    p.up(p.b)
    p.run(5)
    assert not [e for s in (p.a, p.b) for e in s.events if e.kind == "ike_duplicate"]


def test_initial_contact_after_dpd_restart_clears_peer():
    dpd = {"interval": 5, "retry": 1, "mode": "periodic", "action": "restart"}
    p = Pair({"dpd": dpd})
    p.up()
    p.check_tunnel()
    p.filter = lambda s, d: "drop"  # the path breaks; B keeps its state (no DPD on B)
    p.run(20)
    assert "peer_dead" in p.a.kinds() and len(p.ike(p.b)) == 1
    p.filter = None
    p.run(30)
    p.check_tunnel()
    assert len(p.ike(p.b)) == 1  # the old SA went with A's INITIAL_CONTACT


def test_lost_authentication_failed_answer_is_repeated():
    p = Pair({"psk": "one key for a"}, {"psk": "another key for b"})
    lost = []

    def lose_auth_answer(sender, d):
        if sender is p.b and d.data[18] == 35 and not lost:
            lost.append(d)
            return "drop"
        return None

    p.filter = lose_auth_answer
    p.up()
    assert "auth_failed" in p.b.kinds() and "auth_failed" not in p.a.kinds()
    p.run(5)
    assert "auth_failed" in p.a.kinds()  # the retransmit got the cached AUTHENTICATION_FAILED
    assert p.b.m.status(p.now)["ike_sas"] == []
    p.run(20)
    assert p.b.m.v2.sas == {} and p.a.m.v2.sas == {}


# Issue 3's algorithm list, each negotiated as IKE and ESP proposal (PFS with the group):
# every encryption, every PRF/integrity and every DH group at least once.
ALGORITHM_MATRIX = [
    ("aes128-sha1-modp1024", "aes128-sha1-modp1024", "AES_CBC-128/HMAC_SHA1_96/PRF_HMAC_SHA1/MODP_1024"),
    ("aes192-sha256-modp1536", "aes192-sha256-modp1536", "AES_CBC-192/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_1536"),
    ("aes256-sha384-modp3072", "aes256-sha384-modp3072", "AES_CBC-256/HMAC_SHA2_384_192/PRF_HMAC_SHA2_384/MODP_3072"),
    ("3des-sha512-modp4096", "3des-sha512-modp4096", "3DES_CBC/HMAC_SHA2_512_256/PRF_HMAC_SHA2_512/MODP_4096"),
    ("aes128gcm16-prfsha256-ecp256", "aes128gcm16-ecp256", "AES_GCM_16-128/PRF_HMAC_SHA2_256/ECP_256"),
    ("aes256gcm16-prfsha512-ecp521", "aes256gcm16-ecp521", "AES_GCM_16-256/PRF_HMAC_SHA2_512/ECP_521"),
    ("chacha20poly1305-prfsha384-x25519", "chacha20poly1305-x25519", "CHACHA20_POLY1305/PRF_HMAC_SHA2_384/CURVE_25519"),
    ("aes128-md5-modp768", "aes128-md5", "AES_CBC-128/HMAC_MD5_96/PRF_HMAC_MD5/MODP_768"),
]


@pytest.mark.parametrize("ike,esp,desc", ALGORITHM_MATRIX, ids=[m[0] for m in ALGORITHM_MATRIX])
def test_every_algorithm_of_the_issue_negotiates(ike, esp, desc):
    kw = {"ike": ike, "esp": esp}
    if "md5" in ike:  # MD5 and MODP768 only when configured explicitly (issue 3)
        kw["allow_legacy"] = True
    p = Pair(kw, kw)
    p.up()
    p.check_tunnel()
    assert p.ike()[0]["proposal"] == desc == p.ike(p.b)[0]["proposal"]
    if "-modp" in esp or "-ecp" in esp or "-x25519" in esp:  # PFS: the CHILD_SA rekey runs a DH
        p.feed(p.a, p.a.m.rekey("site", p.now))
        p.pump()
        p.check_tunnel()
    assert not [k for s in (p.a, p.b) for k in s.kinds() if k in ("error", "auth_failed")]
