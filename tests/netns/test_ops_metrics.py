"""issue 11: the metrics endpoint scraped like Prometheus does while traffic runs through a
vpnd<->vpnd tunnel (manual keys), parsed with prometheus_client's own parser: the byte and
packet counters move in both directions, and a configured connection that is down is
listed with its state."""

from __future__ import annotations

import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .topology import Topology
from .vpnd_proc import Vpnd, manual_pair

pytestmark = [pytest.mark.netns]

SCRAPE = ("import urllib.request,sys;"
          "sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:9577/metrics', timeout=5)"
          ".read().decode())")


@pytest.fixture
def metrics_topo():
    with Topology(prefix="opm") as t:
        yield t


def scrape(topo, role: str) -> dict:
    """GET /metrics from inside the gateway's namespace (where the daemon listens)."""
    out = topo.run(role, [sys.executable, "-c", SCRAPE]).stdout.decode()
    samples = {}
    for fam in text_string_to_metric_families(out):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def get(samples, name, **labels):
    return samples[(name, tuple(sorted(labels.items())))]


def test_scrape_while_traffic_runs(metrics_topo):
    topo = metrics_topo
    ca, cb = manual_pair(topo, "aes128gcm16", extra_daemon="metrics: 127.0.0.1:9577")
    # one more configured connection on gwa, never up: it is in the metrics too
    ca += ("  spare:\n    peer: 10.200.0.77\n    psk: \"spare key 0123456789\"\n"
           "    local_ts: [10.1.0.0/16]\n    remote_ts: [10.77.0.0/16]\n    start: none\n")
    a, b = Vpnd(topo, "gwa", ca), Vpnd(topo, "gwb", cb)
    try:
        a.start()
        b.start()
        topo.wait_ping("hosta", topo.hostb_ip, timeout=10)
        first = scrape(topo, "gwa")
        assert get(first, "vpnd_connection_up", connection="tunnel", peer="10.200.0.2",
                   keying="manual") == 1
        assert get(first, "vpnd_connection_up", connection="spare", peer="10.200.0.77",
                   keying="ikev2") == 0
        assert get(first, "vpnd_connection_state", connection="spare", state="down") == 1
        assert get(first, "vpnd_connection_state", connection="tunnel", state="up") == 1
        # traffic while scraping
        proc = topo.popen("hosta", ["ping", "-q", "-c", "40", "-i", "0.05", "-s", "1000",
                                    topo.hostb_ip])
        mid = scrape(topo, "gwa")
        proc.wait(timeout=30)
        assert proc.returncode == 0
        last = scrape(topo, "gwa")
        for d in ("in", "out"):
            p0 = get(first, "vpnd_connection_packets_total", connection="tunnel", direction=d)
            p1 = get(mid, "vpnd_connection_packets_total", connection="tunnel", direction=d)
            p2 = get(last, "vpnd_connection_packets_total", connection="tunnel", direction=d)
            b0 = get(first, "vpnd_connection_bytes_total", connection="tunnel", direction=d)
            b2 = get(last, "vpnd_connection_bytes_total", connection="tunnel", direction=d)
            assert p0 <= p1 <= p2 and p2 >= p0 + 40, (d, p0, p1, p2)
            assert b2 >= b0 + 40 * 1000, (d, b0, b2)
        assert get(last, "vpnd_connection_packets_total", connection="spare", direction="in") == 0
        assert get(last, "vpnd_connection_drops_total", connection="tunnel", reason="auth") == 0
        # the peer's view matches: what gwa sent, gwb received
        pb = scrape(topo, "gwb")
        assert get(pb, "vpnd_connection_packets_total", connection="tunnel", direction="in") >= \
            get(last, "vpnd_connection_packets_total", connection="tunnel", direction="out") - 2
    except BaseException:
        print(a.log()[-4000:])
        raise
    finally:
        for v in (a, b):
            if v.alive():
                v.stop()


def test_ike_events_negotiation_time_and_counters_across_a_rekey(metrics_topo):
    """vpnd<->vpnd IKEv2: the initiator's metrics count the exchange, time it, and keep the
    byte counters monotonic when `vpnctl rekey` replaces the CHILD_SA."""
    from .topology import LAN_A, LAN_B, WAN_A, WAN_B
    from .vpnd_proc import ike_config

    topo = metrics_topo
    conf = dict(version=2, psk="metrics ike test 0123456789", ike="aes128-sha256-modp2048",
                esp="aes128gcm16", start="none")
    a = Vpnd(topo, "gwa", ike_config(topo, "gwa", local=WAN_A, peer=WAN_B, lts=LAN_A, rts=LAN_B,
                                     daemon_extra="metrics: 127.0.0.1:9577", **conf))
    b = Vpnd(topo, "gwb", ike_config(topo, "gwb", local=WAN_B, peer=WAN_A, lts=LAN_B, rts=LAN_A,
                                     **conf))
    try:
        a.start()
        b.start()
        down = scrape(topo, "gwa")
        assert get(down, "vpnd_connection_up", connection="site", peer=WAN_B, keying="ikev2") == 0
        assert a.ctl("up", name="site")["ok"]
        assert topo.ping("hosta", topo.hostb_ip, count=20, interval=0.05).returncode == 0
        before = scrape(topo, "gwa")
        assert get(before, "vpnd_ike_events_total", connection="site", event="ike_up") == 1
        assert get(before, "vpnd_negotiation_seconds_count", connection="site") == 1
        assert get(before, "vpnd_ike_sa_age_seconds", connection="site") >= 0
        sent = get(before, "vpnd_connection_packets_total", connection="site", direction="out")
        assert sent >= 20
        assert a.ctl("rekey", name="site")["ok"]
        assert topo.ping("hosta", topo.hostb_ip, count=10, interval=0.05).returncode == 0
        after = scrape(topo, "gwa")
        assert get(after, "vpnd_connection_packets_total", connection="site",
                   direction="out") >= sent + 10
        assert get(after, "vpnd_connection_up", connection="site", peer=WAN_B, keying="ikev2") == 1
    except BaseException:
        print(a.log()[-4000:])
        raise
    finally:
        for v in (a, b):
            if v.alive():
                v.stop()
