"""The ISAKMP/IKE wire format shared by IKEv1 and IKEv2.

Both versions use the same 28-byte header (RFC 2408 3.1, RFC 7296 3.1; the version byte tells
them apart) and the same generic payload header (next payload, one flags byte, length; RFC
2408 3.2, RFC 7296 3.2). Payload bodies are plugged in through a `Registry` (type number ->
class with `decode(body)` / `encode()`), so ike/v1 and ike/v2 declare only their bodies.

Every malformed input raises a `CodecError` subclass; nothing else escapes `decode_*`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable

HEADER_LEN = 28
PAYLOAD_HEADER_LEN = 4
MAX_MESSAGE_LEN = 65535

# Header flags (RFC 7296 3.1 / RFC 2408 3.1).
FLAG_V2_INITIATOR = 0x08
FLAG_V2_VERSION = 0x10
FLAG_V2_RESPONSE = 0x20
FLAG_V1_ENCRYPTION = 0x01
FLAG_V1_COMMIT = 0x02
FLAG_V1_AUTH_ONLY = 0x04

CRITICAL = 0x80  # IKEv2 critical bit in the generic payload header; IKEv1 keeps it reserved


class CodecError(Exception):
    """Base of every error the codec raises."""


class MalformedMessage(CodecError):
    """Bounds, lengths or a field value are wrong (IKEv2: INVALID_SYNTAX; IKEv1: PAYLOAD-MALFORMED)."""


class UnsupportedCriticalPayload(CodecError):
    """An IKEv2 payload we do not know has its critical bit set (RFC 7296 2.5)."""

    def __init__(self, payload_type: int):
        super().__init__(f"unsupported critical payload type {payload_type}")
        self.payload_type = payload_type


class InvalidMajorVersion(CodecError):
    """The major version is neither 1 nor 2 (RFC 7296 2.5: answer INVALID_MAJOR_VERSION)."""

    def __init__(self, major: int):
        super().__init__(f"unsupported IKE major version {major}")
        self.major = major


# --------------------------------------------------------------------------- bounded reads


_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


class Reader:
    """Bounds-checked cursor over a payload body; every overrun is a MalformedMessage."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, start: int = 0, end: int | None = None):
        self.data = data
        self.pos = start
        self.end = len(data) if end is None else end

    def remaining(self) -> int:
        return self.end - self.pos

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise MalformedMessage(f"truncated: need {n} bytes, have {self.end - self.pos}")
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return bytes(b)

    # u8/u16/u32 read in place (no slice): every payload header and transform goes through
    # them, also for each spoofed message, so they are kept cheap
    def u8(self) -> int:
        p = self.pos
        if p >= self.end:
            raise MalformedMessage("truncated: need 1 bytes, have 0")
        self.pos = p + 1
        return self.data[p]

    def u16(self) -> int:
        p = self.pos
        if p + 2 > self.end:
            raise MalformedMessage(f"truncated: need 2 bytes, have {self.end - p}")
        self.pos = p + 2
        return _U16.unpack_from(self.data, p)[0]

    def u32(self) -> int:
        p = self.pos
        if p + 4 > self.end:
            raise MalformedMessage(f"truncated: need 4 bytes, have {self.end - p}")
        self.pos = p + 4
        return _U32.unpack_from(self.data, p)[0]

    def rest(self) -> bytes:
        return self.take(self.end - self.pos)

    def expect_end(self) -> None:
        if self.pos != self.end:
            raise MalformedMessage(f"{self.end - self.pos} unexpected trailing bytes")


# --------------------------------------------------------------------------- header


@dataclass(frozen=True)
class Header:
    spi_i: bytes  # 8 bytes (IKEv1: initiator cookie)
    spi_r: bytes  # 8 bytes (IKEv1: responder cookie)
    next_payload: int
    major: int
    minor: int
    exchange: int
    flags: int
    message_id: int
    length: int = 0  # filled in by encode_message

    @property
    def version(self) -> int:
        return self.major

    @property
    def is_response(self) -> bool:  # IKEv2 only
        return bool(self.flags & FLAG_V2_RESPONSE)

    @property
    def is_initiator(self) -> bool:  # IKEv2 only: sent by the original initiator
        return bool(self.flags & FLAG_V2_INITIATOR)


def encode_header(h: Header, length: int | None = None) -> bytes:
    if len(h.spi_i) != 8 or len(h.spi_r) != 8:
        raise ValueError("SPIs are 8 bytes")
    return struct.pack(
        "!8s8sBBBBII",
        h.spi_i,
        h.spi_r,
        h.next_payload,
        (h.major << 4) | (h.minor & 0x0F),
        h.exchange,
        h.flags,
        h.message_id,
        h.length if length is None else length,
    )


def decode_header(data: bytes) -> Header:
    """Parse the fixed header; checks only what is common to both versions."""
    if len(data) < HEADER_LEN:
        raise MalformedMessage(f"message of {len(data)} bytes is shorter than the IKE header")
    spi_i, spi_r, np, ver, exch, flags, mid, length = struct.unpack_from("!8s8sBBBBII", data)
    major, minor = ver >> 4, ver & 0x0F
    if major not in (1, 2):
        raise InvalidMajorVersion(major)
    if length < HEADER_LEN or length > MAX_MESSAGE_LEN:
        raise MalformedMessage(f"header length {length} out of range")
    return Header(spi_i, spi_r, np, major, minor, exch, flags, mid, length)


def peek_version(data: bytes) -> int | None:
    """Major version from the header byte, for dispatching; None if too short."""
    if len(data) < HEADER_LEN:
        return None
    return data[17] >> 4


# --------------------------------------------------------------------------- payload bodies


class Payload:
    """Base of payload bodies. Subclasses set `payload_type` and implement decode/encode."""

    payload_type: ClassVar[int] = -1
    critical: bool = False

    @classmethod
    def decode(cls, body: bytes) -> "Payload":  # pragma: no cover - abstract
        raise NotImplementedError

    def encode(self) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass
class UnknownPayload(Payload):
    """A payload type we have no body for (kept so a caller can answer or ignore it)."""

    type_: int
    body: bytes
    critical: bool = False

    @property
    def payload_type(self) -> int:  # type: ignore[override]
        return self.type_

    def encode(self) -> bytes:
        return self.body


@dataclass
class Encrypted(Payload):
    """IKEv2 SK (46) / SKF (53): the last payload; its next-payload field names the first
    payload inside (RFC 7296 3.14). `data` is IV || ciphertext || ICV, opaque here."""

    type_: int
    first_inner: int
    data: bytes

    @property
    def payload_type(self) -> int:  # type: ignore[override]
        return self.type_

    def encode(self) -> bytes:
        return self.data


@dataclass
class Registry:
    """Payload type -> body class, for one IKE version."""

    version: int
    classes: dict[int, type] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    terminal: frozenset[int] = frozenset()  # encrypted payloads that end the chain (v2 SK/SKF)

    def register(self, cls: type) -> type:
        self.classes[cls.payload_type] = cls
        self.names.setdefault(cls.payload_type, cls.__name__)
        return cls

    def name(self, t: int) -> str:
        return self.names.get(t, str(t))


# Exceptions a body decoder may raise on garbage; turned into MalformedMessage at the boundary.
_DECODE_FAILURES = (struct.error, ValueError, IndexError, KeyError, TypeError, UnicodeError, OverflowError)


def _decode_body(cls: type, body: bytes, t: int) -> Payload:
    try:
        return cls.decode(body)
    except CodecError:
        raise
    except _DECODE_FAILURES as e:
        raise MalformedMessage(f"payload type {t}: {e}") from None


def decode_chain(
    data: bytes,
    first_type: int,
    registry: Registry,
    *,
    start: int = 0,
    trailing_ok: bool = False,
) -> list[Payload]:
    """Walk the generic payload chain from `start` to the end of `data`.

    `trailing_ok` accepts bytes after the last payload (IKEv1 decrypted bodies carry padding,
    RFC 2409 5.3). A terminal (encrypted) payload must be the last one.
    """
    out: list[Payload] = []
    pos = start
    t = first_type
    end = len(data)
    v2 = registry.version == 2
    while t != 0:
        if pos + PAYLOAD_HEADER_LEN > end:
            raise MalformedMessage(f"payload type {t} header truncated at offset {pos}")
        np, flags, plen = struct.unpack_from("!BBH", data, pos)
        if plen < PAYLOAD_HEADER_LEN or pos + plen > end:
            raise MalformedMessage(f"payload type {t} length {plen} out of bounds at offset {pos}")
        body = bytes(data[pos + PAYLOAD_HEADER_LEN : pos + plen])
        critical = bool(flags & CRITICAL) if v2 else False
        pos += plen
        if t in registry.terminal:
            if pos != end:
                raise MalformedMessage(f"encrypted payload {t} is not the last payload")
            out.append(Encrypted(t, np, body))
            return out
        cls = registry.classes.get(t)
        if cls is None:
            if critical:
                raise UnsupportedCriticalPayload(t)
            out.append(UnknownPayload(t, body, critical))
        else:
            out.append(_decode_body(cls, body, t))
        t = np
        if len(out) > 512:
            raise MalformedMessage("too many payloads")
    if pos != end and not trailing_ok:
        raise MalformedMessage(f"{end - pos} bytes after the last payload")
    return out


def payload_header(next_type: int, body_len: int, critical: bool = False) -> bytes:
    total = body_len + PAYLOAD_HEADER_LEN
    if total > MAX_MESSAGE_LEN:
        raise ValueError("payload too long")
    return struct.pack("!BBH", next_type, CRITICAL if critical else 0, total)


def encode_chain(payloads: Iterable[Payload], last_next: int = 0) -> tuple[int, bytes]:
    """Serialize payloads; returns (type of the first payload, bytes). An `Encrypted`
    payload writes its `first_inner` as next payload and must come last."""
    items = list(payloads)
    parts: list[bytes] = []
    for i, p in enumerate(items):
        body = p.encode()
        if isinstance(p, Encrypted):
            if i != len(items) - 1:
                raise ValueError("encrypted payload must be last")
            nxt = p.first_inner
        else:
            nxt = items[i + 1].payload_type if i + 1 < len(items) else last_next
        parts.append(payload_header(nxt, len(body), bool(getattr(p, "critical", False))))
        parts.append(body)
    first = items[0].payload_type if items else last_next
    return first, b"".join(parts)


# --------------------------------------------------------------------------- whole messages


@dataclass
class Message:
    header: Header
    payloads: list[Payload]

    def get(self, cls: type) -> Any:
        for p in self.payloads:
            if isinstance(p, cls):
                return p
        return None

    def all(self, cls: type) -> list:
        return [p for p in self.payloads if isinstance(p, cls)]


def encode_message(header: Header, payloads: Iterable[Payload]) -> bytes:
    first, body = encode_chain(payloads)
    h = Header(header.spi_i, header.spi_r, first, header.major, header.minor, header.exchange,
               header.flags, header.message_id)
    total = HEADER_LEN + len(body)
    if total > MAX_MESSAGE_LEN:
        raise ValueError("message too long")
    return encode_header(h, total) + body


def decode_message(data: bytes, registry: Registry, *, parse_body: bool = True) -> Message:
    """Header + payload chain. The header length must match the datagram exactly."""
    h = decode_header(data)
    if h.major != registry.version:
        raise InvalidMajorVersion(h.major)
    if h.length != len(data):
        raise MalformedMessage(f"header length {h.length} != datagram length {len(data)}")
    if not parse_body:
        return Message(h, [])
    return Message(h, decode_chain(data, h.next_payload, registry, start=HEADER_LEN))


# --------------------------------------------------------------------------- data attributes

# RFC 2408 3.3 / RFC 7296 3.3.5: AF=1 -> TV (2-byte value), AF=0 -> TLV (2-byte length + value).
ATTR_TV = 0x8000


def decode_attributes(data: bytes) -> list[tuple[int, int | bytes]]:
    """[(type, value)]: TV values as int, TLV values as bytes."""
    r = Reader(data)
    out: list[tuple[int, int | bytes]] = []
    while r.remaining():
        t = r.u16()
        if t & ATTR_TV:
            out.append((t & 0x7FFF, r.u16()))
        else:
            out.append((t, r.take(r.u16())))
    return out


def encode_attribute(attr_type: int, value: int | bytes) -> bytes:
    if isinstance(value, int):
        if not 0 <= value <= 0xFFFF:
            raise ValueError("TV attribute value out of range")
        return struct.pack("!HH", ATTR_TV | attr_type, value)
    return struct.pack("!HH", attr_type & 0x7FFF, len(value)) + value


def encode_attributes(attrs: Iterable[tuple[int, int | bytes]]) -> bytes:
    return b"".join(encode_attribute(t, v) for t, v in attrs)


def safe(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for decoders written with plain slicing/struct: garbage -> MalformedMessage."""

    def wrapper(*a: Any, **kw: Any) -> Any:
        try:
            return fn(*a, **kw)
        except CodecError:
            raise
        except _DECODE_FAILURES as e:
            raise MalformedMessage(str(e)) from None

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper
