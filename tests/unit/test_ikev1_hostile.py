"""IKEv1 under hostile unauthenticated input (issue 8): log injection, Aggressive Mode
probes, floods, INVALID-SPI amplification. In memory, against the sans-IO core."""
from __future__ import annotations

import os

from vpnd.crypto import dh
from vpnd.ike import codec
from vpnd.ike.actions import Event, SendDatagram
from vpnd.ike.v1 import constants as C
from vpnd.ike.v1 import payloads as P
from vpnd.ike.v1 import policy
from vpnd.ike.v1.core import Ikev1Core

from test_ikev1_harness import A_IP, B_IP, LAN_A, LAN_B, PSK, conn_conf, make_config

EVIL_ID = b"x\n2030-01-01T00:00:00 vpnd[1] INFO FORGED-LOG-LINE ISAKMP SA established\r\x1b[2J"


def msg1(*, aggressive: bool, id_data: bytes = b"probe.example", id_type: int = C.ID_FQDN,
         ike: str = "aes128-sha1-modp2048", cky_i: bytes | None = None, kex=None) -> bytes:
    """A Main Mode or Aggressive Mode message 1 as an initiator (or a prober) sends it."""
    from vpnd.config import parse_config
    conf = parse_config({"daemon": {"listen": A_IP}, "connections": {
        "x": conn_conf(A_IP, B_IP, LAN_A, LAN_B, ike=ike)}}).connections[0]
    pols = policy.p1_policies(conf.ike, C.AUTH_PSK, conf.lifetime.ike)
    if aggressive:
        pols = [p for p in pols if p.group == pols[0].group]
    offer = policy.p1_sa(pols)
    pls = [offer]
    if aggressive:
        kex = kex or dh.KeyExchange(pols[0].group)
        pls += [P.KE(kex.public), P.Nonce(os.urandom(32)), P.ID(id_type, 0, 0, id_data)]
    pls += [P.VendorID(C.VID_DPD)] + [P.VendorID(v) for v in C.VIDS_NATT]
    h = codec.Header(cky_i or os.urandom(8), b"\x00" * 8, 0, 1, 0,
                     C.EXCH_AGGRESSIVE if aggressive else C.EXCH_MAIN, 0, 0)
    return codec.encode_message(h, pls)


def responder(conns: dict, **daemon) -> Ikev1Core:
    return Ikev1Core(make_config(B_IP, conns, **daemon), now=0.0)


def any_conn(**kw):
    return conn_conf(B_IP, "%any", LAN_B, LAN_A, **{"start": "none", **kw})


def events(out) -> list[Event]:
    return [x for x in out if isinstance(x, Event)]


def sends(out) -> list[SendDatagram]:
    return [x for x in out if isinstance(x, SendDatagram)]


def _all_text(core: Ikev1Core, out) -> list[str]:
    texts = [e.message for e in events(out)]
    texts += [str(v) for e in events(out) for v in e.data.values()]
    for sa in core.status_ike_sas(0.0):
        texts += [str(v) for v in sa.values()]
    return texts


# ------------------------------------------------------------------ 8.4 log injection


def test_aggressive_id_with_newline_never_reaches_a_log_line_raw():
    """Issue 8.4: the ID of an Aggressive Mode message 1 forged a log line. Every event
    message (the daemon logs them) and status field stays on one printable line."""
    for remote_id in ("@gw.example", None):  # refused ID, and an accepted one (status shows it)
        core = responder({"any": any_conn(aggressive=True, remote_id=remote_id)})
        out = core.receive_datagram(msg1(aggressive=True, id_data=EVIL_ID), (B_IP, 500), (A_IP, 500), 1.0)
        texts = _all_text(core, out)
        assert texts, "expected an event or a status entry"
        for t in texts:
            assert t.isprintable(), repr(t)
        if remote_id is None:
            shown = [s["remote_id"] for s in core.status_ike_sas(1.0)]
            assert shown and "FORGED" in shown[0] and "\\x0a" in shown[0]


def test_hostile_id_types_shown_bounded():
    from vpnd.ike.v1 import identity
    for t in (C.ID_FQDN, C.ID_USER_FQDN, C.ID_DER_ASN1_DN, 99, C.ID_IPV4_ADDR):
        for data in (EVIL_ID, b"\xff\xfe" * 5000, b"\x1b" * 3):
            out = identity.describe_id(P.ID(t, 0, 0, data))
            assert out.isprintable() and len(out) <= 300, (t, out[:80])


def test_no_proposal_log_line_of_a_hostile_offer_is_bounded():
    core = responder({"any": any_conn(ike="aes256-sha256-modp4096")})
    t = P.Transform(1, C.KEY_IKE, [(C.P1_ENC, 99), (200, b"\n\x1b" * 100)] * 10)
    offer = P.SA([P.Proposal(1, C.PROTO_ISAKMP, b"", [t] * 20)])
    h = codec.Header(os.urandom(8), b"\x00" * 8, 0, 1, 0, C.EXCH_MAIN, 0, 0)
    out = core.receive_datagram(codec.encode_message(h, [offer]), (B_IP, 500), (A_IP, 500), 1.0)
    ev = events(out)
    assert ev
    for e in ev:
        assert e.message.isprintable() and len(e.message) < 2000, e.message[:200]


# ------------------------------------------------------------------ 8.1 Aggressive Mode oracle


def _probe(core, id_data=b"probe.example", now=1.0, src=A_IP):
    return core.receive_datagram(msg1(aggressive=True, id_data=id_data), (B_IP, 500), (src, 500), now)


def test_aggressive_probe_of_a_main_mode_connection_gets_no_psk_hash():
    """Issue 8.1: a %any connection with aggressive: false answered an Aggressive Mode
    probe with message 2 (a PSK-keyed HASH_R, crackable offline) because
    daemon.aggressive_mode defaults to true. Now: no answer, no SA, no DH."""
    for remote_id in (None, "@probe.example"):
        core = responder({"any": any_conn(aggressive=False, remote_id=remote_id)})
        out = _probe(core)
        assert sends(out) == []
        assert core.sas == {} and core._alts == {}


def test_unknown_and_known_ids_get_the_same_answer():
    """An unknown ID and the ID of a connection that does not allow Aggressive Mode are
    indistinguishable to a prober (both: silence)."""
    core = responder({"mm": any_conn(aggressive=False, remote_id="@known.example"),
                      "am": any_conn(aggressive=True, remote_id="@aggr.example")})
    known = _probe(core, b"known.example")
    unknown = _probe(core, b"unknown.example")
    assert sends(known) == sends(unknown) == []
    assert core.sas == {}
    # the configured aggressive ID: a real handshake (unavoidable, documented)
    real = _probe(core, b"aggr.example")
    assert len(sends(real)) == 1 and len(core.sas) == 1


def test_aggressive_connection_still_works_and_global_switch_disables_it():
    core = responder({"am": any_conn(aggressive=True)})
    assert len(sends(_probe(core))) == 1
    core = responder({"am": any_conn(aggressive=False)}, aggressive_mode=False)
    assert sends(_probe(core)) == []


# ------------------------------------------------------------------ 8.3 INVALID-SPI amplification


def test_random_spi_flood_from_the_peer_gets_a_handful_of_notifies_and_bounded_state():
    """Issue 8.3: random-SPI ESP spoofed from the peer's address was answered 1:1 with
    encrypted INVALID-SPI notifies (the limiter was per SPI, an unbounded dict). Now the
    limiter is per peer address and bounded, the same rule as IKEv2 (limits.py)."""
    import random

    from test_ikev1_harness import pair
    from vpnd.ike import limits

    net = pair()
    core = net.b
    rnd = random.Random(7)
    sent = 0
    t0 = net.now
    for i in range(10_000):  # 1000 packets/s for 10 s
        out = core.unknown_spi(rnd.getrandbits(32), (A_IP, 500), t0 + i / 1000)
        sent += len(sends(out))
    assert sent <= 10 / getattr(limits, "INVALID_SPI_INTERVAL", 1.0) + 1, sent
    sa = next(iter(core.sas.values()))
    assert len(getattr(sa, "invalid_spi_sent", {})) <= 1
    assert len(core.invalid_spi_limit) <= limits.MAX_KEYS


def test_invalid_spi_rule_is_shared_with_ikev2():
    from vpnd.ike import limits
    from vpnd.ike.v2.engine import Ikev2Engine

    core = responder({"any": any_conn()})
    v2 = Ikev2Engine(make_config(B_IP, {"x": {**any_conn(), "version": 2}}), now=0.0)
    for lim in (core.invalid_spi_limit, v2.invalid_spi_limit):
        assert isinstance(lim, limits.RateLimiter)
        assert lim.rate == 1.0 / limits.INVALID_SPI_INTERVAL and lim.burst == 1


# ------------------------------------------------------------------ 8.2 log volume, 8.5 floods


def _spoofed(i: int) -> tuple[str, int]:
    return (f"10.{50 + (i >> 16) % 100}.{(i >> 8) & 255}.{i & 255 or 1}", 500)


def test_no_connection_log_volume_is_bounded():
    """Issue 8.2: `no IKEv1 connection for <ip>` was logged per datagram. Now the first is
    logged in full, the rest are counted into one summary per interval."""
    core = responder({"site": conn_conf(B_IP, A_IP, LAN_B, LAN_A, start="none")})
    ev, answers = [], 0
    tmpl = [msg1(aggressive=False), msg1(aggressive=True)]
    for i in range(10_000):  # 500/s for 20 s from 10,000 spoofed sources
        now = 1.0 + i / 500
        data = os.urandom(8) + tmpl[i & 1][8:]
        out = core.receive_datagram(data, (B_IP, 500), _spoofed(i), now)
        ev += events(out)
        answers += len(sends(out))
        if i % 1000 == 0:
            ev += events(core.handle_timer(now))
    ev += events(core.handle_timer(40.0))
    assert answers == 0
    assert len(ev) <= 10, [e.message for e in ev][:12]
    summaries = [e for e in ev if e.kind == "suppressed"]
    assert summaries and sum(e.data["count"] for e in summaries) >= 9_000
    assert all(e.message.isprintable() for e in ev)


def _flood_pair():
    from test_ikev1_harness import Net
    a = Ikev1Core(make_config(A_IP, {"site": conn_conf(A_IP, B_IP, LAN_A, LAN_B)}), now=0.0)
    b = Ikev1Core(make_config(B_IP, {
        "site": conn_conf(B_IP, A_IP, LAN_B, LAN_A, start="none"),
        "any": conn_conf(B_IP, "%any", "10.3.0.0/16", "10.4.0.0/16", start="none", aggressive=True)}),
        now=0.0)
    return Net(a, b)


class _DhCount:
    def __init__(self, monkeypatch):
        from vpnd.crypto import dh as dhmod
        self.keygen = self.shared = 0
        orig_init, orig_shared = dhmod.KeyExchange.__init__, dhmod.KeyExchange.shared
        me = self

        def init(kx, *a, **kw):
            me.keygen += 1
            orig_init(kx, *a, **kw)

        def shared(kx, *a, **kw):
            me.shared += 1
            return orig_shared(kx, *a, **kw)

        monkeypatch.setattr(dhmod.KeyExchange, "__init__", init)
        monkeypatch.setattr(dhmod.KeyExchange, "shared", shared)


def test_spoofed_message_1_flood_keeps_a_configured_peer_in(monkeypatch):
    """Issue 8.5: a spoofed Main Mode message-1 flood filled the one global half-open cap
    and kept configured peers out; each spoofed Aggressive Mode message 1 cost a DH and was
    answered 4 times. Now: configured peers have their own budget, unverified half-open SAs
    are bounded per source and overall (oldest evicted), responder message 2 is sent once
    (again only when the initiator repeats its message 1), and the AM responder defers its
    DH until message 3 (PSK: HASH_R needs no g^xy)."""
    net = _flood_pair()
    b = net.b
    kex_am = dh.KeyExchange("modp2048")
    flood = [msg1(aggressive=bool(i % 2), kex=kex_am) for i in range(64)]  # reused bodies, fresh cookies
    state = {"i": 0, "answers": 0}

    def inject(n):
        for _ in range(n):
            i = state["i"]
            state["i"] += 1
            data = os.urandom(8) + flood[i % 64][8:]
            out = b.receive_datagram(data, (B_IP, 500), _spoofed(i), net.now + i / 1000)
            state["answers"] += sum(1 for s in sends(out) if s.remote[0] != A_IP)

    inject(3000)  # the flood is on before the peer starts
    counter = _DhCount(monkeypatch)
    net.drop = lambda side, dg: inject(100) or False  # 100 flood packets between its messages
    net.now = 3.0
    net.feed(net.a, net.a.initiate("site", net.now))
    inject(5000 - state["i"])
    assert state["i"] == 5000
    assert net.installs("A") and net.installs("B"), [e.message for e in net.events("B")][-5:]
    # at most one datagram per attacker packet, also later (no timer retransmissions)
    timer_answers = 0
    t = net.now
    while t < net.now + 300:
        t += 1.0
        timer_answers += sum(1 for s in sends(b.handle_timer(t)) if s.remote[0] != A_IP)
    assert state["answers"] + timer_answers <= state["i"]
    assert timer_answers == 0
    # AM message 1 from unverified sources: no g^xy computed for them (deferred to message 3)
    assert counter.shared <= 4, counter.shared  # the peer's own Main Mode and Quick Mode
    # state stays bounded
    assert len(b.sas) + len(b._alts) <= 1100


def test_aggressive_responder_sends_message_2_once_and_recovers_a_lost_message_3():
    """Message 2 of an Aggressive Mode responder is not retransmitted on a timer (a spoofed
    message 1 gets one answer); when the initiator's message 3 is lost, its first phase-2
    message (which carries our cookie) brings message 2 back, and with it message 3."""
    from test_ikev1_harness import pair

    net = pair({"aggressive": True}, {"aggressive": True}, start=False)
    seen = {"n": 0}

    def drop(side, dg):
        # A's first encrypted Aggressive Mode message: message 3
        if side == "A" and dg.data[18] == C.EXCH_AGGRESSIVE and dg.data[19] & 1 and not seen["n"]:
            seen["n"] = 1
            return True
        return False

    net.drop = drop
    net.feed(net.a, net.a.initiate("site", 0.0))
    assert seen["n"] == 1
    b_am = [dg for s, dg in net.sent if s == "B" and dg.data[18] == C.EXCH_AGGRESSIVE]
    assert len(b_am) == 1
    net.advance(30)
    assert net.installs("A") and net.installs("B")
    b_am = [dg for s, dg in net.sent if s == "B" and dg.data[18] == C.EXCH_AGGRESSIVE]
    assert len(b_am) == 2  # once more, on A's Quick Mode


def test_aggressive_message_2_not_retransmitted_to_a_silent_source():
    core = responder({"am": any_conn(aggressive=True)})
    out = _probe(core, now=1.0)
    assert len(sends(out)) == 1
    later = []
    t = 1.0
    while t < 200:
        t += 0.5
        later += sends(core.handle_timer(t))
    assert later == [] and core.sas == {}


def test_internal_errors_from_a_flood_are_summarised(monkeypatch):
    core = responder({"any": any_conn()})

    def boom(*a, **kw):
        raise RuntimeError("bug")

    monkeypatch.setattr(core, "_receive", boom)
    ev = []
    for i in range(1000):
        ev += events(core.receive_datagram(b"x" * 40, (B_IP, 500), _spoofed(i), 1.0 + i / 100))
    ev += events(core.handle_timer(20.0))
    errors = [e for e in ev if e.kind == "error"]
    assert len(errors) == 1 and "internal error RuntimeError" in errors[0].message
    assert sum(e.data["count"] for e in ev if e.kind == "suppressed") == 999
    assert core.drops == 1000


def _check_budget_invariants(core):
    from vpnd.ike.v1.core import HALF_OPEN_PER_SOURCE, HALF_OPEN_UNVERIFIED_MAX
    for key, sa in core._unverified.items():
        assert core.sas.get(sa.cky_i) is sa or core._alts.get(key) is sa
        assert key in core._unverified_by_src[sa.remote[0]]
    assert sum(len(d) for d in core._unverified_by_src.values()) == len(core._unverified)
    assert all(0 < len(d) <= HALF_OPEN_PER_SOURCE for d in core._unverified_by_src.values())
    assert core._unverified_any == sum(1 for s in core._unverified.values() if not s.configured_source)
    assert core._unverified_any <= HALF_OPEN_UNVERIFIED_MAX


def test_half_open_budget_bookkeeping_stays_consistent(monkeypatch):
    """Random message 1s (new cookies, repeated cookies, changed copies), sources (some the
    configured peer's) and timer runs, with small budgets: the tables agree at every step."""
    import random

    from vpnd.ike.v1 import core as coremod

    monkeypatch.setattr(coremod, "HALF_OPEN_PER_SOURCE", 3)
    monkeypatch.setattr(coremod, "HALF_OPEN_UNVERIFIED_MAX", 20)
    monkeypatch.setattr(coremod, "AM_RESPONDER_OVERALL", 1e9)
    monkeypatch.setattr(coremod, "AM_RESPONDER_RATE", 1e9)
    core = Ikev1Core(make_config(B_IP, {
        "site": conn_conf(B_IP, A_IP, LAN_B, LAN_A, start="none"),
        "any": conn_conf(B_IP, "%any", "10.3.0.0/16", "10.4.0.0/16", start="none", aggressive=True)}), now=0.0)
    rnd = random.Random(3)
    tmpl = [msg1(aggressive=False), msg1(aggressive=True)]
    cookies = [os.urandom(8) for _ in range(40)]
    now = 0.0
    for step in range(1500):
        now += rnd.random() * 0.5
        src = (A_IP, 500) if rnd.random() < 0.1 else _spoofed(rnd.randrange(12))
        body = bytearray(tmpl[rnd.randrange(2)])
        body[:8] = rnd.choice(cookies) if rnd.random() < 0.3 else os.urandom(8)
        if rnd.random() < 0.2:
            body[-1] ^= 1  # a changed copy (an alternate candidate)
        core.receive_datagram(bytes(body), (B_IP, 500), src, now)
        if rnd.random() < 0.05:
            core.handle_timer(now + rnd.random() * 80)
        _check_budget_invariants(core)
    core.handle_timer(now + 500)
    _check_budget_invariants(core)
    assert not core._unverified and not core.sas
