"""One IPsec SA: keys, sequence numbers, anti-replay window, lifetimes, counters, and the
ESP (RFC 4303) / AH (RFC 4302) transforms specialised for its algorithms.

The per-packet functions are closures built once per SA (`esp_seal`, `esp_open`,
`ah_icv`), holding the cipher contexts and prebuilt constants in local variables: no
logging, no per-packet object construction besides what `cryptography` needs.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag

from vpnd.crypto.ciphers import AeadCipher, CbcCipher, make_cipher, make_integrity
from vpnd.esp.ipv4 import PROTO_AH, PROTO_ESP, OuterHeader
from vpnd.esp.ipv6 import OuterHeader6

import hmac as _hmac

_Q = struct.Struct("!Q")
_I = struct.Struct("!I")
_II = struct.Struct("!II")

# Padding 1, 2, 3, ... (RFC 4303 2.4: the default, and what receivers may check).
PADS = tuple(bytes(range(1, n + 1)) for n in range(256))
# TRAILERS[nh][padlen] = padding || pad length || next header
TRAILERS = tuple(tuple(PADS[p] + bytes((p, nh)) for p in range(256)) for nh in range(256))

SEQ32_MAX = 0xFFFFFFFF
SEQ64_MAX = 0xFFFFFFFFFFFFFFFF


@dataclass(frozen=True)
class Lifetime:
    """Volume limits of one SA; 0 = none.  Soft produces an event (rekey), hard one more
    event and the SA stops carrying traffic (RFC 4301 4.4.2.1)."""
    soft_bytes: int = 0
    hard_bytes: int = 0
    soft_packets: int = 0
    hard_packets: int = 0


COUNTER_NAMES = ("bytes_in", "packets_in", "bytes_out", "packets_out", "replay_drops",
                 "auth_failures", "pad_errors", "malformed", "policy_drops", "expired_drops",
                 "dummy_drops")


class SA:
    """A unidirectional ESP or AH SA.  See docs/internals.md for the constructor."""

    __slots__ = (
        "spi", "protocol", "mode", "encryption", "integrity", "esn", "replay_window",
        "local", "remote", "encap", "lifetime", "tag",
        "local_packed", "remote_packed", "version",
        "cipher", "integ", "icv_size", "iv_size", "block",
        "seq", "seq_max", "rp_top", "rp_bitmap", "rp_mask",
        "bytes_in", "packets_in", "bytes_out", "packets_out", "replay_drops",
        "auth_failures", "pad_errors", "malformed", "policy_drops", "expired_drops",
        "dummy_drops",
        "last_in", "last_out", "soft_fired", "hard_fired", "expired",
        "_limit_bytes", "_limit_packets", "events",
        "outer", "local_ts", "remote_ts", "sel_fast", "require_ah",
        "esp_seal", "esp_open", "ah_icv", "esp_min_len",
        "ipcomp", "conn", "acl",
    )

    def __init__(self, spi: int, protocol: str = "esp", mode: str = "tunnel",
                 encryption: str | None = None, integrity: str | None = None,
                 enc_key: bytes = b"", auth_key: bytes = b"", esn: bool = False,
                 replay_window: int = 64, local: str = "0.0.0.0", remote: str = "0.0.0.0",
                 encap: tuple[int, int] | None = None, lifetime: Lifetime | None = None,
                 tag=None, conn: str | None = None):
        if protocol not in ("esp", "ah"):
            raise ValueError(f"protocol must be 'esp' or 'ah', not {protocol!r}")
        if mode not in ("tunnel", "transport"):
            raise ValueError(f"mode must be 'tunnel' or 'transport', not {mode!r}")
        if not 0 < spi <= 0xFFFFFFFF or (protocol == "esp" and spi < 256):
            # SPIs 1-255 are reserved by IANA (RFC 4303 2.1); 0 is never valid
            raise ValueError("SPI out of range")
        if replay_window < 0:
            raise ValueError("replay_window must be >= 0")
        self.spi = spi
        self.protocol = protocol
        self.mode = mode
        self.esn = bool(esn)
        self.replay_window = replay_window
        self.local = local
        self.remote = remote
        la = ipaddress.ip_address(local)
        ra = ipaddress.ip_address(remote)
        if la.version != ra.version:
            raise ValueError("outer addresses of different IP versions")
        self.version = la.version
        self.local_packed = la.packed
        self.remote_packed = ra.packed
        self.encap = tuple(encap) if encap else None
        if self.encap and protocol != "esp":
            raise ValueError("UDP encapsulation is for ESP only (RFC 3948)")
        self.lifetime = lifetime or Lifetime()
        self.tag = tag
        self.conn = conn            # the connection's name: its access_group applies
        self.acl = None             # inbound AccessList (vpnd/esp/acl.py), set by DataPlane
        if protocol == "esp":
            if encryption is None:
                encryption = "null"
            self.encryption = encryption
            self.cipher = make_cipher(encryption, enc_key)
            if self.cipher.aead:
                if integrity:
                    raise ValueError(f"{encryption} is an AEAD: no separate integrity")
                self.integ = None
            else:
                if not integrity and encryption == "null":
                    raise ValueError("ESP with null encryption needs integrity (RFC 4303 3.2)")
                self.integ = make_integrity(integrity, auth_key) if integrity else None
            self.integrity = integrity
            self.iv_size = self.cipher.iv_size
            self.icv_size = self.cipher.icv_size if self.cipher.aead else (
                self.integ.icv_size if self.integ else 0)
            # ESP needs the trailer 4-byte aligned even for stream/null ciphers (RFC 4303 2.4)
            self.block = max(self.cipher.block_size, 4)
        else:
            if not integrity:
                raise ValueError("AH needs an integrity algorithm")
            if encryption not in (None, "null"):
                raise ValueError("AH does not encrypt: encryption must be None")
            self.encryption = None
            self.cipher = None
            self.integrity = integrity
            self.integ = make_integrity(integrity, auth_key)
            self.icv_size = self.integ.icv_size
            self.iv_size = 0
            self.block = 4
        self.seq = 0
        self.seq_max = SEQ64_MAX if self.esn else SEQ32_MAX
        self.rp_top = 0
        self.rp_bitmap = 0
        self.rp_mask = (1 << replay_window) - 1
        for name in COUNTER_NAMES:
            setattr(self, name, 0)
        self.last_in = None
        self.last_out = None
        self.soft_fired = False
        self.hard_fired = False
        self.expired = False
        self.events = None           # the DataPlane's deque, set when installed
        lt = self.lifetime
        self._limit_bytes = _next_limit(lt.soft_bytes, lt.hard_bytes, False)
        self._limit_packets = _next_limit(lt.soft_packets, lt.hard_packets, False)
        self.outer = _outer(self.version, local, remote, protocol)
        self.local_ts = None
        self.ipcomp = None           # esp.ipcomp.IPComp on the innermost SA of a bundle
        self.remote_ts = None
        self.sel_fast = None         # (remote net, mask, local net, mask) for one IPv4 pair
        self.require_ah = None       # inbound ESP of an ESP+AH bundle: the AH SA it must come in
        if protocol == "esp":
            self.esp_min_len = 8 + self.iv_size + max(self.block, 4) + self.icv_size
            self.esp_seal, self.esp_open = _build_esp(self)
            self.ah_icv = None
        else:
            self.esp_min_len = 0
            self.esp_seal = self.esp_open = None
            self.ah_icv = _build_ah_icv(self)

    # -- status ------------------------------------------------------------------------

    @property
    def counters(self) -> dict:
        return {name: getattr(self, name) for name in COUNTER_NAMES}

    def __repr__(self) -> str:
        return (f"<SA {self.protocol} spi=0x{self.spi:08x} {self.mode} "
                f"{self.encryption or ''}/{self.integrity or ''} {self.local}->{self.remote}>")

    def continue_from(self, old: "SA") -> None:
        """Take over the state of `old` (same SPI and keys, rebuilt e.g. for a new peer
        address): sequence number, replay window, counters, lifetime progress, IP ID."""
        self.seq = old.seq
        self.rp_top = old.rp_top
        self.rp_bitmap = old.rp_bitmap & self.rp_mask
        for name in COUNTER_NAMES:
            setattr(self, name, getattr(old, name))
        self.last_in, self.last_out = old.last_in, old.last_out
        self.soft_fired, self.hard_fired, self.expired = old.soft_fired, old.hard_fired, old.expired
        lt = self.lifetime
        self._limit_bytes = _next_limit(lt.soft_bytes, lt.hard_bytes, self.soft_fired,
                                        self.hard_fired)
        self._limit_packets = _next_limit(lt.soft_packets, lt.hard_packets, self.soft_fired,
                                          self.hard_fired)
        if self.version == 4 and old.version == 4:
            self.outer.ident = old.outer.ident

    def set_addresses(self, local: str, remote: str, encap: tuple[int, int] | None) -> None:
        """Move the SA to new outer addresses / UDP encapsulation in place (a NAT mapping
        changed, RFC 3948 / RFC 7296 2.23): keys, sequence numbers, replay window,
        counters, lifetime progress and the outer IP ID counter all stay."""
        la = ipaddress.ip_address(local)
        ra = ipaddress.ip_address(remote)
        if la.version != ra.version:
            raise ValueError("outer addresses of different IP versions")
        encap = tuple(encap) if encap else None
        if encap and self.protocol != "esp":
            raise ValueError("UDP encapsulation is for ESP only (RFC 3948)")
        ident = self.outer.ident
        self.local, self.remote = local, remote
        self.version = la.version
        self.local_packed, self.remote_packed = la.packed, ra.packed
        self.encap = encap
        self.outer = _outer(self.version, local, remote, self.protocol)
        self.outer.ident = ident if self.version == 4 else 0

    # -- lifetime (slow path, called when a limit counter is crossed) -------------------

    def _limit_hit(self) -> bool:
        """Fire soft/hard events; True when the SA is now (hard) expired."""
        lt = self.lifetime
        total_bytes = self.bytes_in + self.bytes_out
        total_packets = self.packets_in + self.packets_out
        hard = ((lt.hard_bytes and total_bytes >= lt.hard_bytes)
                or (lt.hard_packets and total_packets >= lt.hard_packets))
        soft = ((lt.soft_bytes and total_bytes >= lt.soft_bytes)
                or (lt.soft_packets and total_packets >= lt.soft_packets))
        if (soft or hard) and not self.soft_fired:
            self.soft_fired = True
            if self.events is not None:
                self.events.append(("soft_expire", self))
        if hard and not self.hard_fired:
            self.hard_fired = True
            self.expired = True
            if self.events is not None:
                self.events.append(("hard_expire", self))
        self._limit_bytes = _next_limit(lt.soft_bytes, lt.hard_bytes, self.soft_fired,
                                        self.hard_fired)
        self._limit_packets = _next_limit(lt.soft_packets, lt.hard_packets, self.soft_fired,
                                          self.hard_fired)
        return self.expired

    def _seq_exhausted(self) -> None:
        """RFC 4303 3.3.3: the counter must not cycle; the SA is dead for sending."""
        self.expired = True
        if not self.hard_fired:
            self.hard_fired = True
            if self.events is not None:
                self.events.append(("hard_expire", self))

    # -- anti-replay (RFC 4303 3.4.3 and appendix A) ------------------------------------

    def replay_seq(self, seq_lo: int) -> int:
        """The full sequence number for a received low half, or -1 when it must be dropped
        as a replay / too old (checked before the ICV, committed by replay_commit after)."""
        w = self.replay_window
        top = self.rp_top
        if self.esn:
            # Appendix A2.2: infer the high half from the window position.  With the
            # window disabled, infer with the widest window (closest sequence number).
            win = w if w else 0x80000000
            th = top >> 32
            tl = top & SEQ32_MAX
            if tl >= win - 1:
                bl = tl - win + 1
                hi = th if seq_lo >= bl else th + 1
            else:
                bl = (tl - win + 1) & SEQ32_MAX
                hi = th - 1 if seq_lo >= bl else th
                if hi < 0:
                    return -1
            seq = hi << 32 | seq_lo
        else:
            seq = seq_lo
        if seq == 0 and not self.esn:
            return -1                           # never sent (the first packet is 1)
        if not w or seq > top:
            return seq
        diff = top - seq
        if diff >= w or (self.rp_bitmap >> diff) & 1:
            return -1
        return seq

    def replay_commit(self, seq: int) -> None:
        top = self.rp_top
        if seq > top:
            shift = seq - top
            if self.replay_window:
                self.rp_bitmap = ((self.rp_bitmap << shift) | 1) & self.rp_mask \
                    if shift < self.replay_window else 1
            self.rp_top = seq
        elif self.replay_window:
            self.rp_bitmap |= 1 << (top - seq)


def _outer(version: int, local: str, remote: str, protocol: str):
    """The prebuilt outer header of an SA's family (tunnel mode, and AH's ICV)."""
    proto = PROTO_ESP if protocol == "esp" else PROTO_AH
    return OuterHeader(local, remote, proto) if version == 4 else OuterHeader6(local, remote, proto)


def _next_limit(soft: int, hard: int, soft_fired: bool, hard_fired: bool = False) -> float:
    """The next counter value at which _limit_hit must run."""
    if hard_fired:
        return float("inf")
    pending = [x for x in (hard, 0 if soft_fired else soft) if x]
    return min(pending) if pending else float("inf")


# -- ESP ---------------------------------------------------------------------------------

def seq_allocator(sa):
    """A closure giving the SA's next outbound sequence number, or -1 (counted in
    expired_drops, the SA reported expired) when it would cycle: RFC 4303 3.3.3 and
    RFC 4302 3.3.2 forbid reusing a number, a new SA must be negotiated instead."""
    def next_seq():
        seq = sa.seq + 1
        if seq > sa.seq_max or sa.expired:
            if not sa.expired:
                sa._seq_exhausted()
            sa.expired_drops += 1
            return -1
        sa.seq = seq
        return seq
    return next_seq


def _build_esp(sa: SA):
    """Return (seal, open) closures for this SA's algorithms.

    seal(payload, nh, prefix=b"") -> prefix + ESP bytes (header .. ICV), or None when the
        SA cannot send (prefix: an outer header, joined in the same copy).
    open(esp) -> (payload, nh) or None (counted).  `esp` is bytes or memoryview of the
    ESP packet starting at the SPI.
    """
    spi_b = _I.pack(sa.spi)
    esn = sa.esn
    block = sa.block
    bmask = block - 1
    trailers = TRAILERS
    pads = PADS
    pack_q = _Q.pack
    unpack_ii = _II.unpack_from
    icv_size = sa.icv_size
    iv_size = sa.iv_size
    cipher = sa.cipher
    integ = sa.integ
    replay_seq = sa.replay_seq
    replay_commit = sa.replay_commit
    min_len = 8 + iv_size + 4 + icv_size
    compare = _hmac.compare_digest

    next_seq = seq_allocator(sa)

    def check_trailer(pt):
        """(end of payload, nh) or -1: RFC 4303 2.4 padding is 1, 2, 3, ... and checked."""
        n = len(pt)
        if n < 2:
            return -1, 0
        padlen = pt[n - 2]
        end = n - 2 - padlen
        if end < 0 or pt[end:n - 2] != pads[padlen]:
            return -1, 0
        return end, pt[n - 1]

    if isinstance(cipher, AeadCipher):
        ctx = cipher._ctx
        salt = cipher.salt
        encrypt = ctx.encrypt
        decrypt = ctx.decrypt

        seq_max = sa.seq_max

        def seal(payload, nh, prefix=b""):
            seq = sa.seq + 1
            if seq > seq_max or sa.expired:
                next_seq()                   # counts the drop and reports the expiry
                return None
            sa.seq = seq
            # The 64-bit sequence number is the IV: unique per key (RFC 4106 3.1, RFC 7634 2)
            seqb = pack_q(seq)
            hdr = spi_b + seqb[4:]
            ct = encrypt(salt + seqb, payload + trailers[nh][-(len(payload) + 2) & 3],
                         spi_b + seqb if esn else hdr)
            return b"".join((prefix, hdr, seqb, ct))

        def open_(esp):
            if len(esp) < min_len:
                sa.malformed += 1
                return None
            seq = replay_seq(unpack_ii(esp, 0)[1])
            if seq < 0:
                sa.replay_drops += 1
                return None
            # AAD: SPI || seq (RFC 4106 5) or SPI || seq high || seq low with ESN
            try:
                pt = decrypt(salt + esp[8:16], esp[16:], spi_b + pack_q(seq) if esn else esp[:8])
            except (InvalidTag, ValueError):
                sa.auth_failures += 1
                return None
            # RFC 4303 2.4: padding 1, 2, 3, ... checked on receive
            n = len(pt)
            padlen = pt[n - 2]
            end = n - 2 - padlen
            if end < 0 or pt[end:n - 2] != pads[padlen]:
                sa.pad_errors += 1
                return None
            replay_commit(seq)
            return pt[:end], pt[n - 1]

        return seal, open_

    # CBC or NULL encryption with HMAC (or, for CBC, none at all: RFC 4303 3.2 allows it)
    is_cbc = isinstance(cipher, CbcCipher)
    cbc_encrypt = cipher.encrypt if is_cbc else None
    cbc_decrypt = cipher.decrypt if is_cbc else None
    if integ is not None:
        ipad = integ._ipad
        opad = integ._opad
    urandom = os.urandom

    def seal(payload, nh, prefix=b""):
        seq = next_seq()
        if seq < 0:
            return None
        seqb = pack_q(seq)
        hdr = spi_b + seqb[4:]
        pt = payload + trailers[nh][-(len(payload) + 2) & bmask]
        if is_cbc:
            # A fresh random IV per packet: CBC needs it unpredictable (RFC 3602 3)
            iv = urandom(iv_size)
            ct = cbc_encrypt(iv, pt)
        else:
            iv = b""
            ct = pt
        if integ is None:
            return b"".join((prefix, hdr, iv, ct))
        h = ipad.copy()
        h.update(hdr)
        h.update(iv)
        h.update(ct)
        if esn:
            # the high half is authenticated but not sent (RFC 4303 2.2.1, 3.3.2)
            h.update(seqb[:4])
        o = opad.copy()
        o.update(h.digest())
        return b"".join((prefix, hdr, iv, ct, o.digest()[:icv_size]))

    def open_(esp):
        n = len(esp)
        if n < min_len:
            sa.malformed += 1
            return None
        seq = replay_seq(unpack_ii(esp, 0)[1])
        if seq < 0:
            sa.replay_drops += 1
            return None
        body_end = n - icv_size
        if integ is not None:
            h = ipad.copy()
            h.update(esp[:body_end])
            if esn:
                h.update(pack_q(seq)[:4])
            o = opad.copy()
            o.update(h.digest())
            if not compare(o.digest()[:icv_size], esp[body_end:]):
                sa.auth_failures += 1
                return None
        if is_cbc:
            ct = esp[8 + iv_size:body_end]
            if len(ct) % block:
                sa.malformed += 1
                return None
            pt = cbc_decrypt(esp[8:8 + iv_size], ct)
        else:
            pt = bytes(esp[8:body_end])
        end, nh = check_trailer(pt)
        if end < 0:
            sa.pad_errors += 1
            return None
        replay_commit(seq)
        return pt[:end], nh

    return seal, open_


# -- AH ----------------------------------------------------------------------------------

def _build_ah_icv(sa: SA):
    """icv(data, seq) -> truncated ICV over `data` (mutable fields already zeroed) with
    the ESN high half appended when ESN is on (RFC 4302 3.3.2.1)."""
    mac = sa.integ.mac
    icv_size = sa.icv_size
    pack_i = _I.pack
    if sa.esn:
        def icv(data, seq):
            return mac(data, pack_i(seq >> 32))[:icv_size]
    else:
        def icv(data, seq):
            return mac(data)[:icv_size]
    return icv
