"""IP compression (issue 12) between two real vpnds in namespaces, manual keys:

    hosta ── gwa(vpnd) ══ WAN ══ gwb(vpnd) ── hostb

The seed's transform set `ah-sha-hmac esp-aes esp-sha-hmac comp-lzs` (IPComp with LZS inside
ESP inside AH) and `comp: deflate` over AES-GCM with configured CPIs: compressible pings both
ways, a checksummed compressible TCP transfer both ways, a random (incompressible) one, the
packets on the WAN smaller than what the hosts sent, and the counters in status.
"""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from . import vpnd_proc
from .topology import HOST_A, HOST_B, Topology
from .vpnd_proc import Vpnd, gw_links, manual_pair

pytestmark = pytest.mark.netns

# hashes what it receives, then sends back a compressible stream of the same length
_SERVER = r"""
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1); s.settimeout(float(sys.argv[2]))
print("ready", flush=True)
c, _ = s.accept(); c.settimeout(float(sys.argv[2]))
n = int.from_bytes(c.recv(8, socket.MSG_WAITALL), "big")
h = hashlib.sha256(); got = 0
while got < n:
    b = c.recv(65536)
    if not b: break
    h.update(b); got += len(b)
c.sendall(h.digest())
line = b"".join(b"%06d the quick brown fox jumps over the lazy dog\n" % i for i in range(20000))
c.sendall(line[:n]); c.close()
"""
_CLIENT = r"""
import hashlib, json, socket, sys
n = int(sys.argv[3])
line = b"".join(b"%06d the quick brown fox jumps over the lazy dog\n" % i for i in range(20000))
data = line[:n]
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[4]))
c.sendall(n.to_bytes(8, "big")); c.sendall(data)
digest = c.recv(32, socket.MSG_WAITALL)
back = b""
while len(back) < n:
    b = c.recv(65536)
    if not b: break
    back += b
want = hashlib.sha256(data).digest()
print(json.dumps({"up_ok": digest == want, "down_ok": back == data}))
"""


def compressible_transfer(topo, client, server, server_ip, n=600_000, port=5301, timeout=120):
    srv = topo.popen(server, [sys.executable, "-c", _SERVER, str(port), str(timeout)])
    try:
        assert srv.stdout.readline().strip() == b"ready"
        c = topo.run(client, [sys.executable, "-c", _CLIENT, server_ip, str(port), str(n),
                              str(timeout)], check=False, timeout=timeout + 10)
        srv.wait(timeout=timeout)
    finally:
        topo.stop(srv)
    assert c.returncode == 0, c.stderr.decode(errors="replace")[-800:]
    return c.stdout.decode()


@pytest.fixture(scope="module")
def topo():
    with Topology(prefix="ipc") as t:
        yield t


@pytest.fixture
def started(topo):
    out: list[Vpnd] = []
    yield out
    for d in out:
        if d.alive():
            assert d.stop() == 0, d.log()
    for role in ("gwa", "gwb"):
        assert "vpnd0" not in gw_links(topo, role)


def seed_pair(topo, monkeypatch):
    """The seed's `crypto ipsec transform-set T ah-sha-hmac esp-aes esp-sha-hmac comp-lzs`,
    written as vpnd's esp: line (keys for aes128 + sha1, AH sha1; well-known CPI 3)."""
    monkeypatch.setitem(vpnd_proc.ALGORITHMS, "seed", ("aes128-sha1", "sha1"))
    ca, cb = manual_pair(topo, "seed")
    fix = lambda t: t.replace("    esp: aes128-sha1\n    ah: sha1\n",  # noqa: E731
                              "    esp: ah-sha-hmac esp-aes esp-sha-hmac comp-lzs\n")
    ca, cb = fix(ca), fix(cb)
    assert "comp-lzs" in ca and "comp-lzs" in cb
    return ca, cb, ("0003", "0003"), "lzs"


def deflate_pair(topo, monkeypatch):
    """comp: deflate over AES-GCM, each direction with its own configured CPI."""
    ca, cb = manual_pair(topo, "aes128gcm16", extra_conn="comp: deflate")
    # gwa receives with CPI 0x5000 and sends with 0x6000; gwb the other way round
    ca = ca.replace("      inbound: {", "      inbound: {ipcomp: {cpi: 0x5000}, ") \
           .replace("      outbound: {", "      outbound: {ipcomp: {cpi: 0x6000}, ")
    cb = cb.replace("      inbound: {", "      inbound: {ipcomp: {cpi: 0x6000}, ") \
           .replace("      outbound: {", "      outbound: {ipcomp: {cpi: 0x5000}, ")
    return ca, cb, ("5000", "6000"), "deflate"


@pytest.mark.parametrize("make", [seed_pair, deflate_pair], ids=["seed-comp-lzs", "deflate"])
def test_manual_ipcomp_tunnel(topo, started, monkeypatch, make):
    ca, cb, (cpi_in, cpi_out), alg = make(topo, monkeypatch)
    a, b = Vpnd(topo, "gwa", ca), Vpnd(topo, "gwb", cb)
    started.extend([a, b])
    a.start()
    b.start()
    topo.wait_ping("hosta", HOST_B, timeout=15)
    # compressible pings (a repeated pattern) both ways
    for src, dst in (("hosta", HOST_B), ("hostb", HOST_A)):
        r = topo.ping(src, dst, count=3, size=1000, pattern="61626364", interval=0.1, timeout=3)
        assert r.returncode == 0, r.stdout
    # on the WAN the 1028-byte pings travel in much smaller ESP/AH packets
    with topo.capture("gwb", "wan", f"ipcomp-{alg}.pcap", "ip") as cap:
        assert topo.ping("hosta", HOST_B, count=2, size=1000, pattern="61626364",
                         interval=0.1, timeout=3).returncode == 0
    lines = subprocess.run(["tcpdump", "-vnr", str(cap.path)], capture_output=True,
                           text=True).stdout.splitlines()
    sizes = [int(m.group(1)) for ln in lines for m in [re.search(r"length (\d+)", ln)] if m
             and ("proto ESP" in ln or "proto AH" in ln)]
    assert sizes and max(sizes) < 400, lines
    assert not any("ICMP echo" in ln for ln in lines), lines
    # checksummed transfers: compressible both ways, then random data (goes uncompressed)
    res = compressible_transfer(topo, "hosta", "hostb", HOST_B)
    assert '"up_ok": true' in res and '"down_ok": true' in res, res
    res = topo.tcp_transfer("hosta", "hostb", HOST_B, mbytes=1, timeout=120)
    assert res["up_ok"] and res["down_ok"]
    for d, (ci, co) in ((a, (cpi_in, cpi_out)), (b, (cpi_out, cpi_in))):
        ch = d.child()
        assert ch["ipcomp"] == alg and (ch["cpi_in"], ch["cpi_out"]) == (ci, co)
        assert ch["ipcomp_compressed"] > 100 and ch["ipcomp_decompressed"] > 100
        assert ch["ipcomp_uncompressed"] > 100            # acks, random data
        assert ch["ipcomp_errors"] == 0 and ch["auth_failures"] == 0
