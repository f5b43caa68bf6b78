"""Cookies at a busy responder (RFC 7296 2.6), found with bench/scale (1000 peers at a hub):

- the answer to a retransmission of the cookie-less request repeats the cookie we already
  used; it is not a new try (three of them killed the SA silently: the connection never came
  up and said nothing);
- an initiator that gives up on cookies says so (a "failed" event, the status's last error);
- the responder keeps asking for cookies until its half-open count falls below half the
  threshold, so it does not answer a cookie-less retransmission right after asking for a
  cookie (the initiator would then sign the wrong IKE_SA_INIT: "pre-shared key mismatch")."""
from __future__ import annotations

import os

from test_ikev2_pair import Pair, conf
from vpnd.ike import codec
from vpnd.ike.actions import Event, SendDatagram
from vpnd.ike.codec import Header
from vpnd.ike.manager import IkeManager
from vpnd.ike.v2 import constants as c
from vpnd.ike.v2.payloads import Notify


def _cookie_answer(spi_i: bytes, value: bytes) -> bytes:
    return codec.encode_message(Header(spi_i, bytes(8), 0, 2, 0, c.IKE_SA_INIT, c.FLAG_R, 0),
                                [Notify(c.N_COOKIE, value)])


def _initiator():
    p = Pair()
    p.filter = lambda side, d: "drop"          # nothing reaches B: A's request is outstanding
    p.up()
    p.filter = None
    sa = next(iter(p.a.m.v2.sas.values()))
    return p, sa


def test_repeated_cookie_is_not_a_new_try():
    p, sa = _initiator()
    for _ in range(6):
        acts = p.a.m.receive(_cookie_answer(sa.spi_i, b"\x42" * 20), (p.a.ip, 500), (p.b.ip, 500), p.now)
        p.feed(p.a, acts)
    assert sa.ike_id in p.a.m.v2.sas and sa.state == "CONNECTING"
    sent = [d.data for _, d in p.a.sent if d.data[18] == c.IKE_SA_INIT]
    assert len(sent) == 2                       # the first request, then once with the cookie
    assert not [e for e in p.a.events if e.kind == "failed"]


def test_giving_up_on_cookies_is_reported():
    p, sa = _initiator()
    for i in range(6):
        p.feed(p.a, p.a.m.receive(_cookie_answer(sa.spi_i, bytes([i]) * 20), (p.a.ip, 500),
                                  (p.b.ip, 500), p.now))
    assert sa.ike_id not in p.a.m.v2.sas
    failed = [e for e in p.a.events if e.kind == "failed"]
    assert failed and "cookie" in failed[0].message


def _init_request(i: int) -> bytes:
    m = IkeManager(conf(f"10.9.{i // 200}.{i % 200 + 1}", "10.0.0.2", "10.1.0.0/16", "10.2.0.0/16",
                        ike="aes128-sha256-x25519"), now=0.0)
    return next(a.data for a in m.initiate("site", 0.0) if isinstance(a, SendDatagram))


def test_responder_keeps_asking_for_cookies_until_half_open_falls_below_half():
    r = IkeManager(conf("10.0.0.2", "%any", "10.2.0.0/16", "10.1.0.0/16", ike="aes128-sha256-x25519",
                        daemon={"cookie_threshold": 4}), now=0.0)

    def answer(i):
        out = r.receive(_init_request(i), ("10.0.0.2", 500), (f"10.9.{i // 200}.{i % 200 + 1}", 500), 1.0)
        d = [a.data for a in out if isinstance(a, SendDatagram)]
        return "cookie" if d and len(d[0]) < 100 else ("answer" if d else None)

    assert [answer(i) for i in range(4)] == ["answer"] * 4
    assert answer(4) == "cookie"               # 4 half-open: cookies from now on
    sas = list(r.v2.half_open.values())
    r.v2.kill_ike(sas[0], 1.0, "test")          # 3 half-open: still >= half of 4
    assert answer(5) == "cookie"
    r.v2.kill_ike(sas[1], 1.0, "test")          # 2: still asking
    assert answer(6) == "cookie"
    r.v2.kill_ike(sas[2], 1.0, "test")          # 1 < 2: answered at once again
    assert answer(7) == "answer"
