"""IKEv2 payload bodies (RFC 7296 3.3-3.13), registered with the shared codec."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from vpnd.ike import codec
from vpnd.ike.codec import MalformedMessage, Payload, Reader
from vpnd.ike.v2 import constants as c

REGISTRY = codec.Registry(2, terminal=frozenset({c.PT_SK, c.PT_SKF}))


# --------------------------------------------------------------------------- SA (3.3)


@dataclass
class Transform:
    type: int
    id: int
    key_length: int | None = None  # the Key Length attribute (3.3.5), the only one defined

    def encode(self, last: bool) -> bytes:
        attrs = b"" if self.key_length is None else codec.encode_attribute(c.ATTR_KEY_LENGTH, self.key_length)
        # 0x100 marks a received transform with an unknown attribute (unusable, 3.3.6): the
        # wire type is the low byte
        return struct.pack("!BBHBBH", 0 if last else 3, 0, 8 + len(attrs), self.type & 0xFF, 0, self.id) + attrs


@dataclass
class Proposal:
    num: int
    protocol: int
    spi: bytes
    transforms: list[Transform]

    def encode(self, last: bool) -> bytes:
        body = b"".join(t.encode(i == len(self.transforms) - 1) for i, t in enumerate(self.transforms))
        total = 8 + len(self.spi) + len(body)
        return struct.pack("!BBHBBBB", 0 if last else 2, 0, total, self.num, self.protocol,
                           len(self.spi), len(self.transforms)) + self.spi + body

    def of_type(self, t: int) -> list[Transform]:
        return [x for x in self.transforms if x.type == t]


@REGISTRY.register
@dataclass
class SA(Payload):
    payload_type = c.PT_SA
    proposals: list[Proposal]

    @classmethod
    def decode(cls, body: bytes) -> "SA":
        r = Reader(body)
        props: list[Proposal] = []
        last = 2
        while last == 2:
            start = r.pos
            last = r.u8()
            r.u8()
            plen = r.u16()
            if last not in (0, 2) or plen < 8 or start + plen > r.end:
                raise MalformedMessage("bad proposal substructure")
            pr = Reader(body, r.pos, start + plen)
            num, proto, spi_size, ntrans = pr.u8(), pr.u8(), pr.u8(), pr.u8()
            spi = pr.take(spi_size)
            transforms: list[Transform] = []
            tlast = 3 if ntrans else 0
            while tlast == 3:
                tstart = pr.pos
                tlast = pr.u8()
                pr.u8()
                tlen = pr.u16()
                if tlast not in (0, 3) or tlen < 8 or tstart + tlen > pr.end:
                    raise MalformedMessage("bad transform substructure")
                ttype = pr.u8()
                pr.u8()
                tid = pr.u16()
                keylen = None
                for atype, aval in codec.decode_attributes(pr.take(tlen - 8)):
                    if atype == c.ATTR_KEY_LENGTH and isinstance(aval, int):
                        keylen = aval
                    else:
                        # 3.3.6: an unknown attribute makes the transform unusable; mark it so
                        ttype = 0x100 | ttype
                transforms.append(Transform(ttype, tid, keylen))
            if len(transforms) != ntrans:
                raise MalformedMessage("transform count mismatch")
            pr.expect_end()
            r.pos = start + plen
            props.append(Proposal(num, proto, spi, transforms))
        r.expect_end()
        return cls(props)

    def encode(self) -> bytes:
        return b"".join(p.encode(i == len(self.proposals) - 1) for i, p in enumerate(self.proposals))


# --------------------------------------------------------------------------- simple bodies


@REGISTRY.register
@dataclass
class KE(Payload):
    payload_type = c.PT_KE
    group: int
    data: bytes

    @classmethod
    def decode(cls, body: bytes) -> "KE":
        r = Reader(body)
        g = r.u16()
        r.u16()
        return cls(g, r.rest())

    def encode(self) -> bytes:
        return struct.pack("!HH", self.group, 0) + self.data


@REGISTRY.register
@dataclass
class Nonce(Payload):
    payload_type = c.PT_NONCE
    data: bytes

    @classmethod
    def decode(cls, body: bytes) -> "Nonce":
        if not 16 <= len(body) <= 256:  # 3.9
            raise MalformedMessage(f"nonce of {len(body)} bytes")
        return cls(body)

    def encode(self) -> bytes:
        return self.data


@dataclass
class _Id(Payload):
    id_type: int
    data: bytes

    @classmethod
    def decode(cls, body: bytes):
        r = Reader(body)
        t = r.u8()
        r.take(3)
        return cls(t, r.rest())

    def encode(self) -> bytes:
        return bytes([self.id_type, 0, 0, 0]) + self.data


@REGISTRY.register
@dataclass
class IDi(_Id):
    payload_type = c.PT_IDI


@REGISTRY.register
@dataclass
class IDr(_Id):
    payload_type = c.PT_IDR


@REGISTRY.register
@dataclass
class Auth(Payload):
    payload_type = c.PT_AUTH
    method: int
    data: bytes

    @classmethod
    def decode(cls, body: bytes) -> "Auth":
        r = Reader(body)
        m = r.u8()
        r.take(3)
        return cls(m, r.rest())

    def encode(self) -> bytes:
        return bytes([self.method, 0, 0, 0]) + self.data


@dataclass
class _Encoded(Payload):
    """CERT (3.6) and CERTREQ (3.7) share one body: an encoding octet, then data."""
    encoding: int
    data: bytes

    @classmethod
    def decode(cls, body: bytes):
        r = Reader(body)
        return cls(r.u8(), r.rest())

    def encode(self) -> bytes:
        return bytes([self.encoding]) + self.data


@REGISTRY.register
@dataclass
class Cert(_Encoded):
    payload_type = c.PT_CERT


@REGISTRY.register
@dataclass
class CertReq(_Encoded):
    payload_type = c.PT_CERTREQ
    # data: concatenated SHA-1 hashes of CA SubjectPublicKeyInfo (3.7)


@REGISTRY.register
@dataclass
class Notify(Payload):
    payload_type = c.PT_NOTIFY
    type: int
    data: bytes = b""
    protocol: int = 0
    spi: bytes = b""

    @classmethod
    def decode(cls, body: bytes) -> "Notify":
        r = Reader(body)
        proto, spi_size, ntype = r.u8(), r.u8(), r.u16()
        spi = r.take(spi_size)
        return cls(ntype, r.rest(), proto, spi)

    def encode(self) -> bytes:
        return struct.pack("!BBH", self.protocol, len(self.spi), self.type) + self.spi + self.data

    @property
    def is_error(self) -> bool:
        return self.type < 16384


@REGISTRY.register
@dataclass
class Delete(Payload):
    payload_type = c.PT_DELETE
    protocol: int
    spis: list[bytes] = field(default_factory=list)

    @classmethod
    def decode(cls, body: bytes) -> "Delete":
        r = Reader(body)
        proto, spi_size, n = r.u8(), r.u8(), r.u16()
        if proto not in (c.PROTO_IKE, c.PROTO_AH, c.PROTO_ESP):
            raise MalformedMessage(f"delete for unknown protocol {proto}")
        if proto == c.PROTO_IKE and (spi_size or n):
            raise MalformedMessage("IKE delete carries no SPIs")
        if proto in (c.PROTO_ESP, c.PROTO_AH) and spi_size != 4:
            raise MalformedMessage("ESP/AH delete needs 4-byte SPIs")
        spis = [r.take(spi_size) for _ in range(n)]
        r.expect_end()
        return cls(proto, spis)

    def encode(self) -> bytes:
        size = len(self.spis[0]) if self.spis else 0
        return struct.pack("!BBH", self.protocol, size, len(self.spis)) + b"".join(self.spis)


@REGISTRY.register
@dataclass
class Vendor(Payload):
    payload_type = c.PT_VENDOR
    data: bytes

    @classmethod
    def decode(cls, body: bytes) -> "Vendor":
        return cls(body)

    def encode(self) -> bytes:
        return self.data


# --------------------------------------------------------------------------- TS (3.13)


@dataclass(frozen=True, order=True)
class TrafficSelector:
    start: ipaddress.IPv4Address | ipaddress.IPv6Address
    end: ipaddress.IPv4Address | ipaddress.IPv6Address
    protocol: int = 0
    start_port: int = 0
    end_port: int = 65535

    @property
    def ts_type(self) -> int:
        return c.TS_IPV4_ADDR_RANGE if self.start.version == 4 else c.TS_IPV6_ADDR_RANGE

    @classmethod
    def from_network(cls, net, protocol: int = 0, start_port: int = 0, end_port: int = 65535):
        net = ipaddress.ip_network(net, strict=False)
        return cls(net.network_address, net.broadcast_address, protocol, start_port, end_port)

    def encode(self) -> bytes:
        addrs = self.start.packed + self.end.packed
        return struct.pack("!BBHHH", self.ts_type, self.protocol, 8 + len(addrs),
                           self.start_port, self.end_port) + addrs

    def intersect(self, other: "TrafficSelector") -> "TrafficSelector | None":
        """The narrowed selector both sides accept (2.9), or None."""
        if self.start.version != other.start.version:
            return None
        if self.protocol and other.protocol and self.protocol != other.protocol:
            return None
        start, end = max(self.start, other.start), min(self.end, other.end)
        sp, ep = max(self.start_port, other.start_port), min(self.end_port, other.end_port)
        if start > end or sp > ep:
            return None
        return TrafficSelector(start, end, self.protocol or other.protocol, sp, ep)

    def contains(self, other: "TrafficSelector") -> bool:
        return self.intersect(other) == other

    def networks(self) -> list:
        return list(ipaddress.summarize_address_range(self.start, self.end))

    def __str__(self) -> str:
        nets = self.networks()
        s = ",".join(str(n) for n in nets) if len(nets) <= 2 else f"{self.start}-{self.end}"
        if self.protocol or self.start_port or self.end_port != 65535:
            s += f"[{self.protocol}/{self.start_port}-{self.end_port}]"
        return s


@dataclass
class _TS(Payload):
    selectors: list[TrafficSelector]

    @classmethod
    def decode(cls, body: bytes):
        r = Reader(body)
        n = r.u8()
        r.take(3)
        out = []
        for _ in range(n):
            t, proto, length = r.u8(), r.u8(), r.u16()
            alen = {c.TS_IPV4_ADDR_RANGE: 4, c.TS_IPV6_ADDR_RANGE: 16}.get(t)
            if alen is None or length != 8 + 2 * alen:
                raise MalformedMessage(f"unsupported traffic selector type {t}")
            sp, ep = r.u16(), r.u16()
            a, b = r.take(alen), r.take(alen)
            out.append(TrafficSelector(ipaddress.ip_address(a), ipaddress.ip_address(b), proto, sp, ep))
        r.expect_end()
        if not out:
            raise MalformedMessage("empty traffic selector payload")
        return cls(out)

    def encode(self) -> bytes:
        return bytes([len(self.selectors), 0, 0, 0]) + b"".join(s.encode() for s in self.selectors)


@REGISTRY.register
@dataclass
class TSi(_TS):
    payload_type = c.PT_TSI


@REGISTRY.register
@dataclass
class TSr(_TS):
    payload_type = c.PT_TSR


REGISTRY.names.update({c.PT_SK: "SK", c.PT_SKF: "SKF", c.PT_CP: "CP", c.PT_EAP: "EAP"})


def notify(msg_payloads, ntype: int) -> Notify | None:
    for p in msg_payloads:
        if isinstance(p, Notify) and p.type == ntype:
            return p
    return None
