"""Malformed IKEv2 input: the payload parsers and every exchange of an established pair get
hypothesis-made garbage and mutations of real messages. Nothing may raise out of
receive(), no "error" (internal failure) event may appear, and the tunnel keeps working."""
from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_ikev2_pair import Pair
from vpnd.ike import codec
from vpnd.ike.v2 import payloads as pl

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                           HealthCheck.function_scoped_fixture])


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(pl.REGISTRY.classes)), st.binary(max_size=120))
def test_payload_bodies_raise_only_codec_errors(ptype, body):
    try:
        obj = codec._decode_body(pl.REGISTRY.classes[ptype], body, ptype)
    except codec.CodecError:
        return
    # whatever decodes re-encodes to something that decodes to the same value
    again = codec._decode_body(type(obj), obj.encode(), ptype)
    assert again == obj


def _established():
    p = Pair({"ike": "aes128-sha256-modp2048", "esp": "aes128-sha256"},
             {"ike": "aes128-sha256-modp2048", "esp": "aes128-sha256"})
    p.up()
    p.check_tunnel()
    return p


_PAIR = None
_CAPTURED: list[bytes] = []


def pair_and_messages():
    """One established pair and real messages of every exchange, shared by the examples."""
    global _PAIR
    if _PAIR is None:
        p = Pair({"ike": "aes128-sha256-modp2048", "esp": "aes128-sha256-modp2048",
                  "dpd": {"interval": 5, "retry": 2, "mode": "periodic", "action": "clear"}},
                 {"ike": "aes128-sha256-modp2048", "esp": "aes128-sha256-modp2048"})
        p.up()
        p.feed(p.a, p.a.m.rekey("site", p.now))
        p.pump()
        p.feed(p.a, p.a.m.rekey("site", p.now, ike=True))
        p.pump()
        p.run(12)
        _CAPTURED.extend(d.data for t, d in p.a.sent + p.b.sent)
        _PAIR = p
    return _PAIR, _CAPTURED


def _assert_clean(p, tunnel: bool = True):
    errors = [e for e in p.a.events + p.b.events if e.kind == "error"]
    assert not errors, errors[0].message
    if tunnel:
        p.check_tunnel()
        for side in (p.a, p.b):
            assert any(s.state == "ESTABLISHED" for s in side.m.v2.sas.values())


def _still_works(p):
    n = len(p.b.installed())
    p.feed(p.a, p.a.m.rekey("site", p.now))
    p.pump()
    p.check_tunnel()
    assert len(p.b.installed()) == n


@SETTINGS
@given(st.data())
def test_mutated_messages_to_both_sides(data):
    p, msgs = pair_and_messages()
    m = bytearray(data.draw(st.sampled_from(msgs)))
    kind = data.draw(st.sampled_from(["flip", "truncate", "extend", "header"]))
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 3))):
            i = data.draw(st.integers(0, len(m) - 1))
            m[i] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "truncate":
        m = m[: data.draw(st.integers(0, len(m) - 1))]
    elif kind == "extend":
        m += data.draw(st.binary(min_size=1, max_size=40))
        struct.pack_into("!I", m, 24, len(m)) if len(m) >= 28 else None
    else:
        i = data.draw(st.integers(16, 27))
        m[i] = data.draw(st.integers(0, 255))
    side = data.draw(st.sampled_from([p.a, p.b]))
    src = (p.other(side).ip, data.draw(st.sampled_from([500, 4500])))
    p.feed(side, side.m.receive(bytes(m), (side.ip, 500), src, p.now))
    p.pump()
    _assert_clean(p)


@SETTINGS
@given(st.binary(max_size=300), st.booleans())
def test_random_datagrams(blob, to_a):
    p, _ = pair_and_messages()
    side = p.a if to_a else p.b
    p.feed(side, side.m.receive(blob, (side.ip, 500), (p.other(side).ip, 500), p.now))
    p.pump()
    _assert_clean(p)


@SETTINGS
@given(st.data())
def test_authentic_but_malformed_requests_are_answered(data):
    """Messages that pass the ICV but carry broken payloads: the responder answers
    (INVALID_SYNTAX / an error notify) and keeps its window in step."""
    from vpnd.ike.codec import Header
    from vpnd.ike.v2 import constants as c
    from vpnd.ike.v2.sk import protect

    p, _ = pair_and_messages()
    sa_a = next(s for s in p.a.m.v2.sas.values() if s.state == "ESTABLISHED")
    exch = data.draw(st.sampled_from([c.IKE_AUTH, c.CREATE_CHILD_SA, c.INFORMATIONAL]))
    n = data.draw(st.integers(0, 3))
    inner = []
    for _ in range(n):
        t = data.draw(st.sampled_from(sorted(pl.REGISTRY.classes) + [99, 47, 48]))
        inner.append(codec.UnknownPayload(t, data.draw(st.binary(max_size=60)),
                                          critical=data.draw(st.booleans())))
    if sa_a.pending is not None:
        return
    mid = sa_a.mid_out
    sa_a.mid_out += 1
    h = Header(sa_a.spi_i, sa_a.spi_r, 0, 2, 0, exch, sa_a.flags(False), mid)
    msg = protect(h, inner, sa_a.crypto_out)
    before = len(p.b.sent)
    p.feed(p.b, p.b.m.receive(msg, (p.b.ip, sa_a.remote[1]), sa_a.local, p.now))
    # the response arrives at A without a matching request: dropped, counted
    p.pump()
    assert len(p.b.sent) == before + 1  # answered, not dropped
    deleted_ike = any(isinstance(x, codec.UnknownPayload) and x.type_ == 42 for x in inner)
    _assert_clean(p, tunnel=not deleted_ike)


def test_tunnel_survives_the_fuzzing():
    p, _ = pair_and_messages()
    _still_works(p)
    _assert_clean(p)


def test_drops_counted_but_reported_rate_limited():
    p = _established()
    base = p.b.m.v2.drops
    for i in range(50):
        p.feed(p.b, p.b.m.receive(b"\x00" * 17 + b"\x20" + b"\x22" + b"\x00" * 5 + b"\x00\x00\x00\x10",
                                  (p.b.ip, 500), (p.a.ip, 500), p.now + i * 0.1))
    assert p.b.m.v2.drops == base + 50
    assert len([e for e in p.b.events if e.kind == "drop"]) == 1


def _structured_payloads():
    """Well-formed payloads with arbitrary field values: they pass the parser and reach the
    exchange logic."""
    import ipaddress

    b = st.binary(max_size=40)
    ip4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
    ts = st.builds(pl.TrafficSelector, ip4, ip4, st.integers(0, 255), st.integers(0, 65535), st.integers(0, 65535))
    transform = st.builds(pl.Transform, st.integers(1, 6), st.integers(0, 40),
                          st.one_of(st.none(), st.sampled_from([128, 192, 256, 7])))
    proposal = st.builds(pl.Proposal, st.integers(0, 5), st.integers(0, 5),
                         st.sampled_from([b"", b"\x01\x02\x03\x04", bytes(8), b"\x09" * 8, b"\x01"]),
                         st.lists(transform, max_size=6))
    return st.one_of(
        st.builds(pl.SA, st.lists(proposal, min_size=1, max_size=3)),
        st.builds(pl.KE, st.sampled_from([14, 19, 20, 31, 2, 999]), b),
        st.builds(pl.Nonce, st.binary(min_size=16, max_size=40)),
        st.builds(pl.Notify, st.sampled_from([11, 14, 17, 24, 38, 43, 44, 16384, 16388, 16390, 16391, 16393,
                                              16431, 40000]), b, st.integers(0, 4),
                  st.sampled_from([b"", b"\x01\x02\x03\x04", b"\x00"])),
        st.builds(pl.Delete, st.sampled_from([1, 2, 3]),
                  st.lists(st.sampled_from([b"\x01\x02\x03\x04", b"\xff\xff\xff\xff"]), max_size=3)),
        st.builds(pl.TSi, st.lists(ts, min_size=1, max_size=3)),
        st.builds(pl.TSr, st.lists(ts, min_size=1, max_size=3)),
        st.builds(pl.IDi, st.sampled_from([1, 2, 3, 5, 9, 11]), b),
        st.builds(pl.IDr, st.sampled_from([1, 2, 9]), b),
        st.builds(pl.Auth, st.sampled_from([1, 2, 9, 14]), b),
        st.builds(pl.Cert, st.sampled_from([4, 12]), b),
        st.builds(pl.CertReq, st.just(4), b),
    )


@SETTINGS
@given(st.sampled_from([35, 36, 37]), st.lists(_structured_payloads(), max_size=6))
def test_authentic_well_formed_nonsense(exch, inner):
    from vpnd.ike.codec import Header
    from vpnd.ike.v2.sk import protect

    p = _established()
    sa_a = next(s for s in p.a.m.v2.sas.values() if s.state == "ESTABLISHED")
    # drop Deletes of the IKE SA itself: those are legitimate and end the SA
    inner = [x for x in inner if not (isinstance(x, pl.Delete) and x.protocol == 1)]
    mid = sa_a.mid_out
    sa_a.mid_out += 1
    h = Header(sa_a.spi_i, sa_a.spi_r, 0, 2, 0, exch, sa_a.flags(False), mid)
    before = len(p.b.sent)
    p.feed(p.b, p.b.m.receive(protect(h, inner, sa_a.crypto_out), (p.b.ip, 500), (p.a.ip, 500), p.now))
    assert len(p.b.sent) == before + 1  # answered
    p.pump()
    p.run(3)
    errors = [e for e in p.a.events + p.b.events if e.kind == "error"]
    assert not errors, errors[0].message


@SETTINGS
@given(st.lists(_structured_payloads(), max_size=7), st.booleans())
def test_ike_sa_init_nonsense_both_roles(inner, as_response):
    from vpnd.ike.codec import Header

    p = Pair()
    if as_response:
        # A waits for an IKE_SA_INIT answer: feed it nonsense under its SPI
        p.filter = lambda s, d: "drop"
        p.up()
        sa = next(iter(p.a.m.v2.sas.values()))
        h = Header(sa.spi_i, b"\x07" * 8, 0, 2, 0, 34, 0x20, 0)
        p.feed(p.a, p.a.m.receive(codec.encode_message(h, inner), (p.a.ip, 500), (p.b.ip, 500), p.now))
        p.filter = None
        p.run(40)
    else:
        h = Header(b"\x05" * 8, bytes(8), 0, 2, 0, 34, 0x08, 0)
        p.feed(p.b, p.b.m.receive(codec.encode_message(h, inner), (p.b.ip, 500), (p.a.ip, 500), p.now))
        p.up()
    errors = [e for e in p.a.events + p.b.events if e.kind == "error"]
    assert not errors, errors[0].message
    if not as_response or p.a.installed():
        p.check_tunnel()
