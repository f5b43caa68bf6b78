"""IKEv1 vpnd <-> vpnd in network namespaces: rsa-encr (which strongSwan lacks), PSK in Main
and Aggressive Mode, certificates, NAT-T, with ping and a checksummed TCP transfer."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

# fixtures (topo, topo_nat, vpnds) and helpers shared with the charon tests
from .test_ikev1_strongswan import (DN_A, DN_B, PAIRS, _pki, check_traffic, topo, topo_nat,  # noqa: F401,F811
                                    vpnd_conf, vpnds, wait_child)
from .topology import LAN_A, LAN_B, WAN_B
from .vpnd_proc import FAST_TIMERS, wait_until

pytestmark = [pytest.mark.netns]


def _pair(topo, vpnds, *, ike, esp, auth_a=None, auth_b=None, aggressive=False, extra_a="", extra_b="",
          start_b="none", daemon_extra=""):
    b = vpnds(topo, "gwb", vpnd_conf(topo, "gwb", local=WAN_B, peer=topo.gwa_public, lts=LAN_B, rts=LAN_A,
                                     ike=ike, esp=esp, auth=auth_b, extra=extra_b, start=start_b,
                                     aggressive=aggressive, daemon_extra=daemon_extra))  # a responder too (issue 8.1)
    a = vpnds(topo, "gwa", vpnd_conf(topo, "gwa", local=topo.gwa_wan, peer=WAN_B, lts=LAN_A, rts=LAN_B,
                                     ike=ike, esp=esp, auth=auth_a, aggressive=aggressive, start="start",
                                     extra=extra_a, daemon_extra=daemon_extra))
    return a, b


@pytest.mark.parametrize("aggressive", [False, True], ids=["main", "aggressive"])
def test_rsa_encr(topo, vpnds, aggressive):
    pki = _pki(Path(topo.workdir))
    ike, esp = PAIRS[1]
    auth_a = (f"    auth: {{rsa_encr: {{key: {pki['gw-a'][1]}, peer_pubkey: {pki['gw-b'][2]}}}}}\n"
              "    local_id: \"@gw-a.example\"\n    remote_id: \"@gw-b.example\"")
    auth_b = (f"    auth: {{rsa_encr: {{key: {pki['gw-b'][1]}, peer_pubkey: {pki['gw-a'][2]}}}}}\n"
              "    local_id: \"@gw-b.example\"\n    remote_id: \"@gw-a.example\"")
    a, b = _pair(topo, vpnds, ike=ike, esp=esp, auth_a=auth_a, auth_b=auth_b, aggressive=aggressive)
    ga, gb = wait_child(a), wait_child(b)
    assert ga["ike"]["auth"] == "rsa-encr" and gb["ike"]["remote_id"] == "@gw-a.example"
    assert ga["child"]["spi_in"] == gb["child"]["spi_out"]
    check_traffic(topo, mbytes=2)


@pytest.mark.parametrize("ike,esp", PAIRS, ids=[p[0] for p in PAIRS])
@pytest.mark.parametrize("aggressive", [False, True], ids=["main", "aggressive"])
def test_psk(topo, vpnds, ike, esp, aggressive):
    a, b = _pair(topo, vpnds, ike=ike, esp=esp, aggressive=aggressive)
    ga, gb = wait_child(a), wait_child(b)
    assert ga["child"]["spi_out"] == gb["child"]["spi_in"]
    assert not ga["child"]["udp_encap"]  # no NAT between two vpnds: raw ESP
    check_traffic(topo, mbytes=2)


def test_rsa_sig(topo, vpnds):
    pki = _pki(Path(topo.workdir))
    ike, esp = PAIRS[0]
    auth_a = (f"    auth: {{cert: {pki['gw-a'][0]}, key: {pki['gw-a'][1]}, ca: {pki['ca']}}}\n"
              f"    remote_id: \"{DN_B}\"")
    auth_b = (f"    auth: {{cert: {pki['gw-b'][0]}, key: {pki['gw-b'][1]}, ca: {pki['ca']}}}\n"
              f"    remote_id: \"{DN_A}\"")
    a, _ = _pair(topo, vpnds, ike=ike, esp=esp, auth_a=auth_a, auth_b=auth_b)
    assert wait_child(a)["ike"]["remote_id"] == DN_B
    check_traffic(topo, mbytes=1)


def test_nat_traversal(topo_nat, vpnds):
    topo = topo_nat
    ike, esp = PAIRS[1]
    a, b = _pair(topo, vpnds, ike=ike, esp=esp, extra_a="nat_keepalive: 2")
    ga, gb = wait_child(a), wait_child(b)
    assert ga["ike"]["nat_local"] and gb["ike"]["nat_remote"]
    assert ga["child"]["udp_encap"] and gb["child"]["udp_encap"]
    assert gb["ike"]["remote"].startswith("10.200.0.254:")
    check_traffic(topo, mbytes=1)


def test_esp_ah_bundle_transport(topo, vpnds):
    """The seed's "ESP + AH" transform set in transport mode between the gateways."""
    esp = "ah-sha-hmac esp-aes 256 esp-sha-hmac"
    vpnds(topo, "gwb", vpnd_conf(topo, "gwb", local=WAN_B, peer=topo.gwa_public, lts=f"{WAN_B}/32",
                                     rts=f"{topo.gwa_wan}/32", ike=PAIRS[0][0], esp=f"\"{esp}\"",
                                     extra="mode: transport"))
    a = vpnds(topo, "gwa", vpnd_conf(topo, "gwa", local=topo.gwa_wan, peer=WAN_B, lts=f"{topo.gwa_wan}/32",
                                     rts=f"{WAN_B}/32", ike=PAIRS[0][0], esp=f"\"{esp}\"", start="start",
                                     extra="mode: transport"))
    ga = wait_child(a)
    assert ga["child"]["mode"] == "transport" and "AH" in ga["child"]["proposal"]
    r = topo.run("gwa", ["ping", "-c", "3", "-i", "0.2", "-W", "1", WAN_B], check=False)
    assert r.returncode == 0, r.stdout.decode()
    # the echo went through the bundle, not around it
    now = wait_child(a)["child"]
    assert now["packets_out"] >= 3 and now["packets_in"] >= 3, now


def test_trap_per_host(topo, vpnds):
    """start: trap with per_host: the first packet from hosta to hostb brings up an SA pair for
    exactly that host pair (the seed's `set security-association level per-host`)."""
    from .topology import HOST_A, HOST_B

    ike, esp = PAIRS[1]
    vpnds(topo, "gwb", vpnd_conf(topo, "gwb", local=WAN_B, peer=topo.gwa_public, lts=LAN_B, rts=LAN_A,
                                 ike=ike, esp=esp, extra="per_host: true"))
    a = vpnds(topo, "gwa", vpnd_conf(topo, "gwa", local=topo.gwa_wan, peer=WAN_B, lts=LAN_A, rts=LAN_B,
                                     ike=ike, esp=esp, start="trap", extra="per_host: true"))
    assert a.status()["ike_sas"] == []
    r = topo.ping("hosta", HOST_B, count=1, timeout=5)
    assert r.returncode == 0, r.stdout.decode()  # the triggering packet was queued, not lost
    got = wait_child(a)
    assert got["child"]["local_ts"] == [f"{HOST_A}/32"] and got["child"]["remote_ts"] == [f"{HOST_B}/32"]
    check_traffic(topo, mbytes=0.5)


def test_rekeys_under_20pps_ping(topo, vpnds):
    from .test_ikev1_strongswan import _ping_loss

    ike, esp = PAIRS[0]
    life = "lifetime: {ike: 18, seconds: 8}"
    a, _ = _pair(topo, vpnds, ike=ike, esp=esp, extra_a=life, extra_b=life)
    first = wait_child(a)
    topo.wait_ping("hosta", topo.hostb_ip)
    out = topo.run("hosta", ["ping", "-n", "-q", "-i", "0.05", "-c", "500", "-W", "1", topo.hostb_ip],
                   check=False, timeout=60).stdout.decode()
    sent, got = _ping_loss(out)
    now = wait_child(a)
    assert now["child"]["spi_in"] != first["child"]["spi_in"] and now["ike"]["spi_i"] != first["ike"]["spi_i"]
    assert sent == 500 and got == 500, out


def test_dpd_dead_peer_and_restart(topo, vpnds):
    import time

    ike, esp = PAIRS[1]
    dpd = "dpd: {interval: 2, retry: 1, mode: periodic, action: restart}"
    # compressed retransmission: the restarted connection reaches the new vpnd sooner
    a, b = _pair(topo, vpnds, ike=ike, esp=esp, extra_a=dpd, extra_b=dpd, daemon_extra=FAST_TIMERS)
    wait_child(a)
    b.stop(sig=9)
    t0 = time.monotonic()
    while "is dead" not in a.log():
        assert time.monotonic() - t0 < 2 + 6 * 1 + 3, a.log()[-3000:]
        time.sleep(0.1)
    vpnds(topo, "gwb", vpnd_conf(topo, "gwb", local=WAN_B, peer=topo.gwa_public, lts=LAN_B, rts=LAN_A,
                                 ike=ike, esp=esp, extra=dpd, daemon_extra=FAST_TIMERS))
    wait_child(a, timeout=40)
    check_traffic(topo, mbytes=0.5)


@pytest.mark.parametrize("aggressive", [False, True], ids=["main", "aggressive"])
def test_both_ends_start(topo, vpnds, aggressive):
    """`start: start` on both gateways: the two phase-1 negotiations cross. Both ends must
    end up with IPsec SAs (they used to drop each other's SA and never run Quick Mode)."""
    ike, esp = PAIRS[1]
    a, b = _pair(topo, vpnds, ike=ike, esp=esp, aggressive=aggressive, start_b="start",
                 daemon_extra=FAST_TIMERS)
    wait_child(a, timeout=30), wait_child(b, timeout=30)
    check_traffic(topo, mbytes=1)
    # the duplicate ISAKMP SA goes after timers.replaced_grace (10 s, here 2 s); the
    # connection stays up with one on each end

    def established(v):
        return [s for s in v.status()["ike_sas"] if s["version"] == 1 and s["state"] == "ESTABLISHED"]
    for v in (a, b):
        wait_until(lambda: len(established(v)) == 1, 30, f"one ISAKMP SA left in {v.role}: {established(v)}")
    ga, gb = wait_child(a), wait_child(b)
    assert ga["ike"]["spi_i"] == gb["ike"]["spi_i"]
    check_traffic(topo, mbytes=1)


def test_vpnctl_rekey_without_sa_fails_at_once(topo, vpnds):
    """`vpnctl rekey` on a connection that has no SA fails at once, not after its timeout."""
    ike, esp = PAIRS[1]
    a = vpnds(topo, "gwa", vpnd_conf(topo, "gwa", local=topo.gwa_wan, peer=WAN_B, lts=LAN_A, rts=LAN_B,
                                     ike=ike, esp=esp))  # start: none, and no peer running
    for ike_too in (False, True):
        t0 = time.monotonic()
        resp = a.ctl("rekey", name="site", ike=ike_too)
        assert not resp["ok"] and "to rekey" in str(resp), resp
        assert time.monotonic() - t0 < 5


def test_hostile_aggressive_id_cannot_forge_a_log_line(topo, vpnds):
    """Issue 8.4 end to end: an Aggressive Mode message 1 whose ID holds a newline and a
    fake log record, sent to a running vpnd; its log keeps the ID on the one, escaped line."""
    import sys

    ike, esp = PAIRS[0]
    v = vpnds(topo, "gwa", vpnd_conf(topo, "gwa", local=topo.gwa_wan, peer='"%any"', lts=LAN_A, rts=LAN_B,
                                     ike=ike, esp=esp, aggressive=True, extra='remote_id: "@gw.example"'))
    code = r'''
import os, socket, sys
from vpnd.config import parse_config
from vpnd.crypto import dh
from vpnd.ike import codec
from vpnd.ike.v1 import constants as C, payloads as P, policy
conf = parse_config({"connections": {"x": {"version": 1, "peer": "10.200.0.1", "psk": "p" * 20,
                     "local_ts": ["10.2.0.0/16"], "remote_ts": ["10.1.0.0/16"], "ike": sys.argv[1]}}}).connections[0]
pols = policy.p1_policies(conf.ike, C.AUTH_PSK, 3600)[:1]
kx = dh.KeyExchange(pols[0].group)
evil = b"x\n2030-01-01T00:00:00 vpnd[1] INFO FORGED-LOG-LINE ISAKMP SA established\r\x1b[2J"
pls = [policy.p1_sa(pols), P.KE(kx.public), P.Nonce(os.urandom(32)), P.ID(C.ID_FQDN, 0, 0, evil)]
msg = codec.encode_message(codec.Header(os.urandom(8), bytes(8), 0, 1, 0, C.EXCH_AGGRESSIVE, 0, 0), pls)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("10.200.0.2", 500))
s.sendto(msg, ("10.200.0.1", 500))
'''
    topo.run("gwb", [sys.executable, "-c", code, ike], env={"PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    deadline = time.monotonic() + 15
    while "refused" not in v.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    log = v.log()
    refused = [ln for ln in log.splitlines() if "refused" in ln]
    assert refused and "FORGED-LOG-LINE" in refused[0] and "\\x0a" in refused[0], refused
    assert not any(ln.startswith("2030-01-01") or "\x1b" in ln or "\r" in ln for ln in log.splitlines())
    assert v.status()["ike_sas"] == []
