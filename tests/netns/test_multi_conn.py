"""Several connections per peer (issue 7): vpnd against strongSwan's charon and against another
vpnd, in network namespaces, with traffic on every connection.

One topology for the module (tests start and stop their own daemons). Each connection has
its own subnets: hosta has 10.1.N.10/24 and hostb 10.2.N.10/24 (N = 1, 2, 3) beside their
LAN addresses; the gateways have 10.1.N.1 / 10.2.N.1, because charon's kernel-libipsec
routes a remote subnet only with a local source address inside the local selector.

What is checked: connections with the same IKE settings share one IKE SA (each with its own
CHILD_SA), different settings get an IKE SA each without INITIAL_CONTACT knocking out the
other (issue 7.1), IKEv1 and IKEv2 to one peer, rekeys and down/up of each connection under
traffic, a peer that restarts without INITIAL_CONTACT (7.12), and both ends configured with
two connections each.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .charon import psk_connection, psk_secret, swanctl_conf
from .topology import WAN_B, Topology
from .vpnd_proc import FAST_TIMERS, vpnd_starter

pytestmark = [pytest.mark.netns]

PSK = "several connections per peer 0123456789"
PREFIX = os.environ.get("MC_PREFIX", "mc")
IKE1, IKE2 = "aes128-sha256-modp2048", "aes256-sha256-modp2048"
ESP = "aes128gcm16"
IC_DESTROY = "received INITIAL_CONTACT"  # charon: "destroying duplicate IKE_SA ..., received INITIAL_CONTACT"


@pytest.fixture(scope="module")
def mc_topo():
    with Topology(prefix=PREFIX) as t:
        for n in (1, 2, 3):
            t._addr("hosta", "eth0", f"10.1.{n}.10/24")
            t._addr("gwa", "lan", f"10.1.{n}.1/24")
            t._addr("hostb", "eth0", f"10.2.{n}.10/24")
            t._addr("gwb", "lan", f"10.2.{n}.1/24")
        yield t


@pytest.fixture
def vpnds(request):
    with vpnd_starter(request) as make:
        yield make


def a_net(n):
    return f"10.1.{n}.0/24"


def b_net(n):
    return f"10.2.{n}.0/24"


def vconf(topo, role: str, conns: dict, *, daemon_extra: str = "") -> str:
    """vpnd config with several connections: {name: {n: subnet index, version, ike, start, extra}}."""
    sock = Path(topo.workdir) / f"{role}.sock"
    me, peer = (topo.gwa_wan, WAN_B) if role == "gwa" else (WAN_B, topo.gwa_public)
    mine, theirs = (a_net, b_net) if role == "gwa" else (b_net, a_net)
    lines = ["daemon:", "  tun: vpnd0", f"  control_socket: {sock}", "  log_level: debug"]
    lines += [f"  {x}" for x in daemon_extra.splitlines() if x.strip()]
    lines.append("connections:")
    for name, c in conns.items():
        n = c["n"]
        lines += [f"  {name}:", f"    version: {c.get('version', 2)}", f"    local: {me}", f"    peer: {peer}",
                  f'    psk: "{PSK}"', f"    ike: {c.get('ike', IKE1)}", f"    esp: {c.get('esp', ESP)}",
                  f"    local_ts: [{mine(n)}]", f"    remote_ts: [{theirs(n)}]",
                  f"    start: {c.get('start', 'start')}", f"    dpd: {c.get('dpd', '{interval: 0}')}"]
        lines += [f"    {x}" for x in c.get("extra", "").splitlines() if x.strip()]
    return "\n".join(lines) + "\n"


def charon_conn(topo, children: dict, *, version: int = 2, ike: str = f"{IKE1}, {IKE2}", **extra) -> dict:
    """One charon connection to vpnd with a CHILD_SA per entry {name: subnet index}."""
    kids = list(children.items())
    first, n0 = kids[0]
    conn = psk_connection(local=WAN_B, remote=topo.gwa_public, local_ts=b_net(n0), remote_ts=a_net(n0),
                          ike=ike, esp=ESP, version=version, child=first, **extra)
    for name, n in kids[1:]:
        conn["children"][name] = {"local_ts": b_net(n), "remote_ts": a_net(n), "esp_proposals": ESP,
                                  "mode": "tunnel", "start_action": "none"}
    return conn


def load_charon(ch, conns: dict) -> None:
    ch.load(swanctl_conf(conns, {"ike-vpnd": psk_secret(PSK)}))


def children_of(v, timeout: float = 30, *, want: set) -> dict:
    """Poll vpnd's status until the named CHILD_SAs are INSTALLED; {name: (ike entry, child)}."""
    deadline = time.monotonic() + timeout
    st = None
    while time.monotonic() < deadline:
        st = v.status()
        got = {}
        for sa in st["ike_sas"]:
            for chd in sa["child_sas"]:
                if chd["state"] == "INSTALLED":
                    got[chd["name"]] = (sa, chd)
        if want <= set(got):
            return got
        time.sleep(0.1)
    raise AssertionError(f"{v.role}: CHILD_SAs {want} not all INSTALLED in {timeout}s: {json.dumps(st)}\n"
                         f"{v.log()[-4000:]}")


def ping(topo, n: int, *, back: bool = False, count: int = 1, timeout: float = 1) -> bool:
    src, dst = (f"10.2.{n}.10", f"10.1.{n}.10") if back else (f"10.1.{n}.10", f"10.2.{n}.10")
    host = "hostb" if back else "hosta"
    r = topo.run(host, ["ping", "-n", "-q", "-c", str(count), "-W", str(timeout), "-I", src, dst],
                 check=False, timeout=count + timeout + 10)
    return r.returncode == 0


def wait_ping(topo, n: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not ping(topo, n, timeout=0.3):
        assert time.monotonic() < deadline, f"no traffic on connection {n} within {timeout}s"
    assert ping(topo, n, back=True, count=2)


class Pinger:
    """A background ping on connection n: 10 per second, counted at the end."""

    def __init__(self, topo, n: int, count: int):
        self.topo = topo
        self.proc = topo.popen("hosta", ["ping", "-n", "-q", "-i", "0.1", "-W", "1", "-c", str(count),
                                         "-I", f"10.1.{n}.10", f"10.2.{n}.10"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def result(self, timeout: float = 60) -> tuple[int, int]:
        out, _ = self.proc.communicate(timeout=timeout)
        m = re.search(rb"(\d+) packets transmitted, (\d+) (packets )?received", out or b"")
        assert m, out
        return int(m.group(1)), int(m.group(2))


def charon_ike_sas(ch) -> list[str]:
    """Lines of `swanctl --list-sas` that start an IKE SA."""
    return [l for l in ch.list_sas().splitlines() if re.match(r"^\S+: #\d+", l)]


def wait_until(cond, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        r = cond()
        if r:
            return r
        assert time.monotonic() < deadline, f"{what} not within {timeout}s"
        time.sleep(0.2)


# ----------------------------------------------------------------------------------------------


@pytest.mark.strongswan
def test_two_connections_one_ike_sa_rekey_down_up(mc_topo, make_charon, vpnds):
    """strongSwan has one connection with two children; vpnd two connections with the same
    IKE settings: one IKE SA carries both CHILD_SAs. Each is rekeyed under traffic, the IKE
    SA too, each goes down and up again without touching the other."""
    topo = mc_topo
    ch = make_charon(topo, "gwb")
    load_charon(ch, {"peer": charon_conn(topo, {"one": 1, "two": 2})})
    v = vpnds(topo, "gwa", vconf(topo, "gwa", {"one": {"n": 1}, "two": {"n": 2}}))
    got = children_of(v, want={"one", "two"})
    assert got["one"][0]["ike_id"] == got["two"][0]["ike_id"]
    assert got["one"][0]["connections"] == ["one", "two"]
    assert len(v.status()["ike_sas"]) == 1
    wait_until(lambda: len(charon_ike_sas(ch)) == 1 and ch.list_sas().count("INSTALLED") == 2, 10,
               "charon with one IKE SA and two CHILD_SAs")
    wait_ping(topo, 1)
    wait_ping(topo, 2)
    # rekeys under traffic: each child, then the shared IKE SA
    pingers = [Pinger(topo, 1, 80), Pinger(topo, 2, 80)]
    time.sleep(0.5)
    for name, ike in (("one", False), ("two", False), ("one", True)):
        r = v.ctl("rekey", name=name, ike=ike)
        assert r["ok"], r
        time.sleep(1.5)
    for n, p in zip((1, 2), pingers):
        sent, recv = p.result()
        print(f"connection {n}: {recv}/{sent} pings through 3 rekeys")
        assert recv >= sent - 2, (n, sent, recv)
    got = children_of(v, want={"one", "two"})
    assert len([s for s in v.status()["ike_sas"] if s["state"] == "ESTABLISHED"]) == 1
    assert len(charon_ike_sas(ch)) == 1
    # down one: only its CHILD_SA goes, at both ends; the other carries on
    assert v.ctl("down", name="one")["ok"]
    wait_until(lambda: ch.list_sas().count("INSTALLED") == 1, 10, "charon deleting child one only")
    sas = ch.list_sas()
    assert re.search(r"two: #\d+, reqid \d+, INSTALLED", sas) and len(charon_ike_sas(ch)) == 1, sas
    st = {c["name"]: c["state"] for c in v.status()["connections"]}
    assert st == {"one": "down", "two": "up"}, st
    assert ping(topo, 2, count=3) and not ping(topo, 1, timeout=1)
    # up again: on the same IKE SA
    assert v.ctl("up", name="one")["ok"]
    children_of(v, want={"one", "two"})
    wait_ping(topo, 1)
    assert len(charon_ike_sas(ch)) == 1
    # both down: the IKE SA goes with the last one
    assert v.ctl("down", name="two")["ok"]
    assert v.ctl("down", name="one")["ok"]
    wait_until(lambda: not charon_ike_sas(ch), 10, "charon's IKE SA deleted")
    assert v.status()["ike_sas"] == []
    assert IC_DESTROY not in ch.log()


@pytest.mark.strongswan
def test_three_connections_different_ike_settings(mc_topo, make_charon, vpnds):
    """Two connections share an IKE SA, a third with other IKE proposals has its own: its
    IKE_AUTH must not carry INITIAL_CONTACT (charon destroyed the first IKE SA: issue 7.1)."""
    topo = mc_topo
    ch = make_charon(topo, "gwb")
    load_charon(ch, {"peer": charon_conn(topo, {"one": 1, "two": 2, "three": 3})})
    v = vpnds(topo, "gwa", vconf(topo, "gwa", {"one": {"n": 1}, "two": {"n": 2},
                                               "three": {"n": 3, "ike": IKE2}}))
    got = children_of(v, want={"one", "two", "three"})
    assert got["one"][0]["ike_id"] == got["two"][0]["ike_id"] != got["three"][0]["ike_id"]
    wait_until(lambda: ch.list_sas().count("INSTALLED") == 3, 10, "charon with three CHILD_SAs")
    time.sleep(1)
    assert len(charon_ike_sas(ch)) == 2, ch.list_sas()
    for n in (1, 2, 3):
        wait_ping(topo, n)
    assert IC_DESTROY not in ch.log()
    assert len(v.status()["ike_sas"]) == 2


@pytest.mark.strongswan
def test_ikev1_and_ikev2_to_the_same_peer(mc_topo, make_charon, vpnds):
    """An IKEv2 and an IKEv1 connection to one strongSwan: the Main Mode must not say
    INITIAL-CONTACT while the IKEv2 SA is up (charon dropped that SA: issue 7.1)."""
    topo = mc_topo
    ch = make_charon(topo, "gwb")
    v1c = charon_conn(topo, {"two": 2}, version=1, ike=IKE1)
    load_charon(ch, {"peer2": charon_conn(topo, {"one": 1}), "peer1": v1c})
    v = vpnds(topo, "gwa", vconf(topo, "gwa", {"one": {"n": 1}}))
    children_of(v, want={"one"})
    wait_ping(topo, 1)
    text = vconf(topo, "gwa", {"one": {"n": 1}, "two": {"n": 2, "version": 1}})
    v.write_config(text)
    assert v.ctl("reload")["ok"]
    children_of(v, want={"one", "two"})
    wait_ping(topo, 2)
    wait_ping(topo, 1)
    time.sleep(1)
    assert len(charon_ike_sas(ch)) == 2, ch.list_sas()
    assert IC_DESTROY not in ch.log()
    # each goes down and up alone
    for name, n, other in (("two", 2, 1), ("one", 1, 2)):
        assert v.ctl("down", name=name)["ok"]
        assert ping(topo, other, count=2)
        assert v.ctl("up", name=name)["ok"]
        children_of(v, want={"one", "two"})
        wait_ping(topo, n)
    assert IC_DESTROY not in ch.log()


@pytest.mark.strongswan
def test_peer_restart_without_initial_contact(mc_topo, make_charon, vpnds):
    """charon (unique = never: no INITIAL_CONTACT) is killed and comes back: vpnd, with DPD
    off, keeps no duplicate IKE or CHILD SAs with the same selectors (issue 7.12)."""
    topo = mc_topo
    v = vpnds(topo, "gwa", vconf(topo, "gwa", {"one": {"n": 1, "start": "none"},
                                               "two": {"n": 2, "start": "none"}}))
    conf = {"peer": charon_conn(topo, {"one": 1, "two": 2}, unique="never")}
    ch = make_charon(topo, "gwb")
    load_charon(ch, conf)
    ch.initiate("one")
    ch.initiate("two")
    first = children_of(v, want={"one", "two"})
    assert len(v.status()["ike_sas"]) == 1
    ch.kill()
    ch.start()
    load_charon(ch, conf)
    ch.initiate("one")
    ch.initiate("two")

    def settled():
        st = v.status()
        kids = [c for s in st["ike_sas"] for c in s["child_sas"]]
        return len(st["ike_sas"]) == 1 and len(kids) == 2 and \
            not {c["spi_in"] for c in kids} & {first[n][1]["spi_in"] for n in ("one", "two")}

    wait_until(settled, 15, "the old IKE SA and CHILD_SAs removed")
    assert "peer sent INITIAL_CONTACT" not in v.log()  # it really came without one
    wait_ping(topo, 1)
    wait_ping(topo, 2)


def test_vpnd_pair_two_connections_each(mc_topo, vpnds):
    """Both ends vpnd, each with two connections that start at once: one IKE SA, a CHILD_SA
    per connection, the same at both ends; then each end restarts its side of one."""
    topo = mc_topo
    conns = {"one": {"n": 1}, "two": {"n": 2}}
    a = vpnds(topo, "gwa", vconf(topo, "gwa", conns))
    b = vpnds(topo, "gwb", vconf(topo, "gwb", conns))

    def one_each():
        out = []
        for v in (a, b):
            st = v.status()
            sas = [s for s in st["ike_sas"] if s["state"] == "ESTABLISHED"]
            kids = sorted(c["name"] for s in sas for c in s["child_sas"] if c["state"] == "INSTALLED")
            out.append(len(sas) == 1 and kids == ["one", "two"])
        return all(out)

    wait_until(one_each, 40, "one IKE SA with two CHILD_SAs at both ends")
    wait_ping(topo, 1)
    wait_ping(topo, 2)
    assert a.ctl("down", name="two")["ok"]
    assert ping(topo, 1, count=2)
    assert b.ctl("up", name="two")["ok"]  # the peer brings it back; a answers as responder
    try:
        wait_until(one_each, 20, "both connections back on one IKE SA")
    except AssertionError:
        raise AssertionError(f"a: {json.dumps(a.status()['ike_sas'])}\nb: {json.dumps(b.status()['ike_sas'])}")
    wait_ping(topo, 2)


@pytest.mark.strongswan
@pytest.mark.parametrize("start", ["start", "none"], ids=["started-together", "up-one-by-one"])
def test_ikev1_two_connections_one_isakmp_sa(mc_topo, make_charon, vpnds, start):
    """IKEv1: two connections with the same IKE settings run their Quick Modes under one
    ISAKMP SA (Cisco's one ISAKMP SA per peer), whether they start together (the second
    waits for the first one's Main Mode) or one after the other; down of the SA's own
    connection keeps the other's IPsec SAs and the ISAKMP SA."""
    topo = mc_topo
    ch = make_charon(topo, "gwb")
    load_charon(ch, {"peer": charon_conn(topo, {"one": 1, "two": 2}, version=1, ike=IKE1)})
    v = vpnds(topo, "gwa", vconf(topo, "gwa", {"one": {"n": 1, "version": 1, "start": start},
                                               "two": {"n": 2, "version": 1, "start": start}}))
    if start == "none":
        assert v.ctl("up", name="one")["ok"]
        assert v.ctl("up", name="two")["ok"]
    children_of(v, want={"one", "two"})
    wait_until(lambda: ch.list_sas().count("INSTALLED") == 2, 10, "charon with two IPsec SAs")
    assert len(charon_ike_sas(ch)) == 1, ch.list_sas()
    wait_ping(topo, 1)
    wait_ping(topo, 2)
    assert v.ctl("down", name="one")["ok"]
    wait_until(lambda: ch.list_sas().count("INSTALLED") == 1, 10, "charon deleting one only")
    assert len(charon_ike_sas(ch)) == 1, ch.list_sas()
    assert ping(topo, 2, count=3)
    assert v.ctl("up", name="one")["ok"]
    children_of(v, want={"one", "two"})
    wait_ping(topo, 1)
    assert len(charon_ike_sas(ch)) == 1, ch.list_sas()
    assert IC_DESTROY not in ch.log()


@pytest.mark.strongswan
@pytest.mark.parametrize("version", [2, 1])
def test_down_while_peer_unreachable_is_final(mc_topo, make_charon, vpnds, version):
    """Issue 7.2: the peer is unreachable (nftables drops its IKE), `vpnctl down`: it returns
    once the SAs are gone here, and nothing brings the tunnel back by itself (DPD action
    restart, connect retries) when the peer answers again; `up` does."""
    topo = mc_topo
    ch = make_charon(topo, "gwb")
    load_charon(ch, {"peer": charon_conn(topo, {"one": 1}, version=version, ike=IKE1)})
    # compressed timers: a connect retry would come every 2 s, so the quiet period below
    # covers several chances to re-initiate by mistake
    v = vpnds(topo, "gwa", vconf(topo, "gwa", {"one": {
        "n": 1, "version": version, "dpd": "{interval: 2, retry: 2, action: restart}"}},
        daemon_extra=FAST_TIMERS))
    children_of(v, want={"one"})
    wait_ping(topo, 1)
    rules = ("table inet mcdrop {\n chain o {\n  type filter hook output priority 0;\n"
             f"  ip daddr {WAN_B} udp dport {{ 500, 4500 }} drop\n }}\n chain i {{\n"
             "  type filter hook input priority 0;\n"
             f"  ip saddr {WAN_B} udp sport {{ 500, 4500 }} drop\n }}\n}}\n")
    topo.run("gwa", ["nft", "-f", "-"], input=rules.encode())
    try:
        t0 = time.monotonic()
        r = v.ctl("down", name="one")
        took = time.monotonic() - t0
        assert r["ok"], r
        print(f"IKEv{version}: vpnctl down with the peer unreachable returned after {took:.1f}s")
        assert not [c for s in v.status()["ike_sas"] for c in s["child_sas"]]
        # the Delete goes unanswered (bounded retransmission), DPD would have restarted it
        wait_until(lambda: not v.status()["ike_sas"], 20, "the unanswered IKE SA gone")
    finally:
        topo.run("gwa", ["nft", "delete", "table", "inet", "mcdrop"], check=False)
    time.sleep(6)  # the peer answers again: nothing may re-initiate (3 x connect_retry, 3 DPD intervals)
    st = v.status()
    assert st["ike_sas"] == [], st
    assert next(c for c in st["connections"] if c["name"] == "one")["state"] == "down"
    assert v.ctl("up", name="one")["ok"]
    children_of(v, want={"one"})
    wait_ping(topo, 1)
