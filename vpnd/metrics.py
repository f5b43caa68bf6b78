"""Prometheus / OpenMetrics endpoint (`daemon.metrics: 127.0.0.1:9577` or a unix socket path;
off by default). docs/metrics.md lists the metric names and labels.

Everything is rendered at scrape time from the daemon's status dict (the one `vpnctl status
--json` prints) by a custom prometheus_client Collector: no per-packet cost, nothing updated
on the data path. The only state kept here is per-event (IKE events counted, negotiation
durations) and the totals of SAs that are gone, so per-connection byte and packet counters
stay monotonic across rekeys. The HTTP server is a small asyncio server in the daemon's
event loop: the status is read there, the text is rendered in a worker thread.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import threading
import time

from prometheus_client import CollectorRegistry
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, InfoMetricFamily)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.openmetrics import exposition as om

log = logging.getLogger("vpnd.control.metrics")

# docs/daemon.md "Connection states" (vpnd/status.py STATES)
STATES = ("up", "connecting", "ike-only", "idle", "failed", "down")
DIRECTIONS = ("in", "out")
# per-SA drop counters of the data plane (status child_sas) -> reason label
DROP_KEYS = {"replay_drops": "replay", "auth_failures": "auth", "malformed": "malformed",
             "pad_errors": "padding", "policy_drops": "policy", "expired_drops": "expired"}
# negotiation durations (IKE start to CHILD_SA installed), seconds
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def parse_listen(text: str) -> tuple:
    """`HOST:PORT` / `[V6]:PORT` -> ("tcp", host, port); an absolute path -> ("unix", path).
    Raises ValueError with the reason (the config names the key path)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("expected HOST:PORT (e.g. 127.0.0.1:9577) or a unix socket path")
    text = text.strip()
    if text.startswith("/"):
        if len(text.encode()) > 107 or "\0" in text:
            raise ValueError("not a usable unix socket path (max 107 bytes)")
        return ("unix", text)
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"'{text}' is not HOST:PORT (e.g. 127.0.0.1:9577) or an absolute path")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ValueError(f"'{host}' is not an IP address (or localhost)") from None
    return ("tcp", host, int(port))


class Metrics:
    """Event-side state and the Collector: `collect()` reads `status_fn()` at scrape time."""

    def __init__(self, status_fn, version: str = "unknown", clock=time.monotonic):
        self.status_fn = status_fn
        self.version = version
        self.clock = clock
        self.events: dict[tuple[str, str], int] = {}
        self._started: dict[str, float] = {}
        self.hist: dict[str, list] = {}          # connection -> [bucket counts..., sum, count]
        self._seen: dict[tuple, dict] = {}       # (connection, spi_in) -> last counters seen
        self._retired: dict[str, dict] = {}      # connection -> totals of SAs gone
        self._snap: tuple | None = None          # (status, events, hist) handed to a render
        self._render_lock = threading.Lock()     # one render at a time (_seen/_retired)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    # -- events (one call per IKE event, from the daemon's event handler) ----------------

    def on_event(self, kind: str, connection: str | None) -> None:
        if not connection:
            return
        key = (connection, kind)
        self.events[key] = self.events.get(key, 0) + 1
        now = self.clock()
        if kind == "ike_connecting":
            self._started.setdefault(connection, now)
        elif kind == "child_up" and connection in self._started:
            self._observe(connection, now - self._started.pop(connection))
        elif kind in ("auth_failed", "no_proposal", "failed", "error", "timeout",
                      "ts_unacceptable", "peer_dead"):
            self._started.pop(connection, None)

    def _observe(self, connection: str, seconds: float) -> None:
        h = self.hist.setdefault(connection, [0] * len(BUCKETS) + [0.0, 0])
        for i, b in enumerate(BUCKETS):
            if seconds <= b:
                h[i] += 1
        h[-2] += seconds
        h[-1] += 1

    # -- the Collector -------------------------------------------------------------------

    def describe(self):
        return []

    def snapshot(self) -> tuple:
        """What a scrape shows, taken in the event loop (the daemon's state is not shared with
        the rendering thread): the status dict (a fresh one per call) and copies of the
        event counters."""
        try:
            st = self.status_fn() or {}
        except Exception:
            log.exception("metrics: status failed")
            st = {}
        return st, dict(self.events), {k: list(v) for k, v in self.hist.items()}

    def collect(self):
        st, events, hist = self._snap if self._snap is not None else self.snapshot()
        conns = st.get("connections", [])
        ike_sas = st.get("ike_sas", [])
        names = [c.get("name") for c in conns]

        info = InfoMetricFamily("vpnd_build", "vpnd's version", labels=[])
        info.add_metric([], {"version": self.version})
        yield info

        d = st.get("daemon") or {}
        if "uptime_s" in d:
            yield GaugeMetricFamily("vpnd_uptime_seconds", "Seconds since the daemon started",
                                    value=d["uptime_s"])
        if d.get("mtu") is not None:
            yield GaugeMetricFamily("vpnd_tun_mtu_bytes", "MTU of the TUN device", value=d["mtu"])
        dc = CounterMetricFamily("vpnd_daemon_events", "Daemon-wide counters of the status "
                                 "'daemon' section (drops, errors, fragments), by counter",
                                 labels=["counter"])
        for k, v in sorted(d.items()):
            if isinstance(v, int) and not isinstance(v, bool) and k not in ("mtu", "uptime_s"):
                dc.add_metric([k], v)
        yield dc

        up = GaugeMetricFamily("vpnd_connection_up", "1 when the connection has an IPsec SA "
                               "installed (every configured connection is listed)",
                               labels=["connection", "peer", "keying"])
        state = GaugeMetricFamily("vpnd_connection_state", "1 for the connection's current state "
                                  "(up, connecting, ike-only, idle, failed, down)",
                                  labels=["connection", "state"])
        nsa = GaugeMetricFamily("vpnd_connection_sas", "SAs of the connection by kind",
                                labels=["connection", "kind"])
        err = GaugeMetricFamily("vpnd_connection_last_error_info", "The connection's last error "
                                "(reason word); absent after a success", labels=["connection", "reason"])
        err_age = GaugeMetricFamily("vpnd_connection_last_error_age_seconds",
                                    "Seconds since the connection's last error", labels=["connection"])
        for c in conns:
            name = c.get("name", "?")
            keying = c.get("keying") or f"ikev{c.get('version', '?')}"
            s = c.get("state", "down")
            up.add_metric([name, str(c.get("peer", "")), keying], 1 if s == "up" else 0)
            for x in STATES:
                state.add_metric([name, x], 1 if s == x else 0)
            nsa.add_metric([name, "ike"], c.get("ike_sas", 0) or 0)
            nsa.add_metric([name, "child"], c.get("child_sas", 0) or 0)
            e = c.get("last_error")
            if e:
                err.add_metric([name, str(e.get("reason", "error"))], 1)
                if e.get("age_s") is not None:
                    err_age.add_metric([name], e["age_s"])
        yield from (up, state, nsa, err, err_age)

        ike_age = GaugeMetricFamily("vpnd_ike_sa_age_seconds", "Seconds since the newest "
                                    "IKE SA of the connection was established (handshake or rekey)",
                                    labels=["connection"])
        ike_rekey = GaugeMetricFamily("vpnd_ike_sa_rekey_in_seconds", "Seconds until the newest "
                                      "IKE SA is rekeyed", labels=["connection"])
        child_age = GaugeMetricFamily("vpnd_child_sa_age_seconds", "Seconds since the newest "
                                      "IPsec SA of the connection was installed (or rekeyed)",
                                      labels=["connection"])
        child_rekey = GaugeMetricFamily("vpnd_child_sa_rekey_in_seconds", "Seconds until the "
                                        "newest IPsec SA is rekeyed", labels=["connection"])
        byts = CounterMetricFamily("vpnd_connection_bytes", "Bytes through the connection's "
                                   "IPsec SAs (inner packets), by direction",
                                   labels=["connection", "direction"])
        pkts = CounterMetricFamily("vpnd_connection_packets", "Packets through the connection's "
                                   "IPsec SAs, by direction", labels=["connection", "direction"])
        drops = CounterMetricFamily("vpnd_connection_drops", "Packets of the connection's SAs "
                                    "dropped, by reason (replay, auth, malformed, padding, "
                                    "policy, expired)", labels=["connection", "reason"])
        newest_ike: dict[str, dict] = {}
        newest_child: dict[str, dict] = {}
        live: dict[tuple, dict] = {}
        for sa in ike_sas:
            cname = sa.get("connection", "?")
            if sa.get("state") in ("ESTABLISHED", "MANUAL") and sa.get("keying") != "manual":
                if cname not in newest_ike or sa.get("established_s", 0) < newest_ike[cname].get("established_s", 0):
                    newest_ike[cname] = sa
            for ch in sa.get("child_sas", []):
                cn = ch.get("name") or cname
                if ch.get("state") == "INSTALLED":
                    age = ch.get("installed_s", sa.get("established_s", 0))
                    if cn not in newest_child or age < newest_child[cn][0]:
                        newest_child[cn] = (age, ch)
                # by inbound SPI only: an outbound side attached later is the same SA
                key = (cn, str(ch.get("spi_in")))
                live[key] = {k: int(ch.get(k, 0) or 0) for k in
                             ("bytes_in", "bytes_out", "packets_in", "packets_out", *DROP_KEYS)}
        # SAs gone since the last scrape: their last counters go to the connection's totals
        for key, vals in self._seen.items():
            if key not in live:
                tot = self._retired.setdefault(key[0], {})
                for k, v in vals.items():
                    tot[k] = tot.get(k, 0) + v
        self._seen = live
        sums: dict[str, dict] = {n: dict(self._retired.get(n, {})) for n in names}
        for key, vals in live.items():
            tot = sums.setdefault(key[0], dict(self._retired.get(key[0], {})))
            for k, v in vals.items():
                tot[k] = tot.get(k, 0) + v
        for n, tot in sums.items():
            for dirn in DIRECTIONS:
                byts.add_metric([n, dirn], tot.get(f"bytes_{dirn}", 0))
                pkts.add_metric([n, dirn], tot.get(f"packets_{dirn}", 0))
            for k, reason in DROP_KEYS.items():
                drops.add_metric([n, reason], tot.get(k, 0))
        for n, sa in newest_ike.items():
            ike_age.add_metric([n], sa.get("established_s", 0))
            if sa.get("rekey_in_s") is not None:
                ike_rekey.add_metric([n], sa["rekey_in_s"])
        for n, (age, ch) in newest_child.items():
            child_age.add_metric([n], age)
            if ch.get("rekey_in_s"):
                child_rekey.add_metric([n], ch["rekey_in_s"])
        yield from (ike_age, ike_rekey, child_age, child_rekey, byts, pkts, drops)

        acl = CounterMetricFamily("vpnd_connection_filter_packets", "Cleartext packets seen by "
                                  "the connection's access_group, by direction (in: after "
                                  "decryption, out: before encryption) and action",
                                  labels=["connection", "direction", "action"])
        for c in conns:
            for dirn, v in (c.get("access_group") or {}).items():
                acl.add_metric([c.get("name"), dirn, "permit"], v.get("permitted", 0))
                acl.add_metric([c.get("name"), dirn, "deny"], v.get("denied", 0))
        yield acl

        ev = CounterMetricFamily("vpnd_ike_events", "IKE events by kind (ike_up, child_up, "
                                 "ike_rekeyed, auth_failed, no_proposal, peer_dead, "
                                 "retransmit, ...)", labels=["connection", "event"])
        for (n, kind), v in sorted(events.items()):
            ev.add_metric([n, kind], v)
        yield ev
        h = HistogramMetricFamily("vpnd_negotiation_seconds", "Time from the start of an IKE "
                                  "negotiation to its IPsec SA installed", labels=["connection"])
        for n, vals in sorted(hist.items()):
            h.add_metric([n], [(str(b), vals[i]) for i, b in enumerate(BUCKETS)]
                         + [("+Inf", vals[-1])], sum_value=vals[-2])
        yield h

    # -- rendering -----------------------------------------------------------------------

    def render(self, accept: str = "", snap: tuple | None = None) -> tuple[bytes, str]:
        """The exposition text of `snap` (default: a snapshot taken now). Thread-safe given a
        snapshot: the endpoint renders in a worker thread, off the event loop."""
        with self._render_lock:
            self._snap = snap
            try:
                if "application/openmetrics-text" in accept:
                    return om.generate_latest(self.registry), om.CONTENT_TYPE_LATEST
                return generate_latest(self.registry), CONTENT_TYPE_LATEST
            finally:
                self._snap = None


MAX_CLIENTS = 8        # scrapers at once; more are closed at once (file descriptors stay bounded)
REQUEST_TIMEOUT = 5.0  # seconds for the request head (a stalled client cannot hold a slot)


class MetricsServer:
    """A minimal HTTP/1.0 server for GET /metrics in the daemon's event loop."""

    def __init__(self, metrics: Metrics, listen: str):
        self.metrics = metrics
        self.where = parse_listen(listen)
        self.server: asyncio.AbstractServer | None = None
        self.clients = 0

    async def start(self) -> None:
        if self.where[0] == "unix":
            path = self.where[1]
            from vpnd.net import unixsock
            unixsock.clear_stale(path, "daemon.metrics")  # never the operator's file (8.7)
            os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
            self.server = await asyncio.start_unix_server(self._serve, path)
            os.chmod(path, 0o660)
        else:
            self.server = await asyncio.start_server(self._serve, self.where[1], self.where[2],
                                                     reuse_address=True)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            try:
                await asyncio.wait_for(self.server.wait_closed(), 2)
            except (asyncio.TimeoutError, Exception):
                pass
            self.server = None
            if self.where[0] == "unix":
                try:
                    os.unlink(self.where[1])
                except OSError:
                    pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.clients >= MAX_CLIENTS:
            writer.close()
            return
        self.clients += 1
        try:
            await self._answer(reader, writer)
        finally:
            self.clients -= 1

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            lines = head.decode("latin-1").split("\r\n")
            method, target, *_ = (lines[0].split() + ["", ""])[:3]
            headers = {}
            for l in lines[1:]:
                k, sep, v = l.partition(":")
                if sep:
                    headers[k.strip().lower()] = v.strip()
            path = target.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, body, ctype = "405 Method Not Allowed", b"GET only\n", "text/plain"
            elif path not in ("/metrics", "/"):
                status, body, ctype = "404 Not Found", b"try /metrics\n", "text/plain"
            else:
                # the snapshot in the loop, the text (the costly part: ~25 samples per
                # connection) in a worker thread, so that packets keep flowing meanwhile
                snap = self.metrics.snapshot()
                body, ctype = await asyncio.get_running_loop().run_in_executor(
                    None, self.metrics.render, headers.get("accept", ""), snap)
                status = "200 OK"
            writer.write((f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\n"
                          f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode())
            if method != "HEAD":
                writer.write(body)
            await asyncio.wait_for(writer.drain(), 10)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            pass
        except Exception:
            log.exception("metrics: request failed")
        finally:
            writer.close()


async def start(daemon, listen: str) -> MetricsServer:
    """The daemon's hook: a running server whose metrics read `daemon.status()`."""
    from vpnd.about import version
    m = Metrics(daemon.status, version())
    srv = MetricsServer(m, listen)
    await srv.start()
    return srv
