"""vpnd's packets checked by independent IPsec implementations (issue 2 acceptance).

Two vpnd daemons with manual keys run in gwa and gwb. For every transform, each daemon
pair carries one connection per variant (raw / UDP-encapsulated ESP x tunnel / transport
x ESN off / on), each with its own addresses and SPIs:
  tunnel:    hosta 10.1.0.(10+i) <-> hostb 10.2.0.(10+i)
  transport: gwa  10.200.0.(100+i) <-> gwb 10.200.0.(150+i)   (the gateways' own traffic;
             one transport variant uses the primary 10.200.0.1 <-> 10.200.0.2)

(a) every ESP/AH packet captured on the WAN opens (ICV verified, decrypted) with scapy's
    SecurityAssociation and the same keys, to exactly the packets the sending daemon read
    from its TUN and the receiving daemon wrote to its TUN;
(b) packets that scapy seals are accepted by gwb's vpnd and come out of its TUN unchanged
    (and reach hostb, which answers through the tunnel);
(c) tshark with an esp_sa UAT decodes the capture with good ICVs, no malformed frames,
    and shows the inner ICMP (Wireshark 4.0: ESP without ESN, not ChaCha20-Poly1305);
and the receiver's `vpnctl status` counters agree, with no key in status or logs.
Transport-mode traffic reaches the TUN by vpnd's own policy routing (docs/daemon.md).
AH cannot be UDP-encapsulated (RFC 3948 covers ESP only), so AH cases are raw only.
With ESN the sequence numbers start at 1, so their high 32 bits are 0; they still enter the
ICV / AEAD AAD (RFC 4303 2.2.1, RFC 4106 5), which is what scapy checks.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from .capture_check import (DirKeys, SaPair, Transform, ip_addrs, ipsec_spi,
                            read_ip_packets, tshark_decode, tshark_uat)
from .topology import Topology, TopologyError

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]

TRANSFORMS = [
    Transform("aes128gcm16", "aes128gcm16"),
    Transform("aes256gcm16", "aes256gcm16"),
    Transform("chacha20poly1305", "chacha20poly1305"),
    Transform("aes128-sha1", "aes128", "sha1"),
    Transform("aes128-sha256", "aes128", "sha256"),
    Transform("aes128-sha384", "aes128", "sha384"),
    Transform("aes128-sha512", "aes128", "sha512"),
    Transform("aes256-sha1", "aes256", "sha1"),
    Transform("aes256-sha256", "aes256", "sha256"),
    Transform("aes256-sha384", "aes256", "sha384"),
    Transform("aes256-sha512", "aes256", "sha512"),
    Transform("3des-sha1", "3des", "sha1"),
    Transform("null-sha256", "null", "sha256"),
    Transform("ah-sha1", ah="sha1"),
    Transform("ah-sha256", ah="sha256"),
    Transform("esp-aes128-sha256+ah-sha1", "aes128", "sha256", "sha1"),
]


@dataclass(frozen=True)
class Variant:
    index: int
    mode: str
    encap: bool
    esn: bool

    @property
    def id(self) -> str:
        return f"{self.mode}-{'udp' if self.encap else 'raw'}-{'esn' if self.esn else 'noesn'}"


VARIANTS = [Variant(i, m, u, e) for i, (m, u, e) in enumerate(
    (m, u, e) for m in ("tunnel", "transport") for u in (False, True) for e in (False, True))]


PRIMARY_TRANSPORT = "transport-udp-noesn"
EXPERT_ERROR = 0x00800000     # Wireshark's PI_ERROR expert severity


def variants_for(t: Transform) -> list[Variant]:
    return [v for v in VARIANTS if not (t.ah and v.encap)]


@dataclass
class Conn:
    """One connection of the pair: its addresses and both directions' keys/SAs."""
    t: Transform
    v: Variant
    a_to_b: DirKeys
    b_to_a: DirKeys

    # addresses the traffic of this connection uses
    @property
    def inner_a(self):
        return f"10.1.0.{10 + self.v.index}" if self.v.mode == "tunnel" else self.outer_a

    @property
    def inner_b(self):
        return f"10.2.0.{10 + self.v.index}" if self.v.mode == "tunnel" else self.outer_b

    # Transport connections need their own address pair each (their selectors are the
    # addresses); one of them uses the gateways' primary WAN addresses, the others
    # secondary ones, which also checks that `local:` is the source of what vpnd sends.
    @property
    def primary(self) -> bool:
        return self.v.mode == "tunnel" or self.v.id == PRIMARY_TRANSPORT

    @property
    def outer_a(self):
        return "10.200.0.1" if self.primary else f"10.200.0.{100 + self.v.index}"

    @property
    def outer_b(self):
        return "10.200.0.2" if self.primary else f"10.200.0.{150 + self.v.index}"

    @property
    def sender_a(self):     # namespace whose traffic goes A -> B
        return "hosta" if self.v.mode == "tunnel" else "gwa"

    @property
    def sender_b(self):
        return "hostb" if self.v.mode == "tunnel" else "gwb"

    def sa(self, direction: str) -> SaPair:
        k, src, dst = ((self.a_to_b, self.outer_a, self.outer_b) if direction == "ab"
                       else (self.b_to_a, self.outer_b, self.outer_a))
        return SaPair(self.t, k, mode=self.v.mode, encap=self.v.encap, esn=self.v.esn,
                      src=src, dst=dst)

    def yaml(self, side: str) -> str:
        a = side == "gwa"
        local, peer = (self.outer_a, self.outer_b) if a else (self.outer_b, self.outer_a)
        lts, rts = (self.inner_a, self.inner_b) if a else (self.inner_b, self.inner_a)
        out_k, in_k = (self.a_to_b, self.b_to_a) if a else (self.b_to_a, self.a_to_b)
        esn = "-esn" if self.v.esn else ""
        lines = [f"  c{self.v.index}:", f"    local: {local}", f"    peer: {peer}",
                 f"    local_ts: [{lts}/32]", f"    remote_ts: [{rts}/32]",
                 f"    mode: {self.v.mode}", f"    encap: {'true' if self.v.encap else 'false'}",
                 "    replay_window: 64"]
        if self.t.esp_text:
            lines.append(f"    esp: {self.t.esp_text}{esn}")
        if self.t.ah:
            lines.append(f"    ah: {self.t.ah}{esn}")
        lines += ["    manual:", f"      inbound: {in_k.manual_yaml()}",
                  f"      outbound: {out_k.manual_yaml()}"]
        return "\n".join(lines) + "\n"


def vpnd_argv() -> list[str]:
    # this checkout's vpnd (PYTHONPATH=ROOT), not whatever `vpnd` is first on PATH
    return [sys.executable, "-c", "import sys; from vpnd.cli import vpnd_main; sys.exit(vpnd_main())"]


class VpndPair:
    """A topology with one vpnd per gateway, carrying one connection per variant."""

    def __init__(self, t: Transform):
        self.t = t
        self.conns: dict[str, Conn] = {}
        for v in variants_for(t):
            base = 0x10000 * (v.index + 1)
            self.conns[v.id] = Conn(t, v, DirKeys.random(t, base + 0xA1, base + 0xA2),
                                    DirKeys.random(t, base + 0xB1, base + 0xB2))
        self.topo = Topology(prefix="hns")
        self.procs = {}

    def __enter__(self):
        topo = self.topo.__enter__()
        try:
            for c in self.conns.values():
                if c.v.mode == "tunnel":
                    if c.inner_a != "10.1.0.10":
                        topo.ip("hosta", f"addr add {c.inner_a}/16 dev eth0")
                        topo.ip("hostb", f"addr add {c.inner_b}/16 dev eth0")
                elif not c.primary:
                    topo.ip("gwa", f"addr add {c.outer_a}/24 dev wan")
                    topo.ip("gwb", f"addr add {c.outer_b}/24 dev wan")
            for side in ("gwa", "gwb"):
                self.start(side)
            self.wait_ready()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        for side, p in self.procs.items():
            if p.poll() is None:
                self.topo.stop(p)
        self.topo.__exit__(*exc)

    def config(self, side: str) -> str:
        run = Path(self.topo.workdir) / f"vpnd-{side}"
        head = (f"daemon:\n  tun: vpnd0\n  mtu: 1400\n  control_socket: {run}/vpnd.sock\n"
                f"  log_level: info\nconnections:\n")
        return head + "".join(c.yaml(side) for c in self.conns.values())

    def start(self, side: str) -> None:
        cfg = Path(self.topo.workdir) / f"vpnd-{side}.yaml"
        cfg.write_text(self.config(side))
        log = open(Path(self.topo.workdir) / f"vpnd-{side}.log", "wb")
        self.procs[side] = self.topo.popen(side, [*vpnd_argv(), "--config", str(cfg)],
                                           env={"PYTHONPATH": str(ROOT)},
                                           stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def status(self, side: str) -> tuple[dict, str]:
        """`vpnctl status --json` of one daemon: (parsed, raw text)."""
        sock = Path(self.topo.workdir) / f"vpnd-{side}" / "vpnd.sock"
        r = self.topo.run(side, [sys.executable, "-c", "import sys; from vpnd.cli import "
                                 "vpnctl_main; sys.exit(vpnctl_main())", "--socket", str(sock),
                                 "status", "--json"], env={"PYTHONPATH": str(ROOT)})
        text = r.stdout.decode()
        return json.loads(text), text

    def _all_up(self, side: str) -> bool:
        """Every connection's SAs installed, per vpnctl status (the route alone can come
        before the SA)."""
        if not (Path(self.topo.workdir) / f"vpnd-{side}" / "vpnd.sock").exists():
            return False
        try:
            status, _ = self.status(side)
        except (TopologyError, ValueError):
            return False
        up = {c["name"] for c in status["connections"] if c["state"] == "up"}
        return up >= {f"c{c.v.index}" for c in self.conns.values()}

    def logs(self) -> str:
        return "".join(f"\n--- vpnd {s} log (tail) ---\n" +
                       (Path(self.topo.workdir) / f"vpnd-{s}.log").read_text(errors="replace")[-3000:]
                       for s in ("gwa", "gwb"))

    def alive(self) -> None:
        dead = [s for s, p in self.procs.items() if p.poll() is not None]
        if dead:
            raise AssertionError(f"vpnd exited in {dead}{self.logs()}")

    def wait_ready(self, timeout: float = 20) -> None:
        """Until both daemons route every connection's remote side into their TUN: tunnel
        mode by reverse route injection, transport mode (the gateway's own traffic to
        the peer) by vpnd's policy routing (docs/daemon.md), in whichever table."""
        deadline = time.monotonic() + timeout
        for side in ("gwa", "gwb"):
            while True:
                self.alive()
                routes = self.topo.run(side, ["ip", "route", "show", "table", "all",
                                              "dev", "vpnd0"], check=False).stdout.decode()
                have = {line.split()[0].removesuffix("/32") for line in routes.splitlines()}
                want = {c.inner_b if side == "gwa" else c.inner_a for c in self.conns.values()}
                if want <= have and self._all_up(side):
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"{side}: routes into vpnd0 missing: {routes!r}"
                                         f"{self.logs()}")
                time.sleep(0.1)


@pytest.fixture(scope="module", params=TRANSFORMS, ids=lambda t: t.name)
def pair(request):
    if not (ROOT / "vpnd" / "daemon.py").exists():
        pytest.skip("vpnd/daemon.py is not there yet")
    with VpndPair(request.param) as p:
        yield p


def _ping(pair: VpndPair, c: Conn, size: int, pattern: str) -> subprocess.CompletedProcess:
    return pair.topo.run(c.sender_a, ["ping", "-n", "-q", "-c", "2", "-i", "0.05", "-W", "2",
                                      "-s", str(size), "-p", pattern, "-I", c.inner_a,
                                      c.inner_b], check=False, timeout=20)


def _same(pkt: bytes, mode: str):
    """What must survive the tunnel unchanged. Tunnel mode: the whole inner packet.
    Transport mode: addresses, protocol and payload; the rest of the IP header is not
    carried (RFC 4303 3.1.1) and comes from the outer header, which for ESP in UDP is a
    new one (RFC 3948 3.1.2), so identification, DF and TTL may differ."""
    if mode == "tunnel":
        return pkt
    ihl = (pkt[0] & 0x0F) * 4
    return pkt[12:20], pkt[9], pkt[ihl:]


def _by_src(pkts: list[bytes], src: str, dst: str, mode: str) -> Counter:
    return Counter(_same(p, mode) for p in pkts if ip_addrs(p) == (src, dst))


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.id)
def test_wire_matches_scapy_and_tshark(pair: VpndPair, variant: Variant):
    if variant.id not in pair.conns:
        pytest.skip("AH is not UDP-encapsulated (RFC 3948 is ESP only)")
    c = pair.conns[variant.id]
    topo = pair.topo
    wan = topo.capture("gwa", "wan", f"wan-{variant.id}.pcap")
    tun_a = topo.capture("gwa", "vpnd0", f"tuna-{variant.id}.pcap")
    tun_b = topo.capture("gwb", "vpnd0", f"tunb-{variant.id}.pcap")
    try:
        pings = [_ping(pair, c, 56, "a5"),
                 _ping(pair, c, 1000, "5a")]   # several cipher blocks, other padding length
    finally:
        for cap in (wan, tun_a, tun_b):
            cap.stop()
    pair.alive()
    wan_pkts = read_ip_packets(wan.path)
    clear = [p for p in wan_pkts if p[9] == 1 and set(ip_addrs(p)) == {c.inner_a, c.inner_b}]
    assert not clear, (f"{len(clear)} ICMP packets of {c.v.id} crossed the WAN in clear "
                       f"(nothing routed them into vpnd0){pair.logs()}")
    ours = {c.a_to_b.esp_spi: (c.outer_a, c.outer_b), c.a_to_b.ah_spi: (c.outer_a, c.outer_b),
            c.b_to_a.esp_spi: (c.outer_b, c.outer_a), c.b_to_a.ah_spi: (c.outer_b, c.outer_a)}
    for pkt in wan_pkts:
        tag = ipsec_spi(pkt)
        if tag and tag[1] in ours:
            assert ip_addrs(pkt) == ours[tag[1]], (
                f"SPI {tag[1]:#x} sent {ip_addrs(pkt)[0]} -> {ip_addrs(pkt)[1]}, but the "
                f"connection's local/peer are {ours[tag[1]][0]} -> {ours[tag[1]][1]}")
    for r in pings:
        assert r.returncode == 0, (f"ping {c.inner_a} -> {c.inner_b} failed: "
                                   f"{r.stdout.decode()}{pair.logs()}")

    # (a) every IPsec packet of this connection opens in scapy to what entered the TUN
    sa = {"ab": c.sa("ab"), "ba": c.sa("ba")}
    spis = {"ab": {c.a_to_b.esp_spi, c.a_to_b.ah_spi} - {0},
            "ba": {c.b_to_a.esp_spi, c.b_to_a.ah_spi} - {0}}
    opened = {"ab": Counter(), "ba": Counter()}
    seen_wire = Counter()
    for pkt in wan_pkts:
        tag = ipsec_spi(pkt)
        if tag is None:
            continue
        for d in ("ab", "ba"):
            if tag[1] in spis[d]:
                # outer protocol must be what the variant says (RFC 3948 / raw 50 / AH 51)
                want_proto = 51 if c.t.ah else (17 if c.v.encap else 50)
                assert pkt[9] == want_proto, f"outer protocol {pkt[9]}, expected {want_proto}"
                opened[d][_same(sa[d].open(pkt), c.v.mode)] += 1   # raises on a bad ICV
                seen_wire[d] += 1
    assert seen_wire["ab"] >= 4 and seen_wire["ba"] >= 4, f"IPsec packets seen: {seen_wire}"
    a_tun, b_tun = read_ip_packets(tun_a.path), read_ip_packets(tun_b.path)
    # A->B: read by gwa's vpnd from its TUN == scapy's plaintext == written to gwb's TUN
    assert opened["ab"] == _by_src(a_tun, c.inner_a, c.inner_b, c.v.mode)
    assert opened["ab"] == _by_src(b_tun, c.inner_a, c.inner_b, c.v.mode)
    assert opened["ba"] == _by_src(b_tun, c.inner_b, c.inner_a, c.v.mode)
    assert opened["ba"] == _by_src(a_tun, c.inner_b, c.inner_a, c.v.mode)

    # (c) tshark, given the same keys, decodes the capture without errors
    if c.t.tshark_ok and not c.v.esn:
        uats = [tshark_uat(c.t, c.a_to_b, c.outer_a, c.outer_b),
                tshark_uat(c.t, c.b_to_a, c.outer_b, c.outer_a)]
        rows = [r for r in tshark_decode(wan.path, uats)
                if r["esp.spi"] and int(r["esp.spi"], 16) in spis["ab"] | spis["ba"]]
        assert len(rows) == seen_wire["ab"] + seen_wire["ba"]
        for r in rows:
            assert r["esp.icv_good"] == "1" and r["esp.icv_bad"] != "1", r
            assert not r["_ws.malformed"], r
            assert str(EXPERT_ERROR) not in r["_ws.expert.severity"].split(","), r
            assert r["icmp.type"] in ("0", "8"), r
            # ping's payload: a timestamp, then the -p pattern
            assert "a5" * 8 in r["data.data"] or "5a" * 8 in r["data.data"], r

    # (b) packets sealed by scapy are accepted by gwb's vpnd and leave its TUN unchanged
    _inject_and_check(pair, c)

    # gwb counted what it received, rejected nothing, and shows no key anywhere
    status, text = pair.status("gwb")
    child = next(ch for sa in status["ike_sas"] for ch in sa["child_sas"]
                 if ch["name"] == f"c{c.v.index}")
    assert child["packets_in"] >= seen_wire["ab"] + 3, child
    assert child["auth_failures"] == 0 and child["replay_drops"] == 0, child
    logs = pair.logs()
    for k in (c.a_to_b, c.b_to_a):
        for secret in (k.enc_key, k.auth_key, k.ah_key):
            if len(secret) >= 8:
                assert secret.hex() not in text.lower() and secret.hex() not in logs.lower(), \
                    "key material in vpnctl status or the log"


def _inject_and_check(pair: VpndPair, c: Conn) -> None:
    from scapy.layers.inet import ICMP, IP
    from scapy.packet import Raw

    topo = pair.topo
    sa = c.sa("ab")
    inner = [bytes(IP(src=c.inner_a, dst=c.inner_b, id=0x4200 + i, ttl=64) /
                   ICMP(type=8, id=0x4242, seq=i) / Raw(b"scapy-injected-%d " % i * 8))
             for i in range(3)]
    # sequence numbers far above what gwa's vpnd used, so the replay window accepts them
    outer = [sa.seal(p, 100_000 + i) for i, p in enumerate(inner)]
    want = {_same(p, c.v.mode) for p in inner}
    tun_b = topo.capture("gwb", "vpnd0", f"inject-tunb-{c.v.id}.pcap", "icmp")
    host_cap = None
    if c.v.mode == "tunnel":
        host_cap = topo.capture("hostb", "eth0", f"inject-hostb-{c.v.id}.pcap", "icmp")
    try:
        mac = topo.run("gwb", ["cat", "/sys/class/net/wan/address"]).stdout.decode().strip()
        r = topo.run("gwa", [sys.executable, "-c", _WIRE_SENDER, "wan", mac],
                     input=b"\n".join(p.hex().encode() for p in outer), timeout=20)
        assert r.returncode == 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            got = [p for p in read_ip_packets(tun_b.path) if _same(p, c.v.mode) in want]
            if len(got) == len(inner):
                break
            time.sleep(0.1)
    finally:
        tun_b.stop()
        if host_cap:
            host_cap.stop()
    pair.alive()
    out_of_tun = [_same(p, c.v.mode) for p in read_ip_packets(tun_b.path)]
    for p in inner:
        assert _same(p, c.v.mode) in out_of_tun, (f"scapy-sealed packet not written unchanged to gwb's TUN "
                                 f"({IP(p).summary()}){pair.logs()}")
    if host_cap:
        at_host = [IP(p) for p in read_ip_packets(host_cap.path)]
        for p in inner:
            want = IP(p)
            assert any(h.src == want.src and h[ICMP].seq == want[ICMP].seq and h[ICMP].id == 0x4242
                       and bytes(h[ICMP].payload) == bytes(want[ICMP].payload) and h.ttl == 63
                       for h in at_host if h.haslayer(ICMP) and h[ICMP].type == 8), \
                f"injected packet did not reach hostb: {want.summary()}"


# Puts IPv4 packets (hex lines on stdin) on a link as Ethernet frames to a MAC address:
# below routing, so gwa's own vpnd (whose transport-mode policy routing would take
# locally sent packets to the peer into its TUN) never sees them.
_WIRE_SENDER = r"""
import socket, sys
ifname, mac = sys.argv[1], bytes.fromhex(sys.argv[2].replace(":", ""))
s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
for line in sys.stdin.read().split():
    s.sendto(bytes.fromhex(line), (ifname, 0x0800, 0, 0, mac))
"""


def test_capture_helpers_agree_with_tshark(tmp_path):
    """The scapy/tshark glue itself: packets sealed by scapy open in tshark with good ICVs
    (so a tshark failure above is about vpnd's packets, not the UAT strings)."""
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw
    from scapy.utils import wrpcap

    pkts, uats = [], []
    for i, t in enumerate(tt for tt in TRANSFORMS if tt.tshark_ok):
        for encap in (False, True):
            k = DirKeys.random(t, 0x500 + 2 * i + encap, 0)
            sa = SaPair(t, k, mode="tunnel", encap=encap, esn=False, src="10.200.0.1",
                        dst="10.200.0.2")
            inner = bytes(IP(src="10.1.0.10", dst="10.2.0.10") / ICMP(seq=i) / Raw(b"\xa5" * 40))
            outer = sa.seal(inner, 1)
            assert sa.open(outer) == inner
            pkts.append(Ether() / IP(outer))
            uats.append(tshark_uat(t, k, "10.200.0.1", "10.200.0.2"))
    wrpcap(str(tmp_path / "x.pcap"), pkts)
    rows = tshark_decode(tmp_path / "x.pcap", uats)
    assert len(rows) == len(pkts)
    for r in rows:
        assert r["esp.icv_good"] == "1" and r["icmp.type"] == "8" and not r["_ws.malformed"], r
        assert r["data.data"] == "a5" * 40, r
