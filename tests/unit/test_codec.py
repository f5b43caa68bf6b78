"""ike/codec.py: header and generic payload chain, checked against scapy's IKEv2/ISAKMP layers
and with hypothesis round trips and fuzzing."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vpnd.ike import codec
from vpnd.ike.codec import (
    CodecError,
    Encrypted,
    Header,
    InvalidMajorVersion,
    MalformedMessage,
    Payload,
    Registry,
    UnknownPayload,
    UnsupportedCriticalPayload,
)


@dataclass
class Blob(Payload):
    """A test body: 2-byte count then that many bytes (so bodies can be malformed)."""

    payload_type = 40  # IKEv2 Nonce number, any will do
    data: bytes

    @classmethod
    def decode(cls, body: bytes) -> "Blob":
        r = codec.Reader(body)
        n = r.u16()
        d = r.take(n)
        r.expect_end()
        return cls(d)

    def encode(self) -> bytes:
        return struct.pack("!H", len(self.data)) + self.data


@dataclass
class Raw(Payload):
    payload_type = 41
    data: bytes

    @classmethod
    def decode(cls, body: bytes) -> "Raw":
        return cls(body)

    def encode(self) -> bytes:
        return self.data


def registry(version: int = 2) -> Registry:
    r = Registry(version, terminal=frozenset({46}) if version == 2 else frozenset())
    r.register(Blob)
    r.register(Raw)
    return r


def hdr(**kw) -> Header:
    base = dict(spi_i=b"A" * 8, spi_r=b"\0" * 8, next_payload=0, major=2, minor=0, exchange=34,
                flags=codec.FLAG_V2_INITIATOR, message_id=0)
    base.update(kw)
    return Header(**base)


def test_header_matches_scapy_ikev2():
    from scapy.contrib.ikev2 import IKEv2, IKEv2_Nonce, IKEv2_Notify

    pkt = bytes(IKEv2(init_SPI=b"A" * 8, resp_SPI=b"B" * 8, exch_type=35, flags="Response", id=7)
                / IKEv2_Nonce(nonce=b"n" * 32) / IKEv2_Notify(type=16388, notify=b"x" * 20))
    r = Registry(2)
    r.register(Raw)
    m = codec.decode_message(pkt, r)
    assert m.header.spi_i == b"A" * 8 and m.header.spi_r == b"B" * 8
    assert (m.header.exchange, m.header.message_id, m.header.major) == (35, 7, 2)
    assert m.header.is_response and not m.header.is_initiator
    assert [p.payload_type for p in m.payloads] == [40, 41]
    assert m.payloads[0].body == b"n" * 32
    assert m.payloads[1].data == struct.pack("!BBH", 0, 0, 16388) + b"x" * 20
    # re-encoding gives scapy's bytes back
    again = codec.encode_message(m.header, m.payloads)
    assert again == pkt


def test_header_matches_scapy_isakmp_v1():
    from scapy.layers.isakmp import ISAKMP, ISAKMP_payload_Nonce

    pkt = bytes(ISAKMP(init_cookie=b"C" * 8, resp_cookie=b"D" * 8, exch_type=2, id=0)
                / ISAKMP_payload_Nonce(nonce=b"z" * 16))
    r = Registry(1)
    m = codec.decode_message(pkt, r)
    assert (m.header.major, m.header.minor, m.header.exchange) == (1, 0, 2)
    assert m.payloads[0].payload_type == 10 and m.payloads[0].body == b"z" * 16
    assert codec.encode_message(m.header, m.payloads) == pkt


def test_unknown_critical_payload_is_typed():
    body = b"xyz"
    data = bytearray(codec.encode_header(hdr(next_payload=99), 28 + 4 + len(body)))
    data += struct.pack("!BBH", 0, 0x80, 4 + len(body)) + body
    with pytest.raises(UnsupportedCriticalPayload) as ei:
        codec.decode_message(bytes(data), registry())
    assert ei.value.payload_type == 99
    data[29] = 0  # clear critical: skipped as unknown
    m = codec.decode_message(bytes(data), registry())
    assert isinstance(m.payloads[0], UnknownPayload) and m.payloads[0].body == body
    # IKEv1 has no critical bit: the flags byte is reserved
    data[17] = 0x10
    data[29] = 0x80
    m = codec.decode_message(bytes(data), registry(1))
    assert isinstance(m.payloads[0], UnknownPayload)


def test_encrypted_payload_must_be_last_and_names_first_inner():
    msg = codec.encode_message(hdr(), [Raw(b"r"), Encrypted(46, 35, b"\1" * 40)])
    m = codec.decode_message(msg, registry())
    enc = m.payloads[-1]
    assert isinstance(enc, Encrypted) and enc.first_inner == 35 and enc.data == b"\1" * 40
    bad = bytearray(msg + struct.pack("!BBH", 0, 0, 4))
    struct.pack_into("!I", bad, 24, len(bad))
    with pytest.raises(MalformedMessage):
        codec.decode_message(bytes(bad), registry())


def test_bad_versions_and_lengths():
    msg = codec.encode_message(hdr(), [Blob(b"abc")])
    with pytest.raises(InvalidMajorVersion):
        codec.decode_message(msg[:17] + b"\x30" + msg[18:], registry())
    with pytest.raises(InvalidMajorVersion):
        codec.decode_message(msg, registry(1))
    with pytest.raises(MalformedMessage):
        codec.decode_message(msg + b"\0", registry())
    with pytest.raises(MalformedMessage):
        codec.decode_message(msg[:27], registry())
    assert codec.peek_version(msg) == 2 and codec.peek_version(b"") is None


def test_trailing_padding_allowed_only_when_asked():
    _, chain = codec.encode_chain([Blob(b"hi")])
    with pytest.raises(MalformedMessage):
        codec.decode_chain(chain + b"\0\0\0", 40, registry(1))
    assert codec.decode_chain(chain + b"\0\0\0", 40, registry(1), trailing_ok=True) == [Blob(b"hi")]


def test_attributes_tv_and_tlv():
    raw = codec.encode_attributes([(14, 128), (5, b"\x01\x02\x03")])
    assert raw == bytes.fromhex("800e0080") + bytes.fromhex("0005 0003 010203".replace(" ", ""))
    assert codec.decode_attributes(raw) == [(14, 128), (5, b"\x01\x02\x03")]
    with pytest.raises(MalformedMessage):
        codec.decode_attributes(raw[:-1])


payload_st = st.one_of(
    st.binary(max_size=64).map(Blob),
    st.binary(max_size=64).map(Raw),
    st.tuples(st.integers(50, 200), st.binary(max_size=32)).map(lambda t: UnknownPayload(t[0], t[1])),
)
header_st = st.builds(
    hdr,
    spi_i=st.binary(min_size=8, max_size=8),
    spi_r=st.binary(min_size=8, max_size=8),
    exchange=st.integers(0, 255),
    flags=st.integers(0, 255),
    message_id=st.integers(0, 2**32 - 1),
)


@settings(max_examples=200, deadline=None)
@given(header_st, st.lists(payload_st, max_size=8))
def test_round_trip(h, payloads):
    data = codec.encode_message(h, payloads)
    m = codec.decode_message(data, registry())
    assert (m.header.spi_i, m.header.spi_r, m.header.exchange, m.header.flags, m.header.message_id) == (
        h.spi_i, h.spi_r, h.exchange, h.flags, h.message_id)
    assert m.payloads == payloads
    assert m.header.length == len(data)


@settings(max_examples=500, deadline=None)
@given(st.lists(payload_st, min_size=1, max_size=5), st.data())
def test_fuzz_mutations_raise_only_codec_errors(payloads, data):
    msg = bytearray(codec.encode_message(hdr(), payloads))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(msg) - 1))
        msg[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(msg)))
    for candidate in (bytes(msg), bytes(msg[:cut])):
        try:
            codec.decode_message(candidate, registry())
        except CodecError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(blob):
    for version in (1, 2):
        try:
            codec.decode_message(blob, registry(version))
        except CodecError:
            pass
        try:
            codec.decode_chain(blob, 40, registry(version), trailing_ok=True)
        except CodecError:
            pass
