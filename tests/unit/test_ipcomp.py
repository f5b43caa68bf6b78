"""IPComp (RFC 3173), Deflate (RFC 2394) and LZS (RFC 2395 / ANSI X3.241, RFC 1974 2.3).

Deflate is checked against zlib's own raw stream (what Linux's ipcomp and so strongSwan use).
The LZS vectors below were worked out by hand from the bit layout in RFC 1974 2.3:
    literal        0 + the 8 bits of the byte
    string         1 1 + 7-bit offset (offset < 128) | 1 0 + 11-bit offset, then the length:
                   00=2 01=3 10=4 1100=5 1101=6 1110=7  1111 nnnn = 8+n (n < 15),
                   every nibble 1111 adds 15 and another nibble follows
    end marker     1 1 0000000, then zero bits to the byte boundary
bits are packed most significant first.
"""

import os
import zlib

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from vpnd.esp.ipcomp import (
    IPCOMP_HDR, PROTO_IPCOMP, DecompressError, IPComp, check_cpi, deflate_compress,
    deflate_decompress, lzs_compress, lzs_decompress,
)

# A ~1400-byte compressible payload, like a text transfer.
TEXT = (b"GET /index.html HTTP/1.1\r\nHost: www.example.com\r\nAccept: text/html\r\n\r\n"
        * 20)[:1400]


def bits_to_bytes(bits: str) -> bytes:
    """Spec bit string (spaces ignored) -> bytes, zero-padded to the byte boundary."""
    bits = bits.replace(" ", "")
    bits += "0" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else b""


def lit(c: int) -> str:
    return "0" + format(c, "08b")


END = "1 1 0000000"


# -- LZS: hand-worked vectors --------------------------------------------------------------

HAND_VECTORS = [
    # empty packet: only the end marker 110000000, padded with 7 zero bits
    #   11000000 0|0000000  -> C0 00
    (b"", "c000"),
    # "A" (0x41 = 01000001): literal 0 01000001, end 1 1 0000000, pad 6
    #   00100000 | 1 1100000 | 00 000000  -> 20 E0 00
    (b"A", "20e000"),
    # "ABAB": literal A 001000001, literal B 001000010,
    #   string offset 2 (7-bit form) length 2: 1 1 0000010 00, end 110000000, pad 2:
    #   00100000 | 10010000 | 10110000 | 01000110 | 00000000 -> 20 90 B0 46 00
    (b"ABAB", "2090b04600"),
    # "ABCABCAB": three literals (C = 01000011), then a string overlapping its own output:
    #   offset 3 length 5: 1 1 0000011 1100, end 110000000, pad 7 (56 bits):
    #   00100000 | 10010000 | 10001000 | 01111000 | 00111100 | 11000000 | 00000000
    (b"ABCABCAB", "209088783cc000"),
    # "A"*24: literal A, string offset 1 length 23 = 8 + 15 + 0: 1 1 0000001 1111 1111 0000
    #   00100000 | 11100000 | 01111111 | 11000011 | 0 0000000 -> 20 E0 7F C3 00
    (b"A" * 24, "20e07fc300"),
    # "A"*30: literal A, string offset 1 length 29 = 8 + 15 + 6: 1 1 0000001 1111 1111 0110
    #   00100000 | 11100000 | 01111111 | 11011011 | 0 0000000 -> 20 E0 7F DB 00
    (b"A" * 30, "20e07fdb00"),
]


@pytest.mark.parametrize("plain,hexstream", HAND_VECTORS)
def test_lzs_hand_vectors_decompress(plain, hexstream):
    assert lzs_decompress(bytes.fromhex(hexstream)) == plain


@pytest.mark.parametrize("plain,hexstream", HAND_VECTORS)
def test_lzs_hand_vectors_compress(plain, hexstream):
    # greedy longest match gives exactly these streams (each match is the only one)
    assert lzs_compress(plain).hex() == hexstream


def test_lzs_hand_vectors_agree_with_bit_strings():
    # the hex above, re-derived from the spec's bit strings
    assert bits_to_bytes(lit(0x41) + END).hex() == "20e000"
    assert bits_to_bytes(lit(0x41) + lit(0x42) + "1 1 0000010 00" + END).hex() == "2090b04600"
    assert bits_to_bytes(lit(0x41) + "1 1 0000001 1111 1111 0110" + END).hex() == "20e07fdb00"


def test_lzs_length_nibbles():
    # length 8: 1111 0000; 22: 1111 1110; 23: 1111 1111 0000; 37: 1111 1111 1110;
    # 38: 1111 1111 1111 0000 (offset 1 after one literal "z" = 0x7a)
    for ln, code in [(8, "1111 0000"), (22, "1111 1110"), (23, "1111 1111 0000"),
                     (37, "1111 1111 1110"), (38, "1111 1111 1111 0000"),
                     (5, "1100"), (6, "1101"), (7, "1110"), (3, "01"), (4, "10")]:
        stream = bits_to_bytes(lit(0x7A) + "1 1 0000001 " + code + END)
        assert lzs_decompress(stream) == b"z" * (ln + 1)
        assert lzs_compress(b"z" * (ln + 1)) == stream


def test_lzs_11_bit_offset():
    # 130 distinct-ish literals (no 2-byte repeat), then the first three again: the only
    # match is at offset 130 >= 128, so the 11-bit form: 1 0 00010000010, length 3 = 01
    head = bytes(range(130))
    plain = head + head[:3]
    stream = bits_to_bytes("".join(lit(c) for c in head) + "1 0 00010000010 01" + END)
    assert lzs_decompress(stream) == plain
    assert lzs_compress(plain) == stream


def test_lzs_11_bit_form_for_small_offset_is_accepted():
    # a decoder takes the 11-bit form for any offset, even one that fits in 7 bits
    stream = bits_to_bytes(lit(0x41) + lit(0x42) + "1 0 00000000010 00" + END)
    assert lzs_decompress(stream) == b"ABAB"


def test_lzs_max_offset_2047():
    plain = os.urandom(2047 + 10)
    plain = plain + plain[:20]
    assert lzs_decompress(lzs_compress(plain)) == plain


@pytest.mark.parametrize("stream,why", [
    (b"", "no end marker"),
    (bits_to_bytes(lit(0x41)), "no end marker after a literal"),
    (bits_to_bytes("1 1 0000001 00" + END), "offset before the start"),
    (bits_to_bytes(lit(0x41) + "1 0 00000000000 00" + END), "11-bit offset 0"),
    (bits_to_bytes(lit(0x41) + "1 0 00000000101 00" + END), "offset beyond the output"),
    (bits_to_bytes(lit(0x41) + "1 1 0000001 1111 1111"), "truncated length"),
])
def test_lzs_malformed(stream, why):
    with pytest.raises(DecompressError):
        lzs_decompress(stream)


def test_lzs_bomb_capped():
    # one literal then a string whose length is a long run of 1111 nibbles: each 4 bits
    # promise 15 bytes; 20000 nibbles would be 300 KB from 10 KB of input
    stream = bits_to_bytes(lit(0x41) + "1 1 0000001 1111" + "1111" * 20000 + "0000" + END)
    with pytest.raises(DecompressError):
        lzs_decompress(stream, 65535)
    with pytest.raises(DecompressError):
        lzs_decompress(lzs_compress(b"x" * 3000), 2999)
    assert lzs_decompress(lzs_compress(b"x" * 3000), 3000) == b"x" * 3000


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=3000),
                 st.lists(st.sampled_from([b"a", b"bc", b"def", b"\x00", b"ghij" * 5]),
                          max_size=400).map(b"".join)))
def test_lzs_round_trip(data):
    assert lzs_decompress(lzs_compress(data)) == data


@settings(max_examples=500)
@given(st.binary(max_size=600))
def test_lzs_decompress_hostile_input(data):
    try:
        out = lzs_decompress(data, 2000)
    except DecompressError:
        return
    assert len(out) <= 2000


def test_lzs_compresses_text():
    assert len(lzs_compress(TEXT)) < len(TEXT) // 3


# -- Deflate: against zlib's raw stream ----------------------------------------------------

@pytest.mark.parametrize("wbits", [-9, -11, -15])
def test_deflate_reads_zlib_raw_streams(wbits):
    # any sender's window size (Linux uses 11 bits), any level
    for level in (1, 6, 9):
        c = zlib.compressobj(level, zlib.DEFLATED, wbits)
        stream = c.compress(TEXT) + c.flush()
        assert deflate_decompress(stream) == TEXT


def test_deflate_output_is_a_raw_stream_zlib_reads():
    stream = deflate_compress(TEXT)
    assert stream[:1] != b"\x78"                 # no zlib header (RFC 2394 2.1, RFC 1951)
    assert zlib.decompress(stream, -15) == TEXT
    # and it fits an 11-bit window like Linux's inflate uses
    assert zlib.decompressobj(-11).decompress(stream) == TEXT


def test_deflate_history_reset_per_packet():
    # the same packet twice compresses to the same bytes: nothing carried over
    assert deflate_compress(TEXT) == deflate_compress(TEXT)
    assert lzs_compress(TEXT) == lzs_compress(TEXT)


def test_deflate_bomb_and_garbage():
    bomb = zlib.compress(b"\x00" * 1_000_000)[2:-4]     # raw deflate of 1 MB of zeros
    with pytest.raises(DecompressError):
        deflate_decompress(bomb, 65535)
    with pytest.raises(DecompressError):
        deflate_decompress(b"\xff\xff\xff\xff")
    with pytest.raises(DecompressError):
        deflate_decompress(deflate_compress(TEXT) + b"junk")


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_deflate_decompress_hostile_input(data):
    try:
        out = deflate_decompress(data, 2000)
    except DecompressError:
        return
    assert len(out) <= 2000


# -- the IPComp header and policy (RFC 3173) ----------------------------------------------

@pytest.mark.parametrize("alg", ["deflate", "lzs"])
def test_ipcomp_round_trip_header(alg):
    tx = IPComp(0x1234, alg)
    rx = IPComp(0x1234, alg)
    data, nh = tx.compress(TEXT, 4)
    assert nh == PROTO_IPCOMP
    assert IPCOMP_HDR.unpack_from(data) == (4, 0, 0x1234)     # RFC 3173 2.1
    assert len(data) < len(TEXT)
    assert rx.decompress(data) == (TEXT, 4)
    assert tx.counters["compressed"] == 1 and rx.counters["decompressed"] == 1


def test_ipcomp_well_known_cpi_accepted():
    rx = IPComp(0x1234, "deflate")
    data = IPCOMP_HDR.pack(6, 0, 2) + deflate_compress(TEXT)
    assert rx.decompress(data) == (TEXT, 6)
    bad = IPCOMP_HDR.pack(6, 0, 3) + deflate_compress(TEXT)
    assert rx.decompress(bad) is None and rx.decompress_errors == 1


def test_ipcomp_small_and_incompressible_sent_as_is():
    tx = IPComp(0x1234, "deflate")
    small = b"x" * 60
    assert tx.compress(small, 17) == (small, 17)         # below the threshold
    rnd = os.urandom(1000)
    assert tx.compress(rnd, 17) == (rnd, 17)             # does not shrink (RFC 3173 2.2)
    assert tx.counters == {"compressed": 0, "uncompressed": 2, "decompressed": 0,
                           "decompress_errors": 0}


def test_ipcomp_backs_off_after_a_run_of_incompressible_packets():
    tx = IPComp(0x1234, "lzs")
    for _ in range(8):
        tx.compress(os.urandom(500), 17)
    # the next packets are not even tried, then compression resumes
    assert tx.compress(TEXT, 17) == (TEXT, 17)
    for _ in range(40):
        tx.compress(TEXT, 17)
    assert tx.compress(TEXT, 17)[1] == PROTO_IPCOMP


@pytest.mark.parametrize("alg", ["deflate", "lzs"])
def test_ipcomp_decompress_never_raises(alg):
    rx = IPComp(300, alg)
    for data in (b"", b"\x04", b"\x04\x00\x01\x2c", b"\x04\x00\x01\x2c\xff\xff",
                 b"\x6c\x00\x01\x2c" + lzs_compress(TEXT), os.urandom(100)):
        assert rx.decompress(data) is None
    assert rx.decompress_errors == 6


def test_ipcomp_limit():
    rx = IPComp(300, "deflate")
    data = IPCOMP_HDR.pack(4, 0, 300) + deflate_compress(b"\x00" * 70000)
    assert rx.decompress(data) is None
    assert rx.decompress(data, limit=70000) == (b"\x00" * 70000, 4)


def test_cpi_ranges():
    for ok in (2, 3, 63, 256, 0x1234, 0xFFFF):
        check_cpi(ok)
    for bad in (0, 64, 255, 0x10000, -1):
        with pytest.raises(ValueError):
            check_cpi(bad)
    with pytest.raises(ValueError):
        IPComp(0x1234, "lzjh")


def reference_lzs_decode(stream: bytes) -> bytes:
    """A second, deliberately plain LZS decoder straight from RFC 1974 2.3's table, over a
    string of '0'/'1' characters: an independent check of what our compressor writes."""
    bits = "".join(format(b, "08b") for b in stream)
    pos = 0
    out = bytearray()

    def take(k):
        nonlocal pos
        assert pos + k <= len(bits), "ran out of bits before the end marker"
        v = bits[pos:pos + k]
        pos += k
        return v
    while True:
        if take(1) == "0":
            out.append(int(take(8), 2))
            continue
        off = int(take(7), 2) if take(1) == "1" else int(take(11), 2)
        if off == 0:
            assert set(bits[pos:]) <= {"0"} and len(bits) - pos < 8     # zero padding only
            return bytes(out)
        table = {"00": 2, "01": 3, "10": 4}
        two = take(2)
        if two in table:
            ln = table[two]
        else:
            ln = {"1100": 5, "1101": 6, "1110": 7}.get(two + take(2))
            if ln is None:
                ln = 8
                while True:
                    nib = int(take(4), 2)
                    ln += nib
                    if nib != 15:
                        break
        assert 0 < off <= len(out)
        for _ in range(ln):
            out.append(out[-off])


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=1500),
                 st.lists(st.sampled_from([b"ab", b"abc", b"\x00" * 9, b"xyz" * 7, b"q"]),
                          max_size=300).map(b"".join)))
def test_lzs_output_read_by_reference_decoder(data):
    assert reference_lzs_decode(lzs_compress(data)) == data


@pytest.mark.parametrize("plain,hexstream", HAND_VECTORS)
def test_reference_decoder_agrees_with_hand_vectors(plain, hexstream):
    assert reference_lzs_decode(bytes.fromhex(hexstream)) == plain
