"""Issue 8.2 at the daemon: 10,000 spoofed IKE_SA_INIT requests from random addresses of the
WAN (none configured, no %any connection) against a running vpnd: no answer at all, a
bounded number of log lines (the first in full, then summaries with counts), and the
configured peer still comes up. Figures under load: bench/dos."""
from __future__ import annotations

import re
import sys
import time

import pytest

from vpnd.ike.actions import SendDatagram

from .test_ikev2_strongswan import PAIRS, ik2_topo, vpnds, wait_child  # noqa: F401
from .test_ikev2_vpnd import pair_confs, up_timed
from .topology import WAN_B

pytestmark = [pytest.mark.netns]

FLOOD = r'''
import os, random, socket, struct, sys, time
dst, tmpl, n, pps = sys.argv[1], bytes.fromhex(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
dstb = socket.inet_aton(dst)
rnd = random.Random(8)
t0 = time.monotonic()
for i in range(n):
    src = socket.inet_aton(f"10.200.0.{rnd.randrange(3, 251)}")  # the WAN subnet, never gwa/gwb
    body = rnd.randbytes(8) + tmpl[8:]
    udp = struct.pack("!HHHH", rnd.randrange(1024, 65535), 500, 8 + len(body), 0) + body
    pkt = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(body), 0, 0, 64, 17, 0, src, dstb) + udp
    s.sendto(pkt, (dst, 0))
    d = t0 + (i + 1) / pps - time.monotonic()
    if d > 0:
        time.sleep(d)
'''


def _template() -> bytes:
    from vpnd.config import parse_config
    from vpnd.ike.manager import IkeManager

    c = {"version": 2, "local": "10.200.0.9", "peer": WAN_B, "psk": "x" * 16, "ike": "aes128-sha256-modp2048",
         "esp": "aes128gcm16", "start": "none"}
    m = IkeManager(parse_config({"daemon": {}, "connections": {"x": c}}), now=0.0)
    return next(a.data for a in m.initiate("x", 0.0) if isinstance(a, SendDatagram))


def test_spoofed_init_flood_no_answer_bounded_log(ik2_topo, vpnds):
    topo = ik2_topo
    ike, esp = PAIRS[0]
    ca, cb = pair_confs(topo, ike=ike, esp=esp)
    b = vpnds(topo, "gwb", cb)
    a = vpnds(topo, "gwa", ca)
    topo.run("gwb", ["nft", "-f", "-"], input=(
        "table inet v2flood {\n chain out {\n  type filter hook output priority 0;\n"
        "  udp sport { 500, 4500 } counter name ikeout\n }\n counter ikeout { }\n}\n").encode())
    lines_before = len(b.logpath.read_text(errors="replace").splitlines())
    topo.run("gwa", [sys.executable, "-c", FLOOD, WAN_B, _template().hex(), "10000", "2000"], timeout=120)
    # the summary of the first interval comes within 10 s of the first packet
    deadline = time.monotonic() + 30
    while "suppressed" not in b.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    out = topo.run("gwb", ["nft", "list", "counter", "inet", "v2flood", "ikeout"]).stdout.decode()
    answers = int(re.search(r"packets (\d+)", out).group(1))
    new = b.logpath.read_text(errors="replace").splitlines()[lines_before:]
    flood_lines = [ln for ln in new if "IKE_SA_INIT from" in ln or "suppressed" in ln]
    summaries = [ln for ln in new if "suppressed" in ln]
    counted = sum(int(re.search(r"suppressed (\d+)", ln).group(1)) for ln in summaries)
    print(f"10000 spoofed IKE_SA_INIT: {answers} answers, {len(new)} log lines "
          f"({len(summaries)} summaries counting {counted} messages)")
    assert answers == 0, out
    assert summaries and counted > 0, new[-20:]
    assert len(flood_lines) <= 4 and len(new) <= 10, new[-20:]
    assert b.alive()
    # the configured peer is unaffected
    up_timed(a)
    wait_child(b)
    topo.check_traffic(mbytes=0.2)
