"""Fuzz targets: one callable per attack surface, each taking the fuzzer's bytes.

A target raises `Finding` (or lets an unexpected exception escape) when vpnd misbehaves:
an exception out of an entry point that must never raise (IKE receive, ESP/AH decap), an
exception other than the documented error type (control requests, config), or an internal
"error" event (a failure the core caught, which is still a bug when input caused it).

The IKE targets go past authentication: `ikev2_sk` and `ikev1_encrypted` hold established
in-memory pairs (the real cores, fake clock) and encrypt the fuzzer's plaintext with the
live SA's keys, so the fuzzer reaches the payload handlers of every exchange, not only the
integrity check. The ESP target does the same with the SA's keys.
"""
from __future__ import annotations

import os
import random
import struct
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for p in (str(REPO), str(REPO / "tests" / "unit")):
    if p not in sys.path:
        sys.path.insert(0, p)


class Finding(Exception):
    """vpnd did something an attacker's input must never make it do."""


def _no_error_events(actions, where: str) -> None:
    from vpnd.ike.actions import Event

    for a in actions:
        if isinstance(a, Event) and a.kind == "error":
            raise Finding(f"{where}: internal error event: {a.message}")


class _Rng:
    """Deterministic choices drawn from the input itself (so a crash reproduces from the file)."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        b = self.data[self.pos]
        self.pos += 1
        return b

    def rest(self) -> bytes:
        r = self.data[self.pos:]
        self.pos = len(self.data)
        return r


# ----------------------------------------------------------------------------- codec

class IkeCodec:
    """Header and payload chain of both versions: only CodecError may come out, and whatever
    decodes re-encodes to something that decodes to the same payloads."""

    name = "ike_codec"

    def __init__(self):
        from vpnd.ike import codec
        from vpnd.ike.v1 import payloads as p1
        from vpnd.ike.v2 import payloads as p2

        self.codec = codec
        self.registries = (p1.REGISTRY, p2.REGISTRY)

    def seeds(self):
        for side_msgs in (_v2_messages(), _v1_messages()):
            yield from side_msgs

    def __call__(self, data: bytes) -> None:
        codec = self.codec
        for reg in self.registries:
            try:
                msg = codec.decode_message(data, reg)
            except codec.CodecError:
                continue
            try:
                again = codec.encode_message(msg.header, msg.payloads)
            except Exception as e:  # noqa: BLE001 - a decoded message must encode
                raise Finding(f"decoded message does not re-encode: {e!r}") from e
            try:
                codec.decode_message(again, reg)
            except codec.CodecError as e:
                raise Finding(f"re-encoded message does not decode: {e!r}") from e


# ----------------------------------------------------------------------------- IKEv2

def _v2_pair():
    from test_ikev2_pair import Pair

    p = Pair({"ike": "aes128-sha256-x25519", "esp": "aes128-sha256",
              "dpd": {"interval": 5, "retry": 2, "mode": "periodic", "action": "clear"}},
             {"ike": "aes128-sha256-x25519", "esp": "aes128-sha256"})
    return p


_V2_MSGS: list[bytes] = []


def _v2_messages() -> list[bytes]:
    """Real messages of every IKEv2 exchange (init, auth, child rekey, IKE rekey, DPD)."""
    if not _V2_MSGS:
        p = _v2_pair()
        p.up()
        p.feed(p.a, p.a.m.rekey("site", p.now))
        p.pump()
        p.feed(p.a, p.a.m.rekey("site", p.now, ike=True))
        p.pump()
        p.run(12)
        _V2_MSGS.extend(d.data for _, d in p.a.sent + p.b.sent if d.data != b"\xff")
    return _V2_MSGS


class Ikev2Datagram:
    """Raw datagrams from an unauthenticated source at a responder that has a `%any`
    connection and a half-open SA: the pre-authentication surface."""

    name = "ikev2_datagram"

    def __init__(self):
        self.n = 0
        self._fresh()

    def _fresh(self):
        from test_ikev2_pair import Pair

        self.pair = Pair({"ike": "aes128-sha256-modp2048", "esp": "aes128-sha256"},
                         {"ike": "aes128-sha256-modp2048", "esp": "aes128-sha256"}, b_peer="%any")
        self.pair.filter = lambda side, d: "drop" if side is self.pair.b else None
        self.pair.up()  # B holds a half-open SA (its answer dropped)

    def seeds(self):
        return _v2_messages()

    def __call__(self, data: bytes) -> None:
        self.n += 1
        if self.n % 500 == 0:
            self._fresh()
        p = self.pair
        for port in (500, 4500):  # on 4500 the daemon has stripped the non-ESP marker already
            acts = p.b.m.receive(data, (p.b.ip, port), ("10.0.0.9", port), p.now)
            _no_error_events(acts, "ikev2 responder")


class Ikev2Sk:
    """Authenticated IKEv2 messages with fuzzed contents, in several states: a responder
    waiting for IKE_AUTH, an established responder taking any request, an established
    initiator taking the answer to its pending request (rekey, DPD, delete)."""

    name = "ikev2_sk"
    STATES = ("auth", "request", "response")

    def __init__(self):
        self.pairs: dict[str, object] = {}
        self.uses: dict[str, int] = {}

    def seeds(self):
        # state byte, exchange byte, first payload type, then a real inner chain
        from vpnd.ike import codec
        from vpnd.ike.v2 import constants as c
        from vpnd.ike.v2.payloads import Notify

        first, body = codec.encode_chain([Notify(c.N_INITIAL_CONTACT)])
        for s in range(3):
            for x in range(4):
                yield bytes([s, x, first]) + body
        yield bytes([1, 3, 0])  # an empty INFORMATIONAL = liveness check

    def _pair(self, state: str):
        p = self.pairs.get(state)
        if p is not None and self.uses[state] < 300:
            if state == "response" and self._usable("request", p) and not self._usable(state, p):
                self._new_request(p)  # the last answer settled the request: start another
            if self._usable(state, p):
                return p
        p = _v2_pair()
        if state == "auth":
            # B answered IKE_SA_INIT; A's IKE_AUTH is held back, B waits for it
            p.filter = lambda side, d: "drop" if side is p.a and d.data[18] == 35 else None
            p.up()
            p.filter = None
        else:
            p.up()
            if state == "response":
                self._new_request(p)
        self.pairs[state] = p
        self.uses[state] = 0
        return p

    @staticmethod
    def _new_request(p) -> None:
        """A gives B a CREATE_CHILD_SA request whose answer never comes: A waits for one."""
        p.filter = lambda side, d: "drop" if side is p.b else None
        p.feed(p.a, p.a.m.rekey("site", p.now))
        p.pump()
        p.filter = None

    def _usable(self, state, p) -> bool:
        sas = [s for s in p.b.m.v2.sas.values()] if state != "response" else list(p.a.m.v2.sas.values())
        if state == "auth":
            return any(s.state == "CONNECTING" and s.crypto_in is not None for s in sas)
        if state == "response":
            return any(s.pending is not None and s.state == "ESTABLISHED" for s in sas)
        return any(s.state == "ESTABLISHED" for s in sas)

    def __call__(self, data: bytes) -> None:
        from vpnd.ike import codec
        from vpnd.ike.codec import Header
        from vpnd.ike.v2 import constants as c

        r = _Rng(data)
        state = self.STATES[r.byte() % 3]
        exch = (c.IKE_AUTH, c.CREATE_CHILD_SA, c.INFORMATIONAL, c.IKE_SA_INIT)[r.byte() % 4]
        first = r.byte()
        inner = r.rest()
        p = self._pair(state)
        self.uses[state] += 1
        if state == "response":
            target, sender = p.a, p.b
            sa = next((s for s in p.a.m.v2.sas.values() if s.pending is not None), None)
            if sa is None:
                return
            mid, exch = sa.pending.mid, sa.pending.exchange
            flags = 0x20 | (0 if sa.initiator else 0x08)  # response; I flag = the peer's role
        else:
            target, sender = p.b, p.a
            want = "CONNECTING" if state == "auth" else "ESTABLISHED"
            sa = next((s for s in p.b.m.v2.sas.values() if s.state == want and s.crypto_in is not None), None)
            if sa is None:
                return
            mid = sa.mid_in
            if state == "auth":
                exch = c.IKE_AUTH
            flags = 0 if sa.initiator else 0x08
        wire = _sk_raw(Header(sa.spi_i, sa.spi_r, 0, 2, 0, exch, flags, mid), first, inner,
                       sa.keys.crypto(initiator=sa.initiator, outbound=False))
        acts = target.m.receive(wire, (target.ip, 500), (sender.ip, 500), p.now)
        p.feed(target, acts)
        _no_error_events(acts, f"ikev2 {state}")
        p.wire.clear()


def _sk_raw(header, first: int, plain: bytes, crypto) -> bytes:
    """header | SK{plain} with `first` as the SK payload's next-payload type (RFC 7296 3.14),
    built here from the cipher primitives so that any plaintext can be sent."""
    from vpnd.ike import codec
    from vpnd.ike.codec import Header

    cipher = crypto.cipher
    block = 1 if cipher.aead else cipher.block_size
    pad_len = (-(len(plain) + 1)) % block
    plain = plain + bytes(pad_len) + bytes([pad_len])
    iv = os.urandom(cipher.iv_size)
    sk_len = 4 + len(iv) + len(plain) + crypto.icv_size
    h = Header(header.spi_i, header.spi_r, 46, 2, 0, header.exchange, header.flags, header.message_id)
    prefix = codec.encode_header(h, codec.HEADER_LEN + sk_len) + codec.payload_header(first, sk_len - 4)
    if cipher.aead:
        return prefix + iv + cipher.encrypt(iv, plain, prefix)
    body = prefix + iv + cipher.encrypt(iv, plain)
    return body + (crypto.integ.sign(body) if crypto.integ else b"")


# ----------------------------------------------------------------------------- IKEv1

_V1_MSGS: list[bytes] = []


def _v1_messages() -> list[bytes]:
    if not _V1_MSGS:
        from test_ikev1_harness import pair

        net = pair()
        _V1_MSGS.extend(dg.data for _, dg in net.sent if dg.data != b"\xff")
    return _V1_MSGS


class Ikev1Datagram:
    """Raw datagrams (the unencrypted and undecryptable surface) at a fresh IKEv1 responder
    with a configured peer and at one with an established ISAKMP SA."""

    name = "ikev1_datagram"

    def __init__(self):
        self.n = 0
        self._fresh()

    def _fresh(self):
        from test_ikev1_harness import pair

        self.idle = pair(start=False)
        self.up = pair()

    def seeds(self):
        return _v1_messages()

    def __call__(self, data: bytes) -> None:
        from test_ikev1_harness import A_IP, B_IP

        self.n += 1
        if self.n % 500 == 0:
            self._fresh()
        for net in (self.idle, self.up):
            acts = net.b.receive_datagram(data, (B_IP, 500), (A_IP, 500), net.now)
            _no_error_events(acts, "ikev1 responder")


class Ikev1Encrypted:
    """Authenticated IKEv1 phase-2 messages with fuzzed payloads: Informational and Quick
    Mode message 1 with a correct HASH(1) (RFC 2409 5.5, 5.7), encrypted with the ISAKMP
    SA's keys and the phase-2 IV of their message ID (appendix B)."""

    name = "ikev1_encrypted"

    def __init__(self):
        self.uses = 0
        self.net = None

    def seeds(self):
        from vpnd.ike import codec
        from vpnd.ike.v1 import constants as C
        from vpnd.ike.v1 import payloads as P

        _, body = codec.encode_chain([P.Notify(C.N_INITIAL_CONTACT, C.PROTO_ISAKMP, bytes(16))])
        yield bytes([0, 11]) + body
        yield bytes([1, 1]) + bytes(8)

    def _net(self):
        if self.net is None or self.uses >= 200 or not any(s.is_established for s in self.net.a.sas.values()):
            from test_ikev1_harness import pair

            self.net = pair()
            self.uses = 0
        self.uses += 1
        return self.net

    def __call__(self, data: bytes) -> None:
        from test_ikev1_harness import A_IP, B_IP
        from vpnd.ike import codec
        from vpnd.ike.v1 import constants as C
        from vpnd.ike.v1 import keys

        r = _Rng(data)
        exch = (C.EXCH_INFO, 32)[r.byte() % 2]
        first = r.byte()
        rest = r.rest()
        net = self._net()
        sa = next((s for s in net.a.sas.values() if s.is_established), None)
        if sa is None:
            return
        mid = random.getrandbits(32) or 1
        hname, a = sa.policy.hash, sa.keys.a
        h1 = keys.qm_hash1(hname, a, mid, rest)
        body = codec.payload_header(first, len(h1)) + h1 + rest
        sa.p2_iv[mid] = keys.phase2_iv(hname, sa.iv, mid, sa.cipher.block_size)
        wire = net.a._encrypted_raw(sa, exch, mid, 8, body)  # 8 = HASH first
        sa.p2_iv.pop(mid, None)
        acts = net.b.receive_datagram(wire, (B_IP, 500), (A_IP, 500), net.now)
        _no_error_events(acts, "ikev1 encrypted")
        net.feed(net.b, acts)


# ----------------------------------------------------------------------------- ESP / AH

class EspDecap:
    """ESP and AH at a data plane with installed SAs: raw garbage, and packets that pass the
    ICV (built here with the SA's keys) carrying fuzzed plaintext, so that padding, next
    header, inner IP parsing and the inbound selector check are reached."""

    name = "esp_decap"
    KEY_GCM = bytes(range(20))
    KEY_CBC = bytes(range(16))
    KEY_HMAC = bytes(range(32, 64))
    KEY_AH = bytes(range(64, 84))

    def __init__(self):
        from vpnd.esp import SA, DataPlane

        self.dp = DataPlane()
        self.gcm = SA(0x1001, "esp", "tunnel", "aes128gcm16", None, self.KEY_GCM, replay_window=64,
                      local="10.200.0.2", remote="10.200.0.1")
        self.cbc = SA(0x1002, "esp", "tunnel", "aes128", "sha256", self.KEY_CBC, self.KEY_HMAC,
                      esn=True, replay_window=0, local="10.200.0.2", remote="10.200.0.1")
        self.ah = SA(0x1003, "ah", "transport", None, "sha1", b"", self.KEY_AH, replay_window=0,
                     local="10.200.0.2", remote="10.200.0.1")
        for sa in (self.gcm, self.cbc):
            self.dp.add_inbound(sa, local_ts=["10.2.0.0/16"], remote_ts=["10.1.0.0/16"])
        self.dp.add_inbound(self.ah)
        self.seq = 1

    def seeds(self):
        inner = _ipv4(b"\x11", "10.1.0.5", "10.2.0.7", b"\x00\x01\x00\x02\x00\x0c\x00\x00abcd")
        yield bytes([0, 0]) + inner + b"\x01\x02\x02\x04"
        yield bytes([1, 0]) + inner + b"\x00\x04"
        yield bytes([2, 0]) + inner
        yield bytes([3, 50]) + bytes(40)

    def __call__(self, data: bytes) -> None:
        r = _Rng(data)
        kind = r.byte() % 4
        sub = r.byte()
        body = r.rest()
        self.seq += 1
        if kind == 0:      # GCM, authentic, plaintext = payload + trailer exactly as fuzzed
            pkt = self._gcm(body)
            proto = 50
        elif kind == 1:    # CBC+HMAC with ESN, authentic
            pkt = self._cbc(body)
            proto = 50
        elif kind == 2:    # AH transport, authentic ICV over the fuzzed payload
            pkt = self._ah(body, sub)
            proto = 51
        else:              # anything at all, also via UDP 4500
            proto = (50, 51, 17)[sub % 3]
            pkt = body if proto == 17 else _ipv4(bytes([proto]), "10.200.0.1", "10.200.0.2", body)
        try:
            if proto == 17:
                self.dp.decap(pkt, 17, "10.200.0.1", 4500)
            else:
                self.dp.decap(pkt, proto, "10.200.0.1", None)
        except Exception as e:  # noqa: BLE001
            raise Finding(f"decap raised {e!r}") from e
        self.dp.events.clear()

    def _gcm(self, plain: bytes) -> bytes:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        iv = os.urandom(8)
        hdr = struct.pack("!II", 0x1001, self.seq)
        ct = AESGCM(self.KEY_GCM[:16]).encrypt(self.KEY_GCM[16:] + iv, plain, hdr)
        return _ipv4(b"\x32", "10.200.0.1", "10.200.0.2", hdr + iv + ct)

    def _cbc(self, plain: bytes) -> bytes:
        import hmac

        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        plain = plain + bytes((-len(plain)) % 16)
        iv = os.urandom(16)
        enc = Cipher(algorithms.AES(self.KEY_CBC), modes.CBC(iv)).encryptor()
        ct = enc.update(plain) + enc.finalize()
        seq = self.seq
        hdr = struct.pack("!II", 0x1002, seq & 0xFFFFFFFF)
        # ESN (RFC 4303 2.2.1): the high 32 bits enter the ICV, not the packet
        icv = hmac.new(self.KEY_HMAC, hdr + iv + ct + struct.pack("!I", seq >> 32), "sha256").digest()[:16]
        return _ipv4(b"\x32", "10.200.0.1", "10.200.0.2", hdr + iv + ct + icv)

    def _ah(self, payload: bytes, nh: int) -> bytes:
        import hmac

        # RFC 4302 3.3.3: the ICV over the IP header with mutable fields zeroed, AH with a
        # zero ICV field, and the payload
        ah_len = (12 + 12) // 4 - 2
        ah0 = struct.pack("!BBHII", nh, ah_len, 0, 0x1003, self.seq) + bytes(12)
        total = 20 + len(ah0) + len(payload)
        ip0 = _ipv4_header(51, "10.200.0.1", "10.200.0.2", total, ttl=0, csum=False)
        icv = hmac.new(self.KEY_AH, ip0 + ah0 + payload, "sha1").digest()[:12]
        ah = ah0[:12] + icv
        return _ipv4_header(51, "10.200.0.1", "10.200.0.2", total) + ah + payload


def _ipv4_header(proto: int, src: str, dst: str, total: int, ttl: int = 64, csum: bool = True) -> bytes:
    import ipaddress

    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, ttl, proto, 0,
                    ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed)
    if not csum:
        return h
    s = sum(struct.unpack("!10H", h))
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return h[:10] + struct.pack("!H", ~s & 0xFFFF) + h[12:]


def _ipv4(proto: bytes, src: str, dst: str, payload: bytes) -> bytes:
    return _ipv4_header(proto[0], src, dst, 20 + len(payload)) + payload


# ----------------------------------------------------------------------------- control, config

class ControlRequest:
    """One request line of the control protocol: ProtocolError or a well-formed request."""

    name = "control"

    def __init__(self):
        from vpnd import control

        self.control = control

    def seeds(self):
        yield b'{"command": "status"}'
        yield b'{"command": "rekey", "name": "site-b", "ike": true, "timeout": 5}'
        yield b'{"command": "up", "name": "x", "command": "down"}'

    def __call__(self, data: bytes) -> None:
        try:
            req = self.control.parse_request(data)
        except self.control.ProtocolError as e:
            if "\n" in str(e):
                raise Finding("protocol error message spans lines") from e
            return
        if not isinstance(req, dict) or req.get("command") not in self.control.COMMANDS:
            raise Finding(f"parse_request accepted {req!r}")
        self.control.encode({"ok": True, "echo": req})


class ConfigLoader:
    """A YAML file: ConfigError (with one-line problems) or a Config, never anything else."""

    name = "config"

    def __init__(self):
        import tempfile

        self.dir = tempfile.mkdtemp(prefix="vpnd-fuzz-config-")
        self.path = os.path.join(self.dir, "vpnd.yaml")

    def seeds(self):
        for f in sorted((REPO / "conf").rglob("*.yaml")):
            yield f.read_bytes()
        yield b"a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n"

    def __call__(self, data: bytes) -> None:
        from vpnd.config import ConfigError, load_config

        with open(self.path, "wb") as f:
            f.write(data)
        os.chmod(self.path, 0o600)
        try:
            load_config(self.path)
        except ConfigError as e:
            for p in e.problems:
                if not isinstance(p, str) or "\n" in p:
                    raise Finding(f"config problem is not one line: {p!r}") from e


TARGETS = {t.name: t for t in (IkeCodec, Ikev2Datagram, Ikev2Sk, Ikev1Datagram, Ikev1Encrypted,
                               EspDecap, ControlRequest, ConfigLoader)}


def mutate(seed: bytes, rnd: random.Random, max_len: int = 4096) -> bytes:
    """A few byte-level mutations (the engine used when atheris is not installed)."""
    b = bytearray(seed)
    for _ in range(rnd.randint(1, 6)):
        op = rnd.randrange(7)
        if op == 0 and b:
            b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
        elif op == 1 and b:
            b[rnd.randrange(len(b))] = rnd.choice((0, 1, 0x7F, 0x80, 0xFF, rnd.randrange(256)))
        elif op == 2 and b:
            del b[rnd.randrange(len(b)):]
        elif op == 3:
            pos = rnd.randrange(len(b) + 1)
            b[pos:pos] = rnd.randbytes(rnd.randint(1, 16))
        elif op == 4 and len(b) > 1:
            i = rnd.randrange(len(b) - 1)
            j = rnd.randrange(i, len(b))
            b[i:i] = b[i:j]
        elif op == 5 and len(b) >= 2:
            i = rnd.randrange(len(b) - 1)
            b[i:i + 2] = rnd.choice((b"\x00\x00", b"\xff\xff", b"\x00\x01", b"\x7f\xff", b"\x80\x00"))
        elif op == 6 and b:
            del b[rnd.randrange(len(b))]
    return bytes(b[:max_len])
