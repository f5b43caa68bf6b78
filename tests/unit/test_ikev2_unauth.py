"""IKEv2 and unauthenticated input (issue 8.2, 8.12): bounded answers and bounded logs for
spoofed IKE_SA_INIT floods; the RFC's answers to an unknown major version
(INVALID_MAJOR_VERSION, RFC 7296 2.5), a short nonce (INVALID_SYNTAX, 2.10/3.9) and an
unsupported critical payload (2.5), each logged in a bounded way."""
from __future__ import annotations

import random
import struct

from test_ikev2_pair import A_IP, Pair, Side
from vpnd.ike import codec
from vpnd.ike.actions import Event, SendDatagram
from vpnd.ike.codec import Header
from vpnd.ike.v2 import constants as c
from vpnd.ike.v2.payloads import REGISTRY, Nonce, Notify


def _init_request(pair: Pair) -> bytes:
    """A genuine IKE_SA_INIT request from A (to B), as bytes."""
    acts = pair.a.m.initiate("site", pair.now)
    return next(a.data for a in acts if isinstance(a, SendDatagram))


def _reinit(data: bytes, rnd: random.Random) -> bytes:
    """The same request with a fresh SPIi (each spoofed packet looks new)."""
    return rnd.randbytes(8) + data[8:]


def _feed(side: Side, data: bytes, src, now: float):
    acts = side.m.receive(data, (side.ip, 500), src, now)
    sends = [a for a in acts if isinstance(a, SendDatagram)]
    events = [a for a in acts if isinstance(a, Event)]
    return sends, events


def _rand_ip(rnd):
    return f"198.51.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"


def test_spoofed_init_flood_from_unconfigured_sources_no_answer_bounded_log():
    """8.2: 10,000 IKE_SA_INIT from random addresses none of which is configured (no %any):
    no answer at all and a bounded number of log records (first in full, then summaries)."""
    p = Pair()
    req = _init_request(p)
    rnd = random.Random(7)
    b = p.b
    answers, events = 0, []
    t0 = p.now
    for i in range(10000):
        now = t0 + i * 0.002  # 20 s of flood
        sends, evs = _feed(b, _reinit(req, rnd), (_rand_ip(rnd), 500), now)
        answers += len(sends)
        events += evs
        if i % 500 == 0:
            events += [a for a in b.m.handle_timer(now) if isinstance(a, Event)]
    end = t0 + 10000 * 0.002 + 10
    while b.m.next_timer() is not None and b.m.next_timer() <= end:
        events += [a for a in b.m.handle_timer(b.m.next_timer()) if isinstance(a, Event)]
    assert answers == 0
    assert 1 <= len(events) <= 5, [e.message for e in events]
    summaries = [e for e in events if e.kind == "suppressed"]
    assert summaries and sum(e.data["count"] for e in summaries) == 9999
    assert "suppressed" in summaries[0].message and "sources" in summaries[0].message
    assert not b.m.v2.sas and not b.m.v2.half_open


def test_configured_peer_with_wrong_proposal_still_gets_no_proposal_chosen():
    """A configured peer is answered (it may be a real, misconfigured peer), but a flood
    with its address gets at most one answer per packet, rate-limited, and bounded logs."""
    p = Pair({"ike": "aes128-sha256-modp2048"}, {"ike": "aes256-sha384-ecp384"})
    req = _init_request(p)
    rnd = random.Random(3)
    sends, evs = _feed(p.b, req, (A_IP, 500), p.now)
    assert len(sends) == 1
    ans = codec.decode_message(sends[0].data, REGISTRY)
    assert ans.get(Notify).type == c.N_NO_PROPOSAL_CHOSEN
    assert [e.kind for e in evs] == ["no_proposal"]
    answers, events = 0, []
    for i in range(1000):
        s, e = _feed(p.b, _reinit(req, rnd), (A_IP, 500), p.now + 0.001 * i)
        answers += len(s)
        events += e
    assert answers <= 5
    assert len(events) <= 1


def _major3(data: bytes, *, response: bool = False) -> bytes:
    flags = c.FLAG_R if response else c.FLAG_I
    return data[:17] + bytes([0x30, data[18], flags]) + data[20:]


def test_unknown_major_version_request_answered_invalid_major_version():
    p = Pair()
    req = _major3(_init_request(p))
    sends, evs = _feed(p.b, req, (A_IP, 500), p.now)
    assert len(sends) == 1, evs
    ans = sends[0].data
    h = codec.decode_header(ans)
    assert (h.major, h.minor) == (2, 0)  # the version we speak, in the header (2.5, 3.10.1)
    assert h.spi_i == req[:8] and h.spi_r == req[8:16] and h.is_response
    assert h.message_id == struct.unpack("!I", req[20:24])[0] and h.exchange == req[18]
    n = codec.decode_message(ans, REGISTRY).get(Notify)
    assert n.type == c.N_INVALID_MAJOR_VERSION
    assert any(e.kind == "invalid_major_version" for e in evs)


def test_unknown_major_version_response_never_answered_and_requests_rate_limited():
    p = Pair()
    req = _init_request(p)
    sends, _ = _feed(p.b, _major3(req, response=True), (A_IP, 500), p.now)
    assert sends == []
    answers, events = 0, 0
    for i in range(1000):
        s, e = _feed(p.b, _major3(req), (A_IP, 500), p.now + 0.001 * i)
        answers += len(s)
        events += len(e)
    assert 1 <= answers <= 5 and events <= 2
    # and none at all to addresses we have no configuration for
    s, _ = _feed(p.b, _major3(req), ("203.0.113.9", 500), p.now + 100)
    assert s == []


def test_short_nonce_in_ike_sa_init_answered_invalid_syntax():
    """RFC 7296 2.10 / 3.9: nonces are 16..256 octets; a request with a shorter one gets
    INVALID_SYNTAX (it was dropped silently)."""
    p = Pair()
    req = _init_request(p)
    msg = codec.decode_message(req, REGISTRY)
    payloads = [Nonce(b"n" * 8) if isinstance(x, Nonce) else x for x in msg.payloads]
    bad = codec.encode_message(msg.header, payloads)
    sends, evs = _feed(p.b, bad, (A_IP, 500), p.now)
    assert len(sends) == 1, evs
    ans = codec.decode_message(sends[0].data, REGISTRY)
    assert ans.header.is_response and ans.header.spi_i == req[:8] and ans.header.spi_r == bytes(8)
    assert ans.get(Notify).type == c.N_INVALID_SYNTAX
    assert not p.b.m.v2.half_open


def test_short_nonce_in_create_child_sa_answered_invalid_syntax():
    from vpnd.ike.v2.sk import protect, unprotect

    p = Pair()
    p.up()
    sa_a = next(s for s in p.a.m.v2.sas.values() if s.state == "ESTABLISHED")
    mid = sa_a.mid_out
    sa_a.mid_out += 1
    h = Header(sa_a.spi_i, sa_a.spi_r, 0, 2, 0, c.CREATE_CHILD_SA, sa_a.flags(False), mid)
    # only the nonce matters: a broken one must be answered, not dropped
    msg = protect(h, [Nonce(b"n" * 4)], sa_a.crypto_out)
    sends, _ = _feed(p.b, msg, sa_a.local, p.now)
    assert len(sends) == 1
    ans = codec.decode_message(sends[0].data, REGISTRY)
    inner = unprotect(sends[0].data, ans.payloads[-1], sa_a.crypto_in)
    assert [x.type for x in inner if isinstance(x, Notify)] == [c.N_INVALID_SYNTAX]


def test_unsupported_critical_payload_answered_and_logged_bounded():
    p = Pair()
    req = _init_request(p)
    msg = codec.decode_message(req, REGISTRY)
    bad = codec.encode_message(msg.header, msg.payloads + [codec.UnknownPayload(200, b"x", critical=True)])
    sends, evs = _feed(p.b, bad, (A_IP, 500), p.now)
    assert len(sends) == 1
    n = codec.decode_message(sends[0].data, REGISTRY).get(Notify)
    assert n.type == c.N_UNSUPPORTED_CRITICAL_PAYLOAD and n.data == bytes([200])
    ev = [e for e in evs if e.kind == "unsupported_critical"]
    assert ev and "200" in ev[0].message and A_IP in ev[0].message
    events = 0
    for i in range(1000):
        _, e = _feed(p.b, bad, (A_IP, 500), p.now + 0.001 * i)
        events += len(e)
    assert events <= 1


def test_unsupported_critical_payload_in_protected_request_logged():
    from vpnd.ike.v2.sk import protect

    p = Pair()
    p.up()
    sa_a = next(s for s in p.a.m.v2.sas.values() if s.state == "ESTABLISHED")
    h = Header(sa_a.spi_i, sa_a.spi_r, 0, 2, 0, c.INFORMATIONAL, sa_a.flags(False), sa_a.mid_out)
    sa_a.mid_out += 1
    msg = protect(h, [codec.UnknownPayload(201, b"", critical=True)], sa_a.crypto_out)
    sends, evs = _feed(p.b, msg, sa_a.local, p.now)
    assert len(sends) == 1
    assert any(e.kind == "unsupported_critical" and "201" in e.message for e in evs)


def test_unconfigured_sources_cost_no_parsing(monkeypatch):
    """A flood from unconfigured addresses is dropped on a header peek: no payload is
    decoded (the full parse was ~90 % of the per-packet cost in bench/dos's v2_init)."""
    p = Pair()
    req = _init_request(p)
    calls = []
    real = codec.decode_message
    monkeypatch.setattr(codec, "decode_message", lambda *a, **k: calls.append(1) or real(*a, **k))
    rnd = random.Random(5)
    for i in range(100):
        sends, _ = _feed(p.b, _reinit(req, rnd), (_rand_ip(rnd), 500), p.now + i)
        assert sends == []
    assert calls == []
    _feed(p.b, req, (A_IP, 500), p.now + 200)  # the configured peer is parsed and answered
    assert calls == [1]


def test_cookie_answer_before_parsing(monkeypatch):
    """Under cookie protection (RFC 7296 2.6), requests without a valid COOKIE are answered
    from a walk over the payload headers, without the full parse; the initiator that returns
    the cookie gets through."""
    p = Pair(b_daemon={"cookie_threshold": 0})
    req = _init_request(p)
    calls = []
    real = codec.decode_message
    monkeypatch.setattr(codec, "decode_message", lambda *a, **k: calls.append(1) or real(*a, **k))
    sends, _ = _feed(p.b, req, (A_IP, 500), p.now)
    assert calls == [] and len(sends) == 1
    n = real(sends[0].data, REGISTRY).get(Notify)
    assert n.type == c.N_COOKIE
    monkeypatch.setattr(codec, "decode_message", real)
    p2 = Pair(b_daemon={"cookie_threshold": 0})
    p2.up()
    p2.check_tunnel()
    inits = [d.data for t, d in p2.a.sent if d.data[18] == 34]
    assert len(inits) == 2  # the first answered COOKIE, the second carried it


def test_cookie_precheck_survives_garbage():
    """The header walk of the cookie path on mutated requests: never an internal error,
    at most one answer per datagram."""
    p = Pair(b_daemon={"cookie_threshold": 0})
    req = _init_request(p)
    rnd = random.Random(11)
    for i in range(3000):
        blob = bytearray(req)
        for _ in range(rnd.randrange(1, 6)):
            blob[rnd.randrange(16, len(blob))] = rnd.randrange(256)
        if rnd.random() < 0.3:
            blob = blob[:rnd.randrange(28, len(blob))]
        sends, evs = _feed(p.b, bytes(blob), (A_IP, 500), p.now + i * 0.01)
        assert len(sends) <= 1
        assert not [e for e in evs if e.kind == "error"], [e.message for e in evs]
