"""Issue 7 suite: operator actions against a misbehaving peer (strongSwan in gwb).

vpnd in gwa (connection "site", start: none, DPD compressed to {interval 2, retry 2}) and
charon in gwb. The peer misbehaves with nftables in its own namespace: it drops all IKE
(UDP 500/4500), answers late (drops IKE for a while, then answers a retransmission), or
answers IKE but not ESP. At each step, `vpnctl status --json` must say what is true: the
connection's state and last_error (issue 7.7), and `vpnctl down` stays final (7.2)."""
from __future__ import annotations

import time

import pytest

from .charon import psk_connection, psk_secret, swanctl_conf
from .topology import HOST_B, LAN_A, LAN_B, WAN_B, Topology
from .vpnd_proc import ike_config, vpnd_starter

pytestmark = [pytest.mark.netns, pytest.mark.strongswan]

PSK = "operator suite key 0123456789"
IKE, ESP = "aes128-sha256-modp2048", "aes128gcm16"


@pytest.fixture
def topo():
    with Topology(prefix="opm") as t:
        yield t


@pytest.fixture
def vpnds(request):
    with vpnd_starter(request) as make:
        yield make


def charon_site(ch, topo, *, version=2, local_ts=LAN_B):
    conn = psk_connection(local=WAN_B, remote=topo.gwa_public, local_ts=local_ts, remote_ts=LAN_A,
                          ike=IKE, esp=ESP, version=version, child="site", remote_id="%any")
    ch.load(swanctl_conf({"site": conn}, {"ike-site": psk_secret(PSK)}))


def vpnd_site(topo, vpnds, *, version=2, start="none", dpd="restart"):
    text = ike_config(topo, "gwa", version=version, psk=PSK, local=topo.gwa_wan, peer=WAN_B,
                      lts=LAN_A, rts=LAN_B, ike=IKE, esp=ESP, start=start,
                      extra=f"dpd: {{interval: 2, retry: 2, mode: periodic, action: {dpd}}}")
    return vpnds(topo, "gwa", text)


NFT_TABLE = "opm_peer"


def peer_drops(topo, what: str | None):
    """In gwb: "ike" drops all UDP 500/4500 both ways, "esp" drops ESP only (raw and in
    UDP 4500: a non-zero SPI where IKE has its zero marker, RFC 3948 2.2), None lifts it."""
    topo.run("gwb", ["nft", "delete", "table", "inet", NFT_TABLE], check=False)
    if what is None:
        return
    if what == "ike":
        match = ["udp dport { 500, 4500 } drop", "udp sport { 500, 4500 } drop"]
    else:
        match = ["meta l4proto esp drop", "udp dport 4500 @th,64,32 != 0 drop",
                 "udp sport 4500 @th,64,32 != 0 drop"]
    rules = "\n".join([f"table inet {NFT_TABLE} {{",
                        " chain in {", "  type filter hook input priority -10;", *[f"  {m}" for m in match], " }",
                        " chain out {", "  type filter hook output priority -10;", *[f"  {m}" for m in match], " }",
                        "}", ""])
    topo.run("gwb", ["nft", "-f", "-"], input=rules.encode())


def conn(v) -> dict:
    (c,) = [c for c in v.status()["connections"] if c["name"] == "site"]
    return c


def wait_state(v, *states, timeout=30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        c = conn(v)
        if c["state"] in states:
            return c
        assert time.monotonic() < deadline, f"state {c['state']!r}, wanted {states}: {c}"
        time.sleep(0.1)


def test_up_and_down_while_the_peer_drops_everything(topo, make_charon, vpnds):
    ch = make_charon(topo, "gwb")
    charon_site(ch, topo)
    v = vpnd_site(topo, vpnds)
    assert conn(v)["state"] == "down" and conn(v)["last_error"] is None
    peer_drops(topo, "ike")
    r = v.ctl("up", name="site", timeout=2)
    assert not r["ok"] and "timed out" in r["error"], r
    assert conn(v)["state"] == "connecting"  # IKE_SA_INIT still retransmitted
    # down while connecting: final, the half-open SA goes
    assert v.ctl("down", name="site", timeout=5)["ok"]
    c = wait_state(v, "down", timeout=10)
    assert c["ike_sas"] == 0 and c["child_sas"] == 0
    # the peer answers again: nothing comes back by itself
    peer_drops(topo, None)
    time.sleep(3)
    assert conn(v)["state"] == "down"
    # up now works, and a success clears the error
    assert v.ctl("up", name="site", timeout=20)["ok"]
    c = conn(v)
    assert c["state"] == "up" and c["last_error"] is None
    topo.wait_ping("hosta", HOST_B, timeout=10)


def test_unanswered_up_ends_failed_with_timeout(topo, make_charon, vpnds):
    ch = make_charon(topo, "gwb")
    charon_site(ch, topo)
    v = vpnd_site(topo, vpnds)
    peer_drops(topo, "ike")
    r = v.ctl("up", name="site", timeout=120)  # until the core gives up
    assert not r["ok"], r
    c = wait_state(v, "failed", timeout=30)
    assert c["last_error"]["reason"] == "timeout", c
    assert c["last_error"]["time"].endswith("Z")


def test_established_tunnel_then_the_peer_drops_everything(topo, make_charon, vpnds):
    """DPD declares the peer dead (action restart): `connecting` with last_error peer_dead;
    rekey and reload meanwhile fail or keep what runs; `down` is final even when the peer
    answers again."""
    ch = make_charon(topo, "gwb")
    charon_site(ch, topo)
    v = vpnd_site(topo, vpnds)
    assert v.ctl("up", name="site", timeout=20)["ok"]
    assert conn(v)["state"] == "up"
    peer_drops(topo, "ike")
    r = v.ctl("rekey", name="site", timeout=2)
    assert not r["ok"], r
    assert v.ctl("reload")["ok"]
    c = wait_state(v, "connecting", "failed", timeout=40)  # DPD: dead, restart runs
    assert c["last_error"]["reason"] in ("peer_dead", "timeout"), c
    assert c["child_sas"] == 0
    # traffic meanwhile: held or dropped, the route into the TUN stays
    assert LAN_B in v.status()["daemon"]["routes"]
    assert v.ctl("down", name="site", timeout=5)["ok"]
    wait_state(v, "down", timeout=10)
    peer_drops(topo, None)
    time.sleep(4)  # longer than a DPD/restart period
    c = conn(v)
    assert c["state"] == "down" and c["ike_sas"] == 0, c


def test_peer_answers_late(topo, make_charon, vpnds):
    """The peer's first answers are lost (it drops IKE for 2 s): vpnd's retransmission is
    answered and `up` succeeds; status says `connecting`, then `up`, with no error left."""
    ch = make_charon(topo, "gwb")
    charon_site(ch, topo)
    v = vpnd_site(topo, vpnds)
    peer_drops(topo, "ike")
    r = v.ctl("up", name="site", timeout=1)
    assert not r["ok"]
    assert conn(v)["state"] == "connecting"
    time.sleep(1)
    peer_drops(topo, None)
    c = wait_state(v, "up", timeout=30)
    assert c["last_error"] is None
    topo.wait_ping("hosta", HOST_B, timeout=10)


def test_peer_answers_ike_but_not_esp(topo, make_charon, vpnds):
    """IKE works, ESP is dropped by the peer: the SA is installed (`up`, true as far as IKE
    can tell), traffic is lost; `down` and `up` still work."""
    ch = make_charon(topo, "gwb")
    charon_site(ch, topo)
    v = vpnd_site(topo, vpnds)
    peer_drops(topo, "esp")
    assert v.ctl("up", name="site", timeout=20)["ok"]
    assert conn(v)["state"] == "up"
    assert topo.ping("hosta", HOST_B, count=2, timeout=1).returncode != 0
    assert v.status()["ike_sas"][0]["child_sas"][0]["packets_out"] >= 2
    time.sleep(3)  # DPD is answered: IKE is alive
    assert conn(v)["state"] == "up"
    assert v.ctl("down", name="site", timeout=10)["ok"]
    assert conn(v)["state"] == "down"
    peer_drops(topo, None)
    assert v.ctl("up", name="site", timeout=20)["ok"]
    topo.wait_ping("hosta", HOST_B, timeout=10)


@pytest.mark.parametrize("version", [2, 1])
def test_traffic_selector_mismatch_is_ike_only_with_its_reason(topo, make_charon, vpnds, version):
    """Issue 7.7 against strongSwan: the peer refuses our subnets. IKEv2: IKE SA up,
    CHILD_SA refused with TS_UNACCEPTABLE; IKEv1: ISAKMP SA up, Quick Mode refused."""
    ch = make_charon(topo, "gwb")
    charon_site(ch, topo, version=version, local_ts="10.9.0.0/16")
    v = vpnd_site(topo, vpnds, version=version)
    r = v.ctl("up", name="site", timeout=15)
    assert not r["ok"], r
    c = wait_state(v, "ike-only", timeout=10)
    assert c["ike_sas"] >= 1 and c["child_sas"] == 0
    assert c["last_error"]["reason"] in (("ts_unacceptable",) if version == 2 else
                                         ("invalid_id", "ts_unacceptable", "no_proposal")), c


@pytest.mark.parametrize("dpd", ["clear", "hold"])
def test_after_dpd_no_cleartext_and_hold_renegotiates_on_traffic(topo, make_charon, vpnds, dpd):
    """Issue 8.6: the peer dies (drops all IKE and ESP); after DPD `clear` or `hold` the
    traffic for its subnets never leaves in clear (gwa's default route leads to gwb);
    with `hold` the next packet once the peer answers again brings the tunnel back
    (strongSwan's dpd_action=trap), with `clear` nothing does."""
    ch = make_charon(topo, "gwb")
    charon_site(ch, topo)
    v = vpnd_site(topo, vpnds, dpd=dpd, start="start")
    topo.ip("gwa", f"route replace default via {WAN_B}")
    wait_state(v, "up", timeout=20)
    peer_drops(topo, "ike")
    topo.run("gwb", ["nft", "add", "rule", "inet", NFT_TABLE, "in", "meta", "l4proto", "esp", "drop"])
    c = wait_state(v, "idle" if dpd == "hold" else "failed", timeout=40)
    assert c["child_sas"] == 0 and c["last_error"]["reason"] == "peer_dead", c
    cap = topo.capture("gwb", "wan", f"dpd-{dpd}.pcap", "icmp[icmptype] == 8")
    try:
        topo.ping("hosta", HOST_B, count=3, interval=0.2, timeout=1)
    finally:
        path = cap.stop()
    seen = topo.run("gwb", ["tcpdump", "-n", "-r", str(path)]).stdout.decode().strip()
    assert seen == "", f"cleartext on the WAN after DPD {dpd}:\n{seen}"
    peer_drops(topo, None)
    if dpd == "hold":
        topo.wait_ping("hosta", HOST_B, timeout=20)  # traffic renegotiates
        assert conn(v)["state"] == "up"
    else:
        assert topo.ping("hosta", HOST_B, count=2, timeout=1).returncode != 0
        assert conn(v)["state"] == "failed"
