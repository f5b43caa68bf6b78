"""vpnd/metrics.py: the status dict rendered as Prometheus metrics, parsed back with
prometheus_client's own parser; the asyncio endpoint on a unix socket and on TCP; the
config key's checks."""

import asyncio
import copy
import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vpnd import metrics
from vpnd.config import ConfigError, load_config

STATUS = {
    "connections": [
        {"name": "site-b", "version": 2, "peer": "10.200.0.2", "state": "up", "ike_sas": 1,
         "child_sas": 1, "last_error": None},
        {"name": "lab", "version": 1, "peer": "10.9.0.1", "state": "failed", "ike_sas": 0,
         "child_sas": 0, "last_error": {"reason": "auth_failed", "message": "x", "age_s": 42}},
        {"name": "spare", "version": 2, "peer": "%any", "state": "down", "ike_sas": 0,
         "child_sas": 0, "keying": "manual", "last_error": None}],
    "ike_sas": [{
        "connection": "site-b", "version": 2, "state": "ESTABLISHED", "established_s": 120,
        "rekey_in_s": 3000,
        "child_sas": [{"name": "site-b", "state": "INSTALLED", "spi_in": "c1a2b3c4",
                       "spi_out": "d5e6f7a8", "bytes_in": 8400, "packets_in": 100,
                       "bytes_out": 8316, "packets_out": 99, "replay_drops": 3,
                       "auth_failures": 2, "policy_drops": 1, "rekey_in_s": 3000,
                       "installed_s": 60}]}],
    "daemon": {"tun": "vpnd0", "mtu": 1400, "uptime_s": 500, "routes": [], "tun_in": 7,
               "decap_drops": 1, "dp_too_big": 2}}


def scrape(m, accept=""):
    body, ctype = m.render(accept)
    fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
    return fams, ctype


def value(fams, name, sample=None, **labels):
    fam = fams[name]
    sample = sample or name
    got = [s.value for s in fam.samples if s.name == sample
           and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(got) == 1, (name, labels, fam.samples)
    return got[0]


def test_every_configured_connection_with_state_error_and_counters():
    m = metrics.Metrics(lambda: copy.deepcopy(STATUS), "9.9")
    fams, ctype = scrape(m)
    assert ctype.startswith("text/plain")
    assert value(fams, "vpnd_build_info", version="9.9") == 1
    assert value(fams, "vpnd_connection_up", connection="site-b", keying="ikev2") == 1
    assert value(fams, "vpnd_connection_up", connection="lab") == 0
    assert value(fams, "vpnd_connection_up", connection="spare", keying="manual") == 0
    assert value(fams, "vpnd_connection_state", connection="lab", state="failed") == 1
    assert value(fams, "vpnd_connection_state", connection="lab", state="up") == 0
    assert value(fams, "vpnd_connection_last_error_info", connection="lab", reason="auth_failed") == 1
    assert value(fams, "vpnd_connection_last_error_age_seconds", connection="lab") == 42
    assert value(fams, "vpnd_connection_bytes", "vpnd_connection_bytes_total",
                 connection="site-b", direction="in") == 8400
    assert value(fams, "vpnd_connection_packets", "vpnd_connection_packets_total",
                 connection="site-b", direction="out") == 99
    assert value(fams, "vpnd_connection_bytes", "vpnd_connection_bytes_total",
                 connection="lab", direction="in") == 0  # down connections are listed too
    assert value(fams, "vpnd_connection_drops", "vpnd_connection_drops_total",
                 connection="site-b", reason="replay") == 3
    assert value(fams, "vpnd_connection_drops", "vpnd_connection_drops_total",
                 connection="site-b", reason="auth") == 2
    assert value(fams, "vpnd_ike_sa_age_seconds", connection="site-b") == 120
    assert value(fams, "vpnd_child_sa_age_seconds", connection="site-b") == 60
    assert value(fams, "vpnd_child_sa_rekey_in_seconds", connection="site-b") == 3000
    assert value(fams, "vpnd_daemon_events", "vpnd_daemon_events_total", counter="dp_too_big") == 2
    assert value(fams, "vpnd_uptime_seconds") == 500
    # OpenMetrics on request, parsed by the OpenMetrics parser
    body, ctype = m.render("application/openmetrics-text; version=1.0.0")
    assert ctype.startswith("application/openmetrics-text") and body.endswith(b"# EOF\n")
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
    assert "vpnd_connection_up" in {f.name for f in om_parse(body.decode())}


def test_counters_stay_monotonic_across_a_rekey_and_events_and_latency():
    st = copy.deepcopy(STATUS)
    now = [0.0]
    m = metrics.Metrics(lambda: st, clock=lambda: now[0])
    m.on_event("ike_connecting", "site-b")
    now[0] = 0.3
    m.on_event("ike_up", "site-b")
    m.on_event("child_up", "site-b")
    scrape(m)
    # rekey: the old SA is gone, a new one has counted a little
    ch = st["ike_sas"][0]["child_sas"][0]
    ch.update(spi_in="0badf00d", spi_out="0000beef", bytes_in=100, packets_in=1)
    m.on_event("ike_rekeyed", "site-b")
    fams, _ = scrape(m)
    assert value(fams, "vpnd_connection_bytes", "vpnd_connection_bytes_total",
                 connection="site-b", direction="in") == 8500
    assert value(fams, "vpnd_connection_packets", "vpnd_connection_packets_total",
                 connection="site-b", direction="in") == 101
    assert value(fams, "vpnd_ike_events", "vpnd_ike_events_total", connection="site-b",
                 event="ike_up") == 1
    assert value(fams, "vpnd_negotiation_seconds", "vpnd_negotiation_seconds_count",
                 connection="site-b") == 1
    assert value(fams, "vpnd_negotiation_seconds", "vpnd_negotiation_seconds_bucket",
                 connection="site-b", le="0.5") == 1
    assert value(fams, "vpnd_negotiation_seconds", "vpnd_negotiation_seconds_bucket",
                 connection="site-b", le="0.25") == 0
    # an outbound side attached later is the same SA: not counted twice
    ch["spi_out"] = "11112222"
    fams, _ = scrape(m)
    assert value(fams, "vpnd_connection_bytes", "vpnd_connection_bytes_total",
                 connection="site-b", direction="in") == 8500


def test_a_failing_status_still_scrapes():
    def boom():
        raise RuntimeError("x")
    fams, _ = scrape(metrics.Metrics(boom))
    assert "vpnd_build_info" in fams


@pytest.mark.parametrize("text,ok", [
    ("127.0.0.1:9577", ("tcp", "127.0.0.1", 9577)), ("[::1]:9577", ("tcp", "::1", 9577)),
    ("/run/vpnd/metrics.sock", ("unix", "/run/vpnd/metrics.sock")),
    ("localhost:80", ("tcp", "localhost", 80)),
    ("9577", None), ("127.0.0.1:0", None), ("example.com:9577", None), ("relative.sock", None),
    ("", None)])
def test_parse_listen(text, ok):
    if ok is None:
        with pytest.raises(ValueError):
            metrics.parse_listen(text)
    else:
        assert metrics.parse_listen(text) == ok


def test_config_key_checked_with_its_path(tmp_path):
    p = tmp_path / "v.yaml"
    p.write_text("daemon: {metrics: '127.0.0.1:99999'}\nconnections:\n  a: {peer: 10.0.0.2, psk: x}\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(p))
    assert "daemon.metrics" in str(getattr(e.value, "problems", None) or e.value)
    p.write_text("daemon: {metrics: '127.0.0.1:9577'}\nconnections:\n  a: {peer: 10.0.0.2, psk: x}\n")
    assert load_config(str(p)).daemon.metrics == "127.0.0.1:9577"
    p.write_text("connections:\n  a: {peer: 10.0.0.2, psk: x}\n")
    assert load_config(str(p)).daemon.metrics is None  # off by default


def _http(sock_family, addr, request: bytes) -> bytes:
    with socket.socket(sock_family, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(addr)
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_endpoint_serves_on_unix_and_tcp(tmp_path):
    async def main():
        m = metrics.Metrics(lambda: STATUS)
        path = str(tmp_path / "m.sock")
        unix = metrics.MetricsServer(m, path)
        tcp = metrics.MetricsServer(m, "127.0.0.1:19577")
        # port 0 (a config cannot say it): tests run in parallel, in other suites too
        tcp.where = ("tcp", "127.0.0.1", 0)
        await unix.start()
        await tcp.start()
        port = tcp.server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        try:
            r1 = await loop.run_in_executor(None, _http, socket.AF_UNIX, path,
                                            b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            r2 = await loop.run_in_executor(None, _http, socket.AF_INET, ("127.0.0.1", port),
                                            b"GET /nope HTTP/1.0\r\n\r\n")
            r3 = await loop.run_in_executor(None, _http, socket.AF_INET, ("127.0.0.1", port),
                                            b"POST /metrics HTTP/1.0\r\n\r\n")
        finally:
            await unix.close()
            await tcp.close()
        return r1, r2, r3
    r1, r2, r3 = asyncio.run(main())
    head, body = r1.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.0 200") and b"Content-Type: text/plain" in head
    assert "vpnd_connection_up" in {f.name for f in text_string_to_metric_families(body.decode())}
    assert r2.startswith(b"HTTP/1.0 404") and r3.startswith(b"HTTP/1.0 405")
    assert not (tmp_path / "m.sock").exists()


def test_stalled_clients_cannot_lock_scrapers_out(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics, "REQUEST_TIMEOUT", 1.0)

    async def main():
        m = metrics.Metrics(lambda: STATUS)
        path = str(tmp_path / "m.sock")
        srv = metrics.MetricsServer(m, path)
        await srv.start()
        loop = asyncio.get_running_loop()
        stalled = []
        try:
            for _ in range(metrics.MAX_CLIENTS + 4):  # connect, send nothing
                r, w = await asyncio.open_unix_connection(path)
                stalled.append(w)
            await asyncio.sleep(0.1)
            assert srv.clients == metrics.MAX_CLIENTS
            await asyncio.sleep(1.5)  # their time is up
            out = await loop.run_in_executor(None, _http, socket.AF_UNIX, path,
                                             b"GET /metrics HTTP/1.0\r\n\r\n")
        finally:
            for w in stalled:
                w.close()
            await srv.close()
        return out
    assert asyncio.run(main()).startswith(b"HTTP/1.0 200")


def test_rendering_runs_off_the_event_loop(tmp_path):
    """The status is read in the loop's thread, the exposition text made in another one."""
    import threading

    seen = {}

    class Spy(metrics.Metrics):
        def collect(self):
            seen["collect"] = threading.get_ident()
            yield from super().collect()

    def status():
        seen["status"] = threading.get_ident()
        return STATUS

    async def main():
        seen["loop"] = threading.get_ident()
        m = Spy(status)
        m.on_event("ike_up", "site-b")
        path = str(tmp_path / "m.sock")
        srv = metrics.MetricsServer(m, path)
        await srv.start()
        try:
            return await asyncio.get_running_loop().run_in_executor(
                None, _http, socket.AF_UNIX, path, b"GET /metrics HTTP/1.0\r\n\r\n")
        finally:
            await srv.close()
    out = asyncio.run(main())
    assert b'vpnd_ike_events_total{connection="site-b",event="ike_up"} 1.0' in out
    assert seen["status"] == seen["loop"] and seen["collect"] != seen["loop"]


def test_unix_endpoint_never_deletes_a_regular_file(tmp_path):
    """Issue 8.7 for daemon.metrics too: only a stale socket at the path is removed."""
    path = tmp_path / "metrics.sock"
    path.write_text("the operator's file\n")
    m = metrics.Metrics(lambda: {"connections": [], "ike_sas": [], "daemon": {}})
    with pytest.raises(OSError, match="not a socket"):
        asyncio.run(metrics.MetricsServer(m, str(path)).start())
    assert path.read_text() == "the operator's file\n"
