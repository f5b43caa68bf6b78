"""The daemon: glue between the kernel (net/), the data plane (esp/) and the IKE core (ike/).

It owns no protocol logic. Packets move in bursts from file-descriptor readiness callbacks
(no task and no log line per packet): TUN → DataPlane.encap → wire, wire → DataPlane.decap
→ TUN. The IKE core is sans-IO: the daemon feeds it datagrams and one loop timer, and
carries out the actions it returns. Manual keying connections (the seed's ipsec-manual
crypto maps) are an engine behind the same façade (vpnd/ike/manual.py), whose
InstallChildSA actions go through the same SA table (vpnd/sadb.py) as the IKE cores'.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import os
import signal
import time

from vpnd import dpdriver, sadb
from vpnd.ike.events import FAILURES, QUIET, EventKind
from vpnd.ike.actions import CHILD_ACTIONS, Event, InstallChildSA, SendDatagram, UpdateChildAddresses, hostport
from vpnd.sadb import ACQUIRE_QUEUE, ACQUIRE_RETRY  # noqa: F401  (tests read them here)
from vpnd.commands import Commands
from vpnd.control import CommandError, ControlServer
from vpnd.textsafe import SafeFormatter
from vpnd.net import notify
from vpnd.status import connection_state, last_error_entry
from vpnd.net.routes import RouteManager, RouteOptions, kill_switch_clear, kill_switch_sync
from vpnd.esp.natt import NON_ESP_MARKER, classify_udp4500
from vpnd.net.addrwatch import AddressWatch, local_addresses
from vpnd.net.sockets import SocketError, WireSockets, local_address
from vpnd.net.tun import (Tun, TunError, TunGone, link_mtu_towards, outer_path,
                          source_address_towards)

log = logging.getLogger("vpnd")

DEFAULT_OUTER_MTU = 1500
ADDRESS_SETTLE = 0.3  # seconds after an address/route change before MOBIKE looks


def _any_of(addr) -> str:
    """The wildcard of a peer address's family (a datagram without PKTINFO)."""
    return "::" if ":" in addr[0] else "0.0.0.0"


class StartupError(Exception):
    """A start-up step failed; the message is one line for the user."""


# -- reading the config (vpnd.config: field names are the YAML keys of the contract) ------

def conn_transforms(conn) -> list[dict]:
    """Every transform a connection may use (all alternatives), for the worst-case TUN MTU."""
    # an IKE connection may find a NAT and move ESP into UDP: count the UDP header
    encap = bool(conn.encap) or conn.manual is None
    # an IPv6 outer header is 20 bytes longer (a %any peer counts as its local address's)
    ipv6 = ":" in str(conn.local or "") or ":" in str(conn.peer or "")
    out = []
    for p in conn.esp:
        for e in p.encryption or (None,):
            for i in p.integrity or (None,):
                for a in p.ah_integrity or (None,):
                    out.append({"encryption": e, "integrity": i, "ah_integrity": a,
                                "udp_encap": encap and a is None, "mode": conn.mode,
                                "ipv6": ipv6})
    if not conn.esp:
        for p in conn.ah:
            for a in p.integrity:
                out.append({"encryption": None, "integrity": None, "ah_integrity": a,
                            "udp_encap": False, "mode": conn.mode, "ipv6": ipv6})
    return out


_networks = sadb.networks


def with_local_addresses(config):
    """The config with `local` filled in from the routing table where it is not set.

    The sans-IO IKE core cannot ask the kernel which source address reaches a peer, but
    needs it (NAT_DETECTION_SOURCE_IP hashes it, RFC 7296 2.23; the outer header of ESP).
    """
    conns = []
    for c in config.connections:
        if not c.local and c.peer and c.peer != "%any":
            src = source_address_towards(str(c.peer))
            if src:
                c = dataclasses.replace(c, local=src)
        conns.append(c)
    return dataclasses.replace(config, connections=tuple(conns))


def _ipcomp_status(inn, out) -> dict:
    """IPComp's CPIs and counters for a child's status entry (nothing without IPComp)."""
    ci = getattr(inn, "ipcomp", None)
    co = getattr(out, "ipcomp", None)
    if ci is None and co is None:
        return {}
    return {"ipcomp": (ci or co).algorithm,
            "cpi_in": f"{ci.cpi:04x}" if ci else "-", "cpi_out": f"{co.cpi:04x}" if co else "-",
            "ipcomp_compressed": co.compressed if co else 0,
            "ipcomp_uncompressed": co.uncompressed if co else 0,
            "ipcomp_decompressed": ci.decompressed if ci else 0,
            "ipcomp_errors": ci.decompress_errors if ci else 0}


class Daemon:
    def __init__(self, config, config_path: str | None = None):
        self.config = config
        self.config_path = config_path
        self.loop: asyncio.AbstractEventLoop | None = None
        self.tun: Tun | None = None
        self.wire: WireSockets | None = None
        self.addrwatch: AddressWatch | None = None
        self._addr_timer = None
        # the data plane and routes (set by setup) behind the SA table's driver
        self.driver = dpdriver.Driver(send_queued=self._send_queued)
        # the CHILD_SAs, guards and acquire queues (sans-IO, vpnd/sadb.py)
        self.sadb = sadb.SATable(config, check=dpdriver.check)
        self.ike = None  # vpnd.ike.manager.IkeManager (IKEv1, IKEv2, manual keying)
        self.control = None
        self.metrics = None  # vpnd.metrics.MetricsServer with daemon.metrics
        from vpnd.monitor import Monitor
        self.monitor = Monitor()  # vpnctl monitor's subscribers (vpnd/monitor.py)
        from vpnd.updown import Updown
        self.updown = Updown()  # connections' updown: scripts (vpnd/updown.py)
        from vpnd.watchdog import Systemd
        self.systemd = Systemd(self)  # STATUS= as tunnels change, WATCHDOG=1 (vpnd/watchdog.py)
        self._static_routes: list = []
        self._steers: dict[str, str] = {}  # transport-mode name -> peer steered into the TUN
        self._timer: asyncio.Handle | None = None
        self._timer_when: float | None = None  # our own deadline: uvloop's call_at may return a
        # plain Handle without when() (deadline due within ~0.5 ms)
        self.commands = Commands(self)  # vpnctl up/down/rekey/reload and their waiters
        self._stop = None
        # what `status` says of each connection (vpnd/status.py connection_state)
        self._attempt: dict[str, float] = {}  # name -> when a negotiation was asked for
        self._last_error: dict[str, dict] = {}  # name -> status.last_error_entry, until success
        self.started_at = time.monotonic()
        self.counters = {"tun_in": 0, "tun_out": 0, "wire_in": 0, "wire_out": 0,
                         "decap_drops": 0, "natt_invalid": 0, "keepalives_in": 0,
                         "loop_errors": 0}
        self.exit_code = 0
        self._last_error_log = -1e9

    @property
    def children(self) -> dict:
        """The installed CHILD_SAs (vpnd/sadb.py Child, plain data), by child id."""
        return self.sadb.children

    @property
    def dp(self):
        """The data plane (esp.DataPlane façade) the SA table's driver installs into."""
        return self.driver.dp

    @dp.setter
    def dp(self, value) -> None:
        self.driver.dp = value

    @property
    def routes(self):
        return self.driver.routes

    @routes.setter
    def routes(self, value) -> None:
        self.driver.routes = value
        self.sadb.routes = value is not None

    @property
    def _admin_down(self) -> set:
        return self.sadb.admin_down

    @property
    def _guards(self) -> dict:
        return self.sadb.guards

    # -- life cycle ----------------------------------------------------------------------

    def _now(self) -> float:
        """The clock of the IKE core and of SA ages: the loop's monotonic time."""
        return self.loop.time() if self.loop is not None else time.monotonic()

    def _conns(self, config=None):
        return tuple((config or self.config).connections)

    def compute_mtu(self) -> tuple[int, int]:
        """(tun_mtu, outer_mtu): configured or 'auto' from the outer interface's MTU."""
        d = self.config.daemon
        peers = [str(c.peer) for c in self._conns()
                 if c.peer and str(c.peer) != "%any"]
        outer = [m for m in (link_mtu_towards(p) for p in peers) if m]
        outer_mtu = min(outer) if outer else DEFAULT_OUTER_MTU
        mtu = d.mtu
        if mtu in (None, "auto", 0):
            from vpnd.esp.overhead import max_inner_size
            sizes = [max_inner_size(outer_mtu, **t) for c in self._conns() for t in conn_transforms(c)]
            mtu = min(sizes) if sizes else outer_mtu - 80
            mtu = max(576, mtu)
        return int(mtu), outer_mtu

    def setup(self) -> None:
        """Everything that touches the kernel; on failure, undoes what it did and raises."""
        from vpnd import esp
        d = self.config.daemon
        try:
            tun_mtu, outer_mtu = self.compute_mtu()
            self.dp = esp.DataPlane(outer_mtu=outer_mtu, mss_clamp=_mss(d.mss_clamp, tun_mtu))
            self.tun = Tun(d.tun, tun_mtu)
            need_ike, need_natt = self._udp_needs()
            self.wire = WireSockets(str(d.listen), int(d.ike_port), int(d.natt_port),
                                    ike=need_ike, natt=need_natt)
            self.routes = RouteManager(self.tun.index)
            self.sadb.source_towards = source_address_towards
            self.sadb.outer_path = self._outer_path
            self._outer_mtu = outer_mtu
            if self._udp_needs()[0]:
                try:  # MOBIKE follows our addresses (RFC 4555); without it, SAs stay put
                    self.addrwatch = AddressWatch()
                except OSError as e:
                    log.warning("cannot watch address changes (MOBIKE off): %s", e.strerror)
        except (TunError, SocketError) as e:
            self.teardown()
            raise StartupError(str(e)) from None
        except BaseException:
            self.teardown()
            raise

    def teardown(self) -> None:
        """Delete SAs, remove our routes and the TUN device; idempotent."""
        self._table(self.sadb.delete_all(quiet=True))
        if self.routes is not None:
            self.routes.close()
            self.routes = None
        if self.wire is not None:
            self.wire.close()
            self.wire = None
        if self.addrwatch is not None:
            self.addrwatch.close()
            self.addrwatch = None
        if self.tun is not None:
            self.tun.close()
            self.tun = None

    async def run(self) -> int:
        self.loop = asyncio.get_running_loop()
        self._stop = self.loop.create_future()
        started = False
        try:
            await self._start_control()
            await self._start_metrics()
            self.setup()
            log.info("TUN %s up, MTU %d (outer MTU %d)", self.tun.name, self.tun.mtu, self._outer_mtu)
            self._attach_readers()
            for sig, handler in ((signal.SIGTERM, self.stop), (signal.SIGINT, self.stop),
                                 (signal.SIGHUP, self._sighup)):
                self.loop.add_signal_handler(sig, handler)
            self._apply_connections(initial=True)
            self._warn_forwarding()
            self._arm_timer()
            self._drop_privileges()  # set-up is done: root is not needed any more
            started = True
            # READY=1 only now: manual SAs and their routes are installed (Type=notify)
            notify.ready(f"{len(self.children)} SAs installed")
            self.systemd.start(self.loop)
            log.info("vpnd ready: %d connection(s), %d SA(s) installed",
                     len(self._conns()), len(self.children))
            await self._stop
        finally:
            self.systemd.stop()
            if started:
                notify.stopping()
                log.info("stopping: deleting SAs, removing routes and %s",
                         self.tun.name if self.tun else "TUN")
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                self.loop.remove_signal_handler(sig)
            self._detach_readers()
            if self._timer:
                self._timer.cancel()
            if started:
                self._stop_ike()
            if self.control is not None:
                await self.control.close()
                self.control = None
            await self._stop_metrics()
            self.updown.close()
            self.teardown()
        return self.exit_code

    def _warn_forwarding(self) -> None:
        """Tunnel mode routes for subnets: say so once at start when the kernel does not."""
        from vpnd.net import forwarding
        try:
            for line in forwarding.warnings(self._conns()):
                log.warning("%s", line)
        except Exception:  # a check, never a reason not to start
            log.debug("could not check IP forwarding", exc_info=True)

    def stop(self) -> None:
        if self._stop is not None and not self._stop.done():
            self._stop.set_result(None)

    def _drop_privileges(self) -> None:
        """Become daemon.user with only NET_ADMIN, NET_RAW, NET_BIND_SERVICE (issue 8.13)."""
        from vpnd.net import privileges
        user = getattr(self.config.daemon, "user", None)
        try:
            target = privileges.resolve(user)
        except (KeyError, ValueError):
            raise StartupError(f"daemon.user: no such user {user!r}") from None
        if target is None and os.geteuid() == 0:
            if user is None:
                log.warning("running as root: create the system user %r (or set daemon.user) "
                            "so that vpnd drops root after start-up", privileges.DEFAULT_USER)
            return
        if target is not None and os.geteuid() == 0 and self.control is not None:
            try:
                self.control.hand_over(target.uid)
            except OSError as e:  # only the socket's removal at exit depends on it
                log.warning("control socket: cannot hand it to %s: %s", target.name,
                            e.strerror or e)
        # Capabilities are per thread: a thread alive during the switch keeps none. The
        # netlink worker starts again after it (inheriting ours) on its next call.
        from vpnd.net import netlink
        netlink.shutdown()
        privileges.preload()  # later imports must not need files the user cannot read
        try:
            log.info("%s", privileges.drop(target))
        except privileges.PrivilegeError as e:
            raise StartupError(str(e)) from None
        stdlib = os.path.dirname(os.__file__)
        if not os.access(stdlib, os.R_OK | os.X_OK):
            log.warning("Python's library %s is not readable as uid %d: a module vpnd has not "
                        "loaded yet cannot be imported (install Python outside /root)",
                        stdlib, os.geteuid())
        for path in self._files_to_reread():
            if not os.access(path, os.R_OK):
                log.warning("reload will fail: %s cannot be read as uid %d; give it the group "
                            "vpnd runs as (chgrp, chmod 640)", path, os.geteuid())

    def _files_to_reread(self) -> list[str]:
        paths = [self.config_path] if self.config_path else []
        for c in self._conns():
            a = c.auth
            if c.psk_file:
                paths.append(c.psk_file)
            if a is not None:
                paths += [p for p in (a.cert, a.key, a.peer_pubkey, *a.ca) if p]
        return list(dict.fromkeys(paths))

    async def _start_control(self):
        d = self.config.daemon
        path = d.control_socket
        self.control = ControlServer(path, self, group=d.control_group)
        try:
            await self.control.start()
        except OSError as e:
            self.control = None
            raise StartupError(f"cannot open control socket {path}: {e.strerror or e}") from None

    async def _start_metrics(self):
        """daemon.metrics: the Prometheus endpoint in this loop (vpnd/metrics.py)."""
        where = getattr(self.config.daemon, "metrics", None)
        if not where:
            return
        from vpnd import metrics
        try:
            self.metrics = await metrics.start(self, where)
        except OSError as e:
            raise StartupError(f"cannot open metrics endpoint {where}: {e.strerror or e}") from None
        log.info("metrics on %s", where)

    async def _stop_metrics(self):
        if self.metrics is not None:
            await self.metrics.close()
            self.metrics = None

    def _attach_readers(self):
        lp = self.loop
        lp.add_reader(self.tun.fileno(), self._on_tun)
        for sock, proto in self.wire.raw_sockets():  # ESP and AH, IPv4 and IPv6
            lp.add_reader(sock.fileno(), self._on_raw, sock, proto)
        if self.addrwatch is not None:
            lp.add_reader(self.addrwatch.fileno(), self._on_addr_event)
        self._udp_readers: dict = {}
        self._sync_udp_readers()

    def _udp_needs(self, config=None) -> tuple[bool, bool]:
        """(UDP ike_port, UDP natt_port) needed: IKE only for IKE connections (Cisco's `no
        crypto isakmp enable` when all are manual); NAT-T also for manual `encap: true`."""
        conns = self._conns(config)
        ike = any(c.manual is None for c in conns)
        return ike, ike or any(c.manual is not None and c.encap for c in conns)

    def _sync_udp_readers(self) -> None:
        """Readers on exactly the UDP sockets that are open now."""
        if self.loop is None or self.wire is None:
            return
        readers = getattr(self, "_udp_readers", {})
        want = {}
        for sock, kind in self.wire.udp_sockets():  # every family
            want[sock.fileno()] = (self._on_natt if kind == "natt" else self._on_ike_socket, sock)
        for fd, cb in list(readers.items()):
            if want.get(fd) != cb:
                try:
                    self.loop.remove_reader(fd)
                except (ValueError, OSError):
                    pass
                del readers[fd]
        for fd, cb in want.items():
            if fd not in readers:
                self.loop.add_reader(fd, *cb)
                readers[fd] = cb
        self._udp_readers = readers

    def _sync_udp(self, open_only: bool = False) -> None:
        """On a reload: open the IKE / NAT-T ports the new configuration needs (an IKE
        connection added to a manual-only one) before the IKE core sends, close those it
        no longer needs after the core's Deletes went out."""
        if self.wire is None:
            return
        ike, natt = self._udp_needs()
        if open_only:
            ike, natt = ike or self.wire.ike is not None, natt or self.wire.natt is not None
        before = self.wire.udp_ports()
        for sock, kind in self.wire.udp_sockets():  # readers off before their sockets close
            fd = sock.fileno()
            if fd in getattr(self, "_udp_readers", {}) and not (natt if kind == "natt" else ike):
                self.loop.remove_reader(fd)
                del self._udp_readers[fd]
        try:
            self.wire.open_udp(ike=ike, natt=natt)
        except SocketError as e:
            log.error("reload: %s", e)
        self._sync_udp_readers()
        if self.wire.udp_ports() != before:
            log.info("UDP ports now %s", ", ".join(map(str, self.wire.udp_ports())) or "none")

    def _tun_gone(self, e: TunGone) -> None:
        """The TUN device was deleted under us: poll would report it readable for ever."""
        self.loop.remove_reader(self.tun.fileno())
        log.error("%s: stopping (a restart creates it again)", e)
        self.exit_code = 2  # not 1: systemd's Restart=on-failure brings vpnd back
        self.stop()

    def _internal_error(self, msg: str, *args) -> None:
        """A bug met by input from outside: counted (loop_errors), logged with its traceback
        at most once a second, so that a flood of such input cannot flood the log."""
        self.counters["loop_errors"] += 1
        now = time.monotonic()
        if now - self._last_error_log >= 1.0:
            self._last_error_log = now
            log.exception(msg, *args)

    def _detach_readers(self):
        if self.loop is None:
            return
        socks = [s for s, _ in self.wire.raw_sockets() + self.wire.udp_sockets()] \
            if self.wire is not None else []
        for obj in [self.tun, self.addrwatch, *socks]:
            if obj is not None:
                try:
                    self.loop.remove_reader(obj.fileno())
                except (ValueError, OSError):
                    pass

    # -- hot path ------------------------------------------------------------------------

    def _on_tun(self):
        try:
            pkts = self.tun.read_burst()
            if not pkts:
                return
            self.counters["tun_in"] += len(pkts)
            self.dp.now = self.loop.time()
            self._send_outputs(self.dp.encap_many(pkts))
            if self.dp.events:
                self._drain_events()
        except TunGone as e:
            self._tun_gone(e)
        except Exception:  # nothing from outside reaches the event loop: the burst is dropped
            self._internal_error("error reading the TUN device (burst dropped)")

    def _send_outputs(self, outs):
        """Carry out the data plane's results: runs of equal-size ESP-in-UDP datagrams to
        one peer leave in one UDP_SEGMENT send, raw packets one by one."""
        wire = self.wire
        send_ip = wire.send_ip
        run: list = []
        run_dst = run_src = None
        run_len = 0
        tun_out = 0
        for out in outs:
            kind = out[0]
            if kind == "raw":
                send_ip(out[1], out[2])
            elif kind == "udp":
                data = out[2]
                dst = out[1]
                src = out[3][0] if len(out) > 3 and out[3] else None
                if run:
                    if dst == run_dst and src == run_src and len(data) == run_len and len(run) < 32:
                        run.append(data)
                        continue
                    wire.send_esp_udp_run(run_dst, run, run_src)
                run = [data]
                run_dst, run_src, run_len = dst, src, len(data)
            elif kind == "tun":
                self.tun.write(out[1])
                tun_out += 1
        if run:
            wire.send_esp_udp_run(run_dst, run, run_src)
        self.counters["wire_out"] += len(outs) - tun_out
        if tun_out:
            self.counters["tun_out"] += tun_out

    def _on_raw(self, sock, proto):
        try:
            pkts = self.wire.recv_raw(sock)
            if not pkts:
                return
            self.counters["wire_in"] += len(pkts)
            self.dp.now = self.loop.time()
            decap = self.dp.decap
            inners = []
            for data, src in pkts:
                inner = decap(data, proto, src, 0)  # never raises: drops are counted
                if inner is not None:
                    inners.append(inner)
            self.tun.write_many(inners)  # TCP runs coalesced (GRO, esp/offload.py)
            delivered = len(inners)
            self.counters["tun_out"] += delivered
            self.counters["decap_drops"] += len(pkts) - delivered
            if self.dp.events:
                self._drain_events()
        except Exception:  # nothing from outside reaches the event loop: the burst is dropped
            self._internal_error("error reading a raw socket (burst dropped)")

    def _on_natt(self, sock=None):
        try:
            items = self.wire.recv_udp(sock or self.wire.natt)
            if not items:
                return
            self.dp.now = self.loop.time()
            decap = self.dp.decap
            inners = []
            append = inners.append
            esp_in = 0
            counters = self.counters
            for data, addr, anc in items:
                # ESP (RFC 3948 2.2: a non-zero SPI where IKE has its marker, 8 bytes at
                # least) is the common case: decided without a call; the rest by
                # classify_udp4500
                if len(data) >= 8 and data[:4] != NON_ESP_MARKER:
                    esp_in += 1
                    inner = decap(data, 17, addr[0], addr[1])
                    if inner is not None:
                        append(inner)
                    continue
                kind = classify_udp4500(data)
                if kind == "ike":
                    port = self.wire.natt_port
                    self._ike_receive(data[4:], (local_address(anc, _any_of(addr)), port), addr)
                elif kind == "keepalive":
                    counters["keepalives_in"] += 1
                else:  # "bad": what is left of "esp" was decided above
                    counters["natt_invalid"] += 1
            if esp_in:
                delivered = len(inners)
                counters["wire_in"] += esp_in
                counters["tun_out"] += delivered
                counters["decap_drops"] += esp_in - delivered
            self.tun.write_many(inners)
            if self.dp.events:
                self._drain_events()
        except Exception:  # nothing from outside reaches the event loop: the burst is dropped
            self._internal_error("error reading the NAT-T socket (burst dropped)")

    def _on_ike_socket(self, sock=None):
        try:
            port = self.wire.ike_port
            for data, addr, anc in self.wire.recv_udp(sock or self.wire.ike, 16):
                self._ike_receive(data, (local_address(anc, _any_of(addr)), port), addr)
        except Exception:  # nothing from outside reaches the event loop: the burst is dropped
            self._internal_error("error reading the IKE socket (burst dropped)")

    # -- our addresses (MOBIKE) -----------------------------------------------------------

    def _on_addr_event(self):
        """Links, addresses or routes changed: look once they settle (an address removal
        comes with its routes' removals, a new uplink with several messages)."""
        try:
            if self.addrwatch.drain() and self._addr_timer is None:
                self._addr_timer = self.loop.call_later(ADDRESS_SETTLE, self._addresses_check)
        except Exception:
            self._internal_error("error reading address changes")

    def _addresses_check(self):
        """Tell the IKE core our addresses now and which of them reaches each peer whose
        path it decides (MOBIKE initiator)."""
        self._addr_timer = None
        if self.ike is None:
            return
        try:
            now = self._now()
            addrs = local_addresses(self.tun.index if self.tun is not None else None)
            sources = {p: source_address_towards(p) for p in self.ike.mobike_peers()}
            self._run_actions(self.ike.addresses_changed(addrs, sources, now))
            self._refresh_local_addresses(now)
        except Exception:
            self._internal_error("error handling address changes")

    def _refresh_local_addresses(self, now: float) -> None:
        """IKEv2 connections without `local:` start their next IKE SA (a restart after DPD,
        a re-initiation) from the address the kernel uses towards the peer now, not from
        one that went away. IKEv1 ones keep theirs (an IKEv1 SA cannot move: a change
        would tear it down)."""
        import dataclasses
        fresh = with_local_addresses(self.config)
        current = {c.name: c for c in self.ike.config.connections}
        conns = tuple(c if c.version == 2 or c.name not in current else current[c.name]
                      for c in fresh.connections)
        if any(current.get(c.name) is None or current[c.name].local != c.local for c in conns):
            self._run_actions(self.ike.reload(dataclasses.replace(fresh, connections=conns), now))

    # -- data plane events ---------------------------------------------------------------

    def _drain_events(self):
        events = self.dp.events
        while events:
            ev = events.popleft()
            try:
                self._handle_dp_event(ev)
            except Exception:
                self._internal_error("error handling data plane event %r", ev[0])

    def _handle_dp_event(self, ev):
        """Events of esp.DataPlane (see its docstring): lifetimes, unknown SPIs, acquires."""
        kind = ev[0]
        now = self._now()
        if kind in ("soft_expire", "hard_expire"):
            hard = kind == "hard_expire"
            child = self.children.get(ev[1].tag)
            if child is None:
                return
            if self.ike is not None:
                self._run_actions(self.ike.child_expiring(child.child_id, hard, now))
        elif kind == "unknown_spi":
            _, protocol, spi, src = ev
            log.debug("%s packet with unknown SPI %08x from %s", protocol.upper(), spi, src)
            if self.ike is not None and protocol == "esp":
                self._run_actions(self.ike.unknown_spi(spi, (src, self.wire.ike_port), now))
        elif kind == "acquire":
            _, policy_id, packet = ev
            if isinstance(policy_id, tuple) and policy_id[0] == "trap":
                self._acquire(policy_id[1], packet, now)

    def _acquire(self, name: str, packet: bytes, now: float):
        """A packet hit the trap policy of `name`: start it, keep the packet until it is up
        (vpnd/sadb.py: asked again after ACQUIRE_RETRY or after a failure)."""
        if self.sadb.acquire(name, packet, now) and self.ike is not None:
            log.info("%s: traffic for the tunnel, initiating", name)
            self.monitor.publish_acquire(name, packet)
            self._note_attempt(name)
            self._run_actions(self.ike.acquire(name, packet, now))

    # -- child SAs: the SA table (vpnd/sadb.py) and its driver (vpnd/dpdriver.py) ----------

    def _table(self, ops) -> None:
        """Carry out the SA table's ops on the data plane and routes, then its notes."""
        for n in self.driver.run(ops):
            self._table_note(n)

    def _table_note(self, n) -> None:
        if isinstance(n, sadb.ChildInstalled):
            child = n.child
            act = child.action
            log.info("%s: SA installed, %s, SPIs in %s out %s%s", act.connection,
                     act.proposal, "/".join(f"{k.spi:08x}" for k in act.inbound),
                     "/".join(f"{k.spi:08x}" for k in act.outbound),
                     " (UDP-encapsulated)" if act.udp_encap else "")
            if act.outbound and not child.manual:
                self._succeeded(act.connection)
            self._updown("up", child, self._conn(act.connection))
            self.systemd.changed()
            self._wake(act.connection, "up")
        elif isinstance(n, sadb.OutboundActivated):
            act = n.child.action
            self._succeeded(act.connection)
            self.systemd.changed()
            log.info("%s: outbound traffic moved to SPI %s", act.connection,
                     "/".join(f"{k.spi:08x}" for k in act.outbound))
        elif isinstance(n, sadb.ChildRemoved):
            child = n.child
            if not n.quiet:
                log.info("%s: SA deleted (SPIs in %s)", child.connection,
                         "/".join(f"{k.spi:08x}" for k in child.inbound))
                self._updown("down", child, self._conn(child.connection))
            self.systemd.changed()
            if n.last:
                self._wake(child.connection, "down")
        elif isinstance(n, sadb.InstallFailed):
            log.error("%s: cannot install SA: %s", n.connection, n.reason)
            # refused by the data plane half-way: what went in comes out again
            self._table(self.sadb.delete(n.child_id, quiet=True))
            if self.ike is not None:
                self.ike.install_failed(n.child_id)

    def _send_queued(self, packets) -> None:
        self._send_outputs(self.dp.encap_many(list(packets)))

    def _install_child(self, act: InstallChildSA, manual: bool = False):
        """Install `act` through the SA table; the child, or None if it could not go in."""
        self._table(self.sadb.install(act, self._now(), manual=manual))
        return self.sadb.children.get(act.child_id)

    def _delete_child(self, child_id: int, quiet: bool = False) -> None:
        self._table(self.sadb.delete(child_id, quiet=quiet))

    def _updown(self, verb: str, child, conn) -> None:
        """updown: of the connection, unless a rekey (another SA of the same selectors)."""
        from vpnd.updown import is_rekey
        if conn is not None and conn.updown and not is_rekey(self.children, child):
            self.updown.child_event(verb, conn, child.action, self.tun.name if self.tun else "")

    def _restore_guard(self, name: str) -> None:
        """(Re)install the guard policy of `name` behind its SAs (fail closed, issue 8.6)."""
        if self.dp is not None:
            self._table(self.sadb.restore_guard(name))

    def _conn(self, name):
        for c in self._conns():
            if c.name == name:
                return c
        return None

    # -- connections ---------------------------------------------------------------------

    def _apply_connections(self, initial: bool = False):
        """At start: the engines (manual SAs go in, `start: start` connections are
        initiated), then the static/guard routes and policies."""
        self._sync_ipv6()
        self._apply_filters({c.name: c for c in self._conns()})
        if initial:
            self._start_ike()
        self._apply_static_routes()

    def _sync_ipv6(self) -> None:
        set_ipv6 = getattr(self.tun, "set_ipv6", None)
        if set_ipv6 is not None:  # before routes: IPv6 routes need IPv6 on the device
            set_ipv6(self._needs_ipv6())

    def _apply_filters(self, conns: dict) -> None:
        """access_group lists into the data plane; unchanged ones keep their counters."""
        from vpnd.esp.acl import ConnFilter
        if self.dp is None:
            return
        for name in list(self.dp.filters):
            c = conns.get(name)
            if c is None or c.access_group is None:
                self.dp.set_filter(name, None)
        for name, c in conns.items():
            ag = c.access_group
            if ag is None:
                continue
            old = self.dp.filters.get(name)
            if old is None or old.spec != (ag.inbound, ag.outbound):
                self.dp.set_filter(name, ConnFilter(ag.inbound, ag.outbound))

    def _needs_ipv6(self) -> bool:
        """Whether any connection carries IPv6 through the TUN (else the device has IPv6
        off, so the kernel sends no link-local chatter into it, issue 7.11)."""
        for c in self._conns():
            nets = _networks(c.local_ts) + _networks(c.remote_ts)
            if any(n.version == 6 for n in nets):
                return True
            if c.mode == "transport" and ":" in str(c.peer or ""):
                return True
        return False

    def _outer_path(self, peer: str):
        """The kernel's path to `peer` outside the TUN: (ifindex, gateway) or None."""
        path = outer_path(peer)
        if path is not None and path[0] != (self.tun.index if self.tun else None):
            return path
        return None

    def _apply_static_routes(self):
        """Fail closed (issue 8.6): every configured connection's traffic reaches the TUN for
        as long as the daemon runs, SA or not. Tunnel mode: the routes to its remote subnets
        (rri, unless rri.enabled is false); transport mode: the rules steering this host's
        traffic to the peer. In the data plane a guard policy per connection (behind its
        SAs' policies) traps or drops what no SA carries. With daemon.kill_switch, blackhole
        routes for the remote subnets stay behind when vpnd stops or dies."""
        if self.dp is not None:
            self._table(self.sadb.sync_guards())  # removed connections' guards go too
        if self.routes is None:
            return
        want = []
        steers = {}
        kill = []
        for c in self._conns():
            opts = RouteOptions.from_config(c.rri)
            if c.mode == "tunnel":
                nets = [n for n in _networks(c.remote_ts) if n.prefixlen > 0]  # never a default route
                want.extend(sadb.rri_routes(c, nets, str(c.peer), self._outer_path))
                kill.extend(nets)
            elif opts.enabled and str(c.peer) not in ("%any", "None"):
                peer = str(c.peer)
                local = str(c.local) if c.local else source_address_towards(peer)
                if local:
                    steers[c.name] = (peer, local, opts)
        for net, opts in want:  # add before removing: a route that stays is never dropped
            self.routes.add(net, opts)
        for net, opts in self._static_routes:
            self.routes.remove(net, opts)
        self._static_routes = want
        for name, (peer, local, opts) in steers.items():
            if name not in self._steers:
                self.routes.steer(peer, local, opts)
        for name, peer in list(self._steers.items()):
            if name not in steers or steers[name][0] != peer:
                self.routes.unsteer(peer)
        self._steers = {name: v[0] for name, v in steers.items()}
        if getattr(self.config.daemon, "kill_switch", False):
            kill_switch_sync(kill)
        else:
            kill_switch_clear()

    # -- IKE -----------------------------------------------------------------------------
    # Everything IKE (and manual keying) goes through the IkeManager façade (docs/internals.md).

    def _start_ike(self):
        """The engines behind the IkeManager façade: manual SAs go in, `start: start`
        connections are initiated."""
        if self.ike is not None or not self._conns():
            return
        from vpnd.ike.manager import IkeManager
        now = self._now()
        self.ike = IkeManager(with_local_addresses(self.config), now=now)
        if self.addrwatch is not None:
            self._addresses_check()  # our addresses, for the lists MOBIKE sends (RFC 4555 3.6)
        self._run_actions(self.ike.start(now))
        for c in self._conns():
            if c.manual is None and c.start == "start":
                self._note_attempt(c.name)
                self._run_actions(self.ike.initiate(c.name, now))

    def _stop_ike(self):
        if self.ike is None:
            return
        now = self._now()
        for c in self._conns():
            if c.manual is None:
                try:
                    self._run_actions(self.ike.terminate(c.name, now))
                except Exception:
                    log.exception("error terminating %s", c.name)

    def _ike_receive(self, data: bytes, local, remote):
        if self.ike is None:
            return
        try:
            actions = self.ike.receive(data, local, remote, self._now())
        except Exception:
            self._internal_error("IKE core failed on a datagram from %s:%d (dropped)", *remote)
            return
        self._run_actions(actions)

    def _on_timer(self):
        self._timer = None
        self._timer_when = None
        if self.ike is not None:
            try:
                self._run_actions(self.ike.handle_timer(self._now()), rearm=False)
                self._report_activity()
            except Exception:
                self._internal_error("IKE timer handling failed")
        try:
            self._table(self.sadb.handle_timer(self._now()))  # retired SAs whose time came
        except Exception:
            self._internal_error("SA table timer handling failed")
        self._arm_timer()

    def _report_activity(self):
        """Tell the IKE core when each child last saw traffic (idle_time, on-demand DPD)."""
        for child in self.children.values():
            objs = self.driver.sas.get(child.child_id)
            if objs is None:
                continue
            last_in = max((s.last_in or 0.0 for s in objs.inbound), default=0.0)
            last_out = max((s.last_out or 0.0 for s in objs.outbound), default=0.0)
            if (last_in, last_out) != (child.last_in, child.last_out):
                child.last_in, child.last_out = last_in, last_out
                self.ike.child_activity(child.child_id, last_in, last_out)

    def _arm_timer(self):
        """(Re)arm the one loop timer at the core's next deadline (at most 1 s away).
        Never raises: a failure here would drop the rest of the caller's burst."""
        if self.ike is None or self.loop is None:
            return
        try:
            when = self.ike.next_timer()
            retire = self.sadb.next_timer()
            if retire is not None:
                when = retire if when is None else min(when, retire)
        except Exception:  # the one-second tick below keeps the core's timers running
            self._internal_error("IKE next_timer failed")
            when = None
        try:
            # activity reports need a tick even when the core has nothing scheduled
            tick = self._now() + 1.0
            when = tick if when is None else min(float(when), tick)
            if self._timer is not None:
                if self._timer_when is not None and abs(self._timer_when - when) < 1e-3:
                    return
                self._timer.cancel()
                self._timer = None
            self._timer = self.loop.call_at(when, self._on_timer)
            self._timer_when = when
        except Exception:
            self._internal_error("arming the IKE timer failed")
            if self._timer is None:  # never leave the core without a tick
                self._timer = self.loop.call_later(1.0, self._on_timer)
                self._timer_when = self._now() + 1.0

    def _run_actions(self, actions, rearm: bool = True):
        for a in actions or ():
            try:
                if isinstance(a, SendDatagram):
                    self.wire.send_ike(a.data, a.local, a.remote)
                elif isinstance(a, CHILD_ACTIONS):
                    self._table(self.sadb.apply(a, self._now()))
                    if isinstance(a, UpdateChildAddresses) and a.child_id in self.children:
                        act = self.children[a.child_id].action
                        log.info("%s: SPIs in %s now %s -> %s%s", act.connection,
                                 "/".join(f"{k.spi:08x}" for k in act.inbound), hostport(a.local),
                                 hostport(a.remote), " (UDP-encapsulated)" if a.udp_encap else "")
                elif isinstance(a, Event):
                    self._on_event(a)
                else:  # a core returned something that is not an action: a bug, reported
                    raise TypeError(f"not an action: {type(a).__name__}")
            except Exception:  # counted, logged at most once a second; the next action runs
                self._internal_error("error carrying out %s", type(a).__name__)
        if rearm:
            self._arm_timer()

    def _on_event(self, ev: Event):
        """An event of the IKE core: a log line; failures end a waiting vpnctl command."""
        level = (logging.WARNING if ev.kind in FAILURES else
                 logging.DEBUG if ev.kind in QUIET else logging.INFO)
        log.log(level, "%s", ev.message)
        if self.metrics is not None:
            self.metrics.metrics.on_event(ev.kind, ev.connection)
        self.monitor.on_core_event(ev, self.children)
        if not ev.connection:
            return
        if ev.kind is EventKind.IKE_REKEYED:
            self._wake(ev.connection, "ike_rekeyed")
        elif ev.kind is EventKind.IKE_CONNECTING:  # also the core's own restarts (DPD, rekey)
            self._note_attempt(ev.connection)
        elif ev.kind in FAILURES:
            self.sadb.forget_acquire(ev.connection)  # the next packet starts anew
            self._attempt.pop(ev.connection, None)
            if self._conn(ev.connection) is not None:
                self._last_error[ev.connection] = last_error_entry(ev.kind, ev.message)
            self._fail(ev.connection, ev.message)

    def _note_attempt(self, name: str) -> None:
        self._attempt[name] = self._now()
        self._set_admin_down(name, False)

    def _succeeded(self, name: str) -> None:
        """An IPsec SA of `name` can send: the attempt is over, its last error forgotten."""
        self._attempt.pop(name, None)
        self._last_error.pop(name, None)
        self._set_admin_down(name, False)

    def _set_admin_down(self, name: str, down: bool) -> None:
        """vpnctl down is final: the guard of `name` (if any) may become a drop."""
        self._table(self.sadb.set_admin_down(name, down))

    # -- control commands (vpnd/commands.py; control.py calls these) -----------------------

    def _wake(self, connection: str, what: str):
        self.commands.waiters.wake(connection, what)

    def _fail(self, connection: str, reason: str):
        self.commands.waiters.fail(connection, reason)

    @property
    def _waiters(self) -> list:
        return self.commands.waiters.items

    def _has_child(self, name: str) -> bool:
        return any(c.connection == name for c in self.children.values())

    def _require(self, name: str):
        return self.commands._require(name)

    async def cmd_up(self, name: str, timeout: float = 30.0) -> dict:
        return await self.commands.up(name, timeout)

    async def cmd_down(self, name: str, timeout: float = 15.0) -> dict:
        return await self.commands.down(name, timeout)

    async def cmd_down_many(self, req: dict, timeout: float = 15.0) -> dict:
        """vpnctl down --peer ADDR / --all (vpnd/conns.py)."""
        from vpnd import conns
        return await conns.down_many(self, req, timeout)

    def cmd_conns(self) -> dict:
        from vpnd import conns
        return conns.describe(self)

    async def cmd_rekey(self, name: str, ike: bool = False, timeout: float = 30.0) -> dict:
        return await self.commands.rekey(name, ike=ike, timeout=timeout)

    async def cmd_reload(self) -> dict:
        return await self.commands.reload()

    def _sighup(self):
        if self.loop is not None and self.loop.is_running():
            self._reload_task = self.loop.create_task(self._sighup_async())
            return
        try:
            self.reload()
        except CommandError:
            pass  # reload() logged why; the old config keeps running
        except Exception:  # a signal handler's exception would only reach the loop
            log.exception("reload on SIGHUP failed part-way")

    async def _sighup_async(self):
        try:
            await self.reload_async()
        except CommandError:
            pass  # logged; the old config keeps running
        except Exception:
            log.exception("reload on SIGHUP failed part-way")

    async def reload_async(self) -> dict:
        """reload(), with the file reading and checking in a thread: a big or slow config
        (certificates, keys, up to 1 MiB of YAML) does not stall the data plane (issue 8.8)."""
        notify.reloading()
        try:
            new = await self.loop.run_in_executor(None, self._load_new)
            return self._apply_new(new)
        finally:
            notify.ready()
            self.systemd.changed()  # the number of connections may have changed

    def reload(self) -> dict:
        notify.reloading()
        try:
            return self._apply_new(self._load_new())
        finally:
            notify.ready()
            self.systemd.changed()  # the number of connections may have changed

    def _load_new(self):
        """The checked new config, or CommandError (logged); runs in a worker thread."""
        from vpnd.config import ConfigError, load_config
        if not self.config_path:
            raise CommandError("no config file to reload")
        try:
            new = load_config(self.config_path)
        except ConfigError as e:
            for p in e.problems:
                log.error("reload: %s", p)
            raise CommandError("reload failed: invalid config, still running the old one: "
                               + "; ".join(e.problems)) from None
        except OSError as e:
            log.error("reload: cannot read %s: %s", self.config_path, e.strerror)
            raise CommandError(f"reload failed: cannot read {self.config_path}: {e.strerror}") from None
        except Exception as e:  # a checker bug: the old config keeps running
            log.error("reload: internal error while checking %s (%s)", self.config_path,
                      type(e).__name__)
            raise CommandError("reload failed: internal error while checking the config, "
                               "still running the old one") from None
        return new

    def _apply_new(self, new) -> dict:
        for w in getattr(new, "warnings", ()):
            log.warning("reload: %s", w)
        self._reload_daemon_section(new)
        old_names = {c.name for c in self._conns() if c.manual is None}
        self.config = new
        self.sadb.set_config(new)
        self._sync_udp(open_only=True)
        self._sync_ipv6()
        self._apply_filters({c.name: c for c in self._conns()})
        if self.ike is not None:
            now = self._now()
            # manual SAs removed or changed go, new or changed ones come (vpnd/ike/manual.py)
            self._run_actions(self.ike.reload(with_local_addresses(new), now))
            for c in self._conns():  # new `start: start` connections come up now
                if c.manual is None and c.start == "start" and c.name not in old_names:
                    self._note_attempt(c.name)
                    self._run_actions(self.ike.initiate(c.name, now))
        else:
            self._start_ike()
        self._apply_static_routes()
        self._sync_udp()
        log.info("reloaded %s: %d connection(s)", self.config_path, len(self._conns()))
        return {"reloaded": True, "connections": [c.name for c in self._conns()]}

    def _reload_daemon_section(self, new):
        old_d, new_d = self.config.daemon, new.daemon
        level = new_d.log_level
        logging.getLogger().setLevel(_level(level))
        for key in ("tun", "listen", "ike_port", "natt_port", "control_socket", "metrics"):
            if getattr(old_d, key) != getattr(new_d, key):
                log.warning("reload: daemon.%s changed; it takes effect on restart", key)
        if self.tun is not None:  # the MTU follows the daemon.mtu key and, for auto, the transforms
            old_cfg = self.config
            self.config = new
            try:
                mtu, outer = self.compute_mtu()
                if mtu != self.tun.mtu:
                    self.tun.set_mtu_and_up(mtu)
                    log.info("TUN %s MTU now %d", self.tun.name, mtu)
                self.dp.outer_mtu = outer
                self.dp.mss_clamp = _mss(new_d.mss_clamp, mtu)
            except TunError as e:
                log.error("reload: %s", e)
            finally:
                self.config = old_cfg

    # -- status --------------------------------------------------------------------------

    def export_keys(self) -> dict:
        """The control command "keys" (vpnctl keys --wireshark): refused unless allowed."""
        from vpnd import keyexport
        return keyexport.export(self)

    def status(self) -> dict:
        now = self._now()
        conns_out, ike_sas = [], []
        ike_status = None
        if self.ike is not None:
            try:
                ike_status = self.ike.status(now)
            except Exception:
                log.exception("IKE status failed")
        by_spi_in = {}
        for child in self.children.values():
            if child.inbound:
                by_spi_in[f"{child.inbound[0].spi:08x}"] = child
        ike_conn_entries = {}
        if ike_status:
            for e in ike_status.get("connections", []):
                ike_conn_entries[e.get("name")] = e
            for sa in ike_status.get("ike_sas", []):
                for ch in sa.get("child_sas", []):
                    child = self.children.get(ch.get("child_id")) or by_spi_in.get(str(ch.get("spi_in", "")))
                    if child is not None:
                        ch.update(self._child_counters(child, now))
                    else:  # not installed here (yet): the contract's counters are still numbers
                        for k in ("bytes_in", "packets_in", "bytes_out", "packets_out",
                                  "replay_drops", "auth_failures"):
                            ch.setdefault(k, 0)
                ike_sas.append(sa)
        for c in self._conns():
            name = c.name
            peer = str(c.peer)
            if c.manual is not None:
                conns_out.append(ike_conn_entries.get(name) or {
                    "name": name, "version": c.version, "peer": peer, "state": "down",
                    "ike_sas": 0, "child_sas": 0, "keying": "manual", "last_error": None})
            else:
                entry = ike_conn_entries.get(name)
                if entry is None:
                    n = sum(1 for ch in self.children.values() if ch.connection == name)
                    entry = {"name": name, "version": c.version, "peer": peer, "ike_sas": 0,
                             "child_sas": n}
                entry.update(self._conn_state(c, ike_sas, now))
                conns_out.append(entry)
        for e in conns_out:     # access_group counters (the entries': vpnctl conns)
            flt = self.dp.filters.get(e["name"]) if self.dp is not None else None
            if flt is not None:
                e["access_group"] = {k: {"permitted": a.permitted, "denied": a.denied}
                                     for k, a in (("in", flt.inbound), ("out", flt.outbound))
                                     if a is not None}
        out = {"connections": conns_out, "ike_sas": ike_sas}
        out["daemon"] = {"tun": self.tun.name if self.tun else None,
                         "mtu": self.tun.mtu if self.tun else None,
                         "uptime_s": int(time.monotonic() - self.started_at),
                         "routes": self.routes.installed() if self.routes else [],
                         "udp_ports": self.wire.udp_ports() if hasattr(self.wire, "udp_ports") else [],
                         **self.counters, "send_errors": self.wire.send_errors if self.wire else 0,
                         "tun_read_errors": getattr(self.tun, "read_errors", 0) if self.tun else 0,
                         "ike_drops": int(getattr(self.ike, "drops", 0) or 0),
                         "monitors": len(self.monitor.subscribers),  # vpnctl monitor clients
                         **self._dp_counters()}
        return out

    def _conn_state(self, conn, ike_sas: list, now: float) -> dict:
        """state and last_error of an IKE connection (vpnd/status.py connection_state)."""
        name = conn.name
        mine = [c for c in self.children.values() if c.connection == name]
        installed = sum(1 for c in mine if c.outbound)
        ike_states = [str(sa.get("state", "")) for sa in ike_sas
                      if sa.get("connection") == name and sa.get("keying") != "manual"]
        childless = any(sa.get("childless") and sa.get("connection") == name for sa in ike_sas)
        asked = self._attempt.get(name)
        attempt = asked is not None or any(not c.outbound for c in mine)
        err = self._last_error.get(name)
        state = connection_state(
            installed=installed, ike_states=ike_states, attempt=attempt,
            attempt_age=now - asked if asked is not None else 0.0, last_error=err,
            trap=self._guards.get(name) == "trap", admin_down=name in self._admin_down,
            childless=childless)
        if err is not None:
            err = {k: v for k, v in err.items() if k != "at"}
            err["age_s"] = max(0, int(time.time() - self._last_error[name]["at"]))
        return {"state": state, "last_error": err}

    def _dp_counters(self) -> dict:
        c = getattr(self.dp, "counters", None)
        if c is None:
            return {}
        if isinstance(c, dict):
            items = c.items()
        else:
            items = ((k, getattr(c, k)) for k in dir(c) if not k.startswith("_"))
        return {f"dp_{k}": v for k, v in items if isinstance(v, int) and not isinstance(v, bool)}

    def _child_counters(self, child, now: float) -> dict:
        objs = self.driver.sas.get(child.child_id) or dpdriver.ChildSAs()
        sas_in, sas_out = objs.inbound, objs.outbound
        inn = sas_in[0] if sas_in else None
        out = sas_out[0] if sas_out else None
        return {"bytes_in": _counter(inn, "bytes_in"), "packets_in": _counter(inn, "packets_in"),
                "bytes_out": _counter(out, "bytes_out"), "packets_out": _counter(out, "packets_out"),
                "replay_drops": sum(_counter(s, "replay_drops") for s in sas_in),
                "auth_failures": sum(_counter(s, "auth_failures") for s in sas_in),
                # beyond the contract: the other per-SA drop reasons of the data plane
                **{k: sum(_counter(s, k) for s in sas_in + sas_out)
                   for k in ("malformed", "pad_errors", "policy_drops", "expired_drops")},
                **_ipcomp_status(inn, out)}


def _mss(setting, tun_mtu: int) -> int | None:
    """daemon.mss_clamp: None/off, "auto" = what fits the TUN (IPv4 + TCP headers, 40 bytes)."""
    if setting == "auto":
        return tun_mtu - 40
    return int(setting) if setting else None


def _counter(sa, name: str) -> int:
    return 0 if sa is None else int(getattr(sa, name, 0) or 0)


def _safe_error(e: Exception) -> str:
    """An exception's message for the log; key material never appears in our messages."""
    return f"{type(e).__name__}: {e}"


def _level(name) -> int:
    return {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
            "error": logging.ERROR}.get(str(name).lower(), logging.INFO)


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(SafeFormatter("%(asctime)s vpnd[%(process)d] %(levelname)s %(message)s",
                                           "%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(_level(level))
    # log_level debug is vpnd's: pyroute2 would print every netlink message (kilobytes each)
    logging.getLogger("pyroute2").setLevel(max(logging.WARNING, _level(level)))


def run_daemon(config, config_path: str | None) -> int:
    """Run until SIGTERM/SIGINT; 0 on a clean stop, 1 when start-up failed."""
    setup_logging(config.daemon.log_level)
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    for w in getattr(config, "warnings", ()):
        log.warning("%s", w)
    daemon = Daemon(config, config_path)
    try:
        return runner(daemon.run())
    except StartupError as e:
        log.error("%s", e)
        return 1
    except KeyboardInterrupt:
        daemon.teardown()
        return 0
    except Exception:  # a bug: say so, leave nothing behind (run() tore down), exit 1
        log.exception("vpnd stopped by an internal error")
        daemon.teardown()
        return 1


__all__ = ["Daemon", "run_daemon", "StartupError", "CommandError"]
