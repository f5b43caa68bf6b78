"""IKEv1 payload bodies (RFC 2408 3.4-3.15, RFC 2407 4.6, RFC 3947 3.2/5.2).

Header and generic payload chain come from ike/codec.py; this module declares only the
bodies and registers them in `REGISTRY`. Bodies that enter a hash (SA, ID, nonce, KE) keep
the exact bytes they were decoded from in `raw`, because RFC 2409 hashes the bytes as sent
(SAi_b, IDii_b, Ni_b), not a re-encoding.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from vpnd.ike import codec
from vpnd.ike.codec import MalformedMessage, Reader
from vpnd.ike.v1 import constants as C

REGISTRY = codec.Registry(version=1)

Attrs = list  # [(type, int | bytes)]


def _attrs_get(attrs: Attrs, t: int, default=None):
    for k, v in attrs:
        if k == t:
            return v
    return default


def attr_int(attrs: Attrs, t: int, default=None):
    """An attribute as an integer; TLV values (long life durations) are big-endian."""
    v = _attrs_get(attrs, t, default)
    if isinstance(v, (bytes, bytearray)):
        if len(v) > 8:
            raise MalformedMessage(f"attribute {t} too long")
        return int.from_bytes(v, "big")
    return v


def life_attr(t_type: int, t_dur: int, kind: int, value: int) -> list:
    """Life type + duration; values above 0xFFFF go as a TLV (RFC 2408 3.3)."""
    dur: int | bytes = value if value <= 0xFFFF else value.to_bytes(4, "big")
    return [(t_type, kind), (t_dur, dur)]


@dataclass
class Transform:
    number: int
    transform_id: int
    attrs: Attrs = field(default_factory=list)


@dataclass
class Proposal:
    number: int
    protocol: int
    spi: bytes
    transforms: list[Transform] = field(default_factory=list)


def _encode_transforms(ts: list[Transform]) -> bytes:
    out = []
    for i, t in enumerate(ts):
        body = struct.pack("!BBH", t.number, t.transform_id, 0) + codec.encode_attributes(t.attrs)
        nxt = C.PL_TRANSFORM if i + 1 < len(ts) else 0
        out.append(codec.payload_header(nxt, len(body)) + body)
    return b"".join(out)


def _decode_sub_chain(r: Reader, want: int, count: int | None) -> list[tuple[bytes]]:
    """Proposal/transform substructures: generic headers with fixed next-payload values."""
    out = []
    while True:
        np = r.u8()
        r.u8()
        plen = r.u16()
        if plen < 4:
            raise MalformedMessage("substructure length too short")
        out.append(r.take(plen - 4))
        if np == 0:
            break
        if np != want:
            raise MalformedMessage(f"substructure chains to {np}, expected {want}")
        if len(out) > 64:
            raise MalformedMessage("too many proposals/transforms")
    if count is not None and len(out) != count:
        raise MalformedMessage(f"{len(out)} transforms, header says {count}")
    return out


@REGISTRY.register
@dataclass
class SA(codec.Payload):
    payload_type = C.PL_SA
    proposals: list[Proposal] = field(default_factory=list)
    doi: int = C.DOI_IPSEC
    situation: int = C.SIT_IDENTITY_ONLY
    raw: bytes = b""

    @classmethod
    def decode(cls, body: bytes) -> "SA":
        r = Reader(body)
        doi, sit = r.u32(), r.u32()
        if doi != C.DOI_IPSEC:
            raise MalformedMessage(f"DOI {doi} is not IPsec")
        if sit != C.SIT_IDENTITY_ONLY:
            raise MalformedMessage(f"situation {sit} not supported")
        props = []
        for pb in _decode_sub_chain(r, C.PL_PROPOSAL, None):
            pr = Reader(pb)
            num, proto, spisize, ntrans = pr.u8(), pr.u8(), pr.u8(), pr.u8()
            spi = pr.take(spisize)
            transforms = []
            for tb in _decode_sub_chain(pr, C.PL_TRANSFORM, ntrans):
                tr = Reader(tb)
                tnum, tid = tr.u8(), tr.u8()
                tr.u16()
                transforms.append(Transform(tnum, tid, codec.decode_attributes(tr.rest())))
            pr.expect_end()
            props.append(Proposal(num, proto, spi, transforms))
        r.expect_end()
        return cls(props, doi, sit, raw=bytes(body))

    def encode(self) -> bytes:
        if self.raw:
            return self.raw
        out = [struct.pack("!II", self.doi, self.situation)]
        for i, p in enumerate(self.proposals):
            body = struct.pack("!BBBB", p.number, p.protocol, len(p.spi), len(p.transforms))
            body += p.spi + _encode_transforms(p.transforms)
            nxt = C.PL_PROPOSAL if i + 1 < len(self.proposals) else 0
            out.append(codec.payload_header(nxt, len(body)) + body)
        self.raw = b"".join(out)
        return self.raw


@dataclass
class _Opaque(codec.Payload):
    """A payload whose body is one opaque field (KE, nonce, hash, signature, VID, NAT-D)."""

    data: bytes = b""

    @classmethod
    def decode(cls, body: bytes):
        return cls(bytes(body))

    def encode(self) -> bytes:
        return self.data


@REGISTRY.register
@dataclass
class KE(_Opaque):
    payload_type = C.PL_KE


@REGISTRY.register
@dataclass
class Nonce(_Opaque):
    payload_type = C.PL_NONCE


@REGISTRY.register
@dataclass
class Hash(_Opaque):
    payload_type = C.PL_HASH


@REGISTRY.register
@dataclass
class Signature(_Opaque):
    payload_type = C.PL_SIG


@REGISTRY.register
@dataclass
class VendorID(_Opaque):
    payload_type = C.PL_VID


@REGISTRY.register
@dataclass
class NatD(_Opaque):
    payload_type = C.PL_NATD


@REGISTRY.register
@dataclass
class NatDDraft(_Opaque):
    payload_type = C.PL_NATD_DRAFT


@REGISTRY.register
@dataclass
class NatOA(_Opaque):
    payload_type = C.PL_NATOA


@REGISTRY.register
@dataclass
class NatOADraft(_Opaque):
    payload_type = C.PL_NATOA_DRAFT


@REGISTRY.register
@dataclass
class ID(codec.Payload):
    """Identification (RFC 2407 4.6.2). `raw` of the body is IDii_b / IDir_b of RFC 2409."""

    payload_type = C.PL_ID
    id_type: int = C.ID_IPV4_ADDR
    protocol: int = 0
    port: int = 0
    data: bytes = b""

    @classmethod
    def decode(cls, body: bytes) -> "ID":
        r = Reader(body)
        t, proto, port = r.u8(), r.u8(), r.u16()
        return cls(t, proto, port, r.rest())

    def encode(self) -> bytes:
        return struct.pack("!BBH", self.id_type, self.protocol, self.port) + self.data


@REGISTRY.register
@dataclass
class Cert(codec.Payload):
    payload_type = C.PL_CERT
    encoding: int = C.CERT_X509_SIG
    data: bytes = b""

    @classmethod
    def decode(cls, body: bytes) -> "Cert":
        r = Reader(body)
        return cls(r.u8(), r.rest())

    def encode(self) -> bytes:
        return bytes([self.encoding]) + self.data


@REGISTRY.register
@dataclass
class CertReq(codec.Payload):
    payload_type = C.PL_CR
    encoding: int = C.CERT_X509_SIG
    authority: bytes = b""  # DER DN of an acceptable CA, or empty

    @classmethod
    def decode(cls, body: bytes) -> "CertReq":
        r = Reader(body)
        return cls(r.u8(), r.rest())

    def encode(self) -> bytes:
        return bytes([self.encoding]) + self.authority


@REGISTRY.register
@dataclass
class Notify(codec.Payload):
    payload_type = C.PL_NOTIFY
    notify_type: int = 0
    protocol: int = C.PROTO_ISAKMP
    spi: bytes = b""
    data: bytes = b""
    doi: int = C.DOI_IPSEC

    @classmethod
    def decode(cls, body: bytes) -> "Notify":
        r = Reader(body)
        doi, proto, spisize, t = r.u32(), r.u8(), r.u8(), r.u16()
        spi = r.take(spisize)
        return cls(t, proto, spi, r.rest(), doi)

    def encode(self) -> bytes:
        return (struct.pack("!IBBH", self.doi, self.protocol, len(self.spi), self.notify_type)
                + self.spi + self.data)


@REGISTRY.register
@dataclass
class Delete(codec.Payload):
    payload_type = C.PL_DELETE
    protocol: int = C.PROTO_ISAKMP
    spis: list[bytes] = field(default_factory=list)
    doi: int = C.DOI_IPSEC

    @classmethod
    def decode(cls, body: bytes) -> "Delete":
        r = Reader(body)
        doi, proto, spisize, n = r.u32(), r.u8(), r.u8(), r.u16()
        if spisize == 0 and n:
            raise MalformedMessage("delete with zero-size SPIs")
        spis = [r.take(spisize) for _ in range(n)]
        r.expect_end()
        return cls(proto, spis, doi)

    def encode(self) -> bytes:
        size = len(self.spis[0]) if self.spis else 0
        if any(len(s) != size for s in self.spis):
            raise ValueError("delete SPIs of different sizes")
        return struct.pack("!IBBH", self.doi, self.protocol, size, len(self.spis)) + b"".join(self.spis)


def chain_end(data: bytes, first_type: int, start: int) -> list[tuple[int, int, int]]:
    """[(type, start, end)] of each payload in an already validated chain, so that hashes
    can cover "the message that follows the hash ... excluding padding" (RFC 2409 5.5)."""
    out = []
    t, pos = first_type, start
    while t != 0 and pos + 4 <= len(data):
        np, _, plen = struct.unpack_from("!BBH", data, pos)
        out.append((t, pos, pos + plen))
        pos += plen
        t = np
    return out
